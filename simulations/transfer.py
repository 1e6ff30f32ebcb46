"""How distilled sets transfer: each set trained on other architectures than the one it
was matched with, each beside random real images of the same bytes on that architecture.

    python -m simulations.transfer runs/fashion-mnist-frepo-ipc1-seed0 --models convnet:width=32 mlp lenet convnet-bn:width=32

For every set and model, ``ddplug.evaluate(SET, model=M, models=N, baselines=("random",))``
under the preset's protocol (its epochs, optimiser and augmentation): the set as stored,
and the random baseline drawn by the same seed. Rows go to ``benchmarks/transfer/`` with
their command, conditions and commit, one file per set and model, so a long grid can be
run a model at a time, and a long network a seed at a time (``--eval-models 1 --seed 1``);
the table (``transfer`` in ``simulations.tables``) pools the networks of one set and model
over seeds and sets each model's accuracy against the set's own on the first model of its rows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import ddplug
from ddplug.evaluation.report import format_table
from ddplug.models import check_model_spec
from ddplug.presets import CPU_MODEL
from ddplug.sets import load_set
from ddplug.settings import parse_assignments
from simulations.provenance import add_rows_option, keep_rows, parse_benchmark_args

DEFAULT_MODELS = ("convnet:width=32", "mlp", "lenet", "convnet-bn:width=32", "alexnet", "vgg11", "resnet18-bn")
COLUMNS = ("set", "model", "accuracy %", "random %", "s per network")


def set_label(path: Path) -> str:
    """What made the set: method, parameterisation, budget and steps, and the matching network
    when it is not the ``cpu`` preset's (or the pool's architectures when it mixed them), from
    its own metadata."""
    meta = load_set(path).meta
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    pool, model = config.get("pool_models"), config.get("model")
    matched = (f", matched with a pool of `{pool}`" if pool
               else f", matched with `{model}`" if model and model != CPU_MODEL else "")
    return f"{meta.get('method')} `{meta.get('param')}`, ipc {meta.get('ipc')}, {meta.get('iterations')} steps{matched}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sets", nargs="+", type=Path, help="set files or the folders holding them")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="evaluation network specs")
    parser.add_argument("--eval-models", type=int, default=2, help="fresh networks per set and model")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="preset override, as for ddplug (eval.epochs=100)")
    add_rows_option(parser, "transfer")
    args = parse_benchmark_args(parser, argv)
    labels = {path: set_label(path) for path in args.sets}  # a bad path fails here, before any training
    for model in args.models:  # and a bad model spec
        check_model_spec(model)
    overrides = parse_assignments(args.overrides)
    table = []
    for path in args.sets:
        for model in args.models:
            judged = ddplug.evaluate(path, preset=args.preset, overrides=overrides, model=model,
                                     models=args.eval_models, baselines=("random",), seed=args.seed)
            random = judged.baselines["random"]
            row = {"set": labels[path], "set_path": str(path), "model": model, "preset": args.preset,
                   "eval_models": args.eval_models, "accuracies": judged.accuracies, "accuracy_mean": judged.mean,
                   "accuracy_std": judged.std, "random_accuracies": random.accuracies, "random_mean": random.mean,
                   "random_std": random.std, "seconds_per_network": judged.result.seconds_per_model}
            # Each row with the command that makes it alone, so its file is replaced only by a rerun of it.
            alone = [str(path), "--models", model, "--eval-models", str(args.eval_models), "--preset", args.preset,
                     "--seed", str(args.seed), *(f"--set={item}" for item in args.overrides)]
            keep_rows(args.rows, "simulations.transfer", alone, [row], conditions=args.conditions)
            table.append((labels[path], model, f"{100 * judged.mean:.2f}", f"{100 * random.mean:.2f}",
                          f"{judged.result.seconds_per_model:.0f}"))
            print(format_table(COLUMNS, table[-1:]), file=sys.stderr, flush=True)
    print(format_table(COLUMNS, table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
