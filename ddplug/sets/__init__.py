"""Synthetic sets: the object, its files (own and foreign formats) and its pictures."""

from ddplug.sets.files import IMAGE_ENCODINGS, SET_FILE, decode_images, encode_images, load_set, save_set
from ddplug.sets.grid import save_grid
from ddplug.sets.synthetic import SyntheticSet

__all__ = [
    "IMAGE_ENCODINGS", "SET_FILE", "SyntheticSet", "decode_images", "encode_images", "load_set", "save_grid", "save_set",
]
