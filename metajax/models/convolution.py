"""2-D convolution whose derivatives of every order are forward convolutions.

    conv2d(x, k)[n, h, w, o] = Σ_{a, b, i} k[a, b, i, o] · x_pad[n, h + a, w + b, i]

with zero 'SAME' padding and odd kernels; ``x`` is channels-last
``(N, H, W, C_in)`` and ``k`` is ``(kh, kw, C_in, C_out)`` (HWIO). This is
``lax.conv_general_dilated`` with those dimension numbers; what differs is
how it is differentiated and batched.

Why. Inside a *rolled* loop (``lax.scan``/``while_loop`` bodies, which is how
unrolled networks run) XLA:CPU runs only canonical NHWC/HWIO convolutions fast;
the transposed convolutions that JAX's autodiff emits for the input gradient
(``rev`` of the kernel with swapped feature dimensions) and for the weight
gradient (batch and feature dimensions exchanged), and channels-first
convolutions, fall back to a path 4–5× slower (docs/adjoint.md, DESIGN.md §5).
Here the convolution is a primitive with its own transpose rules, and each
rule is again a canonical convolution of this primitive, with the kernel
flipped and channel-swapped or the operands transposed explicitly (cheap
copies):

    ∂x:  conv2d(ȳ, flip_swap(k))                       (adjoint in x)
    ∂k:  conv2d_weight(x, ȳ)                          (adjoint in k)
    conv2d_weight(x, d)ᵀ in x:  conv2d(d, flip_swap(k̄)),   in d:  conv2d(x, k̄)

Both primitives are bilinear, so their JVPs are the primitives themselves and
``jax.jvp``, ``jax.grad``, forward-over-reverse (Hessian-vector products),
reverse-over-reverse and ``vmap`` all work. Under ``vmap`` a shared kernel
folds the vmapped axis into the image batch; batched kernels (per-task
weights) run one canonical convolution per entry in a ``lax.map`` (XLA:CPU's
grouped convolution measured 3.7× slower); per-entry weight gradients (what a
vmapped custom adjoint such as MLM computes) become one convolution grouped
over the entries (3.6× faster than one per entry, whose contraction is thin).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

try:
    from jax.core import ShapedArray
except ImportError:  # where jax.core no longer re-exports it
    from jax._src.core import ShapedArray

_CANONICAL = ("NHWC", "HWIO", "NHWC")


def _same_padding(kernel_size) -> tuple[tuple[int, int], tuple[int, int]]:
    return tuple((k // 2, k // 2) for k in kernel_size)


def flip_swap(kernel: jax.Array, groups: int = 1) -> jax.Array:
    """Kernel of the adjoint convolution: spatially flipped, input and output channels swapped within each group.

    ``(kh, kw, I, G·O) → (kh, kw, O, G·I)``; exact for odd kernels and 'SAME' zero padding.
    """
    kh, kw, cin, cout = kernel.shape
    k = jnp.flip(kernel, (0, 1)).reshape(kh, kw, cin, groups, cout // groups)
    return k.transpose(0, 1, 4, 3, 2).reshape(kh, kw, cout // groups, groups * cin)


# ------------------------------------------------------------------ primitives
# Both take ``groups`` G: x has G·I channels, the kernel is (kh, kw, I, G·O) and group g of the
# output channels sees only group g of the input channels (G = 1 for a plain convolution).

_conv_p = Primitive("metajax_conv2d")
_weight_p = Primitive("metajax_conv2d_weight")


def _conv_impl(x, kernel, *, groups):
    return lax.conv_general_dilated(x, kernel, (1, 1), _same_padding(kernel.shape[:2]),
                                    dimension_numbers=_CANONICAL, feature_group_count=groups)


def _conv_impl_cpu(x, kernel, *, groups):
    # XLA:CPU vectorises over output channels: with fewer than 8 (an 8 → 2 adjoint convolution) it
    # runs 1.5–2× faster computing 8 zero-padded outputs and keeping the first ones.
    cout = kernel.shape[3]
    if groups > 1 or cout >= 8:
        return _conv_impl(x, kernel, groups=groups)
    return _conv_impl(x, jnp.pad(kernel, ((0, 0), (0, 0), (0, 0), (0, 8 - cout))), groups=1)[..., :cout]


def _weight_impl(x, d, *, kernel_size, groups):
    # k̄[a, b, i, g·O + o] = Σ_{n,h,w} x_pad[n, h+a, w+b, g·I + i] d[n, h, w, g·O + o]: a canonical
    # convolution of x_pad (as (I, H + 2p, W + 2p, G·N)) by d (as the "kernel" (H, W, N, G·O)),
    # grouped over its features. x is padded explicitly: the same convolution with the padding
    # left to XLA ran 5–6× slower on CPU (24 ms vs 4 ms, one 256² image, 8 → 8 channels).
    n, h, w, channels = x.shape
    (ph, _), (pw, _) = _same_padding(kernel_size)
    x = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    lhs = x.reshape(*x.shape[:3], groups, channels // groups).transpose(4, 1, 2, 3, 0)
    out = lax.conv_general_dilated(lhs.reshape(*lhs.shape[:3], groups * n), d.transpose(1, 2, 0, 3), (1, 1),
                                   "VALID", dimension_numbers=_CANONICAL, feature_group_count=groups)
    return out.transpose(1, 2, 0, 3)


def _conv_abstract(x, kernel, *, groups):
    return ShapedArray((*x.shape[:3], kernel.shape[3]), x.dtype)


def _weight_abstract(x, d, *, kernel_size, groups):
    return ShapedArray((*kernel_size, x.shape[3] // groups, d.shape[3]), x.dtype)


def _conv_transpose_x(ct, x, kernel, *, groups):
    return _conv_p.bind(ct, flip_swap(kernel, groups), groups=groups)


def _conv_transpose_kernel(ct, x, kernel, *, groups):
    return _weight_p.bind(x, ct, kernel_size=tuple(kernel.aval.shape[:2]), groups=groups)


def _weight_transpose_x(ct, x, d, *, kernel_size, groups):
    return _conv_p.bind(d, flip_swap(ct, groups), groups=groups)


def _weight_transpose_d(ct, x, d, *, kernel_size, groups):
    return _conv_p.bind(x, ct, groups=groups)


def _batch_first(a, dim, size):
    """The vmapped axis moved to the front; an unbatched operand broadcast to ``size``."""
    return jnp.broadcast_to(a, (size, *a.shape)) if dim is None else jnp.moveaxis(a, dim, 0)


def _conv_batch(args, dims, *, groups):
    (x, kernel), (dx, dk) = args, dims
    if dk is None:  # shared kernel: the vmapped axis joins the image batch
        x = jnp.moveaxis(x, dx, 0)
        out = _conv_p.bind(x.reshape(-1, *x.shape[2:]), kernel, groups=groups)
        return out.reshape(*x.shape[:2], *out.shape[1:]), 0
    # Batched kernels (per-task weights): one canonical convolution per entry.
    size = kernel.shape[dk]
    entries = (_batch_first(x, dx, size), jnp.moveaxis(kernel, dk, 0))
    return lax.map(lambda e: _conv_p.bind(*e, groups=groups), entries), 0


def _weight_batch(args, dims, *, kernel_size, groups):
    # Per-entry weight gradients (as a vmapped custom adjoint computes them): the batch joins the
    # groups, x (B, N, H, W, G·I) → (N, H, W, B·G·I), one grouped convolution for all entries.
    (x, d), (dx, dd) = args, dims
    size = x.shape[dx] if dx is not None else d.shape[dd]
    x, d = _batch_first(x, dx, size), _batch_first(d, dd, size)
    stack = lambda a: a.transpose(1, 2, 3, 0, 4).reshape(*a.shape[1:4], -1)  # noqa: E731
    out = _weight_p.bind(stack(x), stack(d), kernel_size=kernel_size, groups=size * groups)
    return out.reshape(*out.shape[:3], size, -1), 3


for _p, _impl, _abstract, _batch, _lhs, _rhs in (
    (_conv_p, _conv_impl, _conv_abstract, _conv_batch, _conv_transpose_x, _conv_transpose_kernel),
    (_weight_p, _weight_impl, _weight_abstract, _weight_batch, _weight_transpose_x, _weight_transpose_d),
):
    _p.def_impl(_impl)
    _p.def_abstract_eval(_abstract)
    mlir.register_lowering(_p, mlir.lower_fun(_impl, multiple_results=False))
    ad.defbilinear(_p, _lhs, _rhs)
    batching.primitive_batchers[_p] = _batch
mlir.register_lowering(_conv_p, mlir.lower_fun(_conv_impl_cpu, multiple_results=False), platform="cpu")


# ------------------------------------------------------------------ public functions


def conv2d(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Channels-last correlation with 'SAME' zero padding (see the module docstring).

    Args:
        x: real (N, H, W, C_in) images.
        kernel: real (kh, kw, C_in, C_out) kernel (HWIO), kh and kw odd.

    Returns:
        (N, H, W, C_out), of ``x``'s dtype.
    """
    if x.ndim != 4 or kernel.ndim != 4:
        raise ValueError(f"conv2d expects x (N, H, W, C) and kernel (kh, kw, I, O); got shapes {x.shape}, "
                         f"{kernel.shape}.")
    kh, kw, cin, _ = kernel.shape
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"conv2d needs odd kernel sizes ('SAME' padding); got {kh}×{kw}.")
    if x.shape[3] != cin:
        raise ValueError(f"conv2d: x has {x.shape[3]} channels but the kernel expects {cin}.")
    if x.dtype != kernel.dtype:
        raise TypeError(f"conv2d: x and kernel dtypes differ ({x.dtype} vs {kernel.dtype}).")
    return _conv_p.bind(x, kernel, groups=1)


def conv2d_weight_gradient(x: jax.Array, d: jax.Array, kernel_size=(3, 3)) -> jax.Array:
    """The adjoint of ``k ↦ conv2d(x, k)`` applied to ``d`` (N, H, W, C_out): the (kh, kw, C_in, C_out) kernel
    ``Σ_{n,h,w} x_pad[n, h+a, w+b, i] d[n, h, w, o]``."""
    return _weight_p.bind(x, d, kernel_size=tuple(kernel_size), groups=1)
