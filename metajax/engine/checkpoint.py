"""Atomic checkpoints: ``eqx.tree_serialise_leaves`` to a temporary file, ``fsync``, then ``os.replace``.

A checkpoint ``checkpoints/step_XXXXXXXX.eqx`` holds the trained parameters and
the solver state (optimizer states, schedules, counters) after that many steps.
The PRNG key and the data order are functions of ``(trainer.seed, step)``, so
the step number is all a resumed run needs besides the two PyTrees. A run
killed at any moment leaves either the previous checkpoint or the new one,
never a partial file under a checkpoint name; a write that fails (a full or
read-only disk) removes its temporary file and raises.

Every checkpoint has a ``.sha256`` sidecar, written after it: :func:`latest`
only offers checkpoints whose sidecar exists (one killed between the two
writes is incomplete), and :func:`load` refuses a file whose bytes no longer
match (a corrupted or truncated checkpoint is named, never used).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

import equinox as eqx

_NAME = re.compile(r"^step_(\d{8})\.eqx$")


class CheckpointError(RuntimeError):
    """A checkpoint or model file that cannot be written or read back as expected (names the file)."""


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"could not write {str(path)!r}: {error}") from None


def write_atomic(path: Path, tree) -> str:
    """Serialise ``tree`` to ``path`` so that ``path`` is either absent/old or complete; returns its SHA-256."""
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, tree)
    data = buffer.getvalue()
    _write_bytes_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def write_text_atomic(path: Path, text: str) -> None:
    _write_bytes_atomic(path, text.encode())


def path_of(directory: Path, step: int) -> Path:
    return Path(directory) / f"step_{step:08d}.eqx"


def save(directory: Path, step: int, tree, keep: int = 2) -> Path:
    """Write ``directory/step_{step}.eqx`` atomically and delete all but the newest ``keep`` checkpoints."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    path = path_of(directory, step)
    write_text_atomic(_sidecar(path), write_atomic(path, tree))
    for old in list_steps(directory)[:-keep]:
        path_of(directory, old).unlink(missing_ok=True)
        _sidecar(path_of(directory, old)).unlink(missing_ok=True)
    return path


def _sidecar(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + ".sha256")


def clear(directory: Path) -> None:
    """Delete every checkpoint in ``directory``."""
    directory = Path(directory)
    if directory.is_dir():
        for p in directory.iterdir():
            if _NAME.match(p.name.removesuffix(".sha256")):
                p.unlink()


def list_steps(directory: Path) -> list[int]:
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(m.group(1)) for p in directory.iterdir()
                  if (m := _NAME.match(p.name)) and _sidecar(p).is_file())


def latest(directory: Path) -> tuple[int, Path] | None:
    """``(step, path)`` of the newest checkpoint in ``directory``, or None."""
    steps = list_steps(directory)
    return (steps[-1], path_of(directory, steps[-1])) if steps else None


def load(path: Path, like):
    """Deserialise a checkpoint (or ``model.eqx``) into the structure (and dtypes) of ``like``; a checkpoint's
    bytes must match its ``.sha256`` sidecar."""
    path = Path(path)
    data = path.read_bytes()
    sidecar = _sidecar(path)
    if sidecar.is_file() and hashlib.sha256(data).hexdigest() != sidecar.read_text().strip():
        raise CheckpointError(f"{str(path)!r} is corrupted: its bytes do not match {sidecar.name}. Delete both "
                              "to resume from the previous checkpoint, or start a new run directory.")
    try:
        return eqx.tree_deserialise_leaves(io.BytesIO(data), like)
    except Exception as error:  # truncated file, or parameters of another shape/structure
        raise CheckpointError(f"{str(path)!r} does not hold parameters of this configuration's model "
                              f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). Was "
                              "it written by another configuration or truncated?") from None
