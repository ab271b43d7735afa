"""Reconstruction models: classical baselines (learned unrolled networks come later)."""

from metajax.models.classical import (
    finite_difference,
    finite_difference_adjoint,
    operator_norm,
    tv_reconstruction,
    zero_filled,
)

__all__ = ["finite_difference", "finite_difference_adjoint", "operator_norm", "tv_reconstruction", "zero_filled"]
