"""Pictures of synthetic sets: one row per class."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torchvision.utils import save_image

from ddplug.errors import DdplugError
from ddplug.sets.synthetic import SyntheticSet
from ddplug.storage import atomic_write

if TYPE_CHECKING:
    from ddplug.data import ZCA


def class_grid(synthetic: SyntheticSet, max_per_class: int = 20, *, zca: ZCA | None = None) -> tuple[torch.Tensor, int]:
    """The images class by class, each row padded with blanks to the same length; and that length.

    A ZCA-whitened set is shown un-whitened by ``zca`` (the whitening it was distilled in).
    """
    if synthetic.zca_epsilon is not None:
        if zca is None:
            raise DdplugError("the set is ZCA-whitened: pass zca (ddplug.data.ZCA fitted on its dataset's training "
                              "images) to picture it")
        synthetic = replace(synthetic, images=zca.unwhiten(synthetic.images.detach()))
    images = synthetic.denormalised().detach().cpu().clamp(0, 1)
    labels = synthetic.hard_labels.cpu()
    per_class = min(max(synthetic.ipc, 1), max_per_class)
    rows = torch.ones(synthetic.num_classes, per_class, *images.shape[1:])
    for c in range(synthetic.num_classes):
        members = images[labels == c][:per_class]
        rows[c, : len(members)] = members
    return rows.flatten(0, 1), per_class


def save_grid(synthetic: SyntheticSet, path: str | Path, max_per_class: int = 20, *, zca: ZCA | None = None) -> Path:
    """Save a PNG grid of the set (de-normalised, un-whitened by ``zca`` if whitened), one row per class, atomically.

    Args:
        synthetic: the set to draw.
        path: the PNG file to write.
        max_per_class: the images drawn of each class, at most.
        zca: the whitening of a ZCA-whitened set, to draw it as pixels.

    Returns:
        ``path``, as a :class:`~pathlib.Path`.

    Examples:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from ddplug.sets import SyntheticSet
        >>> synthetic = SyntheticSet(torch.rand(6, 1, 8, 8), torch.arange(6) // 2, num_classes=3,
        ...                          mean=(0.5,), std=(0.5,))
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     save_grid(synthetic, Path(folder) / "grid.png").stat().st_size > 0
        True
    """
    tiles, per_class = class_grid(synthetic, max_per_class, zca=zca)
    return atomic_write(path, lambda tmp: save_image(tiles, str(tmp), nrow=per_class, padding=1, format="png"))
