"""Datasets held in memory as normalised tensors: built-in loaders, image folders, tensors;
and their ZCA whitening."""

from __future__ import annotations

from ddplug.data.datasets import (
    NORMALISATION,
    DatasetSplits,
    ImageDataset,
    available_datasets,
    check_pixel_scale,
    default_data_root,
    download_dataset,
    from_tensors,
    from_torch_dataset,
    load_dataset,
    pixel_scale,
)
from ddplug.data.zca import ZCA

__all__ = [
    "NORMALISATION",
    "ZCA",
    "DatasetSplits",
    "ImageDataset",
    "available_datasets",
    "check_pixel_scale",
    "default_data_root",
    "download_dataset",
    "from_tensors",
    "from_torch_dataset",
    "load_dataset",
    "pixel_scale",
]
