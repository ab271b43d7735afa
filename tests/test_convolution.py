"""The convolution primitive against ``lax.conv_general_dilated`` (JAX's own derivatives), float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from metajax.models.convolution import _conv_p, _weight_p, conv2d, conv2d_weight_gradient, flip_swap


def reference(x, kernel, groups=1):
    pad = tuple((k // 2, k // 2) for k in kernel.shape[:2])
    return lax.conv_general_dilated(x, kernel, (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    feature_group_count=groups)


def max_error(a, b) -> float:
    return max(float(jnp.max(jnp.abs(u - v)) / (jnp.max(jnp.abs(v)) + 1e-300))
               for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture
def operands(x64):
    rng = np.random.default_rng(0)
    return (jnp.asarray(rng.standard_normal((2, 9, 10, 4))), jnp.asarray(rng.standard_normal((3, 5, 4, 6))),
            jnp.asarray(rng.standard_normal((2, 9, 10, 4))), jnp.asarray(rng.standard_normal((3, 5, 4, 6))))


def energies(x, kernel):
    """A nonlinear scalar of the convolution, ours and the reference (so derivatives are not trivially linear)."""
    return (lambda x, k: jnp.sum(jnp.sin(conv2d(x, k)) ** 2), lambda x, k: jnp.sum(jnp.sin(reference(x, k)) ** 2))


def test_value_gradient_jvp_and_hessian_vector_products_match(operands):
    x, kernel, dx, dk = operands
    ours, ref = energies(x, kernel)
    assert max_error(conv2d(x, kernel), reference(x, kernel)) < 1e-14
    assert max_error(jax.grad(ours, (0, 1))(x, kernel), jax.grad(ref, (0, 1))(x, kernel)) < 1e-13
    assert max_error(jax.jvp(ours, (x, kernel), (dx, dk)), jax.jvp(ref, (x, kernel), (dx, dk))) < 1e-13
    # Forward-over-reverse (Hessian-vector products, as CG on a Hessian needs) and reverse-over-reverse.
    hvp = lambda f: jax.jvp(jax.grad(f, (0, 1)), (x, kernel), (dx, dk))[1]  # noqa: E731
    assert max_error(hvp(ours), hvp(ref)) < 1e-13
    penalty = lambda f: lambda x, k: sum(jnp.sum(g**2) for g in jax.grad(f, (0, 1))(x, k))  # noqa: E731
    assert max_error(jax.grad(penalty(ours), (0, 1))(x, kernel), jax.grad(penalty(ref), (0, 1))(x, kernel)) < 1e-13
    # Third order: the gradient of a Hessian-vector product's norm.
    third = lambda f: lambda x, k: jnp.sum(jax.jvp(jax.grad(f), (x, k), (dx, dk))[1] ** 2)  # noqa: E731
    assert max_error(jax.grad(third(ours), (0, 1))(x, kernel), jax.grad(third(ref), (0, 1))(x, kernel)) < 1e-12


@pytest.mark.parametrize("axes", [pytest.param((0, None), id="images", marks=pytest.mark.slow), pytest.param((None, 0), id="kernels"),
                                  pytest.param((0, 0), id="both")])
def test_vmap_over_images_kernels_or_both(axes, operands):
    x, kernel, _, _ = operands
    xs, ks = jnp.stack([x, 2 * x, -x]), jnp.stack([kernel, 0.5 * kernel, kernel**2])
    args = (xs if axes[0] == 0 else x, ks if axes[1] == 0 else kernel)
    ours, ref = energies(x, kernel)
    assert max_error(jax.vmap(conv2d, axes)(*args), jax.vmap(reference, axes)(*args)) < 1e-14
    # vmap of gradients (per-entry weight gradients) and gradients of vmapped sums.
    assert max_error(jax.vmap(jax.grad(ours, (0, 1)), axes)(*args), jax.vmap(jax.grad(ref, (0, 1)), axes)(*args)) < 1e-13
    total = lambda f: lambda a, b: jnp.sum(jax.vmap(f, axes)(a, b) ** 2)  # noqa: E731
    assert max_error(jax.grad(total(ours), (0, 1))(*args), jax.grad(total(ref), (0, 1))(*args)) < 1e-13
    penalty = lambda f: lambda a, b: sum(jnp.sum(g**2) for g in jax.grad(f, (0, 1))(a, b))  # noqa: E731
    assert max_error(jax.vmap(jax.grad(penalty(ours), (0, 1)), axes)(*args),
                     jax.vmap(jax.grad(penalty(ref), (0, 1)), axes)(*args)) < 1e-12


def test_inside_lax_scan_first_and_second_order(operands):
    """A rolled loop of gradient steps (an unrolled network's structure), differentiated twice."""
    x, kernel, _, _ = operands
    ours, ref = energies(x, kernel)

    def loss(energy, k):
        final = lax.scan(lambda c, _: (c - 0.01 * jax.grad(energy)(c, k), None), x, None, length=3)[0]
        return jnp.sum(final**2)

    assert max_error(jax.grad(lambda k: loss(ours, k))(kernel), jax.grad(lambda k: loss(ref, k))(kernel)) < 1e-13
    square = lambda energy: lambda k: jnp.sum(jax.grad(lambda k: loss(energy, k))(k) ** 2)  # noqa: E731
    assert max_error(jax.grad(square(ours))(kernel), jax.grad(square(ref))(kernel)) < 1e-12


def test_transposes_are_exact_adjoints(operands):
    x, kernel, _, _ = operands
    d = jnp.asarray(np.random.default_rng(1).standard_normal((2, 9, 10, 6)))
    (by_jax,) = jax.linear_transpose(lambda v: reference(v, kernel), x)(d)
    np.testing.assert_allclose(conv2d(d, flip_swap(kernel)), by_jax, rtol=1e-12, atol=1e-12)
    (weight_by_jax,) = jax.linear_transpose(lambda k: reference(x, k), kernel)(d)
    np.testing.assert_allclose(conv2d_weight_gradient(x, d, kernel.shape[:2]), weight_by_jax, rtol=1e-12, atol=1e-12)


def test_grouped_primitives_match_per_group_convolutions(x64):
    """Groups arise from vmapped weight gradients; check values and derivatives against per-group references."""
    rng = np.random.default_rng(2)
    groups = 3
    x = jnp.asarray(rng.standard_normal((2, 8, 7, groups * 2)))
    kernel = jnp.asarray(rng.standard_normal((3, 3, 2, groups * 4)))
    d = jnp.asarray(rng.standard_normal((2, 8, 7, groups * 4)))

    def per_group(x, k):
        return jnp.concatenate([reference(x[..., 2 * g:2 * g + 2], k[..., 4 * g:4 * g + 4]) for g in range(groups)], -1)

    assert max_error(_conv_p.bind(x, kernel, groups=groups), reference(x, kernel, groups)) < 1e-14
    ours = lambda x, d: jnp.sum(jnp.sin(_weight_p.bind(x, d, kernel_size=(3, 3), groups=groups)))  # noqa: E731
    ref = lambda x, d: jnp.sum(jnp.sin(jax.vjp(lambda k: per_group(x, k), kernel)[1](d)[0]))  # noqa: E731
    assert abs(float(ours(x, d) - ref(x, d))) < 1e-12
    assert max_error(jax.grad(ours, (0, 1))(x, d), jax.grad(ref, (0, 1))(x, d)) < 1e-13


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"odd kernel sizes"):
        conv2d(jnp.zeros((1, 5, 5, 2)), jnp.zeros((2, 2, 2, 3)))
    with pytest.raises(ValueError, match=r"x has 3 channels but the kernel expects 2"):
        conv2d(jnp.zeros((1, 5, 5, 3)), jnp.zeros((3, 3, 2, 3)))
    with pytest.raises(ValueError, match=r"expects x \(N, H, W, C\)"):
        conv2d(jnp.zeros((5, 5, 2)), jnp.zeros((3, 3, 2, 3)))
