import os
from pathlib import Path

import jax
import pytest

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
