"""The ``adaptive`` outer method (growing minibatches): convergence to a closed-form optimum and
reproducibility (docs/ALGORITHMS.md, "adaptive: growing minibatches")."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import bil
from bil.runtime.outer.adaptive import AdaptiveOptions, chunk_counts, chunk_rows, run_adaptive
from bil.runtime.outer.adaptive_ops import BatchOps, RowProblem


def quadratic_rows(n=512, m=64, d=4, p=2, seed=0):
    """Lower rows ½(aᵢᵀx − bᵢᵀθ − yᵢ)² + ½·0.1‖x‖², upper rows ½(cⱼᵀx − sⱼ)²: x*(θ) = Pθ + q is
    affine, so θ* solves a p×p least-squares problem (the closed form the tests compare with)."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, d))
    B = A @ rng.standard_normal((d, p)) + 0.5 * rng.standard_normal((n, p))
    y = A @ rng.standard_normal(d) + 0.3 * rng.standard_normal(n)
    C = rng.standard_normal((m, d))
    s = C @ rng.standard_normal(d)
    H = A.T @ A / n + 0.1 * np.eye(d)
    P, q = np.linalg.solve(H, A.T @ B / n), np.linalg.solve(H, A.T @ y / n)
    Cm, cs = C.T @ C / m, C.T @ s / m
    theta_star = np.linalg.solve(P.T @ Cm @ P, -P.T @ (Cm @ q - cs))

    def F(theta):
        return float(0.5 * np.mean((C @ (P @ theta + q) - s) ** 2))

    rows = RowProblem.from_rows(
        lambda x, u, r: 0.5 * (r["a"] @ x - r["b"] @ u["theta"] - r["y"]) ** 2 + 0.05 * (x @ x),
        lambda x, u, r: 0.5 * (r["c"] @ x - r["s"]) ** 2,
        {"a": jnp.asarray(A), "b": jnp.asarray(B), "y": jnp.asarray(y)}, {"c": jnp.asarray(C), "s": jnp.asarray(s)},
        jnp.zeros(d), {"theta": jnp.zeros(p)})
    return rows, theta_star, F, dict(A=A, B=B, y=y, C=C, s=s)


def test_batch_sizes_double_up_to_n():
    assert chunk_counts(31, 4) == [4, 8, 16, 31]          # in chunks: the last is every row
    assert chunk_counts(3, 4) == [3]
    assert chunk_rows(AdaptiveOptions(batch0=1024, replicates=4)) == 256
    assert chunk_rows(AdaptiveOptions(), 200) == 50     # fewer rows than batch0: still 4 sub-batches


def test_batch_means_over_chunks_equal_the_means_over_their_rows():
    """A batch of chunks (and the full batch, remainder rows included) gives the objectives of its rows."""
    rows, _, _, data = quadratic_rows(n=203, m=37)
    ops = BatchOps(rows, chunk=16)                      # 12 chunks of 16 rows, 11 left for the full batch
    ops.permute(5)
    assert (ops.q, ops.chunk) == (12, 16)
    u, x, v = {"theta": jnp.array([0.3, -0.2])}, jnp.array([0.1, -0.4, 0.2, 0.5]), jnp.zeros(4)
    for b in (ops.batch(3, start=2), ops.batch(12)):
        xs, _, _, f, _, _ = ops.trial(u, x, v, 1e-12, b)
        inner = {k: a[b.start * 16:(b.start + b.count) * 16] for k, a in ops.inner_perm.items()} if not b.full \
            else ops.inner_perm
        outer = {k: a[b.ostart * 3:(b.ostart + b.ocount) * 3] for k, a in ops.outer_perm.items()} if not b.full \
            else ops.outer_perm
        g = lambda xx: rows.g(xx, u, inner)  # noqa: E731
        import jax
        assert float(jnp.linalg.norm(jax.grad(g)(xs))) <= 1e-10          # solved on exactly these rows
        np.testing.assert_allclose(f, rows.f(xs, u, outer), rtol=1e-12)
    assert ops.batch(12).full and ops.batch(12).rows == 203 and ops.batch(12).orows == 37


@pytest.fixture(scope="module")
def small():
    """One small problem and its compiled batch operations, shared by the runs (2 batch sizes)."""
    rows, theta_star, F, _ = quadratic_rows(n=256)
    return rows, theta_star, F, BatchOps(rows, chunk=chunk_rows(AdaptiveOptions(batch0=128, replicates=2)))


@pytest.mark.slow   # ~15 s unloaded (compiles the solves at four row counts); the seed test below is the cheap sibling
def test_adaptive_reaches_the_closed_form_optimum_and_grows_its_batch(small):
    rows, theta_star, F, ops = small
    run = run_adaptive(rows, AdaptiveOptions(batch0=128, replicates=2, max_iter=60, tol=1e-9), ops)
    theta = np.asarray(run.u)
    assert str(run.reason) == "gradient norm below tol"
    assert run.level == 1                                       # it ended on every row
    assert run.records[0]["batch"] == 128                       # and started on half of them
    np.testing.assert_allclose(theta, theta_star, rtol=1e-5, atol=1e-6)
    assert F(theta) - F(theta_star) <= 1e-8 * F(theta_star)
    counts = [r["samples"] for r in run.records]                # cumulative sample gradients
    assert counts == sorted(counts) and counts[0] > 0


def test_adaptive_same_seed_same_run_other_seed_other_batches(small):
    rows, _, _, ops = small
    opts = AdaptiveOptions(batch0=128, replicates=2, max_iter=3)
    a, b = run_adaptive(rows, opts, ops), run_adaptive(rows, opts, ops)
    assert np.array_equal(a.u, b.u)
    assert [r["samples"] for r in a.records] == [r["samples"] for r in b.records]
    c = run_adaptive(rows, AdaptiveOptions(batch0=128, replicates=2, max_iter=3, seed=1), ops)
    assert not np.array_equal(a.u, c.u)
    _, theta_star, F, _ = small                                   # and the steps descend on the true F
    assert F(np.asarray(a.u)) < F(np.zeros(2))


SPEC = """problem q
data A, B, y = (load("d.npz", "A"), load("d.npz", "B"), load("d.npz", "y")) sampled
data C, s = (load("d.npz", "C"), load("d.npz", "s")) sampled
hyper theta : real[2] = 0
lower {
    x : real[4] = 0
    minimize 0.5 * mean((A @ x - B @ theta - y)^2) + 0.05 * sumsq(x)
}
upper minimize 0.5 * mean((C @ x - s)^2)
solve { outer: adaptive(batch0=64, max_iter=40, seed=SEED) }
"""


@pytest.fixture(scope="module")
def spec_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("adaptive")
    _, theta_star, _, data = quadratic_rows()
    np.savez(folder / "d.npz", **data)
    return folder, theta_star


@pytest.mark.slow   # compiles a program and the batch operations at several sizes
def test_adaptive_outer_method_on_a_sampled_spec(spec_folder):
    folder, theta_star = spec_folder
    prog = bil.compile(SPEC.replace("SEED", "3"), base_dir=str(folder))
    r1 = prog.run()
    np.testing.assert_allclose(r1.hypers["theta"], theta_star, rtol=1e-4, atol=1e-5)
    grads = [h["sample_grads"] for h in r1.history]
    assert grads == sorted(grads) and grads[-1] > 0
    r2 = prog.run()                                   # same seed: the same run
    assert np.array_equal(r1.hypers["theta"], r2.hypers["theta"])
    assert [h["upper"] for h in r1.history] == [h["upper"] for h in r2.history]


@pytest.mark.slow
def test_adaptive_resume_is_bit_identical(spec_folder):
    folder, _ = spec_folder
    prog = bil.compile(SPEC.replace("SEED", "0"), base_dir=str(folder))
    full = prog.run(max_iter=6)
    saved = {}
    prog.run(max_iter=3, callback=lambda rec, st: saved.update(st) and False)
    resumed = prog.run(max_iter=6, state=saved)
    assert np.array_equal(full.hypers["theta"], resumed.hypers["theta"])
    assert [h["upper"] for h in full.history] == [h["upper"] for h in resumed.history]


class _CapsAfter(BatchOps):
    """Batch operations whose lower solves report their iteration cap from the ``k``-th call on."""

    def __init__(self, rows, k, **kw):
        super().__init__(rows, **kw)
        self.calls, self.k = 0, k

    def trial(self, *a):
        x, it, st, f, fhat, factored = super().trial(*a)
        self.calls += 1
        return x, it, (1 if self.calls >= self.k else st), f, fhat, factored


def test_a_capped_solve_stops_at_the_accuracy_floor_after_progress_and_fails_before(small):
    """A lower solve that cannot reach its tolerance: after accepted steps the run has reached what
    the problem allows (a success with the floor's reason, the last accepted point kept); at the
    start it is a failure."""
    rows, theta_star, F, _ = small
    opts = AdaptiveOptions(batch0=128, replicates=2, max_iter=60, tol=1e-12)
    late = run_adaptive(rows, opts, _CapsAfter(rows, 12, chunk=64))
    assert str(late.reason).startswith("accuracy floor reached") and "iteration cap" in str(late.reason)
    assert any(r["step"] > 0 for r in late.records)
    assert F(np.asarray(late.u)) < F(np.zeros(2))                  # kept the progress it made
    early = run_adaptive(rows, opts, _CapsAfter(rows, 1, chunk=64))
    assert str(early.reason) == "lower solve hit its iteration cap" and not early.records


def test_a_row_set_of_two_row_counts_has_an_exact_full_batch():
    """Two `sampled` statements of different row counts in the lower objective: chunk batches
    hold the same fraction of each, and the full batch (a program of its own) every row."""
    rng = np.random.default_rng(1)
    a1, a2 = rng.standard_normal((203, 3)), rng.standard_normal((150, 3))
    y1, y2 = rng.standard_normal(203), rng.standard_normal(150)
    c, s = rng.standard_normal((40, 3)), rng.standard_normal(40)

    def g(x, u, r):
        return (0.5 * jnp.mean((r["one"]["a"] @ x - r["one"]["y"]) ** 2)
                + 0.5 * jnp.mean((r["two"]["a"] @ x - r["two"]["y"] - u["t"]) ** 2) + 0.1 * (x @ x))

    def f(x, u, r):
        return 0.5 * jnp.mean((r["c"] @ x - r["s"]) ** 2)

    inner = {"one": {"a": jnp.asarray(a1), "y": jnp.asarray(y1)}, "two": {"a": jnp.asarray(a2), "y": jnp.asarray(y2)}}
    rows = RowProblem(g, f, inner, {"c": jnp.asarray(c), "s": jnp.asarray(s)}, jnp.zeros(3), {"t": jnp.zeros(())})
    ops = BatchOps(rows, chunk=20)
    ops.permute(0)
    assert not ops.inner_chunks.uniform and ops.outer_chunks.uniform
    u, v = {"t": jnp.asarray(0.3)}, jnp.zeros(3)
    whole = {"one": {"a": a1, "y": y1}, "two": {"a": a2, "y": y2}}
    import jax
    for b, data in ((ops.batch(ops.q), whole), (ops.batch(2, start=1), None)):
        xs, _, _, fv, _, _ = ops.trial(u, jnp.zeros(3), v, 1e-12, b)
        if data is None:   # chunks 1, 2 of each statement: rows [c, 3c) of its permuted rows
            data = jax.tree_util.tree_map(lambda a, k: a[k:3 * k], ops.inner_perm, ops.inner_chunks.sizes)
        assert float(jnp.linalg.norm(jax.grad(g)(xs, u, data))) <= 1e-10
    x_full, _, _, f_full, _, _ = ops.trial(u, jnp.zeros(3), v, 1e-12, ops.batch(ops.q))
    np.testing.assert_allclose(f_full, f(x_full, u, {"c": c, "s": s}), rtol=1e-12)   # every upper row


def ill_conditioned_rows(n=400, d=12, seed=0):
    """Least squares with columns scaled over three decades and a tiny penalty: a batch Hessian
    of condition ~10⁶, on which L-BFGS and CG take many more than d iterations."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, d)) * np.logspace(-3, 0, d)
    y, C, s = rng.standard_normal(n), rng.standard_normal((50, d)), rng.standard_normal(50)
    return RowProblem.from_rows(
        lambda x, u, r: 0.5 * (r["a"] @ x - r["y"]) ** 2 + 0.5 * jnp.exp(u["t"]) * (x @ x),
        lambda x, u, r: 0.5 * (r["c"] @ x - r["s"]) ** 2,
        {"a": jnp.asarray(A), "y": jnp.asarray(y)}, {"c": jnp.asarray(C), "s": jnp.asarray(s)},
        jnp.zeros(d), {"t": jnp.asarray(-14.0)})


def test_direct_batch_solves_finish_with_newton_steps_where_lbfgs_is_slow():
    """With ``direct`` (a quadratic lower objective) a batch solve that L-BFGS has not finished in
    n_x iterations forms the batch's Hessian and takes Newton steps; an adjoint CG not finished in
    n_x iterations restarts from the factor's solution.  Both agree with the plain operations,
    which take many more iterations on this ill-conditioned batch."""
    import jax

    rows = ill_conditioned_rows()
    plain, direct = BatchOps(rows, chunk=50), BatchOps(rows, chunk=50, direct=True)
    plain.permute(5)
    direct.permute(5)
    assert direct.factor_passes == 12                           # n_x products per row form H
    u, x0, v0 = {"t": jnp.asarray(-14.0)}, jnp.zeros(12), jnp.zeros(12)
    for b in (direct.batch(4, start=2), direct.batch(direct.q)):
        xd, itd, std, fd, _, fac = direct.trial(u, x0, v0, 1e-10, b)
        xp, itp, stp, fp, _, fac_p = plain.trial(u, x0, v0, 1e-10, b)
        assert int(std) == 0 and int(fac) == 1 and int(fac_p) == 0
        assert int(itd) <= 12 + 3                                # n_x L-BFGS iterations, then Newton
        # plain L-BFGS: 936 iterations on 200 rows, its cap of 1000 on every row
        assert int(itp) > 30 * 12 and (int(stp) == 0 or int(itp) == plain.lower_max_iter)
        if int(stp) == 0:
            np.testing.assert_allclose(xd, xp, rtol=1e-6)      # both met ‖∇g_S‖ ≤ 1e-10 at condition ~1e6
            np.testing.assert_allclose(fd, fp, rtol=1e-5)
        inner = direct.inner_perm if b.full else jax.tree_util.tree_map(
            lambda a: a[b.start * 50:(b.start + b.count) * 50], direct.inner_perm)
        assert float(jnp.linalg.norm(jax.grad(rows.g)(xd, u, inner))) <= 1e-10
        ad, ap = direct.adjoint(u, xd, v0, 1e-10, b), plain.adjoint(u, xd, v0, 1e-10, b)
        assert int(ad[5]) == int(ap[5]) == 0 and int(ad[6]) == 1 and int(ad[4]) < int(ap[4])   # 12 < 23
        np.testing.assert_allclose(ad[2]["t"], ap[2]["t"], rtol=1e-6)       # z
    # a well-conditioned batch: L-BFGS finishes within n_x (13 of 16 iterations), no Hessian is formed
    rows, _, _, _ = quadratic_rows(n=203, m=37, d=16)
    ops = BatchOps(rows, chunk=16, direct=True)
    ops.permute(0)
    *_, fac = ops.trial({"theta": jnp.array([0.3, -0.2])}, jnp.zeros(16), jnp.zeros(16), 1e-8, ops.batch(ops.q))
    assert int(fac) == 0


def test_adaptive_with_direct_reaches_the_closed_form_optimum():
    rows, theta_star, F, _ = quadratic_rows(n=256)
    ops = BatchOps(rows, chunk=chunk_rows(AdaptiveOptions(batch0=128, replicates=2)), direct=True)
    run = run_adaptive(rows, AdaptiveOptions(batch0=128, replicates=2, max_iter=60, tol=1e-9), ops)
    assert str(run.reason) == "gradient norm below tol" and run.level == 1
    np.testing.assert_allclose(np.asarray(run.u), theta_star, rtol=1e-5, atol=1e-6)
    assert F(np.asarray(run.u)) - F(theta_star) <= 1e-8 * F(theta_star)


def test_a_spec_solved_with_direct_gets_direct_batch_solves(spec_folder):
    """The spec's lower solver decides: ``direct()`` (the default for this quadratic) gives Newton
    batch solves, ``lbfgs()`` L-BFGS ones."""
    from bil.runtime.outer.adaptive_loop import AdaptiveLoop

    folder, _ = spec_folder
    for solver, direct in (("direct()", True), ("lbfgs()", False)):
        prog = bil.compile(SPEC.replace("SEED", "0"), base_dir=str(folder), overrides={"lower.solver": solver})
        loop = AdaptiveLoop.from_options(prog.engine, dict(prog.state.options["solve"]["outer"].kwargs))
        assert loop.core.ops.direct is direct
