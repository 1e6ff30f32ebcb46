"""Flower adapter: partitions, payloads and their checks, anchored DM, and whole runs on the
Simulation Engine (Ray) and the Deployment Engine (a real SuperLink and two SuperNodes)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import torch
from flwr.app import Array, ArrayRecord
from safetensors.torch import save_file

from helpers import TINY_MODEL, write_fake_fashion_mnist
from ddplug import cli
from ddplug.methods.anchored import AnchoredDistributionMatching, AnchoredDMConfig
from ddplug.errors import DdplugError
from ddplug.models import create_model
from ddplug.pipeline import condense_classes
from ddplug.presets import get_preset
from ddplug.sets import SyntheticSet
from ddplug_flower import FederatedSettings, PayloadError, SetSpec, partition_indices, record_to_set, set_to_record
from ddplug_flower.simulation import simulate
from flower_faults import corrupt, faulty_client_app, ship_by_value

FLWR_BIN = Path(sys.executable).parent
REPOSITORY = Path(__file__).resolve().parents[1]
TINY_OVERRIDES = [f"eval.model={TINY_MODEL}", "eval.epochs=2", f"dm.model={TINY_MODEL}", "dm.iterations=2",
                  "dm.batch_real=4"]


@pytest.fixture(autouse=True)
def flower_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "flwr-home"
    monkeypatch.setenv("FLWR_HOME", str(home))
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setenv("FLWR_DISABLE_UPDATE_CHECK", "1")
    # Flower's Ray backend exports the driver's sys.path as PYTHONPATH; undo it after the test.
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    return home


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_fashion_mnist(tmp_path_factory.mktemp("data"), per_class=30, test_per_class=5)


# --- partitions ------------------------------------------------------------------------------


def test_partitions_are_seeded_disjoint_and_skewed_by_alpha() -> None:
    labels = torch.arange(10).repeat_interleave(100)[torch.randperm(1000, generator=torch.Generator().manual_seed(0))]

    def max_class_share(parts: list[torch.Tensor]) -> float:
        return float(np.mean([torch.bincount(labels[p], minlength=10).max().item() / len(p) for p in parts]))

    for scheme in ("iid", "dirichlet", "pathological"):
        first = partition_indices(labels, 5, scheme=scheme, alpha=0.1, seed=3)
        again = partition_indices(labels, 5, scheme=scheme, alpha=0.1, seed=3)
        other = partition_indices(labels, 5, scheme=scheme, alpha=0.1, seed=4)
        assert all(torch.equal(a, b) for a, b in zip(first, again))
        assert not all(torch.equal(a, b) for a, b in zip(first, other))
        union = torch.cat(first)
        assert len(union.unique()) == len(union)  # disjoint
        if scheme != "pathological":  # which leaves out classes no partition drew
            assert torch.equal(union.sort().values, torch.arange(1000))
    iid = partition_indices(labels, 5, scheme="iid", seed=0)
    skewed = partition_indices(labels, 5, scheme="dirichlet", alpha=0.05, seed=0)
    mild = partition_indices(labels, 5, scheme="dirichlet", alpha=100.0, seed=0)
    assert max_class_share(iid) < 0.2 and max_class_share(mild) < 0.2
    assert max_class_share(skewed) > 0.5
    pathological = partition_indices(labels, 5, scheme="pathological", classes_per_partition=2, seed=0)
    assert all(len(labels[p].unique()) == 2 for p in pathological)


def test_a_client_reads_the_data_root_it_is_given_now_not_the_one_cached_first(tmp_path: Path, monkeypatch) -> None:
    from ddplug_flower.client import load_partition
    from ddplug_flower.settings import FederatedSettings

    settings = FederatedSettings(dataset="fashion-mnist", data_root="", alpha=100.0)
    totals = []
    for per_class in (6, 10):  # the default root moves between calls, as between runs in one process
        monkeypatch.setenv("DDPLUG_DATA", str(write_fake_fashion_mnist(tmp_path / f"data-{per_class}", per_class)))
        totals.append(sum(len(load_partition(settings, {"partition-id": i, "num-partitions": 2})[1]) for i in (0, 1)))
    assert totals == [60, 100]  # each folder's 10 classes, split between the 2 clients


def test_partitioning_mistakes_are_clear() -> None:
    with pytest.raises(DdplugError, match="cannot split 10 examples into 11"):
        partition_indices(torch.arange(10), 11, scheme="iid")
    with pytest.raises(DdplugError, match="classes-per-client"):
        partition_indices(torch.arange(10), 2, scheme="pathological", classes_per_partition=11)


# --- payloads --------------------------------------------------------------------------------


def _set(n_per_class: int = 2, classes: tuple[int, ...] = (0, 3, 7), soft: bool = False, lr: float | None = None) -> SyntheticSet:
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor(classes).repeat_interleave(n_per_class)
    images = (torch.rand(len(labels), 1, 28, 28, generator=generator) - 0.2861) / 0.3530
    if soft:
        labels = torch.softmax(torch.randn(len(labels), 10, generator=generator), dim=1)
    return SyntheticSet(images, labels, 10, (0.2861,), (0.3530,), lr=None if lr is None else torch.tensor(lr))


SPEC = SetSpec(channels=1, image_size=(28, 28), num_classes=10, mean=(0.2861,), std=(0.3530,), ipc=2,
               encoding="uint8", max_bytes=10**6)


@pytest.mark.parametrize(("encoding", "width", "tolerance"), [("uint8", 1, 0.5 / 255 / 0.3530), ("float16", 2, 2e-3),
                                                               ("float32", 4, 0.0)])
def test_payload_round_trip_and_byte_counts(encoding: str, width: int, tolerance: float) -> None:
    synthetic = _set()
    record = set_to_record(synthetic, encoding)
    raw = 6 * 28 * 28 * width + 6 * 8  # images + int64 labels
    assert record["images"].dtype == encoding
    assert raw <= record.count_bytes() <= raw + 512  # plus two .npy headers and the key names
    back = record_to_set(record, dataclasses.replace(SPEC, encoding=encoding))
    assert torch.equal(back.labels, synthetic.labels)
    assert (back.images - synthetic.images).abs().max() <= tolerance + 1e-6


def test_soft_labels_and_learned_lr_travel() -> None:
    synthetic = _set(soft=True, lr=0.02)
    back = record_to_set(set_to_record(synthetic, "float32"), dataclasses.replace(SPEC, encoding="float32"))
    assert back.soft_labels and torch.equal(back.labels, synthetic.labels)
    assert float(back.lr) == pytest.approx(0.02)


@pytest.mark.parametrize(("fault", "reason"), [
    ("nan", "NaN"), ("shape", r"shape \(6, 1, 27, 28\)"), ("label", r"outside the classes 0\.\.9"),
    ("dtype", "images are float64, expected float16"), ("oversize", "over the limit of"),
])
def test_each_kind_of_bad_payload_is_rejected(fault: str, reason: str) -> None:
    spec = dataclasses.replace(SPEC, encoding="float16", max_bytes=20_000)
    record = set_to_record(_set(), "float16")
    record_to_set(record, spec)  # the good one passes
    with pytest.raises(PayloadError, match=reason):
        record_to_set(corrupt(record, fault, spec.max_bytes), spec)


def test_forged_and_unexpected_arrays_are_rejected() -> None:
    record = set_to_record(_set(), "uint8")
    too_many = set_to_record(_set(n_per_class=3), "uint8")
    with pytest.raises(PayloadError, match="3 images of class 0, over ipc 2"):
        record_to_set(too_many, SPEC)
    forged = ArrayRecord(dict(record.items()))
    real = record["images"]
    forged["images"] = Array(dtype="uint8", shape=real.shape, stype=real.stype, data=Array(np.zeros(3, np.uint8)).data)
    with pytest.raises(PayloadError, match="declares uint8 .* but holds"):
        record_to_set(forged, SPEC)
    extra = ArrayRecord({**dict(record.items()), "code": Array(np.zeros(1))})
    with pytest.raises(PayloadError, match="unexpected arrays code"):
        record_to_set(extra, SPEC)


def test_settings_reject_mistakes() -> None:
    with pytest.raises(DdplugError, match="unknown federated setting 'clientz'"):
        FederatedSettings.from_config({"clientz": 3})
    with pytest.raises(DdplugError, match="only works one-shot"):
        FederatedSettings(rounds=3, method="herding")
    with pytest.raises(DdplugError, match="setting rounds expects int, got 1.5"):
        FederatedSettings.from_config({"rounds": 1.5})  # a run config is TOML: types can be wrong
    settings = FederatedSettings.from_config({"alpha": "0.1", "rounds": 2, "server-round": 5})
    assert settings.alpha == 0.1 and settings.rounds == 2


# --- anchored DM -----------------------------------------------------------------------------


def _anchor(tmp_path: Path, spec: str = TINY_MODEL) -> tuple[torch.nn.Module, Path]:
    model = create_model(spec, in_channels=1, num_classes=10, image_size=(8, 8), seed=123)
    path = tmp_path / "anchor.safetensors"
    save_file(model.state_dict(), str(path))
    return model, path


def test_anchored_dm_network_is_the_anchor_plus_noise_of_the_given_scale(digits, tmp_path: Path) -> None:
    anchor, path = _anchor(tmp_path)
    config = AnchoredDMConfig(ipc=1, iterations=1, model=TINY_MODEL, batch_real=4, anchor=str(path), anchor_noise=0.0)
    exact = AnchoredDistributionMatching(digits.train, config).random_network(3)
    for expected, got in zip(anchor.features.state_dict().values(), exact.features.state_dict().values()):
        assert torch.equal(expected, got)
    noisy = AnchoredDistributionMatching(digits.train, dataclasses.replace(config, anchor_noise=0.05))
    network = noisy.random_network(3)
    offsets = torch.cat([(got - expected).flatten()
                         for expected, got in zip(anchor.features.parameters(), network.features.parameters())])
    assert offsets.std().item() == pytest.approx(0.05, rel=0.1)
    assert abs(offsets.mean().item()) < 0.01
    repeat, later = noisy.random_network(3), noisy.random_network(4)
    first = next(network.features.parameters())
    assert torch.equal(first, next(repeat.features.parameters()))  # seeded per iteration
    assert not torch.equal(first, next(later.features.parameters()))


def test_anchored_dm_condenses_a_partial_class_set_and_checks_the_anchor(digits, tmp_path: Path) -> None:
    _, path = _anchor(tmp_path)
    part = digits.train.subset(torch.nonzero(digits.train.labels < 3).flatten())
    settings = {"model": TINY_MODEL, "iterations": 2, "batch_real": 4, "anchor": str(path)}
    made = condense_classes(part, "anchored-dm", ipc=2, preset=get_preset("cpu"), settings=settings)
    assert sorted(made.labels.tolist()) == [0, 0, 1, 1, 2, 2] and made.num_classes == 10
    (tmp_path / "wide").mkdir()
    _, wrong = _anchor(tmp_path / "wide", "convnet:width=16,depth=2")
    with pytest.raises(DdplugError, match="do not fit the matching model"):
        condense_classes(part, "anchored-dm", ipc=2, preset=get_preset("cpu"), settings={**settings, "anchor": str(wrong)})
    with pytest.raises(DdplugError, match="needs an anchor"):
        condense_classes(part, "anchored-dm", ipc=2, preset=get_preset("cpu"), settings={**settings, "anchor": ""})


# --- whole runs ------------------------------------------------------------------------------


def _ray_processes_since(start: float) -> list[str]:
    """Ray's processes (GCS, raylet, workers) started since ``start`` and still alive, orphans included."""
    found = []
    for process in psutil.process_iter(["cmdline", "create_time", "status"]):
        command = " ".join(process.info["cmdline"] or [])
        if (process.info["create_time"] >= start and process.info["status"] != psutil.STATUS_ZOMBIE
                and ("ray::" in command or "raylet" in command or "gcs_server" in command)):
            found.append(command[:80])
    return found


def _simulate(data_root: Path, out: Path, faults: dict[int, str], **settings: Any) -> dict[str, Any]:
    """A tiny simulated run whose clients fail as ``faults`` says (``flower_faults``)."""
    ship_by_value()
    run = FederatedSettings(data_root=str(data_root), out=str(out), ipc=2, overrides=" ".join(TINY_OVERRIDES),
                            **settings)
    start = time.time()
    summary = simulate(run, client_app=faulty_client_app(faults))
    assert not _ray_processes_since(start)  # Ray and all its workers are gone
    return summary


@pytest.mark.federation
def test_simulated_multi_round_distillation_survives_failing_and_bad_clients(data_root: Path, tmp_path: Path) -> None:
    faults = {1: "raise", 2: "nan", 3: "shape", 4: "label", 5: "dtype", 6: "oversize"}
    summary = _simulate(data_root, tmp_path / "run", faults, clients=7, partitioner="iid", rounds=2,
                        encoding="float16", param="pixels")  # the faults forge plain-pixel records
    assert summary == json.loads((tmp_path / "run" / "history.json").read_text()) | {
        "peak_memory_mb": summary["peak_memory_mb"]}
    assert summary["mode"] == "distill" and summary["clients"] == 7 and summary["rounds"] == 2
    assert 0 <= summary["accuracy"] <= 1
    # Round 1 distils from scratch (configs only go down); round 2 sends everyone the global model.
    model = create_model(TINY_MODEL, in_channels=1, num_classes=10, image_size=(28, 28))
    model_bytes = ArrayRecord(model.state_dict()).count_bytes()
    first, second = summary["history"]
    assert first["bytes_down"] < 7 * 2000
    assert second["bytes_down"] - first["bytes_down"] == pytest.approx(7 * model_bytes, rel=0.01)
    for entry in summary["history"]:
        assert entry["participants"] == ["0"]
        assert entry["missing"] == ["1", "2", "3", "4", "5", "6"]
        assert "injected failure" in entry["failed"]["1"]
        reasons = entry["dropped"]
        assert "NaN" in reasons["2"] and "shape" in reasons["3"] and "outside the classes 0..9" in reasons["4"]
        assert "float64" in reasons["5"] and "over the limit" in reasons["6"]
        # client 0 uploads ipc 2 of each class it has more than 2 images of; the others stay home, listed
        assert entry["images"] == 2 * (10 - len(entry["left_out"].get("0", [])))
        leakage = entry["leakage"]["0"]  # the one accepted upload's report
        assert -1 <= leakage["upload_nn_similarity_median"] <= 1 and 0 <= leakage["membership_advantage"] <= 1
        assert list(entry["leakage"]) == ["0"]
    assert summary["bytes_up"] == sum(entry["bytes_up"] for entry in summary["history"])
    assert -1 <= summary["real_nn_similarity_median"] <= 1 and summary["epsilon"] is None


@pytest.mark.federation
def test_simulated_fedavg_tolerates_a_failing_and_a_silent_client(data_root: Path, tmp_path: Path) -> None:
    # One round: the hanging client holds one of the two simulated workers, the other serves the rest.
    summary = _simulate(data_root, tmp_path / "fedavg", {2: "raise", 3: "hang"}, clients=4, mode="fedavg",
                        partitioner="dirichlet", alpha=1.0, local_epochs=4, round_timeout=10.0)
    assert summary["mode"] == "fedavg" and len(summary["history"]) == 1
    assert summary["membership_advantage"] is None and summary["upload_nn_similarity_median"] is None  # no sets
    model_bytes = summary["history"][0]["bytes_down"] / 4
    for entry in summary["history"]:
        assert entry["participants"] == ["0", "1"] and entry["missing"] == ["2", "3"]
        assert "injected failure" in entry["failed"]["2"] and entry["timed_out"] == ["3"]
        assert entry["bytes_up"] == pytest.approx(2 * model_bytes, rel=0.05)  # two weight uploads
    assert summary["accuracy"] > summary["initial_accuracy"]


def test_cli_reports_user_mistakes(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["fl", "--clients", "0"]) == cli.EXIT_USER_ERROR
    assert "clients must be at least 1" in capsys.readouterr().err
    assert cli.main(["fl", "--mode", "fedsgd"]) == cli.EXIT_USER_ERROR
    assert "mode must be one of distill, fedavg, got 'fedsgd'" in capsys.readouterr().err
    assert cli.main(["fl", "--set", "eval.epochs"]) == cli.EXIT_USER_ERROR
    assert "KEY=VALUE" in capsys.readouterr().err
    for argv, message in ((["--param", "nope"], "unknown parameterisation 'nope'"),
                          (["--init", "zeros"], "unknown init 'zeros'; choose one of real, noise, herding"),
                          (["--leakage-probes", "0"], "leakage-probes must be at least 1"),
                          (["--init", "noise", "--dp-epsilon", "1", "--dp-delta", "2"], "differential privacy needs 0 < dp_delta < 1"),
                          (["--method", "random", "--param", "multi:factor=2"], "drop param")):
        assert cli.main(["fl", *argv]) == cli.EXIT_USER_ERROR
        assert message in capsys.readouterr().err, argv


def test_cli_compares_runs_in_a_table_and_a_plot(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from ddplug_flower.simulation import history_table

    def run(mode: str, rounds: int, accuracies: list[float], up: int, down: int, **extra: Any) -> dict:
        history = [{"round": r + 1, "accuracy": a, "bytes_up": up, "bytes_down": down, "seconds": 1.0,
                    "participants": ["0"], "missing": []} for r, a in enumerate(accuracies)]
        return {"mode": mode, "rounds": rounds, "dataset": "fashion-mnist", "clients": 10, "partitioner": "dirichlet",
                "alpha": 0.1, "accuracy": accuracies[-1], "bytes_up": up * rounds, "bytes_down": down * rounds,
                "seconds": 12.0, "history": history, **extra}

    runs = {"one-shot": run("distill", 1, [0.6], 10**6, 0),  # an older history: no settings, no leakage keys
            "private": run("distill", 1, [0.55], 78_400, 0, settings={"param": "multi:factor=2", "init": "noise",
                                                                      "dp-epsilon": 4.0},
                           upload_nn_similarity_median=0.41, real_nn_similarity_median=0.8, membership_advantage=0.051,
                           near_copies=0, epsilon=3.99),
            "fedavg": run("fedavg", 3, [0.3, 0.5, 0.7], 4 * 10**6, 4 * 10**6)}
    for name, summary in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "history.json").write_text(json.dumps(summary))
    assert cli.main(["fl", "--plot", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = [[cell.strip() for cell in row.split("|")[3:11]] for row in result["table"].splitlines()[2:]]
    assert rows == [
        ["distilled one-shot (pixels, real init)", "60.00", "1.000", "0.000", "12", "-", "-", "-"],
        ["distilled one-shot (multi:factor=2, noise init, DP eps 4)", "55.00", "0.078", "0.000", "12", "0.410",
         "0.051", "3.99"],
        ["FedAvg (3 rounds)", "70.00", "12.000", "12.000", "12", "-", "-", "-"]]
    assert Path(result["plot"]).stat().st_size > 10_000
    assert "near copies 0, membership-inference advantage 0.051, epsilon 3.99" in history_table(runs["private"])
    assert cli.main(["fl", "--plot", str(tmp_path / "one-shot")]) == cli.EXIT_USER_ERROR
    assert "holds no finished run" in capsys.readouterr().err


# --- Deployment Engine -----------------------------------------------------------------------

BINARIES = ("flower-superlink", "flower-supernode", "flwr")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _run_config(path: Path, data_root: Path, out: Path) -> Path:
    """Overrides of the repository's ``[tool.flwr.app.config]`` for a tiny two-node round."""
    overrides = " ".join(TINY_OVERRIDES)
    path.write_text(textwrap.dedent(f"""\
        clients = 2
        partitioner = "iid"
        ipc = 2
        data-root = "{data_root}"
        overrides = "{overrides}"
        out = "{out}"
        node-wait = 120.0
        round-timeout = 300.0
        """))
    return path


@pytest.mark.federation
@pytest.mark.skipif(not all((FLWR_BIN / name).exists() for name in BINARIES), reason="flwr binaries not installed")
def test_deployment_engine_runs_a_round_through_a_superlink_and_two_supernodes(
        data_root: Path, tmp_path: Path, flower_home: Path) -> None:
    link, *node_ports = _free_ports(3)
    flower_home.mkdir()
    (flower_home / "config.toml").write_text(
        f'[superlink]\ndefault = "ddplug-test"\n\n[superlink.ddplug-test]\naddress = "127.0.0.1:{link}"\ninsecure = true\n')
    out = tmp_path / "out"
    run_config = _run_config(tmp_path / "run-config.toml", data_root, out)
    commands = [[str(FLWR_BIN / "flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
                 "--port", str(link), "--database", ":flwr-in-memory:"]]
    commands += [[str(FLWR_BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link}", "--port",
                  str(port), "--node-config", f"partition-id={index} num-partitions=2"]
                 for index, port in enumerate(node_ports)]
    # The SuperLink and SuperNodes start flower-superexec from PATH.
    env = {**os.environ, "PATH": f"{FLWR_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    processes = []
    try:
        for index, command in enumerate(commands):
            log = (tmp_path / f"process-{index}.log").open("w")
            processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env))
        _wait_until_healthy(link, processes[0])
        # The app is this repository, as pyproject.toml's [tool.flwr.app] declares it.
        run = subprocess.run([str(FLWR_BIN / "flwr"), "run", str(REPOSITORY), "ddplug-test", "--stream",
                              "--run-config", str(run_config)], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=480)
        assert run.returncode == 0, run.stdout + run.stderr
        history = out / "history.json"
        assert history.is_file(), run.stdout[-3000:]
        summary = json.loads(history.read_text())
        assert summary["connected"] == 2 and summary["history"][0]["participants"] == ["0", "1"]
        # ipc 2 of 10 classes from each of 2 nodes, at the default 4 bits: 4 images each in the bytes of 2
        assert summary["history"][0]["images"] == 80 and summary["bytes_up"] > 40 * 28 * 28
    finally:
        assert not _stop(processes)


def _wait_until_healthy(port: int, superlink: subprocess.Popen, patience: float = 120.0) -> None:
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        assert superlink.poll() is None, "flower-superlink exited; see process-0.log"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the SuperLink did not answer on port {port} within {patience:.0f} s")


def _stop(processes: list[subprocess.Popen]) -> list[psutil.Process]:
    """Stops the processes and everything they spawned (the SuperExecs run in sessions of
    their own, so a process group would miss them); returns any that survived."""
    tree = []
    for process in processes:
        try:
            root = psutil.Process(process.pid)
            tree += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for member in tree:
        try:
            member.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=30)
    for member in alive:
        member.kill()
    psutil.wait_procs(alive, timeout=10)
    for process in processes:
        process.wait(timeout=10)
    return [member for member in tree if member.is_running() and member.status() != psutil.STATUS_ZOMBIE]


def test_the_run_config_in_pyproject_is_the_settings_defaults() -> None:
    import tomllib

    import dataclasses

    config = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    # the fields' own defaults ('' for the uploads' code and init, resolved by the method)
    assert config == {field.name.replace("_", "-"): field.default for field in dataclasses.fields(FederatedSettings)}
    assert FederatedSettings.from_config(config) == FederatedSettings()


def test_fl_flags_are_generated_from_the_settings(capsys: pytest.CaptureFixture) -> None:
    from ddplug_flower.simulation import add_arguments, settings_from_args

    parser = __import__("argparse").ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--round-timeout", "12.5", "--max-upload-bytes", "900", "--set", "eval.epochs=3",
                              "--alpha", "0.1"])
    settings = settings_from_args(args)
    assert (settings.round_timeout, settings.max_upload_bytes, settings.alpha) == (12.5, 900, 0.1)
    assert settings.overrides == "eval.epochs=3" and settings.out == "runs/federated-distill-10c-dirichlet"
    assert cli.main(["fl", "--alpha", "x"]) == cli.EXIT_USER_ERROR
    assert "setting alpha expects float, got 'x'" in capsys.readouterr().err


# --- one round of the real strategies, one hostile client at a time ----------------------------


@pytest.fixture()
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages outside a Flower run need an identity to be made at all."""
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


class _Grid:
    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return self.nodes


def test_too_few_nodes_are_waited_for_with_the_fix_on_screen_then_used(caplog: pytest.LogCaptureFixture,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from ddplug_flower.server import wait_for_nodes

    monkeypatch.setattr(logging.getLogger("flwr"), "propagate", True)
    with caplog.at_level(logging.INFO, logger="flwr"):
        assert wait_for_nodes(_Grid([7, 3]), expected=10, patience=0.6) == [3, 7]
    assert "num-supernodes=N" in caplog.text and "only 2 of 10 nodes" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="flwr"):
        assert wait_for_nodes(_Grid([1, 2]), expected=2, patience=0.6) == [1, 2]
    assert caplog.text == ""
    with pytest.raises(DdplugError, match="no node connected within 0 s"):
        wait_for_nodes(_Grid([]), expected=2, patience=0.1)


def _upload(synthetic: SyntheticSet | ArrayRecord, encoding: str = "float32", similarity: float = 0.5,
            **metrics: Any) -> Any:
    """A reply's content: the set and an honest leakage report (``metrics`` add to or replace it)."""
    from flwr.app import MetricRecord, RecordDict

    record = synthetic if isinstance(synthetic, ArrayRecord) else set_to_record(synthetic, encoding)
    report = {"upload-nn-similarity": [similarity] * record["labels"].shape[0], "real-nn-similarity": [0.6, 0.7, 0.8],
              "membership-advantage": 0.05}
    return RecordDict({"set": record, "metrics": MetricRecord({**report, **metrics})})


def _replies(messages: list, contents: dict[int, Any]) -> list:
    from flwr.app import Message

    return [Message(contents[m.metadata.dst_node_id], reply_to=m) for m in messages]


def _history(tmp_path: Path, nodes: list[int], **settings: Any):
    from ddplug_flower.server import History

    partitions = {node: {"partition-id": index, "num-examples": 100, "class-counts": [10] * 10}
                  for index, node in enumerate(nodes)}
    return History(FederatedSettings(out=str(tmp_path), **settings), partitions, len(nodes), time.perf_counter())


def _bomb(array: Array, elements: int = 10**13) -> Array:
    """``array`` with honest shape/dtype fields but a .npy header declaring ``elements`` and 100 bytes of data."""
    import io

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": np.dtype(array.dtype).str, "fortran_order": False,
                                                  "shape": (elements,)})
    return Array(dtype=array.dtype, shape=array.shape, stype=array.stype, data=header.getvalue() + bytes(100))


def _hostile_upload(fault: str) -> tuple[ArrayRecord, str]:
    """A bad upload and the encoding it claims (float32, unless the fault needs float16)."""
    labels = None
    if fault.startswith("lr="):
        return set_to_record(_set(lr=float(fault[3:])), "float32"), "float32"
    if fault == "huge-float32":
        images = torch.full((6, 1, 28, 28), 3e38)
    elif fault == "huge-float16":
        record = set_to_record(_set(), "float16")
        record["images"] = Array(np.full((6, 1, 28, 28), 65504, np.float16))
        return record, "float16"
    else:
        images = _set().images
    if fault.startswith("soft"):
        soft = _set(soft=True).labels
        labels = {"soft*5": soft * 5, "soft*1e30": soft * 1e30, "soft*1e-30": soft * 1e-30, "soft+1": soft + 1}[fault]
    synthetic = _set(soft=labels is not None)
    synthetic = SyntheticSet(images, synthetic.labels if labels is None else labels, 10, synthetic.mean, synthetic.std)
    record = set_to_record(synthetic, "float32")
    if fault == "bomb":
        record["images"] = _bomb(record["images"])
    return record, "float32"


@pytest.mark.parametrize(("fault", "reason"), [
    ("lr=1e6", r"learned lr 1e\+06 is not within \(1e-05, 1\]"),
    ("lr=1e30", r"learned lr 1e\+30 is not within"),
    ("lr=1e-30", r"learned lr 1e-30 is not within"),
    ("huge-float32", r"pixels range over .* outside the allowed -1\.\.2"),
    ("huge-float16", r"pixels range over .* outside the allowed -1\.\.2"),
    ("soft*5", "soft labels do not sum to 1"),
    ("soft*1e30", "soft labels do not sum to 1"),
    ("soft*1e-30", "soft labels do not sum to 1"),
    ("soft+1", "soft labels do not sum to 1"),
    ("bomb", r"images declares float32 \(6, 1, 28, 28\) but holds float32 \(10000000000000,\)"),
])
def test_a_hostile_upload_is_dropped_and_the_round_goes_on(task_identity: None, tmp_path: Path, fault: str,
                                                          reason: str) -> None:
    from flwr.app import ConfigRecord

    from ddplug_flower.server import DistilledSets

    record, encoding = _hostile_upload(fault)
    history = _history(tmp_path, [11, 12, 13], encoding=encoding)
    spec = SetSpec.for_dataset(_FakeData, ipc=2, encoding=encoding, lr_range=(1e-5, 1.0))
    trained = []
    strategy = DistilledSets(spec, lambda union, server_round: trained.append(union) or ArrayRecord(), history)
    messages = strategy.configure_train(1, ArrayRecord(), ConfigRecord(), _Grid([11, 12, 13]))
    honest = {11: _set(lr=0.02), 12: _set(classes=(1, 2), lr=0.05)}
    contents = {node: _upload(part, encoding) for node, part in honest.items()}
    contents[13] = _upload(record)
    strategy.aggregate_train(1, _replies(messages, contents))
    history.evaluated(1, 0.5)
    summary = json.loads((tmp_path / "history.json").read_text())
    entry = summary["history"][0]
    assert entry["participants"] == ["0", "1"] and list(entry["dropped"]) == ["2"]
    assert re.search(reason, entry["dropped"]["2"]), entry["dropped"]["2"]
    (union,) = trained  # the round went on with the honest clients' union
    assert len(union) == 6 + 4 and torch.isfinite(union.images).all()
    if fault.startswith("lr="):  # only client 0 and 1 declared an lr: their median (the lower middle value)
        assert entry["lr"] == pytest.approx(0.02)


def test_the_server_says_what_it_trains_the_global_model_on_and_trains_it(caplog: pytest.LogCaptureFixture,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from ddplug.evaluation import TrainSettings
    from ddplug_flower.server import global_trainer

    model = create_model(TINY_MODEL, in_channels=1, num_classes=10, image_size=(28, 28))
    before = {name: value.clone() for name, value in model.state_dict().items()}
    train = global_trainer(model, TrainSettings(epochs=3, batch_size=4), augment=None, seed=0)
    monkeypatch.setattr(logging.getLogger("flwr"), "propagate", True)
    with caplog.at_level(logging.INFO, logger="flwr"):
        arrays = train(_set(lr=0.02), 2)
    assert "round 2: training the global model on the 6 uploaded images for 3 epochs" in caplog.text
    assert re.search(r"round 2: global model trained in \d+ s", caplog.text)
    trained = arrays.to_torch_state_dict()
    assert trained.keys() == before.keys()
    assert any(not torch.equal(trained[name], before[name]) for name in before)  # it trained the global model


def test_the_union_lr_is_the_median_whatever_the_order() -> None:
    parts = [_set(lr=lr) for lr in (0.9, 0.01, 0.02)]
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2]):
        union = SyntheticSet.concatenate([parts[i] for i in order], meta={})
        assert float(union.lr) == pytest.approx(0.02)


class _FakeData:
    in_channels, image_size, num_classes, mean, std = 1, (28, 28), 10, (0.2861,), (0.3530,)


@pytest.mark.parametrize(("fault", "reason"), [
    ("examples=1e300", r"num-examples must be a whole number from 1 to 100 \(the client's partition\), got 1e\+300"),
    ("examples=1e30", r"num-examples must be a whole number from 1 to 100 .* got 1000000000000000000000000000000"),
    ("examples=0", "got 0"),
    ("weights=3e38", r"holds a weight of magnitude 3e\+38, over the limit of 1000"),
    ("bomb", r"declares float32 .* but holds float32 \(10000000000000,\)"),
])
def test_fedavg_drops_a_reply_that_would_dominate_or_crash_the_average(task_identity: None, tmp_path: Path,
                                                                       fault: str, reason: str) -> None:
    from flwr.app import ConfigRecord, MetricRecord, RecordDict

    from ddplug_flower.server import CheckedFedAvg

    history = _history(tmp_path, [11, 12, 13], mode="fedavg")
    strategy = CheckedFedAvg(history, history.settings)
    model = create_model(TINY_MODEL, in_channels=1, num_classes=10, image_size=(28, 28))
    global_arrays = ArrayRecord(model.state_dict())
    messages = strategy.configure_train(1, global_arrays, ConfigRecord(), _Grid([11, 12, 13]))

    def update(shift: float, examples: Any = 50) -> RecordDict:
        state = {key: value + shift for key, value in model.state_dict().items()}
        arrays = ArrayRecord(state)
        return RecordDict({"arrays": arrays, "metrics": MetricRecord(
            {"num-examples": examples, "bytes": arrays.count_bytes(), "seconds": 1.5})})

    contents = {11: update(1.0), 12: update(3.0, examples=100)}
    kind, _, value = fault.partition("=")
    if kind == "examples":
        contents[13] = update(0.0, examples={"1e300": 1e300, "1e30": 10**30, "0": 0}[value])
    elif kind == "weights":
        contents[13] = update(3e38)
    else:
        contents[13] = update(0.0)
        first = next(iter(global_arrays))
        contents[13].array_records["arrays"][first] = _bomb(contents[13].array_records["arrays"][first])
    averaged, _ = strategy.aggregate_train(1, _replies(messages, contents))
    history.evaluated(1, 0.5)
    entry = json.loads((tmp_path / "history.json").read_text())["history"][0]
    assert entry["participants"] == ["0", "1"] and list(entry["dropped"]) == ["2"]
    assert re.search(reason, entry["dropped"]["2"]), entry["dropped"]["2"]
    # The honest average: (50 * (w + 1) + 100 * (w + 3)) / 150 = w + 7/3.
    key = next(key for key, value in model.state_dict().items() if value.is_floating_point())
    expected = model.state_dict()[key] + 7 / 3
    assert torch.allclose(torch.from_numpy(averaged[key].numpy()), expected, atol=1e-5)


def test_a_partition_size_claimed_beyond_the_dataset_is_not_believed(task_identity: None) -> None:
    from flwr.app import MetricRecord, RecordDict

    from ddplug_flower.server import discover

    claims = {11: 40, 12: 10**30, 13: 0}

    class QueryGrid(_Grid):
        def send_and_receive(self, messages: list, timeout: float) -> list:
            return _replies(messages, {node: RecordDict({"info": MetricRecord(
                {"partition-id": node - 11, "num-examples": claims[node], "class-counts": [4] * 10})})
                for node in claims})

    partitions = discover(QueryGrid(list(claims)), list(claims), FederatedSettings(), largest=60_000, num_classes=10)
    assert list(partitions) == [11] and partitions[11]["num-examples"] == 40


@pytest.mark.parametrize(("left_out", "outcome"), [
    ([4, 5], "recorded"), ([99], "must list distinct class ids 0..9"), ([-1], "must list distinct class ids 0..9"),
    ([4, 4], "must list distinct class ids 0..9"), ([3, 5], r"names classes \[3\], which the upload holds")])
def test_classes_a_client_left_out_are_recorded(task_identity: None, tmp_path: Path, left_out: list,
                                                outcome: str) -> None:
    from flwr.app import ConfigRecord

    from ddplug_flower.server import DistilledSets

    history = _history(tmp_path, [11, 12], encoding="float32")
    spec = SetSpec.for_dataset(_FakeData, ipc=2, encoding="float32")
    strategy = DistilledSets(spec, lambda union, server_round: ArrayRecord(), history)
    messages = strategy.configure_train(1, ArrayRecord(), ConfigRecord(), _Grid([11, 12]))
    contents = {node: _upload(_set(), **{"left-out-classes": left_out if node == 12 else []}) for node in (11, 12)}
    strategy.aggregate_train(1, _replies(messages, contents))
    history.evaluated(1, 0.5)
    entry = json.loads((tmp_path / "history.json").read_text())["history"][0]
    if outcome == "recorded":
        assert entry["left_out"] == {"1": [4, 5]} and entry["participants"] == ["0", "1"]
    else:
        assert re.search(outcome, entry["dropped"]["1"]) and entry["left_out"] == {}


@pytest.mark.parametrize(("fault", "reason"), [
    ({"upload-nn-similarity": [0.5]}, "upload-nn-similarity must list 6 similarities within"),
    ({"upload-nn-similarity": [7.0] * 6}, "upload-nn-similarity must list 6 similarities within"),
    ({"real-nn-similarity": [0.5] * 101}, "real-nn-similarity must list at most 100 similarities"),
    ({"membership-advantage": 1e30}, r"membership-advantage must be a number within \[0, 1\]"),
    ({"epsilon": -1.0}, "must report its epsilon"),
    ({}, "must report its epsilon"),
])
def test_each_uploads_leakage_report_and_epsilon_are_checked_and_recorded(task_identity: None, tmp_path: Path,
                                                                          fault: dict, reason: str) -> None:
    from flwr.app import ConfigRecord

    from ddplug_flower.server import DistilledSets

    history = _history(tmp_path, [11, 12, 13], encoding="float32", init="noise", dp_epsilon=4.0, rounds=2)
    strategy = DistilledSets(SetSpec.for_dataset(_FakeData, ipc=2, encoding="float32"),
                             lambda union, server_round: ArrayRecord(), history)
    for server_round in (1, 2):
        messages = strategy.configure_train(server_round, ArrayRecord(), ConfigRecord(), _Grid([11, 12, 13]))
        contents = {11: _upload(_set(), similarity=0.2, epsilon=2.0, seconds=12.5),
                    12: _upload(_set(), similarity=0.4, epsilon=1.5, seconds=float("nan")),
                    13: _upload(_set(), **{"epsilon": 2.0, **fault})}
        if not fault:
            del contents[13].metric_records["metrics"]["epsilon"]
        strategy.aggregate_train(server_round, _replies(messages, contents))
        history.evaluated(server_round, 0.5)
    summary = json.loads((tmp_path / "history.json").read_text())
    entry = summary["history"][1]
    assert re.search(reason, entry["dropped"]["2"]), entry["dropped"]["2"]
    # Per client: its medians, the attack's advantage, and the epsilon of both rounds together.
    assert entry["leakage"]["0"] == {"upload_nn_similarity_median": pytest.approx(0.2),
                                     "real_nn_similarity_median": pytest.approx(0.7), "membership_advantage": 0.05,
                                     "near_copies": 0, "epsilon": pytest.approx(4.0)}
    assert entry["leakage"]["1"]["epsilon"] == pytest.approx(3.0)
    assert entry["client_seconds"] == {"0": 12.5}  # a NaN claim is left out
    # The run: medians over every accepted upload's images (2 clients x 2 rounds x 6 images).
    assert summary["upload_nn_similarity_median"] == pytest.approx(0.2)  # the lower middle of 12 x 0.2, 12 x 0.4
    assert summary["real_nn_similarity_median"] == pytest.approx(0.7) and summary["epsilon"] == pytest.approx(4.0)


def test_private_uploads_need_a_private_method_and_noise_init() -> None:
    # The core's rules, written once in DistillConfig and the method registry.
    with pytest.raises(DdplugError, match="differential privacy needs --init noise"):
        FederatedSettings(dp_epsilon=1.0)
    with pytest.raises(DdplugError, match="frepo cannot be made differentially private"):
        FederatedSettings(dp_epsilon=1.0, init="noise", method="frepo")
    with pytest.raises(DdplugError, match="method random uploads no distilled set"):
        FederatedSettings(dp_epsilon=1.0, init="noise", method="random")
    with pytest.raises(DdplugError, match="selects real images, which travel as pixels: drop param"):
        FederatedSettings(method="random", param="pixels:bits=4")
    # The private defaults of the uploads, and plain pixels for a selection.
    assert (FederatedSettings().param, FederatedSettings().init) == ("pixels:bits=4", "blend:images=3")
    assert FederatedSettings(method="herding").param == "pixels"
    with pytest.raises(DdplugError, match="mode fedavg with method dm uploads no distilled set"):
        FederatedSettings(dp_epsilon=1.0, init="noise", mode="fedavg")
    settings = FederatedSettings(dp_epsilon=4.0, dp_delta=1e-5, init="noise", rounds=4)
    assert settings.privacy_per_round() == {"dp_epsilon": 1.0, "dp_delta": 2.5e-6}
    assert FederatedSettings().privacy_per_round() == {}


def _client_reply(data_root: Path, **settings: Any) -> Any:
    """The ClientApp's ``distill`` handler, called as a SuperNode would, for partition 0 of 2."""
    from flwr.app import Context, Message, MessageType, RecordDict

    from ddplug_flower.client import distill
    from ddplug_flower.server import config_record

    run = FederatedSettings(data_root=str(data_root), ipc=2, partitioner="iid", clients=2,
                            overrides=" ".join(TINY_OVERRIDES), **settings)
    message = Message(RecordDict({"config": config_record(run)}), dst_node_id=5, message_type=MessageType.TRAIN)
    context = Context(run_id=1, node_id=5, node_config={"partition-id": 0, "num-partitions": 2}, state=RecordDict(),
                      run_config={})
    return distill(message, context).content.metric_records["metrics"]


def test_a_private_client_reports_its_epsilon_and_a_leakage_report(task_identity: None, data_root: Path) -> None:
    metrics = _client_reply(data_root, init="noise", dp_epsilon=2.0, rounds=2)
    assert metrics["epsilon"] == pytest.approx(1.0, rel=0.02)  # its round's half of the budget
    assert len(metrics["upload-nn-similarity"]) == metrics["images"] == 40  # ipc 2 at 4 bits: 4 per class
    assert max(metrics["upload-nn-similarity"]) < 0.99  # from noise: no near copy of a real image
    assert len(metrics["real-nn-similarity"]) == 100 and 0 <= metrics["membership-advantage"] <= 1
    # Without DP there is no epsilon to report.
    assert "epsilon" not in _client_reply(data_root, init="noise")
    # A client that uploads real images on purpose (a random selection): the report flags every one as a copy.
    copies = _client_reply(data_root, method="random")
    assert copies["upload-nn-similarity"] == pytest.approx([1.0] * copies["images"])


def _coded_upload(tmp_path: Path, param: str = "multi:factor=2", ipc: int = 2,
                  **settings: Any) -> tuple[SyntheticSet, SetSpec]:
    """A ``param`` set of classes 1, 4 and 6 of fake 28x28 data, as a client condenses it."""
    from ddplug.data import load_dataset

    train = load_dataset("fashion-mnist", str(write_fake_fashion_mnist(tmp_path, per_class=4 * ipc))).train
    part = train.subset(torch.nonzero(torch.isin(train.labels, torch.tensor([1, 4, 6]))).flatten())
    preset = get_preset("cpu").override({"dm.model": TINY_MODEL, "dm.batch_real": "4"})
    synthetic = condense_classes(part, "dm", ipc=ipc, preset=preset, copy_small_classes=False,
                                 settings={"iterations": 2, "param": param, **settings})
    spec = SetSpec.for_dataset(train, ipc=ipc, encoding="uint8", param=param)
    return synthetic, spec


def test_a_coded_upload_costs_the_budget_and_decodes_as_the_client_stored_it(tmp_path: Path) -> None:
    from ddplug.sets import as_stored

    synthetic, spec = _coded_upload(tmp_path)
    assert synthetic.code is not None and len(synthetic) == 3 * 8  # 4 decoded images per stored one
    record = set_to_record(synthetic, "uint8")
    assert sorted(record) == ["classes", "code.images"]
    payload = sum(array.numpy().nbytes for array in record.values())
    assert payload == 3 * 2 * 28 * 28 + 3 * 8  # the bytes of 2 raw images for each of 3 classes, and their ids
    back = record_to_set(record, spec)
    assert torch.equal(back.images, as_stored(synthetic).images)
    assert back.labels.tolist() == [c for c in (1, 4, 6) for _ in range(8)]
    assert record.count_bytes() <= spec.max_bytes


def test_learned_soft_labels_travel_in_float16_inside_a_coded_upload_budget(tmp_path: Path) -> None:
    from ddplug.data import load_dataset
    from ddplug.sets import as_stored

    train = load_dataset("fashion-mnist", str(write_fake_fashion_mnist(tmp_path, per_class=8))).train
    part = train.subset(torch.nonzero(torch.isin(train.labels, torch.tensor([1, 4, 6]))).flatten())
    synthetic = condense_classes(part, "kip", ipc=2, preset=get_preset("cpu"), copy_small_classes=False,
                                 settings={"iterations": 1, "model": TINY_MODEL, "num_networks": 1, "batch_real": 4,
                                           "param": "multi:factor=2", "learn_labels": True})
    spec = SetSpec.for_dataset(train, ipc=2, encoding="uint8", param="multi:factor=2", soft_labels=True)
    # 1568 bytes per class: one 8-bit mosaic (784 bytes) of 4 images and their 10 fp16 label values;
    # a second mosaic would not leave room for its labels
    assert synthetic.soft_labels and len(synthetic) == 3 * 4 == spec.layout(3).decoded_per_class * 3
    record = set_to_record(synthetic, "uint8")
    assert record["labels"].dtype == "float16"
    assert sum(array.numpy().nbytes for array in record.values()) == 3 * (784 + 4 * 10 * 2) + 3 * 8 <= 3 * 1568 + 3 * 8
    back = record_to_set(record, spec)
    assert torch.equal(back.labels, as_stored(synthetic).labels)
    with pytest.raises(PayloadError, match=r"a coded upload's labels are float16 \(12, 10\)"):
        record_to_set(ArrayRecord({**dict(record.items()), "labels": Array(back.labels.numpy())}), spec)


def test_a_packed_upload_of_4_bit_pixels_costs_the_budget_and_holds_twice_the_images(tmp_path: Path) -> None:
    from ddplug.sets import as_stored

    synthetic, spec = _coded_upload(tmp_path, "multi:factor=2,bits=4")
    assert len(synthetic) == 3 * 16  # 2 raw images' bytes per class: 4 stored 4-bit mosaics of 4 images
    record = set_to_record(synthetic, "uint8")
    assert record["code.images"].dtype == "uint8" and tuple(record["code.images"].shape) == (3 * 2 * 28 * 28,)
    assert sum(array.numpy().nbytes for array in record.values()) == 3 * 2 * 28 * 28 + 3 * 8
    assert torch.equal(record_to_set(record, spec).images, as_stored(synthetic).images)
    record["code.images"] = Array(record["code.images"].numpy()[:-1])  # one byte short of the layout
    with pytest.raises(PayloadError, match=r"code.images should be uint8 \(4704,\) \(multi:factor=2,bits=4 for 3 "
                                           r"classes\), got uint8 \(4703,\)"):
        record_to_set(record, spec)


@pytest.mark.parametrize(("param", "arrays", "masks"), [
    ("dct:keep=0.25,select=variance", ["classes", "code.coefficients", "code.mask"], 3),
    ("dct:keep=0.25,select=variance,bits=4", ["classes", "code.coefficients", "code.mask", "code.steps"], 3),
    ("dct:keep=0.25,select=variance,mask=set,bits=4", ["classes", "code.coefficients", "code.mask", "code.steps"], 1),
])
def test_a_variance_selected_dct_upload_carries_its_masks_in_the_budget(tmp_path: Path, param: str,
                                                                       arrays: list, masks: int) -> None:
    synthetic, spec = _coded_upload(tmp_path, param)
    record = set_to_record(synthetic, "uint8")
    assert sorted(record) == arrays and record["code.mask"].dtype == "uint8"
    # the code's layout for 3 classes (784 mask bits per class, or for the set, packed: 98 bytes
    # each), and the class ids
    layout = spec.layout(3)
    assert sum(array.numpy().nbytes for array in record.values()) == layout.stored_bytes + 3 * 8
    assert layout.stored_bytes <= 3 * 2 * 784 and layout.shapes["mask"] == (masks, 784)
    back = record_to_set(record, spec)
    assert torch.equal(back.code["mask"], synthetic.code["mask"])
    assert len(back) == 3 * layout.decoded_per_class
    record["code.mask"] = Array(np.zeros(98 * masks, np.uint8))  # a mask keeping nothing
    with pytest.raises(PayloadError, match=rf"its mask keeps \[{', '.join(['0'] * masks)}\] coefficients per class"):
        record_to_set(record, spec)


@pytest.mark.parametrize(("fault", "reason"), [
    ("classes=[4, 1, 6]", "distinct class ids 0..9 in ascending order"),
    ("classes=[1, 4, 60]", "distinct class ids 0..9 in ascending order"),
    ("classes=[1, 4]", r"code.images should be uint8 \(4, 1, 28, 28\) \(multi:factor=2 for 2 classes\), got uint8 "
                       r"\(6, 1, 28, 28\)"),
    ("float16", r"code.images should be uint8 .* got float16"),
    ("extra", "a multi:factor=2 upload holds classes, code.images"),
    ("images", "a multi:factor=2 upload holds classes, code.images"),
    ("bomb", r"declares uint8 \(6, 1, 28, 28\) but holds uint8 \(10000000000000,\)"),
])
def test_a_bad_coded_upload_is_refused_with_its_reason(tmp_path: Path, fault: str, reason: str) -> None:
    synthetic, spec = _coded_upload(tmp_path)
    record = set_to_record(synthetic, "uint8")
    if fault.startswith("classes="):
        record["classes"] = Array(np.array(json.loads(fault.partition("=")[2]), dtype=np.int64))
    elif fault == "float16":
        record["code.images"] = Array(record["code.images"].numpy().astype(np.float16))
    elif fault == "extra":
        record["code.bases"] = Array(np.zeros(3, np.float16))
    elif fault == "images":
        record = set_to_record(dataclasses.replace(synthetic, code=None), "uint8")  # decoded images, not the code
    else:
        record["code.images"] = _bomb(record["code.images"])
    with pytest.raises(PayloadError, match=reason):
        record_to_set(record, spec)

