"""The interface every metajax forward operator implements."""

from __future__ import annotations

import abc

import equinox as eqx
import jax


class LinearOperator(eqx.Module):
    """A linear forward operator ``A`` as a PyTree.

    Subclasses implement ``__call__`` (``y = A x``) and ``adjoint`` (``A^H y``);
    ``normal`` (``A^H A x``) and ``restrict`` (projection of a measurement-space
    array onto the entries that are actually measured) have generic defaults.
    All methods are pure and work under ``jit``, ``vmap`` and ``grad``.
    """

    @abc.abstractmethod
    def __call__(self, x: jax.Array) -> jax.Array:
        """Forward operator ``A x``."""

    @abc.abstractmethod
    def adjoint(self, y: jax.Array) -> jax.Array:
        """Adjoint operator ``A^H y``."""

    def normal(self, x: jax.Array) -> jax.Array:
        """Normal operator ``A^H A x``."""
        return self.adjoint(self(x))

    def restrict(self, y: jax.Array) -> jax.Array:
        """Zero the measurement-space entries that ``A`` never produces (identity by default).

        Noise is added as ``A x + restrict(n)`` so unsampled k-space stays exactly zero.
        """
        return y


class Scaled(LinearOperator):
    """``(s A) x = s · A x`` for a real ``scale`` s: rescales an operator's norm without changing what it measures
    (e.g. ``Scaled(Downsampling(2), 2)`` has ‖A‖ = 1 and ``A^H y`` = nearest-neighbour upsampling)."""

    operator: LinearOperator
    scale: float = eqx.field(static=True)

    def __init__(self, operator: LinearOperator, scale: float):
        if not isinstance(operator, LinearOperator):
            raise TypeError(f"`operator` must be a metajax LinearOperator; got {type(operator).__name__}.")
        if not (isinstance(scale, (int, float)) and float(scale) > 0):
            raise ValueError(f"`scale` must be a positive real number; got {scale!r}.")
        self.operator, self.scale = operator, float(scale)

    def __call__(self, x):
        return self.scale * self.operator(x)

    def adjoint(self, y):
        return self.scale * self.operator.adjoint(y)

    def restrict(self, y):
        return self.operator.restrict(y)
