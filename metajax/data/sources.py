"""Image sources: the embedded default brain slices, NIfTI volumes, image folders.

All loaders return NumPy float32 stacks (slices, H, W) and never resize, crop or
drop anything silently; :func:`normalize_per_slice` scales each slice to max 1.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

from metajax._validation import check_finite, check_positive_int, check_shape2d, require_dir, require_file

TEMPLATE_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
# Axial planes of the 1 mm template that cross the brain (inferior cerebellum to vertex).
_AXIAL_RANGE = (40, 141)


def slice_indices(name: str, slices, count: int) -> np.ndarray:
    """The slice numbers that ``slices`` (None: all, an int, a ``slice`` or a sequence of ints) selects among
    ``count``, checked: in range (negative numbers count from the end), no repeats, at least one."""
    if slices is None:
        return np.arange(count)
    if isinstance(slices, slice):
        chosen = np.arange(count)[slices]
    else:
        values = np.atleast_1d(np.asarray(slices))
        if values.ndim != 1 or not (np.issubdtype(values.dtype, np.integer) and values.dtype != bool):
            raise TypeError(f"`{name}` must be None, an int, a slice or a sequence of ints; got {slices!r}.")
        bad = values[(values < -count) | (values >= count)]
        if bad.size:
            raise IndexError(f"`{name}`: slice(s) {bad[:5].tolist()} out of range for {count} slices.")
        chosen = values % count
        if len(np.unique(chosen)) != len(chosen):
            raise ValueError(f"`{name}` selects some slices more than once: {np.asarray(slices).tolist()}.")
    if chosen.size == 0:
        raise ValueError(f"`{name}` = {slices!r} selects no slice of {count}.")
    return chosen


def normalize_per_slice(images) -> np.ndarray:
    """Scale each (H, W) slice of a real (slices, H, W) stack to maximum 1.

    Raises on slices whose maximum is not positive (empty slices would become
    NaN); select non-empty slices first.
    """
    images = np.asarray(images)
    if images.ndim != 3 or not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"`images` must be a real (slices, H, W) stack; got {images.shape} {images.dtype}.")
    check_finite("images", images)
    peaks = images.max(axis=(1, 2))
    empty = np.flatnonzero(peaks <= 0)
    if empty.size:
        raise ValueError(
            f"`images`: slices {empty[:10].tolist()} have no positive value and cannot be "
            "normalised to max 1; drop them first."
        )
    return (images / peaks[:, None, None]).astype(np.float32)


def template_path() -> Path:
    """Path of the ICBM152 2009a T1 template inside the installed ``nilearn`` package."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("The default data needs the `nilearn` package: `pip install nilearn`.")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / TEMPLATE_FILE
    return require_file("template", path)


@functools.lru_cache(maxsize=4)
def _default_images(num_slices: int, size: int) -> np.ndarray:
    from skimage.transform import resize

    volume = load_nifti(template_path(), axis=2)  # (z, x, y), uint8 intensities
    planes = np.linspace(*_AXIAL_RANGE, num_slices).round().astype(int)
    slices = np.rot90(volume[planes], k=1, axes=(1, 2))  # (z, y, x) with anterior at the top
    h, w = slices.shape[1:]
    side = max(h, w)
    pad = ((0, 0), ((side - h) // 2, side - h - (side - h) // 2), ((side - w) // 2, side - w - (side - w) // 2))
    square = np.pad(slices, pad)
    resized = resize(square, (num_slices, size, size), order=1, anti_aliasing=True, preserve_range=True)
    return normalize_per_slice(resized.astype(np.float32))


def default_images(num_slices: int = 32, size: int = 256) -> np.ndarray:
    """The embedded default dataset: real brain MR slices, (num_slices, size, size) float32.

    Axial slices of the ICBM 2009a nonlinear symmetric T1-weighted template
    (MNI152; Fonov et al., NeuroImage 2011; average of 152 real T1 scans, 1 mm),
    as shipped inside the ``nilearn`` wheel, so nothing is downloaded. Planes
    z = 40..140 are sampled evenly, rotated to radiological display, zero-padded
    to a square field of view, resized bilinearly to ``size`` and normalised per
    slice to max 1. Licence: the template's copyright notice (McConnell Brain
    Imaging Centre, MNI, McGill University) permits use, copying and
    redistribution with the notice retained; see ``docs/data.md``.
    """
    num_slices = check_positive_int("num_slices", num_slices)
    size = check_positive_int("size", size)
    distinct = _AXIAL_RANGE[1] - _AXIAL_RANGE[0]
    if num_slices > distinct:
        raise ValueError(f"`num_slices` must be at most {distinct} (the template's distinct axial planes "
                         f"{_AXIAL_RANGE[0]}..{_AXIAL_RANGE[1] - 1}); got {num_slices}.")
    return _default_images(num_slices, size).copy()


def load_nifti(path, axis: int = 2, slices=None) -> np.ndarray:
    """Slices of a 3-D NIfTI volume (e.g. BraTS ``*_t1.nii.gz``) as (slices, H, W) float32.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        axis: volume axis to slice along (2 = axial for RAS-oriented volumes).
        slices: optional index/slice/sequence selecting planes along ``axis``.
    """
    import nibabel as nib

    path = require_file("path", path)
    if axis not in (0, 1, 2):
        raise ValueError(f"`axis` must be 0, 1 or 2; got {axis!r}.")
    try:
        volume = np.asarray(nib.load(str(path)).dataobj)
    except Exception as error:  # nibabel's ImageFileError, gzip/EOF errors of a truncated file
        raise ValueError(f"`path`: {str(path)!r} is not a readable NIfTI volume ({error}).") from None
    if volume.ndim != 3:
        raise ValueError(f"`path`: {path.name} holds a {volume.ndim}-D volume {volume.shape}; expected 3-D.")
    stack = np.moveaxis(volume, axis, 0)
    stack = stack[slice_indices("slices", slices, len(stack))].astype(np.float32)
    check_finite(f"volume in {path.name}", stack)
    return stack


_IMAGE_SUFFIXES = (".png", ".tif", ".tiff")


def load_image_folder(path, as_gray: bool = False) -> np.ndarray:
    """All PNG/TIFF images of a folder, sorted by file name, as (N, H, W) float32.

    Intensities are kept as stored (e.g. 0..255 for 8-bit PNG). Colour images
    raise unless ``as_gray=True`` converts them to luminance (ITU-R 601-2).
    All images must share one size.
    """
    from PIL import Image

    folder = require_dir("path", path, "folder of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"`path`: no {'/'.join(_IMAGE_SUFFIXES)} images in {str(folder)!r}.")
    images, modes = [], {}
    for file in files:
        try:
            im = Image.open(file)
            im.load()
        except Exception as error:  # PIL's UnidentifiedImageError, truncated or corrupt files
            raise ValueError(f"`path`: {file.name} in {str(folder)!r} is not a readable image ({error}).") from None
        with im:
            if getattr(im, "n_frames", 1) > 1:
                raise ValueError(f"`path`: {file.name} holds {im.n_frames} pages; store one image per file "
                                 "(only single-page images are read, so that none is dropped).")
            if im.mode in ("RGB", "RGBA", "P", "LA", "CMYK"):
                if not as_gray:
                    raise ValueError(
                        f"`path`: {file.name} is a colour ({im.mode}) image; pass as_gray=True to convert."
                    )
                im = im.convert("L")
            modes.setdefault(im.mode, file.name)
            images.append(np.asarray(im, dtype=np.float32))
    if len(modes) > 1:
        raise ValueError(f"`path`: images in {str(folder)!r} have different pixel formats "
                         f"({', '.join(f'{m} e.g. {f}' for m, f in modes.items())}); their intensities are not "
                         "comparable. Convert them to one bit depth first.")
    shapes = {img.shape for img in images}
    if len(shapes) > 1:
        raise ValueError(f"`path`: images in {str(folder)!r} have different sizes {sorted(shapes)}.")
    stack = np.stack(images)
    check_finite(f"images in {folder.name}", stack)
    return stack


def center_crop(images, shape) -> np.ndarray:
    """Crop the centre (h, w) region of (..., H, W) images (fastMRI ``center_crop``)."""
    images = np.asarray(images)
    h, w = check_shape2d("shape", shape)
    if images.ndim < 2 or h > images.shape[-2] or w > images.shape[-1]:
        raise ValueError(f"`shape` {tuple(shape)} does not fit inside images of shape {images.shape}.")
    top = (images.shape[-2] - h) // 2
    left = (images.shape[-1] - w) // 2
    return images[..., top : top + h, left : left + w]
