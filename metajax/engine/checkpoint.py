"""Atomic checkpoints: ``eqx.tree_serialise_leaves`` to a temporary file, ``fsync``, then ``os.replace``.

A checkpoint ``checkpoints/step_XXXXXXXX.eqx`` holds the trained parameters and
the solver state (optimizer states, schedules, counters) after that many steps.
The PRNG key and the data order are functions of ``(trainer.seed, step)``, so
the step number is all a resumed run needs besides the two PyTrees. A run
killed at any moment leaves either the previous checkpoint or the new one,
never a partial file under a checkpoint name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import equinox as eqx

_NAME = re.compile(r"^step_(\d{8})\.eqx$")


def write_atomic(path: Path, tree) -> None:
    """Serialise ``tree`` to ``path`` so that ``path`` is either absent/old or complete."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        eqx.tree_serialise_leaves(f, tree)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def path_of(directory: Path, step: int) -> Path:
    return Path(directory) / f"step_{step:08d}.eqx"


def save(directory: Path, step: int, tree, keep: int = 2) -> Path:
    """Write ``directory/step_{step}.eqx`` atomically and delete all but the newest ``keep`` checkpoints."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    path = path_of(directory, step)
    write_atomic(path, tree)
    for old in list_steps(directory)[:-keep]:
        path_of(directory, old).unlink(missing_ok=True)
    return path


def clear(directory: Path) -> None:
    """Delete every checkpoint in ``directory``."""
    for step in list_steps(directory):
        path_of(directory, step).unlink()


def list_steps(directory: Path) -> list[int]:
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(m.group(1)) for p in directory.iterdir() if (m := _NAME.match(p.name)))


def latest(directory: Path) -> tuple[int, Path] | None:
    """``(step, path)`` of the newest checkpoint in ``directory``, or None."""
    steps = list_steps(directory)
    return (steps[-1], path_of(directory, steps[-1])) if steps else None


def load(path: Path, like):
    """Deserialise a checkpoint into the structure (and dtypes) of ``like``."""
    return eqx.tree_deserialise_leaves(path, like)
