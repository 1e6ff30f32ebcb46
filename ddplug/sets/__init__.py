"""Synthetic sets: the object, its files (own and foreign formats) and its pictures."""

from ddplug.sets.files import (
    IMAGE_ENCODINGS,
    SET_FILE,
    as_stored,
    decode_code,
    decode_images,
    encode_images,
    load_set,
    payload_bytes,
    save_set,
    stored_code,
)
from ddplug.sets.param import (
    Layout,
    Parameterisation,
    available_params,
    create_param,
    fit_layout,
    raw_images_per_class,
    register_param,
)
from ddplug.sets.grid import save_grid
from ddplug.sets.synthetic import SetLimits, SyntheticSet

__all__ = [
    "IMAGE_ENCODINGS", "SET_FILE", "Layout", "Parameterisation", "SetLimits", "SyntheticSet", "as_stored", "available_params",
    "create_param", "decode_code", "fit_layout", "decode_images", "encode_images", "load_set", "payload_bytes", "raw_images_per_class",
    "register_param", "save_grid", "save_set", "stored_code",
]
