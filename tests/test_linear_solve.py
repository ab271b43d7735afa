"""The one conjugate-gradient solver (and the Neumann series) against dense linear algebra."""

import jax
import jax.numpy as jnp
import numpy as np

from metajax.linear_solve import CONVERGED, MAX_ITERS, NEGATIVE_CURVATURE, NONFINITE, conjugate_gradient, neumann_series


def test_cg_matches_dense_solve_on_spd_pytree(x64):
    rng = np.random.default_rng(0)
    m = rng.standard_normal((7, 7))
    a = jnp.asarray(m @ m.T + 0.5 * np.eye(7))
    b = {"u": jnp.asarray(rng.standard_normal(3)), "v": jnp.asarray(rng.standard_normal((2, 2)))}
    flat = lambda t: jnp.concatenate([t["u"], t["v"].ravel()])  # noqa: E731
    unflat = lambda z: {"u": z[:3], "v": z[3:].reshape(2, 2)}  # noqa: E731
    x, info = conjugate_gradient(lambda t: unflat(a @ flat(t)), b, tol=1e-12, max_iters=50)
    assert int(info["status"]) == CONVERGED and int(info["iterations"]) <= 8  # exact in ≤ n steps
    np.testing.assert_allclose(flat(x), np.linalg.solve(np.asarray(a), np.asarray(flat(b))), rtol=1e-10)
    assert float(info["residual"]) <= 1e-12
    # Every iterate is a real CG iterate: two iterations equal the Krylov-space minimiser of the A-norm error.
    x2, info2 = conjugate_gradient(lambda t: unflat(a @ flat(t)), b, tol=1e-14, max_iters=2)
    bb = np.asarray(flat(b))
    krylov = np.stack([bb, np.asarray(a) @ bb], axis=1)
    coeff = np.linalg.solve(krylov.T @ np.asarray(a) @ krylov, krylov.T @ bb)
    np.testing.assert_allclose(flat(x2), krylov @ coeff, rtol=1e-9)
    assert int(info2["status"]) == MAX_ITERS


def test_cg_reports_negative_curvature_and_nonfinite_instead_of_nan(x64):
    a = jnp.diag(jnp.array([2.0, -1.0, 3.0]))
    b = jnp.array([1.0, 1.0, 1.0])
    x, info = conjugate_gradient(lambda v: a @ v, b, tol=1e-10, max_iters=10)
    assert int(info["status"]) == NEGATIVE_CURVATURE
    assert bool(jnp.all(jnp.isfinite(x))) and np.isfinite(float(info["residual"]))
    x, info = conjugate_gradient(lambda v: a @ v, b.at[0].set(jnp.nan), tol=1e-10, max_iters=10)
    assert int(info["status"]) == NONFINITE and bool(jnp.all(x == 0))
    x, info = conjugate_gradient(lambda v: jnp.where(jnp.sum(v) > 0, jnp.nan, 1.0) * v, b, tol=1e-10, max_iters=10)
    assert int(info["status"]) == NONFINITE and bool(jnp.all(jnp.isfinite(x)))
    # Under vmap each member stops on its own test.
    xs, infos = jax.vmap(lambda s: conjugate_gradient(lambda v: (a * s) @ v, b, tol=1e-10, max_iters=10))(
        jnp.array([1.0, -1.0]))
    assert infos["status"].tolist() == [NEGATIVE_CURVATURE, NEGATIVE_CURVATURE]
    ys, infos = jax.vmap(lambda s: conjugate_gradient(lambda v: s * v, b, tol=1e-10, max_iters=10))(
        jnp.array([2.0, -1.0]))
    assert infos["status"].tolist() == [CONVERGED, NEGATIVE_CURVATURE]
    np.testing.assert_allclose(ys[0], b / 2)


def test_neumann_series_converges_to_dense_solve(x64):
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    a = jnp.asarray(q @ np.diag([1.0, 1.2, 1.5, 1.8, 2.0]) @ q.T)
    b = jnp.asarray(rng.standard_normal(5))
    x, info = neumann_series(lambda v: a @ v, b, step=0.6, terms=80, tol=1e-10)
    np.testing.assert_allclose(x, np.linalg.solve(np.asarray(a), np.asarray(b)), rtol=1e-9)
    assert int(info["status"]) == CONVERGED
    _, info = neumann_series(lambda v: a @ v, b, step=0.6, terms=3, tol=1e-10)
    assert int(info["status"]) == MAX_ITERS


# ------------------------------------------------------------------ ridge regression: closed-form hypergradient


def test_cg_fixed_count_on_a_complex_hermitian_system_from_x0_matches_dense_and_differentiates(x64):
    """The data-consistency use: complex images, a start x0, exactly ``max_iters`` steps (tol=0), reverse-mode
    gradients. With n = dim steps CG is exact, so value and gradient equal the dense solve's."""
    rng = np.random.default_rng(2)
    n = 6
    m = rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))
    a = jnp.asarray(m.conj().T @ m + 0.3 * np.eye(n))  # A^H A + μ I
    b = jnp.asarray(rng.standard_normal((2, 3)) + 1j * rng.standard_normal((2, 3)))
    x0 = jnp.asarray(rng.standard_normal((2, 3)) + 1j * rng.standard_normal((2, 3)))
    matvec = lambda v: (a @ v.ravel()).reshape(v.shape)  # noqa: E731
    dense = np.linalg.solve(np.asarray(a), np.asarray(b).ravel()).reshape(2, 3)
    x, info = conjugate_gradient(matvec, b, x0, tol=0.0, max_iters=n)
    np.testing.assert_allclose(x, dense, rtol=1e-9)
    assert int(info["iterations"]) == n and float(info["residual"]) < 1e-10
    # Fewer steps: the iterate of CG started at x0, i.e. x0 + the Krylov minimiser for the residual r0.
    x2, info2 = conjugate_gradient(matvec, b, x0, tol=0.0, max_iters=2)
    r0 = np.asarray(b - matvec(x0)).ravel()
    # Real inner product: the Krylov space over the reals of [r0, A r0] as a real 2n-vector problem.
    ar = np.block([[np.asarray(a).real, -np.asarray(a).imag], [np.asarray(a).imag, np.asarray(a).real]])
    r0r = np.concatenate([r0.real, r0.imag])
    basis = np.stack([r0r, ar @ r0r], axis=1)
    step = basis @ np.linalg.solve(basis.T @ ar @ basis, basis.T @ r0r)
    expected = np.asarray(x0).ravel() + step[:n] + 1j * step[n:]
    np.testing.assert_allclose(np.asarray(x2).ravel(), expected, rtol=1e-9)
    assert int(info2["status"]) == MAX_ITERS and int(info2["iterations"]) == 2
    # Reverse-mode gradient of a real loss through the exact fixed-count solve = through the dense solve.
    w = jnp.asarray(rng.standard_normal((2, 3)))

    def loss(solve):
        return lambda b: jnp.sum(w * jnp.abs(solve(b)) ** 2)

    grad_cg = jax.grad(loss(lambda b: conjugate_gradient(matvec, b, x0, tol=0.0, max_iters=n)[0]))(b)
    grad_dense = jax.grad(loss(lambda b: jnp.linalg.solve(a, b.ravel()).reshape(2, 3)))(b)
    np.testing.assert_allclose(grad_cg, grad_dense, rtol=1e-8)
    # Already solved: no step is taken and the status says so.
    _, info = conjugate_gradient(matvec, b, jnp.asarray(dense), tol=1e-8, max_iters=5)
    assert int(info["status"]) == CONVERGED and int(info["iterations"]) == 0
