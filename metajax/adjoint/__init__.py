"""Unrolled iterations and their adjoints: autodiff through ``lax.scan`` or Lagrangian multipliers."""

from metajax.adjoint.unrolling import (
    MLM,
    Adjoint,
    Autodiff,
    DecidingPhase,
    mlm_unroll,
    multipliers,
    num_phases,
    unroll,
)

__all__ = ["Adjoint", "Autodiff", "MLM", "DecidingPhase", "unroll", "mlm_unroll", "multipliers", "num_phases"]
