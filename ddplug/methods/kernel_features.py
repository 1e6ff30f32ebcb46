"""Kernels for kernel ridge regression on images.

Empirical kernels of finite networks are returned as feature maps ``phi`` with
``k(x, x') = phi(x) . phi(x')``, so a batch's features are computed once and serve both
the cross kernel and the support kernel:

- :func:`ntk_features`: the rows of the parameter Jacobian (the empirical neural tangent kernel);
- :func:`nngp_features`: the scaled penultimate features of a random network (the NNGP's
  random-feature estimate);

and :func:`relu_fc_kernel` is the closed-form infinite-width NNGP/NTK of a fully
connected ReLU network (the arc-cosine recursion).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from ddplug.errors import DdplugError
from ddplug.models.chunks import embed_in_chunks

FC_KERNELS = ("nngp", "ntk")
FC_WEIGHT_VARIANCE = 2.0  # He scaling: the ReLU layers keep the input's scale
FC_BIAS_VARIANCE = 0.01
_CLAMP = 1e-9  # arccos has an infinite slope at +-1; the clamp keeps gradients finite


def ntk_features(network: nn.Module, x: Tensor) -> Tensor:
    """Jacobian rows ``(N, outputs * parameters)`` of ``network`` at ``x``, scaled by
    ``1/sqrt(outputs)``: their Gram matrix is the empirical NTK averaged over the outputs.

    Each sample is differentiated on its own (``vmap`` of ``jacrev``), so the network must
    treat samples independently: put batch-norm networks in eval mode. Gradients flow to
    ``x`` (the Jacobian is itself differentiable), not to the network's parameters.
    """
    params = {name: p.detach() for name, p in network.named_parameters()}

    def output(p: dict[str, Tensor], sample: Tensor) -> Tensor:
        return functional_call(network, p, (sample.unsqueeze(0),)).squeeze(0)

    jacobians = vmap(jacrev(output), in_dims=(None, 0))(params, x)
    rows = torch.cat([j.flatten(1) for j in jacobians.values()], dim=1)
    outputs = next(iter(jacobians.values())).shape[1]
    return rows / math.sqrt(outputs)


def nngp_features(network: nn.Module, x: Tensor) -> Tensor:
    """``embed(x) / sqrt(feature_dim)``: their Gram matrix estimates the network's NNGP."""
    features = embed_in_chunks(network, x)
    return features / math.sqrt(features.shape[1])


def relu_fc_kernel(x1: Tensor, x2: Tensor, depth: int, kind: str = "nngp") -> Tensor:
    """The infinite-width ``kind`` kernel (``"nngp"`` or ``"ntk"``) of a fully connected
    network with ``depth`` ReLU hidden layers on flattened inputs, shape ``(N1, N2)``.

    Weights have variance ``FC_WEIGHT_VARIANCE / fan_in``, biases ``FC_BIAS_VARIANCE``. Each
    layer maps the pre-activation covariance through the arc-cosine formula
    E[relu(u) relu(v)] = sqrt(q q') (sin t + (pi - t) cos t) / (2 pi), t = angle(u, v),
    and the NTK adds the previous NTK times E[relu'(u) relu'(v)] = (pi - t) / (2 pi).
    It runs in float64: in float32 the angle of two equal inputs comes out near 1e-3, not 0.
    """
    if kind not in FC_KERNELS:
        raise DdplugError(f"unknown fully connected kernel {kind!r}; choose one of {', '.join(FC_KERNELS)}")
    dtype = x1.dtype
    x1, x2 = x1.flatten(1).double(), x2.flatten(1).double()
    dim = x1.shape[1]
    sigma = FC_WEIGHT_VARIANCE * (x1 @ x2.T) / dim + FC_BIAS_VARIANCE
    # The diagonals follow their own exact recursion (angle 0), untouched by the clamp.
    q1 = FC_WEIGHT_VARIANCE * x1.square().sum(1) / dim + FC_BIAS_VARIANCE
    q2 = FC_WEIGHT_VARIANCE * x2.square().sum(1) / dim + FC_BIAS_VARIANCE
    ntk = sigma
    for _ in range(depth):
        scale = (q1[:, None] * q2[None, :]).sqrt()
        cosine = (sigma / scale).clamp(-1 + _CLAMP, 1 - _CLAMP)
        angle = torch.arccos(cosine)
        expectation = scale * (torch.sin(angle) + (math.pi - angle) * cosine) / (2 * math.pi)
        derivative = (math.pi - angle) / (2 * math.pi)
        sigma = FC_WEIGHT_VARIANCE * expectation + FC_BIAS_VARIANCE
        ntk = sigma + FC_WEIGHT_VARIANCE * derivative * ntk
        q1 = FC_WEIGHT_VARIANCE * q1 / 2 + FC_BIAS_VARIANCE
        q2 = FC_WEIGHT_VARIANCE * q2 / 2 + FC_BIAS_VARIANCE
    return (sigma if kind == "nngp" else ntk).to(dtype)
