"""The condensation benchmark end to end on tiny fake data: rows, curves, resume."""

import importlib
import json
from pathlib import Path

import pytest

from simulations.condensation_benchmark import _raw_image_bytes, first_at_final, main
from simulations.tables import BENCHMARKS as ROOT_BENCHMARKS

from helpers import write_fake_fashion_mnist

SMALL = "convnet:width=4,depth=1"
TINY = ["--set", f"*.model={SMALL}", "--set", f"eval.model={SMALL}", "--set", "eval.epochs=2", "--set",
        "eval.num_models=2", "--set", "dm.iterations=6", "--set", "dm.batch_real=4", "--device", "cpu"]


def test_first_at_final_picks_the_first_point_within_tolerance():
    curve = [{"iterations": 10, "seconds": 1.0, "accuracy": 0.50}, {"iterations": 20, "seconds": 2.0, "accuracy": 0.598},
             {"iterations": 30, "seconds": 3.0, "accuracy": 0.61}, {"iterations": 40, "seconds": 4.0, "accuracy": 0.60}]
    assert first_at_final(curve, tolerance=0.5)["iterations"] == 20
    assert first_at_final(curve, tolerance=0.0)["iterations"] == 30  # the end counts too, the best is not needed


def test_the_bytes_plot_places_published_numbers_at_their_budgets_bytes():
    rows = [{"label": "dm multi:factor=2", "ipc": 10, "bytes": 78400}, {"label": "dm", "ipc": 10, "bytes": 78400}]
    assert _raw_image_bytes(rows) == 7840  # from the plain-pixels row: 10 classes x 784 bytes
    assert _raw_image_bytes(rows[:1]) == 0  # a coded row alone says nothing of raw images


def test_benchmark_rows_curves_and_resume(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DDPLUG_DATA", str(write_fake_fashion_mnist(tmp_path / "data")))
    out = tmp_path / "bench"
    argv = ["--methods", "dm", "random", "--params", "pixels", "multi:factor=2", "--ipc", "1", "--snapshots", "1",
            "--snapshot-models", "1", "--out", str(out), "--rows", str(tmp_path / "kept"), *TINY]
    assert main(argv) == 0
    saved = json.loads((out / "rows.json").read_text())
    (kept,) = (tmp_path / "kept").glob("rows-*.json")  # the committed copy, with its provenance
    kept = json.loads(kept.read_text())
    assert kept["rows"] == saved["rows"] and kept["conditions"].endswith("no other load")
    assert kept["command"] == "python -m simulations.condensation_benchmark " + " ".join(argv)
    dm, multi, random = saved["rows"]
    assert (dm["label"], multi["label"], random["label"]) == ("dm", "dm multi:factor=2", "random")
    # every row at the same bytes: one raw uint8 28x28 image per class
    assert dm["bytes"] == multi["bytes"] == random["bytes"] == 10 * 784
    assert (dm["decoded_per_class"], multi["decoded_per_class"], random["decoded_per_class"]) == (1, 4, 1)
    assert [point["iterations"] for point in dm["curve"]] == [3, 6]
    assert dm["curve"][-1]["accuracy"] == pytest.approx(dm["accuracies"][0])  # the same first eval network
    assert dm["iterations_to_final"] in (3, 6) and "curve" not in random
    assert (out / "curves.png").stat().st_size > 0 and (out / "accuracy-vs-bytes.png").stat().st_size > 0
    table = (out / "table.md").read_text()
    assert "| dm " in table and "| dm multi:factor=2 " in table and "| random " in table
    assert f"{dm['iterations_to_final']} its" in table
    # A re-run reads every finished row and snapshot evaluation instead of redoing them.
    capsys.readouterr()
    assert main(argv) == 0
    assert "$ ddplug" not in capsys.readouterr().err
    assert json.loads((out / "rows.json").read_text())["rows"] == saved["rows"]


def test_continual_bytes_table_gaps_and_plot(tmp_path, monkeypatch, capsys):
    pytest.importorskip("avalanche")
    import ddplug_avalanche.runner as continual
    from simulations.continual_bytes import main as continual_main

    monkeypatch.setenv("DDPLUG_DATA", str(write_fake_fashion_mnist(tmp_path / "data")))
    monkeypatch.setattr(continual, "stream_settings", lambda preset, epochs=None: continual.StreamSettings(
        model=SMALL, epochs=1, memory_epochs=1, batch_size=16,
        condense={"iterations": 2, "batch_real": 4, "model": SMALL}, train_per_class=None, test_per_class=None))
    out = tmp_path / "cl"
    argv = ["--mem-per-class", "1", "2", "--strategies", "condensed", "replay", "naive", "--experiences", "2",
            "--seeds", "1", "--device", "cpu", "--out", str(out), "--rows", str(tmp_path / "kept")]
    assert continual_main(argv) == 0
    assert len(json.loads(next((tmp_path / "kept").glob("rows-*.json")).read_text())["rows"]) == 6
    rows = json.loads((out / "rows.json").read_text())["rows"]
    assert [(row["strategy"], row["mem_per_class"]) for row in rows] == [
        ("condensed", 1), ("replay", 1), ("naive", 1), ("condensed", 2), ("replay", 2), ("naive", 2)]
    for row in rows:  # equal bytes: K raw 28x28 uint8 images for each of the 10 classes seen, or none
        assert row["memory_bytes"] == (0 if row["strategy"] == "naive" else row["mem_per_class"] * 10 * 784)
    table = (out / "table.md").read_text()
    assert "K=1: condensed - replay = " in table and "K=2: condensed - replay = " in table
    assert (out / "accuracy-vs-bytes.png").stat().st_size > 0


def test_federated_scale_measures_clients_and_the_server_and_extrapolates(tmp_path, monkeypatch):
    from simulations.federated_scale import main as scale

    monkeypatch.setenv("DDPLUG_DATA", str(write_fake_fashion_mnist(tmp_path / "data", per_class=100)))
    overrides = f"dm.model={SMALL} eval.model={SMALL} dm.iterations=2 dm.batch_real=4 eval.epochs=3"
    assert scale(["--clients", "4", "--sample", "2", "--overhead", "10", "--alpha", "100", "--overrides", overrides,
                  "--out", str(tmp_path / "scale"), "--rows", str(tmp_path / "kept")]) == 0
    assert json.loads(next((tmp_path / "kept").glob("rows-*.json")).read_text())["rows"][0]["sampled"] == 2
    (row,) = json.loads((tmp_path / "scale" / "rows.json").read_text())["rows"]
    assert row["sampled"] == 2 and len(row["client_seconds"]) == 2 and row["server_epochs"] == 3
    # Near-even partitions (alpha 100): about 25 images of every class each, all condensed in the
    # bytes of ipc 10, which the default 4-bit code fills with 20 images per class.
    assert row["client_images"] == [200, 200] and row["union_images"] == 4 * 200
    expected = row["client_seconds_mean"] * 4 / 2 + row["server_epoch_seconds"] * 3 + 10
    assert row["estimated_wall_seconds"] == pytest.approx(expected)


def test_allocator_benchmark_reports_medians_and_the_peak_range_of_its_repeats(tmp_path, monkeypatch):
    from simulations import allocator_speed

    peaks = iter([1400, 1300, 1500, 1330, 1420, 1310])  # tuned and untuned in turns
    calls = []

    def fake_run(command, tuned):
        calls.append((command[command.index("--out") + 1], tuned))
        return {"seconds_per_iteration": 0.2 if tuned else 0.4, "user_seconds": 50.0,
                "system_seconds": 2.0 if tuned else 40.0, "peak_rss_mb": next(peaks)}

    monkeypatch.setattr(allocator_speed, "run_measured", fake_run)
    monkeypatch.setattr(allocator_speed, "same_set", lambda first, second: True)
    out = tmp_path / "speed"
    allocator_speed.main(["--workloads", "dm", "--repeats", "3", "--out", str(out), "--rows", str(tmp_path / "kept")])
    assert [tuned for _, tuned in calls] == [True, False] * 3
    assert len({folder for folder, _ in calls}) == 6  # every run its own folder: none resumes another
    rows = json.loads((out / "results.json").read_text())
    assert json.loads(next((tmp_path / "kept").glob("rows-*.json")).read_text())["rows"] == rows
    assert [(row["tuned"], row["peak_rss_mb"], row["peak_rss_mb_runs"]) for row in rows] == [
        (True, 1420, [1400, 1500, 1420]), (False, 1310, [1300, 1330, 1310])]
    assert "| 1420 (1400-1500) |" in (out / "table.md").read_text().replace("  ", " ").replace("  ", " ")
    with pytest.raises(SystemExit):
        allocator_speed.main(["--workloads", "dm", "--repeats", "0", "--out", str(out), "--rows", str(tmp_path / "kept")])


def test_the_committed_tables_are_what_their_rows_give():
    from simulations.tables import stale_pages

    assert stale_pages() == []


def test_a_changed_row_makes_its_table_stale(tmp_path):
    import shutil

    from simulations.tables import PAGES, ROOT, render, stale_pages

    shutil.copytree(ROOT / "benchmarks", tmp_path / "benchmarks")
    for page in PAGES:
        (tmp_path / page).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / page, tmp_path / page)
    assert stale_pages(tmp_path) == []
    row_file = tmp_path / "benchmarks" / "avalanche-native" / "mlp-lwf-condensed-k10-memory-batches-whole-seed0.json"
    row = json.loads(row_file.read_text())
    row_file.write_text(json.dumps({**row, "final_accuracy": row["final_accuracy"] - 0.05}))
    assert "docs/results.md" in stale_pages(tmp_path)
    assert "67.66 ± 2.80" in render((tmp_path / "docs/results.md").read_text(), tmp_path / "benchmarks")
    recorded = tmp_path / "benchmarks" / "recorded" / "ipc50-dm.json"
    table = json.loads(recorded.read_text())
    table["rows"][0][2] = "99.99 ± 0.01"
    recorded.write_text(json.dumps(table))
    assert "99.99 ± 0.01" in render((tmp_path / "docs/results.md").read_text(), tmp_path / "benchmarks")
    table["rows"][0].append("a cell too many")
    recorded.write_text(json.dumps(table))
    with pytest.raises(SystemExit, match="row 1 has"):
        stale_pages(tmp_path)


def test_every_result_table_of_the_pages_is_generated_from_data():
    """No table of results is typed into a page: each sits in a generated region."""
    from simulations.tables import PAGES, REGION, ROOT

    def loose_tables(text: str) -> list[str]:
        outside = REGION.sub("", text)
        return [line for line in outside.splitlines() if line.startswith("|---")]

    results = {page: (ROOT / page).read_text() for page in PAGES}
    results["README.md"] = results["README.md"].split("\n## Results")[1].split("\n## ")[0]
    results["docs/budgets.md"] = results["docs/budgets.md"].split("The best sets measured")[1]
    assert {page: loose_tables(text) for page, text in results.items() if loose_tables(text)} == {}
    assert loose_tables("| a |\n|---|\n| 1 |\n") == ["|---|"]


def test_large_budgets_rows_carry_the_step_cost_and_memory(tmp_path, monkeypatch, capsys):
    from simulations import large_budgets
    from simulations.tables import large_budgets as table

    monkeypatch.setenv("DDPLUG_DATA", str(write_fake_fashion_mnist(tmp_path / "data")))
    out = tmp_path / "large-budgets"
    assert large_budgets.main(["--ipc", "1", "2", "--iterations", "2", "--work", str(tmp_path / "runs"),
                               "--out", str(out), "--conditions", "tests beside it"]) == 0
    first, second = (json.loads((out / f"dm-ipc{k}.json").read_text()) for k in (1, 2))
    assert (first["decoded_per_class"], second["decoded_per_class"]) == (4, 8)  # the preset's multi:factor=2
    assert second["bytes"] == 2 * first["bytes"] and first["iterations"] == 2
    assert first["peak_rss_mb"] > 0 and first["conditions"].endswith("tests beside it")
    assert first["command"].startswith("python -m simulations.large_budgets --ipc 1 2")
    assert large_budgets.main(["--ipc", "1", "--iterations", "2", "--work", str(tmp_path / "runs"), "--out", str(out),
                               "--embed-chunk", "3"]) == 0
    chunked = json.loads((out / "dm-ipc1-chunk3.json").read_text())
    assert chunked["embed_chunk"] == 3 and chunked["iterations"] == 2
    rendered = table(tmp_path)
    assert "| 1 (7 840) | 16 MiB chunks | 4 |" in rendered and "| 2 (15 680) | 16 MiB chunks | 8 |" in rendered
    assert "| 1 (7 840) | 3, checkpointed | 4 |" in rendered


def test_the_streamed_folder_benchmark_compares_both_storages_on_one_folder(tmp_path, monkeypatch, capsys):
    from simulations import streamed_folder
    from simulations.tables import imagenet_projection, streamed_folder as table

    monkeypatch.setenv("DDPLUG_DATA", str(write_fake_fashion_mnist(tmp_path / "data", per_class=4)))
    rows = tmp_path / "streamed-folder"
    argv = ["--train-per-class", "4", "--test-per-class", "2", "--side", "12", "--ipc", "1", "--iterations", "2",
            "--embed-chunk", "8", "--folder", str(tmp_path / "images"), "--work", str(tmp_path / "sets"),
            "--rows", str(rows), "--conditions", "tests beside it"]
    assert streamed_folder.main(argv) == 0
    assert len(list((tmp_path / "images" / "train").rglob("*.png"))) == 40
    kept = json.loads(next(rows.glob("rows-*.json")).read_text())
    assert [row["storage"] for row in kept["rows"]] == ["memory", "disk"]
    disk = kept["rows"][1]
    assert disk["max_abs_difference_to_memory"] == 0 and disk["image_shape"] == [3, 12, 12]
    assert disk["iterations"] == 2 and disk["embed_chunk"] == 8 and kept["conditions"].endswith("tests beside it")
    assert "| disk | 40 + 20 of 3x12x12 | 8, checkpointed |" in table(tmp_path)
    assert "| 64x64 | 63 GB | 104 000 / 264 000 |" in imagenet_projection(tmp_path)
    assert streamed_folder.main(argv) == 0  # the folder is kept, and the runs are made afresh
    assert len(list(rows.glob("rows-*.json"))) == 1


ROW_READERS = {"tables", "per_budget_figure", "avalanche_native_figure"}  # draw or print committed rows, run nothing


class _Tuned(Exception):
    pass


@pytest.mark.parametrize("name", sorted(
    path.stem for path in (Path(__file__).parents[1] / "simulations").glob("*.py")
    if path.stem not in ROW_READERS | {"__init__", "provenance"}))
def test_every_benchmark_tunes_its_process_before_it_reads_its_arguments(name, monkeypatch):
    """Seconds in the tables compare with the ``ddplug`` command's only if every benchmark's
    process runs as that command's does; a new benchmark that reads its arguments itself fails here."""
    from simulations import provenance

    def tuned():
        raise _Tuned

    monkeypatch.setattr(provenance, "tune_allocator", tuned)
    module = importlib.import_module(f"simulations.{name}")
    with pytest.raises(_Tuned):  # not argparse's exit for --help: the tuning came first
        module.main(["--help"])


def test_the_transfer_benchmark_keeps_a_row_per_set_and_model(digits, tmp_path, capsys, monkeypatch):
    from ddplug.methods import create_distiller, make_config, run_distillation
    from ddplug.sets import save_set
    from simulations import provenance, transfer
    from simulations.tables import transfer as table

    tuned = []  # its seconds per network are those of the tuned allocator, as every ddplug process's
    monkeypatch.setattr(provenance, "tune_allocator", lambda: tuned.append(True))

    config = make_config("dm", {"ipc": 1, "iterations": 2, "model": "convnet:width=8", "batch_real": 8})
    made = run_distillation(create_distiller("dm", digits.train, config), progress=False).synthetic
    path = save_set(made, tmp_path / "set" / "synthetic.safetensors")
    rows = tmp_path / "transfer"
    argv = [str(path), "--models", "convnet:width=32", "mlp:width=16", "--eval-models", "2", "--set", "eval.epochs=2",
            "--rows", str(rows), "--conditions", "tests beside it"]
    assert transfer.main(argv) == 0 and tuned == [True]
    kept = sorted((json.loads(file.read_text()) for file in rows.glob("rows-*.json")), key=lambda k: k["command"])
    assert len(kept) == 2 and kept[1]["command"].endswith("--models mlp:width=16 --eval-models 2 --preset cpu "
                                                          "--seed 0 --set=eval.epochs=2")
    mlp = kept[1]["rows"][0]
    assert mlp["set"] == "dm `pixels`, ipc 1, 2 steps, matched with `convnet:width=8`" and mlp["model"] == "mlp:width=16"
    assert len(mlp["accuracies"]) == len(mlp["random_accuracies"]) == 2
    reference = kept[0]["rows"][0]
    drop = 100 * (mlp["accuracy_mean"] - reference["accuracy_mean"])
    assert "| `mlp:width=16` |" in table(tmp_path) and f"| {drop:+.2f} |" in table(tmp_path)
    assert "mlp:width=16" in capsys.readouterr().out
    from ddplug.errors import DdplugError

    with pytest.raises(DdplugError, match="does not exist"):
        transfer.main([str(tmp_path / "none"), "--rows", str(rows)])
    with pytest.raises(DdplugError, match="unknown model 'bogusnet'"):  # before any network is trained
        transfer.main([str(path), "--models", "mlp:width=16", "bogusnet", "--set", "eval.epochs=2",
                       "--rows", str(tmp_path / "refused")])
    assert not (tmp_path / "refused").exists()


def test_the_transfer_table_pools_the_networks_of_runs_with_other_seeds(tmp_path):
    from simulations.tables import transfer as table

    def keep(name, seed, model, accuracies, random, seconds):
        row = {"set": "frepo `pixels`, ipc 10, 600 steps", "model": model, "accuracies": accuracies,
               "accuracy_mean": sum(accuracies) / len(accuracies), "random_accuracies": random,
               "seconds_per_network": seconds}
        command = f"python -m simulations.transfer runs/a --models {model} --eval-models {len(accuracies)} --seed {seed}"
        (tmp_path / "transfer" / f"rows-{name}.json").write_text(json.dumps({"command": command, "rows": [row]}))

    (tmp_path / "transfer").mkdir()
    keep("a", 0, "convnet:width=32", [0.86, 0.88], [0.72, 0.74], 100.0)
    keep("b", 0, "resnet18-bn", [0.80], [0.70], 6000.0)
    keep("c", 1, "resnet18-bn", [0.84], [0.74], 7000.0)
    keep("d", 1, "resnet18-bn", [0.84, 0.90], [0.74, 0.76], 8000.0)  # seed 1 again, with one network more
    resnet = [line for line in table(tmp_path).splitlines() if "`resnet18-bn`" in line]
    assert resnet == ["| frepo `pixels`, ipc 10, 600 steps | `resnet18-bn` | 84.67 ± 5.03 | 73.33 ± 3.06 | -2.33 | 7333 |"]


def test_the_paper_protocol_table_pools_networks_run_one_seed_at_a_time(tmp_path):
    from simulations.tables import paper_protocol

    def keep(name, set_name, seed, accuracies, seconds):
        row = {"set": set_name, "model": "convnet", "accuracies": accuracies, "random_accuracies": [0.75] * len(accuracies),
               "accuracy_mean": sum(accuracies) / len(accuracies), "seconds_per_network": seconds}
        command = f"python -m simulations.transfer runs/a --models convnet --preset paper --seed {seed}"
        (tmp_path / "paper-protocol" / f"rows-{name}.json").write_text(json.dumps({"command": command, "rows": [row]}))

    (tmp_path / "paper-protocol").mkdir()
    keep("a", "set A", 0, [0.86, 0.88], 720.0)
    keep("b", "set B", 0, [0.87], 3600.0)
    keep("c", "set B", 1, [0.89], 7200.0)
    keep("d", "set C", 0, [0.80], 1800.0)
    assert paper_protocol(tmp_path).splitlines()[2:] == [
        "| set A | `convnet`, 2 networks | 87.00 ± 1.41 | 75.00 ± 0.00 | 0.20 |",
        "| set B | `convnet`, 2 networks | 88.00 ± 1.41 | 75.00 ± 0.00 | 1.50 |",
        "| set C | `convnet`, 1 network | 80.00 | 75.00 | 0.50 |",
    ]


def test_a_transfer_row_names_the_networks_a_set_was_matched_with(digits, tmp_path):
    from ddplug.methods import create_distiller, make_config, run_distillation
    from ddplug.sets import save_set
    from simulations.transfer import set_label

    config = make_config("dm", {"ipc": 1, "iterations": 1, "model": "convnet:width=8", "batch_real": 8,
                                "pool_size": 2, "pool_models": "convnet:width=8+mlp:width=16"})
    made = run_distillation(create_distiller("dm", digits.train, config), progress=False).synthetic
    path = save_set(made, tmp_path / "pooled" / "synthetic.safetensors")
    assert set_label(path) == "dm `pixels`, ipc 1, 1 steps, matched with a pool of `convnet:width=8+mlp:width=16`"
    for model, named in (("convnet:width=8,norm=none", ", matched with `convnet:width=8,norm=none`"),
                         ("convnet:width=32", "")):  # the cpu preset's network goes unnamed, as in earlier rows
        config = make_config("dm", {"ipc": 1, "iterations": 1, "model": model, "batch_real": 8})
        made = run_distillation(create_distiller("dm", digits.train, config), progress=False).synthetic
        path = save_set(made, tmp_path / model / "synthetic.safetensors")
        assert set_label(path) == "dm `pixels`, ipc 1, 1 steps" + named


def test_the_per_budget_table_and_figure_come_from_the_rows_with_the_published_numbers(tmp_path, monkeypatch):
    import shutil

    from simulations import per_budget_figure
    from simulations.tables import per_budget, per_budget_rows

    shutil.copytree(ROOT_BENCHMARKS / "per-budget", tmp_path / "per-budget")
    extra = {"ipc": 10, "bytes": 78000, "budget_bytes": 78400, "dataset": "fashion-mnist", "label": "a new set",
             "set": "a new set", "accuracy_mean": 0.9012, "accuracy_std": 0.001, "random_mean": 0.7, "random_std": 0.01,
             "compare_with": ["fred", "mtt"]}
    (tmp_path / "per-budget" / "10-new.json").write_text(json.dumps(extra))
    table = per_budget(tmp_path)
    new_line = next(line for line in table.splitlines() if "a new set" in line)
    # the best of its budget comes first; published numbers are read from ddplug.evaluation.published
    assert new_line == "| 10 images per class (78 400) | a new set | 90.12 ± 0.10 | 70.00 ± 1.00 | FreD 89.1, MTT 87.2 |"
    tens = [run["accuracy_mean"] for run in per_budget_rows(tmp_path) if run["ipc"] == 10]
    assert tens[0] == 0.9012 and tens == sorted(tens, reverse=True)
    points = per_budget_figure.figure_rows(per_budget_rows(tmp_path))
    random = [point for point in points if point["label"] == "random"]
    assert [point["ipc"] for point in random] == [1, 10, 50]  # one per budget
    assert random[1]["accuracy_mean"] == 0.7  # as the first (best) row of its budget measured it
    monkeypatch.setattr(per_budget_figure, "per_budget_rows", lambda: per_budget_rows(tmp_path))
    assert per_budget_figure.main(["--out", str(tmp_path / "bytes.png")]) == 0
    assert (tmp_path / "bytes.png").stat().st_size > 10_000


def test_the_feature_probe_counts_the_units_no_image_activates_and_the_classes_predicted():
    import torch
    from torch.utils.data import TensorDataset

    from simulations.avalanche_native import _Grey3, _features_after

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 4), torch.nn.ReLU())
            self.classifier = torch.nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.classifier(self.features(x))

    class Experience:  # what the probe reads of an Avalanche experience: dataset.eval()
        def __init__(self, images: torch.Tensor, labels: list[int]) -> None:
            self.dataset = self
            self.data = TensorDataset(images, torch.tensor(labels))

        def eval(self) -> TensorDataset:  # noqa: A003 - Avalanche's name
            return self.data

    net = Net()
    with torch.no_grad():
        net.features[1].weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0]]))
        net.features[1].bias.copy_(torch.tensor([0.0, 0, -1, 0]))  # unit 2 never fires, unit 3 stays at 0
        net.classifier.weight.copy_(torch.eye(3, 4))
        net.classifier.bias.zero_()
    stream = [Experience(torch.tensor([[2.0, 1, 5]]), [0]), Experience(torch.tensor([[0.5, 3, 5]]), [1])]
    assert _features_after(net, stream) == {"dead_feature_share": 0.5, "predicted_classes": [0, 1]}
    assert _features_after(net, stream[:1]) == {"dead_feature_share": 0.5, "predicted_classes": [0]}
    assert not net.training
    # Avalanche's SimpleCNN comes wrapped (one channel repeated to three): its own features are probed
    grey = [Experience(torch.tensor([[[[1.0]]]]), [0])]
    assert _features_after(_Grey3(net), grey) == {"dead_feature_share": 0.5, "predicted_classes": [0]}


def test_the_memory_leakage_probe_counts_a_replayed_real_image_as_a_near_copy_and_noise_as_none():
    import torch
    from torch.utils.data import TensorDataset

    from simulations.avalanche_native import _memory_leakage

    class Split:  # what the probe reads of an Avalanche dataset, a memory's or an experience's: eval()
        def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
            self.dataset = self  # an experience's dataset is itself here
            self.data = TensorDataset(images, labels)

        def eval(self) -> TensorDataset:  # noqa: A003 - Avalanche's name
            return self.data

    generator = torch.Generator().manual_seed(0)
    train = torch.rand(40, 1, 6, 6, generator=generator)
    labels = torch.arange(40) % 10
    stream = [Split(train[:20], labels[:20]), Split(train[20:], labels[20:])]
    test = torch.rand(20, 1, 6, 6, generator=generator), torch.arange(20) % 10

    def holding(images: torch.Tensor) -> object:
        return type("Plugin", (), {"storage_policy": type("Buffer", (), {"buffer": Split(images, labels[:len(images)])})})()

    copies = _memory_leakage(holding(train[[3, 25, 30]] * 2 + 1), stream, test, seed=0)  # brightness does not hide them
    assert copies["memory_images"] == 3 and copies["near_copies"] == 3
    assert copies["upload_nn_similarity_median"] == pytest.approx(1.0)
    noise = _memory_leakage(holding(torch.rand(5, 1, 6, 6, generator=generator)), stream, test, seed=0)
    assert noise["memory_images"] == 5 and noise["near_copies"] == 0
    assert noise["upload_nn_similarity_median"] < 0.9


def test_the_avalanche_table_keeps_a_row_per_memory_code_and_sets_icarl_against_the_best_memory(tmp_path):
    from simulations.avalanche_native_figure import bars
    from simulations.tables import avalanche_native, avalanche_native_defaults, rows

    folder = tmp_path / "avalanche-native"
    folder.mkdir()

    def row(name: str, strategy: str, memory: str, accuracy: float, seed: int, **extra) -> None:
        (folder / f"{name}-{seed}.json").write_text(json.dumps({
            "model": "mlp", "strategy": strategy, "memory": memory, "mem_per_class": 10, "seed": seed,
            "final_accuracy": accuracy, "seconds": 40.0 + seed, "condensation_seconds": 20.0 if "condensed" in memory
            else None, "memory_images": 1600, "commit": "abc", "conditions": "2 CPU cores, no other load", **extra}))

    for seed in (0, 1):
        row("old", "lwf", "condensed-strategy", 0.70, seed)  # no code recorded: the earlier default
        row("new", "lwf", "condensed-strategy", 0.72 + seed / 100, seed, condensation_param="multi:factor=2,bits=2")
        row("naive", "naive", "condensed-strategy", 0.71, seed, condensation_param="multi:factor=2,bits=2")
        row("replay", "lwf", "replay", 0.65, seed)
        row("icarl", "icarl", "herding", 0.64, seed)
        row("retrain", "naive", "condensed-retrain", 0.10, seed, condensation_param="pixels:bits=2")
        row("gdumb", "naive", "gdumb", 0.12, seed)
    table = avalanche_native(tmp_path)
    lines = [line for line in table.splitlines() if line.startswith("| `mlp`")]
    assert "| 10.00 ± 0.00 (retrain) | `GDumbPlugin` **12.00 ± 0.00** | -2.0 |" in lines.pop(2)  # a loss: theirs in bold
    assert len(lines) == 3
    assert "`multi:factor=2` | **70.00 ± 0.00** (replay) | `ReplayPlugin` 65.00 ± 0.00 | +5.0 | 2 | 40 (20), 40" in lines[0]
    assert "`multi:factor=2,bits=2` | **72.50 ± 0.71** (replay)" in lines[1] and "| +7.5 |" in lines[1]
    assert "iCaRL (its own strategy), K = 10" in lines[2] and "**72.50 ± 0.71** (LwF, replay)" in lines[2]
    assert "iCaRL's herded images 64.00 ± 0.00 | +8.5 |" in lines[2]
    for seed in (0, 1):  # the figure shows the plug-in's memories: not one of other settings
        row("longer", "lwf", "condensed-strategy", 0.99, seed, condensation_param="multi:factor=2,bits=2",
            condensation_settings={"iterations": 1000})
    cells = bars(rows("avalanche-native", tmp_path), "multi:factor=2,bits=2")
    assert [label for label, _, _ in cells] == ["LwF\nK = 10", "iCaRL\nK = 10"]
    assert cells[0][1:] == ([0.72, 0.73], [0.65, 0.65]) and cells[1][1] == []
    # The README's table keeps the memories condensed as the plug-in does by default for the
    # model's kind of network: the MLP's copies in 2-bit mosaics, not the earlier 8-bit code.
    defaults = [line for line in avalanche_native_defaults(tmp_path).splitlines() if line.startswith("| `mlp`")]
    assert defaults == lines[1:]
    # A convolutional network's memory is matched by the preset's ConvNet in 2-bit pixels and
    # augmented for training by default: iCaRL faces that memory, not the one matched by copies
    # of the ResNet, the same code unaugmented, nor a better row of another code.
    for seed in (0, 1):
        row("res-raw", "lwf", "condensed", 0.80, seed, model="slimresnet", condensation_param="pixels")
        row("res-own", "naive", "condensed-strategy", 0.30, seed, model="slimresnet",
            condensation_param="multi:factor=2,bits=2")
        row("res-preset", "naive", "condensed", 0.67, seed, model="slimresnet", condensation_param="pixels:bits=2",
            augment_memory=True)
        row("res-unaugmented", "lwf", "condensed", 0.85, seed, model="slimresnet", condensation_param="pixels:bits=2")
        row("res-frepo", "naive", "condensed", 0.90, seed, model="slimresnet", condensation_param="pixels:bits=2",
            condensation_method="frepo")
        row("res-longer", "naive", "condensed", 0.95, seed, model="slimresnet", condensation_param="pixels:bits=2",
            condensation_settings={"param": "pixels:bits=2", "iterations": 1000})
        row("res-random", "naive", "condensed", 0.60, seed, model="slimresnet", condensation_param="pixels",
            condensation_method="random")
        row("res-replay", "naive", "replay", 0.57, seed, model="slimresnet")
        row("res-icarl", "icarl", "herding", 0.54, seed, model="slimresnet")
    table = avalanche_native(tmp_path).splitlines()
    icarl = [line for line in table if line.startswith("| `slimresnet` | iCaRL")]
    assert len(icarl) == 1
    # Another method's memory of the same code, or one of other settings, is its own row, named by them.
    frepo = [line for line in table if "frepo, `pixels:bits=2`" in line]
    assert len(frepo) == 1 and "**90.00 ± 0.00** (replay) | `ReplayPlugin` 57.00 ± 0.00 | +33.0 |" in frepo[0]
    # a selection's memory (Avalanche's real images, drawn as the plug-in draws) was matched with no network
    selected = [line for line in table if "random, `pixels`" in line]
    assert len(selected) == 1 and "| none (real images), random, `pixels` | **60.00 ± 0.00** (replay)" in selected[0]
    longer = [line for line in table if "`pixels:bits=2`, iterations=1000" in line]
    assert len(longer) == 1 and "**95.00 ± 0.00** (replay)" in longer[0]
    assert "ConvNet (the preset's), `pixels:bits=2`, augment_memory=True | **67.00 ± 0.00** (Naive, replay)" in icarl[0]
    assert "iCaRL's herded images 54.00 ± 0.00 | +13.0 |" in icarl[0]


def test_the_avalanche_summary_sets_each_strategys_k_side_by_side_for_the_default_memories(tmp_path):
    from simulations.tables import avalanche_native_summary

    folder = tmp_path / "avalanche-native"
    folder.mkdir()

    def row(name: str, strategy: str, memory: str, k: int, accuracy: float, seed: int, **extra) -> None:
        (folder / f"{name}-k{k}-{seed}.json").write_text(json.dumps({
            "model": "mlp", "strategy": strategy, "memory": memory, "mem_per_class": k, "seed": seed,
            "final_accuracy": accuracy, "seconds": 1.0, "condensation_seconds": 1.0, "memory_images": 160 * k,
            **extra}))

    default = {"condensation_param": "multi:factor=2,bits=2"}
    for seed in range(3):
        for k, ours in ((10, 0.72), (1, 0.70)):
            # K = 1: 16 samples per class, fewer than a minibatch's share: rows say how they were drawn
            row("lwf", "lwf", "condensed-strategy", k, ours + seed / 100, seed, **default, memory_batches="fill")
            row("lwf-replay", "lwf", "replay", k, ours - 0.1, seed)
            row("icarl", "icarl", "herding", k, ours - 0.05, seed)
        row("old-code", "lwf", "condensed-strategy", 10, 0.99, seed)  # not the default memory: left out
        # drawn whole as Avalanche's loader draws: left out beside rows that fill the memory's share
        row("lwf-whole", "lwf", "condensed-strategy", 1, 0.98, seed, **default, memory_batches="whole")
        # augmented for training: another setting than the default, left out
        row("lwf-augmented", "lwf", "condensed-strategy", 1, 0.97, seed, **default, memory_batches="fill",
            augment_memory=True)
        row("retrain", "naive", "condensed-strategy-retrain", 10, 0.80, seed, **default)
        row("gdumb", "naive", "gdumb", 10, 0.66, seed)
        row("retrain", "naive", "condensed-strategy-retrain", 1, 0.10, seed, **default)  # a loss: Avalanche's in bold
        row("gdumb", "naive", "gdumb", 1, 0.12, seed)
    row("naive", "naive", "condensed-strategy", 1, 0.60, 0, **default)  # recorded before the fill: drawn whole
    row("naive-replay", "naive", "replay", 1, 0.30, 0)
    lines = avalanche_native_summary(tmp_path).splitlines()
    assert lines[0] == "| model | strategy (memory) | against | K = 10 | K = 1 |"
    assert lines[2:] == [
        "| `mlp` | LwF (condensed replay) | `ReplayPlugin` | **73.00** / 62.00 (+11.0) | **71.00** / 60.00 (+11.0) |",
        "| `mlp` | Naive (condensed replay) | `ReplayPlugin` | | **60.00** / 30.00 (+30.0, 1 seed, drawn whole) |",
        "| `mlp` | Naive, 30 epochs on the memory alone (condensed retrain) | `GDumbPlugin` | **80.00** / 66.00 (+14.0) | "
        "10.00 / **12.00** (-2.0) |",
        "| `mlp` | iCaRL (its own strategy) | iCaRL's herded images | **73.00** (LwF) / 67.00 (+6.0) | "
        "**71.00** (LwF) / 65.00 (+6.0) |",
    ]


def test_the_avalanche_summary_sets_a_strategys_replay_row_before_its_retrain_row_whatever_its_training(tmp_path):
    from simulations.tables import avalanche_native_summary

    folder = tmp_path / "avalanche-native"
    folder.mkdir()
    default = {"condensation_param": "multi:factor=2,bits=2", "memory_batches": "fill"}
    for name, memory, accuracy, extra in (
            ("retrain", "condensed-strategy-retrain", 0.8, default), ("gdumb", "gdumb", 0.6, {}),
            # replay at 3 epochs per experience: a training the retrain rows do not name
            ("replay", "condensed-strategy", 0.7, {**default, "epochs": 3}), ("theirs", "replay", 0.5, {"epochs": 3})):
        (folder / f"{name}.json").write_text(json.dumps({
            "model": "mlp", "strategy": "naive", "memory": memory, "mem_per_class": 10, "seed": 0,
            "final_accuracy": accuracy, "seconds": 1.0, "condensation_seconds": 1.0, "memory_images": 1600,
            **extra}))
    settings = [line.split(" | ")[1] for line in avalanche_native_summary(tmp_path).splitlines()[2:]]
    assert settings == ["Naive, 3 epochs per experience (condensed replay)",
                        "Naive, 30 epochs on the memory alone (condensed retrain)"]


def test_the_augmentation_table_sets_each_augmented_memory_beside_the_same_memory_as_held(tmp_path):
    from simulations.tables import avalanche_augmentation

    folder = tmp_path / "avalanche-native"
    folder.mkdir()

    def row(name: str, strategy: str, memory: str, accuracy: float, seed: int, **extra) -> None:
        (folder / f"{name}-{seed}.json").write_text(json.dumps({
            "model": "bncnn", "strategy": strategy, "memory": memory, "mem_per_class": 1, "seed": seed,
            "final_accuracy": accuracy, "seconds": 1.0, "condensation_seconds": 1.0, "memory_images": 40,
            **({"condensation_param": "pixels:bits=2"} if memory.startswith("condensed") else {}),
            **({"memory_batches": "fill"} if memory == "condensed" else {}), **extra}))

    for seed in (0, 1):
        row("naive", "naive", "condensed", 0.50 + seed / 10, seed)
        row("naive-augmented", "naive", "condensed", 0.60, seed, augment_memory=True)
        row("naive-replay", "naive", "replay", 0.20, seed)
        row("lwf-augmented", "lwf", "condensed", 0.70, seed, augment_memory=True)  # nothing to set it beside
        row("lwf-replay", "lwf", "replay", 0.20, seed)
        row("retrain", "naive", "condensed-retrain", 0.75, seed)
        row("retrain-augmented", "naive", "condensed-retrain", 0.70, seed, augment_memory=True)
        row("gdumb", "naive", "gdumb", 0.40, seed)
    lines = avalanche_augmentation(tmp_path).splitlines()[2:]
    assert lines == [
        "| `bncnn` | Naive, K = 1 | ConvNet (the preset's), `pixels:bits=2` | 55.00 ± 7.07 (replay) | **60.00 ± 0.00** "
        "| +5.0 | `ReplayPlugin` 20.00 ± 0.00 | 2 |",
        "| `bncnn` | Naive, K = 1, 30 epochs on the memory alone | ConvNet (the preset's), `pixels:bits=2` | "
        "**75.00 ± 0.00** (retrain) | 70.00 ± 0.00 | -5.0 | `GDumbPlugin` 40.00 ± 0.00 | 2 |"]


@pytest.mark.parametrize("flags, suffix, memory", [
    ([], "", "replay"), (["--lr", "0.05"], "-lr0.05", "replay"), (["--epochs", "3"], "-epochs3", "replay"),
    (["--batch-size", "64"], "-batch64", "replay"), (["--optimizer", "adam"], "-adam-lr0.001", "replay"),
    (["--epochs", "3"], "", "gdumb")])  # a memory retrained alone never trains on the experience's data
def test_a_rows_file_names_its_training_where_it_is_not_the_protocols(flags, suffix, memory, tmp_path, monkeypatch,
                                                                       capsys):
    import simulations.avalanche_native as avalanche_native

    def run_cell(*args):
        raise AssertionError(f"the row of {args[:5]} was not found and would have run")

    monkeypatch.setattr(avalanche_native, "run_cell", run_cell)
    for name, accuracy in (("", 0.5), *([(suffix, 0.6)] if suffix else [])):  # the protocol's row, and this training's
        (tmp_path / f"mlp-naive-{memory}-k10{name}-seed0.json").write_text(json.dumps({
            "model": "mlp", "strategy": "naive", "memory": memory, "mem_per_class": 10, "final_accuracy": accuracy,
            "seconds": 1.0, "condensation_seconds": None}))
    avalanche_native.main(["--models", "mlp", "--strategies", "naive", "--memories", memory, "--mem-per-class", "10",
                           "--seeds", "1", "--out", str(tmp_path), *flags])
    assert f"| {60 if suffix else 50}.00 ± 0.00 " in capsys.readouterr().out


def test_the_avalanche_tables_never_pool_rows_of_another_training_with_the_protocols(tmp_path):
    from simulations.tables import memory_comparisons

    folder = tmp_path / "avalanche-native"
    folder.mkdir()
    for name, memory, accuracy, training in (
            ("condensed", "condensed", 0.7, {}), ("replay", "replay", 0.6, {}),
            ("condensed-lr", "condensed", 0.5, {"lr": 0.05, "epochs": 3}),
            ("replay-lr", "replay", 0.2, {"lr": 0.05, "epochs": 3}),
            ("retrain", "condensed-retrain", 0.8, {"lr": 0.05, "epochs": 30}), ("gdumb", "gdumb", 0.4, {})):
        (folder / f"{name}.json").write_text(json.dumps({
            "model": "mlp", "strategy": "naive", "memory": memory, "mem_per_class": 10, "seed": 0,
            "final_accuracy": accuracy, "seconds": 1.0, "condensation_seconds": 1.0, "memory_images": 400,
            "optimizer": "sgd", "batch_size": 128, "lr": 0.01, "epochs": 1, **training}))
    cells = {(cell.setting, cell.mode): (cell.condensed, cell.theirs) for cell in memory_comparisons(tmp_path)}
    # the retrained memory at lr 0.05 has no GDumb of its training to face: no cell
    assert cells == {("Naive", "replay"): ([0.7], [0.6]),
                     ("Naive, lr 0.05, 3 epochs per experience", "replay"): ([0.5], [0.2])}


@pytest.mark.parametrize("argv", [["--memories", "condensed", "none"], ["--strategies", "lwf", "icarl"]])
def test_leakage_refuses_a_run_whose_memory_no_plug_in_holds(argv, capsys):
    from simulations.avalanche_native import main

    with pytest.raises(SystemExit):
        main(["--leakage", *argv])
    assert "--leakage reports on the images a memory plug-in holds" in capsys.readouterr().err


def test_a_selected_memory_keeps_raw_images_and_a_distilled_one_its_code():
    from ddplug_avalanche import Condensation
    from simulations.avalanche_native import make_model, memory_param

    mlp, cnn = make_model("mlp", 0), make_model("bncnn", 0)
    assert memory_param(Condensation(method="random"), mlp) == "pixels"
    assert memory_param(Condensation(), mlp) == "multi:factor=2,bits=2"  # the plug-in's defaults per network kind
    assert memory_param(Condensation(), cnn) == "pixels:bits=2"


@pytest.mark.parametrize("model, flag, suffix, code", [
    ("slimresnet", [], "-augment-memory", "pixels-bits2"), ("slimresnet", ["--no-augment-memory"], "", "pixels-bits2"),
    ("bncnn", [], "", "pixels-bits2"), ("bncnn", ["--augment-memory"], "-augment-memory", "pixels-bits2"),
    ("mlp", [], "", "multi-factor2-bits2")])
def test_a_condensed_rows_file_says_whether_its_memory_was_augmented(model, flag, suffix, code, tmp_path, monkeypatch,
                                                                        capsys):
    import simulations.avalanche_native as avalanche_native

    def run_cell(*args):
        raise AssertionError(f"the row of {args[:5]} was not found and would have run")

    monkeypatch.setattr(avalanche_native, "run_cell", run_cell)
    (tmp_path / f"{model}-naive-condensed-k1{suffix}-param-{code}-seed0.json").write_text(json.dumps({
        "model": model, "strategy": "naive", "memory": "condensed", "mem_per_class": 1, "final_accuracy": 0.5,
        "seconds": 1.0, "condensation_seconds": 1.0}))
    avalanche_native.main(["--models", model, "--strategies", "naive", "--memories", "condensed", "--mem-per-class",
                           "1", "--seeds", "1", "--out", str(tmp_path), *flag])
    assert "| 50.00 ± 0.00 " in capsys.readouterr().out


def test_dms_memory_is_augmented_for_training_by_default_for_a_deep_convolutional_network_only():
    from ddplug_avalanche import Condensation
    from ddplug_avalanche.buffer import network_kind
    from simulations.avalanche_native import make_model

    networks = [make_model(name, 0) for name in ("mlp", "bncnn", "cnn", "slimresnet")]
    assert [network_kind(network) for network in networks] == ["dense", "convolutional", "deep convolutional",
                                                               "deep convolutional"]
    assert [Condensation().augments(network) for network in networks] == [False, False, True, True]
    assert not Condensation(method="random").augments(networks[-1])  # a selection has no memory defaults


@pytest.mark.parametrize("argv, message", [
    (["--method", "bogus"], "invalid choice: 'bogus'"),
    (["--method", "frepo", "--set", "pool_size=0"], "pool_size must be at least 1"),  # FRePo's check, not DM's
])
def test_a_bad_condensation_method_or_setting_fails_before_any_run(argv, message, tmp_path, capsys):
    from simulations.avalanche_native import main

    with pytest.raises(SystemExit):
        main([*argv, "--out", str(tmp_path / "rows")])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "rows").exists()


def test_the_avalanche_leakage_table_averages_each_memory_over_its_seeds(tmp_path):
    from simulations.tables import avalanche_leakage

    folder = tmp_path / "avalanche-leakage"
    folder.mkdir()

    def row(name: str, memory: str, accuracy: float, seed: int, similarity: float, copies: int, **extra) -> None:
        (folder / f"{name}-{seed}.json").write_text(json.dumps({
            "model": "mlp", "strategy": "lwf", "memory": memory, "mem_per_class": 10, "seed": seed,
            "final_accuracy": accuracy, "leakage": {"upload_nn_similarity_median": similarity,
                                                     "real_nn_similarity_median": 0.9, "membership_advantage": 0.1,
                                                     "near_copies": copies, "memory_images": 100}, **extra}))

    for seed in (0, 1):
        row("real", "condensed-strategy", 0.72, seed, 0.95, 2 * seed, condensation_param="multi:factor=2,bits=2",
            condensation_settings={})
        row("blend", "condensed-strategy", 0.71, seed, 0.85 + seed / 100, 0, condensation_param="multi:factor=2,bits=2",
            condensation_settings={"init": "blend:images=3"})
        row("replay", "replay", 0.65, seed, 1.0, 100)
    lines = [line for line in avalanche_leakage(tmp_path).splitlines() if line.startswith("| `mlp`")]
    assert lines == [
        "| `mlp` | LwF, K = 10 | the strategy's model, `multi:factor=2,bits=2`, init `real` | 72.00 ± 0.00 | 100 | "
        "0.950 | 0.900 | no | 1 | 0.100 | 2 |",
        "| `mlp` | LwF, K = 10 | the strategy's model, `multi:factor=2,bits=2`, init `blend:images=3` | 71.00 ± 0.00 | "
        "100 | 0.855 | 0.900 | yes | 0 | 0.100 | 2 |",
        "| `mlp` | LwF, K = 10 | `ReplayPlugin`, raw images | 65.00 ± 0.00 | 100 | 1.000 | 0.900 | no | 100 | 0.100 | 2 |",
    ]


def test_icarl_splits_every_avalanche_model_into_flat_features_and_the_classifier_on_them():
    import torch

    from simulations.avalanche_native import MODELS, _split_for_icarl, make_model

    grey = torch.rand(3, 1, 28, 28)
    for name in MODELS:
        model = make_model(name, 0).eval()
        with torch.no_grad():
            whole = model(grey)
            features, classifier = _split_for_icarl(model)
            flat = features(grey)
            assert flat.ndim == 2, name
            assert torch.allclose(classifier(flat), whole, atol=1e-5), name


def test_grey_images_reach_a_three_channel_model_at_the_size_it_takes():
    import torch

    from simulations.avalanche_native import _Grey3

    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x)
            return x.flatten(1)[:, :10]

    grey = torch.rand(2, 1, 28, 28)
    _Grey3(Probe(), size=32)(grey)
    _Grey3(Probe())(grey)
    resized, kept = seen
    assert resized.shape == (2, 3, 32, 32) and torch.equal(resized[:, 0], resized[:, 2])
    assert abs(float(resized.mean() - grey.mean())) < 0.02  # resized, not padded
    assert torch.equal(kept, grey.expand(-1, 3, -1, -1))


def test_grouped_condensation_condenses_each_group_alone_and_judges_the_whole(tmp_path, monkeypatch, capsys):
    from simulations import grouped_condensation

    seen = []
    condense = grouped_condensation.condense_classes

    def recording(real, *args, **kwargs):
        seen.append(sorted(real.labels.unique().tolist()))
        return condense(real, *args, **kwargs)

    monkeypatch.setattr(grouped_condensation, "condense_classes", recording)
    rows = tmp_path / "rows"
    common = ["--dataset", "digits", "--method", "frepo", "--set", "iterations=2", "--set", "batch_real=5",
              "--set", "model=convnet:width=4,depth=1", "--groups", "0,1", "2,3,4", "5,6,7,8,9",
              "--eval-models", "1", "--rows", str(rows)]
    assert grouped_condensation.main(common) == 0
    assert seen == [[0, 1], [2, 3, 4], [5, 6, 7, 8, 9]]  # each group alone
    seen.clear()
    assert grouped_condensation.main([*common, "--beside-held"]) == 0
    assert seen == [[0, 1], [0, 1, 2, 3, 4], list(range(10))]  # beside the classes held before it
    kept = sorted((json.loads(path.read_text()) for path in rows.glob("rows-*.json")),
                  key=lambda kept: kept["rows"][0]["beside_held"])
    for file, beside in zip(kept, (False, True)):
        (row,) = file["rows"]
        assert row["beside_held"] is beside and row["groups"] == [[0, 1], [2, 3, 4], [5, 6, 7, 8, 9]]
        assert row["class_counts"] == [1] * 10  # each class's own budget, no class twice
        assert row["images_per_class"] == 1 and len(row["accuracies"]) == 1 and 0 <= row["accuracy_mean"] <= 1
        assert file["command"].startswith("python -m simulations.grouped_condensation --dataset digits")
    with pytest.raises(SystemExit, match="each class 0..9 at most once"):
        grouped_condensation.main(["--dataset", "digits", "--groups", "0,1", "1,2", "--rows", str(rows)])
    with pytest.raises(SystemExit):
        grouped_condensation.main(["--dataset", "digits", "--method", "frepo", "--set", "ridge=-1", "--rows", str(rows)])
    assert "error: ridge must be" in capsys.readouterr().err.splitlines()[-1]
    with pytest.raises(SystemExit):
        grouped_condensation.main(["--dataset", "no-such-data", "--rows", str(rows)])
    assert "no-such-data" in capsys.readouterr().err.splitlines()[-1]
    with pytest.raises(SystemExit):
        grouped_condensation.main(["--dataset", "digits", "--eval-models", "0", "--rows", str(rows)])
    assert "num_models must be at least 1" in capsys.readouterr().err.splitlines()[-1]
