"""Simulated multi-coil acquisitions of real magnitude images (for training and tests; always labelled simulation).

:func:`simulate_multicoil` turns a real image ``m`` (H, W) into what a
receive array would measure, fully sampled, in centred k-space:

- **object**: ``x = m · exp(i φ)`` with a smooth random phase φ (:func:`smooth_phase`:
  random low-frequency Fourier coefficients, peak |φ| = ``max_phase``);
- **coils**: ``C`` loops of a birdcage-like array (:func:`random_coil_maps`): a random
  rotation, each coil's angle jittered, a random distance from the centre, so the
  sensitivity ``S_c(r) ∝ exp(i arg(r − r_c)) / |r − r_c|`` falls off and winds in
  phase as a real loop's does (Biot–Savart in the quasi-static 2-D limit); the maps
  are *not* normalised per pixel — ``sqrt(Σ_c |S_c|²)`` varies across the field of
  view (maximum 1), as it does on a scanner;
- **noise**: white complex Gaussian noise of standard deviation σ per coil and
  k-space sample (``E|n|² = σ²``; the FFT is orthonormal, so it is also the noise
  per coil image pixel), ``σ = mean_fg(RSS) / snr`` with ``mean_fg`` the mean of the
  noiseless root-sum-of-squares image over its foreground (pixels above 10 % of its
  maximum). The noise is uncorrelated between coils: the simulation does not model
  the mutual inductance of the array, and real data are usually pre-whitened with a
  noise scan before reconstruction, which brings them to this case.

The reference image is the **noiseless** root-sum-of-squares
``sqrt(Σ_c |S_c x|²) = m · sqrt(Σ_c |S_c|²)``, what fastMRI's
``reconstruction_rss`` is without the noise of the fully sampled scan.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from metajax._validation import check_key, check_positive, is_concrete, check_positive_int, check_real, check_shape2d
from metajax.operators.fourier import fft2c
from metajax.operators.sensitivity import rss


def smooth_phase(key, shape, max_phase: float = jnp.pi, frequencies: int = 3) -> jax.Array:
    """A smooth random phase map (H, W) real: the real part of a random field of the ``(2f + 1)²`` lowest spatial
    frequencies (complex Gaussian coefficients), scaled so that its peak magnitude is ``max_phase``."""
    check_key("key", key)
    h, w = check_shape2d("shape", shape)
    frequencies = check_positive_int("frequencies", frequencies)
    n = 2 * frequencies + 1
    kr, ki = jax.random.split(key)
    coeffs = jax.random.normal(kr, (n, n)) + 1j * jax.random.normal(ki, (n, n))
    fy = jnp.arange(-frequencies, frequencies + 1)
    y = jnp.arange(h) / h
    x = jnp.arange(w) / w
    field = jnp.einsum("ab,ai,bj->ij", coeffs, jnp.exp(2j * jnp.pi * fy[:, None] * y[None, :] / 2),
                       jnp.exp(2j * jnp.pi * fy[:, None] * x[None, :] / 2)).real  # half-period: no wrap-around
    return max_phase * field / jnp.max(jnp.abs(field))


def random_coil_maps(key, shape, num_coils: int, radius: tuple[float, float] = (1.6, 2.4), jitter: float = 0.25,
                     dtype=jnp.complex64) -> jax.Array:
    """Sensitivities (C, H, W) of ``num_coils`` loops around the field of view, with random geometry.

    Coil c sits at angle ``φ_c = φ_0 + 2π c / C + δ_c`` (``φ_0`` uniform, ``δ_c`` uniform in
    ``±jitter · π / C``) and distance ``ρ_c`` uniform in ``radius`` (units of the half field of view;
    above √2, so outside the image) from the centre; ``S_c(r) = exp(i (arg(r − r_c) − φ_c)) / |r − r_c|``,
    scaled so that the root-sum-of-squares ``sqrt(Σ_c |S_c|²)`` has maximum 1.
    """
    check_key("key", key)
    h, w = check_shape2d("shape", shape)
    num_coils = check_positive_int("num_coils", num_coils)
    low, high = (check_positive("radius", float(r)) for r in radius)
    if not 2**0.5 < low <= high:
        raise ValueError(f"`radius` must be (low, high) with sqrt(2) < low ≤ high (coils outside the image); got "
                         f"{tuple(radius)}.")
    if not 0 <= jitter < 1:
        raise ValueError(f"`jitter` must lie in [0, 1); got {jitter}.")
    real = jnp.finfo(dtype).dtype
    k0, k1, k2 = jax.random.split(key, 3)
    phi = (jax.random.uniform(k0, (), real, 0, 2 * jnp.pi) + 2 * jnp.pi * jnp.arange(num_coils, dtype=real) / num_coils
           + jitter * jnp.pi / num_coils * jax.random.uniform(k1, (num_coils,), real, -1, 1))
    rho = jax.random.uniform(k2, (num_coils,), real, low, high)
    y = (jnp.arange(h, dtype=real) - h / 2) / (h / 2)
    x = (jnp.arange(w, dtype=real) - w / 2) / (w / 2)
    dx = x[None, None, :] - (rho * jnp.cos(phi))[:, None, None]
    dy = y[None, :, None] - (rho * jnp.sin(phi))[:, None, None]
    maps = jnp.exp(1j * (jnp.arctan2(dy, dx) - phi[:, None, None])) / jnp.hypot(dx, dy)
    return (maps / jnp.max(rss(maps))).astype(dtype)


class MultiCoilSlice(eqx.Module):
    """One simulated multi-coil slice.

    Attributes:
        kspace: (C, H, W) complex, fully sampled, centred layout, noise included.
        maps: (C, H, W) complex, the true sensitivities.
        image: (H, W) complex, the object ``m · exp(iφ)``.
        target: (H, W) real, the noiseless root-sum-of-squares reference.
        sigma: the noise standard deviation per coil and sample.
    """

    kspace: jax.Array
    maps: jax.Array
    image: jax.Array
    target: jax.Array
    sigma: jax.Array


def simulate_multicoil(key, image, num_coils: int = 8, snr: float = 30.0, max_phase: float = jnp.pi,
                       radius: tuple[float, float] = (1.6, 2.4)) -> MultiCoilSlice:
    """Simulate a fully sampled multi-coil acquisition of the real image ``image`` (H, W) (module docstring).

    Args:
        key: PRNG key (phase, coil geometry and noise each get their own sub-key).
        image: (H, W) real, non-negative magnitude image.
        num_coils: C.
        snr: foreground mean of the noiseless RSS over the noise σ per coil (``inf``: no noise).
        max_phase: peak magnitude of the smooth phase (0: a real object).
        radius: range of the coils' distances from the centre (:func:`random_coil_maps`).
    """
    check_key("key", key)
    check_real("image", image)
    image = jnp.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"`image` must be one real (H, W) image; got shape {image.shape} (map over slices).")
    if is_concrete(snr) and not float(snr) > 0:
        raise ValueError(f"`snr` must be positive (inf: no noise); got {snr!r}.")
    complex_dtype = jnp.result_type(image.dtype, jnp.complex64)
    k_phase, k_coils, k_noise = jax.random.split(key, 3)
    x = image * jnp.exp(1j * smooth_phase(k_phase, image.shape, max_phase)).astype(complex_dtype)
    maps = random_coil_maps(k_coils, image.shape, num_coils, radius, dtype=complex_dtype)
    coil_images = maps * x
    target = rss(coil_images)
    foreground = target > 0.1 * jnp.max(target)
    sigma = jnp.sum(jnp.where(foreground, target, 0)) / jnp.maximum(jnp.sum(foreground), 1) / snr
    kr, ki = jax.random.split(k_noise)
    shape = coil_images.shape
    noise = (jax.random.normal(kr, shape, target.dtype) + 1j * jax.random.normal(ki, shape, target.dtype)) / 2**0.5
    return MultiCoilSlice(kspace=fft2c(coil_images) + sigma * noise, maps=maps, image=x, target=target, sigma=sigma)
