"""The loop that runs a distiller: progress bar, checkpoints, resume, snapshots, and a
clean stop on Ctrl-C or SIGTERM, so every method behaves alike around its steps."""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ddplug.data import ImageDataset
from ddplug.methods.condenser import (
    CHECKPOINT_FILE,
    C,
    Condensed,
    Condenser,
    register_condenser,
    snapshot_path,
)
from ddplug.distributed import any_rank, is_main, world_size
from ddplug.errors import DdplugError
from ddplug.methods.base import Distiller
from ddplug.methods.config import DistillConfig, check_private
from ddplug.sets import SyntheticSet, save_set
from ddplug.sets.files import unpickling_cause
from ddplug.storage import atomic_write

if TYPE_CHECKING:
    from ddplug.presets import Preset

MAX_ITERATIONS = 10**9  # a checkpoint recording more is not one ddplug wrote


def run_distillation(
    distiller: Distiller,
    *,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 100,
    log_every: int = 10,
    progress: bool = True,
    snapshot_every: int | None = None,
    on_snapshot: Callable[[SyntheticSet], None] | None = None,
) -> Condensed:
    """Run ``distiller`` up to its configured number of iterations.

    With ``checkpoint``, state is saved there every ``checkpoint_every`` iterations, at the
    end and on Ctrl-C, and a run finding a checkpoint of the same method and settings
    resumes from it. Ctrl-C stops after the step in flight, so the saved state is always a
    whole step; a second Ctrl-C aborts at once. The loss reaches the host only every
    ``log_every`` iterations (one sync), not at each step.

    With ``snapshot_every``, ``on_snapshot`` receives the set after every ``snapshot_every``
    iterations (not the last), its meta holding ``iterations`` and ``distill_seconds`` (wall
    time since the start, resumed runs included): what time-to-accuracy curves are made of.

    Under ``torchrun`` every rank runs the same seeded steps (the same set); rank 0 alone
    shows progress and writes the checkpoint and the snapshots, and every rank resumes from it.
    A Ctrl-C or SIGTERM that reaches any rank stops every rank at the same step: the next
    multiple of ``log_every``.

    Args:
        distiller: what :func:`create_distiller` made.
        checkpoint: a file to save the state to and resume from; None for none.
        checkpoint_every: iterations between checkpoints.
        log_every: iterations between the losses' trips to the host (and the progress bar's).
        progress: show a progress bar (rank 0 only).
        snapshot_every: iterations between snapshots of the set; None for none.
        on_snapshot: what receives each snapshot.

    Returns:
        The :class:`Condensed` result: the set, the iterations done, the seconds, the losses,
        and whether a signal stopped it early.

    Examples:
        >>> from ddplug.data import load_dataset
        >>> from ddplug.methods import create_distiller, make_config
        >>> digits = load_dataset("digits")
        >>> distiller = create_distiller("dm", digits.train, make_config("dm", {"ipc": 1, "iterations": 4}))
        >>> done = run_distillation(distiller, progress=False)
        >>> done.iterations, len(done.losses), len(done.synthetic)
        (4, 4, 10)
    """
    total = distiller.config.iterations
    start, losses, earlier_seconds = _resume(distiller, checkpoint)
    progress = progress and is_main()
    writes = is_main()
    if start and writes:
        print(f"resuming {distiller.name} from iteration {start} of {total} ({earlier_seconds:.0f} s of distillation "
              f"so far; checkpoint {checkpoint})", file=sys.stderr, flush=True)
    pending: list[Tensor] = []
    done = start
    bar = tqdm(total=total, initial=start, desc=f"distill {distiller.name}", disable=not progress, unit="it")
    began = time.perf_counter()

    def elapsed() -> float:
        return earlier_seconds + time.perf_counter() - began

    with _StopRequest() as stop:
        for iteration in range(start, total):
            distiller.begin(iteration)
            pending.append(distiller.step(iteration))
            done = iteration + 1
            bar.update(1)
            at_log = done % log_every == 0 or done == total
            # Ranks stop at the same step, or one would wait forever for the others' sums: they
            # vote at each log point (one small collective), one process stops after any step.
            stopping = any_rank(stop.requested, distiller.device) if world_size() > 1 and at_log else (
                stop.requested and world_size() == 1)
            if at_log or stopping:
                losses.extend(torch.stack(pending).tolist())
                pending.clear()
                if not math.isfinite(losses[-1]):  # checked where the losses reach the host anyway
                    raise DdplugError(f"{distiller.name} diverged by iteration {done} (loss {losses[-1]}): lower "
                                      f"--lr-images, the learning rate of the {distiller.param.spec} code")
                bar.set_postfix(loss=f"{losses[-1]:.4g}")
            if writes and checkpoint is not None and (done % checkpoint_every == 0 or done == total or stopping):
                _save_checkpoint(distiller, checkpoint, done, losses, elapsed())
            if writes and on_snapshot is not None and snapshot_every and done % snapshot_every == 0 and done < total:
                on_snapshot(_described_set(distiller, done, elapsed()))
            if stopping:
                break
    bar.close()
    seconds = elapsed()
    return Condensed(_described_set(distiller, done, seconds), distiller.name, done, seconds, losses,
                     interrupted=done < total, zca=distiller.zca)


def _described_set(distiller: Distiller, iterations: int, seconds: float) -> SyntheticSet:
    synthetic = distiller.synthetic_set()
    synthetic.meta.update(iterations=iterations, distill_seconds=seconds)
    if distiller.privacy is not None:
        synthetic.meta["privacy"] = distiller.privacy.report(iterations)
    return synthetic


class _StopRequest:
    """Turns the first Ctrl-C or SIGTERM (what ``timeout``, batch schedulers and containers
    send) into a request to stop after the current step; a second one aborts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in (self._previous or {}).items():
            signal.signal(signum, handler)


def _checkpoint_identity(distiller: Distiller) -> dict[str, Any]:
    config = dataclasses.asdict(distiller.config)
    if distiller.config.extendable():  # more iterations continue the same trajectory
        config.pop("iterations")
    return {"method": distiller.name, "dataset": distiller.real.name, "data": _data_fingerprint(distiller.real),
            "config": config}


def _data_fingerprint(real: ImageDataset) -> dict[str, Any]:
    """Enough of the data to tell another copy (another --data-root) from this one, cheaply."""
    sample = real.images[torch.linspace(0, len(real) - 1, min(64, len(real))).long()]
    return {"examples": len(real), "class_counts": real.class_counts().tolist(),
            "sample_sum": round(float(sample.double().sum()), 3)}


def _save_checkpoint(distiller: Distiller, path: str | Path, iteration: int, losses: list[float], seconds: float) -> None:
    state = {"identity": _checkpoint_identity(distiller), "iteration": iteration, "losses": losses, "seconds": seconds,
             "state": distiller.state_dict()}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _load_checkpoint(distiller: Distiller, path: str | Path) -> tuple[int, list[float], float]:
    def refuse(why: str) -> DdplugError:
        return DdplugError(f"checkpoint {path} {why}; delete it to start afresh")

    try:
        saved = torch.load(path, map_location=distiller.device, weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable checkpoint means the same to the user
        raise refuse(f"is unreadable ({unpickling_cause(error)})") from None
    if not isinstance(saved, dict):
        raise refuse(f"holds a {type(saved).__name__}, not a ddplug checkpoint")
    identity = _checkpoint_identity(distiller)
    if saved.get("identity") != identity:
        raise DdplugError(
            f"checkpoint {path} was made by a different run ({_differences(saved.get('identity'), identity)}); "
            "use another output folder, or delete the checkpoint to start afresh"
        )
    iteration, losses, seconds = saved.get("iteration"), saved.get("losses"), saved.get("seconds", 0.0)
    if isinstance(iteration, bool) or not isinstance(iteration, int) or not 0 <= iteration <= MAX_ITERATIONS:
        raise refuse(f"records iteration {iteration!r}, not a whole number within 0..{MAX_ITERATIONS}")
    if not (isinstance(losses, list) and len(losses) <= iteration
            and all(isinstance(loss, float) and math.isfinite(loss) for loss in losses)):
        raise refuse(f"records no list of at most {iteration} finite losses")
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0):
        raise refuse(f"records {seconds!r} seconds")
    state = saved.get("state")
    if not isinstance(state, dict):
        raise refuse("holds no state")
    for name, tensor in distiller.learnables().items():
        found = state.get(name)
        if not isinstance(found, Tensor) or found.shape != tensor.shape or not found.is_floating_point():
            got = f"{tuple(found.shape)}" if isinstance(found, Tensor) else type(found).__name__
            raise refuse(f"holds {name} as {got}, where this run's is {tuple(tensor.shape)}")
        if not torch.isfinite(found).all():
            raise refuse(f"holds NaN or infinite values in {name}")
    try:
        distiller.load_state_dict(state)
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as error:
        raise refuse(f"holds a state this run cannot take up ({type(error).__name__}: {str(error)[:200]})") from None
    return iteration, losses, float(seconds)


def _differences(saved: Any, current: dict[str, Any]) -> str:
    """``name: saved -> now`` for each setting where a checkpoint's identity differs."""
    if not isinstance(saved, dict):
        return "it records no settings"
    flat_saved = {**{k: v for k, v in saved.items() if k != "config"}, **(saved.get("config") or {})}
    flat_now = {**{k: v for k, v in current.items() if k != "config"}, **current["config"]}
    names = sorted(set(flat_saved) | set(flat_now))
    return ", ".join(f"{name}: {flat_saved.get(name, '(unset)')!r} there, {flat_now.get(name, '(unset)')!r} now"
                     for name in names if flat_saved.get(name) != flat_now.get(name))


def _resume(distiller: Distiller, checkpoint: str | Path | None) -> tuple[int, list[float], float]:
    """Iterations done, their losses and their wall time, from ``checkpoint`` if there is one."""
    if checkpoint is None or not Path(checkpoint).exists():
        return 0, [], 0.0
    return _load_checkpoint(distiller, checkpoint)


class DistillerCondenser(Condenser):
    """A :class:`~ddplug.methods.base.Distiller` class as a condenser: preset settings, then
    ``settings``; with ``out_dir`` a checkpoint there is resumed and kept up to date."""

    distiller_class: ClassVar[type]
    learns = True

    def make_config(self, settings: dict[str, Any] | None = None) -> DistillConfig:
        config = super().make_config(settings)
        check_private(self.name, self.private, config)
        return config

    def condense(self, real: ImageDataset, *, ipc: int, preset: Preset, seed: int = 0,
                 settings: dict[str, Any] | None = None, device: torch.device | str = "cpu",
                 out_dir: str | Path | None = None, progress: bool = True, snapshots: int = 0) -> Condensed:
        config = self.make_config({**preset.method_settings(self.name), **(settings or {}), "ipc": ipc, "seed": seed})
        distiller = self.distiller_class(real, config, device)
        checkpoint = None if out_dir is None else Path(out_dir) / CHECKPOINT_FILE
        snapshot_every = None
        if snapshots > 0:
            if out_dir is None:
                raise DdplugError("snapshots need an output folder to be saved in")
            snapshot_every = max(1, config.iterations // (snapshots + 1))
        return run_distillation(distiller, checkpoint=checkpoint, progress=progress, snapshot_every=snapshot_every,
                                on_snapshot=lambda synthetic: save_set(synthetic, snapshot_path(out_dir, synthetic)))


def register_distiller(distiller_class: C) -> C:
    """Class decorator for :class:`~ddplug.methods.base.Distiller` subclasses."""
    register_condenser(type(f"{distiller_class.__name__}Condenser", (DistillerCondenser,),
                            {"name": distiller_class.name, "distiller_class": distiller_class,
                             "config_class": distiller_class.config_class, "private": distiller_class.private}))
    return distiller_class
