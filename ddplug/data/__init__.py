"""Datasets held in memory as normalised tensors: built-in loaders, image folders, tensors;
and their ZCA whitening."""

from __future__ import annotations

from ddplug.data.datasets import (
    NORMALISATION,
    DatasetSplits,
    ImageDataset,
    available_datasets,
    default_data_root,
    download_dataset,
    from_tensors,
    from_torch_dataset,
    load_dataset,
)
from ddplug.data.zca import ZCA

__all__ = [
    "NORMALISATION",
    "ZCA",
    "DatasetSplits",
    "ImageDataset",
    "available_datasets",
    "default_data_root",
    "download_dataset",
    "from_tensors",
    "from_torch_dataset",
    "load_dataset",
]
