"""A set condensed in groups of classes, each group alone, as the experiences of a
class-incremental stream are (the Avalanche plug-in condenses each experience's classes
when it arrives), then judged whole on all classes.

    python -m simulations.grouped_condensation --method frepo --ipc 1 \
        --set param=dct:keep=0.0625,select=variance,mask=set,bits=4 --set iterations=600 --set augment=true

Each group is condensed by ``ddplug.pipeline.condense_classes`` (what the plug-in calls),
stored as its code is (``as_stored``), and the groups' sets joined; ``--groups`` defaults to
the class pairs of Avalanche's ``SplitFMNIST(n_experiences=5, seed=0)`` in their order. A
method that condenses every class on its own (DM) is indifferent to the grouping; one that
fits the set to tell its classes apart (the kernel methods) only learns to tell each group's
classes apart. With ``--beside-held`` each group is condensed beside the images already held
for the groups before it, taken as real images of their classes, and only its own classes'
images are kept: what a stream's memory could do to teach its new classes apart from the old.
Rows go to ``benchmarks/grouped-condensation/``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import torch

import ddplug
from ddplug.api import resolve_preset
from ddplug.data import load_dataset
from ddplug.evaluation.report import format_table, percent
from ddplug.errors import DdplugError
from ddplug.pipeline import check_condensation, condense_classes
from ddplug.seeding import derive_seed
from ddplug.sets import SyntheticSet, as_stored
from ddplug.settings import parse_assignments
from simulations.provenance import add_rows_option, keep_rows, parse_benchmark_args

SPLIT_FMNIST_SEED0 = ("1,4", "5,7", "3,9", "0,8", "2,6")  # SplitFMNIST(n_experiences=5, seed=0)'s experiences
COLUMNS = ("method", "settings", "groups", "images/class", "accuracy %", "condensing s")


def parse_groups(groups: list[str], num_classes: int) -> list[tuple[int, ...]]:
    """``["1,4", "5,7"]`` -> ``[(1, 4), (5, 7)]``; every class once, none out of range."""
    try:
        parsed = [tuple(int(label) for label in group.split(",")) for group in groups]
    except ValueError:
        raise SystemExit(f"--groups takes comma-separated class numbers such as 1,4; got {groups}") from None
    flat = [label for group in parsed for label in group]
    if len(set(flat)) != len(flat) or not all(0 <= label < num_classes for label in flat):
        raise SystemExit(f"--groups must name each class 0..{num_classes - 1} at most once; got {groups}")
    return parsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="frepo")
    parser.add_argument("--ipc", type=int, default=1, help="the bytes of this many raw images per class")
    parser.add_argument("--groups", nargs="+", default=list(SPLIT_FMNIST_SEED0),
                        help="the classes condensed together, one group per argument "
                             "(0,1,2,3,4,5,6,7,8,9: all at once)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of the method, e.g. iterations=600 (default: the cpu preset's)")
    parser.add_argument("--eval-models", type=int, default=2)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--beside-held", action="store_true",
                        help="condense each group beside the images held for the groups before it (as real images)")
    add_rows_option(parser, "grouped-condensation")
    args = parse_benchmark_args(parser, argv)
    try:  # a bad dataset, method, setting or network count fails here, in one line, before any group is condensed
        preset = resolve_preset("cpu", {"eval.num_models": str(args.eval_models)})
        splits = load_dataset(args.dataset)
        groups = parse_groups(args.groups, splits.train.num_classes)
        reals = [splits.train.subset(torch.nonzero(torch.isin(splits.train.labels, torch.tensor(group))).flatten())
                 for group in groups]
        settings = parse_assignments(args.settings)
        for real in reals:
            check_condensation(real, args.method, ipc=args.ipc, preset=preset, settings=settings)
    except DdplugError as error:
        parser.error(str(error))
    parts, began = [], time.perf_counter()
    for index, (group, real) in enumerate(zip(groups, reals)):
        if args.beside_held and parts:
            held = SyntheticSet.concatenate(parts, meta={})
            real = replace(real, images=torch.cat([real.images, held.images.detach()]),
                           labels=torch.cat([real.labels, held.hard_labels]))
        made = condense_classes(real, args.method, ipc=args.ipc, preset=preset, settings=settings,
                                seed=derive_seed(args.seed, "group", index))
        stored = as_stored(made)
        own = torch.isin(stored.hard_labels, torch.tensor(group))
        parts.append(SyntheticSet(stored.images[own], stored.labels[own], stored.num_classes, stored.mean,
                                  stored.std))
        print(f"group {index + 1}/{len(groups)} {group}: {len(made)} images, {time.perf_counter() - began:.0f} s",
              file=sys.stderr, flush=True)
    seconds = time.perf_counter() - began
    whole = SyntheticSet.concatenate(parts, meta={"method": args.method, "ipc": args.ipc})
    judged = ddplug.evaluate(whole, splits, preset=preset, baselines=(), seed=args.seed, progress=False)
    counts = torch.bincount(whole.hard_labels, minlength=whole.num_classes).tolist()
    per_class = max(counts)
    row = {"method": args.method, "settings": settings, "beside_held": args.beside_held, "ipc": args.ipc,
           "groups": [list(group) for group in groups], "images_per_class": per_class, "class_counts": counts,
           "accuracies": judged.accuracies, "accuracy_mean": judged.mean, "accuracy_std": judged.std,
           "condensing_seconds": seconds,
           "evaluation": f"cpu: {args.eval_models} fresh {judged.result.model}, {judged.result.epochs} epochs"}
    keep_rows(args.rows, "simulations.grouped_condensation", argv, [row], conditions=args.conditions)
    named = " ".join(f"{key}={value}" for key, value in settings.items()) or "the cpu preset's"
    grouping = " ".join(args.groups) + (", beside the images held" if args.beside_held else "")
    print(format_table(COLUMNS, [(args.method, named, grouping, per_class,
                                  percent(judged.mean, judged.std), f"{seconds:.0f}")]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
