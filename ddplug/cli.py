"""The ``ddplug`` command line: distill, experts, evaluate, download, cl, fl, list.

User mistakes end with one ``ddplug: error: ...`` line on stderr and exit status 2;
with ``--json`` the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ddplug.allocator import tune_allocator
from ddplug.commands import add_commands, discover_commands
from ddplug.devices import resolve_device
from ddplug.errors import DdplugError
from ddplug.settings import parse_assignments
from ddplug.storage import writable_folder

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _preset(args: argparse.Namespace):
    from ddplug.presets import get_preset

    overrides = parse_assignments(args.set)
    if args.eval_model is not None:
        overrides["eval.model"] = args.eval_model
    if args.eval_epochs is not None:
        overrides["eval.epochs"] = str(args.eval_epochs)
    if args.eval_models is not None:
        overrides["eval.num_models"] = str(args.eval_models)
    preset = get_preset(args.preset).override(overrides)
    method = getattr(args, "method", None)
    for key, value in overrides.items():
        scope = key.partition(".")[0]
        if method is not None and scope not in ("eval", method):
            print(f"ddplug: warning: --set {key}={value} is a setting of {scope}, not of {method}, which this run uses: "
                  "it has no effect", file=sys.stderr)
    from ddplug.models import create_model

    # Fail on a bad evaluation model now, not after a long distillation.
    create_model(preset.evaluation.model, in_channels=1, num_classes=2, image_size=(28, 28))
    return preset


def _baselines(text: str) -> tuple[str, ...]:
    from ddplug.distill import CONDENSERS

    allowed = [name for name, condenser in CONDENSERS.items() if condenser.baseline and condenser.per_class]
    names = tuple(name for name in text.split(",") if name)
    for name in names:
        if name not in allowed:
            raise DdplugError(f"unknown baseline {name!r}; choose from {', '.join(allowed)} (comma-separated) or ''")
    return names


def _peak_memory(device: torch.device) -> dict[str, Any]:
    """Peak memory of this process: CUDA allocations on a GPU, resident set size on CPU."""
    if device.type == "cuda":
        return {"peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20, "peak_memory_kind": "cuda-allocated"}
    import resource

    return {"peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak_memory_kind": "process-max-rss"}


def _emit(summary: dict[str, Any], table: str, as_json: bool) -> None:
    print(table)
    if as_json:
        print(json.dumps(summary))


def cmd_distill(args: argparse.Namespace) -> int:
    from ddplug.data import load_dataset
    from ddplug.distill import available_methods, get_condenser
    from ddplug.pipeline import DISTILL_FILES, judge, save_outputs, write_judgement
    from ddplug.sets import load_set, payload_bytes, raw_images_per_class

    if args.method not in available_methods():
        raise DdplugError(f"unknown method {args.method!r}; choose one of {', '.join(available_methods())}")
    if args.ipc is not None and args.bytes is not None:
        raise DdplugError("--ipc and --bytes both set the budget: give one")
    if args.bytes is not None and not get_condenser(args.method).learns:
        raise DdplugError(f"--bytes is a budget for a learned code; {args.method} picks whole raw images: use --ipc")
    if args.ipc is not None and args.ipc < 1:
        raise DdplugError(f"--ipc must be at least 1, got {args.ipc}")
    if args.bytes is not None and args.bytes < 1:
        raise DdplugError(f"--bytes must be at least 1, got {args.bytes}")
    preset = _preset(args)
    device = resolve_device(args.device)
    baselines = _baselines(args.baselines)
    settings = _method_settings(args)
    if args.snapshots < 0:
        raise DdplugError(f"--snapshots must be 0 or more, got {args.snapshots}")
    data = load_dataset(args.dataset, args.data_root)
    if args.bytes is None:
        ipc = 10 if args.ipc is None else args.ipc
        budget = f"ipc{ipc}"
    else:  # the config checks that these bytes hold a raw image per class, before any work
        settings["budget_bytes"] = args.bytes
        ipc = max(1, raw_images_per_class(args.bytes, data.train.num_classes,
                                          (data.train.in_channels, *data.train.image_size)))
        budget = f"{args.bytes}bytes"
    out_dir = writable_folder(args.out or f"runs/{data.train.name}-{args.method}-{budget}-seed{args.seed}",
                              files=DISTILL_FILES)
    condensed = get_condenser(args.method).condense(data.train, ipc=ipc, preset=preset, seed=args.seed,
                                                    settings=settings,
                         device=device, out_dir=out_dir, progress=not args.quiet, snapshots=args.snapshots)
    files = save_outputs(condensed, out_dir) if get_condenser(args.method).per_class else {}
    # What was stored is what is judged: the code at its storage dtypes, decoded.
    synthetic = load_set(files["set"]) if files else condensed.synthetic
    extra = {
        "param": synthetic.param,
        "decoded_per_class": synthetic.meta.get("decoded_per_class"),
        "bytes": payload_bytes(files["set"]) if files else None,  # the file's tensors: code, labels, lr
        "iterations": condensed.iterations,
        "distill_seconds": condensed.seconds,
        "seconds_per_iteration": condensed.seconds / condensed.iterations if condensed.iterations else None,
        "interrupted": condensed.interrupted,
        "final_loss": condensed.losses[-1] if condensed.losses else None,
        "device": str(device),
        "out_dir": str(out_dir),
        "files": files,
    }
    if condensed.interrupted:
        print(f"interrupted after {condensed.iterations} iterations; the set so far is in {out_dir} "
              "(run the same command again to resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.no_eval:
        summary = {"method": args.method, "dataset": data.train.name, "ipc": ipc, **extra}
        _emit(summary, f"saved {files.get('set', '(nothing)')}", args.json)
        return 0
    judgement = judge(synthetic, data, preset, method=args.method, baselines=baselines,
                      seed=args.seed, device=device, progress=not args.quiet, zca=condensed.zca)
    summary = write_judgement(judgement, out_dir, {**extra, **_peak_memory(device)})
    _emit(summary, judgement.table() + f"\nwritten to {out_dir}/", args.json)
    return 0


# Settings with a flag of their own in `ddplug distill`, or fixed by other flags.
_GENERAL_FLAGS = ("ipc", "budget_bytes", "iterations", "model", "init", "seed")
_SETTING_PREFIX = "setting_"


def _method_setting_fields() -> dict[str, list[str]]:
    """Every method setting without a flag of its own, and the methods that have it."""
    from ddplug.distill import CONDENSERS

    owners: dict[str, list[str]] = {}
    for method, condenser in CONDENSERS.items():
        for name in condenser.setting_names():
            if name not in _GENERAL_FLAGS:
                owners.setdefault(name, []).append(method)
    return owners


def _add_method_flags(parser: argparse.ArgumentParser) -> None:
    from ddplug.distill import CONDENSERS

    group = parser.add_argument_group("method settings", "each overrides the preset's value for the chosen method")
    owners = _method_setting_fields()
    every = sum(1 for condenser in CONDENSERS.values() if condenser.config_class is not None)
    for name, methods in sorted(owners.items()):
        which = "all methods" if len(methods) == every else ", ".join(methods)
        group.add_argument(f"--{name.replace('_', '-')}", dest=_SETTING_PREFIX + name, default=None, metavar="VALUE",
                           help=f"({which})")


def _method_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The distillation settings given as flags; a flag the chosen method lacks is an error."""
    from ddplug.distill import get_condenser

    settings = {key: value for key, value in (("iterations", args.iterations), ("model", args.model),
                                              ("init", args.init)) if value is not None}
    given = {key[len(_SETTING_PREFIX):]: value for key, value in vars(args).items()
             if key.startswith(_SETTING_PREFIX) and value is not None}
    fields = get_condenser(args.method).setting_names()
    if given and not fields:
        flags = ", ".join(f"--{name.replace('_', '-')}" for name in given)
        raise DdplugError(f"{flags}: {args.method} takes no settings, so it has no such setting")
    owners = _method_setting_fields()
    for name in given:
        if name not in fields:
            raise DdplugError(f"--{name.replace('_', '-')} is not a setting of {args.method} "
                              f"(it is one of {', '.join(owners[name])}); drop it or pick such a method")
    return {**settings, **given}


def cmd_experts(args: argparse.Namespace) -> int:
    from ddplug.data import load_dataset
    from ddplug.distill import make_config
    from ddplug.distill.experts import ExpertTraining, default_expert_folder, train_experts
    from ddplug.presets import get_preset

    model = args.model or make_config("mtt", get_preset(args.preset).method_settings("mtt")).model
    data = load_dataset(args.dataset, args.data_root)
    training = ExpertTraining(lr=args.lr, batch_size=args.batch_size, augment=not args.no_augment, seed=args.seed,
                              per_class=args.per_class)
    folder = Path(args.out) if args.out else default_expert_folder(None, data.train, model, training)
    experts = train_experts(data.train, folder, model=model, num_experts=args.num_experts, epochs=args.epochs,
                            training=training, device=resolve_device(args.device), progress=not args.quiet)
    summary = {"folder": str(experts.folder), "experts": len(experts), "epochs": experts.manifest["epochs"],
               "model": experts.manifest["model"], "dataset": experts.manifest["dataset"]}
    _emit(summary, f"{len(experts)} experts of {summary['model']} on {summary['dataset']} "
                   f"({summary['epochs']} epochs) in {experts.folder}", args.json)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ddplug.data import load_dataset
    from ddplug.distill import CONDENSERS
    from ddplug.pipeline import JUDGEMENT_FILES, judge, write_judgement
    from ddplug.sets import load_set

    path = Path(args.path)
    preset = _preset(args)
    device = resolve_device(args.device)
    baselines = _baselines(args.baselines)
    if args.dataset is None:
        if not path.exists():
            raise DdplugError(f"{path} does not exist: give the path of a synthetic set file or of the folder holding it")
        synthetic = load_set(path)  # only ddplug's own files name their dataset
        dataset = synthetic.meta.get("dataset")
        if not dataset:
            raise DdplugError(f"{path} does not say which dataset it distils: name it with --dataset NAME")
        data = load_dataset(dataset, args.data_root)
    else:
        data = load_dataset(args.dataset, args.data_root)
        synthetic = load_set(path, dataset=data.train, experiment=args.experiment)
    method = synthetic.meta.get("method", "unknown")
    if method in CONDENSERS and not CONDENSERS[method].per_class:
        raise DdplugError(f"{path} says it is method {method!r}, the whole dataset, which no set file is: "
                          "it cannot be judged as one")
    out_dir = writable_folder(Path(args.out) if args.out else (path if path.is_dir() else path.parent) / "evaluation",
                              files=JUDGEMENT_FILES)
    judgement = judge(synthetic, data, preset, method=method, baselines=baselines, seed=args.seed, device=device,
                      progress=not args.quiet)
    summary = write_judgement(judgement, out_dir, {"iterations": synthetic.meta.get("iterations"),
                                                   "distill_seconds": synthetic.meta.get("distill_seconds"),
                                                   "source": str(path), "device": str(device), "out_dir": str(out_dir)})
    _emit(summary, judgement.table() + f"\nwritten to {out_dir}/", args.json)
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
    from ddplug.distill import available_methods
    from ddplug.models import available_models
    from ddplug.presets import PRESETS

    print("methods: " + ", ".join(available_methods()))
    print("models: " + ", ".join(available_models()))
    print("datasets: " + ", ".join(available_datasets()))
    for preset in PRESETS.values():
        print(f"preset {preset.name}: {preset.description}")
    print(_version_line())
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="cpu", help="cpu (minutes on a laptop) or paper (the field's protocol, GPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default=None, help="where datasets are (default: $DDPLUG_DATA or ~/.cache/ddplug/data)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--eval-model", default=None, help="evaluation network spec, e.g. convnet:width=128 or resnet18")
    parser.add_argument("--eval-epochs", type=int, default=None)
    parser.add_argument("--eval-models", type=int, default=None, help="how many fresh networks to train")
    parser.add_argument("--baselines", default="random", help="comma-separated subsets to compare: random,herding,kcenter")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any preset field: eval.epochs=100, dm.iterations=500, dm.batch_real=128, ...")
    parser.add_argument("--out", default=None, help="output folder")
    parser.add_argument("--json", action="store_true", help="print a JSON summary as the last line of stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddplug", description="Dataset distillation: distill, evaluate, compare.")
    parser.add_argument("--version", action="version", version=_version_line())
    commands = parser.add_subparsers(dest="command", required=True)

    distill = commands.add_parser("distill", help="distill a dataset and evaluate the result")
    distill.add_argument("--dataset", default="fashion-mnist")
    distill.add_argument("--method", default="dm", help="dm, dc, dsa, mtt, kip, frepo, or a baseline: random, herding, kcenter, full")
    distill.add_argument("--ipc", type=int, default=None,
                         help="budget: the bytes of IPC raw uint8 images per class (--param fills it with its "
                              "code; default 10)")
    distill.add_argument("--bytes", type=int, default=None,
                         help="budget: the code's bytes for the whole set, instead of --ipc (baselines get the "
                              "whole raw images per class that fit)")
    distill.add_argument("--iterations", type=int, default=None, help="distillation iterations (default: the preset's)")
    distill.add_argument("--model", default=None, help="network spec used for matching (default: the preset's)")
    distill.add_argument("--init", default=None, help="real, noise or herding")
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

    download = commands.add_parser("download", help="download a dataset with torchvision (needs network)")
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
    try:
        return args.run(args)
    except DdplugError as error:
        print(f"ddplug: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("ddplug: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
