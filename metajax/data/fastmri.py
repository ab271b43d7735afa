"""fastMRI-style HDF5 volumes (single- and multi-coil).

A file holds ``kspace`` — (slices, H, W) single-coil or (slices, coils, H, W)
multi-coil, complex, centred layout — the ground truth ``reconstruction_esc``
(single-coil) or ``reconstruction_rss`` (multi-coil), and an ``ismrmrd_header``
XML string whose ``encoding/reconSpace/matrixSize`` gives the reconstruction size.
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET

import h5py
import numpy as np

from metajax._validation import check_finite, open_hdf5, require_file
from metajax.data.sources import slice_indices

_ISMRMRD_NS = "{http://www.ismrm.org/ISMRMRD}"


@dataclasses.dataclass(frozen=True)
class FastMRIVolume:
    """One fastMRI volume.

    Attributes:
        kspace: (S, H, W) or (S, C, H, W) complex64 centred k-space.
        target: (S, h, w) float32 ground truth, or None if not requested.
        recon_size: (h, w) from the ISMRMRD header's ``reconSpace`` (x, y), as fastMRI
            reads it, or None when the file has no header.
        attrs: the file's root attributes (``max``, ``norm``, ``acquisition``, ...).
        mask: the file's ``mask`` dataset as booleans — fastMRI's (W,) column mask or an (H, W) mask — or None.
    """

    kspace: np.ndarray
    target: np.ndarray | None
    recon_size: tuple[int, int] | None
    attrs: dict
    mask: np.ndarray | None = None

    @property
    def multicoil(self) -> bool:
        """True for multi-coil k-space (S, C, H, W), False for single-coil (S, H, W)."""
        return self.kspace.ndim == 4


def _recon_size(header: bytes | str, path) -> tuple[int, int]:
    try:
        size = ET.fromstring(header).find(f"{_ISMRMRD_NS}encoding/{_ISMRMRD_NS}reconSpace/{_ISMRMRD_NS}matrixSize")
        return int(size.find(f"{_ISMRMRD_NS}x").text), int(size.find(f"{_ISMRMRD_NS}y").text)
    except (ET.ParseError, AttributeError, TypeError, ValueError) as error:
        raise ValueError(f"`path`: the ismrmrd_header of {str(path)!r} is malformed: it needs an XML "
                         f"encoding/reconSpace/matrixSize with integer x and y ({type(error).__name__}: {error}).") \
            from None


def _dataset(f: h5py.File, key: str, path) -> h5py.Dataset:
    if key not in f:
        raise KeyError(f"`path`: {str(path)!r} has no dataset {key!r}; available keys: {sorted(f.keys())}.")
    return f[key]


def load_fastmri(path, slices=None, target_key: str | None = "auto") -> FastMRIVolume:
    """Read a fastMRI HDF5 file.

    Args:
        path: ``.h5`` file path.
        slices: optional index/slice/sequence of slice numbers (default: all).
        target_key: dataset holding the ground truth; ``"auto"`` picks
            ``reconstruction_esc`` for single-coil and ``reconstruction_rss`` for
            multi-coil k-space; ``None`` reads no target (e.g. challenge test files).
    """
    path = require_file("path", path)
    f = open_hdf5("path", path)
    with f:
        kspace_ds = _dataset(f, "kspace", path)
        if kspace_ds.ndim not in (3, 4) or not np.issubdtype(kspace_ds.dtype, np.complexfloating):
            raise ValueError(
                f"`path`: kspace in {path.name} must be complex (slices, [coils,] H, W); "
                f"got shape {kspace_ds.shape} dtype {kspace_ds.dtype}."
            )
        if kspace_ds.shape[0] == 0:
            raise ValueError(f"`path`: kspace in {path.name} holds no slices (shape {kspace_ds.shape}).")
        chosen = slice_indices("slices", slices, kspace_ds.shape[0])
        order = np.argsort(chosen)  # HDF5 reads increasing indices; the caller's order is restored

        def read(dataset, dtype):
            values = np.empty((len(chosen), *dataset.shape[1:]), dtype)
            values[order] = dataset[np.sort(chosen)]
            return values

        kspace = read(kspace_ds, np.complex64)
        check_finite(f"kspace in {path.name}", kspace)
        if target_key == "auto":
            target_key = "reconstruction_rss" if kspace_ds.ndim == 4 else "reconstruction_esc"
        target = None
        if target_key is not None:
            target_ds = _dataset(f, target_key, path)
            if target_ds.ndim != 3 or target_ds.shape[0] != kspace_ds.shape[0]:
                raise ValueError(f"`path`: {target_key} in {path.name} has shape {target_ds.shape}; expected "
                                 f"({kspace_ds.shape[0]}, h, w), one image per k-space slice.")
            target = read(target_ds, np.float32)
            check_finite(f"{target_key} in {path.name}", target)
        recon_size = _recon_size(f["ismrmrd_header"][()], path) if "ismrmrd_header" in f else None
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
        mask = _mask(f, kspace.shape[-2:], path) if "mask" in f else None
    return FastMRIVolume(kspace=kspace, target=target, recon_size=recon_size, attrs=attrs, mask=mask)


def _mask(f: h5py.File, shape: tuple[int, int], path) -> np.ndarray:
    mask = np.asarray(f["mask"][()])
    if mask.shape not in ((shape[1],), tuple(shape)) or not np.isin(np.unique(mask), (0, 1)).all():
        raise ValueError(f"`path`: mask in {path.name} must be 0/1 of shape ({shape[1]},) (fastMRI's column mask) or "
                         f"{tuple(shape)}; got shape {mask.shape} with values {np.unique(mask)[:5].tolist()}.")
    return mask.astype(bool)

