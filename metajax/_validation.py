"""Argument checks shared by the public API.

Every check raises early with a message that names the argument, what was
received and what was expected. Checks on *values* (binary masks, NaN/Inf) run
only on concrete arrays: inside ``jit``/``vmap``/``grad`` the values are tracers
and only the static shape and dtype checks apply.
"""

from __future__ import annotations

import numbers
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x) -> bool:
    """True when ``x`` holds actual values (not a tracer under a transformation)."""
    return not isinstance(x, jax.core.Tracer)


def _describe(x) -> str:
    return f"shape {tuple(jnp.shape(x))} and dtype {jnp.result_type(x)}"


def check_ndim(name: str, x, ndim: int, what: str = "") -> None:
    if jnp.ndim(x) != ndim:
        hint = f" {what}" if what else ""
        raise ValueError(f"`{name}` must be a {ndim}-D array{hint}; got {_describe(x)}.")


def check_min_ndim(name: str, x, ndim: int, layout: str) -> None:
    if jnp.ndim(x) < ndim:
        raise ValueError(f"`{name}` must have layout {layout}; got {_describe(x)}.")


def check_trailing_shape(name: str, x, shape: tuple[int, ...], layout: str) -> None:
    trailing = tuple(jnp.shape(x))[-len(shape):] if shape else ()
    if jnp.ndim(x) < len(shape) or trailing != tuple(shape):
        raise ValueError(
            f"`{name}` must have layout {layout} with trailing shape {tuple(shape)}; "
            f"got {_describe(x)}."
        )


def check_complex(name: str, x) -> None:
    if not jnp.issubdtype(jnp.result_type(x), jnp.complexfloating):
        raise TypeError(
            f"`{name}` must be complex (complex64 or complex128); got dtype "
            f"{jnp.result_type(x)}. Convert explicitly, e.g. `x.astype(jnp.complex64)`."
        )


def check_real(name: str, x) -> None:
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise TypeError(
            f"`{name}` must be a real floating-point array; got dtype {jnp.result_type(x)}"
            + (" (take the magnitude with `jnp.abs` first)." if jnp.iscomplexobj(x) else ".")
        )


def check_inexact(name: str, x) -> None:
    if not jnp.issubdtype(jnp.result_type(x), jnp.inexact):
        raise TypeError(
            f"`{name}` must be a floating-point or complex array; got dtype {jnp.result_type(x)}."
        )


def check_finite(name: str, x) -> None:
    """Reject NaN/Inf in concrete arrays (a no-op on tracers)."""
    if is_concrete(x):
        finite = np.isfinite(np.asarray(x))
        if not finite.all():
            bad = int(finite.size - finite.sum())
            raise ValueError(
                f"`{name}` contains {bad} NaN/Inf value(s) out of {finite.size}; "
                "expected finite values."
            )


def as_binary_mask(name: str, mask, ndim: int = 2) -> jax.Array:
    """Return ``mask`` as a boolean array after checking it is ``ndim``-D and 0/1 valued."""
    check_ndim(name, mask, ndim, "(a binary sampling mask)")
    dtype = jnp.result_type(mask)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise TypeError(f"`{name}` must be boolean or 0/1 valued; got complex dtype {dtype}.")
    if dtype != jnp.bool_ and is_concrete(mask):
        values = np.unique(np.asarray(mask))
        if not np.isin(values, (0, 1)).all():
            shown = values[~np.isin(values, (0, 1))][:5]
            raise ValueError(
                f"`{name}` must be binary (only 0/1 or False/True); found values {shown.tolist()}."
            )
    mask = jnp.asarray(mask)
    if dtype != jnp.bool_ and not is_concrete(mask):  # inside jit: checked when the values exist
        mask = eqx.error_if(mask, (mask != 0) & (mask != 1), f"`{name}` must be binary (only 0/1 or False/True).")
    return mask.astype(bool)


def check_ratio(name: str, ratio) -> float:
    """A sampling ratio: a Python/NumPy real number in (0, 1]."""
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real):
        raise TypeError(f"`{name}` must be a real number in (0, 1]; got {ratio!r}.")
    ratio = float(ratio)
    if not (0.0 < ratio <= 1.0):
        raise ValueError(f"`{name}` must lie in (0, 1]; got {ratio}.")
    return ratio


def check_shape2d(name: str, shape) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in shape)
        ok = all(int(s) == s for s in shape)
    except (TypeError, ValueError):
        ok = False
    if not ok or h <= 0 or w <= 0:
        raise ValueError(f"`{name}` must be a pair of positive integers (H, W); got {shape!r}.")
    return h, w


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
    return int(value)


def check_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < float("inf"):
        raise ValueError(f"`{name}` must be a positive finite real number; got {value!r}.")
    return float(value)


def check_per_image(name: str, value, batch_shape, of: str) -> None:
    """``value`` is a scalar or one value per image: its shape broadcasts to ``batch_shape`` (the leading axes of
    ``of``, named in the message) without growing it."""
    batch_shape = tuple(batch_shape)
    try:
        fits = np.broadcast_shapes(tuple(jnp.shape(value)), batch_shape) == batch_shape
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"`{name}` of shape {tuple(jnp.shape(value))} must be a scalar or broadcast to the batch "
                         f"shape {batch_shape} of `{of}` (one value per image).")


def check_key(name: str, key) -> None:
    """A ``jax.random`` key: a typed key array or a raw uint32 key of shape (2,)."""
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if jnp.ndim(key) != 0:
            raise ValueError(f"`{name}` must be a single PRNG key; got a key array of shape {key.shape}.")
        return
    if dtype != jnp.uint32 or jnp.shape(key) != (2,):
        raise TypeError(
            f"`{name}` must be a jax.random key (e.g. `jax.random.key(0)`); got "
            + (f"{_describe(key)}." if dtype is not None else f"{type(key).__name__}.")
        )


def require_file(name: str, path, what: str = "file") -> Path:
    """``path`` as a Path, raising FileNotFoundError (naming the argument, and saying whether ``path`` is missing
    or a directory) if it is not a file."""
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"`{name}`: {str(path)!r} is a directory; expected a {what}.")
    if not path.is_file():
        raise FileNotFoundError(f"`{name}`: {what} {str(path)!r} does not exist.")
    return path


def require_dir(name: str, path, what: str = "directory") -> Path:
    """``path`` as a Path, raising FileNotFoundError (naming the argument, and saying whether ``path`` is missing
    or a file) if it is not a directory."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileNotFoundError(f"`{name}`: {str(path)!r} is a file; expected a {what}.")
    if not path.is_dir():
        raise FileNotFoundError(f"`{name}`: {what} {str(path)!r} does not exist.")
    return path


def open_hdf5(name: str, path):
    """``h5py.File(path, "r")``, raising ValueError (naming the argument) when ``path`` is not a readable HDF5
    file."""
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"`{name}`: {str(path)!r} is not a readable HDF5 file ({error}).") from None


def check_measurements(operator, y) -> jax.Array:
    """``y`` holds the measurements of *one* image under ``operator`` (batches go through ``jax.vmap``), and
    no NaN/Inf: checked at once when concrete, and when its values exist (``eqx.error_if``, naming ``y``) when
    traced. Returns ``y`` (with the traced check attached)."""
    check_inexact("y", y)
    try:
        image = jax.eval_shape(operator.adjoint, jax.ShapeDtypeStruct(jnp.shape(y), jnp.result_type(y)))
    except (TypeError, ValueError) as error:
        raise type(error)(f"`y` does not fit `operator` ({type(operator).__name__}): {error}") from None
    if len(image.shape) != 2:
        raise ValueError(f"`y` of shape {tuple(jnp.shape(y))} gives an image of shape {image.shape} under "
                         f"`operator.adjoint`; the network reconstructs one (H, W) image: map over a batch with "
                         "`jax.vmap(lambda v: net(operator, v))(ys)`.")
    if is_concrete(y):
        check_finite("y", y)
        return y
    return eqx.error_if(y, ~jnp.all(jnp.isfinite(y)), "`y` (the measurements) contains NaN/Inf values.")


SUPPORTED_FLOATS = ("float32", "float64")


def check_float_dtype(name: str, dtype) -> None:
    """A model's parameter dtype: float32 or float64 (float16/bfloat16 lose the gradients' precision and the
    complex FFTs have no half-precision form)."""
    try:
        ok = jnp.dtype(dtype).name in SUPPORTED_FLOATS
    except TypeError:
        ok = False
    if not ok:
        raise TypeError(f"`{name}` must be float32 or float64; got {dtype!r}.")


def check_model_precision(model) -> None:
    """Every floating-point parameter of ``model`` is float32/float64 (complex64/complex128): a network cast to
    float16 or bfloat16 is refused by name before any computation."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(model)[0]:
        if eqx.is_inexact_array(leaf) and jnp.finfo(leaf.dtype).dtype.name not in SUPPORTED_FLOATS:
            raise TypeError(f"the model's parameter {jax.tree_util.keystr(path)} has dtype {leaf.dtype}; metajax "
                            "models run in float32 or float64 (cast with `jax.tree.map(lambda a: a.astype("
                            "jnp.float32) if eqx.is_inexact_array(a) else a, model)`).")


def check_task_weight(omega, dtype):
    """The task weight ω as a ``dtype`` scalar: a concrete ω must be a finite scalar; a traced one is checked
    when its value exists (``eqx.error_if``)."""
    if isinstance(omega, (str, bytes)) or not jnp.issubdtype(jnp.result_type(omega), jnp.number):
        raise TypeError(f"`omega` must be a real scalar (the task weight); got {omega!r}.")
    if jnp.ndim(omega) != 0:
        raise ValueError(f"`omega` must be a scalar (one task weight per call; map over tasks with `jax.vmap`); "
                         f"got shape {jnp.shape(omega)}.")
    omega = jnp.asarray(omega, dtype)
    if is_concrete(omega):
        check_finite("omega", omega)
        return omega
    return eqx.error_if(omega, ~jnp.isfinite(omega), "`omega` (the task weight) is non-finite.")
