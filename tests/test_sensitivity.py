"""ESPIRiT and ACS coil sensitivities: against sigpy's EspiritCalib, a literal NumPy ESPIRiT, and the true maps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax import data, masks
from metajax.data import simulate_multicoil
from metajax.operators import acs_maps, calibration_shape, espirit, espirit_kernel, fft2c, ifft2c, rss


def _simulated(size=64, coils=6, snr=float("inf"), key=0):
    image = jnp.asarray(np.asarray(data.chest_images()[90][:: 256 // size, :: 256 // size], np.float64))
    return simulate_multicoil(jax.random.key(key), image, coils, snr)


def _projection_error(maps, reference, support):
    """Mean over ``support`` of ‖m − r ⟨r, m⟩‖ per pixel: equal up to a per-pixel phase gives 0."""
    inner = np.sum(np.conj(reference) * maps, axis=0)
    return float(np.mean(np.sqrt(np.sum(np.abs(maps - reference * inner) ** 2, axis=0))[support]))


def _literal_espirit(kspace, calib, kernel, threshold, crop, iters):
    """ESPIRiT as the paper states it: one zero-padded inverse FFT per kernel, a dense C × C matrix per pixel."""
    c, h, w = kspace.shape
    top, left = h // 2 - calib[0] // 2, w // 2 - calib[1] // 2
    block = kspace[:, top:top + calib[0], left:left + calib[1]]
    rows = [block[:, i:i + kernel, j:j + kernel].ravel() for i in range(calib[0] - kernel + 1)
            for j in range(calib[1] - kernel + 1)]
    _, s, vh = np.linalg.svd(np.array(rows), full_matrices=False)
    g = np.zeros((h, w, c, c), complex)
    for v in vh[s > threshold * s[0]]:
        padded = np.zeros((c, h, w), complex)
        padded[:, h // 2 - kernel // 2:h // 2 - kernel // 2 + kernel,
               w // 2 - kernel // 2:w // 2 - kernel // 2 + kernel] = v.reshape(c, kernel, kernel)
        img = np.asarray(ifft2c(jnp.asarray(padded)))
        g += np.einsum("chw,dhw->hwcd", img, np.conj(img))
    g *= h * w / kernel**2
    vec = np.ones((h, w, c), complex)
    for _ in range(iters):
        vec = np.einsum("hwcd,hwd->hwc", g, vec)
        eig = np.linalg.norm(vec, axis=-1)
        vec /= eig[..., None]
    vec *= np.conj(vec[..., :1]) / np.abs(vec[..., :1])
    return np.moveaxis(vec * (eig > crop)[..., None], -1, 0)


def test_espirit_equals_the_literal_algorithm(x64):
    sim = _simulated(48, 4, snr=50.0)
    mine = np.asarray(espirit(sim.kspace, (20, 20), kernel=5, threshold=0.02, crop=0.9, power_iters=40))
    literal = _literal_espirit(np.asarray(sim.kspace), (20, 20), 5, 0.02, 0.9, 40)
    np.testing.assert_allclose(mine, literal, atol=1e-10)


def test_espirit_matches_sigpy_and_the_true_maps(x64):
    sp_app = pytest.importorskip("sigpy.mri").app
    sim = _simulated(64, 8)
    kspace = np.asarray(sim.kspace)
    mine = np.asarray(espirit(sim.kspace))
    reference = np.asarray(sp_app.EspiritCalib(kspace, show_pbar=False).run())
    support = np.abs(reference).sum(0) > 0
    assert np.array_equal(support, np.abs(mine).sum(0) > 0)
    relative = np.linalg.norm(mine - reference * np.exp(1j * np.angle(np.sum(np.conj(reference) * mine, 0)))) / \
        np.linalg.norm(reference)
    assert relative <= 1e-3, relative
    true = np.asarray(sim.maps / rss(sim.maps))
    foreground = np.asarray(sim.target) > 0.1 * float(sim.target.max())
    assert _projection_error(mine, true, foreground) < 0.02


@pytest.mark.parametrize("acceleration, center", [(4.0, 0.08), (8.0, 0.04)])
def test_espirit_from_fastmri_line_masks_recovers_the_true_maps(acceleration, center):
    sim = _simulated(256, 8, snr=30.0, key=1)
    mask = masks.fastmri_equispaced(jax.random.key(0), (256, 256), acceleration, center)
    calib = calibration_shape(mask)
    assert calib[0] == 24 and calib[1] >= round(256 * center)
    maps = np.asarray(espirit(jnp.where(mask, sim.kspace, 0), calib, kernel=espirit_kernel(calib)))
    true = np.asarray(sim.maps / rss(sim.maps))
    foreground = np.asarray(sim.target) > 0.1 * float(sim.target.max())
    assert _projection_error(maps, true, foreground) < 0.015
    unit = np.abs(np.asarray(rss(jnp.asarray(maps))) - 1) < 1e-4  # unit norm inside the support, zero outside
    assert unit[foreground].mean() > 0.995
    low = np.asarray(acs_maps(jnp.where(mask, sim.kspace, 0), calib))
    assert _projection_error(low, true, foreground) < 0.1  # coarser, and biased by the object


def test_espirit_batches_over_slices():
    sims = [_simulated(32, 4, snr=40.0, key=k) for k in range(3)]
    stacked = jnp.stack([jnp.asarray(s.kspace, jnp.complex64) for s in sims])
    batched = espirit(stacked, (16, 16), kernel=4)
    for i, s in enumerate(sims):
        np.testing.assert_allclose(batched[i], espirit(jnp.asarray(s.kspace, jnp.complex64), (16, 16), kernel=4),
                                   atol=1e-5)


def test_calibration_shape_and_its_errors():
    mask = np.zeros((40, 30), bool)
    mask[:, 12:19] = True  # 7 centre columns (centre 15)
    assert calibration_shape(mask) == (24, 7)
    assert calibration_shape(mask, limit=(10, 5)) == (10, 5)
    with pytest.raises(ValueError, match="does not sample the k-space centre"):
        calibration_shape(np.zeros((8, 8), bool))
    thin = np.zeros((16, 16), bool)
    thin[:, 8] = True
    with pytest.raises(ValueError, match="only 16 × 1"):
        calibration_shape(thin)
    cross = np.zeros((40, 40), bool)  # a 10 × 10 centre block with one longer row through it (Poisson-disc-like)
    cross[15:25, 15:25] = True
    cross[20, 8:32] = True
    assert calibration_shape(cross) == (10, 10)
    assert espirit_kernel((24, 20)) == 6 and espirit_kernel((24, 10)) == 4


def test_espirit_rejects_bad_arguments():
    k = jnp.zeros((4, 32, 32), jnp.complex64)
    with pytest.raises(ValueError, match="calib_shape"):
        espirit(k, (40, 40))
    with pytest.raises(ValueError, match="threshold"):
        espirit(k, (16, 16), threshold=1.5)
    with pytest.raises(TypeError, match="kspace"):
        espirit(jnp.zeros((4, 32, 32)))
    with pytest.raises(ValueError, match="kspace"):
        espirit(jnp.zeros((32, 32), jnp.complex64))


def test_fully_sampled_sense_combination_is_the_rss_image():
    sim = _simulated(64, 8, key=3)
    maps = espirit(sim.kspace, (24, 24))
    combined = jnp.abs(jnp.sum(jnp.conj(maps) * ifft2c(sim.kspace), axis=0))
    foreground = sim.target > 0.1 * sim.target.max()
    np.testing.assert_allclose(combined[foreground], sim.target[foreground], rtol=5e-3)
    np.testing.assert_allclose(fft2c(ifft2c(sim.kspace)), sim.kspace, atol=1e-5)
