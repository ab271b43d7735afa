"""Simulated multi-coil acquisitions, BART arrays and fastMRI multi-coil files."""

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax import data
from metajax.data import (center_crop, kspace_from_cfl, load_fastmri, random_coil_maps, read_cfl,
                          simulate_multicoil, smooth_phase, write_cfl)
from metajax.operators import ifft2c, rss


def test_simulation_is_the_stated_model():
    image = jnp.asarray(data.chest_images()[90])
    key = jax.random.key(4)
    sim = simulate_multicoil(key, image, 8, snr=25.0, max_phase=2.0)
    again = simulate_multicoil(key, image, 8, snr=25.0, max_phase=2.0)
    np.testing.assert_array_equal(sim.kspace, again.kspace)  # deterministic per key
    assert sim.kspace.shape == sim.maps.shape == (8, 256, 256)
    phase = smooth_phase(jax.random.split(key, 3)[0], image.shape, 2.0)  # the object's phase sub-key
    np.testing.assert_allclose(sim.image, image * jnp.exp(1j * phase), atol=1e-6)
    np.testing.assert_allclose(sim.target, image * rss(sim.maps), rtol=1e-5, atol=1e-7)
    assert float(jnp.max(rss(sim.maps))) == pytest.approx(1.0, abs=1e-6)
    noiseless = simulate_multicoil(key, image, 8, snr=float("inf"), max_phase=2.0)
    noise = np.asarray(sim.kspace - noiseless.kspace)
    foreground = np.asarray(sim.target) > 0.1 * float(sim.target.max())
    sigma = float(np.asarray(sim.target)[foreground].mean()) / 25.0
    assert float(sim.sigma) == pytest.approx(sigma, rel=1e-5)
    assert np.mean(np.abs(noise) ** 2) == pytest.approx(sigma**2, rel=0.02)  # E|n|² = σ²
    assert np.mean(noise.real**2) == pytest.approx(sigma**2 / 2, rel=0.02)  # circular: σ²/2 per component
    assert abs(np.mean(noise[0] * np.conj(noise[1]))) < 0.02 * sigma**2  # uncorrelated coils
    np.testing.assert_allclose(ifft2c(noiseless.kspace), noiseless.maps * noiseless.image, atol=1e-6)


def test_coil_maps_and_phase_vary_with_the_key():
    a = random_coil_maps(jax.random.key(0), (32, 32), 6)
    b = random_coil_maps(jax.random.key(1), (32, 32), 6)
    assert float(jnp.max(jnp.abs(a - b))) > 0.05
    phase = smooth_phase(jax.random.key(0), (64, 64), 1.5)
    assert float(jnp.max(jnp.abs(phase))) == pytest.approx(1.5, rel=1e-6)
    assert float(jnp.max(jnp.abs(jnp.diff(phase, axis=0)))) < 0.3  # smooth: small steps between neighbours
    with pytest.raises(ValueError, match="radius"):
        random_coil_maps(jax.random.key(0), (8, 8), 4, radius=(1.0, 2.0))
    with pytest.raises(ValueError, match="image"):
        simulate_multicoil(jax.random.key(0), jnp.ones((2, 8, 8)), 4)


def test_bart_arrays_round_trip_and_reject_bad_files(tmp_path):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((1, 6, 5, 3)) + 1j * rng.standard_normal((1, 6, 5, 3))).astype(np.complex64)
    write_cfl(tmp_path / "ksp", array)
    assert (tmp_path / "ksp.hdr").read_text().startswith("# Dimensions\n1 6 5 3 1")
    np.testing.assert_array_equal(read_cfl(tmp_path / "ksp.cfl"), array)
    # column-major on disk, as BART writes it
    np.testing.assert_array_equal(np.fromfile(tmp_path / "ksp.cfl", np.complex64), array.ravel(order="F"))
    assert kspace_from_cfl(array).shape == (3, 6, 5)
    np.testing.assert_array_equal(kspace_from_cfl(array)[2], array[0, :, :, 2])
    (tmp_path / "bad.hdr").write_text("# Dimensions\n1 6 5 4\n")
    (tmp_path / "bad.cfl").write_bytes(array.tobytes())
    with pytest.raises(ValueError, match="need"):
        read_cfl(tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match="missing.hdr"):
        read_cfl(tmp_path / "missing")
    with pytest.raises(ValueError, match="two spatial axes"):
        kspace_from_cfl(np.zeros((4, 1, 1, 3), np.complex64))


def test_real_bart_slice_reads(shared_file):
    array = read_cfl(shared_file("real_multicoil/brain8_poisson_ksp.cfl"))
    kspace = kspace_from_cfl(array)
    assert kspace.shape == (8, 180, 230)
    assert np.unravel_index(np.abs(kspace[0]).argmax(), kspace.shape[1:]) == (90, 115)  # centred layout
    assert 0.12 < np.mean(np.abs(kspace).sum(0) > 0) < 0.13


def test_fastmri_multicoil_file_with_mask_and_recon_size(tmp_path):
    rng = np.random.default_rng(1)
    kspace = (rng.standard_normal((3, 4, 20, 12)) + 1j * rng.standard_normal((3, 4, 20, 12))).astype(np.complex64)
    header = ("<ismrmrdHeader xmlns=\"http://www.ismrm.org/ISMRMRD\"><encoding><reconSpace><matrixSize><x>10</x>"
              "<y>8</y><z>1</z></matrixSize></reconSpace></encoding></ismrmrdHeader>")
    path = tmp_path / "mc.h5"
    with h5py.File(path, "w") as f:
        f["kspace"] = kspace
        f["reconstruction_rss"] = rng.random((3, 10, 8)).astype(np.float32)
        f["mask"] = (np.arange(12) % 3 == 0).astype(np.float32)
        f["ismrmrd_header"] = header
    volume = load_fastmri(path, slices=[2, 0])
    assert volume.multicoil and volume.recon_size == (10, 8)
    np.testing.assert_array_equal(volume.kspace, kspace[[2, 0]])
    np.testing.assert_array_equal(volume.mask, np.arange(12) % 3 == 0)
    assert center_crop(np.zeros((3, 20, 12)), volume.recon_size).shape == (3, 10, 8)
    with h5py.File(path, "a") as f:
        del f["mask"]
        f["mask"] = np.arange(12)
    with pytest.raises(ValueError, match="mask"):
        load_fastmri(path)
