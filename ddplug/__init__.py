"""ddplug: dataset distillation for PyTorch.

What ``ddplug distill`` and ``ddplug evaluate`` run, one call each::

    run = ddplug.distill("fashion-mnist", ipc=10)      # the preset's recipe, stored, judged
    print(run.table(), run.synthetic)
    judged = ddplug.evaluate(run.synthetic, "fashion-mnist", model="mlp")

The pieces they are built from::

    data = ddplug.load_dataset("fashion-mnist")                      # real data, in memory
    distiller = ddplug.create_distiller("dm", data.train, ddplug.make_config("dm", {"ipc": 10}))
    synthetic = ddplug.run_distillation(distiller).synthetic          # a SyntheticSet
    result = ddplug.Evaluator(data, ddplug.get_preset("cpu").evaluation).evaluate(synthetic)

Long jobs in your own process run faster on glibc after ``ddplug.tune_allocator()``
(the ``ddplug`` command does it; importing ddplug does not).
"""

from ddplug.allocator import tune_allocator
from ddplug.api import DistillResult, distill, evaluate
from ddplug.augment import DSA, DSAConfig
from ddplug.data import ZCA, DatasetSplits, ImageDataset, from_tensors, from_torch_dataset, load_dataset
from ddplug.methods import (
    DistillConfig,
    Distiller,
    available_methods,
    create_distiller,
    make_config,
    run_distillation,
    select_subset,
)
from ddplug.errors import DdplugError
from ddplug.evaluation.evaluator import EvalResult, Evaluator
from ddplug.models import available_models, create_model, register_model
from ddplug.evaluation.protocol import EvalProtocol
from ddplug.pipeline import Judgement
from ddplug.presets import Preset, Recipe, get_preset
from ddplug.sets import SyntheticSet, load_set, save_grid, save_set
from ddplug.version import __version__

__all__ = [
    "DSA", "DSAConfig", "DatasetSplits", "DdplugError", "DistillConfig", "DistillResult", "Distiller", "EvalProtocol",
    "EvalResult", "Judgement", "Recipe", "distill", "evaluate",
    "Evaluator", "ImageDataset", "Preset", "SyntheticSet", "ZCA", "__version__", "available_methods",
    "available_models", "create_distiller", "create_model", "from_tensors", "from_torch_dataset", "get_preset",
    "load_dataset", "load_set", "make_config", "register_model", "run_distillation", "save_grid", "save_set",
    "select_subset", "tune_allocator",
]
