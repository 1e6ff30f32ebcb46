"""The ``ddplug`` command line: distill, experts, evaluate, download, cl, fl, list.

User mistakes end with one ``ddplug: error: ...`` line on stderr and exit status 2;
with ``--json`` the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any


from ddplug.allocator import tune_allocator
from ddplug.api import print_warnings_as_lines
from ddplug.commands import add_commands, discover_commands
from ddplug.devices import resolve_device
from ddplug.distributed import is_main, join_from_environment, leave
from ddplug.errors import DdplugError
from ddplug.settings import add_setting_flags, given_settings, parse_assignments

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _overrides(args: argparse.Namespace) -> dict[str, str]:
    """``--set`` assignments with the evaluation flags folded in."""
    overrides = parse_assignments(args.set)
    for flag, key in (("eval_model", "eval.model"), ("eval_epochs", "eval.epochs"), ("eval_models", "eval.num_models")):
        if getattr(args, flag) is not None:
            overrides[key] = str(getattr(args, flag))
    return overrides


def _baselines(text: str) -> tuple[str, ...]:
    return tuple(name for name in text.split(",") if name)


def _emit(summary: dict[str, Any], table: str, as_json: bool) -> None:
    if not is_main():  # under torchrun rank 0 speaks for the run
        return
    print(table)
    if as_json:
        print(json.dumps(summary))


def cmd_distill(args: argparse.Namespace) -> int:
    from ddplug.api import RUN_FOLDER, distill

    run = distill(args.dataset, args.method, ipc=args.ipc, budget_bytes=args.bytes, preset=args.preset,
                  overrides=_overrides(args), seed=args.seed, device=args.device, out=args.out or RUN_FOLDER,
                  baselines=_baselines(args.baselines), evaluate=not args.no_eval, snapshots=args.snapshots,
                  data_root=args.data_root, data_storage=args.data_storage, progress=not args.quiet,
                  **_method_settings(args))
    if run.condensed.interrupted:
        if is_main():
            print(f"interrupted after {run.condensed.iterations} iterations; the set so far is in {run.out_dir} "
                  "(run the same command again to resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    if run.judgement is None:
        _emit(run.summary, f"saved {run.summary['files'].get('set', '(nothing)')}", args.json)
        return 0
    _emit(run.summary, run.table() + f"\nwritten to {run.out_dir}/", args.json)
    return 0


# Settings with a flag of their own in `ddplug distill`, or fixed by other flags.
_GENERAL_FLAGS = ("ipc", "budget_bytes", "iterations", "model", "init", "seed")
_SETTING_PREFIX = "setting_"


def _method_setting_fields() -> dict[str, list[str]]:
    """Every method setting without a flag of its own, and the methods that have it."""
    from ddplug.methods import CONDENSERS

    owners: dict[str, list[str]] = {}
    for method, condenser in CONDENSERS.items():
        for name in condenser.setting_names():
            if name not in _GENERAL_FLAGS:
                owners.setdefault(name, []).append(method)
    return owners


def _add_method_flags(parser: argparse.ArgumentParser) -> None:
    from ddplug.methods import CONDENSERS

    group = parser.add_argument_group("method settings", "each overrides the preset's value for the chosen method")
    owners = _method_setting_fields()
    every = sum(1 for condenser in CONDENSERS.values() if condenser.config_class is not None)
    add_setting_flags(group, {name: f"({'all methods' if len(methods) == every else ', '.join(methods)})"
                              for name, methods in sorted(owners.items())}, _SETTING_PREFIX)


def _method_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The distillation settings given as flags (the method checks them)."""
    return {**given_settings(args, ("iterations", "model", "init")),
            **given_settings(args, _method_setting_fields(), _SETTING_PREFIX)}


def cmd_experts(args: argparse.Namespace) -> int:
    from ddplug.data import load_dataset
    from ddplug.methods import make_config
    from ddplug.methods.experts import ExpertTraining, default_expert_folder, train_experts
    from ddplug.presets import get_preset

    model = args.model or make_config("mtt", get_preset(args.preset).method_settings("mtt")).model
    data = load_dataset(args.dataset, args.data_root, storage=args.data_storage)
    training = ExpertTraining(lr=args.lr, batch_size=args.batch_size, augment=not args.no_augment, seed=args.seed,
                              per_class=args.per_class)
    folder = Path(args.out) if args.out else default_expert_folder(None, data.train, model, training)
    experts = train_experts(data.train, folder, model=model, num_experts=args.num_experts, epochs=args.epochs,
                            training=training, device=join_from_environment(resolve_device(args.device)),
                            progress=not args.quiet)
    summary = {"folder": str(experts.folder), "experts": len(experts), "epochs": experts.manifest["epochs"],
               "model": experts.manifest["model"], "dataset": experts.manifest["dataset"]}
    _emit(summary, f"{len(experts)} experts of {summary['model']} on {summary['dataset']} "
                   f"({summary['epochs']} epochs) in {experts.folder}", args.json)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ddplug.api import evaluate

    path = Path(args.path)
    out = Path(args.out) if args.out else (path if path.is_dir() else path.parent) / "evaluation"
    judgement = evaluate(path, args.dataset, preset=args.preset, overrides=_overrides(args),
                         baselines=_baselines(args.baselines), seed=args.seed, device=args.device, out=out,
                         experiment=args.experiment, data_root=args.data_root, data_storage=args.data_storage,
                         progress=not args.quiet)
    _emit(judgement.summary(), judgement.table() + f"\nwritten to {out}/", args.json)
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from ddplug.data import download_dataset

    where = download_dataset(args.name, args.data_root)
    print(f"{args.name} is in {where}")
    return 0


def _version_line() -> str:
    from ddplug.allocator import allocator_tuning
    from ddplug.version import __version__

    return f"ddplug {__version__}; allocator tuning {allocator_tuning()}"


def cmd_list(args: argparse.Namespace) -> int:
    from ddplug.data import available_datasets
    from ddplug.methods import available_methods
    from ddplug.models import available_models
    from ddplug.presets import PRESETS

    print("methods: " + ", ".join(available_methods()))
    print("models: " + ", ".join(available_models()))
    print("datasets: " + ", ".join(available_datasets()))
    for preset in PRESETS.values():
        print(f"preset {preset.name}: {preset.description}")
        for recipe in preset.recipes:
            budget = "any other budget" if recipe.max_ipc is None else f"up to {recipe.max_ipc} image(s) per class"
            print(f"  recipe for {budget}: {recipe.command()}\n    chosen by: {recipe.evidence}")
    print(_version_line())
    return 0


def _storage_option(parser: argparse.ArgumentParser) -> None:
    from ddplug.data import STORAGES

    parser.add_argument("--data-storage", choices=STORAGES, default="auto",
                        help="image folders: decode into memory, or read from disk per batch (default auto: disk when "
                             "decoding would take over a quarter of the free memory)")


def _common(parser: argparse.ArgumentParser) -> None:
    from ddplug.api import baseline_names

    parser.add_argument("--preset", default="cpu", help="cpu (minutes on a laptop) or paper (the field's protocol, GPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default=None, help="where datasets are (default: $DDPLUG_DATA or ~/.cache/ddplug/data)")
    _storage_option(parser)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--eval-model", default=None, help="evaluation network spec, e.g. convnet:width=128 or resnet18")
    parser.add_argument("--eval-epochs", type=int, default=None)
    parser.add_argument("--eval-models", type=int, default=None, help="how many fresh networks to train")
    parser.add_argument("--baselines", default="random",
                        help=f"comma-separated subsets to compare: {','.join(baseline_names())}, or ''")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any preset field: eval.epochs=100, dm.iterations=500, dm.batch_real=128, ...")
    parser.add_argument("--out", default=None, help="output folder")
    parser.add_argument("--json", action="store_true", help="print a JSON summary as the last line of stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    from ddplug.methods import available_methods
    from ddplug.methods.config import INITIALISATIONS

    parser = argparse.ArgumentParser(prog="ddplug", description="Dataset distillation: distill, evaluate, compare.")
    parser.add_argument("--version", action="version", version=_version_line())
    commands = parser.add_subparsers(dest="command", required=True)

    distill = commands.add_parser("distill", help="distill a dataset and evaluate the result")
    distill.add_argument("--dataset", default="fashion-mnist")
    distill.add_argument("--method", default=None,
                         help=f"one of {', '.join(available_methods())} (default: the preset's recipe for the budget, "
                              "see ddplug list)")
    distill.add_argument("--ipc", type=int, default=None,
                         help="budget: the bytes of IPC raw uint8 images per class (--param fills it with its "
                              "code; default 10)")
    distill.add_argument("--bytes", type=int, default=None,
                         help="budget: the code's bytes for the whole set, instead of --ipc (baselines get the "
                              "whole raw images per class that fit)")
    distill.add_argument("--iterations", type=int, default=None, help="distillation iterations (default: the preset's)")
    distill.add_argument("--model", default=None, help="network spec used for matching (default: the preset's)")
    distill.add_argument("--init", default=None, help=", ".join(INITIALISATIONS) + " (blend:images=N: each image the mean "
                         "of N random real images of its class, default 4)")
    distill.add_argument("--no-eval", action="store_true", help="only distill and save")
    distill.add_argument("--snapshots", type=int, default=0,
                         help="also save the set at N evenly spaced points (OUT/snapshots/), for time-to-accuracy")
    _common(distill)
    _add_method_flags(distill)
    distill.set_defaults(run=cmd_distill)

    experts = commands.add_parser("experts", help="train expert trajectories for trajectory matching (mtt)")
    experts.add_argument("--dataset", default="fashion-mnist")
    experts.add_argument("--model", default=None, help="network spec (default: the preset's mtt model)")
    experts.add_argument("--preset", default="cpu", help="whose mtt model to use when --model is not given")
    experts.add_argument("--num-experts", type=int, default=10)
    experts.add_argument("--epochs", type=int, default=50, help="epochs per expert (trains on existing ones)")
    experts.add_argument("--lr", type=float, default=0.01)
    experts.add_argument("--batch-size", type=int, default=256)
    experts.add_argument("--per-class", type=int, default=None, help="train on this many images per class (default: all)")
    experts.add_argument("--no-augment", action="store_true", help="train without DSA")
    experts.add_argument("--seed", type=int, default=0)
    experts.add_argument("--data-root", default=None)
    _storage_option(experts)
    experts.add_argument("--device", default="auto")
    experts.add_argument("--out", default=None, help="expert folder (default: the cache mtt reads, "
                                                     "$DDPLUG_EXPERTS or ~/.cache/ddplug/experts/...)")
    experts.add_argument("--json", action="store_true")
    experts.add_argument("--quiet", action="store_true")
    experts.set_defaults(run=cmd_experts)

    evaluate = commands.add_parser("evaluate", help="evaluate a synthetic set (ddplug, DC/DSA/DM or MTT files)")
    evaluate.add_argument("path")
    evaluate.add_argument("--dataset", default=None, help="required for sets not made by ddplug")
    evaluate.add_argument("--experiment", type=int, default=0, help="which set of a DC-style file with several")
    _common(evaluate)
    evaluate.set_defaults(run=cmd_evaluate)

    download = commands.add_parser("download", help="put a dataset's files in torchvision's layout under "
                                   "--data-root: from the system's copy (Debian's dataset-fashion-mnist), else "
                                   "downloaded")
    download.add_argument("name")
    download.add_argument("--data-root", default=None)
    download.set_defaults(run=cmd_download)

    add_commands(commands, discover_commands())  # cl, fl: registered by the adapters

    listing = commands.add_parser("list", help="methods, models, datasets and presets")
    listing.set_defaults(run=cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    tune_allocator()  # before the first tensor: every command allocates step after step
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "takes_any_arguments", False):  # a stub command's own options are unknown here
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    warnings.showwarning = print_warnings_as_lines
    try:
        return args.run(args)
    except DdplugError as error:
        print(f"ddplug: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("ddplug: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        leave()


if __name__ == "__main__":
    sys.exit(main())
