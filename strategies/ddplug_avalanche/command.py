"""``ddplug cl``: the subcommand the core discovers through the ``ddplug.commands`` entry
point; its options, and the call into :func:`ddplug_avalanche.runner.run_benchmark`."""

from __future__ import annotations

import argparse

from ddplug.commands import Command
from ddplug.methods import CONDENSERS
from ddplug_avalanche.streams import STRATEGIES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``ddplug cl``."""
    parser.add_argument("--benchmark", default="split-fmnist",
                        help="split-DATASET: a dataset ddplug reads, split in class order")
    parser.add_argument("--experiences", type=int, default=5, help="experiences (the class count must divide evenly)")
    parser.add_argument("--strategy", default="condensed", help=", ".join(STRATEGIES))
    parser.add_argument("--mem-per-class", type=int, default=None,
                        help="memory budget per class seen, in raw uint8 images' bytes, for every strategy "
                             "(default 10)")
    parser.add_argument("--mem-size", type=int, default=None,
                        help="instead: a budget of that many raw images' bytes in all, shared by the classes seen "
                             "(shares shrink as classes arrive)")
    parser.add_argument("--method", default="dm", help="condensation method of the condensed strategies: " + ", ".join(
        name for name, condenser in CONDENSERS.items() if condenser.per_class))
    parser.add_argument("--param", default=None,
                        help="parameterisation of the condensed memory, e.g. pixels or multi:factor=2 (default: the "
                             "stream's: multi:factor=2,bits=4 with the cpu preset)")
    parser.add_argument("--preset", default="cpu", help="cpu (minutes on 2 cores: data subsets, small model) or paper")
    parser.add_argument("--seeds", type=int, default=3, help="runs with seeds 0..N-1")
    parser.add_argument("--json", action="store_true", help="print a JSON summary as the last line of stdout")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per experience (default: the preset's; gdumb and condensed-retrain keep theirs)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--out", default=None, help="output folder (default: results/continual-<benchmark>-...)")


def run_from_args(args: argparse.Namespace) -> int:
    from ddplug_avalanche.runner import ContinualRun, run_benchmark
    from ddplug_avalanche.streams import MemoryBudget

    mem_per_class = 10 if args.mem_per_class is None and args.mem_size is None else args.mem_per_class
    run = ContinualRun(strategy=args.strategy, experiences=args.experiences,
                       memory=MemoryBudget(per_class=mem_per_class, total=args.mem_size), method=args.method,
                       param=args.param, preset=args.preset, epochs=args.epochs)
    run_benchmark(args.benchmark, run, seeds=args.seeds, device=args.device, out=args.out, print_json=args.json)
    return 0


COMMAND = Command(name="cl", help="class-incremental learning with a condensed memory (Avalanche)", extra="avalanche",
                  requires=("avalanche",), add_arguments=add_arguments, run=run_from_args)
