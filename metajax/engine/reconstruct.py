"""``metajax-reconstruct``: reconstruct a user's undersampled single-coil k-space with a trained or pretrained model.

    metajax-reconstruct input=scan.h5                              # fastMRI layout with its own `mask`
    metajax-reconstruct input=scan.h5 mask_file=masks.h5 mask_name=radial_20 model=pretrained:chest_dcnet
    metajax-reconstruct input=scan.h5 mask_file=masks.h5 model=outputs/DATE/TIME 'slices=[0,8]'

``input`` is an HDF5 file in fastMRI single-coil layout: ``kspace`` (S, H, W)
complex in centred layout (``fft2c`` of the image), optionally a ``mask``
dataset — fastMRI's (W,) column mask or an (H, W) mask. ``mask_file`` (with
``mask_name`` when it holds several) or a generated mask (``mask_family`` at
``acceleration``) overrides it; without any, the non-zero samples are the mask
(:func:`metajax.engine.scans.choose_mask`). Multi-coil input (fastMRI
multi-coil HDF5 or a BART array) goes through :mod:`metajax.engine.scans`
(ESPIRiT maps, the multi-coil model ``chest_mc_dcnet``). k-space entries outside the
mask are set to zero (a fully sampled file is thus undersampled
retrospectively, and the output says so).

Self-check (``check=true``, the default): :func:`metajax.pretrained.self_check`
holds out ``check_fraction`` of each slice's non-central samples, reconstructs
from the rest and compares the model's prediction of the held-out samples with
zero-filled's and TV's. Slices where the model is worse by more than the
tolerance (score > 1.3: outside its domain) are named in a warning and, with ``fallback=tv`` (the default), are
reconstructed with TV instead: a learned model out of its domain can be far
below zero-filled, TV never is; ``fallback=none`` keeps the model's output.

Adaptation (``adapt=self``): before reconstructing, the model is adapted to the file's own measurements
with the splitting loss (:mod:`metajax.engine.adaptation`; ``adapt_steps``, ``adapt_lr``, ``adapt_params``),
keeping the step whose prediction of held-out k-space is best (the unadapted model if none is better);
``adaptation.json`` holds the curve, the chosen step and the seconds per slice.

Scaling: the models were trained on images with maximum 1, so each slice's
measurements are divided by ``s`` = the maximum of its zero-filled magnitude
(``scale=0``, the default) or by the given ``scale``, reconstructed, and
multiplied by ``s`` again: the output keeps the input's units.

Writes into the Hydra run directory (``hydra.run.dir=DIR``):
``reconstruction.h5`` with ``reconstruction`` (S, H, W) float32 magnitude,
``reconstruction_complex`` (S, H, W) complex64, ``zero_filled`` (S, H, W)
float32, ``mask`` (H, W) uint8, ``method`` (S,) (``model`` or ``tv``), the
self-check per slice (``self_check/score``, ``/flag``, ``/model``,
``/zero_filled``, ``/tv``) and attributes (model, input, sampling ratio,
scales); and ``slice_XXX.png`` (zero-filled | model) per slice unless
``png=false``. Every check (file, keys, shapes, mask, model) runs before any
reconstruction; progress is printed per chunk of slices.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import h5py
import hydra
import jax
import jax.numpy as jnp
import numpy as np
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import MISSING

from metajax._validation import as_binary_mask, open_hdf5, require_file
from metajax.engine import adaptation
from metajax.engine.experiment import ConfigError, resolve_path
from metajax.engine.models import load_model_source
from metajax.engine.rundir import guard_writes, register_checks
from metajax.engine.scans import choose_mask
from metajax.models import tv_reconstruction
from metajax.operators import MultiCoilMRI, SingleCoilMRI
from metajax.pretrained.selfcheck import TOLERANCE, self_check, tv_weight_for

CHUNK = 4


@dataclass
class ReconstructConfig:
    """The options of ``metajax-reconstruct`` (``key=value`` on the command line); each field's meaning is the
    comment beside it in ``metajax/engine/reconstruct.py`` (shown below)."""

    defaults: List[Any] = field(default_factory=lambda: ["_self_", {"checks": "default"}])
    input: str = MISSING  # HDF5, fastMRI single-coil layout (kspace (S, H, W), optional mask)
    model: str = "auto"  # a trained run directory, pretrained:NAME, or auto: pretrained:chest_dcnet for single-coil
    # k-space, pretrained:chest_mc_dcnet for multi-coil
    mask_file: Optional[str] = None  # HDF5 of 2-D masks (centred layout); overrides the input's own `mask`
    mask_name: Optional[str] = None  # the dataset in mask_file (needed when it holds several masks)
    slices: Optional[List[int]] = None  # [start, stop) of the slices to reconstruct (default: all)
    scale: float = 0.0  # divide y by this before the model (0: each slice's zero-filled maximum)
    png: bool = True
    check: bool = True  # the ground-truth-free self-check of every slice (held-out k-space; docs/models.md)
    check_fraction: float = 0.05  # share of the non-central samples the self-check holds out
    fallback: str = "tv"  # tv: slices the self-check flags are reconstructed with TV instead | none: keep the model's
    adapt: str = "none"  # self: adapt the model to the file's own measurements first (splitting loss, no ground
    # truth; metajax.engine.adaptation) | none
    adapt_steps: int = 60
    adapt_lr: Optional[float] = None  # default: metajax.engine.adaptation.DEFAULT_LR["self"]
    adapt_params: str = "all"  # all | cnn | omega
    mask_family: Optional[str] = None  # generate the mask (retrospective undersampling): a metajax.masks family ...
    acceleration: float = 4.0  # ... at this acceleration (fastMRI's centre fractions) ...
    mask_seed: int = 0  # ... from jax.random.key(mask_seed)
    maps: str = "espirit"  # multi-coil: coil sensitivities from the calibration centre: espirit | acs
    maps_file: Optional[str] = None  # multi-coil: read the sensitivities instead (BART array or HDF5 `maps`)


ConfigStore.instance().store(name="reconstruct", node=ReconstructConfig)
register_checks()


def check_options(cfg) -> None:
    """The options that do not depend on the input file."""
    if not (cfg.scale >= 0 and np.isfinite(cfg.scale)):
        raise ValueError(f"`scale` must be 0 (each slice's zero-filled maximum) or a positive number; got {cfg.scale}.")
    if cfg.fallback not in ("tv", "none"):
        raise ValueError(f"`fallback` must be tv or none; got {cfg.fallback!r}.")
    if cfg.adapt not in ("none", "self"):
        raise ValueError(f"`adapt` must be none or self (adapt to the file's own measurements); got {cfg.adapt!r}.")
    if not 0 < cfg.check_fraction < 1:
        raise ValueError(f"`check_fraction` must lie in (0, 1); got {cfg.check_fraction}.")


def load_inputs(cfg, base: Path | None):
    """``(kspace (S, H, W) complex64, mask (H, W) bool, notes)``, every check done, nothing reconstructed yet."""
    path = require_file("input", resolve_path(cfg.input, base))
    notes = []
    check_options(cfg)
    f = open_hdf5("input", path)
    with f:
        if "kspace" not in f:
            raise KeyError(f"`input`: {path.name} has no `kspace` dataset; keys: {sorted(f.keys())}.")
        ds = f["kspace"]
        if ds.ndim not in (2, 3) or not np.issubdtype(ds.dtype, np.complexfloating):
            raise ValueError(f"`input`: kspace must be complex (S, H, W) or (H, W); got {ds.shape} {ds.dtype}.")
        count = 1 if ds.ndim == 2 else ds.shape[0]
        start, stop = (0, count) if cfg.slices is None else tuple(cfg.slices)
        if cfg.slices is not None and (len(cfg.slices) != 2 or not 0 <= start < stop <= count):
            raise ValueError(f"`slices` must be [start, stop) within the {count} slices; got {list(cfg.slices)}.")
        kspace = np.asarray(ds[()] if ds.ndim == 2 else ds[start:stop], np.complex64).reshape(-1, *ds.shape[-2:])
        own_mask = np.asarray(as_binary_mask("mask", f["mask"][()], np.ndim(f["mask"]))) if "mask" in f else None
    shape = kspace.shape[-2:]
    if not np.all(np.isfinite(kspace)):
        raise ValueError(f"`input`: kspace of {path.name} holds NaN or Inf values.")
    if own_mask is not None and (own_mask.ndim not in (1, 2) or own_mask.shape[-1] != shape[1]):
        raise ValueError(f"`input`: its mask of shape {own_mask.shape} does not fit kspace {shape}: it must be "
                         f"({shape[1]},) (fastMRI's column mask) or {shape}.")
    mask, origin = choose_mask(cfg, base, kspace[:, None], own_mask)
    notes.append(f"mask: {origin}")
    outside = np.abs(kspace[:, ~mask]).max() if (~mask).any() else 0.0
    if outside > 0:
        notes.append("k-space outside the mask was non-zero: undersampled retrospectively with the mask")
    return np.where(mask, kspace, 0).astype(np.complex64), mask, notes


def zero_filled_images(kspace: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(S, H, W) float32 magnitude of ``A^H y`` per slice."""
    return np.abs(np.asarray(jax.vmap(SingleCoilMRI(jnp.asarray(mask)).adjoint)(jnp.asarray(kspace))))


def slice_scales(zero_filled: np.ndarray, scale: float = 0.0) -> np.ndarray:
    """(S,) the factor each slice's measurements are divided by: its zero-filled maximum (``scale=0``) or
    ``scale``."""
    scales = zero_filled.max(axis=(1, 2)) if scale == 0 else np.full(len(zero_filled), scale, np.float32)
    if scale < 0 or np.any(scales <= 0):
        raise ValueError("`scale`: slices with an all-zero zero-filled image cannot be scaled (give scale=…); "
                         f"got scale={scale}.")
    return scales


def reconstruct(model, kspace: np.ndarray, mask: np.ndarray, scale: float = 0.0, log=print):
    """``(reconstruction (S, H, W) complex64, zero_filled (S, H, W) float32, scales (S,))`` of ``kspace``."""
    operator = SingleCoilMRI(jnp.asarray(mask))
    y = jnp.asarray(kspace)
    zero_filled = zero_filled_images(kspace, mask)
    scales = slice_scales(zero_filled, scale)
    fn = jax.jit(lambda m, ys: jax.vmap(lambda v: m(operator, v, 0))(ys))
    parts, tic = [], time.perf_counter()
    for s in range(0, len(y), CHUNK):
        chunk = y[s:s + CHUNK] / jnp.asarray(scales[s:s + CHUNK], jnp.float32)[:, None, None]
        padded = jnp.concatenate([chunk, jnp.zeros((CHUNK - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        parts.append(np.asarray(fn(model, padded))[: len(chunk)] * scales[s:s + CHUNK, None, None])
        log(f"reconstructed slices {s + 1}–{s + len(chunk)} of {len(y)} ({time.perf_counter() - tic:.1f} s)")
    return np.concatenate(parts).astype(np.complex64), zero_filled.astype(np.float32), scales


def adapt_to_file(model, kspace: np.ndarray, mask: np.ndarray, cfg, log=print):
    """``(adapted model, report)``: ``model`` adapted to the file's own measurements (``adapt=self``)."""
    operator = SingleCoilMRI(jnp.asarray(mask))
    y = jnp.asarray(kspace) / jnp.asarray(slice_scales(zero_filled_images(kspace, mask), cfg.scale), jnp.float32)[:, None, None]
    settings = adaptation.Settings(mode="self", steps=cfg.adapt_steps, lr=cfg.adapt_lr, params=cfg.adapt_params)
    log(f"adapting to the file's own measurements ({len(y)} slice(s), {settings.steps} steps, splitting loss) ...")
    adapted, report = adaptation.adapt(adaptation.single_task(model, operator), operator, y, settings, log=log)
    log(f"adapted: held-out k-space error {report['start_heldout']:.4f} → {report['best_heldout']:.4f} (step "
        f"{report['best_step']} of {settings.steps} kept), {report['seconds']:.1f} s "
        f"({report['seconds_per_slice']:.1f} s per slice)")
    return adapted, report


def check_slices(model, kspace: np.ndarray, mask: np.ndarray, scales: np.ndarray, fraction: float,
                 log=print) -> dict:
    """:func:`metajax.pretrained.self_check` of every slice (measurements divided by its scale), in chunks."""
    parts = []
    for s in range(0, len(kspace), 2 * CHUNK):
        y = jnp.asarray(kspace[s:s + 2 * CHUNK]) / jnp.asarray(scales[s:s + 2 * CHUNK], jnp.float32)[:, None, None]
        parts.append(self_check(model, mask, y, jax.random.key(0), fraction))
        log(f"self-checked slices {s + 1}–{s + len(y)} of {len(kspace)}")
    return {k: np.concatenate([np.atleast_1d(p[k]) for p in parts]) for k in ("model", "zero_filled", "tv", "score",
                                                                               "flag")}


def tv_slices(kspace: np.ndarray, mask: np.ndarray, scales: np.ndarray, iterations: int = 300) -> np.ndarray:
    """TV reconstructions (λ from :func:`~metajax.pretrained.selfcheck.tv_weight_for`) of the slices, in their
    units."""
    operator = SingleCoilMRI(jnp.asarray(mask))
    y = jnp.asarray(kspace) / jnp.asarray(scales, jnp.float32)[:, None, None]
    weight = tv_weight_for(float(mask.mean()))
    recon = jax.vmap(lambda v: tv_reconstruction(operator, v, weight, iterations))(y)
    return (np.asarray(recon) * scales[:, None, None]).astype(np.complex64)


def _png(path: Path, zero_filled: np.ndarray, recon: np.ndarray, title: str, left: str = "zero-filled") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peak = max(float(recon.max()), 1e-12)
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.2))
    for ax, image, name in zip(axes, (zero_filled, recon), (left, title)):
        ax.imshow(image, cmap="gray", vmin=0, vmax=peak)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_reconstruction(out_dir: Path, recon, zero_filled, mask, scales, method, check, fraction, attrs, maps=None,
                         recon_size=None) -> Path:
    """``reconstruction.h5``: ``reconstruction`` (S, H, W) float32 magnitude, ``reconstruction_complex``,
    ``zero_filled``, ``mask``, ``scale``, ``method``, the self-check (``self_check/…``) and ``attrs``; for
    multi-coil scans also ``maps`` (S, C, H, W) and, with an ISMRMRD recon size, ``reconstruction_cropped``."""
    from metajax.data import center_crop

    path = out_dir / "reconstruction.h5"
    magnitude = np.abs(recon).astype(np.float32)
    with h5py.File(path, "w") as f:
        f["reconstruction"] = magnitude
        f["reconstruction_complex"] = recon
        f["zero_filled"] = zero_filled
        f["mask"] = mask.astype(np.uint8)
        f["scale"] = np.asarray(scales, np.float32)
        f["method"] = method.astype("S5")
        if maps is not None:
            f["maps"] = maps
        if recon_size is not None:
            f["reconstruction_cropped"] = center_crop(magnitude, recon_size)  # (x = rows: readout, y)
        if check is not None:
            for key in ("score", "model", "zero_filled", "tv"):
                f[f"self_check/{key}"] = check[key].astype(np.float32)
            f["self_check/flag"] = check["flag"].astype(np.uint8)
            f["self_check"].attrs.update({"fraction": fraction, "rule": "flag when the model's relative error on "
                                          f"held-out k-space exceeds {TOLERANCE} × min(zero-filled, TV)"})
        f.attrs.update(attrs)
    return path


def _fail(error) -> None:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)


def _model_source(cfg, base, coils: str):
    """The model for ``coils`` (single | multi) k-space; ``model=auto`` picks the shipped one."""
    spec = cfg.model if cfg.model != "auto" else ("pretrained:chest_mc_dcnet" if coils == "multi"
                                                   else "pretrained:chest_dcnet")
    source = load_model_source(spec, base, "model")
    if source.per_task is not None:
        raise ConfigError(f"{source.label} holds one network per trained task; use a joint or pretrained model.")
    if source.coils != coils:
        raise ConfigError(f"`model`: {source.label} was trained on {source.coils}-coil k-space but the input is "
                          f"{coils}-coil; use model=auto (pretrained:"
                          f"{'chest_mc_dcnet' if coils == 'multi' else 'chest_dcnet'}).")
    return source


def _report_check(check, cfg, count: int) -> np.ndarray:
    """Print the self-check's verdict; the flagged slices (indices into the reconstructed ones)."""
    flagged = np.flatnonzero(check["flag"])
    if flagged.size:
        first = cfg.slices[0] if cfg.slices is not None else 0
        names = ", ".join(str(first + i) for i in flagged)
        action = "reconstructed with TV instead (fallback=tv)" if cfg.fallback == "tv" else \
            "kept the model's reconstruction (fallback=none)"
        print(f"warning: out of the model's domain on slice(s) {names}: it predicts held-out k-space worse "
              f"than zero-filled or TV (self-check score > {TOLERANCE}); {action}.", flush=True)
    else:
        print(f"self-check: the model predicts held-out k-space within {TOLERANCE}× of zero-filled and TV or "
              f"better on all {count} slice(s) (scores {check['score'].min():.2f}–{check['score'].max():.2f}).")
    return flagged


def _multicoil_main(cfg, path: Path, out_dir: Path, base: Path) -> None:
    """``metajax-reconstruct`` on a multi-coil scan (:mod:`metajax.engine.scans`)."""
    from metajax.engine import scans

    log = lambda m: print(m, flush=True)  # noqa: E731
    try:
        check_options(cfg)
        if cfg.adapt != "none":
            raise ValueError("`adapt`: adaptation of multi-coil models is not supported yet; use adapt=none.")
        kspace, own_mask, recon_size, notes = scans.read_scan(path, cfg.slices)
        mask, origin = scans.choose_mask(cfg, base, kspace, own_mask)
        if cfg.maps_file is not None:
            require_file("maps_file", resolve_path(cfg.maps_file, base))
        elif cfg.maps not in scans.MAPS:
            raise ValueError(f"`maps` must be one of {scans.MAPS} (or give maps_file=…); got {cfg.maps!r}.")
        else:
            from metajax.operators import calibration_shape

            calibration_shape(mask)  # no ACS: fail before any work
        source = _model_source(cfg, base, "multi")
    except (ConfigError, FileNotFoundError, KeyError, ValueError, TypeError) as error:
        _fail(error)
    outside = bool(np.any(kspace[..., ~mask])) if (~mask).any() else False
    kspace = np.where(mask, kspace, 0).astype(np.complex64)
    if outside:
        notes.append("k-space outside the mask was non-zero: undersampled retrospectively with the mask")
    ratio = float(mask.mean())
    print(f"{len(kspace)} slice(s) of {kspace.shape[1]} coils × {kspace.shape[2]}×{kspace.shape[3]}, mask from "
          f"{origin}, sampling ratio {ratio:.3f}, model {source.label}" + "".join(f"; {n}" for n in notes), flush=True)
    tic = time.perf_counter()
    maps = (scans.read_maps(resolve_path(cfg.maps_file, base), kspace) if cfg.maps_file is not None
            else scans.estimate_maps(kspace, mask, cfg.maps, log=log))
    maps_seconds = time.perf_counter() - tic
    slice_scales = scans.scales(kspace, mask, maps, cfg.scale)
    tic = time.perf_counter()
    recon = scans.reconstruct(source.model, kspace, mask, maps, slice_scales, log=log)
    recon_seconds = time.perf_counter() - tic
    method = np.array(["model"] * len(recon), dtype=object)
    check = None
    if cfg.check:
        parts = []
        for s in range(len(kspace)):
            parts.append(self_check(source.model, mask, jnp.asarray(kspace[s]) / slice_scales[s], jax.random.key(0),
                                    cfg.check_fraction, maps=jnp.asarray(maps[s])))
            log(f"self-checked slice {s + 1} of {len(kspace)}")
        check = {k: np.array([p[k] for p in parts]) for k in ("model", "zero_filled", "tv", "score", "flag")}
        flagged = _report_check(check, cfg, len(recon))
        if cfg.fallback == "tv":
            for i in flagged:
                operator = MultiCoilMRI(jnp.asarray(mask), jnp.asarray(maps[i]))
                y = jnp.asarray(kspace[i]) / slice_scales[i]
                recon[i] = np.asarray(tv_reconstruction(operator, y, tv_weight_for(ratio), 300)) * slice_scales[i]
                method[i] = "tv"
    zero_filled = scans.rss_zero_filled(kspace)
    attrs = {"model": source.label, "input": str(cfg.input), "sampling_ratio": ratio, "mask": origin,
             "maps": "maps_file" if cfg.maps_file else cfg.maps, "notes": "; ".join(notes), "fallback": cfg.fallback,
             "seconds_maps": maps_seconds, "seconds_reconstruction": recon_seconds}
    written = write_reconstruction(out_dir, recon, zero_filled, mask, slice_scales, method, check, cfg.check_fraction,
                                   attrs, maps=maps, recon_size=recon_size)
    if cfg.png:
        for i in range(len(recon)):
            _png(out_dir / f"slice_{i:03d}.png", zero_filled[i], np.abs(recon[i]),
                 source.label if method[i] == "model" else "TV (self-check fallback)", left="zero-filled RSS")
    print(f"maps {maps_seconds / len(recon):.1f} s and reconstruction {recon_seconds / len(recon):.1f} s per slice; "
          f"wrote {written}" + (f" and {len(recon)} PNG(s)" if cfg.png else ""))


@hydra.main(version_base=None, config_name="reconstruct")
@guard_writes
def reconstruct_main(cfg) -> None:
    """``metajax-reconstruct input=F [options]``: reconstruct every slice of a single- or multi-coil scan (HDF5 or
    BART), self-check it without ground truth, write ``reconstruction.h5`` and PNGs (docs/models.md,
    docs/multicoil.md)."""
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    base = Path(hydra.utils.get_original_cwd())
    path = resolve_path(cfg.input, base)
    try:
        from metajax.engine.scans import is_bart, is_multicoil_file

        check_options(cfg)
        if is_bart(path):
            for suffix in (".hdr", ".cfl"):
                if not path.with_suffix(suffix).is_file():
                    raise FileNotFoundError(f"`input`: {str(path.with_suffix(suffix))!r} does not exist (a BART "
                                            "array is NAME.hdr + NAME.cfl).")
        else:
            require_file("input", path)
        multicoil = is_multicoil_file(path)
    except (FileNotFoundError, ValueError, TypeError) as error:
        _fail(error)
    if multicoil:
        return _multicoil_main(cfg, path, out_dir, base)
    try:
        kspace, mask, notes = load_inputs(cfg, base)
        source = _model_source(cfg, base, "single")
    except (ConfigError, FileNotFoundError, KeyError, ValueError, TypeError) as error:
        _fail(error)
    ratio = float(mask.mean())
    print(f"{len(kspace)} slice(s) of {kspace.shape[1]}×{kspace.shape[2]}, sampling ratio {ratio:.3f}, model "
          f"{source.label}" + "".join(f"; {n}" for n in notes), flush=True)
    model = source.model
    if cfg.adapt == "self":
        try:
            model, report = adapt_to_file(model, kspace, mask, cfg, log=lambda m: print(m, flush=True))
        except (ConfigError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(1)
        (out_dir / "adaptation.json").write_text(json.dumps(report, indent=2))
    recon, zero_filled, scales = reconstruct(model, kspace, mask, cfg.scale, log=lambda m: print(m, flush=True))
    method = np.array(["model"] * len(recon), dtype=object)
    check = None
    if cfg.check:
        check = check_slices(model, kspace, mask, scales, cfg.check_fraction, log=lambda m: print(m, flush=True))
        flagged = _report_check(check, cfg, len(recon))
        if flagged.size and cfg.fallback == "tv":
            recon[flagged] = tv_slices(kspace[flagged], mask, scales[flagged])
            method[flagged] = "tv"
    attrs = {"model": source.label + (" adapted to this file (self)" if cfg.adapt == "self" else ""),
             "input": str(cfg.input), "sampling_ratio": ratio, "notes": "; ".join(notes), "fallback": cfg.fallback}
    written = write_reconstruction(out_dir, recon, zero_filled, mask, scales, method, check, cfg.check_fraction, attrs)
    magnitude = np.abs(recon).astype(np.float32)
    if cfg.png:
        for i in range(len(recon)):
            _png(out_dir / f"slice_{i:03d}.png", zero_filled[i], magnitude[i],
                 source.label if method[i] == "model" else "TV (self-check fallback)")
    print(f"wrote {written}" + (f" and {len(recon)} PNG(s)" if cfg.png else ""))
