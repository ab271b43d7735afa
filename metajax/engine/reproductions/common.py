"""What every reproduction shares: engine configs composed from overrides, result files, timing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from metajax.engine.config import register
from metajax.engine.runner import machine_info


def engine_config(overrides, config_name: str = "run"):
    """The engine's config (``metajax-train``'s ``run`` or ``metajax-adapt``'s ``adapt``) composed from Hydra
    ``overrides`` exactly as on the command line, inside or outside a running Hydra app."""
    from hydra import compose, initialize
    from hydra.core.global_hydra import GlobalHydra

    register()
    if GlobalHydra.instance().is_initialized():
        return compose(config_name, overrides=list(overrides))
    with initialize(version_base=None):
        return compose(config_name, overrides=list(overrides))


def ratio_list(ratios) -> str:
    return "[" + ",".join(f"{float(r):g}" for r in ratios) + "]"


class Stopwatch:
    """``with Stopwatch() as w: ...`` then ``w.seconds`` (wall clock)."""

    def __enter__(self):
        self.tic = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.tic


def write_results(out_dir: Path, title: str, sections: list[tuple[str, str]], data: dict, config) -> str:
    """``results.md`` (the title and the ``(heading, markdown)`` sections) and ``results.json`` (``data``, the
    experiment's ``config`` — a config node or dataclass — and the machine); returns the markdown."""
    text = f"# {title}\n\n" + "\n".join(f"## {heading}\n\n{body}" for heading, body in sections)
    (out_dir / "results.md").write_text(text)
    record = {**data, "config": OmegaConf.to_container(OmegaConf.create(config)), "machine": machine_info()}
    (out_dir / "results.json").write_text(json.dumps(record, indent=2, default=_jsonable))
    return text


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
