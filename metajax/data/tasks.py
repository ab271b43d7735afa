"""Tasks: a forward operator plus train/val/test images and deterministic batches.

A :class:`Task` is an ``equinox.Module``, so tasks with the same operator type
and split sizes stack into one PyTree (:func:`stack_tasks`) and ``vmap`` over
tasks works: ``jax.vmap(lambda t, k: t.batch(k, "train", 8))(tasks, keys)``.

Measurements are ``y = A x + σ · restrict(n)``: ``n`` is standard Gaussian noise
(for complex measurements, real and imaginary parts each have standard
deviation σ) and ``restrict`` zeroes what the operator never measures, so
unsampled k-space stays exactly zero.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from metajax._validation import check_finite, check_inexact, check_key, check_positive_int, is_concrete
from metajax.operators.base import LinearOperator

SPLITS = ("train", "val", "test")


class Task(eqx.Module):
    """One inverse problem: ``operator`` and ground-truth images per split.

    Attributes:
        operator: the forward model ``A``.
        train, val, test: (N_split, H, W) ground-truth images in the dtype the
            operator expects (complex for MRI).
        noise_std: σ of the measurement noise (a scalar array, so tasks with
            different noise levels stack).
    """

    operator: LinearOperator
    train: jax.Array
    val: jax.Array
    test: jax.Array
    noise_std: jax.Array

    def __init__(self, operator, train, val, test, noise_std=0.0):
        if not isinstance(operator, LinearOperator):
            raise TypeError(f"`operator` must be a metajax LinearOperator; got {type(operator).__name__}.")
        for name, images in (("train", train), ("val", val), ("test", test)):
            check_inexact(name, images)
            if jnp.ndim(images) != 3:
                raise ValueError(f"`{name}` must be an (N, H, W) image stack; got shape {jnp.shape(images)}.")
            check_finite(name, images)
            try:  # the operator's own shape/dtype checks, on abstract values only
                jax.eval_shape(operator, jax.ShapeDtypeStruct(jnp.shape(images), jnp.result_type(images)))
            except (TypeError, ValueError) as error:
                raise type(error)(f"`{name}` images do not fit `operator` ({type(operator).__name__}): "
                                  f"{error}") from None
        if is_concrete(noise_std) and not np.all(np.asarray(noise_std) >= 0):
            raise ValueError(f"`noise_std` must be non-negative; got {noise_std}.")
        self.operator = operator
        self.train, self.val, self.test = (jnp.asarray(a) for a in (train, val, test))
        self.noise_std = jnp.asarray(noise_std, dtype=jnp.finfo(self.train.dtype).dtype)

    def images(self, split: str) -> jax.Array:
        """The (n, H, W) images of ``split`` ("train", "val" or "test")."""
        if split not in SPLITS:
            raise ValueError(f"`split` must be one of {SPLITS}; got {split!r}.")
        return getattr(self, split)

    def measure(self, key, x: jax.Array) -> jax.Array:
        """Noisy measurements ``A x + σ restrict(n)`` of images ``x`` (..., H, W)."""
        check_key("key", key)
        clean = self.operator(x)
        if jnp.iscomplexobj(clean):
            k_re, k_im = jax.random.split(key)
            noise = jax.random.normal(k_re, clean.shape, clean.real.dtype) + 1j * jax.random.normal(
                k_im, clean.shape, clean.real.dtype
            )
        else:
            noise = jax.random.normal(key, clean.shape, clean.dtype)
        return clean + self.noise_std * self.operator.restrict(noise.astype(clean.dtype))

    def batch(self, key, split: str, batch_size: int) -> tuple[jax.Array, jax.Array]:
        """``batch_size`` distinct images of ``split`` and their measurements, from ``key``."""
        images = self.images(split)
        batch_size = check_positive_int("batch_size", batch_size)
        if batch_size > images.shape[0]:
            raise ValueError(
                f"`batch_size`={batch_size} exceeds the {images.shape[0]} images of split {split!r}."
            )
        check_key("key", key)
        k_index, k_noise = jax.random.split(key)
        index = jax.random.choice(k_index, images.shape[0], (batch_size,), replace=False)
        x = images[index]
        return x, self.measure(k_noise, x)


def split_images(images, fractions=(0.7, 0.15, 0.15), key=None):
    """Split an (N, H, W) stack into train/val/test by ``fractions``.

    Contiguous by default (slices 0..69 / 70..84 / 85..99 for N = 100 and the
    default fractions); with ``key`` the order is a random permutation first.
    Every image lands in exactly one split.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"`fractions` must be three non-negative numbers summing to 1; got {fractions}.")
    if jnp.ndim(images) != 3:
        raise ValueError(f"`images` must be an (N, H, W) stack; got shape {jnp.shape(images)} (a single image "
                         "cannot be split; stack several with `images[None]` or `np.stack`).")
    n = len(images)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    if min(n_train, n_val, n - n_train - n_val) < 1:
        raise ValueError(f"`fractions` {fractions} leave an empty split for {n} images.")
    order = np.arange(n) if key is None else np.asarray(jax.random.permutation(key, n))
    images = jnp.asarray(images)
    return (
        images[order[:n_train]],
        images[order[n_train : n_train + n_val]],
        images[order[n_train + n_val :]],
    )


def stack_tasks(tasks) -> Task:
    """Stack tasks with identical structure into one Task with a leading task axis."""
    tasks = list(tasks)
    if not tasks:
        raise ValueError("`tasks` is empty.")
    structures = {jax.tree.structure(t) for t in tasks}
    shapes = {tuple(jnp.shape(leaf) for leaf in jax.tree.leaves(t)) for t in tasks}
    if len(structures) > 1 or len(shapes) > 1:
        raise ValueError(
            "`tasks` must share operator type, mask/image shapes and split sizes to be stacked; "
            f"got {len(structures)} structures and {len(shapes)} leaf-shape patterns."
        )
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *tasks)
