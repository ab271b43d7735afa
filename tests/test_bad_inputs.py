"""Bad inputs, tried as a careless user would: every public boundary raises early, with an exception of the
expected type whose message names the argument or config key (docs/errors.md). One table per module; each
case is ``(id, call, exception, word)`` where ``call(tmp_path)`` must raise ``exception`` mentioning ``word``.
The valid edge cases that must keep working close the file."""

from __future__ import annotations

import json
from pathlib import Path

import equinox as eqx
import h5py
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metajax import bilevel, data, masks, metrics
from metajax.adjoint import MLM, multipliers, unroll
from metajax.models import (LOA, DCNet, PDNet, l1_wavelet_reconstruction, sense_reconstruction, tv_reconstruction,
                            zero_filled)
from metajax.operators import (
    Blur,
    Downsampling,
    Inpainting,
    MultiCoilMRI,
    Scaled,
    SingleCoilMRI,
    acs_maps,
    birdcage_maps,
    calibration_shape,
    espirit,
    gaussian_kernel,
)

ROOT = Path(__file__).resolve().parents[1]
KEY = jax.random.key(0)
N = 16
MASK = masks.radial(KEY, (N, N), 0.4)
OP = SingleCoilMRI(MASK)
X = jnp.asarray(data.default_images(2, N), jnp.complex64)
Y = OP(X[0])
NAN_Y = Y.at[0, 0].set(jnp.nan)
LOA_NET = LOA(KEY, 2, features=2, layers=2)
DC_NET = DCNet(KEY, 2, layers=2, channels=2)
PD_NET = PDNet(KEY, 2, channels=2)


def _h5(tmp, name, **datasets):
    path = tmp / name
    with h5py.File(path, "w") as f:
        for key, value in datasets.items():
            f[key] = value
    return path


def _text(tmp, name, text="not what it claims to be"):
    path = tmp / name
    path.write_text(text)
    return path


def _folder(tmp, *images):

    folder = tmp / "images"
    folder.mkdir(exist_ok=True)
    for i, im in enumerate(images):
        if isinstance(im, bytes):
            (folder / f"{i}.png").write_bytes(im)
        elif isinstance(im, list):  # pages of one TIFF
            im[0].save(folder / f"{i}.tif", save_all=True, append_images=im[1:])
        else:
            im.save(folder / f"{i}.png")
    return folder


def _gray(size=8, mode="L"):
    from PIL import Image

    return Image.fromarray(np.arange(size * size, dtype=np.uint8 if mode == "L" else np.uint16).reshape(size, size),
                           mode=None)


def _fastmri(tmp, header="<ismrmrdHeader>", kspace=None):
    kspace = np.ones((2, 8, 8), np.complex64) if kspace is None else kspace
    return _h5(tmp, "vol.h5", kspace=kspace, reconstruction_esc=np.ones((kspace.shape[0], 8, 8), np.float32),
               ismrmrd_header=header)


def _stacked_tasks():
    task = data.Task(OP, X, X, X)
    return data.stack_tasks([task, task])


def _ridge():
    theta = {"w": jnp.ones(3)}
    inner = lambda p, a: jnp.sum((p["w"] - a) ** 2)  # noqa: E731
    return theta, inner, jnp.arange(6.0).reshape(2, 3)


THETA, RIDGE, RIDGE_ARGS = _ridge()
SGD = optax.sgd(0.1)
MAML_SGD = bilevel.MAML(SGD, 1)
WEIGHTED = bilevel.TaskWeighted(LOA_NET, 2, omega=jnp.array([0.0, 1.0]))

OPERATORS = [
    ("SingleCoilMRI non-binary mask", lambda t: SingleCoilMRI(jnp.full((4, 4), 0.5)), ValueError, "mask"),
    ("SingleCoilMRI 3-D mask", lambda t: SingleCoilMRI(jnp.ones((2, 4, 4))), ValueError, "mask"),
    ("SingleCoilMRI complex mask", lambda t: SingleCoilMRI(jnp.ones((4, 4), jnp.complex64)), TypeError, "mask"),
    ("SingleCoilMRI real image", lambda t: OP(jnp.ones((N, N))), TypeError, "x"),
    ("SingleCoilMRI image of another size", lambda t: OP(jnp.ones((N + 1, N), jnp.complex64)), ValueError, "x"),
    ("SingleCoilMRI adjoint of another size", lambda t: OP.adjoint(jnp.ones((4, 4), jnp.complex64)), ValueError, "y"),
    ("SingleCoilMRI non-binary mask inside jit",
     lambda t: jax.block_until_ready(jax.jit(lambda m: SingleCoilMRI(m)(X[0]))(jnp.full((N, N), 0.5))),
     Exception, "binary"),
    ("MultiCoilMRI sensitivities of another size",
     lambda t: MultiCoilMRI(MASK, jnp.ones((2, 4, 4), jnp.complex64)), ValueError, "sens"),
    ("birdcage_maps radius inside the image", lambda t: birdcage_maps((8, 8), 4, radius=1.0), ValueError, "radius"),
    ("birdcage_maps zero coils", lambda t: birdcage_maps((8, 8), 0), ValueError, "num_coils"),
    ("birdcage_maps real dtype", lambda t: birdcage_maps((8, 8), 2, dtype=jnp.float32), TypeError, "dtype"),
    ("Scaled negative scale", lambda t: Scaled(OP, -1.0), ValueError, "scale"),
    ("Scaled of a non-operator", lambda t: Scaled("fft", 1.0), TypeError, "operator"),
    ("Blur 1-D kernel", lambda t: Blur(jnp.ones(3)), ValueError, "kernel"),
    ("Blur NaN kernel", lambda t: Blur(jnp.full((3, 3), jnp.nan)), ValueError, "kernel"),
    ("Blur kernel larger than the image", lambda t: Blur(jnp.ones((9, 9)))(jnp.ones((4, 4))), ValueError, "x"),
    ("Downsampling factor 0", lambda t: Downsampling(0), ValueError, "factor"),
    ("Downsampling of an indivisible size", lambda t: Downsampling(3)(jnp.ones((8, 8))), ValueError, "x"),
    ("Inpainting non-binary mask", lambda t: Inpainting(jnp.full((4, 4), 2.0)), ValueError, "mask"),
    ("gaussian_kernel negative sigma", lambda t: gaussian_kernel(-1.0), ValueError, "sigma"),
]

MASKS = [
    ("radial ratio 0", lambda t: masks.radial(KEY, (8, 8), 0.0), ValueError, "ratio"),
    ("radial ratio above 1", lambda t: masks.radial(KEY, (8, 8), 1.5), ValueError, "ratio"),
    ("radial ratio as a string", lambda t: masks.radial(KEY, (8, 8), "0.3"), TypeError, "ratio"),
    ("radial ratio that rounds to no point", lambda t: masks.radial(KEY, (8, 8), 0.005), ValueError, "ratio"),
    ("radial key as an int", lambda t: masks.radial(0, (8, 8), 0.3), TypeError, "key"),
    ("radial key array of several keys", lambda t: masks.radial(jax.random.split(KEY), (8, 8), 0.3), ValueError,
     "key"),
    ("radial zero height", lambda t: masks.radial(KEY, (0, 8), 0.3), ValueError, "shape"),
    ("radial fractional size", lambda t: masks.radial(KEY, (8.5, 8), 0.3), ValueError, "shape"),
    ("radial 3-D shape", lambda t: masks.radial(KEY, (8, 8, 8), 0.3), ValueError, "shape"),
    ("cartesian center_fraction as a string", lambda t: masks.cartesian(KEY, (8, 32), 0.5, center_fraction="0.08"),
     TypeError, "center_fraction"),
    ("cartesian center_fraction above 1", lambda t: masks.cartesian(KEY, (8, 32), 0.5, center_fraction=1.2),
     ValueError, "center_fraction"),
    ("cartesian ratio below the centre lines", lambda t: masks.cartesian(KEY, (8, 100), 0.05, center_fraction=0.2),
     ValueError, "center_fraction"),
    ("cartesian ratio that rounds to no line", lambda t: masks.cartesian(KEY, (8, 8), 0.01, center_fraction=0.0),
     ValueError, "ratio"),
    ("equispaced ratio 0", lambda t: masks.equispaced((8, 8), 0), ValueError, "ratio"),
    ("variable_density ratio below the centre",
     lambda t: masks.variable_density(KEY, (64, 64), 0.001, center_radius=0.2), ValueError, "center_radius"),
    ("variable_density sigma 0", lambda t: masks.variable_density(KEY, (8, 8), 0.3, sigma=0), ValueError, "sigma"),
    ("variable_density center_radius 2", lambda t: masks.variable_density(KEY, (8, 8), 0.3, center_radius=2),
     ValueError, "center_radius"),
    ("sampling_ratio of a non-binary mask", lambda t: masks.sampling_ratio(jnp.full((4, 4), 0.3)), ValueError,
     "mask"),
    ("sampling_ratio of a 1-D mask", lambda t: masks.sampling_ratio(jnp.ones(4)), ValueError, "mask"),
    ("load_masks of a text file", lambda t: masks.load_masks(_text(t, "m.h5")), ValueError, "path"),
    ("load_masks of a missing file", lambda t: masks.load_masks(t / "none.h5"), FileNotFoundError, "path"),
    ("load_masks with a 3-D dataset", lambda t: masks.load_masks(_h5(t, "m.h5", a=np.ones((4, 4)),
                                                                     b=np.ones((2, 4, 4)))), ValueError, "'b'"),
    ("load_masks with a non-binary dataset", lambda t: masks.load_masks(_h5(t, "m.h5", a=np.full((4, 4), 3.0))),
     ValueError, "m.h5:a"),
    ("load_mask of an unknown name", lambda t: masks.load_mask(_h5(t, "m.h5", a=np.ones((4, 4))), "b"), KeyError,
     "name"),
]

REF = jnp.ones((2, 8, 8))
METRICS = [
    ("psnr NaN reconstruction", lambda t: metrics.psnr(REF.at[0, 0, 0].set(jnp.nan), REF), ValueError, "`x`"),
    ("psnr NaN reference", lambda t: metrics.psnr(REF, REF.at[0, 0, 0].set(jnp.nan)), ValueError, "`ref`"),
    ("psnr all-zero reference, data_range=None", lambda t: metrics.psnr(REF, jnp.zeros_like(REF)), ValueError,
     "data_range"),
    ("psnr negative data_range", lambda t: metrics.psnr(REF, REF * 0.5, data_range=-1.0), ValueError, "data_range"),
    ("psnr data_range as a string", lambda t: metrics.psnr(REF, REF, data_range="1"), TypeError, "data_range"),
    ("psnr shapes differ", lambda t: metrics.psnr(REF[0], REF), ValueError, "`x` and `ref`"),
    ("psnr complex input", lambda t: metrics.psnr(REF + 0j, REF), TypeError, "`x`"),
    ("psnr 1-D input", lambda t: metrics.psnr(jnp.ones(4), jnp.ones(4)), ValueError, "`x`"),
    ("ssim float win_size", lambda t: metrics.ssim(REF, REF, win_size=7.0), TypeError, "win_size"),
    ("ssim even win_size", lambda t: metrics.ssim(REF, REF, win_size=4), ValueError, "win_size"),
    ("ssim window larger than the image", lambda t: metrics.ssim(REF, REF, win_size=9), ValueError, "win_size"),
    ("ssim NaN input", lambda t: metrics.ssim(REF.at[0, 0, 0].set(jnp.inf), REF), ValueError, "`x`"),
    ("nmse all-zero reference", lambda t: metrics.nmse(REF, jnp.zeros_like(REF)), ValueError, "`ref`"),
    ("evaluate_volume of one image", lambda t: metrics.evaluate_volume(REF[0], REF[0]), ValueError, "target"),
    ("psnr data_range of another length", lambda t: metrics.psnr(REF, REF * 0.5, data_range=jnp.ones(3)), ValueError,
     "data_range"),
    ("ssim data_range of another length", lambda t: metrics.ssim(REF, REF * 0.5, data_range=jnp.ones(3)), ValueError,
     "data_range"),
]

DATA = [
    ("default_images beyond the distinct slices", lambda t: data.default_images(500, 16), ValueError, "num_slices"),
    ("default_images zero slices", lambda t: data.default_images(0), ValueError, "num_slices"),
    ("default_images float size", lambda t: data.default_images(4, 16.0), ValueError, "size"),
    ("center_crop to zero", lambda t: data.center_crop(np.ones((4, 8, 8)), (0, 4)), ValueError, "shape"),
    ("center_crop to a negative size", lambda t: data.center_crop(np.ones((4, 8, 8)), (-2, 4)), ValueError, "shape"),
    ("center_crop larger than the images", lambda t: data.center_crop(np.ones((4, 8, 8)), (9, 4)), ValueError,
     "shape"),
    ("normalize_per_slice of one image", lambda t: data.normalize_per_slice(np.ones((8, 8))), ValueError, "images"),
    ("normalize_per_slice empty slice", lambda t: data.normalize_per_slice(np.zeros((2, 8, 8))), ValueError,
     "images"),
    ("normalize_per_slice NaN", lambda t: data.normalize_per_slice(np.full((2, 8, 8), np.nan)), ValueError, "images"),
    ("load_image_folder missing folder", lambda t: data.load_image_folder(t / "none"), FileNotFoundError, "path"),
    ("load_image_folder without images", lambda t: data.load_image_folder(t), FileNotFoundError, "path"),
    ("load_image_folder corrupt PNG", lambda t: data.load_image_folder(_folder(t, b"\x89PNG\r\n\x1a\n broken")),
     ValueError, "not a readable image"),
    ("load_image_folder multi-page TIFF", lambda t: data.load_image_folder(_folder(t, [_gray(), _gray(), _gray()])),
     ValueError, "3 pages"),
    ("load_image_folder mixed bit depths",
     lambda t: data.load_image_folder(_folder(t, _gray(), _gray(mode="I;16"))), ValueError, "pixel formats"),
    ("load_image_folder colour image", lambda t: data.load_image_folder(_folder(t, _gray().convert("RGB"))),
     ValueError, "as_gray"),
    ("load_image_folder sizes differ", lambda t: data.load_image_folder(_folder(t, _gray(8), _gray(9))), ValueError,
     "sizes"),
    ("load_nifti of a text file", lambda t: data.load_nifti(_text(t, "v.nii.gz")), ValueError, "path"),
    ("load_nifti missing file", lambda t: data.load_nifti(t / "v.nii"), FileNotFoundError, "path"),
    ("load_nifti axis 3", lambda t: data.load_nifti(_text(t, "v.nii"), axis=3), ValueError, "axis"),
    ("load_fastmri of a text file", lambda t: data.load_fastmri(_text(t, "v.h5")), ValueError, "path"),
    ("load_fastmri without kspace", lambda t: data.load_fastmri(_h5(t, "v.h5", other=np.ones(3))), KeyError,
     "kspace"),
    ("load_fastmri real kspace", lambda t: data.load_fastmri(_h5(t, "v.h5", kspace=np.ones((2, 8, 8)))), ValueError,
     "kspace"),
    ("load_fastmri empty volume", lambda t: data.load_fastmri(_fastmri(t, kspace=np.ones((0, 8, 8), np.complex64))),
     ValueError, "no slices"),
    ("load_fastmri malformed header", lambda t: data.load_fastmri(_fastmri(t)), ValueError, "ismrmrd_header"),
    ("load_fastmri slice out of range", lambda t: data.load_fastmri(_fastmri(t), slices=[0, 5], target_key=None),
     IndexError, "slices"),
    ("load_fastmri slice repeated", lambda t: data.load_fastmri(_fastmri(t), slices=[1, 1], target_key=None),
     ValueError, "slices"),
    ("load_fastmri float slices", lambda t: data.load_fastmri(_fastmri(t), slices=[0.5], target_key=None),
     TypeError, "slices"),
    ("load_fastmri empty selection", lambda t: data.load_fastmri(_fastmri(t), slices=slice(5, 9), target_key=None),
     ValueError, "slices"),
    ("pseudo_radial_mask of a ratio not shipped", lambda t: data.pseudo_radial_mask(0.25), ValueError, "ratio"),
    ("Task with real images for MRI", lambda t: data.Task(OP, jnp.abs(X), X, X), TypeError, "train"),
    ("Task with images of another size", lambda t: data.Task(OP, jnp.ones((2, 8, 8), jnp.complex64), X, X),
     ValueError, "train"),
    ("Task with one image instead of a stack", lambda t: data.Task(OP, X, X[0], X), ValueError, "val"),
    ("Task with NaN images", lambda t: data.Task(OP, X, X, X.at[0, 0, 0].set(jnp.nan)), ValueError, "test"),
    ("Task with negative noise", lambda t: data.Task(OP, X, X, X, noise_std=-0.1), ValueError, "noise_std"),
    ("Task with a non-operator", lambda t: data.Task(lambda x: x, X, X, X), TypeError, "operator"),
    ("Task.batch larger than the split", lambda t: data.Task(OP, X, X, X).batch(KEY, "train", 3), ValueError,
     "batch_size"),
    ("Task.batch of an unknown split", lambda t: data.Task(OP, X, X, X).batch(KEY, "training", 1), ValueError,
     "split"),
    ("Task.measure with an int key", lambda t: data.Task(OP, X, X, X).measure(3, X), TypeError, "key"),
    ("split_images of a single image", lambda t: data.split_images(np.ones((8, 8))), ValueError, "images"),
    ("split_images fractions not summing to 1", lambda t: data.split_images(np.ones((9, 4, 4)), (0.5, 0.5, 0.5)),
     ValueError, "fractions"),
    ("split_images leaving a split empty", lambda t: data.split_images(np.ones((2, 4, 4))), ValueError, "fractions"),
    ("stack_tasks of nothing", lambda t: data.stack_tasks([]), ValueError, "tasks"),
    ("stack_tasks of different sizes", lambda t: data.stack_tasks([data.Task(OP, X, X, X),
                                                                   data.Task(OP, X[:1], X, X)]), ValueError, "tasks"),
]

def _half(model):
    return jax.tree.map(lambda a: a.astype(jnp.float16) if eqx.is_inexact_array(a) else a, model)


MODELS = [
    ("LOA NaN measurements", lambda t: LOA_NET(OP, NAN_Y, 0.0), ValueError, "`y`"),
    ("LOA batched measurements", lambda t: LOA_NET(OP, OP(X), 0.0), ValueError, "jax.vmap"),
    ("LOA NaN task weight", lambda t: LOA_NET(OP, Y, jnp.nan), ValueError, "omega"),
    ("LOA NaN task weight inside jit",
     lambda t: jax.block_until_ready(jax.jit(lambda w: LOA_NET(OP, Y, w))(jnp.float32(jnp.nan))), Exception, "omega"),
    ("LOA vector task weight", lambda t: LOA_NET(OP, Y, jnp.zeros(2)), ValueError, "omega"),
    ("LOA task weight as a string", lambda t: LOA_NET(OP, Y, "0"), TypeError, "omega"),
    ("LOA real measurements for MRI", lambda t: LOA_NET(OP, jnp.abs(Y), 0.0), TypeError, "y"),
    ("LOA zero phases", lambda t: LOA(KEY, 0), ValueError, "num_phases"),
    ("DCNet NaN measurements", lambda t: DC_NET(OP, NAN_Y), ValueError, "`y`"),
    ("DCNet batched measurements", lambda t: DC_NET(OP, OP(X)), ValueError, "jax.vmap"),
    ("DCNet NaN task weight", lambda t: DC_NET(OP, Y, jnp.inf), ValueError, "omega"),
    ("DCNet one layer", lambda t: DCNet(KEY, 2, layers=1), ValueError, "layers"),
    ("DCNet zero channels", lambda t: DCNet(KEY, 2, channels=0), ValueError, "channels"),
    ("PDNet NaN measurements", lambda t: PD_NET(OP, NAN_Y), ValueError, "`y`"),
    ("PDNet measurements of another size", lambda t: PD_NET(OP, jnp.ones((4, 4), jnp.complex64)), ValueError, "y"),
    ("PDNet real images into a complex network", lambda t: PD_NET(Downsampling(2), jnp.ones((4, 4))), ValueError,
     "complex"),
    ("zero_filled NaN measurements", lambda t: zero_filled(OP, NAN_Y), ValueError, "`y`"),
    ("tv_reconstruction NaN measurements", lambda t: tv_reconstruction(OP, NAN_Y, 1e-3), ValueError, "`y`"),
    ("tv_reconstruction negative weight", lambda t: tv_reconstruction(OP, Y, -1.0), ValueError, "weight"),
    ("tv_reconstruction zero iterations", lambda t: tv_reconstruction(OP, Y, 1e-3, 0), ValueError, "iterations"),
    ("sense_reconstruction NaN measurements", lambda t: sense_reconstruction(OP, NAN_Y), ValueError, "`y`"),
    ("sense_reconstruction negative weight", lambda t: sense_reconstruction(OP, Y, -1.0), ValueError, "weight"),
    ("l1_wavelet_reconstruction unknown wavelet", lambda t: l1_wavelet_reconstruction(OP, Y, 1e-3, wavelet="sym9"),
     ValueError, "wavelet"),
    ("l1_wavelet_reconstruction too many levels", lambda t: l1_wavelet_reconstruction(OP, Y, 1e-3, levels=12),
     ValueError, "levels"),
    ("l1_wavelet_reconstruction NaN weight", lambda t: l1_wavelet_reconstruction(OP, Y, jnp.nan), ValueError,
     "weight"),
    ("tv_reconstruction one weight too many for the batch",
     lambda t: tv_reconstruction(OP, jnp.stack([Y, Y]), jnp.full(3, 1e-3)), ValueError, "weight"),
    ("sense_reconstruction weights of another length",
     lambda t: sense_reconstruction(OP, jnp.stack([Y, Y]), jnp.full(3, 1e-3)), ValueError, "weight"),
    ("LOA integer key", lambda t: LOA(0, 2), TypeError, "key"),
    ("DCNet integer key", lambda t: DCNet(0, 2), TypeError, "key"),
    ("PDNet integer key", lambda t: PDNet(0, 2), TypeError, "key"),
    ("LOA float16", lambda t: LOA(KEY, 2, dtype=jnp.float16), TypeError, "dtype"),
    ("DCNet bfloat16", lambda t: DCNet(KEY, 2, dtype=jnp.bfloat16), TypeError, "dtype"),
    ("DCNet cast to float16, then called", lambda t: _half(DC_NET)(OP, Y), TypeError, "float16"),
    ("LOA cast to float16, then called", lambda t: _half(LOA_NET)(OP, Y, 0.0), TypeError, "float16"),
    ("PDNet cast to float16, then called", lambda t: _half(PD_NET)(OP, Y), TypeError, "float16"),
]

MULTICOIL = [
    ("espirit single-coil k-space", lambda t: espirit(Y), ValueError, "kspace"),
    ("espirit calibration larger than k-space", lambda t: espirit(jnp.stack([Y, Y]), (40, 40)), ValueError,
     "calib_shape"),
    ("espirit crop of 1", lambda t: espirit(jnp.stack([Y, Y]), (8, 8), kernel=4, crop=1.0), ValueError, "crop"),
    ("acs_maps real k-space", lambda t: acs_maps(jnp.ones((2, 8, 8))), TypeError, "kspace"),
    ("calibration_shape of a mask without centre", lambda t: calibration_shape(jnp.zeros((8, 8), bool)), ValueError,
     "auto-calibration"),
    ("simulate_multicoil complex image", lambda t: data.simulate_multicoil(KEY, X[0], 4), TypeError, "image"),
    ("simulate_multicoil zero snr", lambda t: data.simulate_multicoil(KEY, jnp.abs(X[0]), 4, snr=0.0), ValueError,
     "snr"),
    ("simulate_multicoil integer key", lambda t: data.simulate_multicoil(0, jnp.abs(X[0]), 4), TypeError, "key"),
    ("random_coil_maps zero coils", lambda t: data.random_coil_maps(KEY, (8, 8), 0), ValueError, "num_coils"),
    ("read_cfl missing file", lambda t: data.read_cfl(t / "nothing"), FileNotFoundError, "nothing.hdr"),
    ("read_cfl header without dimensions", lambda t: (t.joinpath("x.hdr").write_text("1 2\n"),
                                                      t.joinpath("x.cfl").write_bytes(b""),
                                                      data.read_cfl(t / "x")), ValueError, "# Dimensions"),
    ("write_cfl text", lambda t: data.write_cfl(t / "y", np.array(["a"])), TypeError, "array"),
    ("kspace_from_cfl a 3-D volume", lambda t: data.kspace_from_cfl(np.zeros((4, 4, 4, 2), np.complex64)),
     ValueError, "two spatial axes"),
]

PHASE = lambda u, th, p: u * th  # noqa: E731
ADJOINT = [
    ("unroll phase not callable", lambda t: unroll("step", jnp.ones(3), jnp.ones((2, 3)), None), TypeError, "phase"),
    ("unroll thetas without arrays", lambda t: unroll(PHASE, jnp.ones(3), {}, None), ValueError, "thetas"),
    ("unroll scalar thetas", lambda t: unroll(PHASE, jnp.ones(3), jnp.float32(1), None), ValueError, "thetas"),
    ("unroll zero phases", lambda t: unroll(PHASE, jnp.ones(3), jnp.ones((0, 3)), None), ValueError, "thetas"),
    ("unroll phase that changes the shape",
     lambda t: unroll(lambda u, th, p: jnp.concatenate([u, th]), jnp.ones(3), jnp.ones((2, 3)), None), ValueError,
     "phase"),
    ("unroll integer state", lambda t: unroll(PHASE, jnp.ones(3, int), jnp.ones((2, 3), int), None), TypeError, "u0"),
    ("unroll adjoint not an Adjoint", lambda t: unroll(PHASE, jnp.ones(3), jnp.ones((2, 3)), None, adjoint="mlm"),
     TypeError, "adjoint"),
    ("unroll under MLM, phase closing over a traced value",
     lambda t: jax.grad(lambda c: jnp.sum(unroll(lambda u, th, p: u * th + c, jnp.ones(3), jnp.ones((2, 3)), None,
                                                 adjoint=MLM())))(1.0), TypeError, "params"),
    ("jax.jvp through MLM",
     lambda t: jax.jvp(lambda u: unroll(PHASE, u, jnp.ones((2, 3)), None, adjoint=MLM()), (jnp.ones(3),),
                       (jnp.ones(3),)), TypeError, "Autodiff()"),
    ("MLM checkpoint_every 0", lambda t: MLM(checkpoint_every=0), ValueError, "checkpoint_every"),
    ("multipliers loss not callable", lambda t: multipliers(PHASE, 0.0, jnp.ones(3), jnp.ones((2, 3)), None),
     TypeError, "loss"),
    ("multipliers loss returning a vector", lambda t: multipliers(PHASE, lambda u: u ** 2, jnp.ones(3),
                                                                  jnp.ones((2, 3)), None), ValueError, "loss"),
    ("multipliers unknown convention", lambda t: multipliers(PHASE, jnp.sum, jnp.ones(3), jnp.ones((2, 3)), None,
                                                             convention="wirtinger"), ValueError, "convention"),
]


def _batch(task_ids):
    return bilevel.sample_batch(_stacked_tasks(), KEY, "train", 1, task_ids=task_ids)


_SHARED_THETA, _SHARED_STATIC = eqx.partition(bilevel.Shared(DC_NET), eqx.is_inexact_array)
_SUP = lambda p, b: bilevel.supervised_loss(eqx.combine(p, _SHARED_STATIC), b)  # noqa: E731
_RIDGE_DICT = lambda p, a: jnp.sum((p["w"] - a["t"]) ** 2)  # noqa: E731


def _one_task_batch(nan=False):
    return bilevel.TaskBatch(OP, X[:1], (NAN_Y if nan else Y)[None], jnp.array(0))


BILEVEL = [
    ("meta_gradient method not a method", lambda t: bilevel.meta_gradient("maml", RIDGE, RIDGE, THETA, RIDGE_ARGS[0]),
     TypeError, "method"),
    ("meta_gradient loss not callable", lambda t: bilevel.meta_gradient(MAML_SGD, 1.0, RIDGE, THETA, RIDGE_ARGS[0]),
     TypeError, "inner_loss"),
    ("meta_gradient NaN parameters",
     lambda t: bilevel.meta_gradient(MAML_SGD, RIDGE, RIDGE, {"w": jnp.full(3, jnp.nan)}, RIDGE_ARGS[0]), ValueError,
     "theta"),
    ("meta_gradient string leaf in parameters",
     lambda t: bilevel.meta_gradient(MAML_SGD, RIDGE, RIDGE, {"w": jnp.ones(3), "name": "net"}, RIDGE_ARGS[0]),
     TypeError, "theta"),
    ("meta_gradient integer parameters",
     lambda t: bilevel.meta_gradient(MAML_SGD, RIDGE, RIDGE, {"w": jnp.ones(3, int)}, RIDGE_ARGS[0]), TypeError,
     "theta"),
    ("meta_gradient empty parameters", lambda t: bilevel.meta_gradient(MAML_SGD, RIDGE, RIDGE, {}, RIDGE_ARGS[0]),
     ValueError, "theta"),
    ("meta_gradient key as an int",
     lambda t: bilevel.meta_gradient(MAML_SGD, RIDGE, RIDGE, THETA, RIDGE_ARGS[0], key=1), TypeError, "key"),
    ("meta_gradient loss returning NaN",
     lambda t: jax.block_until_ready(bilevel.meta_gradient(MAML_SGD, lambda p, a: jnp.nan * jnp.sum(p["w"]), RIDGE,
                                                           THETA, RIDGE_ARGS[0])[0]), Exception, "inner_loss"),
    ("MAML zero inner steps", lambda t: bilevel.MAML(optax.sgd(0.1), 0), ValueError, "inner_steps"),
    ("MAML optimizer not optax", lambda t: bilevel.MAML(lambda g: g, 1), TypeError, "inner_optimizer"),
    ("Implicit lam 0", lambda t: bilevel.Implicit(0.0, SGD, 1), ValueError, "lam"),
    ("Implicit cg_max_iters 0", lambda t: bilevel.Implicit(1.0, SGD, 1, cg_max_iters=0), ValueError, "cg_max_iters"),
    ("Implicit negative inner steps", lambda t: bilevel.Implicit(1.0, SGD, -1), ValueError, "inner_steps"),
    ("Implicit unknown solver", lambda t: bilevel.Implicit(1.0, SGD, 1, solver="lu"), ValueError, "solver"),
    ("meta_step state of another optimizer",
     lambda t: bilevel.meta_step(MAML_SGD, RIDGE, RIDGE, THETA, bilevel.init(MAML_SGD, THETA, optax.sgd(0.1)),
                                 RIDGE_ARGS, optimizer=optax.adam(0.1)), ValueError, "state"),
    ("meta_step optimizer not optax",
     lambda t: bilevel.meta_step(MAML_SGD, RIDGE, RIDGE, THETA, None, RIDGE_ARGS, optimizer="adam"), TypeError,
     "optimizer"),
    ("task_mean_gradient of unstacked args",
     lambda t: bilevel.task_mean_gradient(MAML_SGD, RIDGE, RIDGE, THETA, {"a": jnp.ones(3), "b": jnp.ones(())}),
     ValueError, "args"),
    ("TaskGroups of nothing", lambda t: bilevel.TaskGroups(), ValueError, "TaskGroups"),
    ("TaskGroups sharing task indices", lambda t: bilevel.TaskGroups(_batch(None), _batch(None)), ValueError,
     "task_ids"),
    ("sample_batch task_ids of the wrong length", lambda t: _batch(jnp.arange(3)), ValueError, "task_ids"),
    ("sample_batch negative task_ids", lambda t: _batch(jnp.array([0, -1])), ValueError, "task_ids"),
    ("sample_batch float task_ids", lambda t: _batch(jnp.array([0.0, 1.0])), ValueError, "task_ids"),
    ("sample_batch of one unstacked task", lambda t: bilevel.sample_batch(data.Task(OP, X, X, X), KEY, "train", 1),
     ValueError, "tasks"),
    ("TaskWeighted task index out of range",
     lambda t: WEIGHTED(OP, Y, 2), IndexError, "task"),
    ("TaskWeighted task index out of range inside jit",
     lambda t: jax.block_until_ready(jax.jit(lambda i: WEIGHTED(OP, Y, i))(5)), Exception, "task"),
    ("TaskWeighted float task index", lambda t: WEIGHTED(OP, Y, 1.0), TypeError, "task"),
    ("supervised_loss batch_size 0",
     lambda t: bilevel.supervised_loss(bilevel.Shared(LOA_NET), _batch(None), batch_size=0), ValueError,
     "batch_size"),
    ("task_mean_gradient of one task's unstacked TaskBatch",
     lambda t: bilevel.task_mean_gradient(MAML_SGD, _SUP, _SUP, _SHARED_THETA, _one_task_batch()), ValueError,
     "unstacked"),
    ("meta_step of one task's unstacked TaskBatch",
     lambda t: bilevel.meta_step(MAML_SGD, _SUP, _SUP, _SHARED_THETA, bilevel.init(MAML_SGD, _SHARED_THETA),
                                 _one_task_batch()), ValueError, "unstacked"),
    ("task_mean_gradient of a list of task dicts",
     lambda t: bilevel.task_mean_gradient(MAML_SGD, _RIDGE_DICT, _RIDGE_DICT, THETA,
                                          [{"t": jnp.ones(3)}, {"t": jnp.ones(3)}]), TypeError, "list"),
    ("sample_batch task id beyond the tasks", lambda t: _batch(jnp.array([0, 7])), ValueError, "task_ids"),
    ("sample_batch task id beyond num_tasks",
     lambda t: bilevel.sample_batch(_stacked_tasks(), KEY, "train", 1, task_ids=jnp.array([3, 4]), num_tasks=4),
     ValueError, "num_tasks"),
    ("sample_batch repeated task ids", lambda t: _batch(jnp.array([1, 1])), ValueError, "distinct"),
    ("meta_gradient loss returning a vector",
     lambda t: bilevel.meta_gradient(MAML_SGD, lambda p, a: (p["w"] - a) ** 2, RIDGE, THETA, RIDGE_ARGS[0]),
     TypeError, "inner_loss"),
    ("meta_gradient complex loss",
     lambda t: bilevel.meta_gradient(MAML_SGD, RIDGE, lambda p, a: jnp.sum(p["w"] - a) + 1j, THETA, RIDGE_ARGS[0]),
     TypeError, "outer_loss"),
    ("Implicit outer loss returning a vector",
     lambda t: bilevel.meta_gradient(bilevel.Implicit(1.0, SGD, 1), RIDGE, lambda p, a: p["w"], THETA,
                                     RIDGE_ARGS[0]), TypeError, "outer_loss"),
    ("meta_gradient parameters of another structure than the loss indexes",
     lambda t: bilevel.meta_gradient(MAML_SGD, RIDGE, RIDGE, {"v": jnp.ones(3)}, RIDGE_ARGS[0]), KeyError, "theta"),
    ("init with the method class", lambda t: bilevel.init(bilevel.MAML, THETA), TypeError, "class MAML"),
    ("init with a string", lambda t: bilevel.init("maml", THETA), TypeError, "method"),
    ("meta_step with the method class",
     lambda t: bilevel.meta_step(bilevel.Implicit, RIDGE, RIDGE, THETA, None, RIDGE_ARGS), TypeError, "method"),
    ("TaskBatch whose images and measurements differ in count",
     lambda t: bilevel.TaskBatch(OP, X, Y[None], jnp.array(0)), ValueError, "TaskBatch"),
    ("Implicit infinite lam", lambda t: bilevel.Implicit(float("inf"), SGD, 1), ValueError, "lam"),
    ("Penalty infinite lam", lambda t: bilevel.Penalty(lam=float("inf")), ValueError, "lam"),
    ("NaN measurements inside a vmapped loss (named, not taken for ω)",
     lambda t: jax.block_until_ready(bilevel.supervised_loss(WEIGHTED, bilevel.TaskBatch(
         OP, X[:1], NAN_Y[None], jnp.array(0)))), Exception, "`y`"),
    ("NaN measurements in a jitted meta-gradient",
     lambda t: jax.block_until_ready(jax.jit(lambda b: bilevel.meta_gradient(
         MAML_SGD, _SUP, _SUP, _SHARED_THETA, b)[0])(_one_task_batch(nan=True))), Exception, "`y`"),
]


def _engine(*overrides):
    from metajax.engine.experiment import Experiment
    from metajax.engine.reproductions.common import engine_config

    exp = Experiment(engine_config(["preset=ci", *overrides]), ROOT)
    exp.mesh()  # the device check the training loop makes before touching the run directory
    return exp


_ENGINE_KEYS = [
    ("trainer.steps=0", "trainer.steps"), ("trainer.batch=0", "trainer.batch"), ("trainer.lr=0", "trainer.lr"),
    ("trainer.lr=inf", "trainer.lr"), ("trainer.omega_lr=-1", "trainer.omega_lr"),
    ("trainer.lr_schedule=linear", "trainer.lr_schedule"), ("trainer.checkpoint_every=0", "trainer.checkpoint_every"),
    ("trainer.keep_checkpoints=0", "trainer.keep_checkpoints"), ("trainer.log_every=0", "trainer.log_every"),
    ("trainer.map_batch=-1", "trainer.map_batch"), ("trainer.val_every=-1", "trainer.val_every"),
    ("trainer.devices=-1", "trainer.devices"), ("trainer.seed=-1", "trainer.seed"),
    ("trainer.heartbeat_timeout=0", "trainer.heartbeat_timeout"),
    ("tasks.ratios=[1.5]", "tasks.ratios"), ("tasks.ratios=[]", "tasks.ratios"),
    ("tasks.ratios=[0.2,0.2]", "tasks.ratios"), ("tasks.ratios=[0]", "tasks.ratios"),
    ("tasks.noise_std=-0.1", "tasks.noise_std"), ("tasks.crop=-8", "tasks.crop"), ("tasks.mask=spiral", "tasks.mask"),
    ("tasks.crop=4", "tasks.crop"), ("model.name=unet", "model.name"), ("model.phases=0", "model.phases"),
    ("model.features=0", "model.features"), ("model.mu=0", "model.mu"), ("solver.name=adam", "solver.name"),
    ("solver.adjoint=fd", "solver.adjoint"), ("solver.outer_split=test", "solver.outer_split"),
    ("solver.delta_decay=1.5", "solver.delta_decay"), ("solver.lam_growth=0.5", "solver.lam_growth"),
    ("solver.lam=0", "solver.lam"), ("solver.inner_steps=0", "solver.inner_steps"),
    ("solver.inner_lr=-1e-3", "solver.inner_lr"), ("solver.cg_iters=0", "solver.cg_iters"),
    ("eval.split=tests", "eval.split"), ("eval.tv_weights=[]", "eval.tv_weights"),
    ("eval.tv_weights=[-1]", "eval.tv_weights"), ("eval.tv_iterations=0", "eval.tv_iterations"),
    ("data.train=[4,0]", "data.train"), ("data.val=[4]", "data.val"), ("data.test=[3,8]", "data.test"),
    ("data.source=dicom", "data.source"), ("data.test=[6,100]", "data.test"), ("trainer.batch=5", "trainer.batch"),
    ("data.source=fastmri", "data.path"), ("data.size=0", "data.size"),
    ("solver.per_task=true", "solver.per_task"), ("eval.figure_image=2", "eval.figure_image"),
    ("eval.tv_tune_images=3", "eval.tv_tune_images"), ("trainer.devices=4", "trainer.devices"),
    ("tasks.mask=file", "tasks.mask_file"), ("data.source=folder data.path=/nonexistent", "data.path"),
]
ENGINE = [(f"config {override}", lambda t, o=override: _engine(*o.split()), (ValueError, FileNotFoundError), key)
          for override, key in _ENGINE_KEYS]

CASES = OPERATORS + MASKS + METRICS + DATA + MODELS + MULTICOIL + ADJOINT + BILEVEL + ENGINE


@pytest.mark.parametrize("name, call, error, word", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_a_clear_error(tmp_path, name, call, error, word):
    with pytest.raises(error) as info:
        call(tmp_path)
    assert word in str(info.value), f"{name}: the message does not name {word!r}: {info.value}"


def test_the_table_is_large_enough():
    assert len(CASES) + len(CLI) >= 120


# ------------------------------------------------------------------ console scripts


def _script(entry, *overrides):
    """The console script ``metajax-ENTRY`` with Hydra overrides, in process (tests/console.py)."""
    from console import console

    return console(entry, *overrides)


CLI = [
    ("train trainer.steps=0", ("train", "preset=ci", "trainer.steps=0"), "trainer.steps"),
    ("train eval.split=tests", ("train", "preset=ci", "eval.split=tests"), "eval.split"),
    ("train overlapping test split", ("train", "preset=ci", "data.test=[2,8]"), "data.test"),
    ("evaluate without model_dir", ("evaluate", "preset=ci"), "model_dir"),
    ("evaluate of a missing run", ("evaluate", "preset=ci", "model_dir=/nonexistent/run"), "model_dir"),
    ("adapt adapt.images=0", ("adapt", "preset=ci", "adapt.model_dir=pretrained:chest_dcnet", "adapt.images=0"),
     "adapt.images"),
    ("adapt adapt.mode=all", ("adapt", "preset=ci", "adapt.model_dir=pretrained:chest_dcnet", "adapt.mode=all"),
     "adapt.mode"),
    ("adapt adapt.lr=0", ("adapt", "preset=ci", "adapt.model_dir=pretrained:chest_dcnet", "adapt.lr=0"), "adapt.lr"),
    ("train an unknown shipped model", ("train", "preset=ci", "eval.pretrained=chest_unet"), "chest_unet"),
    ("evaluate an unknown shipped model", ("evaluate", "preset=ci", "model_dir=pretrained:chest_unet"), "chest_unet"),
    ("reconstruct a missing input", ("reconstruct", "input=/nonexistent.h5"), "`input`"),
    ("reconstruct a text file", ("reconstruct", f"input={__file__}"), "not a readable HDF5"),
    ("reconstruct a negative scale", ("reconstruct", f"input={__file__}", "scale=-1"), "`scale`"),
    ("baselines tasks.ratios=[2]", ("baselines", "preset=ci", "tasks.ratios=[2]"), "tasks.ratios"),
    ("evaluate a file as model_dir", ("evaluate", "preset=ci", f"model_dir={__file__}"), "is a file"),
    ("adapt a file as adapt.model_dir", ("adapt", "preset=ci", f"adapt.model_dir={__file__}"), "adapt.model_dir"),
    ("train a folder as tasks.mask_file", ("train", "preset=ci", "tasks.mask=file", f"tasks.mask_file={ROOT}"),
     "is a directory"),
    ("train a file as data.path of an image folder", ("train", "preset=ci", "data.source=folder",
                                                       f"data.path={__file__}"), "is a file"),
]


@pytest.mark.parametrize("name, command, word", CLI, ids=[c[0] for c in CLI])
def test_console_script_rejects_bad_input_before_any_work(tmp_path, name, command, word):
    entry, *overrides = command
    result = _script(entry, *overrides, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert word in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "config.yaml").exists() and not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_a_corrupted_checkpoint_is_named_and_never_used(tmp_path):
    run = tmp_path / "run"
    first = _script("train", "preset=ci", "trainer.steps=4", "eval.figure=false", f"hydra.run.dir={run}")
    assert first.returncode == 0, first.stderr[-2000:]
    newest = sorted((run / "checkpoints").glob("step_*.eqx"))[-1]
    data_bytes = bytearray(newest.read_bytes())
    data_bytes[-4:] = b"\x00\x00\x80\x7f"  # finite garbage is as bad as a truncation: the checksum catches both
    newest.write_bytes(bytes(data_bytes))
    again = _script("train", "preset=ci", "trainer.steps=6", "trainer.allow_config_change=true", "eval.figure=false",
                    f"hydra.run.dir={run}")
    assert again.returncode == 1 and "corrupted" in again.stderr and newest.name in again.stderr, again.stderr[-2000:]
    evaluation = _script("evaluate", f"model_dir={run}", f"hydra.run.dir={run}")  # into the training run's directory
    assert evaluation.returncode == 1 and "hydra.run.dir" in evaluation.stderr, evaluation.stderr[-2000:]
    assert json.loads((run / "metrics.json").read_text())["rows"], "the training run's metrics are untouched"
    config = run / "config.yaml"  # a model.eqx that does not match its config: named before any work
    config.write_text(config.read_text().replace("features: 2", "features: 3"))
    mismatch = _script("evaluate", f"model_dir={run}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert mismatch.returncode == 1 and "model.eqx" in mismatch.stderr and "Traceback" not in mismatch.stderr, \
        mismatch.stderr[-2000:]


# ------------------------------------------------------------------ valid edge cases that must keep working


def test_valid_edge_cases_keep_working():
    with jax.enable_x64(True):  # non-square, odd, complex128
        odd = jnp.asarray(np.random.default_rng(0).standard_normal((7, 9)), jnp.complex128)
        op = SingleCoilMRI(masks.radial(KEY, (7, 9), 0.5))
        np.testing.assert_allclose(jnp.vdot(op(odd), op(odd)), jnp.vdot(odd, op.adjoint(op(odd))), rtol=1e-12)
        assert op(odd).dtype == jnp.complex128
    one = SingleCoilMRI(jnp.ones((1, 1), bool))
    np.testing.assert_allclose(one.adjoint(one(jnp.ones((1, 1), jnp.complex64))), 1.0)
    assert masks.sampling_ratio(masks.cartesian(KEY, (8, 32), 0.5)) == 0.5
    assert float(masks.sampling_ratio(jnp.ones((2, 4, 4)))[1]) == 1.0
    single = data.stack_tasks([data.Task(OP, X, X, X)])  # one task
    batch = bilevel.sample_batch(single, KEY, "train", 1)  # a batch of one
    model = bilevel.TaskWeighted(DC_NET, 1)
    theta, static = eqx.partition(model, eqx.is_inexact_array)
    loss = lambda p, b: bilevel.supervised_loss(eqx.combine(p, static), b)  # noqa: E731
    grad, _ = bilevel.task_mean_gradient(bilevel.MAML(optax.sgd(1e-6), 1), loss, loss, theta, batch)  # K = 1
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grad))
    assert bool(jnp.all(jnp.isinf(metrics.psnr(jnp.abs(X), jnp.abs(X)))))  # a perfect reconstruction: +inf dB
    assert float(metrics.psnr(jnp.ones((4, 4)), jnp.zeros((4, 4)), data_range=1.0)) == 0.0  # explicit range, zero ref
    assert float(metrics.ssim(jnp.ones((1, 7, 7)), jnp.ones((1, 7, 7)))[0]) == pytest.approx(1.0)  # 7×7: one window
    lambdas = multipliers(lambda u, th, p: u * th, lambda u: jnp.sum(jnp.abs(u) ** 2), jnp.ones(2, jnp.complex64),
                          jnp.full((1, 2), 1j), None, convention="real")[1]
    np.testing.assert_allclose(lambdas[-1], -2j * jnp.ones(2), atol=1e-6)  # −∇ℓ(u_T) in the real sense: −2 u_T

    def unrolled(c, adjoint):  # params with a string and a function next to the array: static data of the phase
        params = {"c": c, "name": "scale", "fn": jnp.tanh}
        phase = lambda u, th, p: p["fn"](u * th * p["c"]) if p["name"] == "scale" else u  # noqa: E731
        return jnp.sum(unroll(phase, jnp.ones(3), jnp.full((2, 3), 0.5), params, adjoint=adjoint))

    from metajax.adjoint import Autodiff

    assert float(jax.grad(unrolled)(1.5, MLM())) == pytest.approx(float(jax.grad(unrolled)(1.5, Autodiff())),
                                                                 rel=1e-6)


def test_a_run_directory_that_cannot_be_written_is_named_in_one_line(tmp_path):
    """A file where the run (or sweep) directory should go: one line naming the key, before any work."""
    blocker = _text(tmp_path, "a_file")
    for override in (f"hydra.run.dir={blocker / 'run'}", f"hydra.sweep.dir={blocker / 'sweep'}"):
        extra = ["-m"] if "sweep" in override else []
        result = _script("train", *extra, "preset=ci", override)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
        key = override.split("=")[0]
        assert f"`{key}`" in result.stderr and "cannot be written" in result.stderr, result.stderr


def test_a_failed_write_during_a_run_names_the_run_directory(tmp_path, capsys):
    """A write that fails mid-run (here: a full disk, /dev/full) ends with one line, not a traceback."""
    from metajax.engine.rundir import guard_writes

    def main(cfg):
        with open("/dev/full", "w") as f:
            f.write("x" * 10_000)

    if not Path("/dev/full").exists():
        pytest.skip("/dev/full is not available")
    with pytest.raises(SystemExit) as info:
        guard_writes(main)(None)
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "writing to the run directory" in err and "No space left" in err and "hydra.run.dir" in err
    with pytest.raises(ZeroDivisionError):  # anything else is not a write failure: it propagates
        guard_writes(lambda cfg: 1 / 0)(None)


def test_checkpoints_are_checked_and_failed_writes_leave_nothing(tmp_path):
    from metajax.engine import checkpoint
    from metajax.engine.runner import TrainingError, _log_lines, check_resume_config

    tree = {"w": np.arange(3.0)}
    folder = tmp_path / "checkpoints"
    checkpoint.save(folder, 2, tree)
    checkpoint.write_atomic(checkpoint.path_of(folder, 4), tree)  # killed before its checksum: incomplete
    assert checkpoint.latest(folder)[0] == 2
    with pytest.raises(checkpoint.CheckpointError, match="could not write"):
        checkpoint.write_atomic(tmp_path / "missing" / "model.eqx", tree)
    assert not list(tmp_path.rglob(".*.tmp"))
    with pytest.raises(checkpoint.CheckpointError, match="does not hold parameters"):
        checkpoint.load(checkpoint.path_of(folder, 2), {"w": np.zeros(4)})

    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"trainer": {"allow_config_change": False}})
    with pytest.raises(TrainingError, match="no config.yaml"):  # checkpoints whose config is unknown
        check_resume_config(tmp_path, cfg)
    log = tmp_path / "train_log.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\n{"st')  # a line torn by a kill is dropped, not parsed
    assert _log_lines(log) == ['{"step": 1}', '{"step": 2}']


def test_nested_masks_across_ratios_with_one_key():
    for make in (lambda r: masks.radial(KEY, (32, 32), r), lambda r: masks.cartesian(KEY, (32, 64), r),
                 lambda r: masks.variable_density(KEY, (32, 32), r)):
        small, large = np.asarray(make(0.2)), np.asarray(make(0.4))
        assert (small <= large).all() and small.sum() < large.sum()
