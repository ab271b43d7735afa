import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import normalized_root_mse, peak_signal_noise_ratio, structural_similarity

from metajax import data, masks, metrics
from metajax.operators import SingleCoilMRI


@pytest.fixture(scope="module")
def image_pairs():
    """Real brain slices and zero-filled reconstructions of them (realistic artefacts)."""
    ref = data.default_images(4, 128)
    op = SingleCoilMRI(masks.radial(jax.random.key(0), ref.shape[1:], 0.25))
    recon = np.abs(np.asarray(op.adjoint(op(jnp.asarray(ref, jnp.complex64)))))
    return recon.astype(np.float32), ref


def _skimage(recon, ref, data_range):
    return (
        np.array([peak_signal_noise_ratio(r, x, data_range=d) for x, r, d in zip(recon, ref, data_range)]),
        np.array([structural_similarity(r, x, data_range=d) for x, r, d in zip(recon, ref, data_range)]),
        np.array([normalized_root_mse(r, x) ** 2 for x, r in zip(recon, ref)]),
    )


def test_metrics_match_scikit_image_on_real_images(image_pairs):
    recon, ref = image_pairs
    psnr_ref, ssim_ref, nmse_ref = _skimage(recon.astype(np.float64), ref.astype(np.float64), ref.max(axis=(1, 2)))
    np.testing.assert_allclose(metrics.psnr(recon, ref), psnr_ref, atol=1e-4)
    np.testing.assert_allclose(metrics.ssim(recon, ref), ssim_ref, atol=1e-4)
    np.testing.assert_allclose(metrics.nmse(recon, ref), nmse_ref, atol=1e-4, rtol=1e-4)
    # An explicit data range, the same for every image.
    psnr_2, ssim_2, _ = _skimage(recon, ref, [2.0] * len(ref))
    np.testing.assert_allclose(metrics.psnr(recon, ref, data_range=2.0), psnr_2, atol=1e-4)
    np.testing.assert_allclose(metrics.ssim(recon, ref, data_range=2.0), ssim_2, atol=1e-4)


def test_ssim_of_identical_images_is_one_and_psnr_grows_with_quality(image_pairs):
    recon, ref = image_pairs
    np.testing.assert_allclose(metrics.ssim(ref, ref), 1.0, atol=1e-6)
    better = 0.5 * (recon + ref)
    assert np.all(metrics.psnr(better, ref) - metrics.psnr(recon, ref) > 6.0)  # MSE / 4 → +6.02 dB


def test_metrics_under_jit_and_vmap(image_pairs, x64):
    recon, ref = (jnp.asarray(a, jnp.float64) for a in image_pairs)
    for fn in (metrics.psnr, metrics.ssim, metrics.nmse):
        direct = fn(recon, ref)
        np.testing.assert_allclose(jax.jit(fn)(recon, ref), direct, rtol=1e-12)
        np.testing.assert_allclose(jax.vmap(fn)(recon, ref), direct, rtol=1e-12)
    # float64 agrees with scikit-image to round-off.
    psnr_ref, ssim_ref, _ = _skimage(np.asarray(recon), np.asarray(ref), np.asarray(ref).max(axis=(1, 2)))
    np.testing.assert_allclose(metrics.ssim(recon, ref), ssim_ref, atol=1e-10)
    np.testing.assert_allclose(metrics.psnr(recon, ref), psnr_ref, atol=1e-10)


def test_volume_evaluation_follows_fastmri(image_pairs):
    recon, ref = (a.astype(np.float64) for a in image_pairs)
    result = metrics.evaluate_volume(recon, ref)
    maxval = ref.max()
    assert np.isclose(result["nmse"], np.linalg.norm(ref - recon) ** 2 / np.linalg.norm(ref) ** 2, rtol=1e-4)
    assert np.isclose(result["psnr"], peak_signal_noise_ratio(ref, recon, data_range=maxval), atol=1e-4)
    ssim_ref = np.mean([structural_similarity(r, x, data_range=maxval) for x, r in zip(recon, ref)])
    assert np.isclose(result["ssim"], ssim_ref, atol=1e-4)


def test_metrics_on_shared_chest_images(shared_file):
    volume = data.load_fastmri(shared_file("chest100_singlecoil.h5"), slices=slice(85, 88))
    ref = volume.target
    recon = np.clip(ref + 0.03 * np.random.default_rng(0).standard_normal(ref.shape), 0, None).astype(np.float32)
    psnr_ref, ssim_ref, nmse_ref = _skimage(recon, ref, ref.max(axis=(1, 2)))
    np.testing.assert_allclose(metrics.psnr(recon, ref), psnr_ref, atol=1e-4)
    np.testing.assert_allclose(metrics.ssim(recon, ref), ssim_ref, atol=1e-4)
    np.testing.assert_allclose(metrics.nmse(recon, ref), nmse_ref, atol=1e-4)


def test_bad_metric_inputs_raise():
    a = jnp.ones((8, 8))
    with pytest.raises(ValueError, match=r"`x` and `ref` must have the same shape; got \(8, 8\) and \(8, 9\)"):
        metrics.psnr(a, jnp.ones((8, 9)))
    with pytest.raises(TypeError, match=r"`x` must be a real.*complex64.*jnp.abs"):
        metrics.ssim(a.astype(jnp.complex64), a)
    with pytest.raises(ValueError, match=r"`win_size` must be odd"):
        metrics.ssim(a, a, win_size=9)
    with pytest.raises(ValueError, match=r"`data_range` must be positive"):
        metrics.psnr(a, a, data_range=0.0)
    with pytest.raises(ValueError, match=r"`x` must have layout \(\.\.\., H, W\)"):
        metrics.nmse(jnp.ones(4), jnp.ones(4))
    with pytest.raises(ValueError, match=r"`recon` contains 1 NaN/Inf"):
        metrics.evaluate_volume(jnp.ones((2, 8, 8)).at[0, 0, 0].set(jnp.inf), jnp.ones((2, 8, 8)))
