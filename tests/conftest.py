import os
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from metajax import data, masks
from metajax.operators import SingleCoilMRI

SHARED_DATA = Path(os.environ.get("METAJAX_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture
def x64():
    """Run the test body with float64 enabled (locally; the library never sets it globally)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def shared_file():
    """Path of a file in ../shared/data, skipping the test cleanly when it is absent."""

    def get(name: str) -> Path:
        path = SHARED_DATA / name
        if not path.is_file():
            pytest.skip(f"shared data file {path} is absent (set METAJAX_SHARED_DATA to its folder)")
        return path

    return get


def brain_mri(num_slices: int, size: int, ratio: float):
    """Real brain slices (complex128), a radial single-coil operator and its noiseless measurements."""
    with jax.enable_x64(True):
        images = jnp.asarray(data.default_images(num_slices, size), jnp.complex128)
        op = SingleCoilMRI(masks.radial(jax.random.key(0), (size, size), ratio))
        return images, op, op(images)
