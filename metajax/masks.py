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
    check_positive_int,
    check_ratio,
    check_shape2d,
    open_hdf5,
    require_file,
)

__all__ = [
    "FAMILIES",
    "SELECTIONS",
    "MaskDistribution",
    "cartesian",
    "center_block",
    "equispaced",
    "family_mask",
    "fastmri_equispaced",
    "fastmri_random",
    "is_line_mask",
    "load_mask",
    "load_masks",
    "poisson_disc",
    "radial",
    "sampling_ratio",
    "split",
    "thin",
    "variable_density",
]

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


def _acceleration(acceleration) -> float:
    if isinstance(acceleration, bool) or not isinstance(acceleration, numbers.Real) or not acceleration >= 1:
        raise ValueError(f"`acceleration` must be a real number ≥ 1; got {acceleration!r}.")
    return float(acceleration)


def _fastmri_center(width: int, acceleration: float, center_fraction: float) -> tuple[np.ndarray, int]:
    """fastMRI's centre block: ``round(W · center_fraction)`` columns starting at ``(W − n + 1) // 2``."""
    if isinstance(center_fraction, bool) or not isinstance(center_fraction, numbers.Real) or \
            not 0.0 < center_fraction < 1.0:
        raise ValueError(f"`center_fraction` must be a real number in (0, 1); got {center_fraction!r}.")
    low = round(width * center_fraction)
    if low < 1 or low >= width / acceleration:
        raise ValueError(f"`center_fraction` = {center_fraction} gives {low} centre columns of {width}; it must give "
                         f"at least one and fewer than W / acceleration = {width / acceleration:.1f}.")
    center = np.zeros(width, bool)
    pad = (width - low + 1) // 2
    center[pad:pad + low] = True
    return center, low


def fastmri_random(key, shape, acceleration: float = 4.0, center_fraction: float = 0.08) -> jax.Array:
    """fastMRI's ``RandomMaskFunc``: the centre block plus each other column with probability p.

    ``n = round(W · center_fraction)`` centre columns start at ``(W − n + 1) // 2``;
    every other column is sampled independently with
    ``p = (W / acceleration − n) / (W − n)``, so the *expected* number of
    columns is ``W / acceleration`` (the achieved acceleration varies per key,
    as in fastMRI). fastMRI's pairs are 4× with 0.08 and 8× with 0.04.
    """
    check_key("key", key)
    h, w = check_shape2d("shape", shape)
    acceleration = _acceleration(acceleration)
    center, low = _fastmri_center(w, acceleration, center_fraction)
    p = (w / acceleration - low) / (w - low)
    columns = jnp.asarray(center) | (jax.random.uniform(key, (w,)) < p)
    return jnp.broadcast_to(columns[None, :], (h, w))


def fastmri_equispaced(key, shape, acceleration: float = 4.0, center_fraction: float = 0.08) -> jax.Array:
    """fastMRI's ``EquispacedMaskFractionFunc``: the centre block plus columns at a constant spacing.

    The spacing ``a' = acceleration · (n − W) / (n · acceleration − W)`` is chosen
    so that centre plus equispaced columns total ``W / acceleration``; the
    columns are ``round(offset + j · a')`` for ``j = 0, 1, …`` below ``W − 1``,
    with ``offset`` uniform in ``{0, …, round(a') − 1}`` (drawn from ``key``).
    (fastMRI's older ``EquiSpacedMaskFunc`` spaces by ``acceleration`` itself and
    so samples more than ``W / acceleration`` columns; use :func:`equispaced` for a
    fixed column count.)
    """
    check_key("key", key)
    h, w = check_shape2d("shape", shape)
    acceleration = _acceleration(acceleration)
    center, low = _fastmri_center(w, acceleration, center_fraction)
    spacing = acceleration * (low - w) / (low * acceleration - w)
    offset = int(jax.random.randint(key, (), 0, max(1, round(spacing))))
    picks = np.round(np.arange(offset, w - 1, spacing)).astype(int)
    columns = center.copy()
    columns[picks] = True
    return jnp.broadcast_to(jnp.asarray(columns)[None, :], (h, w))


@partial(jax.jit, static_argnums=(2,))
def _poisson_sweep(order, radius, reach):
    """Random sequential addition on the grid: visit pixels in ``order``; take one unless an earlier sample ``s``
    lies within ``radius[s]`` of it (sigpy's rejection test), then block its own ellipse. ``reach`` ≥ radius."""
    h, w = radius.shape
    d = jnp.arange(-reach, reach + 1, dtype=radius.dtype)
    dist2 = d[:, None] ** 2 + d[None, :] ** 2

    def body(i, state):
        mask, blocked = state
        p = order[i]
        py, px = p // w, p % w
        take = ~blocked[py + reach, px + reach]
        disc = take & (dist2 < radius[py, px] ** 2)
        window = jax.lax.dynamic_slice(blocked, (py, px), disc.shape)
        blocked = jax.lax.dynamic_update_slice(blocked, window | disc, (py, px))
        return mask.at[py, px].set(take), blocked

    blocked = jnp.zeros((h + 2 * reach, w + 2 * reach), bool)
    mask, _ = jax.lax.fori_loop(0, h * w, body, (jnp.zeros((h, w), bool), blocked))
    return mask


def poisson_disc(key, shape, acceleration: float = 4.0, center_fraction: float = 0.08, min_distance: float = 1.0,
                 crop_corner: bool = True, tolerance: float = 0.01) -> jax.Array:
    """2-D variable-density Poisson-disc mask (sigpy's ``mri.poisson`` / BART's ``poisson -v``).

    Samples keep a minimum distance that grows linearly with the k-space radius,
    ``R(r) = min_distance · (1 + s · r)``, where ``r`` is the distance from the
    calibration block normalised to 1 at the edge of each axis (sigpy's
    definition); no sample lies closer than ``R`` (taken at the earlier sample)
    to another. The slope ``s`` is found by bisection so that the achieved
    acceleration ``H·W / #samples`` is within ``tolerance`` (relative) of
    ``acceleration``. The fully sampled calibration block is
    ``round(center_fraction · H) × round(center_fraction · W)``; with
    ``crop_corner`` the corners ``r ≥ 1`` are never sampled (sigpy's default).
    Samples are placed by random sequential addition in a key-given pixel order
    (a maximal Poisson-disc set; sigpy grows an active list instead, with the
    same rejection test). Not jit-compatible (the bisection is in Python).
    """
    check_key("key", key)
    h, w = check_shape2d("shape", shape)
    acceleration = _acceleration(acceleration)
    min_distance = check_positive("min_distance", min_distance)
    if isinstance(center_fraction, bool) or not isinstance(center_fraction, numbers.Real) or \
            not 0.0 <= center_fraction < 1.0:
        raise ValueError(f"`center_fraction` must be a real number in [0, 1); got {center_fraction!r}.")
    ch, cw = round(center_fraction * h), round(center_fraction * w)
    if ch * cw * acceleration > h * w:
        raise ValueError(f"the {ch}×{cw} calibration block alone exceeds 1/{acceleration} of the {h}×{w} k-space; "
                         "lower `center_fraction` or `acceleration`.")
    y = np.maximum(np.abs(np.arange(h) - h / 2) - ch / 2, 0)
    x = np.maximum(np.abs(np.arange(w) - w / 2) - cw / 2, 0)
    r = np.hypot((y / max(y.max(), 1))[:, None], (x / max(x.max(), 1))[None, :])
    calib = np.zeros((h, w), bool)
    calib[int(h / 2 - ch / 2):int(h / 2 + ch / 2), int(w / 2 - cw / 2):int(w / 2 + cw / 2)] = True
    order = jax.random.permutation(key, h * w)
    lo, hi = 0.0, float(max(h, w))
    for _ in range(60):
        slope = (lo + hi) / 2
        radius = min_distance * (1 + r * slope)
        reach = max(1, math.ceil(float(radius.max())))
        mask = np.array(_poisson_sweep(order, jnp.asarray(radius, jnp.float32), reach))
        if crop_corner:
            mask &= r < 1
        mask |= calib
        achieved = h * w / max(mask.sum(), 1)
        if abs(achieved - acceleration) <= tolerance * acceleration:
            return jnp.asarray(mask)
        lo, hi = (slope, hi) if achieved < acceleration else (lo, slope)
    raise ValueError(f"`acceleration` = {acceleration} is not reachable within {tolerance:.0%} for a {h}×{w} "
                     f"Poisson-disc mask with `min_distance` = {min_distance} (closest: {achieved:.2f}).")


def center_block(shape, center_fraction: float = 0.08, at_least_one: bool = False) -> np.ndarray:
    """Boolean (H, W): the ``round(cf · H) × round(cf · W)`` block around ``[H // 2, W // 2]`` (at least 1 × 1
    with ``at_least_one``)."""
    h, w = shape
    ch, cw = round(center_fraction * h), round(center_fraction * w)
    if at_least_one:
        ch, cw = max(1, ch), max(1, cw)
    block = np.zeros((h, w), bool)
    block[h // 2 - ch // 2:h // 2 - ch // 2 + ch, w // 2 - cw // 2:w // 2 - cw // 2 + cw] = True
    return block


def thin(key, mask, drop: float, center_fraction: float = 0.08) -> jax.Array:
    """``mask`` with a random ``drop`` fraction of its sampled points outside the centre removed.

    The centre is the ``round(center_fraction · H) × round(center_fraction · W)``
    block around ``[H // 2, W // 2]`` (always kept); exactly
    ``round(drop · m)`` of the ``m`` other sampled points are dropped (the
    thinned masks of a k-space split, Yaman et al.'s SSDU).
    """
    check_key("key", key)
    mask = as_binary_mask("mask", mask)
    if isinstance(drop, bool) or not isinstance(drop, numbers.Real) or not 0.0 <= drop < 1.0:
        raise ValueError(f"`drop` must be a real number in [0, 1); got {drop!r}.")
    h, w = mask.shape
    outer = np.asarray(mask) & ~center_block((h, w), center_fraction)
    count = round(drop * int(outer.sum()))
    score = jnp.where(jnp.asarray(outer), jax.random.uniform(key, (h, w)), 2.0)
    dropped = _first_n((score,), count, (h, w))
    return jnp.asarray(mask) & ~dropped


SELECTIONS = ("uniform", "gaussian")
"""How :func:`split` picks the loss set Λ: every candidate equally likely, or weighted towards the centre."""


def split(key, mask, fraction: float = 0.4, *, selection: str = "uniform", center_fraction: float = 0.035,
          lines: bool = False) -> tuple[jax.Array, jax.Array]:
    """``(theta, lam)``: the sampled set Ω of ``mask`` split into a network-input set Θ and a loss set Λ (SSDU).

    Every sampled point outside the ``round(center_fraction · H) × round(center_fraction · W)`` centre
    block (a *candidate*) goes to Λ independently with probability π_i, to Θ otherwise; the centre always
    stays in Θ (the network keeps the image's contrast). So ``theta | lam == mask``, ``theta & lam`` is
    empty, and ``E |Λ| = fraction · m`` for ``m`` candidates:

    - ``selection="uniform"``: π_i = ``fraction``;
    - ``selection="gaussian"``: π_i = min(1, c · exp(−(u_i² + v_i²) / (2 σ²))) with (u, v) the offset from
      the centre in units of (H, W) and σ = 1/4 (SSDU's Gaussian selection, std = size / 4), c bisected so
      that Σ π_i = ``fraction · m`` — the loss set favours low frequencies.

    ``lines=True`` draws whole columns instead of points (for a mask that samples whole columns, so that Θ
    stays a line mask of its family); π then applies per candidate column. Independent draws make the
    expectation of a loss over splits a closed form (tested). jit-compatible (``mask`` may be traced;
    ``fraction``, ``selection``, ``center_fraction`` and ``lines`` static).

    Args:
        key: PRNG key of the split.
        mask: (H, W) boolean sampling mask Ω, centred layout.
        fraction: expected share of the candidates in Λ, in (0, 1) (SSDU: 0.4).
    """
    check_key("key", key)
    mask = as_binary_mask("mask", mask)
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0.0 < fraction < 1.0:
        raise ValueError(f"`fraction` must be a real number in (0, 1); got {fraction!r}.")
    if selection not in SELECTIONS:
        raise ValueError(f"`selection` must be one of {SELECTIONS}; got {selection!r}.")
    h, w = mask.shape
    center = center_block((h, w), center_fraction)
    if lines:  # (W,): the sampled columns outside the central ones
        candidates = jnp.any(mask, axis=0) & ~jnp.asarray(center.any(axis=0))
    else:
        candidates = mask & ~jnp.asarray(center)
    v, u = np.meshgrid((np.arange(h) - h // 2) / h, (np.arange(w) - w // 2) / w, indexing="ij")
    weight = np.exp(-(u**2 + v**2) / (2 * 0.25**2))
    weight = weight[h // 2] if lines else weight
    if selection == "uniform":
        probability = jnp.full(candidates.shape, fraction)
    else:
        target = fraction * jnp.sum(candidates)

        def expected(c):
            return jnp.sum(jnp.where(candidates, jnp.minimum(1.0, c * weight), 0.0))

        def bisect(_, bounds):
            lo, hi = bounds
            mid = 0.5 * (lo + hi)
            return jnp.where(expected(mid) < target, mid, lo), jnp.where(expected(mid) < target, hi, mid)

        lo, hi = jax.lax.fori_loop(0, 60, bisect, (0.0, 1.0 / weight.min()))
        probability = jnp.minimum(1.0, 0.5 * (lo + hi) * weight)
    lam = candidates & (jax.random.uniform(key, candidates.shape) < probability)
    lam = mask & lam[None, :] if lines else lam
    return mask & ~lam, lam


def is_line_mask(mask) -> jax.Array:
    """True when ``mask`` (H, W) samples whole columns or whole rows (1-D Cartesian undersampling); jit-compatible."""
    mask = jnp.asarray(mask, bool)
    return jnp.all(mask == mask[:1]) | jnp.all(mask == mask[:, :1])


FAMILIES = ("pseudo_radial", "radial", "fastmri_random", "fastmri_equispaced", "poisson_disc", "variable_density",
            "thinned_pseudo_radial", "cartesian", "equispaced")
"""Mask families :func:`family_mask` draws; each is parametrised by a sampling ratio (acceleration = 1 / ratio)."""


def family_mask(key, family: str, shape, ratio: float, center_fraction: float | None = None):
    """One mask of ``family`` at sampling ratio ``ratio`` (acceleration ``1 / ratio``), from ``key``.

    - ``pseudo_radial``: the embedded 256² CS-MRI masks (ratios 0.1–0.5; ``key`` unused);
    - ``thinned_pseudo_radial``: those with 40 % of their non-central points dropped (:func:`thin`);
    - ``radial``, ``variable_density``, ``cartesian``, ``equispaced``: the generators above at ``ratio``;
    - ``fastmri_random``, ``fastmri_equispaced``: fastMRI's masks at acceleration ``1 / ratio`` with
      ``center_fraction`` (default: fastMRI's 0.08 at ≤ 4×, 0.04 beyond);
    - ``poisson_disc``: :func:`poisson_disc` at acceleration ``1 / ratio``.
    """
    check_ratio("ratio", ratio)
    if family not in FAMILIES:
        raise ValueError(f"`family` must be one of {FAMILIES}; got {family!r}.")
    if family in ("pseudo_radial", "thinned_pseudo_radial"):
        from metajax.data import pseudo_radial_mask  # data depends on masks, not the reverse: import late

        if tuple(shape) != (256, 256):
            raise ValueError(f"`shape`: the embedded pseudo-radial masks are 256×256; got {tuple(shape)}.")
        base = jnp.asarray(pseudo_radial_mask(ratio))
        return base if family == "pseudo_radial" else thin(key, base, 0.4)
    if family in ("radial", "variable_density", "cartesian"):
        return globals()[family](key, shape, ratio)
    if family == "equispaced":
        return equispaced(shape, ratio)
    acceleration = 1.0 / ratio
    if center_fraction is None:
        center_fraction = 0.08 if acceleration <= 4.0 + 1e-9 else 0.04
    make = {"fastmri_random": fastmri_random, "fastmri_equispaced": fastmri_equispaced,
            "poisson_disc": poisson_disc}[family]
    return make(key, shape, acceleration, center_fraction)


class MaskDistribution:
    """A keyed distribution over masks: tasks ``(family, ratio)``, each a bank of masks drawn once from a key.

    ``MaskDistribution(key, shape, [("fastmri_random", 0.25), ("poisson_disc", 0.125), …], bank=8)`` draws
    ``bank`` masks per task (``fold_in(key, task)`` then ``fold_in(·, j)``; fixed masks such as
    ``pseudo_radial`` have a bank of one repeated). ``masks`` is (tasks, bank, H, W) bool and
    :meth:`sample` picks one per task from a key (jit-compatible), which is how a training loop draws a fresh
    mask of every task each step without generating Poisson-disc masks inside ``jit``.
    """

    def __init__(self, key, shape, tasks, bank: int = 8):
        check_key("key", key)
        self.shape = check_shape2d("shape", shape)
        self.tasks = tuple((str(f), float(r)) for f, r in tasks)
        if not self.tasks:
            raise ValueError("`tasks` must name at least one (family, ratio) pair.")
        bank = check_positive_int("bank", bank)
        fixed = ("pseudo_radial", "equispaced")
        self.masks = jnp.stack([
            jnp.stack([family_mask(jax.random.fold_in(jax.random.fold_in(key, i), 0 if family in fixed else j),
                                   family, self.shape, ratio) for j in range(bank)])
            for i, (family, ratio) in enumerate(self.tasks)])

    def sample(self, key) -> jax.Array:
        """One mask per task, (tasks, H, W), chosen uniformly from each task's bank by ``key``."""
        pick = jax.random.randint(key, (len(self.tasks),), 0, self.masks.shape[1])
        return self.masks[jnp.arange(len(self.tasks)), pick]


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
