"""An experiment built from a config: data splits, tasks, the model, the solver and one jitted training step.

Tasks: one per sampling ratio, each with its own mask key
(``fold_in(key(seed), i)``), so tasks never share nested masks (the embedded
pseudo-radial masks are one fixed mask per ratio). Training batches take
``trainer.batch`` images per task from its training split; the meta-solvers
get a second, *outer* batch of as many images: by default other images of the
training split (``solver.outer_split=train``: support and query batches are
disjoint), or images of the validation split (``outer_split=val``, as Bian et
al.; with 15 validation images θ then learns mostly from those). Crops: cut a random
``tasks.crop`` × ``tasks.crop`` window from each when ``crop > 0`` (the
training operators then use generated masks of the crop size, drawn with the
same key; file and pseudo-radial masks exist at one size only, so they train on
full images and a crop is refused), and measure them with that task's operator. Batches depend only on
``(seed, step)``, so a resumed run sees exactly the batches an uninterrupted
one would.

Solvers (``solver.name``) and what the step optimises:

- ``penalty``: ``TaskWeighted`` LOA, (θ, ω) by Bian et al.'s Algorithm 2 on
  cross-task batches (train: inner, validation: outer).
- ``implicit`` / ``maml`` / ``fomaml``: the ``TaskWeighted`` model's float
  leaves (θ and ω), per-task meta-gradients averaged over tasks.
- ``task_weights``: the ``Shared`` model as θ₀ and the N×N task correlation α.
- ``conventional``: the ``Shared`` model (κ = 1) on the mean training loss of all
  tasks, or, with ``solver.per_task``, one network per task (vmapped copies).
- ``joint``: the ``TaskWeighted`` model, θ and ω together on the mean training
  loss of all tasks (single level, no bilevel split): what conventional
  training costs, with a task weight per task (the shipped pretrained models).

``trainer.task_balance=log`` (conventional and joint) averages the per-task
*log* losses instead: each task's relative improvement (its PSNR) weighs the
same, where the plain mean lets the tasks with the largest errors (8× line
masks) drown those with small ones (pseudo-radial 40 %).

The task weights ω have their own Adam learning rate (``trainer.omega_lr``).
:meth:`Experiment.validation_psnr` is the per-task mean PSNR on the full
validation images that the training loop logs and selects the model by.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from metajax._validation import require_dir, require_file
from metajax import bilevel, data, masks, metrics
from metajax.adjoint import MLM, Autodiff
from metajax.bilevel import TaskBatch
from metajax.models import LOA, DCNet, PDNet
from metajax.models.dcnet import with_mask_input
from metajax.engine.validation import ConfigError, check_config, check_split_sizes
from metajax.operators import SingleCoilMRI



def resolve_path(path: str, base: Path | None) -> Path:
    p = Path(path)
    return p if p.is_absolute() or base is None else base / p


EMBEDDED_SOURCES = ("chest", "template")


def check_files(cfg, base: Path | None) -> None:
    """Fail before any compute when a configured file is missing."""
    if cfg.data.source not in EMBEDDED_SOURCES:
        if cfg.data.path is None:
            raise ConfigError(f"`data.path` must be set for data.source={cfg.data.source!r}.")
        path = resolve_path(cfg.data.path, base)
        if cfg.data.source == "folder":
            require_dir("data.path", path, "folder of images")
        else:
            require_file("data.path", path)
    if cfg.tasks.mask == "file":
        if cfg.tasks.mask_file is None:
            raise ConfigError("`tasks.mask_file` must be set for tasks.mask='file'.")
        require_file("tasks.mask_file", resolve_path(cfg.tasks.mask_file, base), "HDF5 file of masks")


def load_splits(cfg_data, base: Path | None) -> tuple[dict[str, np.ndarray], str]:
    """``({"train", "val", "test"} → real (n, H, W) float32 images, each slice scaled to max 1; a sentence
    saying what was loaded and done to it)``."""
    cropped = ""
    if cfg_data.source == "template":
        images = data.default_images(cfg_data.num_slices, cfg_data.size)
    elif cfg_data.source == "chest":
        images = data.chest_images()
        if cfg_data.size not in (0, images.shape[-1]):
            raise ConfigError(f"`data.size`: the chest images are {images.shape[-1]}²; got {cfg_data.size} "
                              "(use 0 or 256).")
    else:
        path = resolve_path(cfg_data.path, base)
        loaders = {"fastmri": lambda: data.load_fastmri(path).target, "nifti": lambda: data.load_nifti(path),
                   "folder": lambda: data.load_image_folder(path, as_gray=True)}
        if cfg_data.source not in loaders:
            raise ConfigError(f"`data.source` must be chest, template, fastmri, nifti or folder; got "
                              f"{cfg_data.source!r}.")
        images = loaders[cfg_data.source]()
        if cfg_data.size and images.shape[-2:] != (cfg_data.size, cfg_data.size):
            loaded = images.shape
            images = data.center_crop(images, (cfg_data.size, cfg_data.size))
            cropped = f", centre-cropped from {loaded[-2]}×{loaded[-1]}"
    if cfg_data.shuffle:
        images = np.asarray(images)[np.asarray(jax.random.permutation(jax.random.key(0), len(images)))]
    where = "embedded" if cfg_data.source in EMBEDDED_SOURCES else str(resolve_path(cfg_data.path, base))
    summary = (f"data: {cfg_data.source} ({where}), {len(images)} slices of {images.shape[-2]}×{images.shape[-1]}"
               f"{cropped}{', shuffled' if cfg_data.shuffle else ''}; train "
               f"{list(cfg_data.train)}, val {list(cfg_data.val)}, test {list(cfg_data.test)}, each slice scaled to "
               f"max 1 ({len(images) - sum(b - a for a, b in (cfg_data.train, cfg_data.val, cfg_data.test))} unused)")
    splits = {}
    for name in ("train", "val", "test"):
        start, stop = getattr(cfg_data, name)
        if not 0 <= start < stop <= len(images):
            raise ConfigError(f"`data.{name}` = [{start}, {stop}) is not a slice range within the {len(images)} "
                              "images.")
        splits[name] = data.normalize_per_slice(np.asarray(images[start:stop], np.float32))
    return splits, summary


def task_families(cfg_tasks) -> list[str]:
    """The mask family of each task: ``tasks.families`` for ``tasks.mask=mixture``, else ``tasks.mask`` for all."""
    if cfg_tasks.mask == "mixture":
        return list(getattr(cfg_tasks, "families", None) or [])
    return [cfg_tasks.mask] * len(cfg_tasks.ratios)


def task_labels(cfg_tasks) -> list[str] | None:
    """``"family ratio"`` per task for ``tasks.mask=mixture`` (tables tell tasks of one ratio apart), else None."""
    if cfg_tasks.mask != "mixture":
        return None
    return [f"{family} {ratio:.3g}" for family, ratio in zip(task_families(cfg_tasks), cfg_tasks.ratios)]


def make_mask(cfg_tasks, index: int, ratio: float, shape, seed: int, base: Path | None, family: str | None = None):
    """The mask of task ``index`` (``family``: default ``tasks.mask``), drawn with ``fold_in(key(seed), index)``."""
    key = jax.random.fold_in(jax.random.key(seed), index)
    kind = cfg_tasks.mask if family is None else family
    if kind == "file":
        name = f"{cfg_tasks.mask_prefix}{round(100 * ratio)}"
        mask = masks.load_mask(resolve_path(cfg_tasks.mask_file, base), name)
        if mask.shape != tuple(shape):  # a crop of a k-space mask is another sampling pattern (and ratio)
            raise ConfigError(f"`tasks.mask_file`: mask {name!r} is {mask.shape} but the images (or training crops) "
                              f"are {tuple(shape)}; file masks need full images of their size (tasks.crop=0).")
        return jnp.asarray(mask)
    if kind not in masks.FAMILIES:
        raise ConfigError(f"`tasks.mask` must be one of {', '.join(masks.FAMILIES)}, file or mixture; got {kind!r}.")
    if kind in ("pseudo_radial", "thinned_pseudo_radial") and tuple(shape) != (256, 256):
        raise ConfigError(f"`tasks.mask={kind}`: the embedded masks are 256×256 but the images (or training "
                          f"crops) are {tuple(shape)}; use tasks=radial or full 256² images (tasks.crop=0).")
    try:
        return jnp.asarray(masks.family_mask(key, kind, shape, ratio))
    except ValueError as error:
        raise ConfigError(f"`tasks.ratios`: {error}") from None


def build_tasks(cfg, splits, base: Path | None, size: int | None = None):
    """Stacked tasks (one per ratio) whose operators act on ``size`` × ``size`` images (default: full size)."""
    shape = splits["test"].shape[1:] if size is None else (size, size)
    images = {k: jnp.asarray(v, jnp.complex64) for k, v in splits.items()}
    tasks = [data.Task(SingleCoilMRI(make_mask(cfg.tasks, i, r, shape, cfg.trainer.seed, base, family)),
                       images["train"], images["val"], images["test"], noise_std=cfg.tasks.noise_std)
             for i, (family, r) in enumerate(zip(task_families(cfg.tasks), cfg.tasks.ratios))]
    return data.stack_tasks(tasks)


def mask_bank(cfg, shape) -> masks.MaskDistribution | None:
    """The training masks drawn per step (``tasks.bank`` per task, key ``seed + 2``), or None (fixed masks)."""
    if not cfg.tasks.get("bank", 0):
        return None
    if cfg.tasks.mask == "file":
        raise ConfigError("`tasks.bank` needs generated masks; a mask file holds one mask per ratio (tasks.bank=0).")
    entries = list(zip(task_families(cfg.tasks), cfg.tasks.ratios))
    try:
        return masks.MaskDistribution(jax.random.key(cfg.trainer.seed + 2), shape, entries, cfg.tasks.bank)
    except ValueError as error:
        raise ConfigError(f"`tasks`: {error}") from None


def build_network(cfg_model, key):
    if cfg_model.name == "dcnet":
        return DCNet(key, cfg_model.phases, layers=cfg_model.layers, channels=cfg_model.features, mu=cfg_model.mu,
                     mask_aware=cfg_model.get("mask_aware", False))
    if cfg_model.name == "loa":
        return LOA(key, cfg_model.phases, features=cfg_model.features, layers=cfg_model.layers)
    if cfg_model.name == "loa_paper":
        return LOA.paper(key, cfg_model.phases, features=cfg_model.features, layers=cfg_model.layers)
    if cfg_model.name == "pdnet":
        return PDNet(key, cfg_model.phases, channels=cfg_model.features)
    raise ConfigError(f"`model.name` must be dcnet, loa, loa_paper or pdnet; got {cfg_model.name!r}.")


def first_phases(net, phases: int):
    """The network restricted to its first ``phases`` phases (stair training); gradients reach the full arrays."""
    if isinstance(net, DCNet):
        return eqx.tree_at(lambda n: n.mu_raw, net, net.mu_raw[:phases])
    if isinstance(net, LOA):
        return eqx.tree_at(lambda n: (n.alpha_raw, n.tau_raw), net, (net.alpha_raw[:phases], net.tau_raw[:phases]))
    if isinstance(net, PDNet):
        return eqx.tree_at(lambda n: (n.kernel, n.threshold, n.tau, n.sigma), net,
                           (net.kernel[:phases], net.threshold[:phases], net.tau[:phases], net.sigma[:phases]))
    return net


def augment(key, x):
    """One random image-domain change applied to all of ``x`` (B, H, W): a flip and a quarter rotation (the
    anatomy's orientation), a contrast change ``|x|^γ`` with ``log γ ~ U(−0.7, 0.7)`` (another weighting), and an
    intensity scale in [0.6, 1] (images were scaled to max 1; scanners' scales differ). Square images only."""
    k_flip, k_rot, k_gamma, k_scale = jax.random.split(key, 4)
    x = jnp.where(jax.random.bernoulli(k_flip), x[..., ::-1], x)
    turns = jax.random.randint(k_rot, (), 0, 4)
    x = jax.lax.switch(turns, [lambda v, k=k: jnp.rot90(v, k, axes=(-2, -1)) for k in range(4)], x)
    gamma = jnp.exp(jax.random.uniform(k_gamma, (), minval=-0.7, maxval=0.7))
    return (jnp.abs(x) ** gamma * jax.random.uniform(k_scale, (), minval=0.6, maxval=1.0)).astype(x.dtype)


def sample_batches(tasks, key, split: str, batch: int, crop: int, part: int = 0, augment_key=None) -> TaskBatch:
    """``batch`` images per task from ``split``, randomly cropped to ``crop`` (0: none), and their measurements.

    ``part`` = 1 takes the *next* ``batch`` images of the same random draw, so parts 0 and 1 of one key are
    disjoint (the support and query batches of ``outer_split=train``). With ``augment_key``, each task's images
    pass through one random :func:`augment` drawn from it (the same for both parts of a step). The batch's
    ``key`` (the splitting loss's splits) is drawn from ``key`` and ``part``.
    """
    n = tasks.noise_std.shape[0]
    augment_keys = None if augment_key is None else jax.random.split(augment_key, n)

    def one(task, k, k_augment):
        k_index, k_crop, k_noise = jax.random.split(k, 3)
        images = task.images(split)
        order = jax.random.permutation(k_index, images.shape[0])
        x = images[order[part * batch:(part + 1) * batch]]
        if crop:
            offsets = jax.random.randint(k_crop, (batch, 2), 0, jnp.array(x.shape[-2:]) - crop + 1)
            x = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, o, (crop, crop)))(x, offsets)
        if k_augment is not None:
            x = augment(k_augment, x)
        return x, task.measure(k_noise, x)

    x, y = jax.vmap(one)(tasks, jax.random.split(key, n), augment_keys)
    split_keys = jax.random.split(jax.random.fold_in(key, 1000 + part), n)
    return TaskBatch(tasks.operator, x, y, jnp.arange(n), split_keys)


def optimizer(lr: float, omega_lr: float, schedule: str = "constant", steps: int = 1) -> optax.GradientTransformation:
    """Adam for every parameter except the task weights ω, which get their own Adam at the constant ``omega_lr``.

    ``schedule``: ``constant`` (``lr`` throughout) or ``cosine`` (``lr`` decayed along a half cosine to
    ``lr/20`` over ``steps`` updates of the optimizer).
    """
    if schedule == "cosine":
        lr = optax.cosine_decay_schedule(lr, max(1, steps), alpha=0.05)
    elif schedule != "constant":
        raise ConfigError(f"`trainer.lr_schedule` must be constant or cosine; got {schedule!r}.")

    def labels(params):
        return jax.tree.map(lambda is_omega: "omega" if is_omega else "theta", bilevel.task_weight_filter(params))

    return optax.multi_transform({"theta": optax.adam(lr), "omega": optax.adam(omega_lr)}, labels)


@dataclass
class Experiment:
    """Everything the training loop needs, built once from ``cfg`` (see the module docstring)."""

    cfg: object
    base: Path | None = None

    def __post_init__(self):
        cfg = self.cfg
        check_config(cfg)
        check_files(cfg, self.base)
        self.splits, self.data_summary = load_splits(cfg.data, self.base)
        check_split_sizes(cfg, self.splits)
        self.name = cfg.solver.name
        self.two_batches = self.name not in ("conventional", "joint")
        self.outer_part = 1 if self.two_batches and cfg.solver.outer_split == "train" else 0
        need = {"train": cfg.trainer.batch * (1 + self.outer_part), "val": cfg.trainer.batch}
        for name, count in need.items():
            if count > len(self.splits[name]):
                raise ConfigError(f"`trainer.batch` = {cfg.trainer.batch} needs {count} {name} images per step but "
                                  f"the {name} split has {len(self.splits[name])}.")
        full = self.splits["test"].shape[-1]
        crop = cfg.tasks.crop
        if crop and not 8 <= crop <= full:
            raise ConfigError(f"`tasks.crop` must be 0 or in [8, {full}]; got {crop}.")
        self.crop = crop if crop and crop < full else 0
        self.tasks = build_tasks(cfg, self.splits, self.base)
        self.train_tasks = build_tasks(cfg, self.splits, self.base, self.crop) if self.crop else self.tasks
        self.num_tasks = len(cfg.tasks.ratios)
        self.adjoint = MLM() if cfg.solver.adjoint == "mlm" else Autodiff()
        net = build_network(cfg.model, jax.random.key(cfg.trainer.seed))
        self.per_task = self.name == "conventional" and cfg.solver.per_task
        if self.name in ("penalty", "implicit", "maml", "fomaml", "joint"):
            model = bilevel.TaskWeighted(net, self.num_tasks, adjoint=self.adjoint)
        else:
            model = bilevel.Shared(net, adjoint=self.adjoint)
        if cfg.trainer.get("init"):
            model = self._warm_start(model, cfg.trainer.init)
        if self.name == "penalty":
            self.params, self.static = bilevel.split_task_weights(model)
        else:
            self.params, self.static = eqx.partition(model, eqx.is_inexact_array)
        if self.per_task:
            self.params = jax.tree.map(lambda a: jnp.stack([a] * self.num_tasks), self.params)
        if self.name == "task_weights":
            self.params = bilevel.TaskWeightsParams.uniform(self.params, self.num_tasks, self.num_tasks)
        self.optimizer = optimizer(cfg.trainer.lr, cfg.trainer.omega_lr, cfg.trainer.lr_schedule, cfg.trainer.steps)
        self.method = self._method()
        self.map_batch = cfg.trainer.map_batch or None

    def _warm_start(self, model, spec: str):
        """``model`` with the network of the trained model ``spec`` (``trainer.init``) and, for task weights, ω
        chosen by that model for each task's mask (a DCNet becomes mask-aware with zero weights on the mask
        inputs: the same reconstructions until training uses them)."""
        from metajax.engine.models import load_model_source  # models builds Experiments: import late

        source = load_model_source(spec, self.base)
        if source.model is None:
            raise ConfigError(f"`trainer.init`: {spec} holds one network per task; give a joint model.")
        net = source.model.net
        if isinstance(model.net, DCNet) and model.net.cnn.mask_aware:
            net = with_mask_input(net)
        if jax.tree.structure(net) != jax.tree.structure(model.net) or \
                [a.shape for a in jax.tree.leaves(net)] != [a.shape for a in jax.tree.leaves(model.net)]:
            raise ConfigError(f"`trainer.init`: {spec} is not a network of this `model` config.")
        model = eqx.tree_at(lambda m: m.net, model, net)
        if isinstance(model, bilevel.TaskWeighted) and hasattr(source.model, "omega_for"):
            omega = [source.model.omega_for(SingleCoilMRI(m)) for m in self.tasks.operator.mask]
            model = eqx.tree_at(lambda m: m.omega, model, jnp.stack(omega).astype(model.omega.dtype))
        return model

    # ---------------------------------------------------------------- model views

    def model(self, params, phases: int | None = None):
        """The meta model ``model(operator, y, task)`` of the trained ``params`` (first ``phases`` phases)."""
        if self.name == "task_weights":
            params = params.init
        return self.network(params, phases)

    def network(self, phi, phases: int | None = None):
        """The meta model of the float leaves ``phi`` (what the solvers differentiate)."""
        model = bilevel.join_task_weights(phi, self.static) if self.name == "penalty" else eqx.combine(phi, self.static)
        return model if phases is None else eqx.tree_at(lambda m: m.net, model, first_phases(model.net, phases))

    def task_model(self, model, task):
        """The model used for ``task``: ``model`` itself, or its copy ``task`` when each task trains its own
        network (``solver.per_task``: every float leaf has a leading task axis). ``task`` may be traced."""
        if not self.per_task:
            return model
        params, static = eqx.partition(model, eqx.is_inexact_array)
        return eqx.combine(jax.tree.map(lambda a: a[task], params), static)

    def phases_at(self, step: int) -> int:
        """Stair training: phases in use at ``step`` (all phases otherwise)."""
        total = self.cfg.model.phases
        if not self.cfg.trainer.stair:
            return total
        return min(total, 1 + step * total // self.cfg.trainer.steps)

    # ---------------------------------------------------------------- solver

    def _method(self):
        s = self.cfg.solver
        sgd = (optax.adam if s.get("inner_optimizer", "sgd") == "adam" else optax.sgd)(s.inner_lr)
        if self.name == "penalty":
            return bilevel.Penalty(lam=s.lam, delta=s.delta, delta_tol=s.delta_tol, delta_decay=s.delta_decay,
                                   lam_growth=s.lam_growth, theta_steps=s.theta_steps)
        if self.name == "implicit":
            return bilevel.Implicit(lam=s.lam, inner_optimizer=sgd, inner_steps=s.inner_steps, cg_max_iters=s.cg_iters)
        if self.name in ("maml", "fomaml"):
            return bilevel.MAML(sgd, s.inner_steps, first_order=self.name == "fomaml")
        if self.name == "task_weights":
            return bilevel.TaskWeights(sgd, s.inner_steps, learn_init=True)
        return None

    def init_state(self):
        if self.method is None:
            return bilevel.MetaState(self.optimizer.init(self.params), jnp.zeros((), jnp.int32))
        return bilevel.init(self.method, self.params, self.optimizer)

    @functools.cached_property
    def bank(self) -> masks.MaskDistribution | None:
        """The training masks drawn per step (``tasks.bank``), generated on first use: only training needs them."""
        return mask_bank(self.cfg, self.train_tasks.operator.mask.shape[1:])

    def step_fn(self, phases: int):
        """``(params, state, tasks, train_tasks, key, step) -> (params, state, metrics)`` for ``phases`` phases."""
        cfg, crop, nan_at = self.cfg, self.crop, self.cfg.trainer.inject_nan_at

        def poison(loss, step):
            return loss * jnp.where(step == nan_at, jnp.nan, 1.0)

        losses = {"supervised": bilevel.supervised_loss, "measurement": bilevel.measurement_loss,
                  "splitting": bilevel.Splitting()}
        inner_loss, outer_loss = losses[cfg.solver.get("inner_loss", "supervised")], \
            losses[cfg.solver.get("outer_loss", "supervised")]

        def loss_of(model, batch, loss=outer_loss):
            return loss(model, batch, batch_size=self.map_batch)

        bank = self.bank

        def step(params, state, train_tasks, key, step_index):
            k_train, k_val = jax.random.split(key)
            if bank is not None:  # a fresh mask of every task from its bank
                train_tasks = eqx.tree_at(lambda t: t.operator.mask, train_tasks,
                                          bank.sample(jax.random.fold_in(key, 7)))
            b = cfg.trainer.batch
            k_aug = jax.random.fold_in(key, 11) if cfg.tasks.get("augment", False) else None
            train = sample_batches(train_tasks, k_train, "train", b, crop, augment_key=k_aug)
            if self.method is not None:
                val = sample_batches(train_tasks, k_train, "train", b, crop, part=1, augment_key=k_aug) \
                    if self.outer_part else sample_batches(train_tasks, k_val, "val", b, crop, augment_key=k_aug)

            def per_task_loss(batch, loss=outer_loss):
                return lambda p, a: poison(loss_of(self.network(p, phases), batch(a), loss), step_index)

            if self.method is None:  # conventional training
                def loss(p):
                    if self.per_task:
                        per = jax.vmap(lambda q, bt: loss_of(self.network(q, phases), bt))(p, train)
                    else:
                        per = loss_of(self.network(p, phases), train)
                    if cfg.trainer.get("task_balance", "mean") == "log":  # every task's PSNR counts the same
                        per = jnp.log(per)
                    return poison(jnp.sum(per) if self.per_task else jnp.mean(per), step_index)

                value, grad = jax.value_and_grad(loss)(params)
                updates, opt_state = self.optimizer.update(grad, state.opt_state, params)
                return optax.apply_updates(params, updates), bilevel.MetaState(opt_state, state.step + 1), \
                    {"loss": value}
            if self.name == "penalty":
                inner = lambda p, a: jnp.mean(per_task_loss(lambda b: b[0], inner_loss)(p, a))  # noqa: E731
                outer = lambda p, a: jnp.mean(per_task_loss(lambda b: b[1])(p, a))  # noqa: E731
            elif self.name == "task_weights":  # args = (train tasks, val tasks); the losses see one task each
                inner, outer = per_task_loss(lambda b: b, inner_loss), per_task_loss(lambda b: b)
            else:
                inner, outer = per_task_loss(lambda b: b[0], inner_loss), per_task_loss(lambda b: b[1])
            params, state, info = bilevel.meta_step(self.method, inner, outer, params, state, (train, val),
                                                    optimizer=self.optimizer)
            return params, state, {"loss": jnp.mean(info["outer_loss"]), "inner_loss": jnp.mean(info["inner_loss"])}

        return step

    # ---------------------------------------------------------------- validation

    def validation_data(self, seed: int | None = None):
        """``(operators, x, y)`` of the full validation images of every task, stacked over tasks (fixed noise)."""
        seed = self.cfg.trainer.seed if seed is None else seed
        x = self.tasks.val
        keys = jnp.stack([jax.random.fold_in(jax.random.key(seed + 1), i) for i in range(self.num_tasks)])
        y = jax.vmap(lambda task, k: task.measure(k, task.val))(self.tasks, keys)  # the keys of evaluation.py
        return self.tasks.operator, x, y

    def validation_fn(self):
        """A jitted ``params -> (N,)`` mean validation PSNR per task (dB), images evaluated one at a time."""
        operators, x, y = self.validation_data()

        def per_task(params):
            model = self.model(params)

            def task_psnr(args):
                i, op, xs, ys = args
                net = self.task_model(model, i)
                recon = jax.lax.map(lambda v: jnp.abs(net(op, v, i)), ys)
                return jnp.mean(metrics.psnr(recon, jnp.abs(xs)))

            return jax.lax.map(task_psnr, (jnp.arange(self.num_tasks), operators, x, y))

        return jax.jit(per_task)

    # ---------------------------------------------------------------- devices

    def mesh(self) -> Mesh:
        """The 1-D ``("tasks",)`` mesh of ``trainer.devices`` devices (0: every device of every process)."""
        devices = jax.devices()
        count = self.cfg.trainer.devices or len(devices)
        if not 1 <= count <= len(devices):
            raise ConfigError(f"`trainer.devices` = {count} but {len(devices)} device(s) exist.")
        if jax.process_count() > 1 and count != len(devices):
            raise ConfigError(f"`trainer.devices` must be 0 or {len(devices)} in a run of {jax.process_count()} "
                              f"processes (every process's devices take part); got {count}.")
        if self.num_tasks % count:
            raise ConfigError(f"{self.num_tasks} tasks cannot be sharded evenly over `trainer.devices` = {count}.")
        return Mesh(np.array(devices[:count]), ("tasks",))
