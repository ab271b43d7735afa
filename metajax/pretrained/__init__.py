"""Pretrained reconstruction models shipped as package data, with their cards.

    >>> from metajax import pretrained
    >>> pretrained.available()
    ['chest_dcnet']
    >>> model, card = pretrained.load("chest_dcnet")
    >>> x_hat = model(operator, y)              # one complex (H, W) image; jit / vmap over y work

Each model lives in ``metajax/pretrained/<name>/``: ``model.eqx`` (the trained
:class:`~metajax.bilevel.TaskWeighted` network, ``eqx.tree_serialise_leaves``)
and ``card.json``: the data and split it was trained on, the command that
produced it (``tools/make_pretrained.py``: nothing here is edited by hand), the
resolved config, the compute and machine, and PSNR/SSIM per sampling ratio
beside zero-filled and TV on the same test slices, also on data it never saw.

``load`` returns a :class:`~metajax.bilevel.RatioWeighted` model:
``model(operator, y)`` reconstructs from single-coil measurements
``y = operator(x)`` of a :class:`~metajax.operators.SingleCoilMRI` with any
mask and any image size, choosing its task weight from the mask's sampling
ratio (linear interpolation between the trained ratios, constant outside
them). The models were trained on images normalised to maximum 1; scale other
data accordingly (``metajax-reconstruct`` does it for you).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import equinox as eqx
import jax

from metajax.bilevel import RatioWeighted, TaskWeighted
from metajax.models import LOA, DCNet
from metajax.pretrained.selfcheck import holdout, self_check

__all__ = ["available", "load", "build", "model_path", "self_check", "holdout"]


def _root() -> Path:
    return Path(str(resources.files("metajax.pretrained")))


def available() -> list[str]:
    """The names of the shipped models (sorted)."""
    return sorted(p.name for p in _root().iterdir() if (p / "card.json").is_file() and (p / "model.eqx").is_file())


def model_path(name: str) -> Path:
    """The folder of the shipped model ``name`` (clear error for an unknown name)."""
    names = available()
    if name not in names:
        raise ValueError(f"`name`: no pretrained model {name!r}; available: {names}.")
    return _root() / name


def build(model_config: dict, num_tasks: int) -> TaskWeighted:
    """An untrained :class:`TaskWeighted` network of the card's ``config["model"]`` (the skeleton weights load into).
    """
    name = model_config["name"]
    key = jax.random.key(0)
    if name == "dcnet":
        net = DCNet(key, model_config["phases"], layers=model_config["layers"], channels=model_config["features"],
                    mu=model_config["mu"], mask_aware=model_config.get("mask_aware", False),
                    cg_iters=model_config.get("cg_iters", 10))
    elif name in ("loa", "loa_paper"):
        make = LOA if name == "loa" else LOA.paper
        net = make(key, model_config["phases"], features=model_config["features"], layers=model_config["layers"])
    else:
        raise ValueError(f"pretrained models of type {name!r} are not supported (dcnet, loa, loa_paper).")
    return TaskWeighted(net, num_tasks)


def load(name: str) -> tuple[RatioWeighted, dict]:
    """``(model, card)`` of the shipped model ``name`` (see the module docstring)."""
    folder = model_path(name)
    card = json.loads((folder / "card.json").read_text())
    ratios = card["trained_ratios"]  # the sampled fractions of the training masks, one per task weight
    like = build(card["config"]["model"], len(ratios))
    trained = eqx.tree_deserialise_leaves(folder / "model.eqx", like)
    return RatioWeighted.from_task_weighted(trained, ratios, card.get("trained_lines")), card
