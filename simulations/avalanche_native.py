"""The Avalanche plug-in as its users run it: Avalanche's own ``SplitFMNIST`` (its default
normalising transforms), Avalanche's models and strategies, the condensed memory beside them
against Avalanche's ``ReplayPlugin`` / ``GDumbPlugin`` holding the same bytes.

Every cell is one (model, strategy, memory, K, seed) run over the 5 experiences of the full
stream (60 000 training images); rows are cached as JSON in ``OUT`` so a re-run resumes, and
the table is printed at the end (the rows of the published tables are committed in
``benchmarks/avalanche-native/``).

    python -m simulations.avalanche_native --models mlp --strategies lwf --memories condensed replay --mem-per-class 10

Models: Avalanche's ``mlp`` (``SimpleMLP``), ``cnn`` (``SimpleCNN``) and ``slimresnet``
(``SlimResNet18``), and ``bncnn``, a user's own small CNN (batch norm, max pooling, dropout).

Memories: ``condensed`` (``CondensedReplayPlugin``, replay mode, matching with the preset's
ConvNet: ``Condensation(model="preset")``), ``condensed-retrain`` (retrain mode),
``condensed-strategy`` and ``condensed-strategy-retrain`` (the same, matching with fresh
copies of the strategy's own model: the default on these models, so ``condensed-strategy``
is the README's example), ``replay`` (``ReplayPlugin`` with a class-balanced buffer
of K raw images per class), ``gdumb`` (``GDumbPlugin`` of K x 10 raw images), ``none``. The
``icarl`` strategy (Avalanche's ``ICaRL``) keeps its own memory, K herded real images per
class, and ignores ``--memories``. The retrain memories train ``--memory-epochs`` epochs on
the memory at each experience, the others ``--epochs`` on the experience's data. The
condensed replay memories fill their share of every minibatch as the plug-in does by default
(``--memory-batches fill``), or draw the whole memory as Avalanche's ``ReplayPlugin`` does
(``whole``; rows named for it).
``--method`` condenses with another ddplug method than the plug-in's DM (``random`` keeps K
real images per class, as ``ReplayPlugin``'s class-balanced buffer does, drawn as the plug-in
draws its memory) and ``--set`` changes its settings (``--set param=multi:factor=2,bits=4``,
``--set init=blend:images=3``); each row records the method and the parameterisation its
memory used.

``--leakage`` adds what the memory would reveal if it were shared: after the stream,
:func:`ddplug.privacy.leakage_report` of the images the memory holds (as the strategy replays
them) against the stream's training images, with the test images as the attack's
non-members (the rows of the published table are in ``benchmarks/avalanche-leakage/``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ddplug.data import ImageDataset, download_dataset
from ddplug.errors import DdplugError
from ddplug.evaluation.report import format_table, percent
from ddplug.methods import CONDENSERS
from ddplug.privacy import leakage_report
from ddplug.settings import parse_assignments
from ddplug.storage import path_part, write_json
from simulations.provenance import parse_benchmark_args, provenance

MODELS = ("mlp", "cnn", "bncnn", "slimresnet")
OWN_FEATURES = ("mlp", "cnn", "bncnn")  # the models with a ``features`` part (what --features probes)
STRATEGIES = ("naive", "lwf", "ewc", "icarl")
MEMORIES = ("condensed", "condensed-retrain", "condensed-strategy", "condensed-strategy-retrain", "replay", "gdumb",
            "none")
OWN_MEMORY = {"icarl": "herding"}  # strategies that bring their own memory, run once whatever --memories says
RETRAIN = ("condensed-retrain", "condensed-strategy-retrain", "gdumb")
REPLAYED = ("condensed", "condensed-strategy")  # the condensed memories drawn into each minibatch
METHODS = tuple(name for name, condenser in CONDENSERS.items() if condenser.per_class)  # distillers, selections
MEMORY_EPOCHS = 30  # epochs on the memory alone per experience; rows of other counts name theirs
LEARNING_RATES = {"sgd": 0.01, "adam": 0.001}  # each optimizer's default
OPTIMIZER_NAMES = {"adam": "Adam"}  # the optimizers other than the protocol's SGD
EPOCHS = 1  # epochs on each experience's data
BATCH_SIZE = 128


def training_variant(optimizer: str, lr: float, epochs: int | None, batch_size: int) -> list[tuple[str, str]]:
    """What of a run's training differs from the protocol's (SGD with momentum 0.9 at lr 0.01,
    ``EPOCHS`` per experience, minibatches of ``BATCH_SIZE``), as (file-name part, table phrase)
    pairs: rows of another protocol get files and table lines of their own, never pooled with
    the protocol's. ``epochs`` is None for the memories that retrain (their epochs are named apart).

        >>> training_variant("sgd", 0.05, 3, 128)
        [('lr0.05', 'lr 0.05'), ('epochs3', '3 epochs per experience')]
    """
    parts = []
    if optimizer != "sgd":  # another optimizer names its rate, default or not
        parts.append((f"{optimizer}-lr{lr:g}", f"{OPTIMIZER_NAMES[optimizer]} lr {lr:g}"))
    elif lr != LEARNING_RATES["sgd"]:
        parts.append((f"lr{lr:g}", f"lr {lr:g}"))
    if epochs is not None and epochs != EPOCHS:
        parts.append((f"epochs{epochs}", f"{epochs} epochs per experience"))
    if batch_size != BATCH_SIZE:
        parts.append((f"batch{batch_size}", f"minibatches of {batch_size}"))
    return parts


def recorded_training(run: dict) -> list[str]:
    """The table phrases of ``training_variant`` for a row; rows from before their training was
    recorded ran the protocol's."""
    optimizer = run.get("optimizer", "sgd")
    epochs = None if run["memory"] in RETRAIN else run.get("epochs", EPOCHS)
    return [phrase for _, phrase in training_variant(
        optimizer, run.get("lr", LEARNING_RATES[optimizer]), epochs, run.get("batch_size", BATCH_SIZE))]


class _Grey3(torch.nn.Module):
    """Avalanche's ``SimpleCNN`` and ``SlimResNet18`` take 3 channels: Fashion-MNIST's one,
    repeated; ``SlimResNet18`` also takes only 32x32 images (``size``), so the 28x28 ones are
    resized (bilinear)."""

    def __init__(self, model: torch.nn.Module, size: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is not None:
            x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.model(x.expand(-1, 3, -1, -1))


class UserCNN(torch.nn.Module):
    """A user's own small CNN, not Avalanche's: two blocks of 3x3 convolution, batch norm, ReLU
    and 2x2 max pooling on the 1-channel 28x28 images, then dropout and two linear layers."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        nn = torch.nn
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Dropout(0.25), nn.Linear(64 * 7 * 7, 128), nn.ReLU())
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def make_model(name: str, seed: int) -> torch.nn.Module:
    from avalanche.models import SimpleCNN, SimpleMLP, SlimResNet18

    torch.manual_seed(seed)
    if name == "slimresnet":
        return _Grey3(SlimResNet18(nclasses=10), size=32)
    if name == "bncnn":
        return UserCNN(num_classes=10)
    return SimpleMLP(num_classes=10) if name == "mlp" else _Grey3(SimpleCNN(num_classes=10))


def run_cell(model_name: str, strategy_name: str, memory: str, k: int, seed: int, args: argparse.Namespace) -> dict:
    from avalanche.benchmarks.classic import SplitFMNIST
    from avalanche.training.plugins import GDumbPlugin, ReplayPlugin
    from avalanche.training.storage_policy import ClassBalancedBuffer
    from avalanche.training.determinism.rng_manager import RNGManager
    from avalanche.training.supervised import EWC, ICaRL, LwF, Naive

    from ddplug_avalanche import Condensation, CondensedReplayPlugin

    # Every generator Avalanche draws from (Python's, NumPy's, torch's), so a cell's result does
    # not depend on the cells run before it in the same process.
    RNGManager.set_random_seeds(seed)
    download_dataset("fashion-mnist", args.data_root)  # offline: unpacked from the system's copy
    benchmark = SplitFMNIST(n_experiences=5, seed=seed, dataset_root=args.data_root)
    model = make_model(model_name, seed)
    plugins: list[Any] = []
    condensed = condensation = None
    if memory.startswith("condensed"):
        matching = "strategy" if memory.startswith("condensed-strategy") else "preset"
        condensation = Condensation(method=args.method, dataset="fashion-mnist",
                                    model=matching if CONDENSERS[args.method].learns else None,
                                    settings=args.settings, progress=False, seed=seed)
        condensed = CondensedReplayPlugin(mem_per_class=k, mode="retrain" if memory in RETRAIN else "replay",
                                          fill_memory_batches=args.memory_batches == "fill",
                                          augment_memory=args.augment_memory, condensation=condensation)
        plugins.append(condensed)
    elif memory == "replay":
        plugins.append(ReplayPlugin(mem_size=10 * k, storage_policy=ClassBalancedBuffer(
            10 * k, adaptive_size=False, total_num_classes=10)))
    elif memory == "gdumb":
        plugins.append(GDumbPlugin(mem_size=10 * k))
    epochs = args.memory_epochs if memory in RETRAIN else args.epochs
    optimizer = (torch.optim.Adam(model.parameters(), lr=args.lr) if args.optimizer == "adam"
                 else torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9))
    common = dict(model=model, optimizer=optimizer,
                  criterion=torch.nn.CrossEntropyLoss(), train_mb_size=args.batch_size, train_epochs=epochs,
                  eval_mb_size=1000, plugins=plugins, device="cpu", evaluator=None)
    if strategy_name == "icarl":  # its own memory: herded exemplars, distillation, nearest-mean classifier
        del common["model"], common["criterion"], common["plugins"]
        features, classifier = _split_for_icarl(model)
        strategy = ICaRL(feature_extractor=features, classifier=classifier, memory_size=k, buffer_transform=None,
                         fixed_memory=False, **common)
    elif strategy_name == "lwf":
        strategy = LwF(alpha=1.0, temperature=2.0, **common)
    elif strategy_name == "ewc":
        strategy = EWC(ewc_lambda=0.4, **common)
    else:
        strategy = Naive(**common)
    began = time.perf_counter()
    features_report = []
    for index, experience in enumerate(benchmark.train_stream):
        strategy.train(experience)
        if args.features:  # the probe's evaluation counts in the run's seconds
            features_report.append(_features_after(strategy.model, benchmark.test_stream[:index + 1]))
    seconds = time.perf_counter() - began
    test = _images(benchmark.test_stream)
    accuracy = _accuracy(strategy.model, *test)
    finite = all(bool(torch.isfinite(parameter).all()) for parameter in strategy.model.parameters())
    costs = condensed.storage_policy.costs if condensed else []
    leakage = _memory_leakage(plugins[0], benchmark.train_stream, test, seed) if args.leakage else None
    return {"model": model_name, "strategy": strategy_name, "memory": memory, "mem_per_class": k, "seed": seed,
            "optimizer": args.optimizer, "lr": args.lr, "epochs": epochs, "batch_size": args.batch_size,
            **({"memory_batches": args.memory_batches} if memory in REPLAYED else {}),
            **({"augment_memory": True} if condensed and condensed.storage_policy.augmented else {}),
            "final_accuracy": accuracy,
            "finite_weights": finite, "seconds": seconds,
            **({"condensation_method": args.method, "condensation_param": memory_param(condensation, model),
                "condensation_settings": args.settings} if condensation else {}),
            **provenance("simulations.avalanche_native", None, conditions=args.conditions),
            "condensation_seconds": sum(cost.seconds for cost in costs) if condensed else None,
            "memory_images": len(condensed.storage_policy.buffer) if condensed else None,
            **({"features_after_each_experience": features_report} if args.features else {}),
            **({"leakage": leakage} if leakage else {})}


def memory_param(condensation: Any, model: torch.nn.Module) -> str:
    """The parameterisation a ``Condensation`` stores the memory of a strategy training ``model``
    in: a selection keeps raw images (``pixels``)."""
    method = condensation.method
    if not CONDENSERS[method].learns:
        return "pixels"
    settings = {**condensation.preset.method_settings(method), **condensation.method_settings(model)}
    return CONDENSERS[method].make_config(settings).param


def _split_for_icarl(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The feature extractor (flat features, as the model's own forward makes them) and the
    linear classifier that iCaRL trains apart."""
    inner = model.model if isinstance(model, _Grey3) else model
    if hasattr(inner, "linear"):  # SlimResNet18: its forward, pooled features, then `linear`
        classifier, inner.linear = inner.linear, torch.nn.Identity()
        return model, classifier
    if isinstance(model, _Grey3):
        return torch.nn.Sequential(_Grey3(inner.features), torch.nn.Flatten()), inner.classifier
    if isinstance(model, UserCNN):  # its features end flat
        return model.features, model.classifier
    return torch.nn.Sequential(torch.nn.Flatten(), inner.features), inner.classifier


def _features_after(model: torch.nn.Module, stream: Any) -> dict:
    """On the test data of the experiences seen so far: the share of the model's feature units
    (the input of its classifier, after a ReLU) that no image activates, and the classes it
    predicts. A share near 1 and one predicted class is a network whose features died."""
    features = (model.model if isinstance(model, _Grey3) else model).features
    seen: list[torch.Tensor] = []
    hook = features.register_forward_hook(lambda module, inputs, output: seen.append(output.flatten(1).amax(0)))
    predicted: set[int] = set()
    model.eval()
    with torch.no_grad():
        for x in _images(stream)[0].split(1000):
            predicted.update(model(x).argmax(1).tolist())
    hook.remove()
    strongest = torch.stack(seen).amax(0)
    return {"dead_feature_share": float((strongest <= 0).float().mean()), "predicted_classes": sorted(predicted)}


def _memory_leakage(plugin: Any, train_stream: Any, test: tuple[torch.Tensor, torch.Tensor], seed: int) -> dict:
    """The leakage report's summary for the images ``plugin``'s memory holds, against the
    training stream's images (members) and the test images and labels ``test`` (non-members)."""
    memory = torch.cat([x for x, *_ in torch.utils.data.DataLoader(plugin.storage_policy.buffer.eval(),
                                                                    batch_size=1000)])
    # The report compares centred directions, which no per-channel normalisation changes: (0, 1) stands for it.
    members, holdout = (ImageDataset(*images, 10, (0.0,), (1.0,), "fashion-mnist")
                        for images in (_images(train_stream), test))
    return {**leakage_report(memory, members, holdout, seed=seed).summary(), "memory_images": len(memory)}


def _images(stream: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image and label of ``stream``'s experiences, as delivered for evaluation."""
    batches = [(x, y) for experience in stream
               for x, y, *_ in torch.utils.data.DataLoader(experience.dataset.eval(), batch_size=1000)]
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]).long()


def _accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """``model``'s accuracy on ``images`` (the whole test stream's, every experience's)."""
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(x).argmax(1) for x in images.split(1000)])
    return int((predicted == labels).sum()) / len(labels)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=["mlp"])
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=["lwf"])
    parser.add_argument("--memories", nargs="+", choices=MEMORIES, default=["condensed", "replay"])
    parser.add_argument("--mem-per-class", nargs="+", type=int, default=[10])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="epochs on each experience's data")
    parser.add_argument("--memory-epochs", type=int, default=MEMORY_EPOCHS,
                        help="epochs on the memory alone per experience, for the memories that retrain on it")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--memory-batches", choices=("fill", "whole"), default="fill",
                        help="condensed replay: fill the memory's share of every minibatch, repeating a small memory "
                             "(the plug-in's default), or draw the whole memory as Avalanche's ReplayPlugin does")
    parser.add_argument("--augment-memory", action=argparse.BooleanOptionalAction, default=None,
                        help="condensed memories: each sample drawn for training gets its own DSA transform "
                             "(default: the plug-in's default for the model's kind of network)")
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd", help="sgd: momentum 0.9")
    parser.add_argument("--lr", type=float, default=None,
                        help="default: " + ", ".join(f"{lr:g} for {name}" for name, lr in LEARNING_RATES.items()))
    parser.add_argument("--data-root", type=Path, default=Path.home() / ".avalanche" / "data")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/avalanche-native"))
    parser.add_argument("--conditions", default="no other load", help="what else ran beside the runs")
    parser.add_argument("--method", default="dm", choices=METHODS,
                        help="the ddplug method that condenses the condensed memories (default: the plug-in's, dm)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of the condensed memories' method, e.g. iterations=500 or param=pixels:bits=4 "
                             "(default: the plug-in's); named in the rows' files")
    parser.add_argument("--features", action="store_true",
                        help="after each experience, record the share of dead feature units and the classes predicted")
    parser.add_argument("--leakage", action="store_true",
                        help="after the stream, how close the memory's images lie to the stream's (a leakage report)")
    args = parse_benchmark_args(parser, argv)
    unheld = [name for name in (*args.strategies, *args.memories) if name in (*OWN_MEMORY, "none")]
    if args.leakage and unheld:  # a row without a report would leave its table nothing to show
        parser.error(f"--leakage reports on the images a memory plug-in holds, which {unheld[0]} has not: "
                     "drop it from --strategies and --memories")
    needs_features = [model for model in args.models if model not in OWN_FEATURES]
    if needs_features and args.features:
        parser.error(f"--features needs a model's features part, which {needs_features[0]} has not: "
                     f"use {' or '.join(OWN_FEATURES)}")
    if args.lr is None:
        args.lr = LEARNING_RATES[args.optimizer]
    from ddplug_avalanche import Condensation

    try:  # a bad --set fails here, in one line
        args.settings = parse_assignments(args.settings)
        condensation = Condensation(method=args.method, settings=args.settings)
    except DdplugError as error:
        parser.error(str(error))
    rows = []
    for model in args.models:
        # a condensed memory's file names its settings and code, so rows of other codes sit beside it
        network = make_model(model, 0)
        param = memory_param(condensation, network)
        augmented = condensation.augments(network) if args.augment_memory is None else args.augment_memory
        named = {**args.settings, "param": param, **({"method": args.method} if args.method != "dm" else {})}
        variant = "".join(f"-{key}-{path_part(value)}" for key, value in sorted(named.items()))
        for strategy in args.strategies:
            for memory in [OWN_MEMORY[strategy]] if strategy in OWN_MEMORY else args.memories:
                for k in args.mem_per_class:
                    for seed in range(args.seeds):
                        data_epochs = None if memory in RETRAIN else args.epochs
                        training = "".join(f"-{part}" for part, _ in training_variant(
                            args.optimizer, args.lr, data_epochs, args.batch_size)) + \
                            ("-features" if args.features else "") + ("-leakage" if args.leakage else "") + \
                            (f"-memory-epochs{args.memory_epochs}" if memory in RETRAIN and
                             args.memory_epochs != MEMORY_EPOCHS else "") + \
                            ("-memory-batches-whole" if memory in REPLAYED and args.memory_batches == "whole"
                             else "") + \
                            ("-augment-memory" if memory.startswith("condensed") and augmented else "") + \
                            (variant if memory.startswith("condensed") else "")
                        path = args.out / f"{model}-{strategy}-{memory}-k{k}{training}-seed{seed}.json"
                        if not path.exists():
                            print(f"running {path.stem}", file=sys.stderr, flush=True)
                            write_json(path, run_cell(model, strategy, memory, k, seed, args))
                        rows.append(json.loads(path.read_text()))
    print(format_table(("model", "strategy", "training", "memory", "K", "final accuracy %", "s per run",
                        "condensation s"),
                       _summary(rows)))
    return 0


def _summary(rows: list[dict]) -> list[tuple]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        training = ", ".join(recorded_training(row)) or "protocol"
        groups.setdefault((row["model"], row["strategy"], training, row["memory"], row["mem_per_class"]), []).append(row)
    lines = []
    for key, runs in groups.items():
        accuracies = [run["final_accuracy"] for run in runs]
        std = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        condensing = [run["condensation_seconds"] for run in runs if run["condensation_seconds"] is not None]
        lines.append((*key, percent(statistics.mean(accuracies), std), f"{statistics.mean(r['seconds'] for r in runs):.0f}",
                      f"{statistics.mean(condensing):.0f}" if condensing else "-"))
    return lines


if __name__ == "__main__":
    sys.exit(main())
