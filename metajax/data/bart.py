"""BART's ``.cfl`` / ``.hdr`` array files (Uecker et al., the Berkeley Advanced Reconstruction Toolbox).

A BART array is two files: ``NAME.hdr``, text whose line after ``# Dimensions``
lists the dimensions (at least the array's rank, trailing ones allowed), and
``NAME.cfl``, the complex64 values in column-major (Fortran) order. BART's
dimension 0–2 are the readout and phase-encoding axes, 3 the coils (``COIL_DIM``);
its Fourier transforms are centred, the layout :mod:`metajax.operators.fourier` uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from metajax._validation import check_finite


def _base(path) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".cfl", ".hdr") else path


def read_cfl(path) -> np.ndarray:
    """The complex64 array of ``path`` (``NAME``, ``NAME.cfl`` or ``NAME.hdr``), in BART's dimension order with
    trailing singleton dimensions dropped (at least 1-D)."""
    base = _base(path)
    hdr, cfl = base.with_suffix(".hdr"), base.with_suffix(".cfl")
    for f in (hdr, cfl):
        if not f.is_file():
            raise FileNotFoundError(f"`path`: BART file {str(f)!r} does not exist (a BART array needs both .hdr and "
                                    ".cfl).")
    lines = hdr.read_text().splitlines()
    try:
        dims = [int(v) for v in lines[lines.index("# Dimensions") + 1].split()]
    except (ValueError, IndexError):
        raise ValueError(f"`path`: {hdr.name} is not a BART header: it needs a '# Dimensions' line followed by "
                         "integer dimensions.") from None
    if not dims or any(d < 1 for d in dims):
        raise ValueError(f"`path`: {hdr.name} lists dimensions {dims}; each must be a positive integer.")
    count = int(np.prod(dims))
    size = cfl.stat().st_size
    if size != count * 8:
        raise ValueError(f"`path`: {cfl.name} holds {size} bytes but the header's dimensions {dims} need "
                         f"{count * 8} (complex64).")
    while len(dims) > 1 and dims[-1] == 1:
        dims.pop()
    data = np.fromfile(cfl, np.complex64, count).reshape(dims, order="F")
    check_finite(f"values of {cfl.name}", data)
    return data


def write_cfl(path, array) -> None:
    """Write ``array`` (complex; BART's dimension order) as ``NAME.hdr`` + ``NAME.cfl``."""
    array = np.asarray(array)
    if not (np.issubdtype(array.dtype, np.complexfloating) or np.issubdtype(array.dtype, np.floating)):
        raise TypeError(f"`array` must be real or complex numbers; got dtype {array.dtype}.")
    base = _base(path)
    dims = list(array.shape) + [1] * max(0, 16 - array.ndim)
    base.with_suffix(".hdr").write_text("# Dimensions\n" + " ".join(str(d) for d in dims) + " \n")
    np.asarray(array, np.complex64).ravel(order="F").tofile(base.with_suffix(".cfl"))


def kspace_from_cfl(array: np.ndarray) -> np.ndarray:
    """BART multi-coil k-space (X, Y, Z, coils, …) of one 2-D slice as metajax's (C, H, W): the two
    non-singleton spatial axes of dimensions 0–2 become (H, W)."""
    array = np.asarray(array)
    dims = list(array.shape) + [1] * (4 - array.ndim)
    if any(d != 1 for d in dims[4:]):
        raise ValueError(f"`array`: BART dimensions {dims} hold more than one slice/echo/frame beyond the coils "
                         "(dimension 3); select one first.")
    spatial = [i for i in range(3) if dims[i] > 1]
    if len(spatial) != 2:
        raise ValueError(f"`array`: BART dimensions {dims} must have exactly two spatial axes (of dimensions 0–2) "
                         "larger than 1, one 2-D slice.")
    volume = array.reshape(dims[:4])
    squeezed = volume.reshape([dims[i] for i in spatial] + [dims[3]])
    return np.ascontiguousarray(np.moveaxis(squeezed, -1, 0))
