"""k-space sampling masks in centred layout (DC at ``[H // 2, W // 2]``).

Every generator returns a boolean (H, W) array whose number of sampled entries
is fixed in advance: ``round(ratio · H · W)`` points for 2-D masks and
``round(ratio · W)`` columns for line masks. The achieved ratio is therefore
within ``0.5 / (H W)`` (2-D) or half a line (line masks) of the request. Random
generators are pure functions of a ``jax.random`` key (same key, same mask) and
are jit-compatible with ``shape`` and ``ratio`` static.

Line masks sample whole columns (the phase-encoding direction is the last axis,
as in fastMRI); the centred block of ``round(center_fraction · W)`` columns
(``center_fraction = 0.08`` by default) is always sampled.

With one key, ``radial``, ``cartesian`` and ``variable_density`` masks are nested
across ratios (the 20 % mask is a subset of the 40 % one); ``equispaced`` masks are
not. A ratio that rounds to no point or line, or leaves fewer points than the
fully sampled centre, raises.
"""

from __future__ import annotations

import math
import numbers
from functools import partial

import h5py
import jax
import jax.numpy as jnp
import numpy as np

from metajax._validation import (
    as_binary_mask,
    check_key,
    check_positive,
    check_ratio,
    check_shape2d,
    open_hdf5,
    require_file,
)

_GOLDEN_ANGLE = math.pi * (math.sqrt(5.0) - 1.0) / 2.0  # 111.25°: golden-ratio radial spoke increment


def _count(ratio: float, total: int, what: str = "points") -> int:
    n = round(ratio * total)
    if n < 1:
        raise ValueError(f"`ratio` = {ratio} samples round({ratio} · {total}) = 0 {what}; the smallest ratio that "
                         f"samples one is {0.5 / total:.3g}.")
    return n


def _first_n(priority_keys, n: int, shape) -> jax.Array:
    """Boolean mask of the ``n`` entries that sort first by ``priority_keys`` (last key primary)."""
    order = jnp.lexsort(tuple(k.ravel() for k in priority_keys))
    size = math.prod(shape)
    return jnp.zeros(size, bool).at[order[:n]].set(True).reshape(shape)


def _radius(shape) -> jax.Array:
    h, w = shape
    y = jnp.arange(h) - h // 2
    x = jnp.arange(w) - w // 2
    return jnp.hypot(y[:, None], x[None, :])


def radial(key, shape, ratio: float) -> jax.Array:
    """Pseudo-radial mask: rasterised spokes through the k-space centre.

    Spokes are added at golden-angle increments from a random starting angle
    (drawn from ``key``), each rasterised at half-pixel steps. Points are taken
    spoke by spoke, and within a spoke from the centre outwards, until exactly
    ``round(ratio · H · W)`` are sampled, so the last spoke may be partial.
    Points that no spoke reaches (only at ratios near 1) come last, by radius.
    """
    check_key("key", key)
    h, w = check_shape2d("shape", shape)
    return _radial(key, (h, w), _count(check_ratio("ratio", ratio), h * w))


@partial(jax.jit, static_argnums=(1, 2))
def _radial(key, shape, n):
    h, w = shape
    reach = math.ceil(math.hypot(h, w) / 2) + 1
    num_spokes = math.ceil(2 * math.pi * reach)
    t = jnp.arange(-2 * reach, 2 * reach + 1) / 2
    angles = jax.random.uniform(key, (), minval=0.0, maxval=math.pi) + _GOLDEN_ANGLE * jnp.arange(num_spokes)
    rows = jnp.round(h // 2 + t[None, :] * jnp.sin(angles)[:, None]).astype(jnp.int32)
    cols = jnp.round(w // 2 + t[None, :] * jnp.cos(angles)[:, None]).astype(jnp.int32)
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    flat = jnp.where(inside, rows * w + cols, h * w)  # out of range: dropped by the scatter
    spoke = jnp.broadcast_to(jnp.arange(num_spokes)[:, None], flat.shape)
    first_spoke = jnp.full(h * w, num_spokes).at[flat.ravel()].min(spoke.ravel(), mode="drop")
    return _first_n((_radius((h, w)).ravel(), first_spoke), n, (h, w))


def _line_counts(width: int, ratio: float, center_fraction: float) -> tuple[int, int]:
    if isinstance(center_fraction, bool) or not isinstance(center_fraction, numbers.Real):
        raise TypeError(f"`center_fraction` must be a real number in [0, 1); got {center_fraction!r}.")
    if not (0.0 <= center_fraction < 1.0):
        raise ValueError(f"`center_fraction` must lie in [0, 1); got {center_fraction}.")
    lines = _count(ratio, width, "lines")
    center = round(center_fraction * width)
    if center > lines:
        raise ValueError(
            f"`ratio`={ratio} gives {lines} of {width} lines, fewer than the {center} centre lines "
            f"of `center_fraction`={center_fraction}; lower `center_fraction` or raise `ratio`."
        )
    return lines, center


def _center_columns(width: int, center: int) -> np.ndarray:
    start = width // 2 - center // 2
    is_center = np.zeros(width, bool)
    is_center[start : start + center] = True
    return is_center


def cartesian(key, shape, ratio: float, center_fraction: float = 0.08) -> jax.Array:
    """Random Cartesian line mask: the centre block plus uniformly random columns.

    Exactly ``round(ratio · W)`` columns are sampled: the ``round(center_fraction · W)``
    central ones and the rest drawn uniformly without replacement.
    """
    check_key("key", key)
    h, w = check_shape2d("shape", shape)
    lines, center = _line_counts(w, check_ratio("ratio", ratio), center_fraction)
    return _cartesian(key, (h, w), lines, center)


@partial(jax.jit, static_argnums=(1, 2, 3))
def _cartesian(key, shape, lines, center):
    h, w = shape
    is_center = jnp.asarray(_center_columns(w, center))
    columns = _first_n((jax.random.uniform(key, (w,)), ~is_center), lines, (w,))
    return jnp.broadcast_to(columns[None, :], (h, w))


def equispaced(shape, ratio: float, center_fraction: float = 0.08) -> jax.Array:
    """Deterministic equispaced line mask: the centre block plus evenly spread columns.

    The ``m = round(ratio · W) − round(center_fraction · W)`` outer columns are
    spread at a constant (fractional) spacing ``L / m`` over the ``L`` non-centre
    columns, so every gap is ⌊L/m⌋ or ⌈L/m⌉ lines.
    """
    h, w = check_shape2d("shape", shape)
    lines, center = _line_counts(w, check_ratio("ratio", ratio), center_fraction)
    is_center = _center_columns(w, center)
    outer = np.flatnonzero(~is_center)
    m = lines - center
    picks = outer[np.floor((np.arange(m) + 0.5) * len(outer) / m).astype(int)] if m else []
    columns = is_center.copy()
    columns[picks] = True
    return jnp.broadcast_to(jnp.asarray(columns)[None, :], (h, w))


def variable_density(key, shape, ratio: float, sigma: float = 0.3, center_radius: float = 0.04) -> jax.Array:
    """2-D variable-density random mask with a Gaussian density.

    Points are drawn without replacement with probabilities proportional to
    ``exp(−ρ² / (2σ²))``, where ``ρ`` is the distance from the centre normalised
    so the k-space edge along each axis is at ρ = 1 (Gumbel top-k sampling, so
    exactly ``round(ratio · H · W)`` points). All points with ``ρ ≤ center_radius``
    are sampled first (from the centre outwards), so the DC is always sampled.
    """
    check_key("key", key)
    h, w = check_shape2d("shape", shape)
    n = _count(check_ratio("ratio", ratio), h * w)
    sigma = check_positive("sigma", sigma)
    if isinstance(center_radius, bool) or not isinstance(center_radius, numbers.Real) or \
            not 0.0 <= center_radius <= 1.0:
        raise ValueError(f"`center_radius` must be a real number in [0, 1]; got {center_radius!r}.")
    center = int(np.sum(np.hypot((np.arange(h)[:, None] - h // 2) / (h / 2),
                                 (np.arange(w)[None, :] - w // 2) / (w / 2)) <= center_radius))
    if center > n:
        raise ValueError(f"`ratio` = {ratio} samples {n} points, fewer than the {center} of the fully sampled "
                         f"centre (`center_radius` = {center_radius}); lower `center_radius` or raise `ratio`.")
    return _variable_density(key, (h, w), n, float(sigma), float(center_radius))


@partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _variable_density(key, shape, n, sigma, center_radius):
    h, w = shape
    rho = jnp.hypot(
        (jnp.arange(h)[:, None] - h // 2) / (h / 2),
        (jnp.arange(w)[None, :] - w // 2) / (w / 2),
    )
    score = -(rho**2) / (2 * sigma**2) + jax.random.gumbel(key, (h, w))
    in_center = rho <= center_radius
    return _first_n((jnp.where(in_center, rho, -score), ~in_center), n, (h, w))


def sampling_ratio(mask) -> jax.Array:
    """Fraction of sampled entries of a binary (..., H, W) mask, one value per mask."""
    if jnp.ndim(mask) < 2:
        raise ValueError(f"`mask` must be a (..., H, W) array; got shape {jnp.shape(mask)}.")
    mask = as_binary_mask("mask", mask, jnp.ndim(mask))
    return jnp.mean(jnp.asarray(mask, jnp.float32), axis=(-2, -1))


def load_masks(path) -> dict[str, np.ndarray]:
    """Read every 2-D mask of an HDF5 file (layout of ``shared/data/radial_masks.h5``).

    Each top-level dataset holds one (H, W) mask in centred k-space layout with
    values 0/1. Returns ``{name: bool array}`` in file order.
    """
    path = require_file("path", path)
    masks = {}
    f = open_hdf5("path", path)
    with f:
        for name, item in f.items():
            if not isinstance(item, h5py.Dataset):
                raise ValueError(f"`path`: {path.name} holds a group {name!r}; a mask file holds only 2-D "
                                 "datasets at its top level.")
            if item.ndim != 2:
                raise ValueError(f"`path`: dataset {name!r} of {path.name} has shape {item.shape}; every dataset "
                                 "of a mask file must be one 2-D (H, W) mask (none is skipped).")
            masks[name] = np.asarray(as_binary_mask(f"{path.name}:{name}", item[()]))
    if not masks:
        raise ValueError(f"`path`: {str(path)!r} holds no 2-D mask datasets.")
    return masks


def load_mask(path, name: str) -> np.ndarray:
    """Read the mask ``name`` from an HDF5 mask file; see :func:`load_masks`."""
    masks = load_masks(path)
    if name not in masks:
        raise KeyError(f"`name`: no mask {name!r} in {str(path)!r}; available: {sorted(masks)}.")
    return masks[name]
