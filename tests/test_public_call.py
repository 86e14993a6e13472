"""``value_and_hypergrad`` as one jitted call (bil/runtime/public_call.py): same answers as the
general path, one compiled function whatever form the hypers take, every usage error kept."""

from __future__ import annotations

import numpy as np
import pytest

import bil
from bil.core.errors import BilRuntimeError, BilUsageError

SPEC = """data X = randn(20, 3, seed=0)
data y = randn(20, seed=1)
data Xv = randn(15, 3, seed=2)
data yv = randn(15, seed=3)
hyper lam : positive = 1.0
hyper b : real in [-1, 1] = 0.2
hyper s : real[3] = 0
lower {
    w = zeros(3)
    minimize 0.5 * sumsq(X @ w - y) + 0.5 * lam * sumsq(w) - b * sum(w) - sum(s * w)
}
upper minimize 0.5 * sumsq(Xv @ w - yv)
"""


@pytest.fixture(scope="module")
def prog():
    return bil.compile(SPEC)


def _reference(prog, lam, b, s):
    d = prog.state.data
    X, y, Xv, yv = (np.asarray(d[k]) for k in ("X", "y", "Xv", "yv"))
    A = X.T @ X + lam * np.eye(3)
    w = np.linalg.solve(A, X.T @ y + b + s)
    r = Xv @ w - yv
    q = np.linalg.solve(A, Xv.T @ r)          # adjoint: A q = ∇_w f
    return 0.5 * r @ r, {"lam": -q @ w, "b": q.sum(), "s": q}


def test_fast_call_matches_the_closed_form_in_every_input_form(prog):
    """Numbers, numpy scalars, 0-d and full arrays, hypers left out: all give the closed form,
    and all run the one compiled function."""
    f0, g0 = _reference(prog, 2.0, -0.5, np.array([0.1, 0.0, -0.3]))
    forms = [{"lam": 2.0, "b": -0.5, "s": [0.1, 0.0, -0.3]},
             {"lam": np.float64(2.0), "b": np.asarray(-0.5), "s": np.array([0.1, 0.0, -0.3])},
             {"lam": 2, "b": -0.5, "s": np.array([0.1, 0.0, -0.3])}]
    for hypers in forms:
        f, g = prog.value_and_hypergrad(hypers, tol=1e-11)
        assert abs(f - f0) <= 1e-9 * abs(f0)
        for k in g0:
            np.testing.assert_allclose(g[k], g0[k], rtol=1e-8, atol=1e-10)
            assert np.shape(g[k]) == np.shape(g0[k])
    f, g = prog.value_and_hypergrad(tol=1e-11)             # initial hypers
    f1, g1 = _reference(prog, 1.0, 0.2, np.zeros(3))
    assert abs(f - f1) <= 1e-9 * abs(f1) and abs(g["lam"] - g1["lam"]) <= 1e-8 * abs(g1["lam"])
    f, g = prog.value_and_hypergrad({"lam": 2.0}, tol=1e-11)  # a cached dict of numbers, others initial
    assert abs(f - _reference(prog, 2.0, 0.2, np.zeros(3))[0]) <= 1e-9 * f
    fns = prog._public_call._fns
    # one compiled program; numbers come as device arrays, arrays as numpy: two entries of jit's
    # cache (the second reuses the compilation)
    assert len(fns) == 1 and next(iter(fns.values()))._cache_size() <= 2


def test_bad_hypers_are_usage_errors_on_the_fast_path(prog):
    for bad, match in [({"lam": -1.0}, "positive"), ({"lam": float("nan")}, "finite"), ({"b": 1.5}, "strictly inside"),
                       ({"b": np.asarray(np.inf)}, "finite"), ({"lamb": 1.0}, "did you mean `lam`"),
                       ({"s": [1.0, 2.0]}, "broadcastable"), ({"lam": 10 ** 400}, "hyper `lam`")]:
        with pytest.raises(BilUsageError, match=match):
            prog.value_and_hypergrad(bad)
        # the same dict again (nothing bad is remembered)
        with pytest.raises(BilUsageError, match=match):
            prog.value_and_hypergrad(bad)


def test_a_failed_solve_still_raises_its_located_error():
    """Statuses come back in the packed output; a failure is diagnosed by the general path."""
    prog = bil.compile(SPEC.replace("\n}\nupper", "\n    solver: lbfgs\n    max_iter: 2\n}\nupper"))
    with pytest.raises(BilRuntimeError, match="did not reach its tolerance within max_iter=2"):
        prog.value_and_hypergrad({"lam": 1.0})


def _counting_general_path(prog):
    calls = []
    general = prog._hypergrad

    def counted(*args, **kwargs):
        calls.append(1)
        return general(*args, **kwargs)

    prog._hypergrad = counted
    return calls


def test_direct_one_pass_is_certified_and_a_failed_certificate_falls_back():
    """A ``direct`` lower solver runs one Cholesky solve each way in the public call; where its
    certificate (‖∇g‖ ≤ tol from the true gradient) fails, as on kernel ridge at λ = 3e-7 and
    tol = 1e-9 (‖∇g‖ ≈ 1.3e-9 after one solve), the general path refines and answers alike."""
    from test_quadratic import KERNEL_RIDGE, _kernel_data

    prog = bil.compile(KERNEL_RIDGE, data=_kernel_data())
    calls = _counting_general_path(prog)
    for lam, tol, general in [(1e-6, 1e-8, 0), (3e-7, 1e-9, 1)]:
        calls.clear()
        f, g = prog.value_and_hypergrad({"lam": lam}, tol=tol)
        assert len(calls) == general
        hg = prog.engine.hypergradient({"gamma": np.float64(10.0), "lam": np.float64(lam)},
                                       *(lambda x: (x, prog.engine.init_adjoint(x)))(
                                           prog.engine.init_lower_user({"gamma": 10.0, "lam": lam})),
                                       tol, tol, coords="theta")[0]
        assert int(hg.lower_status) == 0 and int(hg.cg_status) == 0
        assert f == pytest.approx(float(hg.f), rel=1e-7)
        for k in g:
            assert g[k] == pytest.approx(float(hg.z[k]), rel=1e-5)
    # a certificate the refinement cannot meet either: the general path's located error
    with pytest.raises(BilRuntimeError, match="did not reach its tolerance"):
        prog.value_and_hypergrad({"lam": 1e-7}, tol=1e-9)


def test_small_data_is_baked_in_and_large_data_passed(prog, monkeypatch):
    from bil.runtime import public_call

    assert prog._public_call._baked
    monkeypatch.setattr(public_call, "_CONST_BYTES", 100)    # this spec's data as if it were large
    big = bil.compile(SPEC)
    assert not big._public_call._baked
    calls = _counting_general_path(big)
    f, g = big.value_and_hypergrad({"lam": 2.0}, tol=1e-10)
    hg = big._hypergrad({"lam": 2.0}, 1e-10, big._method(None))
    assert not calls[1:] and f == pytest.approx(float(hg.f), rel=1e-9)
    np.testing.assert_allclose(g["s"], np.asarray(hg.z["s"]), rtol=1e-7)


def test_small_calls_run_on_the_calling_thread(prog, monkeypatch):
    """With little data (on CPU) the compiled call holds a host callback in a branch never
    taken, which makes XLA:CPU run it on the calling thread; with more data it does not."""
    import jax

    from bil.runtime import public_call

    def lowered_text(p):
        fn, args = p._public_call._prepared({"lam": 2.0}, 1e-10, None)
        return fn.lower(*args).as_text()

    if jax.default_backend() == "cpu":
        assert "callback" in lowered_text(prog)
    monkeypatch.setattr(public_call, "_ON_CALLER_BYTES", 100)
    big = bil.compile(SPEC)
    assert "callback" not in lowered_text(big)
    f, g = big.value_and_hypergrad({"lam": 2.0}, tol=1e-11)
    assert abs(f - _reference(big, 2.0, 0.2, np.zeros(3))[0]) <= 1e-9 * f


def test_array_hypers_are_remembered_by_content(prog, monkeypatch):
    """A dict holding a numpy array is checked once per content: the same values again skip the
    checks, and an array changed in place is a new call (checked, and answered for its values)."""
    s = np.array([0.1, 0.0, -0.3])
    f0, g0 = prog.value_and_hypergrad({"lam": 2.0, "s": s}, tol=1e-11)
    checks = []
    original = prog._theta
    monkeypatch.setattr(prog, "_theta", lambda h: checks.append(1) or original(h))
    f1, g1 = prog.value_and_hypergrad({"lam": 2.0, "s": s.copy()}, tol=1e-11)
    assert not checks and f1 == f0 and np.array_equal(g1["s"], g0["s"])
    s[1] = 0.5                                                # the same array object, new content
    f2, g2 = prog.value_and_hypergrad({"lam": 2.0, "s": s}, tol=1e-11)
    fr, gr = _reference(prog, 2.0, 0.2, s)
    assert checks and abs(f2 - fr) <= 1e-9 * abs(fr)
    np.testing.assert_allclose(g2["s"], gr["s"], rtol=1e-8, atol=1e-10)
    with pytest.raises(BilUsageError, match="positive"):      # a bad array is refused every time
        prog.value_and_hypergrad({"lam": np.array(-1.0), "s": s})
    with pytest.raises(BilUsageError, match="positive"):
        prog.value_and_hypergrad({"lam": np.array(-1.0), "s": s})
