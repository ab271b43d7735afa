"""Structured Hydra configs of the training engine, registered in Hydra's ConfigStore.

Every node is a dataclass, so Hydra rejects a misspelled key or a value of the
wrong type at start-up with a message naming the key (``trainer.steps=abc``
fails before anything runs). Groups and their options:

- ``data``: ``default`` (embedded brain slices), ``chest`` (the shared chest
  images, fastMRI layout), ``fastmri`` / ``nifti`` / ``folder`` (set ``data.path``).
- ``tasks``: ``radial`` (one ``masks.radial`` key per task), ``cartesian``,
  ``variable_density``, ``shared_radial`` (the pseudo-radial masks of
  ``../shared/data/radial_masks.h5``).
- ``model``: ``loa`` (metajax's default LOA), ``loa_paper`` (the paper's
  constants), ``pdnet``.
- ``solver``: ``penalty``, ``implicit``, ``maml``, ``fomaml``, ``task_weights``,
  ``conventional`` (plain supervised training of the same network, κ = 1).
- ``trainer``, ``eval``: one option each (``default``); set fields directly.
- ``preset``: ``ci`` (seconds), ``quick`` (CPU minutes), ``paper`` (GPU hours);
  a preset overrides fields of the groups above, and command-line overrides
  come last.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class DataConfig:
    source: str = "default"  # default | fastmri | nifti | folder
    path: Optional[str] = None  # file (fastmri, nifti) or folder; relative paths are from the launch directory
    num_slices: int = 24  # default source: slices taken from the template
    size: int = 128  # default source: image size; others: centre crop to size × size (0: keep)
    shuffle: bool = False  # permute the slices (fixed permutation, key 0) before taking the ranges
    train: List[int] = field(default_factory=lambda: [0, 16])  # [start, stop) slice ranges
    val: List[int] = field(default_factory=lambda: [16, 20])
    test: List[int] = field(default_factory=lambda: [20, 24])


@dataclass
class TasksConfig:
    mask: str = "radial"  # radial | cartesian | equispaced | variable_density | file
    mask_file: Optional[str] = None  # mask=file: HDF5 with datasets f"{mask_prefix}{round(100·ratio)}"
    mask_prefix: str = "radial_"
    ratios: List[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4])
    crop: int = 0  # training crop size (random crops; 0: full images); evaluation always uses full images
    noise_std: float = 0.0  # σ of complex Gaussian k-space noise per real component


@dataclass
class ModelConfig:
    name: str = "loa"  # loa | loa_paper | pdnet
    phases: int = 5
    features: int = 4  # LOA: CNN kernels per layer; PDNet: channels
    layers: int = 3  # LOA CNN layers


@dataclass
class SolverConfig:
    name: str = "penalty"  # penalty | implicit | maml | fomaml | task_weights | conventional
    adjoint: str = "autodiff"  # autodiff | mlm: how the unrolled network is differentiated
    inner_steps: int = 1  # implicit / maml / task_weights
    inner_lr: float = 1e-5  # SGD step of the inner loop (the losses sum squared errors over pixels)
    lam: float = 1e-5  # penalty: λ₀; implicit: proximal λ
    delta: float = 1e-3  # penalty: δ₀
    delta_tol: float = 4.35e-6
    delta_decay: float = 0.95
    lam_growth: float = 1.001
    theta_steps: int = 3  # penalty: K θ-steps per round
    cg_iters: int = 10  # implicit
    per_task: bool = False  # conventional: one network per task (vmapped) instead of one joint network


@dataclass
class TrainerConfig:
    steps: int = 200  # training steps (gradient evaluations)
    batch: int = 2  # images per task per step (the same number from each task's validation split)
    lr: float = 1e-3  # Adam
    stair: bool = False  # add one phase at a time (Bian et al.): stage s trains the first s phases
    seed: int = 0
    devices: int = 0  # 0: all local devices; tasks are sharded over them
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 10
    progress: bool = True
    resume: bool = True  # resume from the last checkpoint in the run directory
    allow_config_change: bool = False  # resume even if the configuration changed
    inject_nan_at: int = -1  # testing: make the loss NaN at this step


@dataclass
class EvalConfig:
    split: str = "test"
    baselines: bool = False  # also zero-filled, TV (λ tuned on validation) and conventional training
    tv_weights: List[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3])
    tv_iterations: int = 200
    figure: bool = True
    figure_image: int = 0


@dataclass
class AdaptConfig:
    model_dir: str = MISSING  # run directory of a trained model (holds model.eqx and config.yaml)
    mode: str = "omega"  # omega: fit only task weights ω with θ frozen; finetune: fine-tune θ
    loss: str = "supervised"  # supervised | measurement
    images: int = 8  # training images of the new task used for adaptation
    steps: int = 50
    lr: float = 1e-2


_GROUPS = [{"data": "default"}, {"tasks": "radial"}, {"model": "loa"}, {"solver": "penalty"},
           {"trainer": "default"}, {"eval": "default"}]


@dataclass
class RunConfig:
    """The root config of ``metajax-train`` / ``-evaluate`` / ``-baselines``."""

    defaults: List[Any] = field(default_factory=lambda: ["_self_", *_GROUPS, {"preset": "quick"}])
    data: DataConfig = MISSING
    tasks: TasksConfig = MISSING
    model: ModelConfig = MISSING
    solver: SolverConfig = MISSING
    trainer: TrainerConfig = MISSING
    eval: EvalConfig = MISSING
    model_dir: Optional[str] = None  # evaluate: the trained run directory (default: the run directory itself)


@dataclass
class AdaptRunConfig(RunConfig):
    """The root config of ``metajax-adapt``: the new task comes from ``data``/``tasks``."""

    adapt: AdaptConfig = field(default_factory=AdaptConfig)


CHEST = "../shared/data/chest100_singlecoil.h5"

PRESETS = {
    "ci": {
        "data": {"num_slices": 8, "size": 32, "train": [0, 4], "val": [4, 6], "test": [6, 8]},
        "tasks": {"ratios": [0.2, 0.4]},
        "model": {"phases": 2, "features": 2, "layers": 2},
        "trainer": {"steps": 6, "batch": 1, "checkpoint_every": 2, "log_every": 2, "progress": False},
        "eval": {"tv_weights": [1e-3], "tv_iterations": 20},
    },
    "quick": {  # the data group decides the data (default: 24 template slices at 128², shuffled 16/4/4)
        "tasks": {"crop": 48},
        "model": {"phases": 5},
        "trainer": {"steps": 300, "batch": 1, "lr": 3e-3, "checkpoint_every": 50},
        "eval": {"baselines": True},
    },
    "paper": {  # selects groups (a command-line `data=...` still wins) and sets the paper's training constants
        "defaults": [{"override /data": "chest"}, {"override /tasks": "shared_radial"},
                     {"override /model": "loa_paper"}],
        "trainer": {"steps": 20000, "batch": 2, "lr": 1e-3, "stair": True, "checkpoint_every": 500},
    },
}

DATA = {
    "default": DataConfig(shuffle=True),  # the template's slices run foot to head: contiguous splits would differ
    "chest": DataConfig(source="fastmri", path=CHEST, size=256, train=[0, 70], val=[70, 85], test=[85, 100]),
    "fastmri": DataConfig(source="fastmri"),
    "nifti": DataConfig(source="nifti"),
    "folder": DataConfig(source="folder"),
}
TASKS = {
    "radial": TasksConfig(),
    "cartesian": TasksConfig(mask="cartesian"),
    "variable_density": TasksConfig(mask="variable_density"),
    "shared_radial": TasksConfig(mask="file", mask_file="../shared/data/radial_masks.h5"),
}
MODELS = {"loa": ModelConfig(), "loa_paper": ModelConfig(name="loa_paper", phases=11),
          "pdnet": ModelConfig(name="pdnet", phases=10, features=40)}
SOLVERS = {
    "penalty": SolverConfig(),
    "implicit": SolverConfig(name="implicit", lam=1.0, inner_steps=3),
    "maml": SolverConfig(name="maml", inner_steps=2),
    "fomaml": SolverConfig(name="fomaml", inner_steps=2),
    "task_weights": SolverConfig(name="task_weights", inner_steps=2),
    "conventional": SolverConfig(name="conventional"),
}


def register() -> None:
    """Register every config node (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="run", node=RunConfig)
    cs.store(name="adapt", node=AdaptRunConfig)
    for group, options in (("data", DATA), ("tasks", TASKS), ("model", MODELS), ("solver", SOLVERS)):
        for name, node in options.items():
            cs.store(group=group, name=name, node=node)
    cs.store(group="trainer", name="default", node=TrainerConfig)
    cs.store(group="eval", name="default", node=EvalConfig)
    for name, node in PRESETS.items():
        cs.store(group="preset", name=name, node=node, package="_global_")
    cs.store(group="preset", name="none", node={}, package="_global_")
