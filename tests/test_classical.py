import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.restoration import denoise_tv_chambolle

from metajax import data, masks, metrics
from metajax.models import finite_difference, finite_difference_adjoint, operator_norm, tv_reconstruction, zero_filled
from metajax.operators import Denoising, Downsampling, MultiCoilMRI, SingleCoilMRI, birdcage_maps


def _tv_gain_at_20_percent_radial(images):
    x = jnp.asarray(images, jnp.complex64)
    op = SingleCoilMRI(masks.radial(jax.random.key(0), x.shape[1:], 0.2))
    y = op(x)
    zf = jnp.abs(zero_filled(op, y))
    tv = jnp.abs(tv_reconstruction(op, y, weight=2e-3, iterations=200))
    return metrics.psnr(tv, jnp.abs(x)) - metrics.psnr(zf, jnp.abs(x))


def test_tv_beats_zero_filled_by_3db_on_real_brain_images():
    gain = _tv_gain_at_20_percent_radial(data.default_images(3, 128))
    assert np.all(gain >= 3.0), gain


def test_tv_beats_zero_filled_by_3db_on_shared_chest_images(shared_file):
    volume = data.load_fastmri(shared_file("chest100_singlecoil.h5"), slices=[85, 90])
    gain = _tv_gain_at_20_percent_radial(volume.target)
    assert np.all(gain >= 3.0), gain


def test_tv_denoising_matches_scikit_image_chambolle(x64):
    rng = np.random.default_rng(0)
    x = data.default_images(2, 64)[1].astype(np.float64)
    y = x + 0.05 * rng.standard_normal(x.shape)
    # skimage minimises ½‖u − y‖² + weight·TV(u) with the same isotropic, Neumann-boundary TV.
    reference = denoise_tv_chambolle(y, weight=0.05, eps=1e-10, max_num_iter=50_000)
    ours = np.asarray(tv_reconstruction(Denoising(), jnp.asarray(y), 0.05, iterations=2000))
    assert np.abs(ours - reference).max() < 2e-3
    assert np.abs(ours - reference).mean() < 2e-4
    assert np.abs(y - reference).mean() > 2e-2  # the comparison is not trivially satisfied


def test_tv_with_batched_weights_and_multicoil(x64):
    x = jnp.asarray(data.default_images(2, 32), jnp.complex128)
    op = MultiCoilMRI(masks.radial(jax.random.key(0), (32, 32), 0.4), birdcage_maps((32, 32), 4, dtype=jnp.complex128))
    y = op(x)
    both = tv_reconstruction(op, y, jnp.array([1e-3, 0.0]), iterations=100)
    np.testing.assert_allclose(both[0], tv_reconstruction(op, y[0], 1e-3, iterations=100), atol=1e-12)
    # Without regularisation PDHG solves least squares: the data residual falls far below zero-filling's.
    least_squares = tv_reconstruction(op, y[1], 0.0, iterations=300)
    residual = jnp.linalg.norm(op(least_squares) - y[1]) / jnp.linalg.norm(op(zero_filled(op, y[1])) - y[1])
    assert residual < 0.1


def test_tv_without_regularisation_stays_finite_on_flat_regions():
    """λ = 0 on an image with exactly flat regions: the dual projection must not form 0/0."""
    y = jnp.zeros((8, 8)).at[2:5, 2:5].set(1.0)
    out = tv_reconstruction(Denoising(), y, 0.0, iterations=10)
    np.testing.assert_allclose(out, y, atol=1e-6)  # denoising without TV is the identity


def test_finite_difference_adjoint_and_operator_norm(x64):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((5, 7)) + 1j * rng.standard_normal((5, 7)))
    q = jnp.asarray(rng.standard_normal((2, 5, 7)) + 1j * rng.standard_normal((2, 5, 7)))
    lhs, rhs = jnp.vdot(finite_difference(x), q), jnp.vdot(x, finite_difference_adjoint(q))
    assert abs(lhs - rhs) / abs(lhs) < 1e-12
    np.testing.assert_allclose(finite_difference(jnp.ones((4, 4))), 0)
    assert np.isclose(operator_norm(SingleCoilMRI(jnp.ones((8, 8))), jnp.ones((8, 8), jnp.complex128)), 1.0)
    assert np.isclose(operator_norm(Downsampling(2), jnp.ones((8, 8))), 0.5)


def test_tv_bad_input():
    op = SingleCoilMRI(jnp.ones((8, 8)))
    y = jnp.ones((8, 8), jnp.complex64)
    with pytest.raises(ValueError, match=r"`weight` must be non-negative"):
        tv_reconstruction(op, y, -1.0)
    with pytest.raises(ValueError, match=r"`iterations` must be a positive integer"):
        tv_reconstruction(op, y, 1e-3, iterations=0)
    with pytest.raises(ValueError, match=r"`y` contains 1 NaN/Inf"):
        tv_reconstruction(op, y.at[0, 0].set(jnp.nan), 1e-3)
