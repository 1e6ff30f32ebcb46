"""The published accuracies of the protocol's tables, shipped as data with their sources."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

PUBLISHED_IPCS = (1, 10, 50)


@dataclass(frozen=True)
class PublishedResult:
    method: str
    name: str  # as the papers write it: "FreD", "DM"
    dataset: str
    ipc: int | None
    accuracy: float  # percent
    source: str
    confirmed: bool  # False: quoted from a later paper's comparison table


@cache
def _table() -> dict:
    return json.loads(files("ddplug.evaluation").joinpath("published.json").read_text())


def published_result(method: str, dataset: str, ipc: int | None) -> PublishedResult | None:
    """The published number for ``method`` on ``dataset`` at ``ipc``, or None if there is none."""
    table = _table()
    row = table["results"].get(method, {}).get(dataset)
    if row is None or (method != "full" and ipc not in PUBLISHED_IPCS):
        return None
    value = row[0] if method == "full" else row[PUBLISHED_IPCS.index(ipc)]
    if value is None:
        return None
    return PublishedResult(method, table["names"][method], dataset, ipc, float(value), table["sources"][method],
                           bool(row[3]))
