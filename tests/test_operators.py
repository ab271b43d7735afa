import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax import masks
from metajax.operators import (
    Blur,
    Denoising,
    Downsampling,
    Inpainting,
    MultiCoilMRI,
    SingleCoilMRI,
    birdcage_maps,
    fft2c,
    gaussian_kernel,
    ifft2c,
)

H, W = 24, 20


def _random(rng, shape, complex_):
    x = rng.standard_normal(shape)
    return jnp.asarray(x + 1j * rng.standard_normal(shape) if complex_ else x)


def _operators():
    """(name, operator, image dtype is complex) for every operator family."""
    rng = np.random.default_rng(0)
    complex_dtype = jnp.complex128 if jax.config.jax_enable_x64 else jnp.complex64
    mask = masks.radial(jax.random.key(1), (H, W), 0.3)
    asym_kernel = jnp.asarray(rng.random((3, 5)))  # asymmetric: catches flipped/mis-centred adjoints
    return [
        ("single_coil", SingleCoilMRI(mask), True),
        ("multi_coil", MultiCoilMRI(mask, birdcage_maps((H, W), 4, dtype=complex_dtype)), True),
        ("denoising", Denoising(), False),
        ("inpainting", Inpainting(rng.random((H, W)) > 0.4), False),
        ("blur", Blur(asym_kernel), False),
        ("blur_complex", Blur(asym_kernel), True),
        ("downsampling_box", Downsampling(2), False),
        ("downsampling_kernel", Downsampling(4, gaussian_kernel(1.0)), True),
    ]


def _inner(a, b):
    return jnp.vdot(a, b)  # conjugates the first argument


@pytest.mark.parametrize("case", range(8), ids=[c[0] for c in _operators()])
def test_adjoint_dot_product_and_linear_transpose(case, x64):
    name, op, is_complex = _operators()[case]
    rng = np.random.default_rng(case)
    x = _random(rng, (H, W), is_complex)
    y = _random(rng, op(x).shape, jnp.iscomplexobj(op(x)))
    y = op.restrict(y)
    lhs, rhs = _inner(op(x), y), _inner(x, op.adjoint(y))
    assert op(x).dtype == op.adjoint(y).dtype == x.dtype
    assert abs(lhs - rhs) / abs(lhs) < 1e-10
    # A^H y = conj(A^T conj(y)) where A^T is JAX's (non-conjugate) linear transpose.
    (transposed,) = jax.linear_transpose(op, x)(jnp.conj(y))
    np.testing.assert_allclose(jnp.conj(transposed), op.adjoint(y), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(op.normal(x), op.adjoint(op(x)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(16, 16), (15, 17), (2, 8, 9)])
def test_fft2c_matches_numpy_centred_ortho_fft(shape, x64):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    ref = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    np.testing.assert_allclose(fft2c(jnp.asarray(x)), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ifft2c(jnp.asarray(ref)), x, rtol=1e-12, atol=1e-12)
    # DC of a constant image sits at [H//2, W//2] with value sqrt(H W) (orthonormal).
    k = np.asarray(fft2c(jnp.ones(shape[-2:], jnp.complex128)))
    assert np.isclose(k[shape[-2] // 2, shape[-1] // 2], np.sqrt(shape[-2] * shape[-1]))
    assert np.isclose(np.abs(k).sum(), np.sqrt(shape[-2] * shape[-1]))


def test_single_coil_full_mask_is_unitary(x64):
    x = _random(np.random.default_rng(2), (H, W), True)
    op = SingleCoilMRI(jnp.ones((H, W), bool))
    np.testing.assert_allclose(op.adjoint(op(x)), x, rtol=1e-12, atol=1e-12)
    assert np.isclose(jnp.linalg.norm(op(x)), jnp.linalg.norm(x))


def test_single_coil_zeroes_unsampled_kspace():
    mask = masks.cartesian(jax.random.key(0), (H, W), 0.4)
    op = SingleCoilMRI(mask)
    k = op(_random(np.random.default_rng(3), (H, W), True).astype(jnp.complex64))
    assert k.dtype == jnp.complex64
    assert jnp.all(k[~mask] == 0) and jnp.all(k[mask] != 0)


def test_birdcage_maps_have_unit_root_sum_of_squares_and_full_multicoil_is_identity(x64):
    sens = birdcage_maps((H, W), 8, dtype=jnp.complex128)
    assert sens.shape == (8, H, W)
    np.testing.assert_allclose(jnp.sum(jnp.abs(sens) ** 2, axis=0), 1.0, rtol=1e-12)
    # Coil c is most sensitive on its own side: coil 0 sits at +x (right), coil 4 (of 8) at −x.
    assert jnp.abs(sens[0, H // 2, -1]) > jnp.abs(sens[0, H // 2, 0])
    assert jnp.abs(sens[4, H // 2, 0]) > jnp.abs(sens[4, H // 2, -1])
    x = _random(np.random.default_rng(4), (H, W), True)
    op = MultiCoilMRI(jnp.ones((H, W)), sens)
    np.testing.assert_allclose(op.normal(x), x, rtol=1e-12, atol=1e-12)


def test_blur_matches_direct_circular_convolution(x64):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((H, W))
    kernel = rng.random((3, 5))
    expected = np.zeros_like(x)
    for i in range(3):
        for j in range(5):  # out[p] = Σ_k kernel[k] x[p − (k − centre)]
            expected += kernel[i, j] * np.roll(x, (i - 1, j - 2), axis=(0, 1))
    np.testing.assert_allclose(Blur(kernel)(jnp.asarray(x)), expected, rtol=1e-12, atol=1e-12)


def test_box_downsampling_averages_blocks(x64):
    x = jnp.arange(16.0).reshape(4, 4)
    np.testing.assert_allclose(Downsampling(2)(x), [[2.5, 4.5], [10.5, 12.5]])
    np.testing.assert_allclose(gaussian_kernel(1.5).sum(), 1.0)


@pytest.mark.parametrize("case", range(8), ids=[c[0] for c in _operators()])
def test_operators_under_jit_vmap_and_grad(case):
    _, op, is_complex = _operators()[case]
    rng = np.random.default_rng(6)
    xs = _random(rng, (3, H, W), is_complex)
    xs = xs.astype(jnp.complex64 if is_complex else jnp.float32)
    batched = jax.vmap(op)(xs)
    np.testing.assert_allclose(jax.jit(lambda x: op(x))(xs), batched, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(op(xs), batched, rtol=1e-5, atol=1e-5)  # leading axes broadcast too
    y = op.restrict(_random(rng, batched.shape[1:], jnp.iscomplexobj(batched)).astype(batched.dtype))
    # JAX's gradient of a real loss w.r.t. complex x is the conjugate of ∂/∂x̄ times 2:
    # ∇ ½‖A x − y‖² = A^H (A x − y), returned conjugated for complex inputs.
    grad = jax.grad(lambda x: 0.5 * jnp.sum(jnp.abs(op(x) - y) ** 2))(xs[0])
    expected = op.adjoint(op(xs[0]) - y)
    np.testing.assert_allclose(grad, jnp.conj(expected), rtol=1e-4, atol=1e-4)
    # Operators are PyTrees: they pass through jit as arguments.
    np.testing.assert_allclose(jax.jit(lambda o, x: o.adjoint(o(x)))(op, xs[0]), op.normal(xs[0]), rtol=1e-5, atol=1e-5)


def test_vmap_over_operators_with_different_masks():
    keys = jax.random.split(jax.random.key(0), 3)
    stacked = jax.vmap(lambda k: SingleCoilMRI(masks.cartesian(k, (H, W), 0.5)))(keys)
    x = jnp.ones((H, W), jnp.complex64)
    out = jax.vmap(lambda op: op(x))(stacked)
    for i, k in enumerate(keys):
        np.testing.assert_allclose(out[i], SingleCoilMRI(masks.cartesian(k, (H, W), 0.5))(x), atol=1e-6)


# ---------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors():
    mask = jnp.ones((H, W), bool)
    op = SingleCoilMRI(mask)
    with pytest.raises(ValueError, match=r"`x`.*\(20, 24\)|`x`.*trailing shape \(24, 20\)"):
        op(jnp.ones((20, 24), jnp.complex64))
    with pytest.raises(TypeError, match=r"`x` must be complex.*float32"):
        op(jnp.ones((H, W), jnp.float32))
    with pytest.raises(ValueError, match=r"`mask` must be binary.*0.5"):
        SingleCoilMRI(jnp.full((H, W), 0.5))
    with pytest.raises(ValueError, match=r"`mask` must be a 2-D array"):
        SingleCoilMRI(jnp.ones((2, H, W)))
    with pytest.raises(ValueError, match=r"`sens`.*\(C, H, W\)"):
        MultiCoilMRI(mask, jnp.ones((4, H, W + 1), jnp.complex64))
    with pytest.raises(TypeError, match=r"`sens` must be complex"):
        MultiCoilMRI(mask, jnp.ones((4, H, W)))
    with pytest.raises(ValueError, match=r"`sens` contains 1 NaN/Inf"):
        MultiCoilMRI(mask, jnp.ones((4, H, W), jnp.complex64).at[0, 0, 0].set(jnp.nan))
    multi = MultiCoilMRI(mask, birdcage_maps((H, W), 4))
    with pytest.raises(ValueError, match=r"`y`.*\(4, 24, 20\)"):
        multi.adjoint(jnp.ones((3, H, W), jnp.complex64))
    with pytest.raises(ValueError, match=r"`x` spatial size \(24, 20\) must be divisible by factor 3"):
        Downsampling(3)(jnp.ones((H, W)))
    with pytest.raises(ValueError, match=r"smaller than the blur kernel"):
        Blur(jnp.ones((5, 5)))(jnp.ones((4, 4)))
    with pytest.raises(TypeError, match=r"`kernel` must be a real"):
        Blur(jnp.ones((3, 3), jnp.complex64))
    with pytest.raises(TypeError, match=r"`x` must be a floating-point or complex array; got dtype int32"):
        Denoising()(jnp.ones((4, 4), jnp.int32))
    with pytest.raises(ValueError, match=r"`radius` must exceed sqrt\(2\)"):
        birdcage_maps((H, W), 4, radius=1.0)
    with pytest.raises(ValueError, match=r"`num_coils` must be a positive integer"):
        birdcage_maps((H, W), 0)
