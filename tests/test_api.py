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
