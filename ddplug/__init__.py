"""ddplug: dataset distillation for PyTorch.

The pieces everything is built from::

    data = ddplug.load_dataset("fashion-mnist")                      # real data, in memory
    distiller = ddplug.create_distiller("dm", data.train, ddplug.make_config("dm", {"ipc": 10}))
    synthetic = ddplug.run_distillation(distiller).synthetic          # a SyntheticSet
    result = ddplug.Evaluator(data, ddplug.get_preset("cpu").evaluation).evaluate(synthetic)
    print(result.mean, result.std)

Long jobs in your own process run faster on glibc after ``ddplug.tune_allocator()``
(the ``ddplug`` command does it; importing ddplug does not).
"""

from ddplug.allocator import tune_allocator
from ddplug.augment import DSA, DSAConfig
from ddplug.data import ZCA, DatasetSplits, ImageDataset, from_tensors, from_torch_dataset, load_dataset
from ddplug.distill import (
    DistillConfig,
    Distiller,
    available_methods,
    create_distiller,
    make_config,
    run_distillation,
    select_subset,
)
from ddplug.errors import DdplugError
from ddplug.evaluate.evaluator import EvalResult, Evaluator
from ddplug.models import available_models, create_model, register_model
from ddplug.evaluate.protocol import EvalProtocol
from ddplug.presets import Preset, get_preset
from ddplug.sets import SyntheticSet, load_set, save_grid, save_set
from ddplug.version import __version__

__all__ = [
    "DSA", "DSAConfig", "DatasetSplits", "DdplugError", "DistillConfig", "Distiller", "EvalProtocol", "EvalResult",
    "Evaluator", "ImageDataset", "Preset", "SyntheticSet", "ZCA", "__version__", "available_methods",
    "available_models", "create_distiller", "create_model", "from_tensors", "from_torch_dataset", "get_preset",
    "load_dataset", "load_set", "make_config", "register_model", "run_distillation", "save_grid", "save_set",
    "select_subset", "tune_allocator",
]
