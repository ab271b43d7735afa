"""``metajax-reproduce experiment=NAME``: the three papers' experiments, one command each.

=====================  ==========================================================  ================================
``experiment=``        what                                                        module
=====================  ==========================================================  ================================
``bian``               Bian et al.: meta-training across radial ratios, ω-only      :mod:`.bian`
                       adaptation to unseen radial and Cartesian masks
``correlations``       Arora & Batra: the learned N × M task-correlation matrix      :mod:`.correlations`
                       σ(α), θ(α_j) vs uniform weights, MLM vs autodiff memory
``linear_gaussian``    Meta-Prior, linear Gaussian case: learned vs Bayes weights,   :mod:`.linear_gaussian`
                       the Ker(A) component under fine-tuning (Theorem 3.1)
``multitask``          Meta-Prior: PDNet meta-trained on four restoration tasks,      :mod:`.multitask`
                       fine-tuned on ×2 super-resolution and ×4 MRI
``adaptation``         shipped chest models adapted to shifts (anatomy, mask family,   :mod:`.adaptation`
                       noise): self-supervised, few-shot, meta vs conventional start
=====================  ==========================================================  ================================

Each name is the CPU preset (2-core CPU, well within three hours); ``NAME_paper`` is the paper-sized preset
(GPU). Fields are set on the command line (``experiment.adapt_steps=30``); the run directory is Hydra's
(``hydra.run.dir=DIR``) and receives ``results.md``, ``results.json`` and the figures. Runs are resumable: the
same command continues an interrupted run.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List

from omegaconf import MISSING, OmegaConf

EXPERIMENTS = ("bian", "correlations", "linear_gaussian", "multitask", "adaptation")


def module(name: str):
    """The module of experiment ``name`` (imported on use)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"`experiment.name` must be one of {EXPERIMENTS}; got {name!r}.")
    return importlib.import_module(f"metajax.engine.reproductions.{name}")


@dataclass
class ReproduceConfig:
    defaults: List[Any] = field(default_factory=lambda: ["_self_", {"experiment": "bian"}])
    experiment: Any = MISSING


def register() -> None:
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="reproduce", node=ReproduceConfig)
    for name in EXPERIMENTS:
        experiment = module(name)
        cpu = OmegaConf.structured(experiment.Config)
        cs.store(group="experiment", name=name, node=cpu)
        cs.store(group="experiment", name=f"{name}_paper", node=OmegaConf.merge(cpu, experiment.PAPER_SIZE))


def run(cfg, out_dir: Path, base_dir: Path | None = None, log=print) -> str:
    """Run the experiment ``cfg`` (an ``experiment`` node) into ``out_dir``; returns the results markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return module(cfg.name).run(cfg, out_dir, base_dir, log)


def _main(cfg) -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from metajax.engine.experiment import ConfigError
    from metajax.engine.runner import TrainingError

    try:
        text = run(cfg.experiment, Path(HydraConfig.get().runtime.output_dir), Path(hydra.utils.get_original_cwd()),
                   log=lambda m: print(m, flush=True))
    except (ConfigError, FileNotFoundError, TrainingError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    print(text)


def reproduce_main() -> None:
    import hydra

    register()
    hydra.main(version_base=None, config_name="reproduce")(_main)()
