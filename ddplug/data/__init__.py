"""Datasets held in memory as normalised tensors: built-in loaders, image folders, tensors."""

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

__all__ = [
    "NORMALISATION",
    "DatasetSplits",
    "ImageDataset",
    "available_datasets",
    "default_data_root",
    "download_dataset",
    "from_tensors",
    "from_torch_dataset",
    "load_dataset",
]
