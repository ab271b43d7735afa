"""Classical multi-coil baselines: SENSE (CG) and ℓ1-wavelet (FISTA) against NumPy, PyWavelets and sigpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax import data, masks
from metajax.data import simulate_multicoil
from metajax.models import l1_wavelet_reconstruction, sense_reconstruction, tv_reconstruction
from metajax.operators import WAVELETS, MultiCoilMRI, inverse_wavelet_transform, rss, wavelet_transform
from metajax.operators.wavelet import max_levels


def _problem(size=64, coils=6, acceleration=4.0):
    image = jnp.asarray(np.asarray(data.chest_images()[90][:: 256 // size, :: 256 // size], np.float64))
    sim = simulate_multicoil(jax.random.key(5), image, coils, 40.0)
    maps = sim.maps / rss(sim.maps)
    mask = masks.fastmri_equispaced(jax.random.key(0), (size, size), acceleration, 0.08 if acceleration <= 4 else 0.04)
    return MultiCoilMRI(mask, maps), jnp.where(mask, sim.kspace, 0), np.asarray(maps), np.asarray(mask)


def _dense(operator, shape):
    """A as a dense matrix acting on the flattened complex image."""
    eye = np.eye(shape[0] * shape[1]).reshape(-1, *shape).astype(complex)
    return np.stack([np.asarray(operator(jnp.asarray(e))).ravel() for e in eye], axis=1)


def test_sense_is_the_regularised_least_squares_solution(x64):
    operator, y, _, _ = _problem(16, 3)
    a = _dense(operator, (16, 16))
    lam = 0.05
    exact = np.linalg.solve(a.conj().T @ a + lam * np.eye(a.shape[1]), a.conj().T @ np.asarray(y).ravel())
    np.testing.assert_allclose(np.asarray(sense_reconstruction(operator, y, lam, 200)).ravel(), exact, atol=1e-9)


@pytest.mark.slow
def test_sense_and_l1_wavelet_equal_sigpy(x64):
    app = pytest.importorskip("sigpy.mri").app
    operator, y, maps, mask = _problem()
    for lam in (0.0, 0.01):
        mine = np.asarray(sense_reconstruction(operator, y, lam, 30))
        ref = app.SenseRecon(np.asarray(y), maps, lamda=lam, weights=mask.astype(float), max_iter=30,
                             show_pbar=False).run()
        assert np.linalg.norm(mine - ref) / np.linalg.norm(ref) < 1e-3
    mine = np.asarray(l1_wavelet_reconstruction(operator, y, 1e-3, 300, "haar", max_levels((64, 64), "haar")))
    ref = app.L1WaveletRecon(np.asarray(y), maps, 1e-3, weights=mask.astype(float), wave_name="haar", max_iter=300,
                             show_pbar=False).run()
    assert np.linalg.norm(mine - ref) / np.linalg.norm(ref) < 1e-3


@pytest.mark.parametrize("wavelet", WAVELETS)
def test_wavelets_are_orthonormal_and_match_pywavelets(x64, wavelet):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 48)) + 1j * rng.standard_normal((32, 48))
    c = np.asarray(wavelet_transform(jnp.asarray(x), wavelet, 2))
    assert np.linalg.norm(c) == pytest.approx(np.linalg.norm(x), rel=1e-12)
    np.testing.assert_allclose(inverse_wavelet_transform(jnp.asarray(c), wavelet, 2), x, atol=1e-12)
    pywt = pytest.importorskip("pywt")
    ref = pywt.coeffs_to_array(pywt.wavedec2(x.real, wavelet, mode="periodization", level=2))[0]
    np.testing.assert_allclose(np.sort(np.abs(c.real).ravel()), np.sort(np.abs(ref).ravel()), atol=1e-12)
    with pytest.raises(ValueError, match="levels"):
        wavelet_transform(jnp.asarray(x), wavelet, 9)


@pytest.mark.slow
def test_l1_wavelet_decreases_its_objective_and_converges(x64):
    operator, y, _, _ = _problem(32, 4)

    def objective(x, lam):
        return 0.5 * float(jnp.sum(jnp.abs(operator(x) - y) ** 2)) + lam * float(
            jnp.sum(jnp.abs(wavelet_transform(x, "db4", 2))))

    values = [objective(l1_wavelet_reconstruction(operator, y, 1e-3, n, "db4", 2), 1e-3) for n in (5, 20, 80)]
    assert values[0] > values[1] > values[2]
    # the minimiser's optimality: x = prox(x − t ∇f(x)) holds at the converged point to the precision reached
    x = l1_wavelet_reconstruction(operator, y, 1e-3, 2000, "db4", 2)
    again = l1_wavelet_reconstruction(operator, y, 1e-3, 2100, "db4", 2)
    assert float(jnp.linalg.norm(again - x) / jnp.linalg.norm(x)) < 1e-3
    assert objective(x, 1e-3) <= values[2]


def test_baselines_batch_over_slices_and_reject_bad_weights():
    operator, y, _, _ = _problem(32, 4)
    y = jnp.asarray(y, jnp.complex64)
    stacked = jnp.stack([y, 2 * y])
    for fn in (lambda v, w: sense_reconstruction(operator, v, w, 10),
               lambda v, w: l1_wavelet_reconstruction(operator, v, w, 10, "haar", 2),
               lambda v, w: tv_reconstruction(operator, v, w, 10)):
        batch = fn(stacked, 0.0)
        np.testing.assert_allclose(batch[1], 2 * batch[0], rtol=1e-4, atol=1e-5)  # λ = 0: linear in y
        with pytest.raises(ValueError, match="weight"):
            fn(y, -1.0)


def test_lambda_tuning_widens_the_grid_past_an_edge():
    """A baseline whose validation PSNR peaks at λ = 0.1, tuned on the grid [1e-3, 1e-2]: the grid grows ×10 past
    the winning edge until the best λ is inside it, and the record lists every λ tried."""
    from metajax.engine import multicoil

    rng = np.random.default_rng(0)
    kspace = (rng.standard_normal((2, 2, 8, 8)) + 1j * rng.standard_normal((2, 2, 8, 8))).astype(np.complex64)
    maps = np.ones((2, 2, 8, 8), np.complex64) / np.sqrt(2)
    rss_images = (rng.random((2, 8, 8)) + 0.5).astype(np.float32)
    data_ = multicoil.SimulatedSet(kspace, maps, rss_images.astype(np.complex64), rss_images, np.zeros(2, int),
                                   np.full(2, 2))
    def solve(op, y, lam):  # the reference, degraded by the log-distance of λ from 0.1
        scale = float(jnp.max(jnp.abs(op.adjoint(jnp.asarray(kspace[0])))))  # solve_set's scale of acquisition 0
        return jnp.asarray(rss_images[0] / scale) * (1 + 0.1 * abs(np.log10(lam) + 1))

    lam, record = multicoil.tune(solve, [1e-3, 1e-2], multicoil.first_images(data_, 1), [jnp.ones((8, 8), bool)])
    assert lam == pytest.approx(0.1) and not record["at_edge"]
    assert record["grid"] == pytest.approx([1e-3, 1e-2, 1e-1, 1.0])
    assert np.argmax(record["scores"]) == 2
