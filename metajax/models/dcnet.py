"""DCNet: an unrolled network of weight-shared CNN corrections and exact data consistency (MoDL / DC-CNN family).

Phase k (k = 1..K) of the reconstruction of ``y = A x + n``:

    z_k     = x_{k−1} + κ D_θ(x_{k−1})                                   (learned correction)
    x_k     = argmin_x ½‖A x − y‖² + (μ_k/2) ‖x − z_k‖²                  (data consistency)
            = (A^H A + μ_k I)^{-1} (A^H y + μ_k z_k)

with ``x_0 = A^H y`` (zero-filled). ``D_θ`` is one residual CNN shared by every
phase (real channels [Re, Im] at its boundary, 3×3 convolutions with biases,
ReLU, a linear last layer); ``μ_k = softplus(m_k)`` are the only per-phase
parameters; κ is the task weight (``κ = 2·sigmoid(ω)``, so ω = 0 and "no task
weight" both give κ = 1 and the identical network).

Data consistency is exact: for :class:`~metajax.operators.SingleCoilMRI`
(``A^H A = F^H M F`` with a 0/1 mask M) it is the closed form in k-space

    F x_k = M ⊙ (y + μ_k F z_k) / (1 + μ_k) + (1 − M) ⊙ F z_k

(sampled entries blend the measurement with the prediction; unsampled ones keep
the prediction); for any other operator (multi-coil, restoration) it is
``cg_iters`` conjugate-gradient iterations on ``(A^H A + μ_k I) x = A^H y + μ_k z_k``
started at ``z_k`` (fixed count, so it is differentiable and jit-friendly).

Initialisation: the CNN's last layer is zero, so ``D_θ = 0`` and, because the
zero-filled image already satisfies ``F x_0 = y`` on the mask, every phase maps
``x_0`` to itself: at step 0 the network returns the zero-filled image exactly,
and training improves on it from the first step (no early dip).

References: Aggarwal, Mani & Jacob, "MoDL" (IEEE TMI 2019: shared weights and
exact or CG data consistency); Schlemper et al., "A deep cascade of CNNs for
dynamic MR image reconstruction" (IEEE TMI 2018: the closed-form k-space data
consistency).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from metajax._validation import (check_float_dtype, check_key, check_measurements, check_model_precision,
                                check_positive, check_positive_int, check_task_weight)
from metajax.adjoint import Autodiff, unroll
from metajax.linear_solve import conjugate_gradient
from metajax.models.convolution import conv2d
from metajax.models.layers import hwio, xavier_uniform
from metajax.models.loa import positive, positive_inverse
from metajax.operators.base import LinearOperator
from metajax.operators.fourier import fft2c, ifft2c
from metajax.operators.mri import SingleCoilMRI


class ResidualCNN(eqx.Module):
    """``D_θ``: complex (H, W) image → complex (H, W) correction, via the real stack [Re, Im].

    ``layers`` 3×3 convolutions (2 → C → … → C → 2) with biases and ReLU between
    them; the last layer is initialised to zero (``D_θ ≡ 0`` at initialisation),
    the others Xavier-uniform with the ReLU gain √2. Kernels are stored HWIO,
    the layout ``metajax.models.convolution.conv2d`` runs fastest.
    """

    kernels: tuple[jax.Array, ...]
    biases: tuple[jax.Array, ...]

    def __init__(self, key, layers: int = 5, channels: int = 32, kernel_size: int = 3, dtype=jnp.float32,
                 mask_aware: bool = False):
        check_key("key", key)
        check_float_dtype("dtype", dtype)
        layers = check_positive_int("layers", layers)
        channels = check_positive_int("channels", channels)
        if layers < 2:
            raise ValueError(f"`layers` must be at least 2 (an input and an output convolution); got {layers}.")
        if check_positive_int("kernel_size", kernel_size) % 2 == 0:
            raise ValueError(f"`kernel_size` must be odd; got {kernel_size}.")
        widths = [4 if mask_aware else 2] + [channels] * (layers - 1) + [2]
        keys = jax.random.split(key, layers)
        kernels = [hwio(xavier_uniform(keys[i], (widths[i + 1], widths[i], kernel_size, kernel_size), dtype, 2**0.5))
                   for i in range(layers - 1)]
        kernels.append(jnp.zeros((kernel_size, kernel_size, widths[-2], 2), dtype))
        self.kernels = tuple(kernels)
        self.biases = tuple(jnp.zeros(w, dtype) for w in widths[1:])

    @property
    def mask_aware(self) -> bool:
        """Whether the CNN also sees the unmeasured part of its input (4 input channels instead of 2)."""
        return self.kernels[0].shape[2] == 4

    def __call__(self, x: jax.Array, unmeasured: jax.Array | None = None) -> jax.Array:
        real = jnp.finfo(x.dtype).dtype
        parts = [x] if unmeasured is None else [x, unmeasured]
        if len(parts) * 2 != self.kernels[0].shape[2]:
            raise ValueError(f"this CNN takes {self.kernels[0].shape[2] // 2} complex input(s); got {len(parts)} "
                             "(a mask-aware CNN needs `unmeasured`).")
        h = jnp.stack([c for p in parts for c in (p.real, p.imag)], axis=-1)[None].astype(real)  # (1, H, W, 2|4)
        last = len(self.kernels) - 1
        for i, (kernel, bias) in enumerate(zip(self.kernels, self.biases)):
            h = conv2d(h, kernel.astype(real)) + bias.astype(real)
            if i < last:
                h = jax.nn.relu(h)
        return jax.lax.complex(h[0, ..., 0], h[0, ..., 1])


class DCParams(eqx.Module):
    """What every phase shares: the CNN, the task (operator, measurements) and κ."""

    cnn: ResidualCNN
    operator: LinearOperator
    y: jax.Array
    kappa: jax.Array


def data_consistency(operator: LinearOperator, y: jax.Array, z: jax.Array, mu: jax.Array, cg_iters: int = 10):
    """``argmin_x ½‖A x − y‖² + (μ/2)‖x − z‖² = (A^H A + μ I)^{-1}(A^H y + μ z)`` (module docstring).

    Closed form in k-space for :class:`~metajax.operators.SingleCoilMRI`;
    ``cg_iters`` CG iterations from ``z`` for any other operator.
    """
    if isinstance(operator, SingleCoilMRI):
        k = fft2c(z)
        return ifft2c(jnp.where(operator.mask, (y + mu * k) / (1 + mu), k))
    return conjugate_gradient(lambda v: operator.normal(v) + mu * v, operator.adjoint(y) + mu * z, z, tol=0.0,
                              max_iters=cg_iters)[0]


class DCPhase(eqx.Module):
    """One phase ``x_k = DC_{μ_k}(x_{k−1} + κ D_θ(x_{k−1}))`` as ``(x, theta, params) -> x``; ``theta = {"mu": μ_k}``."""

    cg_iters: int = eqx.field(static=True, default=10)

    def __call__(self, x, theta, params: DCParams):
        # mask-aware: the CNN also sees x − A^H A x, the part of x that data consistency will not correct
        # (F^H (1 − M) F x for single-coil MRI)
        unmeasured = x - params.operator.normal(x) if params.cnn.mask_aware else None
        z = x + params.kappa * params.cnn(x, unmeasured)
        return data_consistency(params.operator, params.y, z, theta["mu"].astype(params.kappa.dtype), self.cg_iters)


class DCNet(eqx.Module):
    """Unrolled DCNet (see the module docstring).

    Args:
        key: PRNG key for the CNN initialisation.
        num_phases: K, the number of unrolled phases (CNN + data consistency).
        layers: depth of the shared :class:`ResidualCNN`.
        channels: its width.
        mu: initial data-consistency weight μ_k of every phase (positive; with
            noiseless data small μ trusts the measurements).
        cg_iters: CG iterations of the data consistency for operators other than
            :class:`~metajax.operators.SingleCoilMRI`.
        mask_aware: the CNN also receives ``x − A^H A x`` (the part of the image
            in unmeasured k-space, which data consistency never corrects) as two
            more input channels; see docs/models.md "Stability across masks".

    ``net(operator, y, omega=None, adjoint=Autodiff())`` reconstructs one
    complex (H, W) image (``vmap`` for batches); ``omega`` is the task weight
    (κ = 2·sigmoid(ω); ``None``: κ = 1). The float leaves are the trainable
    parameters: the CNN, ``mu_raw`` (μ_k = softplus(m_k)) — nothing else.
    """

    cnn: ResidualCNN
    mu_raw: jax.Array
    phase: DCPhase

    def __init__(self, key, num_phases: int = 5, layers: int = 5, channels: int = 32, mu: float = 0.05,
                 cg_iters: int = 10, dtype=jnp.float32, mask_aware: bool = False):
        num_phases = check_positive_int("num_phases", num_phases)
        check_positive("mu", mu)
        self.cnn = ResidualCNN(key, layers, channels, dtype=dtype, mask_aware=mask_aware)
        self.mu_raw = jnp.full(num_phases, positive_inverse(mu, dtype=dtype))
        self.phase = DCPhase(check_positive_int("cg_iters", cg_iters))

    @property
    def mu(self) -> jax.Array:
        """μ_k, (K,)."""
        return positive(self.mu_raw)

    @property
    def num_phases(self) -> int:
        """K, the number of unrolled phases."""
        return self.mu_raw.shape[0]

    @staticmethod
    def kappa(omega, dtype=jnp.float32) -> jax.Array:
        """The task weight κ = 2·sigmoid(ω) ∈ (0, 2) (κ = 1 for ω = 0 and for ``omega=None``)."""
        return jnp.ones((), dtype) if omega is None else 2 * jax.nn.sigmoid(jnp.asarray(omega, dtype))

    def phase_inputs(self, operator, y, omega=None):
        """``(x₀, params)`` of the unrolled phases: the zero-filled image and the shared :class:`DCParams`."""
        check_model_precision(self)
        y = check_measurements(operator, y)
        x0 = operator.adjoint(y)
        real = jnp.finfo(x0.dtype).dtype
        return x0, DCParams(self.cnn, operator, y, self.kappa(None if omega is None else check_task_weight(omega, real),
                                                              real))

    def __call__(self, operator: LinearOperator, y: jax.Array, omega=None, *, adjoint=Autodiff()) -> jax.Array:
        """Reconstruct one complex image from ``y`` (task weight ``omega``); batches through ``jax.vmap``."""
        x0, params = self.phase_inputs(operator, y, omega)
        return unroll(self.phase, x0, {"mu": self.mu}, params, adjoint=adjoint)


def with_mask_input(net: DCNet) -> DCNet:
    """``net`` with a mask-aware CNN whose two new input channels start at zero weight: the same reconstruction
    until training uses them (how a trained DCNet is warm-started as a mask-aware one)."""
    if net.cnn.mask_aware:
        return net
    first = net.cnn.kernels[0]
    padded = jnp.concatenate([first, jnp.zeros_like(first)], axis=2)  # HWIO: inputs [Re x, Im x, Re u, Im u]
    return eqx.tree_at(lambda n: n.cnn.kernels[0], net, padded)
