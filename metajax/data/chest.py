"""The embedded chest MR data: 100 real 256×256 chest/cardiac images and the pseudo-radial masks (package data).

``metajax/data/chest/chest100.h5`` (12.9 MiB) holds the images of the Deep
ADMM-Net repository's ``data/ChestTrain`` (real-valued magnitude images,
normalised per slice to max 1; float32, stored losslessly with gzip) and its
pseudo-radial masks ``radial_10`` … ``radial_50`` (sampled fractions 0.102,
0.202, 0.302, 0.401, 0.500) in centred k-space layout. MIT licence: see
``metajax/data/chest/LICENSE``, installed beside the file. It is written by
``python tools/make_chest_package_data.py`` from the project's shared copy.

These are the images and masks of the CS-MRI literature's chest benchmark
(ADMM-Net, ISTA-Net+): slices 0–69 train, 70–84 validate, 85–99 test is the
split metajax uses by default. The k-space of the literature is simulated from
the magnitude image (``fft2c(x)``, no noise), which is exactly what
:class:`~metajax.operators.SingleCoilMRI` computes, so only images are stored.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import h5py
import numpy as np

from metajax._validation import require_file

NUM_IMAGES = 100
RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5)


def chest_file() -> Path:
    """Path of the installed ``chest100.h5``."""
    return require_file("chest data", Path(str(resources.files("metajax.data") / "chest" / "chest100.h5")))


@functools.lru_cache(maxsize=1)
def _images() -> np.ndarray:
    with h5py.File(chest_file(), "r") as f:
        return np.asarray(f["images"][()], np.float32)


def chest_images() -> np.ndarray:
    """The 100 chest images, real (100, 256, 256) float32, each with maximum 1."""
    return _images().copy()


def chest_masks() -> dict[str, np.ndarray]:
    """``{"radial_10": bool (256, 256), …, "radial_50": …}``: the pseudo-radial masks, centred layout."""
    with h5py.File(chest_file(), "r") as f:
        return {name: np.asarray(d[()], bool) for name, d in f["masks"].items()}


def pseudo_radial_mask(ratio: float) -> np.ndarray:
    """The pseudo-radial (256, 256) mask of ``ratio`` ∈ {0.1, 0.2, 0.3, 0.4, 0.5} (its sampled fraction is within
    0.003 of ``ratio``)."""
    name = f"radial_{round(100 * float(ratio))}"
    masks = chest_masks()
    if name not in masks or abs(100 * float(ratio) - round(100 * float(ratio))) > 1e-6:
        raise ValueError(f"`ratio`: the pseudo-radial masks exist for ratios {list(RATIOS)}; got {ratio!r}.")
    return masks[name]
