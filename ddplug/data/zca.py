"""ZCA whitening (kornia) of a dataset's images, as MTT, KIP and FRePo distil on CIFAR.

The whitening is fitted on the real training images (already normalised) and is a fixed
invertible linear map: a set distilled in the whitened space is evaluated by training on it
as it is and testing on test images whitened by the same fit. ``epsilon`` is added to every
eigenvalue of the covariance before the inverse square root: it bounds how much
low-variance directions (mostly noise) are amplified, and so keeps the map well conditioned,
which lets the evaluation refit it (deterministically, from the same images) instead of
storing a (D, D) matrix with every set. Images that stay on disk are fitted on an evenly
spaced sample of at most :data:`STREAMED_FIT_IMAGES` of them, and whitened batch by batch as
they are read.
"""

from __future__ import annotations

import dataclasses

import torch
from kornia.enhance import ZCAWhitening
from torch import Tensor

from ddplug.data.datasets import ImageDataset
from ddplug.data.streaming import StreamedImages
from ddplug.errors import DdplugError

STREAMED_FIT_IMAGES = 10_000


class ZCA:
    """A ZCA whitening fitted on ``images`` (N, C, H, W), with its inverse.

    Args:
        images: the images to fit on, normalised.
        epsilon: added to the covariance's eigenvalues (0.1 in MTT and KIP).

    Examples:
        >>> import torch
        >>> zca = ZCA(torch.rand(50, 1, 4, 4), epsilon=0.1)
        >>> x = torch.rand(3, 1, 4, 4)
        >>> bool(torch.allclose(zca.unwhiten(zca.whiten(x)), x, atol=1e-4))
        True
    """

    def __init__(self, images: Tensor, epsilon: float) -> None:
        if not epsilon > 0:
            raise DdplugError(f"zca_epsilon must be positive, got {epsilon}: use e.g. 0.1 (MTT's and KIP's value)")
        if len(images) < 2:
            raise DdplugError(f"ZCA whitening needs at least 2 images to fit on, got {len(images)}")
        self.epsilon = float(epsilon)
        self.device = images.device
        self._whitening = ZCAWhitening(eps=self.epsilon, compute_inv=True).fit(images.float())

    @classmethod
    def fit(cls, dataset: ImageDataset, epsilon: float, device: torch.device | str = "cpu") -> ZCA:
        """The whitening of ``dataset``'s images (its training split), fitted on ``device``."""
        images = dataset.images
        if isinstance(images, StreamedImages):
            images = images[torch.linspace(0, len(images) - 1, min(len(images), STREAMED_FIT_IMAGES)).long()]
        return cls(images.to(device), epsilon)

    def whiten(self, images: Tensor | StreamedImages) -> Tensor | StreamedImages:
        """``images`` in the whitened space (on their own device); streamed ones as they are read."""
        if isinstance(images, StreamedImages):
            return images.mapped(self.whiten)
        return self._whitening(images.to(self.device)).to(images.device)

    def unwhiten(self, images: Tensor) -> Tensor:
        """Whitened ``images`` mapped back to normalised images (on their own device)."""
        return self._whitening.inverse_transform(images.to(self.device)).to(images.device)

    def whiten_dataset(self, dataset: ImageDataset) -> ImageDataset:
        """``dataset`` with whitened images and the same labels and metadata."""
        return dataclasses.replace(dataset, images=self.whiten(dataset.images))
