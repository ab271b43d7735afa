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
