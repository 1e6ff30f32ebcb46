"""The command line as a user meets it: outputs, JSON, and one-line errors for mistakes."""

import json

import pytest
import torch
from safetensors.torch import load_file

from ddplug.cli import main

from helpers import write_fake_fashion_mnist

SMALL = "convnet:width=4,depth=1"


@pytest.fixture()
def data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPLUG_DATA", str(write_fake_fashion_mnist(tmp_path / "data")))
    return tmp_path / "data"


def fast(*extra):
    """Small settings for DM unless ``extra`` names another method (the last --method wins)."""
    return ["--method", "dm", "--ipc", "1", "--iterations", "3", "--model", SMALL, "--eval-model", SMALL, "--eval-epochs", "2",
            "--eval-models", "2", "--quiet", "--device", "cpu", *extra]


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_distill_writes_set_grid_and_evaluation(capsys, data_root, tmp_path):
    out = tmp_path / "run"
    code, stdout, _ = run(capsys, "distill", *fast("--out", str(out), "--json"))
    assert code == 0
    summary = json.loads(stdout.strip().splitlines()[-1])
    for key in ("method", "dataset", "ipc", "iterations", "distill_seconds", "accuracy_mean", "accuracy_std",
                "random_baseline_mean", "published_accuracy", "peak_memory_mb"):
        assert key in summary
    assert (summary["method"], summary["dataset"], summary["ipc"], summary["iterations"]) == ("dm", "fashion-mnist", 1, 3)
    assert 0 <= summary["accuracy_mean"] <= 1 and len(summary["accuracies"]) == 2
    assert summary["published_accuracy"] == pytest.approx(0.707)
    for name in ("synthetic.safetensors", "synthetic.png", "evaluation.json", "accuracy.png", "checkpoint.pt"):
        assert (out / name).is_file(), name
    assert json.loads((out / "evaluation.json").read_text())["accuracy_mean"] == summary["accuracy_mean"]

    # evaluate reads the dataset from ddplug's own file and reports the same keys
    code, stdout, _ = run(capsys, "evaluate", str(out), "--eval-model", SMALL, "--eval-epochs", "2", "--eval-models", "2",
                          "--quiet", "--device", "cpu", "--json")
    assert code == 0
    again = json.loads(stdout.strip().splitlines()[-1])
    assert again["accuracies"] == summary["accuracies"]  # same seed, same protocol


@pytest.mark.parametrize("method", ["random", "herding", "kcenter"])
def test_baseline_methods(capsys, data_root, tmp_path, method):
    # A selection takes no distillation settings: --iterations and --model would be refused.
    code, stdout, _ = run(capsys, "distill", "--method", method, "--ipc", "1", "--eval-model", SMALL, "--eval-epochs",
                          "2", "--eval-models", "2", "--quiet", "--device", "cpu", "--out", str(tmp_path / method),
                          "--json", "--set", "eval.feature_epochs=1")
    assert code == 0
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["method"] == method and summary["iterations"] == 0


def test_evaluate_foreign_dc_file_needs_dataset(capsys, data_root, tmp_path):
    path = tmp_path / "res_DC.pt"
    torch.save({"data": [[torch.randn(10, 1, 28, 28), torch.arange(10)]]}, path)
    code, _, stderr = run(capsys, "evaluate", str(path), "--quiet")
    assert code == 2 and "--dataset" in stderr
    code, stdout, _ = run(capsys, "evaluate", str(path), "--dataset", "fashion-mnist", "--eval-model", SMALL,
                          "--eval-epochs", "1", "--eval-models", "1", "--quiet", "--device", "cpu", "--json")
    assert code == 0 and json.loads(stdout.strip().splitlines()[-1])["ipc"] == 1


@pytest.mark.parametrize(
    "argv,message",
    [
        (["distill", "--dataset", "imagenet-99"], "unknown dataset"),
        (["distill", "--method", "magic"], "unknown method"),
        (["distill", "--eval-model", "transformer"], "transformer"),
        (["distill", "--ipc", "1", "--model", "convnet:norm=weird", "--iterations", "1"], "norm"),
        (["distill", "--ipc", "0"], "--ipc must be at least 1"),
        (["distill", "--ipc", "50"], "more than the smallest class"),
        (["distill", "--preset", "huge"], "unknown preset"),
        (["distill", "--set", "eval.epochs"], "KEY=VALUE"),
        (["distill", "--baselines", "oracle"], "unknown baseline"),
        (["distill", "--device", "cuda:0"], "CUDA"),
        (["evaluate", "/nonexistent/set.safetensors"], "does not exist"),
        (["distill", "--lr-images", "nan"], "setting lr_images must be a finite number, got 'nan'"),
        (["distill", "--set", "dm.lr_images=inf"], "setting lr_images must be a finite number"),
        (["distill", "--lr-images", "-1"], "lr_images must be a finite number, 0 or more, got -1.0"),
        (["distill", "--ipc", "1", "--lr-images", "0"], "lr_images must be positive"),
        (["distill", "--set", "dn.iterations=3"], "no section 'dn'; sections are eval, the methods anchored-dm, dc, "
                                                   "dm, dsa, frepo, kip, mtt, and *"),
        (["distill", "--set", "dm.iteratoins=3"], "DMConfig has no setting 'iteratoins'"),
        (["distill", "--eval-models", "0"], "evaluation setting num_models must be at least 1, got 0"),
        (["distill", "--eval-epochs", "0"], "evaluation setting epochs must be at least 1, got 0"),
        (["distill", "--set", "eval.lr=-1"], "evaluation setting lr must be a positive finite number, got -1.0"),
        (["distill", "--set", "eval.momentum=1.5"], "evaluation setting momentum must be within [0, 1)"),
        (["distill", "--ipc", "1", "--bytes", "7840"], "--ipc and --bytes both set the budget: give one"),
        (["distill", "--method", "random", "--bytes", "7840"], "random picks whole raw images: use --ipc"),
        (["distill", "--bytes", "0"], "--bytes must be at least 1, got 0"),
        (["distill", "--ipc", "1000000", "--init", "noise"], "would decode to 40000000 images of 1x28x28"),
        (["distill", "--bytes", "100000000000000", "--init", "noise"], "would decode to"),
        (["distill", "--method", "frepo", "--pool-size", "1000000000"], "pool_size 1000000000 is over 1000 networks"),
        (["distill", "--method", "dm", "--set", "dm.pool_size=1000000000"], "pool_size 1000000000 is over 1000"),
        (["distill", "--method", "dm", "--ipc", "1", "--init", "noise", "--dp-epsilon", "1", "--dp-delta", "1e-300"],
         "no noise level spends at most epsilon 1 at delta 1e-300"),
        (["distill", "--bytes", "7839"], "a budget of 7839 bytes holds no raw image per class of fashion-mnist "
                                         "(one each takes 7840 bytes)"),
    ],
)
def test_user_errors_are_one_clear_line(capsys, data_root, argv, message):
    code, _, stderr = run(capsys, *argv, "--quiet")
    assert code == 2
    assert stderr.startswith("ddplug: error: ") and message in stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1


def test_missing_dataset_names_where_it_looked(capsys, tmp_path, monkeypatch):
    from ddplug.data import datasets

    monkeypatch.setattr(datasets, "_DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    code, _, stderr = run(capsys, "distill", "--data-root", str(tmp_path / "empty"), "--quiet")
    assert code == 2 and str(tmp_path / "empty") in stderr and "ddplug download" in stderr


def test_corrupt_and_wrong_files(capsys, data_root, tmp_path):
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00\x00garbage")
    code, _, stderr = run(capsys, "evaluate", str(tmp_path / "cut.safetensors"))
    assert code == 2 and "corrupt" in stderr
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "model.pt")
    code, _, stderr = run(capsys, "evaluate", str(tmp_path / "model.pt"), "--dataset", "fashion-mnist")
    assert code == 2 and "not a synthetic set" in stderr


def test_an_error_loses_nothing_already_written(capsys, data_root, tmp_path):
    out = tmp_path / "run"
    assert run(capsys, "distill", *fast("--out", str(out)))[0] == 0
    before = {name: (out / name).read_bytes() for name in ("synthetic.safetensors", "evaluation.json", "checkpoint.pt")}
    # Same folder, different settings: refused before anything is overwritten.
    code, _, stderr = run(capsys, "distill", *fast("--out", str(out), "--init", "noise"))
    assert code == 2 and "different run" in stderr
    assert {name: (out / name).read_bytes() for name in before} == before


def test_rerun_resumes_instead_of_redoing(capsys, data_root, tmp_path, monkeypatch):
    from ddplug.methods import DistributionMatching

    out = tmp_path / "run"
    run(capsys, "distill", *fast("--out", str(out), "--no-eval"))
    first = load_file(out / "synthetic.safetensors")
    steps = []
    step = DistributionMatching.step
    monkeypatch.setattr(DistributionMatching, "step", lambda self, iteration: steps.append(iteration) or step(self, iteration))
    code, stdout, _ = run(capsys, "distill", *fast("--out", str(out), "--no-eval", "--json"))
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert code == 0 and summary["iterations"] == 3 and steps == []  # the finished checkpoint is the result
    again = load_file(out / "synthetic.safetensors")
    assert all(again[key].equal(first[key]) for key in first)


def test_cl_subcommand_rejects_bad_input(capsys):
    code, _, stderr = run(capsys, "cl", "--strategy", "bogus")
    assert code == 2 and "bogus" in stderr


MTT_FLAGS = ("--method", "mtt", "--syn-steps", "2", "--expert-epochs", "1", "--max-start-epoch", "1",
             "--num-experts", "1", "--batch-syn", "5")


def test_mtt_trains_its_experts_when_none_are_cached(capsys, data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("DDPLUG_EXPERTS", str(tmp_path / "experts"))
    code, stdout, _ = run(capsys, "distill", *fast("--out", str(tmp_path / "run"), "--json", *MTT_FLAGS))
    assert code == 0
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert (summary["method"], summary["iterations"]) == ("mtt", 3)
    assert len(list((tmp_path / "experts").rglob("expert_0000.pt"))) == 1  # trained into the cache
    from ddplug.sets import load_set

    assert load_set(tmp_path / "run").lr is not None  # MTT learns the student's lr


def test_experts_command_makes_the_folder_mtt_reads(capsys, data_root, tmp_path):
    folder = tmp_path / "experts"
    code, stdout, _ = run(capsys, "experts", "--model", SMALL, "--num-experts", "2", "--epochs", "2", "--out",
                          str(folder), "--quiet", "--device", "cpu", "--json")
    assert code == 0
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert (summary["experts"], summary["epochs"], summary["dataset"]) == (2, 2, "fashion-mnist")
    code, stdout, _ = run(capsys, "distill", *fast("--no-eval", "--json", "--out", str(tmp_path / "run"), *MTT_FLAGS,
                                                   "--expert-folder", str(folder)))
    assert code == 0 and json.loads(stdout.strip().splitlines()[-1])["method"] == "mtt"
    # Too few epochs for the asked start epoch: said before any distillation.
    code, _, stderr = run(capsys, "distill", *fast("--no-eval", "--out", str(tmp_path / "late"), *MTT_FLAGS,
                                                   "--expert-folder", str(folder), "--max-start-epoch", "5"))
    assert code == 2 and "5 epochs are needed" in stderr and "ddplug experts" in stderr


@pytest.mark.parametrize(("argv", "message"), [
    (("--method", "dm", "--syn-steps", "2"), "--syn-steps is not a setting of dm (it is one of mtt)"),
    (("--method", "random", "--kernel", "ntk"), "random takes no settings"),
    (("--method", "random",), "--iterations, --model: random takes no settings"),
    (("--method", "mtt", "--syn-steps", "0"), "syn_steps must be at least 1"),
    (("--method", "mtt", "--syn-steps", "two"), "setting syn_steps expects int"),
    (("--method", "kip", "--kernel", "rbf"), "rbf"),
    (("--snapshots", "-1"), "--snapshots must be 0 or more"),
    (("--method", "dc", "--learn-labels", "true"), "holds no pixels image with its learned soft labels"),
])
def test_method_flags_reject_mistakes(capsys, data_root, tmp_path, argv, message):
    code, _, stderr = run(capsys, "distill", *fast("--out", str(tmp_path / "run"), *argv))
    assert code == 2 and message in stderr, stderr
    assert not (tmp_path / "run").exists()  # refused before any work


def test_method_flags_reach_the_config(capsys, data_root, tmp_path):
    out = tmp_path / "run"
    # --ipc 2: the bytes of 2 raw images per class hold one image and its soft labels
    code, _, _ = run(capsys, "distill", *fast("--no-eval", "--out", str(out), "--method", "dc", "--distance", "mse",
                                              "--inner-loop", "2", "--learn-labels", "true", "--ipc", "2"))
    from ddplug.sets import load_set

    synthetic = load_set(out)
    assert code == 0 and synthetic.soft_labels
    assert synthetic.meta["config"]["distance"] == "mse" and synthetic.meta["config"]["inner_loop"] == 2


def test_snapshots_record_iterations_and_seconds(capsys, data_root, tmp_path):
    out = tmp_path / "run"
    code, _, _ = run(capsys, "distill", *fast("--no-eval", "--out", str(out), "--iterations", "6", "--snapshots", "2"))
    from ddplug.sets import load_set

    snapshots = sorted((out / "snapshots").iterdir())
    assert code == 0 and [path.name for path in snapshots] == ["iter-000002.safetensors", "iter-000004.safetensors"]
    metas = [load_set(path).meta for path in snapshots]
    assert [meta["iterations"] for meta in metas] == [2, 4]
    assert 0 < metas[0]["distill_seconds"] < metas[1]["distill_seconds"] <= load_set(out).meta["distill_seconds"]


@pytest.mark.parametrize(("argv", "message"), [
    (("--num-experts", "0"), "num_experts must be at least 1"),
    (("--epochs", "0"), "epochs must be at least 1"),
    (("--per-class", "0"), "per_class must be at least 1"),
    (("--lr", "-1"), "lr must be positive"),
    (("--model", "convnet:width=oops"), "width"),
])
def test_experts_command_rejects_mistakes(capsys, data_root, tmp_path, argv, message):
    code, _, stderr = run(capsys, "experts", "--out", str(tmp_path / "experts"), "--quiet", "--device", "cpu", *argv)
    assert code == 2 and message in stderr, stderr
    assert not (tmp_path / "experts").exists()  # refused before anything is written


def test_adapter_commands_are_discovered_and_a_missing_extra_says_what_to_install(capsys, monkeypatch):
    from ddplug.cli import build_parser
    from ddplug.commands import Command

    assert {"cl", "fl"} <= set(build_parser()._subparsers._group_actions[0].choices)
    monkeypatch.setattr(Command, "missing", lambda self: ["avalanche"] if self.name == "cl" else [])
    assert "not installed: pip install 'ddplug[avalanche]'" in " ".join(build_parser().format_help().split())
    code, _, stderr = run(capsys, "cl", "--strategy", "replay")
    assert code == 2
    assert stderr.strip() == ("ddplug: error: 'ddplug cl' needs avalanche, which is not installed: "
                              "pip install 'ddplug[avalanche]'")


def test_param_fills_the_ipc_budget_and_json_reports_its_bytes(capsys, data_root, tmp_path):
    code, stdout, _ = run(capsys, "distill", *fast("--param", "multi:factor=2", "--out", str(tmp_path / "m"),
                                                   "--no-eval", "--json"))
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert code == 0
    assert (summary["param"], summary["decoded_per_class"], summary["bytes"]) == ("multi:factor=2", 4, 10 * 28 * 28)
    code, _, stderr = run(capsys, "distill", *fast("--param", "multi:factor=3", "--out", str(tmp_path / "bad")))
    assert code == 2 and "factor 3 does not divide the image size 28x28" in stderr
    assert not (tmp_path / "bad").exists()


def test_an_override_for_another_method_is_a_warning(capsys, data_root, tmp_path):
    code, _, stderr = run(capsys, "distill", *fast("--out", str(tmp_path / "run"), "--no-eval", "--set",
                                                   "kip.iterations=3"))
    assert code == 0
    assert "warning: --set kip.iterations=3 is a setting of kip, not of dm, which this run uses" in stderr


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_an_unusable_output_folder_fails_before_any_work(capsys, data_root, tmp_path, monkeypatch, where):
    from ddplug.methods import DistributionMatching

    taken = tmp_path / "taken"
    taken.write_text("keep me")
    # (A read-only folder fails the same way, but not for root, who writes anywhere.)
    out, message = ((taken, f"output folder {taken} is an existing file") if where == "file" else
                    (taken / "run", f"cannot write in output folder {taken / 'run'} ({taken} is a file)"))
    monkeypatch.setattr(DistributionMatching, "step", lambda *args: pytest.fail("distilled before checking --out"))
    code, _, stderr = run(capsys, "distill", *fast("--out", str(out)))
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1
    assert taken.read_text() == "keep me"


def test_outputs_honour_the_umask(capsys, data_root, tmp_path):
    import os
    import stat

    previous = os.umask(0o022)
    try:
        out = tmp_path / "run"
        assert run(capsys, "distill", *fast("--out", str(out)))[0] == 0
    finally:
        os.umask(previous)
    for name in ("synthetic.safetensors", "synthetic.png", "evaluation.json", "checkpoint.pt"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name


def test_a_checkpoint_of_other_settings_names_what_differs(capsys, data_root, tmp_path):
    out = tmp_path / "run"
    assert run(capsys, "distill", *fast("--out", str(out), "--no-eval"))[0] == 0
    code, _, stderr = run(capsys, "distill", *fast("--out", str(out), "--no-eval", "--init", "noise",
                                                   "--lr-images", "0.5"))
    assert code == 2
    assert "init: 'real' there, 'noise' now, lr_images: 1.0 there, 0.5 now" in stderr
    assert "batch_real" not in stderr  # settings that agree are not listed


def test_a_resumed_run_reports_the_whole_distillation_time(capsys, data_root, tmp_path, monkeypatch):
    from ddplug.methods import running
    from ddplug.sets import load_set

    out = tmp_path / "run"
    clock = iter(range(0, 10_000, 10))  # every reading of the clock is 10 s after the last
    monkeypatch.setattr(running.time, "perf_counter", lambda: float(next(clock)))
    code, stdout, _ = run(capsys, "distill", *fast("--out", str(out), "--no-eval", "--iterations", "2", "--json"))
    first = json.loads(stdout.strip().splitlines()[-1])["distill_seconds"]
    code, stdout, stderr = run(capsys, "distill", *fast("--out", str(out), "--no-eval", "--iterations", "4", "--json"))
    assert code == 0 and "resuming dm from iteration 2 of 4 (" in stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["iterations"] == 4
    assert summary["distill_seconds"] == pytest.approx(load_set(out).meta["distill_seconds"])
    second_segment = summary["distill_seconds"] - first
    assert first > 0 and second_segment > 0  # both segments count, not the last one's alone
    assert summary["seconds_per_iteration"] == pytest.approx(summary["distill_seconds"] / 4)


@pytest.mark.subprocess
def test_sigterm_saves_the_set_and_exits_like_ctrl_c(data_root, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    command = [sys.executable, "-m", "ddplug.cli", "distill", *fast("--out", str(out), "--iterations", "1000000")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "DDPLUG_DATA": str(data_root)})
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # the first checkpoint (iteration 100) shows that distillation is under way
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted after" in stderr and "Traceback" not in stderr
    from ddplug.sets import load_set

    done = load_set(out).meta["iterations"]
    assert 100 <= done < 1_000_000 and torch.load(out / "checkpoint.pt", weights_only=True)["iteration"] == done


def test_a_coded_set_is_judged_against_baselines_of_its_bytes(capsys, data_root, tmp_path, monkeypatch):
    from ddplug.methods.selection import Selection

    asked = []
    condense = Selection.condense
    monkeypatch.setattr(Selection, "condense", lambda self, real, *, ipc, **kw: asked.append((self.name, ipc))
                        or condense(self, real, ipc=ipc, **kw))
    code, stdout, _ = run(capsys, "distill", *fast("--param", "multi:factor=2", "--out", str(tmp_path / "m"),
                                                   "--baselines", "random,herding", "--json",
                                                   "--set", "eval.feature_epochs=1"))
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert code == 0 and summary["decoded_per_class"] == 4
    assert summary["ipc"] == 1 and asked == [("random", 1), ("herding", 1)]  # 1 raw image per class: the same bytes


def test_a_byte_budget_fills_its_bytes_and_baselines_get_the_raw_images_that_fit(capsys, data_root, tmp_path,
                                                                                  monkeypatch):
    from ddplug.methods.selection import Selection

    asked = []
    condense = Selection.condense
    monkeypatch.setattr(Selection, "condense", lambda self, real, *, ipc, **kw: asked.append((self.name, ipc))
                        or condense(self, real, ipc=ipc, **kw))
    # 20 000 bytes: 2 000 per class, 10 images of 2 bits (196 bytes each), or 2 raw 784-byte images
    argv = [arg for arg in fast("--bytes", "20000", "--param", "pixels:bits=2", "--out", str(tmp_path / "b"),
                                "--baselines", "random", "--json") if arg not in ("--ipc", "1")]
    code, stdout, _ = run(capsys, "distill", *argv)
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert code == 0
    assert (summary["decoded_per_class"], summary["bytes"], summary["ipc"]) == (10, 10 * 10 * 196, 2)
    assert asked == [("random", 2)]


def test_without_a_method_each_budget_gets_its_recipe(capsys, data_root, tmp_path):
    from ddplug.presets import get_preset

    recipes = get_preset("cpu")
    small = ["--iterations", "2", "--model", SMALL, "--quiet", "--device", "cpu", "--no-eval", "--json"]
    code, stdout, _ = run(capsys, "distill", "--ipc", "1", "--out", str(tmp_path / "one"), *small)
    one = json.loads(stdout.strip().splitlines()[-1])
    assert code == 0 and one["method"] == "frepo" and one["param"] == "dct:keep=0.0625,select=variance,mask=set,bits=4"
    assert one["recipe"] == recipes.recipe_for(1).command() and one["iterations"] == 2  # a flag beats the recipe
    from ddplug.sets import load_set

    assert load_set(tmp_path / "one").meta["config"]["augment"] is True  # the recipe's own setting
    code, stdout, _ = run(capsys, "distill", "--ipc", "2", "--out", str(tmp_path / "two"), *small[2:],
                          "--set", "frepo.iterations=3")
    two = json.loads(stdout.strip().splitlines()[-1])
    assert code == 0 and (two["method"], two["param"], two["iterations"]) == ("frepo", "pixels:bits=2", 3)
    code, stdout, _ = run(capsys, "distill", "--method", "frepo", "--ipc", "1", "--out", str(tmp_path / "own"), *small)
    own = json.loads(stdout.strip().splitlines()[-1])
    assert code == 0 and own["recipe"] is None and own["param"] == "pixels"  # a named method keeps its defaults
    # Budgets between measured ones take the next one up's recipe; past the largest measured, DM.
    assert [(recipes.recipe_for(ipc).method, recipes.recipe_for(ipc).settings.get("param"))
            for ipc in (11, 50, 51)] == [("frepo", "pixels:bits=2"), ("frepo", "pixels:bits=2"), ("dm", None)]
    code, stdout, _ = run(capsys, "list")
    assert code == 0 and recipes.recipe_for(10).command() in stdout and "85.42" in stdout and "87.98" in stdout


def test_the_python_call_is_what_the_command_runs(capsys, tmp_path):
    import ddplug

    tiny = {"model": SMALL, "iterations": "3"}
    evaluation = {"eval.model": SMALL, "eval.epochs": "2", "eval.num_models": "2"}
    code, stdout, _ = run(capsys, "distill", "--dataset", "digits", "--method", "dm", "--ipc", "1", "--model", SMALL,
                          "--iterations", "3", "--eval-model", SMALL, "--eval-epochs", "2", "--eval-models", "2",
                          "--quiet", "--device", "cpu", "--json", "--out", str(tmp_path / "cli"))
    assert code == 0
    from_cli = json.loads(stdout.strip().splitlines()[-1])
    run_ = ddplug.distill("digits", "dm", ipc=1, overrides=evaluation, device="cpu", progress=False, **tiny)
    assert run_.judgement.accuracies == from_cli["accuracies"]
    assert run_.summary["random_baseline_mean"] == from_cli["random_baseline_mean"]
    assert run_.summary["bytes"] == from_cli["bytes"] and run_.out_dir is None
    judged = ddplug.evaluate(tmp_path / "cli", overrides=evaluation, device="cpu", progress=False)
    assert judged.accuracies == from_cli["accuracies"] and judged.baselines["random"].mean == run_.summary[
        "random_baseline_mean"]
