"""Multi-coil scans for ``metajax-reconstruct``: reading, the sampling mask, coil sensitivities, reconstruction.

Inputs: a fastMRI multi-coil HDF5 file (``kspace`` (S, C, H, W), optional
``mask`` (W,) or (H, W), optional ``ismrmrd_header`` with the recon size) or a
BART array (``NAME.cfl`` + ``NAME.hdr``, one 2-D slice, coils in dimension 3).

The mask, in order of precedence: ``mask_file`` (+ ``mask_name``); a generated
one (``mask_family`` at ``acceleration``, key ``mask_seed``: retrospective
undersampling of a fully sampled scan); the file's own ``mask``; else the
samples that are non-zero in any coil of any slice (how BART and most scanners
store undersampled data). A mask that claims samples where every coil of every
slice is exactly zero does not belong to the data and is refused.

Coil sensitivities (``maps``): ``espirit`` (the default;
:func:`metajax.operators.espirit` on the largest fully sampled centre block,
:func:`~metajax.operators.calibration_shape`, at most 24 × 24), ``acs`` (the fast
low-resolution estimate :func:`~metajax.operators.acs_maps`), or ``maps_file``
(a BART array or an HDF5 file with ``maps`` (S, C, H, W)). ESPIRiT maps have unit
norm over coils, so the coil-combined image is on the scale of the
root-sum-of-squares image.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from metajax import masks as mask_io
from metajax._validation import as_binary_mask, open_hdf5
from metajax.data import kspace_from_cfl, load_fastmri, read_cfl
from metajax.engine.experiment import resolve_path
from metajax.operators import MultiCoilMRI, acs_maps, calibration_shape, espirit, espirit_kernel, ifft2c, rss

MAPS = ("espirit", "acs")


def is_bart(path: Path) -> bool:
    return path.suffix in (".cfl", ".hdr")


def is_multicoil_file(path: Path) -> bool:
    """A BART array, or an HDF5 file whose ``kspace`` is (S, C, H, W)."""
    if is_bart(path):
        return True
    f = open_hdf5("input", path)
    with f:
        return "kspace" in f and f["kspace"].ndim == 4


def read_scan(path: Path, slices=None) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int] | None, list[str]]:
    """``(kspace (S, C, H, W) complex64, the file's mask or None, recon size or None, notes)``."""
    if is_bart(path):
        kspace = kspace_from_cfl(read_cfl(path))[None]
        if slices is not None and list(slices) != [0, 1]:
            raise ValueError(f"`slices`: a BART array holds one slice; got {list(slices)}.")
        return kspace, None, None, ["BART array"]
    count = _slice_count(path)
    start, stop = (0, count) if slices is None else tuple(slices)
    if slices is not None and (len(slices) != 2 or not 0 <= start < stop <= count):
        raise ValueError(f"`slices` must be [start, stop) within the {count} slices; got {list(slices)}.")
    volume = load_fastmri(path, slice(start, stop), target_key=None)
    return volume.kspace, volume.mask, volume.recon_size, ["fastMRI multi-coil HDF5"]


def _slice_count(path: Path) -> int:
    f = open_hdf5("input", path)
    with f:
        return f["kspace"].shape[0]


def choose_mask(cfg, base: Path | None, kspace: np.ndarray, own_mask: np.ndarray | None) -> tuple[np.ndarray, str]:
    """``(mask (H, W) bool, where it came from)`` (module docstring), checked against the data."""
    shape = kspace.shape[-2:]
    if cfg.mask_file is not None:
        mask_path = resolve_path(cfg.mask_file, base)
        available = mask_io.load_masks(mask_path)
        if cfg.mask_name is None and len(available) > 1:
            raise ValueError(f"`mask_name`: {mask_path.name} holds several masks {sorted(available)}; name one.")
        if cfg.mask_name is not None and cfg.mask_name not in available:
            raise KeyError(f"`mask_name`: no mask {cfg.mask_name!r} in {mask_path.name}; available {sorted(available)}.")
        mask, origin = available[cfg.mask_name] if cfg.mask_name else next(iter(available.values())), "mask_file"
    elif cfg.mask_family is not None:
        if cfg.mask_family not in mask_io.FAMILIES:
            raise ValueError(f"`mask_family` must be one of {mask_io.FAMILIES}; got {cfg.mask_family!r}.")
        if not cfg.acceleration >= 1:
            raise ValueError(f"`acceleration` must be ≥ 1; got {cfg.acceleration}.")
        mask = np.asarray(mask_io.family_mask(jax.random.key(cfg.mask_seed), cfg.mask_family, shape,
                                              1.0 / cfg.acceleration))
        origin = f"generated {cfg.mask_family} {cfg.acceleration:g}× (seed {cfg.mask_seed})"
    elif own_mask is not None:
        mask = np.broadcast_to(own_mask[None, :], shape) if own_mask.ndim == 1 else own_mask
        origin = "the file's mask"
    else:
        mask = np.any(kspace != 0, axis=(0, 1))
        origin = "the file's non-zero samples" + (" (fully sampled)" if mask.all() else "")
    mask = np.asarray(as_binary_mask("mask", np.asarray(mask)))
    if mask.shape != shape:
        raise ValueError(f"mask shape {mask.shape} ({origin}) does not match the k-space images {shape}.")
    empty = mask & ~np.any(kspace != 0, axis=(0, 1))
    if empty.sum() > 0.01 * mask.sum():
        raise ValueError(f"the mask ({origin}) samples {int(empty.sum())} of its {int(mask.sum())} points where "
                         "every coil of every slice is zero: it is not the mask these data were acquired with.")
    return mask, origin


def estimate_maps(kspace: np.ndarray, mask: np.ndarray, method: str = "espirit", log=print) -> np.ndarray:
    """(S, C, H, W) complex64 sensitivities of every slice from its calibration centre."""
    if method not in MAPS:
        raise ValueError(f"`maps` must be one of {MAPS} (or give maps_file=…); got {method!r}.")
    calib = calibration_shape(mask)
    out, tic = [], time.perf_counter()
    for s in range(len(kspace)):
        k = jnp.asarray(kspace[s])
        maps = espirit(k, calib, kernel=espirit_kernel(calib)) if method == "espirit" else acs_maps(k, calib)
        out.append(np.asarray(maps, np.complex64))
        log(f"{method} maps of slice {s + 1} of {len(kspace)} from a {calib[0]}×{calib[1]} calibration centre "
            f"({time.perf_counter() - tic:.1f} s)")
    return np.stack(out)


def read_maps(path: Path, like: np.ndarray) -> np.ndarray:
    """Sensitivities from a BART array (one slice) or an HDF5 ``maps`` dataset, shaped like ``like``."""
    if is_bart(path):
        maps = kspace_from_cfl(read_cfl(path))[None]
    else:
        f = open_hdf5("maps_file", path)
        with f:
            if "maps" not in f:
                raise KeyError(f"`maps_file`: {path.name} has no `maps` dataset; keys: {sorted(f.keys())}.")
            maps = np.asarray(f["maps"][()])
    if maps.shape != like.shape:
        raise ValueError(f"`maps_file`: maps of shape {maps.shape} do not match the k-space {like.shape}.")
    if not np.all(np.isfinite(maps)):
        raise ValueError(f"`maps_file`: {path.name} holds NaN or Inf values.")
    return maps.astype(np.complex64)


def scales(kspace: np.ndarray, mask: np.ndarray, maps: np.ndarray, scale: float = 0.0) -> np.ndarray:
    """(S,) per-slice divisors: the maximum of the coil-combined zero-filled magnitude ``|A^H y|`` (or ``scale``)."""
    if scale:
        return np.full(len(kspace), scale, np.float32)
    peaks = np.array([float(jnp.max(jnp.abs(MultiCoilMRI(mask, m).adjoint(jnp.asarray(k)))))
                      for k, m in zip(kspace, maps)], np.float32)
    if np.any(peaks <= 0):
        raise ValueError("`scale`: slices with an all-zero zero-filled image cannot be scaled (give scale=…).")
    return peaks


def rss_zero_filled(kspace: np.ndarray) -> np.ndarray:
    """(S, H, W) float32 root-sum-of-squares of the zero-filled coil images."""
    return np.stack([np.asarray(rss(ifft2c(jnp.asarray(k)))) for k in kspace]).astype(np.float32)


def reconstruct(model, kspace, mask, maps, slice_scales, log=print) -> np.ndarray:
    """(S, H, W) complex64 reconstructions, slice by slice, in the input's units."""
    fn = jax.jit(lambda m, y, s: m(MultiCoilMRI(mask, s), y, 0))
    out, tic = [], time.perf_counter()
    for i in range(len(kspace)):
        x = fn(model, jnp.asarray(kspace[i]) / slice_scales[i], jnp.asarray(maps[i]))
        out.append(np.asarray(x) * slice_scales[i])
        log(f"reconstructed slice {i + 1} of {len(kspace)} ({time.perf_counter() - tic:.1f} s)")
    return np.stack(out).astype(np.complex64)
