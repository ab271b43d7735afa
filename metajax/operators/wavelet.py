"""Orthonormal 2-D discrete wavelet transforms with periodic boundaries (the sparsifying transform of ℓ1-wavelet CS).

One level along an axis of even length N with the decomposition filters
``h`` (low pass) and ``g`` (high pass) of length L:

    a[n] = Σ_k h[k] x[(2n + L/2 − k) mod N],    d[n] = Σ_k g[k] x[(2n + L/2 − k) mod N]

(PyWavelets' ``mode="periodization"``, whose coefficients it reproduces), an orthogonal map ``x ↦ [a; d]`` for the Daubechies
filters; the inverse is its transpose. The 2-D transform applies it along rows
and columns and recurses on the low-low band ``levels`` times; the result is
stored in place, (H, W) → (H, W), with the coarsest band in the top-left corner
(each level's [LL, LH; HL, HH]). Because the transform is orthonormal,
``‖W x‖ = ‖x‖`` and the proximal map of ``λ‖W x‖₁`` is
``W^T soft(W x, λ)``, exactly.

For the Haar filters and sizes divisible by ``2^levels`` the coefficients are
also those of PyWavelets' ``mode="zero"`` (sigpy's ``Wavelet`` linop); for the
longer Daubechies filters sigpy's zero padding adds boundary coefficients (its
transform is then redundant, not orthonormal) where this one wraps around.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from metajax._validation import check_inexact, check_min_ndim, check_positive_int

# Decomposition low-pass filters (PyWavelets' dec_lo); the high pass is g[k] = (−1)^(k+1) h[L − 1 − k].
_LOW_PASS = {
    "haar": [0.7071067811865476, 0.7071067811865476],
    "db2": [-0.12940952255126037, 0.2241438680420134, 0.8365163037378079, 0.48296291314453416],
    "db4": [-0.010597401785069032, 0.0328830116668852, 0.030841381835560764, -0.18703481171909309,
            -0.027983769416859854, 0.6308807679298589, 0.7148465705529157, 0.2303778133088965],
}
WAVELETS = tuple(_LOW_PASS)


def _filters(wavelet: str):
    if wavelet not in _LOW_PASS:
        raise ValueError(f"`wavelet` must be one of {WAVELETS}; got {wavelet!r}.")
    h = np.asarray(_LOW_PASS[wavelet])
    g = np.array([(-1) ** (k + 1) * h[len(h) - 1 - k] for k in range(len(h))])
    return h, g


def max_levels(shape, wavelet: str = "db4") -> int:
    """The most levels for which every band keeps an even size at least the filter length."""
    h, _ = _filters(wavelet)
    levels, sizes = 0, list(shape)
    while all(s % 2 == 0 and s >= len(h) for s in sizes):
        sizes = [s // 2 for s in sizes]
        levels += 1
    return levels


def _analysis_matrix(n: int, wavelet: str) -> np.ndarray:
    """(N, N) orthogonal matrix of one level along an axis of length N: rows 0..N/2−1 low pass, the rest high."""
    h, g = _filters(wavelet)
    m = np.zeros((n, n))
    for i in range(n // 2):
        for k in range(len(h)):
            m[i, (2 * i + len(h) // 2 - k) % n] += h[k]
            m[n // 2 + i, (2 * i + len(h) // 2 - k) % n] += g[k]
    return m


def _check(x, wavelet, levels):
    check_inexact("x", x)
    check_min_ndim("x", x, 2, "(..., H, W)")
    levels = check_positive_int("levels", levels)
    if levels > max_levels(x.shape[-2:], wavelet):
        raise ValueError(f"`levels` = {levels} is too many for an image of {tuple(x.shape[-2:])} with {wavelet}: at "
                         f"most {max_levels(x.shape[-2:], wavelet)} (every band even and ≥ the filter length).")
    return levels


def _apply(x, wavelet, levels, inverse):
    """One orthogonal level matrix per axis on the nested low-low bands: finest first (``W``), or coarsest
    first with the transposes (``W^T``)."""
    levels = _check(x, wavelet, levels)
    out = jnp.asarray(x)
    h, w = out.shape[-2:]
    for level in (reversed(range(levels)) if inverse else range(levels)):
        sh, sw = h >> level, w >> level
        mh = jnp.asarray(_analysis_matrix(sh, wavelet), jnp.finfo(out.dtype).dtype)
        mw = jnp.asarray(_analysis_matrix(sw, wavelet), jnp.finfo(out.dtype).dtype)
        spec = "ji,...jk,kl->...il" if inverse else "ij,...jk,lk->...il"
        out = out.at[..., :sh, :sw].set(jnp.einsum(spec, mh, out[..., :sh, :sw], mw))
    return out


def wavelet_transform(x, wavelet: str = "db4", levels: int = 4) -> jax.Array:
    """``W x``: the orthonormal periodic 2-D DWT (module docstring) of (..., H, W) real or complex images."""
    return _apply(x, wavelet, levels, inverse=False)


def inverse_wavelet_transform(c, wavelet: str = "db4", levels: int = 4) -> jax.Array:
    """``W^T c = W^{-1} c``, the inverse (and adjoint) of :func:`wavelet_transform`."""
    return _apply(c, wavelet, levels, inverse=True)
