"""Structured Hydra configs of the training engine, registered in Hydra's ConfigStore.

Every node is a dataclass, so Hydra rejects a misspelled key or a value of the
wrong type at start-up with a message naming the key (``trainer.steps=abc``
fails before anything runs). Groups and their options:

- ``data``: ``default`` (the embedded chest images, slices 0–69 / 70–84 /
  85–99), ``template`` (embedded slices of the MNI152 brain template),
  ``fastmri`` / ``nifti`` / ``folder`` (set ``data.path``).
- ``tasks``: ``pseudo_radial`` (the embedded pseudo-radial 256² masks; the
  default), ``radial`` (one ``masks.radial`` key per task), ``cartesian``,
  ``variable_density``, ``fastmri_random`` / ``fastmri_equispaced`` /
  ``poisson_disc`` (4× and 8×), ``thinned_pseudo_radial``, ``file`` (set
  ``tasks.mask_file``), ``mixture`` (task i = ``families[i]`` at ``ratios[i]``,
  a fresh mask of each task every training step from a bank of ``tasks.bank``).
- ``model``: ``dcnet`` (:class:`~metajax.models.DCNet`, the default), ``loa``
  (metajax's default LOA), ``loa_paper`` (the paper's constants), ``pdnet``.
- ``solver``: ``penalty``, ``implicit``, ``maml``, ``fomaml``, ``task_weights``,
  ``conventional`` (plain supervised training of the same network, κ = 1),
  ``joint`` (θ and the task weights ω together on the training loss).
- ``trainer``, ``eval``: one option each (``default``); set fields directly.
- ``preset``: ``quick`` (the README main job, CPU minutes; the default),
  ``ci`` (seconds), ``long`` (the shipped pretrained model's first stage, ≤ 90 CPU minutes),
  ``robust`` (its second stage: mask-aware, on the mask mixture), ``meta`` (``chest_dcnet_meta``: it,
  meta-trained to adapt; ``preset=meta solver=joint trainer.batch=3`` is its conventional twin of equal compute),
  ``paper`` (GPU hours); a preset overrides fields of the groups above, and
  command-line overrides come last.
- ``cluster``: ``none`` (the default: Hydra's basic launcher), ``local`` (submitit_local, each sweep point as
  2 processes), ``slurm`` (one SLURM array task per sweep point), ``slurm_multinode`` (one run over nodes ×
  tasks per node); all but ``none`` need the ``slurm`` extra and set ``trainer.coordinator=auto``
  (docs/cluster.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from metajax.engine.rundir import register_checks


@dataclass
class DataConfig:
    """The ``data`` group: where the images come from and the train/val/test slice ranges (``data=default`` the embedded
    chest set, ``data=template``, ``data=fastmri data.path=F``, ...)."""

    source: str = "chest"  # chest (embedded) | template (embedded) | fastmri | nifti | folder
    path: Optional[str] = None  # file (fastmri, nifti) or folder; relative paths are from the launch directory
    num_slices: int = 24  # template source: slices taken from the template
    size: int = 256  # template: image size (resized); others: centre crop to size × size (0: keep)
    shuffle: bool = False  # permute the slices (fixed permutation, key 0) before taking the ranges
    train: List[int] = field(default_factory=lambda: [0, 70])  # [start, stop) slice ranges
    val: List[int] = field(default_factory=lambda: [70, 85])
    test: List[int] = field(default_factory=lambda: [85, 100])


@dataclass
class TasksConfig:
    """The ``tasks`` group: one task per sampling ratio (or mask family) — the mask family, ratios, noise and crop."""

    mask: str = "pseudo_radial"  # a family of metajax.masks.FAMILIES (pseudo_radial: embedded, 256²), file, or
    # mixture (task i: family families[i] at ratio ratios[i])
    mask_file: Optional[str] = None  # mask=file: HDF5 with datasets f"{mask_prefix}{round(100·ratio)}"
    mask_prefix: str = "radial_"
    ratios: List[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4])  # sampling ratio = 1 / acceleration
    families: List[str] = field(default_factory=list)  # mask=mixture: the family of each task (as long as ratios)
    bank: int = 0  # training draws a fresh mask of each task every step from a bank of this many (0: one fixed mask)
    crop: int = 0  # training crop size (random crops; 0: full images); evaluation always uses full images
    noise_std: float = 0.0  # σ of complex Gaussian k-space noise per real component
    augment: bool = False  # training: each task's images pass through a random image-domain change per step (flip,
    # rotation, contrast γ, intensity scale; the same for a task's support and query batches): tasks that differ
    # by what differs between scanners and anatomies, not only by the mask


@dataclass
class ModelConfig:
    """The ``model`` group: the unrolled network (``dcnet``, ``loa``, ``loa_paper``, ``pdnet``) and its size."""

    name: str = "dcnet"  # dcnet | loa | loa_paper | pdnet
    phases: int = 5
    features: int = 32  # DCNet: CNN channels; LOA: CNN kernels per layer; PDNet: channels
    layers: int = 5  # DCNet / LOA CNN layers
    mu: float = 0.05  # DCNet: initial data-consistency weight μ_k
    mask_aware: bool = False  # DCNet: the CNN also sees the image's unmeasured part (docs/models.md)


@dataclass
class SolverConfig:
    """The ``solver`` group: the bilevel method (``penalty``, ``implicit``, ``maml``, ``fomaml``, ``task_weights``,
    ``conventional``, ``joint``) and its settings."""

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
    inner_loss: str = "supervised"  # the inner (task-level) loss of the bilevel solvers: supervised | splitting
    # (self-supervised, SSDU: no ground truth) | measurement
    outer_loss: str = "supervised"  # the outer loss; conventional / joint: the training loss
    inner_optimizer: str = "sgd"  # sgd | adam (at solver.inner_lr): the inner loop's steps
    outer_split: str = "train"  # meta-solvers' outer (query) batch: "train" (disjoint images of the training
    # split, the support batch being the others) or "val" (the data's validation split, as Bian et al.)


@dataclass
class TrainerConfig:
    """The ``trainer`` node: steps, batch, optimizer and schedule, checkpoints, validation, devices and processes."""

    steps: int = 200  # training steps (gradient evaluations)
    batch: int = 2  # images per task per step (the same number from each task's validation split)
    lr: float = 1e-3  # Adam
    lr_schedule: str = "constant"  # constant | cosine (decay to lr/20 over trainer.steps)
    omega_lr: float = 1e-2  # Adam learning rate of the task weights ω (their own: at lr 1e-3 they barely move)
    map_batch: int = 0  # images evaluated together in the losses (0: all, vmapped; k: lax.map in chunks of k)
    val_every: int = 0  # validation PSNR per task on the full validation images every this many steps (0: never)
    keep_best: bool = True  # with validation: the best-on-validation parameters become model.eqx
    stair: bool = False  # add one phase at a time (Bian et al.): stage s trains the first s phases
    seed: int = 0
    devices: int = 0  # 0: all devices (of every process); tasks are sharded over them
    coordinator: Optional[str] = None  # multi-process: HOST:PORT of process 0, or auto (SLURM srun, submitit)
    num_processes: int = 1  # with a HOST:PORT coordinator: processes in the run (each started once)
    process_id: int = 0  # with a HOST:PORT coordinator: this process's rank in [0, num_processes)
    local_device_ids: Optional[List[int]] = None  # multi-process: this process's devices (default: all visible)
    heartbeat_timeout: int = 30  # multi-process: seconds after which a silent process counts as dead
    init_timeout: int = 300  # multi-process: seconds to wait for every process to join
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 10
    progress: bool = True
    resume: bool = True  # resume from the last checkpoint in the run directory
    allow_config_change: bool = False  # resume even if the configuration changed
    inject_nan_at: int = -1  # testing: make the loss NaN at this step
    task_balance: str = "mean"  # conventional / joint: mean of the per-task losses, or log: mean of their logs
    # (every task's PSNR weighs the same)
    init: Optional[str] = None  # start θ from this trained model (model.eqx of a run, or pretrained:NAME); its ω
    # interpolated at each task's ratio (tools/make_pretrained.py's second stage)


@dataclass
class EvalConfig:
    """The ``eval`` node: the split evaluated, the baselines (zero-filled, TV tuned on validation, conventional
    training), the shipped model compared with, the unseen-family shift, figures."""

    split: str = "test"
    baselines: bool = False  # also zero-filled, TV (λ tuned on validation) and conventional training
    conventional_per_task: bool = False  # the conventional baseline trains one network per task (Bian et al.'s)
    tv_weights: List[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3, 1e-2])
    tv_iterations: int = 300
    tv_tune_images: int = 0  # validation images per task used to pick λ (0: all)
    pretrained: Optional[str] = None  # also evaluate this shipped model (metajax.pretrained), e.g. chest_dcnet
    figure: bool = True
    figure_image: int = 0
    shift: Optional[str] = None  # train: also evaluate the meta-learned and the conventional model on this unseen
    # mask family (metajax.masks.FAMILIES) at shift_ratio, zero-shot and self-adapted for shift_steps steps
    shift_ratio: float = 0.2
    shift_steps: int = 10


@dataclass
class AdaptConfig:
    """The ``adapt`` node of ``metajax-adapt``: the model to adapt, the mode (``omega``, ``finetune``, ``self``), loss,
    steps and learning rate.

    The same fields as ``metajax.engine.adaptation.Settings``.
    """

    model_dir: str = MISSING  # run directory of a trained model (model.eqx, config.yaml) or pretrained:NAME
    mode: str = "self"  # self: splitting loss on the test split's own measurements (no ground truth read) |
    # finetune: adapt.images ground-truth training images | omega: only the task weight ω, θ frozen
    loss: str = "auto"  # auto (self: splitting, others: supervised) | splitting | supervised | measurement
    params: str = "all"  # which parameters move: all | cnn | omega
    images: int = 5  # finetune / omega: ground-truth training images of the new task
    steps: int = 60
    lr: Optional[float] = None  # Adam; default by mode (self / finetune 1e-4, omega 1e-2)
    batch: int = 2  # images (self: slices) per step
    eval_every: int = 10  # held-out k-space error (stopping without ground truth) every this many steps
    eval_slices: int = 8
    holdout: float = 0.1  # share of the non-central sampled k-space held out for stopping
    tolerance: float = 0.1  # keep the best adapted step unless its held-out error exceeds the unadapted one's by more
    weighting: str = "unmeasured"  # held-out error weighting: unmeasured | plain
    fraction: float = 0.2  # splitting loss: expected share of the loss set Λ
    draws: int = 1  # splitting loss: splits per image and step
    selection: str = "uniform"  # splitting loss: uniform | gaussian
    norm: str = "l2"  # splitting loss: l2 | l1l2 (SSDU's normalised ℓ1–ℓ2)
    progress: bool = True  # progress bar (else a line every eval_every steps)


_GROUPS = [{"data": "default"}, {"tasks": "pseudo_radial"}, {"model": "dcnet"}, {"solver": "penalty"},
           {"trainer": "default"}, {"eval": "default"}]


@dataclass
class RunConfig:
    """The root config of ``metajax-train`` / ``-evaluate`` / ``-baselines``."""

    defaults: List[Any] = field(default_factory=lambda: ["_self_", *_GROUPS, {"preset": "quick"}, {"cluster": "none"},
                                                         {"checks": "default"}])
    data: DataConfig = MISSING
    tasks: TasksConfig = MISSING
    model: ModelConfig = MISSING
    solver: SolverConfig = MISSING
    trainer: TrainerConfig = MISSING
    eval: EvalConfig = MISSING
    model_dir: Optional[str] = None  # evaluate: a trained run directory or pretrained:NAME


@dataclass
class AdaptRunConfig(RunConfig):
    """The root config of ``metajax-adapt``: the new task comes from ``data``/``tasks``."""

    adapt: AdaptConfig = field(default_factory=AdaptConfig)


TEMPLATE = {"override /data": "template"}, {"override /tasks": "radial"}

PRESETS = {
    "ci": {  # seconds: a few template slices at 32² (a command-line `data=...`/`tasks=...` still wins)
        "defaults": [*TEMPLATE, {"override /model": "loa"}],
        "data": {"num_slices": 8, "size": 32, "train": [0, 4], "val": [4, 6], "test": [6, 8]},
        "tasks": {"ratios": [0.2, 0.4]},
        "model": {"phases": 2, "features": 2, "layers": 2},
        "solver": {"outer_split": "val"},
        "trainer": {"steps": 6, "batch": 1, "checkpoint_every": 2, "log_every": 2, "progress": False,
                    "val_every": 3},
        "eval": {"tv_weights": [1e-3], "tv_iterations": 20},
    },
    "quick": {  # the README main job: DCNet meta-trained on the chest images, ≤ 10 CPU minutes with baselines
        "model": {"phases": 4, "features": 16, "layers": 5},
        "trainer": {"steps": 60, "batch": 1, "lr": 1e-3, "lr_schedule": "cosine", "map_batch": 1,
                    "checkpoint_every": 20, "val_every": 30},
        "eval": {"baselines": True, "tv_weights": [3e-4, 1e-3, 3e-3], "tv_tune_images": 5,
                 "pretrained": "chest_dcnet", "shift": "radial", "shift_ratio": 0.2, "shift_steps": 10},
    },
    "long": {  # the shipped pretrained model (tools/make_pretrained.py): ≤ 90 CPU minutes on 2 cores
        "defaults": [{"override /solver": "joint"}],
        "model": {"phases": 5, "features": 16, "layers": 7},
        "trainer": {"steps": 2500, "batch": 1, "lr": 1e-3, "lr_schedule": "cosine", "map_batch": 1,
                    "checkpoint_every": 100, "val_every": 250},
    },
    "robust": {  # the shipped chest_dcnet's second stage (tools/make_pretrained.py): the preset=long model,
        # mask-aware, fine-tuned on a mixture of mask families and accelerations (a fresh mask every step)
        "defaults": [{"override /solver": "joint"}, {"override /tasks": "mixture"}],
        "model": {"phases": 5, "features": 16, "layers": 7, "mask_aware": True},
        "trainer": {"steps": 600, "batch": 1, "lr": 3e-4, "lr_schedule": "cosine", "map_batch": 1,
                    "checkpoint_every": 25, "val_every": 150, "task_balance": "log"},
    },
    "meta": {  # the shipped chest_dcnet_meta: chest_dcnet meta-trained (first-order MAML) to adapt well — two Adam
        # steps of the self-supervised splitting loss on a task's support image, then the supervised loss on its
        # query image — over tasks that vary the mask family, the acceleration and the image domain (augment)
        "defaults": [{"override /solver": "fomaml"}, {"override /tasks": "mixture"}],
        "tasks": {"families": ["pseudo_radial", "fastmri_random", "fastmri_equispaced", "poisson_disc",
                               "variable_density", "thinned_pseudo_radial"],
                  "ratios": [0.2, 0.25, 0.125, 0.25, 0.2, 0.3], "bank": 8, "augment": True},
        "model": {"phases": 5, "features": 16, "layers": 7, "mask_aware": True},
        "solver": {"inner_loss": "splitting", "inner_optimizer": "adam", "inner_lr": 3e-4, "inner_steps": 2,
                   "outer_split": "train"},
        "trainer": {"init": "pretrained:chest_dcnet", "steps": 40, "batch": 1, "lr": 1e-4, "lr_schedule": "cosine",
                    "map_batch": 1, "checkpoint_every": 10, "val_every": 20, "keep_best": False},
        # keep_best off: validation scores the model before adaptation, which is not what meta-training optimises
    },
    "paper": {  # selects the paper LOA and sets the paper's training constants (GPU hours)
        "defaults": [{"override /model": "loa_paper"}],
        "solver": {"outer_split": "val"},
        "trainer": {"steps": 20000, "batch": 2, "lr": 1e-3, "stair": True, "checkpoint_every": 500,
                    "val_every": 500},
    },
}

# Launchers of the optional `slurm` extra (hydra-submitit-launcher). Every process of a job runs the whole
# command; `trainer.coordinator=auto` makes the job's processes one run (JAX's SLURM detection under srun, the
# job's ranks under submitit_local), and a job requeued after a timeout or preemption (max_num_timeout) runs
# the same command in the same directory, so it resumes from the last checkpoint.
_SUBMITIT = {"timeout_min": 240, "max_num_timeout": 10}
CLUSTERS = {
    "local": {  # this machine: each sweep point as tasks_per_node processes (CPU devices)
        "defaults": [{"override /hydra/launcher": "submitit_local"}],
        "trainer": {"coordinator": "auto"},
        "hydra": {"launcher": {"timeout_min": 240, "tasks_per_node": 2}},
    },
    "slurm": {  # one array task per sweep point, on one GPU (raise tasks_per_node and gpus_per_node together)
        "defaults": [{"override /hydra/launcher": "submitit_slurm"}],
        "trainer": {"coordinator": "auto"},
        "hydra": {"launcher": {**_SUBMITIT, "nodes": 1, "tasks_per_node": 1, "gpus_per_node": 1,
                               "cpus_per_task": 8, "mem_gb": 64, "signal_delay_s": 120}},
    },
    "slurm_multinode": {  # one run over nodes × tasks_per_node processes, one GPU each
        "defaults": [{"override /hydra/launcher": "submitit_slurm"}],
        "trainer": {"coordinator": "auto"},
        "hydra": {"launcher": {**_SUBMITIT, "nodes": 2, "tasks_per_node": 4, "gpus_per_node": 4,
                               "cpus_per_task": 8, "mem_gb": 256, "signal_delay_s": 120}},
    },
}

DATA = {
    "default": DataConfig(),
    # the template's slices run foot to head: contiguous splits would differ, so they are shuffled
    "template": DataConfig(source="template", size=128, shuffle=True, train=[0, 16], val=[16, 20], test=[20, 24]),
    "fastmri": DataConfig(source="fastmri", train=[0, 16], val=[16, 20], test=[20, 24]),
    "nifti": DataConfig(source="nifti", train=[0, 16], val=[16, 20], test=[20, 24]),
    "folder": DataConfig(source="folder", train=[0, 16], val=[16, 20], test=[20, 24]),
}
TASKS = {
    "pseudo_radial": TasksConfig(),
    "radial": TasksConfig(mask="radial"),
    "cartesian": TasksConfig(mask="cartesian"),
    "variable_density": TasksConfig(mask="variable_density"),
    "file": TasksConfig(mask="file"),
    "fastmri_random": TasksConfig(mask="fastmri_random", ratios=[0.25, 0.125]),
    "fastmri_equispaced": TasksConfig(mask="fastmri_equispaced", ratios=[0.25, 0.125]),
    "poisson_disc": TasksConfig(mask="poisson_disc", ratios=[0.25, 0.125]),
    "thinned_pseudo_radial": TasksConfig(mask="thinned_pseudo_radial"),
    # the robustness grid every shipped model's card reports (one fixed mask per task; metajax-evaluate tasks=grid)
    "grid": TasksConfig(mask="mixture",
                        families=["pseudo_radial"] * 4 + ["thinned_pseudo_radial"] * 4 + ["radial"]
                        + ["fastmri_random"] * 2 + ["fastmri_equispaced"] * 2 + ["poisson_disc"] * 2
                        + ["variable_density"],
                        ratios=[0.1, 0.2, 0.3, 0.4] * 2 + [0.2] + [0.25, 0.125] * 3 + [0.2]),
    # the training mixture of the shipped model: pseudo-radial 10-40 %, fastMRI 1-D random and equispaced 4x / 8x,
    # Poisson-disc 4x / 8x, variable density 5x, pseudo-radial thinned by 40 %; a fresh mask per task and step
    "mixture": TasksConfig(mask="mixture", bank=8,
                           families=["pseudo_radial"] * 4 + ["fastmri_random"] * 2 + ["fastmri_equispaced"] * 2
                           + ["poisson_disc"] * 2 + ["variable_density", "thinned_pseudo_radial"],
                           ratios=[0.1, 0.2, 0.3, 0.4, 0.25, 0.125, 0.25, 0.125, 0.25, 0.125, 0.2, 0.3]),
}
MODELS = {"dcnet": ModelConfig(), "loa": ModelConfig(name="loa", features=4, layers=3),
          "loa_paper": ModelConfig(name="loa_paper", phases=11, features=4, layers=3),
          "pdnet": ModelConfig(name="pdnet", phases=10, features=40)}
SOLVERS = {
    "penalty": SolverConfig(),
    "implicit": SolverConfig(name="implicit", lam=1.0, inner_steps=3),
    "maml": SolverConfig(name="maml", inner_steps=2),
    "fomaml": SolverConfig(name="fomaml", inner_steps=2),
    "task_weights": SolverConfig(name="task_weights", inner_steps=2),
    "conventional": SolverConfig(name="conventional"),
    "joint": SolverConfig(name="joint"),
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
    for name, node in CLUSTERS.items():
        cs.store(group="cluster", name=name, node=node, package="_global_")
    cs.store(group="cluster", name="none", node={}, package="_global_")
    register_checks()
