import h5py
import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from metajax import data, masks
from metajax.operators import Denoising, SingleCoilMRI, fft2c, ifft2c

HEADER = """<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding>
<encodedSpace><matrixSize><x>{ex}</x><y>{ey}</y><z>1</z></matrixSize></encodedSpace>
<reconSpace><matrixSize><x>{rx}</x><y>{ry}</y><z>1</z></matrixSize></reconSpace>
</encoding></ismrmrdHeader>"""


# ------------------------------------------------------------ default data
def test_default_images_are_real_brain_slices_normalised_per_slice():
    images = data.default_images(6, 128)
    assert images.shape == (6, 128, 128) and images.dtype == np.float32
    np.testing.assert_allclose(images.max(axis=(1, 2)), 1.0)
    assert images.min() >= 0
    brain = (images > 0.1).mean(axis=(1, 2))
    assert np.all(brain > 0.05) and np.all(brain < 0.8), "each slice shows brain on a background"
    assert len({im.tobytes() for im in images}) == 6
    np.testing.assert_array_equal(data.default_images(6, 128), images)  # deterministic
    # Brain MR: grey/white matter contrast gives many distinct intensity levels, not a binary phantom.
    assert len(np.unique(np.round(images[3] * 100))) > 50


def test_default_images_are_independent_copies():
    first = data.default_images(2, 32)
    first[:] = 0
    assert data.default_images(2, 32).max() == 1.0


# ------------------------------------------------------------ fastMRI HDF5
def _write_fastmri(path, kspace, target_key, target, header=True):
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace)
        if target_key:
            f.create_dataset(target_key, data=target)
        if header:
            f.create_dataset("ismrmrd_header", data=HEADER.format(ex=kspace.shape[-2], ey=kspace.shape[-1], rx=6, ry=4))
        f.attrs["acquisition"] = "CORPD_FBK"
        f.attrs["max"] = float(target.max()) if target is not None else 0.0


def test_fastmri_single_coil_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    target = rng.random((3, 8, 6)).astype(np.float32)
    kspace = np.asarray(fft2c(jnp.asarray(target, jnp.complex64)))
    path = tmp_path / "file1000001.h5"
    _write_fastmri(path, kspace, "reconstruction_esc", target)
    vol = data.load_fastmri(path)
    assert not vol.multicoil and vol.recon_size == (6, 4)
    np.testing.assert_array_equal(vol.kspace, kspace)
    np.testing.assert_array_equal(vol.target, target)
    assert vol.attrs["acquisition"] == "CORPD_FBK" and np.isclose(vol.attrs["max"], target.max())
    one = data.load_fastmri(path, slices=1)
    assert one.kspace.shape == (1, 8, 6) and one.target.shape == (1, 8, 6)
    np.testing.assert_array_equal(one.target[0], target[1])
    assert data.load_fastmri(path, target_key=None).target is None


def test_fastmri_multi_coil_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    kspace = (rng.standard_normal((2, 4, 8, 6)) + 1j * rng.standard_normal((2, 4, 8, 6))).astype(np.complex64)
    rss = np.sqrt((np.abs(np.asarray(ifft2c(jnp.asarray(kspace)))) ** 2).sum(axis=1)).astype(np.float32)
    path = tmp_path / "multicoil.h5"
    _write_fastmri(path, kspace, "reconstruction_rss", rss, header=False)
    vol = data.load_fastmri(path)
    assert vol.multicoil and vol.recon_size is None
    np.testing.assert_array_equal(vol.kspace, kspace)
    np.testing.assert_array_equal(vol.target, rss)


def test_fastmri_errors(tmp_path):
    target = np.ones((2, 8, 6), np.float32)
    kspace = np.ones((2, 8, 6), np.complex64)
    path = tmp_path / "no_target.h5"
    _write_fastmri(path, kspace, None, target)
    missing = r"no dataset 'reconstruction_esc'; available keys: \['ismrmrd_header', 'kspace'\]"
    with pytest.raises(KeyError, match=missing):
        data.load_fastmri(path)
    bad = tmp_path / "nan.h5"
    corrupted = kspace.copy()
    corrupted[1, 2, 3] = np.nan
    _write_fastmri(bad, corrupted, "reconstruction_esc", target)
    with pytest.raises(ValueError, match=r"`kspace in nan.h5` contains 1 NaN/Inf"):
        data.load_fastmri(bad)
    real = tmp_path / "real.h5"
    _write_fastmri(real, np.ones((2, 8, 6), np.float32), "reconstruction_esc", target)
    with pytest.raises(ValueError, match=r"kspace in real.h5 must be complex"):
        data.load_fastmri(real)
    mismatch = tmp_path / "mismatch.h5"
    _write_fastmri(mismatch, kspace, "reconstruction_esc", np.ones((3, 8, 6), np.float32))
    with pytest.raises(ValueError, match=r"reconstruction_esc in mismatch.h5 has shape \(3, 8, 6\); expected \(2, h, w\)"):
        data.load_fastmri(mismatch)
    with pytest.raises(FileNotFoundError, match=r"`path`: file .*missing.h5' does not exist"):
        data.load_fastmri(tmp_path / "missing.h5")


def test_shared_chest_file(shared_file):
    vol = data.load_fastmri(shared_file("chest100_singlecoil.h5"), slices=[0, 50, 99])
    assert vol.kspace.shape == (3, 256, 256) and vol.target.shape == (3, 256, 256)
    assert vol.recon_size == (256, 256)
    # The k-space is the centred orthonormal FFT of the real image: the inverse gives it back.
    image = np.asarray(ifft2c(jnp.asarray(vol.kspace)))
    np.testing.assert_allclose(image.real, vol.target, atol=1e-5)
    np.testing.assert_allclose(image.imag, 0, atol=1e-5)
    assert 0 < vol.target.max() <= 1


# ------------------------------------------------------------ NIfTI and image folders
def test_nifti_round_trip(tmp_path):
    volume = np.random.default_rng(2).random((10, 12, 5)).astype(np.float32)
    path = tmp_path / "brats_t1.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.eye(4)), path)
    axial = data.load_nifti(path)
    np.testing.assert_array_equal(axial, np.moveaxis(volume, 2, 0))
    np.testing.assert_array_equal(data.load_nifti(path, axis=0, slices=slice(2, 4)), volume[2:4])
    np.testing.assert_array_equal(data.load_nifti(path, slices=3), volume[None, :, :, 3])
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 2), np.float32), np.eye(4)), tmp_path / "4d.nii")
    with pytest.raises(ValueError, match=r"4d.nii holds a 4-D volume"):
        data.load_nifti(tmp_path / "4d.nii")
    with pytest.raises(ValueError, match=r"`axis` must be 0, 1 or 2"):
        data.load_nifti(path, axis=3)


def test_image_folder_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    png = rng.integers(0, 256, (9, 7), dtype=np.uint8)
    tif16 = rng.integers(0, 65536, (9, 7), dtype=np.uint16)
    tif_float = rng.random((9, 7)).astype(np.float32)
    for name, image in (("b.tif", tif16), ("c.tiff", tif_float)):  # one bit depth per folder, kept as stored
        (tmp_path / name[0]).mkdir()
        Image.fromarray(image).save(tmp_path / name[0] / name)
        Image.fromarray(image[::-1]).save(tmp_path / name[0] / ("z" + name))
        np.testing.assert_array_equal(data.load_image_folder(tmp_path / name[0]),
                                      np.stack([image, image[::-1]]).astype(np.float32))
    Image.fromarray(png).save(tmp_path / "a.png")
    Image.fromarray(tif16).save(tmp_path / "b.tif")
    with pytest.raises(ValueError, match=r"different pixel formats \(L e.g. a.png, I;16 e.g. b.tif\)"):
        data.load_image_folder(tmp_path)  # 8- and 16-bit intensities are not comparable: never stacked silently
    (tmp_path / "b.tif").unlink()
    Image.fromarray(png[::-1]).save(tmp_path / "b.png")
    (tmp_path / "notes.txt").write_text("ignored")
    stack = data.load_image_folder(tmp_path)
    assert stack.dtype == np.float32
    np.testing.assert_array_equal(stack, np.stack([png, png[::-1]]).astype(np.float32))
    normalised = data.normalize_per_slice(stack)
    np.testing.assert_allclose(normalised.max(axis=(1, 2)), 1.0)
    np.testing.assert_allclose(normalised[0], png / png.max(), rtol=1e-6)

    Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)).save(tmp_path / "d.png")
    with pytest.raises(ValueError, match=r"d.png is a colour \(RGB\) image; pass as_gray=True"):
        data.load_image_folder(tmp_path)
    assert data.load_image_folder(tmp_path, as_gray=True).shape == (3, 9, 7)
    Image.fromarray(png[:5]).save(tmp_path / "e.png")
    with pytest.raises(ValueError, match=r"different sizes \[\(5, 7\), \(9, 7\)\]"):
        data.load_image_folder(tmp_path, as_gray=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no .png/.tif/.tiff images"):
        data.load_image_folder(empty)


def test_normalize_and_crop_errors():
    with pytest.raises(ValueError, match=r"slices \[1\] have no positive value"):
        data.normalize_per_slice(np.stack([np.ones((4, 4)), np.zeros((4, 4))]))
    with pytest.raises(ValueError, match=r"`images` contains 1 NaN/Inf"):
        data.normalize_per_slice(np.where(np.arange(16).reshape(1, 4, 4) == 5, np.nan, 1.0))
    np.testing.assert_array_equal(data.center_crop(np.arange(36).reshape(6, 6), (2, 2)), [[14, 15], [20, 21]])
    with pytest.raises(ValueError, match=r"`shape` \(8, 2\) does not fit"):
        data.center_crop(np.ones((6, 6)), (8, 2))


# ------------------------------------------------------------ tasks
@pytest.fixture
def mri_task():
    images = jnp.asarray(data.default_images(10, 32), jnp.complex64)
    train, val, test = data.split_images(images, (0.6, 0.2, 0.2))
    op = SingleCoilMRI(masks.radial(jax.random.key(0), (32, 32), 0.3))
    return data.Task(op, train, val, test, noise_std=0.01)


def test_split_images_is_contiguous_and_complete():
    images = jnp.arange(100.0)[:, None, None] * jnp.ones((1, 2, 2))
    train, val, test = data.split_images(images)
    assert [len(s) for s in (train, val, test)] == [70, 15, 15]
    assert train[0, 0, 0] == 0 and val[0, 0, 0] == 70 and test[-1, 0, 0] == 99
    shuffled = data.split_images(images, key=jax.random.key(1))
    values = np.sort(np.concatenate([np.asarray(s[:, 0, 0]) for s in shuffled]))
    np.testing.assert_array_equal(values, np.arange(100.0))
    with pytest.raises(ValueError, match=r"leave an empty split for 3 images"):
        data.split_images(images[:3])
    with pytest.raises(ValueError, match=r"summing to 1"):
        data.split_images(images, (0.5, 0.2, 0.2))


def test_task_batches_are_deterministic_with_noise_only_on_sampled_kspace(mri_task):
    key = jax.random.key(7)
    x, y = mri_task.batch(key, "train", 4)
    x2, y2 = mri_task.batch(key, "train", 4)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    rows = [int(np.flatnonzero((np.asarray(mri_task.train) == xi).all(axis=(1, 2)))[0]) for xi in np.asarray(x)]
    assert len(set(rows)) == 4, "a batch holds distinct images"
    mask = np.asarray(mri_task.operator.mask)
    assert np.all(np.asarray(y)[:, ~mask] == 0)
    noise = np.asarray(y - mri_task.operator(x))[:, mask]
    assert abs(noise.real.std() - 0.01) < 1e-3 and abs(noise.imag.std() - 0.01) < 1e-3
    _, y_other = mri_task.batch(jax.random.key(8), "train", 4)
    assert not np.array_equal(y, y_other)


def test_tasks_stack_and_vmap(mri_task):
    other = data.Task(
        SingleCoilMRI(masks.radial(jax.random.key(1), (32, 32), 0.1)), mri_task.train, mri_task.val, mri_task.test, 0.0
    )
    stacked = data.stack_tasks([mri_task, other])
    keys = jax.random.split(jax.random.key(3), 2)
    xs, ys = jax.vmap(lambda t, k: t.batch(k, "val", 2))(stacked, keys)
    for i, task in enumerate([mri_task, other]):
        x, y = task.batch(keys[i], "val", 2)
        np.testing.assert_array_equal(xs[i], x)
        np.testing.assert_allclose(ys[i], y, atol=1e-6)
    bigger = data.Task(Denoising(), mri_task.train, mri_task.val, mri_task.test)
    with pytest.raises(ValueError, match=r"must share operator type"):
        data.stack_tasks([mri_task, bigger])


def test_task_bad_input(mri_task):
    with pytest.raises(ValueError, match=r"`batch_size`=5 exceeds the 2 images of split 'val'"):
        mri_task.batch(jax.random.key(0), "val", 5)
    with pytest.raises(ValueError, match=r"`split` must be one of"):
        mri_task.batch(jax.random.key(0), "training", 1)
    with pytest.raises(ValueError, match=r"`train` contains 1 NaN/Inf"):
        data.Task(Denoising(), jnp.ones((2, 4, 4)).at[0, 0, 0].set(jnp.nan), jnp.ones((1, 4, 4)), jnp.ones((1, 4, 4)))
    with pytest.raises(ValueError, match=r"`val` must be an \(N, H, W\) image stack"):
        data.Task(Denoising(), jnp.ones((2, 4, 4)), jnp.ones((4, 4)), jnp.ones((1, 4, 4)))
    with pytest.raises(ValueError, match=r"`noise_std` must be non-negative"):
        data.Task(Denoising(), jnp.ones((2, 4, 4)), jnp.ones((1, 4, 4)), jnp.ones((1, 4, 4)), noise_std=-1.0)
    with pytest.raises(TypeError, match=r"`operator` must be a metajax LinearOperator"):
        data.Task(lambda x: x, jnp.ones((2, 4, 4)), jnp.ones((1, 4, 4)), jnp.ones((1, 4, 4)))


def test_embedded_chest_images_and_masks(shared_file):
    images = data.chest_images()
    assert images.shape == (100, 256, 256) and images.dtype == np.float32
    np.testing.assert_array_equal(images.max(axis=(1, 2)), 1.0)
    found = data.chest_masks()
    assert sorted(found) == [f"radial_{r}" for r in (10, 20, 30, 40, 50)]
    for ratio in (0.1, 0.2, 0.3, 0.4, 0.5):
        mask = data.pseudo_radial_mask(ratio)
        assert mask.shape == (256, 256) and mask.dtype == bool and abs(mask.mean() - ratio) < 0.003
        assert mask[128, 128]  # DC sampled, centred layout
    with pytest.raises(ValueError, match="ratio"):
        data.pseudo_radial_mask(0.25)
    with h5py.File(shared_file("chest100_singlecoil.h5"), "r") as f:  # bit for bit the shared copy
        np.testing.assert_array_equal(images, f["reconstruction_esc"][()])
        np.testing.assert_allclose(np.asarray(fft2c(images[:2].astype(np.complex64))), f["kspace"][:2],
                                   atol=2e-5)
    with h5py.File(shared_file("radial_masks.h5"), "r") as f:
        for name, mask in found.items():
            np.testing.assert_array_equal(mask, f[name][()].astype(bool))
