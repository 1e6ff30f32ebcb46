"""The one-call Python API: :func:`distill` and :func:`evaluate` do what ``ddplug distill``
and ``ddplug evaluate`` do (the command line is a shell over them), with the same defaults.

Examples:
    Condense scikit-learn's 8x8 digits into the bytes of one image per class with DM, and
    judge the set as stored against random real images of the same bytes:

    >>> import ddplug
    >>> data = ddplug.load_dataset("digits")
    >>> run = ddplug.distill(data, "dm", ipc=1, iterations=5, model="convnet:width=8,depth=2",
    ...                      overrides={"eval.model": "convnet:width=8,depth=2", "eval.epochs": "5",
    ...                                 "eval.num_models": "2"}, progress=False)
    >>> run.method, run.synthetic.images.shape[1:], len(run.judgement.accuracies)
    ('dm', torch.Size([1, 8, 8]), 2)
    >>> 0.0 <= run.mean <= 1.0 and "random" in run.judgement.baselines
    True
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ddplug.data import DatasetSplits, ImageDataset, load_dataset
from ddplug.devices import resolve_device
from ddplug.distributed import is_main, join_from_environment
from ddplug.errors import DdplugError
from ddplug.memory import peak_memory
from ddplug.methods import CONDENSERS, Condensed, get_condenser
from ddplug.pipeline import DISTILL_FILES, JUDGEMENT_FILES, Judgement, judge, save_outputs, write_judgement
from ddplug.presets import Preset, Recipe, get_preset
from ddplug.sets import SET_FILE, SyntheticSet, load_set, payload_bytes, raw_images_per_class, save_set
from ddplug.settings import kebab
from ddplug.storage import path_part, writable_folder

DEFAULT_IPC = 10
# ``ddplug distill``'s output folder; ``out`` may use the same fields.
RUN_FOLDER = "runs/{dataset}-{method}-{budget}-seed{seed}"


@dataclass
class DistillResult:
    """What :func:`distill` returns.

    Attributes:
        synthetic: the set as stored (quantised to its storage dtypes and decoded again).
        condensed: the run that made it: iterations, seconds, losses, whether interrupted.
        method: the method that ran (the recipe's when none was named).
        recipe: the recipe chosen for the budget, or None when a method was named.
        judgement: the set and its baselines evaluated, or None (``evaluate=False``, or interrupted).
        summary: what ``ddplug distill --json`` prints.
        out_dir: where the files are, or None when nothing was written.
    """

    synthetic: SyntheticSet
    condensed: Condensed
    method: str
    recipe: Recipe | None
    judgement: Judgement | None
    summary: dict[str, Any]
    out_dir: Path | None

    @property
    def mean(self) -> float:
        """Mean test accuracy (a fraction) of the networks trained on the set."""
        return self._judged().mean

    @property
    def std(self) -> float:
        return self._judged().std

    def table(self) -> str:
        """The table ``ddplug distill`` prints."""
        return self._judged().table()

    def _judged(self) -> Judgement:
        if self.judgement is None:
            raise DdplugError("this set was not evaluated (evaluate=False, or the run was interrupted)")
        return self.judgement


def resolve_preset(preset: str | Preset = "cpu", overrides: dict[str, str] | None = None) -> Preset:
    """``preset`` (a name or a :class:`Preset`) with ``overrides`` (``{"eval.epochs": "100",
    "dm.iterations": "500"}``) applied; a bad evaluation model fails here, before any work."""
    from ddplug.models import create_model

    resolved = (get_preset(preset) if isinstance(preset, str) else preset).override(overrides or {})
    create_model(resolved.evaluation.model, in_channels=1, num_classes=2, image_size=(28, 28))
    return resolved


def baseline_names() -> list[str]:
    """The selections that can stand beside a set at its bytes."""
    return [name for name, condenser in CONDENSERS.items() if condenser.baseline and condenser.per_class]


def check_baselines(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` if every one is a per-class baseline selection, else one clear error."""
    allowed = baseline_names()
    for name in names:
        if name not in allowed:
            raise DdplugError(f"unknown baseline {name!r}; choose from {', '.join(allowed)}")
    return tuple(names)


def distill(
    data: str | DatasetSplits | ImageDataset,
    method: str | None = None,
    *,
    ipc: int | None = None,
    budget_bytes: int | None = None,
    preset: str | Preset = "cpu",
    overrides: dict[str, str] | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    out: str | Path | None = None,
    baselines: Sequence[str] = ("random",),
    evaluate: bool = True,
    snapshots: int = 0,
    data_root: str | Path | None = None,
    data_storage: str = "auto",
    progress: bool = True,
    **settings: Any,
) -> DistillResult:
    """Condense ``data`` into a budget, store the set, and judge it as stored.

    Args:
        data: a dataset name (``"fashion-mnist"``, ``"imagefolder:PATH"``, ...), its splits,
            or a training set alone (then ``evaluate=False``).
        method: a registered method or baseline; None runs the preset's recipe for the budget.
        ipc: the budget as the bytes of ``ipc`` raw uint8 images per class (default 10).
        budget_bytes: the budget as bytes for the whole set, instead of ``ipc``.
        preset: ``"cpu"``, ``"paper"`` or a :class:`Preset`.
        overrides: preset fields by name, values as strings (``{"eval.epochs": "100"}``).
        seed: seeds the distillation, the evaluation networks and the baselines.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        out: the folder for the set, its picture, the checkpoint and the judgement; it may
            name the fields of :data:`RUN_FOLDER`. None writes nothing (and cannot resume).
        baselines: selections judged beside the set at its bytes.
        evaluate: False only condenses and stores.
        snapshots: also store the set at this many evenly spaced points (needs ``out``).
        data_root: where datasets are, for a dataset name.
        data_storage: for a dataset name: ``auto``, ``memory`` or ``disk`` (image folders stream from disk).
        progress: show progress bars.
        **settings: the method's settings (``iterations=600``, ``param="pixels:bits=2"``),
            over the recipe's and the preset's; values may be strings as typed on the CLI.

    Returns:
        A :class:`DistillResult`.

    Raises:
        DdplugError: for any mistake in the arguments, before the work starts.
    """
    if ipc is not None and budget_bytes is not None:
        raise DdplugError("--ipc and --bytes both set the budget: give one")
    for name, value in (("--ipc", ipc), ("--bytes", budget_bytes)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise DdplugError(f"{name} must be at least 1, got {value}")
    if isinstance(snapshots, bool) or not isinstance(snapshots, int) or snapshots < 0:
        raise DdplugError(f"--snapshots must be 0 or more, got {snapshots}")
    if method is not None:
        get_condenser(method)
    preset = resolve_preset(preset, overrides)
    device = join_from_environment(resolve_device(str(device)))
    progress = progress and is_main()
    baselines = check_baselines(baselines)
    splits, train = _splits(data, data_root, data_storage, evaluate)
    budget_ipc = DEFAULT_IPC if ipc is None and budget_bytes is None else ipc
    if budget_ipc is None:
        budget_ipc = max(1, raw_images_per_class(budget_bytes, train.num_classes, (train.in_channels, *train.image_size)))
    recipe = preset.recipe_for(budget_ipc) if method is None else None
    method = recipe.method if recipe else method
    settings = {**(recipe.settings if recipe else {}), **settings}
    condenser = get_condenser(method)
    _check_settings(method, settings)
    _warn_other_scopes(method, overrides or {})
    if budget_bytes is not None:
        if not condenser.learns:
            raise DdplugError(f"--bytes is a budget for a learned code; {method} picks whole raw images: use --ipc")
        settings["budget_bytes"] = budget_bytes  # the config checks the bytes hold a raw image per class
    budget = f"ipc{budget_ipc}" if budget_bytes is None else f"{budget_bytes}bytes"
    out_dir = None if out is None else writable_folder(_run_folder(out, train.name, method, budget, seed),
                                                       files=DISTILL_FILES)
    condensed = condenser.condense(train, ipc=budget_ipc, preset=preset, seed=seed, settings=settings, device=device,
                                   out_dir=out_dir, progress=progress, snapshots=snapshots)
    # Under torchrun rank 0 writes the files; the others judge their own copy of the same set.
    synthetic, files, stored_bytes = _stored(condensed, out_dir if is_main() else None) if condenser.per_class else (
        condensed.synthetic, {}, None)
    summary: dict[str, Any] = {
        "method": method, "dataset": train.name, "ipc": budget_ipc, "recipe": recipe.command() if recipe else None,
        "param": synthetic.param,
        "decoded_per_class": synthetic.meta.get("decoded_per_class"),
        "bytes": stored_bytes,  # the file's tensors: code, labels, lr
        "iterations": condensed.iterations,
        "distill_seconds": condensed.seconds,
        "seconds_per_iteration": condensed.seconds / condensed.iterations if condensed.iterations else None,
        "interrupted": condensed.interrupted,
        "final_loss": condensed.losses[-1] if condensed.losses else None,
        "device": str(device),
        "out_dir": None if out_dir is None else str(out_dir),
        "files": files,
        **_peak(device),
    }
    judgement = None
    if evaluate and not condensed.interrupted:
        judgement = judge(synthetic, splits, preset, method=method, baselines=baselines, seed=seed, device=device,
                          progress=progress, zca=condensed.zca)
        judgement.extra.update(summary, **_peak(device))
        summary = write_judgement(judgement, out_dir) if out_dir is not None and is_main() else judgement.summary()
    return DistillResult(synthetic, condensed, method, recipe, judgement, summary, out_dir)


def evaluate(
    synthetic: SyntheticSet | str | Path,
    data: str | DatasetSplits | None = None,
    *,
    preset: str | Preset = "cpu",
    overrides: dict[str, str] | None = None,
    model: str | None = None,
    models: int | None = None,
    epochs: int | None = None,
    baselines: Sequence[str] = ("random",),
    seed: int = 0,
    device: str | torch.device = "auto",
    out: str | Path | None = None,
    experiment: int = 0,
    data_root: str | Path | None = None,
    data_storage: str = "auto",
    progress: bool = True,
) -> Judgement:
    """Train fresh networks on a set and on each baseline of its bytes; test them.

    Args:
        synthetic: a set, or the path of a set file (ddplug's, or DC/DSA/DM's and MTT's
            files) or of the folder holding one.
        data: the dataset's name or splits; None reads the name from a ddplug file.
        preset: ``"cpu"``, ``"paper"`` or a :class:`Preset`.
        overrides: preset fields by name, values as strings.
        model: the evaluation network's spec (``eval.model``).
        models: how many fresh networks (``eval.num_models``).
        epochs: epochs per network (``eval.epochs``).
        baselines: selections judged beside the set at its bytes.
        seed: seeds the networks and the baselines.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        out: a folder for ``evaluation.json`` and ``accuracy.png``; None writes nothing.
        experiment: which set of a DC-style file holding several.
        data_root: where datasets are, for a dataset name.
        data_storage: for a dataset name: ``auto``, ``memory`` or ``disk`` (image folders stream from disk).
        progress: show progress bars.

    Returns:
        The :class:`~ddplug.pipeline.Judgement`: ``.mean``, ``.std``, ``.accuracies`` of the
        set, ``.baselines`` by name, ``.table()``.

    Examples:
        >>> import ddplug, torch
        >>> data = ddplug.load_dataset("digits")
        >>> picked = ddplug.select_subset("random", data.train, ipc=2, seed=0)
        >>> judged = ddplug.evaluate(picked, data, model="mlp:width=32", models=2, epochs=5, baselines=(),
        ...                          progress=False)
        >>> len(judged.accuracies), judged.result.model
        (2, 'mlp:width=32')
    """
    evaluation = {"eval.model": model, "eval.num_models": models, "eval.epochs": epochs}
    preset = resolve_preset(preset, {**(overrides or {}), **{k: str(v) for k, v in evaluation.items() if v is not None}})
    device = join_from_environment(resolve_device(str(device)))
    progress = progress and is_main()
    baselines = check_baselines(baselines)
    source = None
    if not isinstance(synthetic, SyntheticSet):
        source = Path(synthetic)
        if not source.exists():
            raise DdplugError(f"{source} does not exist: give the path of a synthetic set file or of the folder holding it")
    if data is None:
        if source is None:
            data = synthetic.meta.get("dataset")
        else:
            synthetic = load_set(source)  # only ddplug's own files name their dataset
            data = synthetic.meta.get("dataset")
        if not data:
            raise DdplugError(f"{source or 'the set'} does not say which dataset it distils: name it with --dataset NAME")
    splits, _ = _splits(data, data_root, data_storage, True)
    if not isinstance(synthetic, SyntheticSet):
        synthetic = load_set(source, dataset=splits.train, experiment=experiment)
    method = synthetic.meta.get("method", "unknown")
    if method in CONDENSERS and not CONDENSERS[method].per_class:
        raise DdplugError(f"{source or 'the set'} says it is method {method!r}, the whole dataset, which no set "
                          "file is: it cannot be judged as one")
    out_dir = None if out is None else writable_folder(out, files=JUDGEMENT_FILES)
    judgement = judge(synthetic, splits, preset, method=method, baselines=baselines, seed=seed, device=device,
                      progress=progress)
    judgement.extra.update({
        "iterations": synthetic.meta.get("iterations"), "distill_seconds": synthetic.meta.get("distill_seconds"),
        "source": None if source is None else str(source), "device": str(device),
        "out_dir": None if out_dir is None else str(out_dir), **_peak(device)})
    if out_dir is not None and is_main():
        write_judgement(judgement, out_dir)
    return judgement


def _splits(data: str | DatasetSplits | ImageDataset, data_root: str | Path | None, storage: str,
            evaluate: bool) -> tuple[DatasetSplits | None, ImageDataset]:
    if isinstance(data, str):
        data = load_dataset(data, data_root, storage=storage)
    if isinstance(data, DatasetSplits):
        return data, data.train
    if isinstance(data, ImageDataset):
        if evaluate:
            raise DdplugError("judging a set needs test images: pass the dataset's splits (DatasetSplits) "
                              "or evaluate=False")
        return None, data
    raise DdplugError(f"data must be a dataset name, DatasetSplits or ImageDataset, got {type(data).__name__}")


def _check_settings(method: str, settings: dict[str, Any]) -> None:
    """Every setting is one of ``method``'s (the flags of ``ddplug distill`` are all methods')."""
    fields = get_condenser(method).setting_names()
    if settings and not fields:
        raise DdplugError(f"{', '.join(_flag(name) for name in settings)}: {method} takes no settings, "
                          "so it has no such setting")
    for name in settings:
        if name not in fields:
            owners = [other for other, condenser in CONDENSERS.items() if name in condenser.setting_names()]
            where = f"it is one of {', '.join(owners)}" if owners else "no method has it"
            raise DdplugError(f"{_flag(name)} is not a setting of {method} ({where}); drop it or pick such a method")


def _flag(name: str) -> str:
    return f"--{kebab(name)}"


def _warn_other_scopes(method: str, overrides: dict[str, str]) -> None:
    for key, value in overrides.items():
        scope = key.partition(".")[0]
        if scope not in ("eval", "*", method):
            warnings.warn(f"--set {key}={value} is a setting of {scope}, not of {method}, which this run uses: "
                          "it has no effect", stacklevel=3)


def _run_folder(out: str | Path, dataset: str, method: str, budget: str, seed: int) -> Path:
    try:
        return Path(str(out).format(dataset=path_part(dataset), method=method, budget=budget, seed=seed))
    except (KeyError, IndexError, ValueError) as error:
        raise DdplugError(f"output folder {out}: {error!r} is not a field; fields are {{dataset}}, {{method}}, "
                          "{budget} and {seed}") from None


def _stored(condensed: Condensed, out_dir: Path | None) -> tuple[SyntheticSet, dict[str, str], int]:
    """What was stored is what is judged: the code at its storage dtypes, decoded again."""
    if out_dir is not None:
        files = save_outputs(condensed, out_dir)
        return load_set(files["set"]), files, payload_bytes(files["set"])
    with tempfile.TemporaryDirectory() as folder:  # the set's file only: no picture nobody sees
        path = save_set(condensed.synthetic, Path(folder) / SET_FILE)
        return load_set(path), {}, payload_bytes(path)


def _peak(device: torch.device) -> dict[str, Any]:
    megabytes, kind = peak_memory(device)
    return {"peak_memory_mb": megabytes, "peak_memory_kind": kind}


def print_warnings_as_lines(message: warnings.WarningMessage | Warning, *_: Any, **__: Any) -> None:
    """``warnings.showwarning`` for the command line: one ``ddplug: warning: ...`` line."""
    print(f"ddplug: warning: {message}", file=sys.stderr)
