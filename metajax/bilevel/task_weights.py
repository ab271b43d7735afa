"""Learned task correlations (Arora & Batra 2025): which training tasks help which validation task.

With N training tasks τ_i and M validation tasks v_j, and α ∈ R^{N×M},

    w_j = softmax(α_{:, j})                               (column softmax: w_ij ≥ 0, Σ_i w_ij = 1)
    θ_j(α) = k optimizer steps on  Σ_i w_ij ℓ_{τ_i}(θ; D^tr_{τ_i})   from θ₀   (one copy per j, vmapped)
    min_α  Σ_j ℓ_{v_j}(θ_j(α); D^val_{v_j})

The inner steps are the phases of :func:`~metajax.adjoint.unroll` (``adjoint=``
Autodiff or MLM), and the upper-level gradient to α goes through them.

For :func:`~metajax.bilevel.meta_gradient`, ``theta`` is a
:class:`TaskWeightsParams` (α and θ₀), ``args = (train_args, val_args)`` with
leading task axes N and M, ``inner_loss(φ, train_args[i])`` is ℓ_{τ_i} and
``outer_loss(φ, val_args[j])`` is ℓ_{v_j}. θ₀ is learned too when
``learn_init=True`` (a MAML-style initialisation); otherwise its gradient is zero.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from metajax._validation import check_positive_int
from metajax.adjoint import Adjoint, Autodiff
from metajax.bilevel.base import BilevelMethod, num_tasks
from metajax.bilevel.inner import adapt, check_optimizer


class TaskWeightsParams(eqx.Module):
    """The upper-level variables: ``alpha`` (N, M) and the inner initialisation ``init`` (a PyTree)."""

    alpha: jax.Array
    init: object

    @property
    def weights(self) -> jax.Array:
        """The (N, M) matrix of column-softmax weights w_ij."""
        return jax.nn.softmax(self.alpha, axis=0)

    @classmethod
    def uniform(cls, init, num_train: int, num_val: int) -> TaskWeightsParams:
        """α = 0 (every validation task weighs all training tasks equally)."""
        dtype = jnp.result_type(*jax.tree.leaves(init))
        return cls(jnp.zeros((check_positive_int("num_train", num_train), check_positive_int("num_val", num_val)),
                             jnp.finfo(dtype).dtype), init)


class TaskWeights(BilevelMethod):
    """Arora & Batra's task-correlation bilevel model (module docstring).

    Args:
        inner_optimizer: optax optimizer of the lower level (the paper: SGD).
        inner_steps: k ≥ 1.
        adjoint: how the inner steps are differentiated (Autodiff or MLM).
        learn_init: also return the gradient with respect to θ₀.

    ``info``: ``inner_loss`` (M,) (weighted training loss at θ₀ for each j),
    ``outer_loss`` (M,) (validation loss of θ_j), ``weights`` (N, M).
    """

    per_task = False
    inner_optimizer: optax.GradientTransformation = eqx.field(static=True)
    inner_steps: int = eqx.field(static=True)
    adjoint: Adjoint = Autodiff()
    learn_init: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        check_optimizer("inner_optimizer", self.inner_optimizer)
        check_positive_int("inner_steps", self.inner_steps)

    def gradient(self, inner_loss, outer_loss, theta, args, key):
        if not isinstance(theta, TaskWeightsParams):
            raise TypeError(f"TaskWeights: `theta` must be a TaskWeightsParams; got {type(theta).__name__}.")
        if not (isinstance(args, tuple) and len(args) == 2):
            raise TypeError("TaskWeights: `args` must be the pair (train_args, val_args).")
        train, val = args
        n, m = num_tasks("args[0] (training tasks)", train), num_tasks("args[1] (validation tasks)", val)
        if theta.alpha.shape != (n, m):
            raise ValueError(f"TaskWeights: `theta.alpha` must have shape (N, M) = ({n}, {m}) for {n} training and "
                             f"{m} validation tasks; got {theta.alpha.shape}.")

        def weighted(phi, inner_args):
            w, tasks = inner_args
            return jnp.dot(w, jax.vmap(inner_loss, in_axes=(None, 0))(phi, tasks))

        def column(init, alpha_j, val_j):
            phi, (first, _) = adapt(weighted, self.inner_optimizer, init, self.inner_steps,
                                    (jax.nn.softmax(alpha_j), train), adjoint=self.adjoint)
            return outer_loss(phi, val_j), first

        def objective(params):
            init = params.init if self.learn_init else jax.lax.stop_gradient(params.init)
            outer, first = jax.vmap(column, in_axes=(None, 1, 0))(init, params.alpha, val)
            return jnp.sum(outer), (outer, first)

        (_, (outer, first)), grad = jax.value_and_grad(objective, has_aux=True)(theta)
        return grad, {"inner_loss": first, "outer_loss": outer, "weights": theta.weights}
