"""Embedding a large batch a chunk at a time: chunks the heap reuses, or fixed checkpointed chunks for flat memory.

A layer's output for a whole batch can be one large block: a width-32 ConvNet's first layer
writes 128 MB for 1 000 Fashion-MNIST images, 262 MB for the 2 000 synthetic images of 50 per
class. glibc maps blocks above its mmap threshold afresh and returns them when freed, so each
step page-faults them in again; chunks whose widest activation stays near
:data:`CPU_CHUNK_BYTES` come from the heap and are reused step after step. A network that
treats every sample on its own and draws nothing at random (in eval mode; in training mode, a
ddplug model without batch norm or dropout) gives each sample the same embedding and the same
input gradient in any chunk, so chunking changes the speed, not the set; other networks are
embedded whole.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ddplug.models.convnet import ImageClassifier

# A chunk's widest activation: half glibc's largest dynamic mmap threshold (32 MiB), so even an
# untuned process serves a chunk's buffers from its heap (ddplug.allocator raises it to 128 MiB).
CPU_CHUNK_BYTES = 16 * 2**20


def leaf_output_sizes(network: nn.Module, run: Callable[[Tensor], Any], sample: Tensor) -> list[int]:
    """The floats each innermost module of ``network`` outputs while ``run(sample)`` runs
    (``network`` or ``network.embed``), without gradients."""
    sizes: list[int] = []

    def record(module: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, Tensor):
            sizes.append(output.numel())

    leaves = [module for module in network.modules() if next(module.children(), None) is None]
    handles = [module.register_forward_hook(record) for module in leaves]
    try:
        with torch.no_grad():
            run(sample)
    finally:
        for handle in handles:
            handle.remove()
    return sizes


def per_sample(network: nn.Module) -> bool:
    """Whether each sample's output is the same in any chunk of its batch: in eval mode, and in
    training mode for a ddplug model without batch norm (which normalises over the batch) or
    dropout (which draws its masks in batch order). A user's network in training mode may do
    either in code no module shows, so it counts as not."""
    training = [module for module in network.modules() if module.training]
    if not training:
        return True
    coupled = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
    return isinstance(network, ImageClassifier) and not any(isinstance(module, coupled) for module in training)


def chunk_rows(network: nn.Module, images: Tensor) -> int:
    """Images per chunk that keep ``network``'s widest activation near :data:`CPU_CHUNK_BYTES`
    on a CPU; the whole batch on other devices (whose caching allocators reuse blocks of any
    size) and for networks that are not :func:`per_sample`."""
    if images.device.type != "cpu" or len(images) < 2 or not per_sample(network):
        return len(images)
    per_image = max(leaf_output_sizes(network, network.embed, images[:1]), default=0) * images.element_size()
    return max(1, min(len(images), CPU_CHUNK_BYTES // max(per_image, 1)))


def embed_in_chunks(network: nn.Module, images: Tensor, rows: int = 0, *, checkpointed: bool = False) -> Tensor:
    """``network.embed(images)``, ``rows`` images at a time (0: :func:`chunk_rows`).

    With ``checkpointed`` (and gradients on) each chunk's activations are recomputed in the
    backward pass instead of kept: memory stays flat in the batch, for one more forward pass.

    Examples:
        >>> import torch
        >>> from ddplug.models import create_model
        >>> network = create_model("convnet:width=8", in_channels=1, num_classes=10, image_size=(28, 28), seed=0)
        >>> images = torch.rand(64, 1, 28, 28)
        >>> torch.allclose(embed_in_chunks(network, images, 10), network.embed(images))
        True
    """
    rows = rows or chunk_rows(network, images)
    if len(images) <= rows:
        return network.embed(images)
    if checkpointed and torch.is_grad_enabled():
        return torch.cat([checkpoint(network.embed, part, use_reentrant=False) for part in images.split(rows)])
    return torch.cat([network.embed(part) for part in images.split(rows)])
