"""The one conjugate-gradient solver (metajax.linear_solve) against lineax's CG, on the two systems metajax solves.

    python benchmarks/linear_solve.py        # writes results/linear_solve.{json,md}; needs `pip install lineax`

1. Data consistency of the multi-coil DCNet: ``(A^H A + μ I) x = A^H y + μ z`` on a 256² 8-coil slice
   (fastMRI equispaced 4×, μ = 0.05, from x₀ = z), exactly 6 iterations as a network phase runs them: time of the
   solve and of its reverse-mode gradient. The gradient of the 6-step solve (what the network computes) is
   what metajax differentiates; lineax differentiates implicitly, as if the system were solved exactly, and
   cannot differentiate with respect to its start point (here z, which carries the CNN's gradient), so its
   gradient is of another function: the relative difference is reported.
2. The implicit meta-gradient system ``(I + H/λ) v = g`` on a 20,000-parameter PyTree with a dense SPD H
   (condition ~ 1e3), stopped at relative residual 1e-6: time, iterations and agreement.

Times: jit-compiled, median of 10 after a warm-up, float32 (1) and float64 (2), 2-core CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from common import time_call, write
from metajax import data, masks
from metajax.data import simulate_multicoil
from metajax.linear_solve import conjugate_gradient
from metajax.operators import MultiCoilMRI


def _lineax(matvec, b, x0, rtol, atol, steps):
    import lineax as lx

    structure = jax.eval_shape(lambda: b)
    op = lx.FunctionLinearOperator(matvec, structure, tags=lx.positive_semidefinite_tag)
    # lineax cannot differentiate with respect to its start y0 (a RuntimeError): it gets a constant start
    options = {} if x0 is None else {"y0": jax.lax.stop_gradient(x0)}
    return lx.linear_solve(op, b, lx.CG(rtol=rtol, atol=atol, max_steps=steps), options=options, throw=False)


def data_consistency_rows():
    image = jnp.asarray(np.asarray(data.chest_images()[90], np.float32))
    sim = simulate_multicoil(jax.random.key(0), image, 8, 30.0)
    mask = masks.fastmri_equispaced(jax.random.key(0), (256, 256), 4.0, 0.08)
    op = MultiCoilMRI(mask, sim.maps)
    y = op(sim.image.astype(jnp.complex64))
    z = op.adjoint(y)
    mu = 0.05

    def matvec(v):
        return op.normal(v) + mu * v

    def ours(y, z):
        return conjugate_gradient(matvec, op.adjoint(y) + mu * z, z, tol=0.0, max_iters=6)[0]

    weights = jax.random.normal(jax.random.key(1), z.shape)
    gradient = jax.jit(jax.grad(lambda z, y: jnp.sum(weights * jnp.abs(ours(y, z)) ** 2)))
    rows = [{"system": "data consistency, 8 coils 256², 6 steps", "solver": "metajax conjugate_gradient (tol=0)",
             "solve_s": time_call(jax.jit(ours), y, z), "gradient_s": time_call(gradient, z, y),
             "note": "the gradient of the 6-step function, through the start z"}]
    solve = jax.jit(lambda y, z: (lambda s: (s.value, s.stats["num_steps"]))(
        _lineax(matvec, op.adjoint(y) + mu * z, z, 0.0, 0.0, 6)))
    value, steps = solve(y, z)
    x = ours(y, z)
    finite = bool(jnp.all(jnp.isfinite(value)))
    rows.append({"system": "data consistency, 8 coils 256², 6 steps", "solver": "lineax CG (max_steps=6)",
                 "solve_s": time_call(solve, y, z),
                 "solution_rel_diff": float(jnp.linalg.norm(value - x) / jnp.linalg.norm(x)) if finite else "NaN",
                 "note": f"steps taken {int(steps)}; {'finite' if finite else 'NaN output'}"
                         "; no gradient through its start point"})
    return rows


def implicit_rows():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        n = 20_000
        basis, _ = np.linalg.qr(rng.standard_normal((n, 64)))
        spectrum = np.geomspace(1.0, 1e3, 64)
        lam = 10.0

        def matvec(v):  # (I + H/λ) v with H = U diag(s) Uᵀ + 0.1 I (rank 64 plus a floor)
            flat = jnp.concatenate([v["a"], v["b"].ravel()])
            out = flat + (jnp.asarray(basis) @ (spectrum * (jnp.asarray(basis).T @ flat)) + 0.1 * flat) / lam
            return {"a": out[:5000], "b": out[5000:].reshape(150, 100)}

        g = {"a": jnp.asarray(rng.standard_normal(5000)), "b": jnp.asarray(rng.standard_normal((150, 100)))}
        ours = jax.jit(lambda g: conjugate_gradient(matvec, g, tol=1e-6, max_iters=200))
        theirs = jax.jit(lambda g: _lineax(matvec, g, None, 1e-6, 0.0, 200).value)
        x_ours, info = ours(g)
        x_theirs = theirs(g)
        flat = lambda t: np.concatenate([np.ravel(t["a"]), np.ravel(t["b"])])  # noqa: E731
        gap = float(np.linalg.norm(flat(x_ours) - flat(x_theirs)) / np.linalg.norm(flat(x_ours)))
        return [{"system": "implicit meta-gradient, 20,000 parameters, tol 1e-6", "solver": "metajax conjugate_gradient",
                 "solve_s": time_call(ours, g), "iterations": int(info["iterations"]),
                 "residual": float(info["residual"])},
                {"system": "implicit meta-gradient, 20,000 parameters, tol 1e-6", "solver": "lineax CG",
                 "solve_s": time_call(theirs, g), "solution_rel_diff": gap}]


def main():
    rows = data_consistency_rows() + implicit_rows()
    for r in rows:
        for key in ("gradient_s", "solution_rel_diff", "iterations", "residual", "note"):
            r.setdefault(key, "")
    write("linear_solve", rows, ["system", "solver", "solve_s", "gradient_s", "iterations", "residual",
                                 "solution_rel_diff", "note"],
          note="metajax.linear_solve.conjugate_gradient vs lineax.CG (benchmarks/linear_solve.py)")


if __name__ == "__main__":
    main()
