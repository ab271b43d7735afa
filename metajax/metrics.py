"""Image-quality metrics in JAX: one value per real (..., H, W) image.

``data_range=None`` means the per-image maximum of the reference (the fastMRI
convention); pass a number (or an array broadcastable to the leading axes) to
fix it. :func:`ssim` reproduces ``skimage.metrics.structural_similarity`` with
its defaults (7×7 uniform window, K1 = 0.01, K2 = 0.03, sample covariance):
scikit-image averages the SSIM map only over windows that lie fully inside the
image, so computing exactly those windows ("valid" box filter) is equivalent.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

from metajax._validation import check_finite, check_min_ndim, check_per_image, check_real, is_concrete

__all__ = [
    "evaluate_volume",
    "mse",
    "nmse",
    "psnr",
    "ssim",
]

_IMAGE_AXES = (-2, -1)


def _check_pair(x, ref) -> None:
    for name, a in (("x", x), ("ref", ref)):
        check_real(name, a)
        check_min_ndim(name, a, 2, "(..., H, W)")
    if jnp.shape(x) != jnp.shape(ref):
        raise ValueError(f"`x` and `ref` must have the same shape; got {jnp.shape(x)} and {jnp.shape(ref)}.")
    check_finite("x", x)
    check_finite("ref", ref)


def _data_range(ref, data_range) -> jax.Array:
    if data_range is None:
        peak = jnp.max(ref, axis=_IMAGE_AXES)
        if is_concrete(peak) and np.any(np.asarray(peak) <= 0):
            raise ValueError("`ref` has an image whose maximum is ≤ 0, so `data_range=None` (the reference's "
                             "maximum) is undefined; pass `data_range` explicitly.")
        return peak
    if isinstance(data_range, (str, bytes)) or not jnp.issubdtype(jnp.result_type(data_range), jnp.number):
        raise TypeError(f"`data_range` must be None or a positive number; got {data_range!r}.")
    check_finite("data_range", data_range)
    if is_concrete(data_range) and np.any(np.asarray(data_range) <= 0):
        raise ValueError(f"`data_range` must be positive; got {data_range}.")
    check_per_image("data_range", data_range, jnp.shape(ref)[:-2], "ref")
    return jnp.asarray(data_range)


def mse(x, ref) -> jax.Array:
    """Mean squared error per image."""
    _check_pair(x, ref)
    return jnp.mean((x - ref) ** 2, axis=_IMAGE_AXES)


def psnr(x, ref, data_range=None) -> jax.Array:
    """Peak signal-to-noise ratio in dB, ``10 log10(R² / MSE)``, per image (``inf`` where ``x == ref``)."""
    error = mse(x, ref)  # checks the pair first
    return 10 * jnp.log10(_data_range(ref, data_range) ** 2 / error)


def nmse(x, ref) -> jax.Array:
    """Normalised MSE ``‖x − ref‖² / ‖ref‖²`` per image (a reference that is all zero is rejected)."""
    _check_pair(x, ref)
    if is_concrete(ref) and np.any(np.asarray(jnp.sum(ref**2, axis=_IMAGE_AXES)) == 0):
        raise ValueError("`ref` has an all-zero image, whose NMSE is undefined.")
    return jnp.sum((x - ref) ** 2, axis=_IMAGE_AXES) / jnp.sum(ref**2, axis=_IMAGE_AXES)


def _box_mean(a: jax.Array, win: int) -> jax.Array:
    window = (1,) * (a.ndim - 2) + (win, win)
    total = jax.lax.reduce_window(a, jnp.zeros((), a.dtype), jax.lax.add, window, (1,) * a.ndim, "VALID")
    return total / win**2


def ssim(x, ref, data_range=None, win_size: int = 7, k1: float = 0.01, k2: float = 0.03) -> jax.Array:
    """Mean structural similarity per image (Wang et al. 2004, scikit-image's defaults).

    With box means ``μ``, sample (co)variances ``v = N/(N−1) (E[ab] − μ_a μ_b)``
    over ``N = win_size²`` pixels and ``C1 = (k1 R)²``, ``C2 = (k2 R)²``:
    ``SSIM = (2 μ_x μ_r + C1)(2 v_xr + C2) / ((μ_x² + μ_r² + C1)(v_x + v_r + C2))``,
    averaged over all windows that fit inside the image.
    """
    _check_pair(x, ref)
    if isinstance(win_size, bool) or not isinstance(win_size, numbers.Integral):
        raise TypeError(f"`win_size` must be an odd integer ≥ 3; got {win_size!r}.")
    if win_size < 2 or win_size % 2 == 0 or win_size > min(jnp.shape(ref)[-2:]):
        raise ValueError(
            f"`win_size` must be odd, ≥ 3 and at most the image size {jnp.shape(ref)[-2:]}; got {win_size}."
        )
    dtype = jnp.result_type(x, ref)
    x, ref = jnp.asarray(x, dtype), jnp.asarray(ref, dtype)
    r = _data_range(ref, data_range)[..., None, None]
    c1, c2 = (k1 * r) ** 2, (k2 * r) ** 2
    cov_norm = win_size**2 / (win_size**2 - 1)
    mu_x, mu_r = _box_mean(x, win_size), _box_mean(ref, win_size)
    v_x = cov_norm * (_box_mean(x * x, win_size) - mu_x**2)
    v_r = cov_norm * (_box_mean(ref * ref, win_size) - mu_r**2)
    v_xr = cov_norm * (_box_mean(x * ref, win_size) - mu_x * mu_r)
    num = (2 * mu_x * mu_r + c1) * (2 * v_xr + c2)
    den = (mu_x**2 + mu_r**2 + c1) * (v_x + v_r + c2)
    return jnp.mean(num / den, axis=_IMAGE_AXES)


def evaluate_volume(recon, target) -> dict[str, float]:
    """fastMRI-style metrics of one (slices, H, W) volume against its target.

    As in fastMRI's ``evaluate.py``: NMSE and PSNR over the whole volume, SSIM
    averaged over slices, with the data range set to the target volume's maximum.
    """
    check_finite("recon", recon)
    check_finite("target", target)
    _check_pair(recon, target)
    if jnp.ndim(target) != 3:
        raise ValueError(f"`target` must be a (slices, H, W) volume; got shape {jnp.shape(target)}.")
    maxval = jnp.max(target)
    return {
        "nmse": float(jnp.sum((recon - target) ** 2) / jnp.sum(target**2)),
        "psnr": float(10 * jnp.log10(maxval**2 / jnp.mean((recon - target) ** 2))),
        "ssim": float(jnp.mean(ssim(recon, target, data_range=maxval))),
    }
