"""Seeded client partitions drawn by flwr-datasets' partitioners over a table of labels.

The partitioners only see a ``datasets.Dataset`` of (label, index) rows built from the
in-memory labels, never the images; a partition is the list of indices it received.
"""

from __future__ import annotations

import datasets
import torch
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, Partitioner, PathologicalPartitioner
from torch import Tensor

from ddplug.errors import DdplugError
from ddplug_flower.settings import PARTITIONERS

MIN_PARTITION_SIZE = 10  # Dirichlet draws are repeated (up to 10 times) until every client has this many


def partition_indices(
    labels: Tensor,
    num_partitions: int,
    *,
    scheme: str,
    alpha: float = 0.5,
    classes_per_partition: int = 2,
    seed: int = 0,
) -> list[Tensor]:
    """For each partition in order, the ascending indices into ``labels`` it holds.

    ``scheme``: ``iid`` (a seeded shuffle cut into equal shards), ``dirichlet`` (each
    class split over the partitions in Dirichlet(``alpha``) proportions) or
    ``pathological`` (``classes_per_partition`` classes per partition; partition ``i``
    draws class ``i`` mod K first, then the rest at random, and a class no partition drew
    is left out).
    """
    if not 1 <= num_partitions <= len(labels):
        raise DdplugError(f"cannot split {len(labels)} examples into {num_partitions} partitions")
    table = datasets.Dataset.from_dict({"label": labels.tolist(), "index": list(range(len(labels)))})
    partitioner = _partitioner(scheme, num_partitions, alpha, classes_per_partition, seed, len(labels.unique()))
    partitioner.dataset = table.shuffle(seed=seed) if scheme == "iid" else table
    try:
        parts = [partitioner.load_partition(partition).with_format("arrow")[:]["index"].to_numpy()
                 for partition in range(num_partitions)]
    except ValueError as error:
        raise DdplugError(f"{scheme} partitioning into {num_partitions} clients failed ({error}); "
                          "use fewer clients or a larger alpha") from None
    return [torch.from_numpy(part).sort().values for part in parts]


def _partitioner(scheme: str, num_partitions: int, alpha: float, classes: int, seed: int, num_classes: int) -> Partitioner:
    if scheme == "iid":
        return IidPartitioner(num_partitions)
    if scheme == "dirichlet":
        return DirichletPartitioner(num_partitions, "label", alpha, min_partition_size=MIN_PARTITION_SIZE, seed=seed)
    if scheme == "pathological":
        if not 1 <= classes <= num_classes:
            raise DdplugError(f"classes-per-client must lie in 1..{num_classes}, got {classes}")
        return PathologicalPartitioner(num_partitions, "label", classes, class_assignment_mode="first-deterministic",
                                       seed=seed)
    raise DdplugError(f"unknown partitioner {scheme!r}; choose one of {', '.join(PARTITIONERS)}")
