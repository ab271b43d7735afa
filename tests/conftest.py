import os
import shutil
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from metajax import data, masks
from metajax.operators import SingleCoilMRI

def pytest_configure(config):
    """One JAX compilation cache for the whole run (a fresh temporary folder, shared by the xdist workers and the
    console-script subprocesses they start): the same program compiled by several tests is compiled once. It
    starts empty every run, so the suite's time is a fresh clone's."""
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="metajax-test-jax-cache-")
        config._metajax_jax_cache = os.environ["JAX_COMPILATION_CACHE_DIR"]
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def pytest_unconfigure(config):
    folder = getattr(config, "_metajax_jax_cache", None)
    if folder is not None and not hasattr(config, "workerinput"):  # the process that made it removes it
        shutil.rmtree(folder, ignore_errors=True)


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
