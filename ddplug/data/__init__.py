"""Datasets as normalised images, in memory or streamed from disk: built-in loaders, image
folders, tensors, torch datasets; and their ZCA whitening."""

from __future__ import annotations

from ddplug.data.datasets import (
    NORMALISATION,
    STORAGES,
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
from ddplug.data.streaming import StreamedImages
from ddplug.data.zca import ZCA

__all__ = [
    "NORMALISATION",
    "STORAGES",
    "ZCA",
    "DatasetSplits",
    "ImageDataset",
    "StreamedImages",
    "available_datasets",
    "check_pixel_scale",
    "default_data_root",
    "download_dataset",
    "from_tensors",
    "from_torch_dataset",
    "load_dataset",
    "pixel_scale",
]
