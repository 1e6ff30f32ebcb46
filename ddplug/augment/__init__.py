"""Augmentations for distillation and evaluation: differentiable siamese augmentation (DSA)."""

from __future__ import annotations

from ddplug.augment.dsa import DSA, FAMILIES, DSAConfig, DSAParams, apply_dsa, sample_dsa_params

__all__ = ["DSA", "FAMILIES", "DSAConfig", "DSAParams", "apply_dsa", "sample_dsa_params"]
