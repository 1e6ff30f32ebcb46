import subprocess
import sys

import pytest

import ddplug


@pytest.mark.subprocess
def test_core_imports_without_avalanche_or_flower():
    code = "import sys, ddplug, ddplug.cli, ddplug.pipeline; print(any(m.split('.')[0] in ('avalanche', 'flwr') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_public_api_composes(digits, tiny_preset):
    config = ddplug.make_config("dm", {"ipc": 1, "iterations": 3, "model": "convnet:width=8,depth=2", "batch_real": 8})
    synthetic = ddplug.run_distillation(ddplug.create_distiller("dm", digits.train, config), progress=False).synthetic
    assert isinstance(synthetic, ddplug.SyntheticSet) and synthetic.meta["ddplug_version"] == ddplug.__version__
    result = ddplug.Evaluator(digits, tiny_preset.evaluation, progress=False).evaluate(synthetic)
    assert len(result.accuracies) == tiny_preset.evaluation.num_models
    assert set(ddplug.available_methods()) >= {"dm", "random", "herding", "kcenter", "full"}


@pytest.mark.parametrize(("call", "message"), [
    (lambda d: ddplug.distill(d.train, "dm", ipc=1), "judging a set needs test images"),
    (lambda d: ddplug.distill([1, 2], "dm", ipc=1), "data must be a dataset name, DatasetSplits or ImageDataset"),
    (lambda d: ddplug.distill(d, "dm", ipc=1, out="runs/{datset}"), "'datset'"),
    (lambda d: ddplug.distill(d, "dm", ipc=0), "--ipc must be at least 1"),
    (lambda d: ddplug.distill(d, "dm", ipc=1, snapshots=-1), "--snapshots must be 0 or more"),
    (lambda d: ddplug.distill(d, "dm", ipc=1, syn_steps=3), "--syn-steps is not a setting of dm"),
    (lambda d: ddplug.distill(d, "nope"), "unknown method 'nope'"),
    (lambda d: ddplug.evaluate("/nonexistent/set.safetensors", d), "does not exist"),
])
def test_the_python_calls_refuse_mistakes_before_any_work(digits, tmp_path, call, message):
    with pytest.raises(ddplug.DdplugError, match=message):
        call(digits)
    assert not list(tmp_path.iterdir())
