"""Outer loops (MAID, HOAG, gd, adam) on an honest quadratic test double."""

import bil  # noqa: F401  (float64)

import io
import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from quadratic_oracles import QuadraticOracles  # noqa: E402

from bil.runtime.oracles import Constants  # noqa: E402
from bil.runtime.outer import FIELDS, OuterResult, outer_options, run_outer  # noqa: E402
from bil.runtime.outer.history import hyper_fields, make_record  # noqa: E402
from bil.runtime.outer.floor import is_floor_stop  # noqa: E402
from bil.runtime.outer.hoag import first_L, schedule_eps, step_control  # noqa: E402
from bil.runtime.outer.search import nearest_start as _nearest_start  # noqa: E402
from bil.runtime.outer.maid import (RunningConstants, SecantConstants,  # noqa: E402
                                    curvature_pair_ok, direction_certified, lbfgs_direction, screening_accuracy,
                                    diagonal_scaling, cubic_extrapolation, secant_extrapolation, cubic_limit, cap_along,
                                    adjoint_bracket, bound_terms, bounds_upper_lower, descent_test, error_bound,
                                    first_trial_step, merge_constants, point_bracket, secant_terms, secant_update,
                                    sufficient_decrease, tighten_dominant, tighten_until,
                                    update_accuracies)

HYPER_FIELDS = ["hyper.a", "hyper.b[0]", "hyper.b[1]", "hyper.b[2]"]


@pytest.fixture(scope="module")
def quad():
    """One shared instance: its jitted oracles compile once for the module."""
    return QuadraticOracles()


def true_F(o, rec):
    theta = np.array([rec["hyper.a"]] + [rec[f"hyper.b[{i}]"] for i in range(3)])
    return o.F(theta)


# ------------------------------------------------------------------ MAID
def assert_certified_decrease(o, history, F0, lam, check_rejected=True, gradient=False):
    """The true F drops at every accepted step (and stays put otherwise); the last F.

    The certified drop is λα⟨z, d⟩: λα‖z‖² for gradient steps (``gradient=True``
    checks that amount); for L-BFGS steps ⟨z, d⟩ > 0 is not recorded, so only the
    decrease is checked."""
    prev = F0
    for rec in history:
        F = true_F(o, rec)
        if rec["step"] > 0:
            need = lam * rec["step"] * rec["grad_norm"] ** 2 if gradient else 0.0
            assert F <= prev - need + 1e-13
        elif check_rejected:
            assert F == pytest.approx(prev, abs=1e-15)
        prev = F
    return prev


@pytest.mark.parametrize("omega", ["secant", "bound"])
@pytest.mark.parametrize("direction,bracket", [("lbfgs", "adjoint"), ("gradient", "value")])
def test_maid_converges_to_closed_form_and_decreases_true_upper(quad, omega, direction, bracket):
    o = quad
    F0 = o.F(o.theta_of(o.u0))
    n_const = o.calls["constants"]
    r = run_outer(o, "maid", dict(tol=1e-6, max_iter=200, omega=omega, direction=direction, bracket=bracket))
    assert isinstance(r, OuterResult)
    assert r.converged and r.reason == "gradient norm below tol"
    np.testing.assert_allclose(o.theta_of(r.u), o.theta_star(), atol=1e-5)
    # the certified sufficient decrease makes the *true* upper value decrease
    # (by at least lam * alpha * |z|^2 at every accepted gradient step)
    lam = outer_options("maid", {})["lam"]
    assert assert_certified_decrease(o, r.history, F0, lam, gradient=direction == "gradient") < F0
    # the constants are re-estimated now and then, not at every trial
    assert 1 <= o.calls["constants"] - n_const < len(r.history)
    assert abs(r.upper - o.F(o.theta_star())) < 1e-9
    # the hypers in user coordinates and the lower solution
    np.testing.assert_allclose(r.hypers["b"], o.theta_star()[1:], atol=1e-5)
    np.testing.assert_allclose(np.asarray(r.x), o.x_star(o.theta_of(r.u)), atol=1e-8)


@pytest.mark.parametrize("eps0", [1.0, 1e-1, 1e-3])
@pytest.mark.parametrize("step0", [1e-3, 1e-1, 10.0])
def test_maid_robust_to_initial_accuracy_and_step(quad, eps0, step0):
    o = quad
    r = run_outer(o, "maid", dict(eps0=eps0, delta0=eps0, step0=step0, tol=1e-6, max_iter=300))
    assert r.converged, r.reason
    Fs = o.F(o.theta_star())
    assert o.F(o.theta_of(r.u)) - Fs <= 1e-3 * Fs


def test_maid_omega_bounds_true_hypergradient_error(quad):
    """ω with the exact constants bounds ‖z − ∇F‖ for any (ε, δ)."""
    o = quad
    c = merge_constants(None, o.constants(o.u0, None))
    theta = np.array([0.3, -0.2, 0.5, 1.0])
    u = o.unflatten(theta)
    g = o.grad_F(theta)
    for eps, delta in [(1.0, 1.0), (1e-1, 1e-3), (1e-3, 1e-1), (1e-6, 1e-6)]:
        x0 = o.init_lower(u)
        hg = o.hypergrad(u, x0, o.init_adjoint(x0), eps, delta)
        assert int(hg.lower_status) == 0 and int(hg.cg_status) == 0
        z = o.theta_of({k: np.asarray(v) for k, v in hg.z.items()})
        omega = error_bound(eps, delta, float(hg.gx_norm), c)
        assert np.linalg.norm(z - g) <= omega
        # the variant using the computed adjoint's norm is tighter and still valid
        omega_q = error_bound(eps, delta, float(hg.gx_norm), c, float(hg.q_norm))
        assert np.linalg.norm(z - g) <= omega_q <= omega
        # |f(x̃) − F| is bracketed by f̄±
        fp, fm = bounds_upper_lower(float(hg.f), float(hg.gx_norm), eps, c.L_f)
        assert fm <= o.F(theta) <= fp


def test_bounds_and_sufficient_decrease_known_constants():
    fp, fm = bounds_upper_lower(1.0, 2.0, 0.1, 4.0)        # slack = 0.2 + 0.02
    assert fp == pytest.approx(1.22) and fm == pytest.approx(0.78)
    assert bounds_upper_lower(3.0, 0.0, 0.5, 0.0) == (3.0, 3.0)
    # f̄⁺(θ−αd) − f̄⁻(θ) + λα⟨z, d⟩ ≤ 0; rate ⟨z, d⟩ = ‖z‖² = 4 for d = z, ‖z‖ = 2
    assert sufficient_decrease(0.5, 1.0, 0.1, 1.0, 4.0)        # -0.5 + 0.4 <= 0
    assert not sufficient_decrease(0.7, 1.0, 0.1, 1.0, 4.0)    # -0.3 + 0.4 > 0
    assert sufficient_decrease(0.6, 1.0, 0.1, 1.0, 4.0)        # exactly 0
    # a trial that truly decreases by 0.1 fails once the slack exceeds it
    f_old, f_new, gx, L_f = 1.0, 0.9, 1.0, 2.0
    for eps, ok in [(1e-3, True), (0.04, True), (0.06, False)]:
        _, fm_old = bounds_upper_lower(f_old, gx, eps, L_f)
        fp_new, _ = bounds_upper_lower(f_new, gx, eps, L_f)
        assert sufficient_decrease(fp_new, fm_old, 1e-4, 0.1, 1.0) is ok


def test_adjoint_bracket_formula_and_intersection():
    # f_c = f − ⟨q, r⟩, slack = δε + ½(L_f + L_H‖q‖)ε²
    fp, fm, fc = adjoint_bracket(1.0, 0.25, 2.0, 0.1, 0.01, 4.0, 3.0)
    slack = 0.01 * 0.1 + 0.5 * (4.0 + 3.0 * 2.0) * 0.01
    assert fc == pytest.approx(0.75) and fp == pytest.approx(0.75 + slack) and fm == pytest.approx(0.75 - slack)
    c = RunningConstants(mu=1.0, L_f=4.0, J_norm=1.0, L_H=3.0, L_J=0.0)
    # both brackets hold: their intersection is used, centred on the corrected value
    hi, lo, mid = point_bracket(1.0, 2.0, 0.1, c, (0.25, 2.0, 0.01))
    assert mid == pytest.approx(0.75)
    assert hi == pytest.approx(min(1.22, 0.75 + slack)) and lo == pytest.approx(max(0.78, 0.75 - slack))
    # no (or a non-finite) adjoint: the value bracket
    assert point_bracket(1.0, 2.0, 0.1, c) == (*bounds_upper_lower(1.0, 2.0, 0.1, 4.0), 1.0)
    assert point_bracket(1.0, 2.0, 0.1, c, (math.nan, 2.0, 0.01)) == (*bounds_upper_lower(1.0, 2.0, 0.1, 4.0), 1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_adjoint_bracket_contains_true_value_second_order(quad, seed):
    """On the quadratic double (L_H = 0) f(x̃) − ⟨q̃, ∇ₓg(x̃)⟩ brackets F(θ) with the
    slack δε + ½L_f ε², far tighter than the value bracket's ‖∇ₓf‖ε."""
    o = quad
    rng = np.random.default_rng(seed)
    u = o.unflatten(rng.normal(size=o.p))
    theta = o.theta_of(u)
    F = o.F(theta)
    c = RunningConstants(*(float(v) for v in o.constants(u, None)))
    x0 = o.init_lower(u)
    for eps, delta in [(1e-1, 1e-1), (1e-2, 1e-1), (1e-2, 1e-3), (1e-4, 1e-2)]:
        hg = o.hypergrad(u, x0, o.init_adjoint(x0), eps, delta)
        assert int(hg.lower_status) == 0 and int(hg.cg_status) == 0
        f, gx, qn, qr = float(hg.f), float(hg.gx_norm), float(hg.q_norm), float(hg.qr)
        assert np.linalg.norm(np.asarray(hg.x) - o.x_star(theta)) <= eps
        hi, lo, fc = adjoint_bracket(f, qr, qn, eps, delta, c.L_f, c.L_H)
        assert lo <= F <= hi
        vhi, vlo = bounds_upper_lower(f, gx, eps, c.L_f)
        assert vlo <= F <= vhi
        assert abs(fc - F) <= abs(f - F) + 1e-15
        assert hi - lo < 0.5 * (vhi - vlo)


class _NoQr:
    """The quadratic double without ⟨q, ∇ₓg⟩ (an oracle that predates the field)."""

    def __init__(self, o):
        self._o = o

    def __getattr__(self, name):
        return getattr(self._o, name)

    def hypergrad(self, u, x0, q0, eps, delta, cap=None):
        return self._o.hypergrad(u, x0, q0, eps, delta, cap)._replace(qr=None)


@pytest.mark.parametrize("omega", ["secant", "bound"])
@pytest.mark.parametrize("strip", [False, True])
def test_maid_adjoint_bracket_converges_and_decreases_true_upper(quad, omega, strip):
    o = quad
    F0 = o.F(o.theta_of(o.u0))
    lam = outer_options("maid", {})["lam"]
    r = run_outer(_NoQr(o) if strip else o, "maid", dict(tol=1e-6, max_iter=200, omega=omega, bracket="adjoint"))
    assert r.converged and r.reason == "gradient norm below tol"
    np.testing.assert_allclose(o.theta_of(r.u), o.theta_star(), atol=1e-5)
    # certified: the true F decreases by λα‖z‖² at every accepted step
    assert assert_certified_decrease(o, r.history, F0, lam) < F0
    # the accuracies stay looser than with the value bracket: judge the true F at the result
    assert o.F(o.theta_of(r.u)) - o.F(o.theta_star()) < 1e-9
    assert abs(r.upper - o.F(o.theta_of(r.u))) < 1e-7


@pytest.mark.parametrize("eps0", [1.0, 1e-3])
@pytest.mark.parametrize("step0", [1e-3, 10.0])
def test_maid_adjoint_bracket_robust(quad, eps0, step0):
    o = quad
    lam = outer_options("maid", {})["lam"]
    r = run_outer(o, "maid", dict(eps0=eps0, delta0=eps0, step0=step0, tol=1e-6, max_iter=300, bracket="adjoint"))
    assert r.converged, r.reason
    assert_certified_decrease(o, r.history, o.F(o.theta_of(o.u0)), lam, check_rejected=False)
    Fs = o.F(o.theta_star())
    assert o.F(o.theta_of(r.u)) - Fs <= 1e-3 * Fs


def test_descent_test_and_accuracy_updates():
    assert descent_test(0.5, 1.0, 0.1)
    assert descent_test(0.9, 1.0, 0.1)
    assert not descent_test(0.91, 1.0, 0.1)
    # tighten by nu, floored
    assert update_accuracies(0.1, 0.2, 0.5) == (0.05, 0.1)
    assert update_accuracies(1e-14, 4e-14, 0.5, 1e-14, 1e-14) == (1e-14, 2e-14)
    # loosen by nu_plus after success
    e, d = update_accuracies(0.1, 0.2, 1.25)
    assert e == pytest.approx(0.125) and d == pytest.approx(0.25)
    # trust region on the first trial
    assert first_trial_step(10.0, 4.0, 1.0) == 0.25
    assert first_trial_step(0.1, 4.0, 1.0) == 0.1
    assert first_trial_step(10.0, 4.0, None) == 10.0
    # before the first accepted step, step0 is a length in θ: α₀ = step0/‖z‖
    assert first_trial_step(float("nan"), 4.0, 1.0, step0=0.5) == 0.125
    assert first_trial_step(float("nan"), 4.0, 1.0, step0=10.0) == 0.25      # trust region
    # tightening by powers of nu until a prediction passes (at least once)
    assert tighten_until(1.0, 2.0, 0.5, 0.0, 0.0) == (0.5, 1.0)
    assert tighten_until(1.0, 2.0, 0.5, 0.0, 0.0, lambda e, d: e <= 0.1) == (0.0625, 0.125)
    assert tighten_until(1.0, 1.0, 0.5, 0.3, 0.2, lambda e, d: False) == (0.3, 0.2)     # both floors
    assert tighten_until(0.3, 0.25, 0.5, 0.3, 0.2, lambda e, d: False) == (0.3, 0.2)


def test_error_bound_formula_known_constants():
    c = RunningConstants(mu=2.0, L_f=3.0, J_norm=4.0, L_H=5.0, L_J=6.0, L_ftheta=0.5)
    eps, delta, gx = 0.1, 0.01, 7.0
    lin = 0.5 + 4 * 3 / 2 + 4 * 5 * 7 / 4 + 6 * 7 / 2          # L_fθ + ‖J‖L_f/μ + ‖J‖L_H‖∇f‖/μ² + L_J‖∇f‖/μ
    quad = 6 * 3 / 2 + 4 * 5 * 3 / 4                            # L_J L_f/μ + ‖J‖L_H L_f/μ²
    assert error_bound(eps, delta, gx, c) == pytest.approx(lin * eps + (4 / 2) * delta + quad * eps**2)
    assert error_bound(eps, delta, gx, c._replace(mu=0.0)) == math.inf
    # with ‖q̃‖: Q = min((‖∇f‖ + L_f ε)/μ, (‖q̃‖ + δ/μ + L_f ε/μ)/(1 − L_H ε/μ))
    qn = 0.5
    Qq = (qn + delta / 2 + 3 * eps / 2) / (1 - 5 * eps / 2)
    assert Qq < (gx + 3 * eps) / 2
    want = 0.5 * eps + (4 / 2) * delta + (4 * 3 / 2) * eps + (4 * 5 / 2 + 6) * eps * Qq
    assert error_bound(eps, delta, gx, c, qn) == pytest.approx(want)
    assert error_bound(0.5, delta, gx, c, qn) == error_bound(0.5, delta, gx, c)   # L_H ε ≥ μ: Q_q invalid
    # the local mu (it belongs to the current θ), running maxima of the rest; bad values ignored
    r = merge_constants(None, Constants(mu=2.0, L_f=1.0, J_norm=1.0, L_H=0.0, L_J=0.0))
    r = merge_constants(r, Constants(mu=1.0, L_f=3.0, J_norm=0.5, L_H=float("nan"), L_J=2.0))
    assert r == RunningConstants(1.0, 3.0, 1.0, 0.0, 2.0, 0.0)
    r = merge_constants(r, Constants(mu=5.0, L_f=1.0, J_norm=0.5, L_H=0.0, L_J=0.0))
    assert r.mu == 5.0 and r.L_f == 3.0
    assert merge_constants(r, Constants(mu=float("nan"), L_f=1.0, J_norm=0.5, L_H=0.0, L_J=0.0)).mu == 5.0


def test_secant_update_rules():
    k = SecantConstants()
    assert math.isnan(k.k_eps) and math.isnan(k.k_delta)
    # a pair that changed ε alone measures k_eps (running max), δ alone k_delta
    k = secant_update(k, 0.5, 0.0, 2.0)
    assert k == SecantConstants(4.0, math.nan) or (k.k_eps == 4.0 and math.isnan(k.k_delta))
    k = secant_update(k, 0.5, 0.0, 1.0)                      # smaller slope: max kept
    assert k.k_eps == 4.0
    k = secant_update(k, 0.0, 0.1, 0.3)
    assert k == SecantConstants(4.0, pytest.approx(3.0))
    # a pair that changed both and is already explained changes nothing ...
    assert secant_update(k, 0.1, 0.1, 0.5) == k              # 4·0.1 + 3·0.1 = 0.7 ≥ 0.5
    # ... otherwise both constants scale by the factor needed
    k2 = secant_update(k, 0.1, 0.1, 1.4)
    assert k2.k_eps == pytest.approx(8.0) and k2.k_delta == pytest.approx(6.0)
    # an unknown constant takes the pair's joint slope
    k3 = secant_update(SecantConstants(2.0, math.nan), 0.1, 0.3, 0.8)
    assert k3.k_eps == pytest.approx(2.0 * 0.8 / (0.2 + 0.6)) and k3.k_delta == pytest.approx(2.0 * 0.8 / 0.8)
    # no effective change (solves that did no iterations) or a bad norm: no information
    assert secant_update(k, 0.0, 0.0, 5.0) == k
    assert secant_update(k, 0.1, 0.0, float("nan")) == k
    assert secant_terms(0.1, 0.2, SecantConstants(4.0, 3.0), 2.0) == pytest.approx((0.8, 1.2))


def test_bound_terms_split_the_a_priori_bound():
    c = RunningConstants(mu=2.0, L_f=3.0, J_norm=4.0, L_H=5.0, L_J=6.0, L_ftheta=0.5)
    te, td = bound_terms(0.1, 0.01, 7.0, c, 0.5)
    assert td == pytest.approx(4.0 / 2.0 * 0.01)
    assert te + td == pytest.approx(error_bound(0.1, 0.01, 7.0, c, 0.5))


def test_tighten_dominant_tightens_the_term_that_matters():
    terms = lambda e, d: (100.0 * e, 1.0 * d)                        # noqa: E731  ε dominates
    # only ε is tightened, until the prediction passes
    e, d = tighten_dominant(0.1, 0.1, 0.5, 0.0, 0.0, terms, lambda e, d: sum(terms(e, d)) <= 1.0)
    assert d == 0.1 and e == pytest.approx(0.1 * 0.5 ** 4)            # 100·0.00625 + 0.1 = 0.725
    # parts within a factor 2: both are tightened
    e, d = tighten_dominant(1.0, 1.0, 0.5, 0.0, 0.0, lambda e, d: (e, 1.5 * d), lambda e, d: True)
    assert (e, d) == (0.5, 0.5)
    # δ dominates: only δ
    e, d = tighten_dominant(1.0, 1.0, 0.5, 0.0, 0.0, lambda e, d: (e, 10 * d), lambda e, d: True)
    assert (e, d) == (1.0, 0.5)
    # the dominant one at its floor: the other one moves
    e, d = tighten_dominant(0.1, 1.0, 0.5, 0.1, 0.0, terms, lambda e, d: True)
    assert (e, d) == (0.1, 0.5)
    # both at their floors: nothing to do
    assert tighten_dominant(0.1, 0.2, 0.5, 0.1, 0.2, terms, lambda e, d: False) == (0.1, 0.2)


def test_nearest_start_reuses_the_closest_trial_iterate():
    u = {"a": np.array(0.0)}
    tried = [({"a": np.array(1.0)}, "x_at_1"), ({"a": np.array(0.5)}, "x_at_half")]
    assert _nearest_start({"a": np.array(0.49)}, u, "x_cur", tried) == "x_at_half"
    assert _nearest_start({"a": np.array(1.1)}, u, "x_cur", tried) == "x_at_1"
    assert _nearest_start({"a": np.array(0.1)}, u, "x_cur", tried) == "x_cur"
    assert _nearest_start({"a": np.array(0.9)}, u, "x_cur", []) == "x_cur"


def test_maid_secant_mode_measures_pairs_and_decouples_accuracies(quad):
    """Secant mode probes ε and δ separately at the first point, keeps finite running
    constants, and lets ε and δ move apart."""
    o = quad
    n_hg = o.calls["hypergrad"]
    seen = {}

    def cb(rec, state):
        seen.setdefault("first", state)
        return False

    r = run_outer(o, "maid", dict(max_iter=40, tol=1e-10), callback=cb)
    first = seen["first"]
    assert math.isfinite(float(first["secant/k_eps"])) and math.isfinite(float(first["secant/k_delta"]))
    assert int(first["probes/eps"]) >= 1 and int(first["probes/delta"]) >= 1
    assert o.calls["hypergrad"] - n_hg > len(r.history)                  # the probes cost calls
    assert any(rec["eps"] != rec["delta"] for rec in r.history)
    # on this problem the a-posteriori ω is far below the a-priori bound
    ob = run_outer(o, "maid", dict(max_iter=3, omega="bound"))
    os_ = run_outer(o, "maid", dict(max_iter=3))
    assert os_.history[0]["omega"] / os_.history[0]["eps"] < ob.history[0]["omega"] / ob.history[0]["eps"]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_maid_secant_omega_covers_true_error(quad, seed):
    """Along a warm-started tightening sequence at one θ (what MAID does), the secant ω
    (safety 2) covers the true ‖z − ∇F‖ once both constants are measured.  (An estimate,
    not a certified bound; here the error is exactly linear in x̃ − x* and q̃ − q̂.)"""
    o = quad
    theta = np.random.default_rng(seed).normal(size=4)
    u = o.unflatten(theta)
    g = o.grad_F(theta)
    x, q = o.init_lower(u), o.init_adjoint(o.init_lower(u))
    k, prev, checked = SecantConstants(), None, 0
    for eps, delta in [(1e-1, 1e-1), (1e-1, 5e-2), (5e-2, 5e-2), (2.5e-2, 2.5e-2), (1e-2, 1e-2), (1e-3, 1e-3),
                       (1e-3, 1e-4), (1e-4, 1e-4), (1e-5, 1e-4)]:
        hg = o.hypergrad(u, x, q, eps, delta)
        z = o.theta_of({kk: np.asarray(v) for kk, v in hg.z.items()})
        li, ci = int(hg.lower_iters), int(hg.cg_iters)
        if prev is not None:   # the pair rules of run_maid
            k = secant_update(k, (prev[0] - eps) if (li > 0 and ci > 0) else 0.0, (prev[1] - delta) if ci > 0 else 0.0,
                              float(np.linalg.norm(z - prev[2])))
        if math.isfinite(k.k_eps) and math.isfinite(k.k_delta):
            assert np.linalg.norm(z - g) <= sum(secant_terms(eps, delta, k, 2.0))
            checked += 1
        prev, x, q = (eps, delta, z), hg.x, hg.q
    assert checked >= 5


def test_maid_failed_lower_solves_are_never_accepted():
    """A trial whose lower solve hits its cap is a failed trial, never accepted."""

    class CappedTrials(QuadraticOracles):
        def value(self, u, x0, eps, cap=None):
            v = super().value(u, x0, eps, cap)
            return v._replace(lower_status=np.int32(1))

    o = CappedTrials()
    r = run_outer(o, "maid", dict(max_backtracks=0, eps_min=1e-4, delta_min=1e-4, max_iter=5))
    assert not r.converged
    # (a round ending on capped trials is the accuracy floor: tightening cannot help)
    assert is_floor_stop(r.reason) and "trial steps hit their iteration cap" in r.reason
    assert all(rec["step"] == 0.0 for rec in r.history)
    np.testing.assert_array_equal(o.theta_of(r.u), o.theta_of(o.u0))
    assert o.calls["value"] > 0


# ------------------------------------------------- L-BFGS directions, screening
def test_lbfgs_direction_pieces():
    rng = np.random.default_rng(0)
    z = rng.normal(size=4)
    assert np.array_equal(lbfgs_direction(z, []), z)
    # pairs of a quadratic with Hessian A: the newest pair's secant equation H y = s holds,
    # and H is symmetric positive definite
    Q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    A = Q @ np.diag([0.5, 1.0, 5.0, 40.0]) @ Q.T
    pairs = [(s_, A @ s_) for s_ in rng.normal(size=(3, 4))]
    s_new, y_new = pairs[-1]
    np.testing.assert_allclose(lbfgs_direction(y_new, pairs), s_new, rtol=1e-10, atol=1e-12)
    H = np.column_stack([lbfgs_direction(e, pairs) for e in np.eye(4)])
    np.testing.assert_allclose(H, H.T, atol=1e-10)
    assert np.linalg.eigvalsh((H + H.T) / 2).min() > 0
    # with as many pairs as dimensions along the eigenvectors, H = A⁻¹ exactly
    full = [(Q[:, i], A @ Q[:, i]) for i in range(4)]
    np.testing.assert_allclose(lbfgs_direction(z, full), np.linalg.solve(A, z), rtol=1e-10)
    # a multiple of the identity: H = I/c from one pair
    np.testing.assert_allclose(lbfgs_direction(z, [(np.ones(4), 3.0 * np.ones(4))]), z / 3.0)
    # curvature condition
    assert curvature_pair_ok(np.array([1.0, 0.0]), np.array([2.0, 0.1]))
    assert not curvature_pair_ok(np.array([1.0, 0.0]), np.array([-2.0, 0.1]))
    assert not curvature_pair_ok(np.array([1.0, 0.0]), np.array([0.0, 3.0]))       # orthogonal
    assert not curvature_pair_ok(np.array([1.0, 0.0]), np.array([np.nan, 0.0]))


def test_lbfgs_unexplored_directions_get_the_first_step_length():
    """``unexplored=(length, ω)``: the stored steps explored only the first axis (the
    stiff one, curvature 9); the second (curvature 0.1) gets the length of a first step
    instead of the stiff scale 1/9, and the explored axis is unchanged."""
    A = np.diag([9.0, 0.1])
    pairs = [(np.array([0.5, -0.004]), A @ np.array([0.5, -0.004])),
             (np.array([0.4, 0.01]), A @ np.array([0.4, 0.01]))]
    z = np.array([0.02, 0.07])
    scalar = lbfgs_direction(z, pairs)
    sub = lbfgs_direction(z, pairs, (1.0, 0.01))
    assert abs(scalar[1]) < 0.02                      # textbook: the flat axis crawls
    assert sub[1] == pytest.approx(1.0, rel=0.02)     # the flat axis: a step of length 1
    assert sub[0] == pytest.approx(scalar[0], rel=0.02, abs=1e-3)
    # a descent direction, and the newest pair's secant equation still holds
    assert float(z @ sub) > 0
    np.testing.assert_allclose(lbfgs_direction(pairs[-1][1], pairs, (1.0, 0.0)), pairs[-1][0], rtol=1e-10)
    # the unexplored part of z below its error ω: no expansion (the textbook direction, up to
    # the per-coordinate scaling, which on these exact diagonal pairs is γ again)
    np.testing.assert_allclose(lbfgs_direction(z, pairs, (1.0, 0.5)), scalar, rtol=1e-8)
    # never stiffer than the textbook scaling: a tiny length changes nothing
    np.testing.assert_allclose(lbfgs_direction(z, pairs, (1e-6, 0.0)), scalar, rtol=1e-8)
    # steps that explored every direction: nothing is unexplored
    full = [(np.array([1.0, 0.0]), A @ np.array([1.0, 0.0])), (np.array([0.0, 1.0]), A @ np.array([0.0, 1.0]))]
    np.testing.assert_allclose(lbfgs_direction(z, full, (1.0, 0.0)), np.linalg.solve(A, z), rtol=1e-10)


def test_lbfgs_unexplored_test_uses_the_error_directions():
    """ω⊥ is ω times the part of the measured error directions outside the explored span:
    an error seen only along the explored axis leaves the unexplored part of z trusted."""
    A = np.diag([9.0, 0.1])
    pairs = [(np.array([0.5, -0.004]), A @ np.array([0.5, -0.004])),
             (np.array([0.4, 0.01]), A @ np.array([0.4, 0.01]))]
    z = np.array([0.3, 0.07])
    textbook = lbfgs_direction(z, pairs, (1.0, 0.25))              # ‖z⊥‖ = 0.07 < ω = 0.25
    assert abs(textbook[1]) < 0.05
    along_explored = [np.array([-0.23, -0.001]), np.array([0.1, 0.0005])]
    d = lbfgs_direction(z, pairs, (1.0, 0.25), along_explored)     # ω⊥ ≈ 0.25·0.005
    assert d[1] == pytest.approx(1.0, rel=0.05)
    # an error direction with a large unexplored part: no expansion
    np.testing.assert_allclose(lbfgs_direction(z, pairs, (1.0, 0.25), along_explored + [np.array([0.0, 0.3])]),
                               textbook, rtol=1e-12)
    # the flag says whether the expansion was used
    flag = [None]
    lbfgs_direction(z, pairs, (1.0, 0.25), along_explored, flag)
    assert flag == [True]
    lbfgs_direction(z, pairs, (1.0, 0.25), None, flag)
    assert flag == [False]


def test_diagonal_scaling_fits_each_hyper():
    """Exact pairs of a diagonal quadratic: D = the inverse curvatures, also when every step
    moved both hypers (where the scalar γ averages them); a coordinate the steps did not
    move keeps γ; the result stays within the clip range around γ."""
    A = np.diag([9.0, 0.1])
    pairs = [(s_, A @ s_) for s_ in (np.array([1.0, -0.005]), np.array([0.52, -0.85]))]
    gamma = float(pairs[-1][0] @ pairs[-1][1]) / float(pairs[-1][1] @ pairs[-1][1])
    assert gamma == pytest.approx(0.114, rel=0.01)          # between 1/9 and 10: dominated by 1/9
    np.testing.assert_allclose(diagonal_scaling(pairs, gamma), [1 / 9.0, 10.0], rtol=1e-10)
    unmoved = [(s_, A @ s_) for s_ in (np.array([1.0, 0.0]), np.array([0.5, 1e-4]))]
    assert diagonal_scaling(unmoved, 0.3)[1] == 0.3
    wild = [(np.array([1.0, 1.0]), np.array([1.0, 1e-9]))]
    assert diagonal_scaling(wild, 1.0)[1] == pytest.approx(1e3)
    # with the subspace scaling the direction from those pairs is the Newton direction A⁻¹z
    z = np.array([0.3, 0.07])
    np.testing.assert_allclose(lbfgs_direction(z, pairs, (1.0, 10.0)), np.linalg.solve(A, z), rtol=1e-8)


def test_cubic_extrapolation_and_limit():
    # F(t) = (t − 1.5)²: the cubic is exact, the minimum is 0.5 beyond t = 1, and so is the
    # quadratic model's: they agree, so nothing is capped
    f = lambda t: (t - 1.5) ** 2                # noqa: E731
    g = lambda t: 2 * (t - 1.5)                 # noqa: E731
    assert cubic_extrapolation(f(0), g(0), f(1), g(1)) == pytest.approx(0.5)
    assert secant_extrapolation(g(0), g(1)) == pytest.approx(0.5)
    assert cubic_limit(f(0), g(0), f(1), g(1)) == math.inf
    # a cubic F whose curvature grows along s (TV's weight): the slopes alone put the minimum
    # 2.2 further, the values 0.5 further: the cap is the cubic's
    c = lambda t: -7.04 * t - 1.37 * t ** 2 + 1.65 * t ** 3   # noqa: E731
    dc = lambda t: -7.04 - 2.74 * t + 4.95 * t ** 2           # noqa: E731
    ext = cubic_extrapolation(c(0), dc(0), c(1), dc(1))
    assert dc(1 + ext) == pytest.approx(0.0, abs=1e-9) and ext == pytest.approx(0.5, abs=0.01)
    assert secant_extrapolation(dc(0), dc(1)) > 2 * ext
    assert cubic_limit(c(0), dc(0), c(1), dc(1)) == pytest.approx(ext)
    # already rising at t = 1: 0 for both models (the quasi-Newton step turns back by itself,
    # nothing to cap); falling for ever: no cap
    assert cubic_extrapolation(0.0, -1.0, -0.4, 0.2) == 0.0 == secant_extrapolation(-1.0, 0.2)
    assert cubic_limit(0.0, -1.0, -0.4, 0.2) == math.inf
    assert cubic_extrapolation(0.0, -1.0, -1.2, -1.5) == math.inf     # p' = −1 − 0.2t − 0.3t² < 0
    assert cubic_limit(0.0, -1.0, -1.2, -1.5) == math.inf
    assert math.isnan(cubic_extrapolation(math.nan, -1.0, 0.0, -1.0))
    assert cubic_limit(math.nan, -1.0, 0.0, -1.0) == math.inf


def test_cap_along_limits_only_the_move_along_s():
    s = np.array([2.0, 0.0])
    d = np.array([-3.0, 1.0])             # the step −αd moves +3α along s and −α across
    alpha = 0.5
    dc = cap_along(d, alpha, s, 0.6)
    assert -alpha * dc[0] == pytest.approx(0.6)          # along s: capped at 0.6
    assert dc[1] == d[1]                                  # across s: unchanged
    assert cap_along(d, alpha, s, 5.0) is d               # within the limit: the same object
    np.testing.assert_array_equal(cap_along(-d, alpha, s, 0.6), -d)    # moving against s: unchanged


def test_direction_certified_rule():
    """ω ≤ (1 − η)⟨z, d⟩/‖d‖ makes −d a descent direction for every ∇F with ‖z − ∇F‖ ≤ ω."""
    z, d = np.array([1.0, 0.0]), np.array([1.0, 1.0])        # ⟨z, d⟩/‖d‖ = 1/√2
    assert direction_certified(0.7, z, d, 0.0) and not direction_certified(0.72, z, d, 0.0)
    assert not direction_certified(0.0, z, -d, 0.0)            # an ascent direction never passes
    assert direction_certified(0.9, z, z, 0.05) and not direction_certified(0.96, z, z, 0.05)   # d = z: ‖z‖
    # the worst ∇F in the ω-ball still has ⟨∇F, d⟩ > 0 when certified
    for omega in (0.3, 0.7):
        worst = z - omega * d / np.linalg.norm(d)
        assert direction_certified(omega, z, d, 0.0) == (worst @ d > 0)


def test_screening_accuracy_clips():
    # slack ‖∇ₓf‖ε_c equals the predicted decrease α⟨z, d⟩
    assert screening_accuracy(1e-3, 0.5, 0.02, 2.0) == pytest.approx(5e-3)
    assert screening_accuracy(1e-3, 0.5, 1e3, 2.0) == pytest.approx(64e-3)      # at most 64ε
    assert screening_accuracy(1e-3, 0.5, 1e-6, 2.0) == 1e-3                     # never below ε
    assert screening_accuracy(1e-3, 0.5, 0.02, 0.0) == 1e-3                     # unknown scale: ε
    assert screening_accuracy(1e-3, 0.5, math.nan, 2.0) == 1e-3


def _ill_conditioned():
    """A quadratic bilevel problem whose upper Hessian has condition number ~10⁴:
    steepest descent crawls, quasi-Newton does not."""
    return QuadraticOracles(n=8, shapes={"a": (), "b": (3,)}, rho=1e-4, s_range=(0.01, 1.5), seed=3)


def test_maid_lbfgs_beats_gradient_steps_on_ill_conditioned_problem():
    o = _ill_conditioned()
    Fs = o.F(o.theta_star())
    lam = outer_options("maid", {})["lam"]
    F0 = o.F(o.theta_of(o.u0))
    res = {}
    for direction in ("lbfgs", "gradient"):
        r = run_outer(o, "maid", dict(direction=direction, tol=1e-7, max_iter=400, budget=400000))
        assert_certified_decrease(o, r.history, F0, lam, check_rejected=False, gradient=direction == "gradient")
        last = r.history[-1]
        res[direction] = (r, last["lower_iters_total"] + last["cg_iters_total"])
    r, cost = res["lbfgs"]
    assert r.converged, r.reason
    np.testing.assert_allclose(o.theta_of(r.u), o.theta_star(), rtol=1e-4, atol=1e-4)
    assert o.F(o.theta_of(r.u)) - Fs < 1e-9 * max(1.0, abs(Fs))
    rg, cost_g = res["gradient"]
    # gradient steps need many more outer iterations (or do not get there at all)
    assert len(r.history) * 3 < len(rg.history) or not rg.converged
    assert cost < cost_g


class _Spy:
    """Records the (kind, ε[, δ]) of every oracle call."""

    def __init__(self, o):
        self._o = o
        self.log = []

    def __getattr__(self, name):
        return getattr(self._o, name)

    def value(self, u, x0, eps, cap=None):
        self.log.append(("value", eps, tuple(np.concatenate([np.ravel(np.asarray(v)) for v in u.values()]))))
        return self._o.value(u, x0, eps, cap)

    def hypergrad(self, u, x0, q0, eps, delta, cap=None):
        self.log.append(("hypergrad", eps, delta))
        return self._o.hypergrad(u, x0, q0, eps, delta, cap)


def test_maid_screening_decides_trials_coarse_to_fine(quad):
    """With screen=True a trial is first solved loosely and refined by 4× down to ε; the
    steps it accepts are still certified, and it converges to the same point."""
    o = quad
    lam = outer_options("maid", {})["lam"]
    F0 = o.F(o.theta_of(o.u0))
    runs = {}
    for screen in (True, False):
        spy = _Spy(o)
        r = run_outer(spy, "maid", dict(screen=screen, step0=10.0, tol=1e-6, max_iter=200))
        assert r.converged, r.reason
        assert_certified_decrease(o, r.history, F0, lam)
        np.testing.assert_allclose(o.theta_of(r.u), o.theta_star(), atol=1e-5)
        runs[screen] = spy.log
    def chains(log):
        """Per trial: the value calls' accuracies relative to the current ε (that of the
        last hypergradient); consecutive calls at one θ are one trial."""
        eps, out, at = None, [], None
        for call in log:
            if call[0] == "hypergrad":
                eps, at = call[1], None
            elif call[2] == at:
                out[-1].append(call[1] / eps)
            else:
                out.append([call[1] / eps])
                at = call[2]
        return out

    # without screening every trial is solved once, at the current ε
    assert all(len(c) == 1 and c[0] == pytest.approx(1.0) for c in chains(runs[False]))
    screened = chains(runs[True])
    assert any(c[0] > 1.0 for c in screened)
    for c in screened:
        # from at most 64ε, refined by 4× (clipped at ε), never below ε; a trial accepted
        # coarsely is then solved on to ε at once (its last call)
        assert 1.0 - 1e-12 <= c[-1] <= c[0] <= 64.0 + 1e-9
        for k, (a, b) in enumerate(zip(c, c[1:])):
            last = k == len(c) - 2
            assert b == pytest.approx(max(1.0, a / 4)) or (last and b == pytest.approx(1.0))
        assert c[-1] == pytest.approx(1.0) or len(c) == 1 or c[-1] == pytest.approx(c[-2] / 4)


@pytest.mark.parametrize("ill,seed", [(False, 4), (False, 5), (True, 3)])
def test_maid_records_within_the_screening_accuracy(ill, seed):
    """A record's upper is the bracket centre at the accuracy that accepted the point, at most
    64ε with screening: |upper − F| ≤ ‖∇ₓf‖·64ε + ½L_f (64ε)² with ‖∇ₓf‖ = ‖Cx − d‖ ≤ √(2F₀)
    along a decreasing run; without screening the same holds at ε."""
    o = (QuadraticOracles(n=8, rho=1e-4, s_range=(0.01, 1.5), seed=seed) if ill else QuadraticOracles(seed=seed))
    F0 = o.F(o.theta_of(o.u0))
    for screen, k in ((True, 64.0), (False, 1.0)):
        r = run_outer(o, "maid", dict(tol=1e-6, max_iter=100, screen=screen))
        for rec in r.history:
            e = k * rec["eps"]
            assert abs(rec["upper"] - true_F(o, rec)) <= 2.0 * math.sqrt(2.0 * F0) * e + e * e
        e = k * r.history[-1]["eps"]
        assert abs(r.upper - o.F(o.theta_of(r.u))) <= 2.0 * math.sqrt(2.0 * F0) * e + e * e


class _WideValueBracket(_NoQr):
    """The quadratic double with a 1000× wider value bracket (‖∇ₓf‖ inflated at trials) and no
    adjoint correction: a decreasing trial's bracket cannot certify it (accuracy-limited)."""

    def value(self, u, x0, eps, cap=None):
        v = self._o.value(u, x0, eps, cap)
        return v._replace(gx_norm=v.gx_norm * 1e3)


def test_maid_failed_accuracy_limited_round_tightens_both_accuracies(quad):
    """A trial whose central values decrease but whose bracket is too wide (an inflated
    ‖∇ₓf‖ widens the value bracket; no adjoint correction) ends the round; the retry
    recomputes z with ε by the predicted power of ν and δ by ν."""
    spy = _Spy(_WideValueBracket(quad))
    nu = outer_options("maid", {})["nu"]
    run_outer(spy, "maid", dict(screen=False, omega="bound", max_iter=1, tol=1e-12, max_backtracks=0))
    hg = [c for c in spy.log if c[0] == "hypergrad"]
    # the hypergradient after the first value call is the retry of the failed round
    first_value = next(i for i, c in enumerate(spy.log) if c[0] == "value")
    before = [c for c in spy.log[:first_value] if c[0] == "hypergrad"][-1]
    retry = next(c for c in spy.log[first_value:] if c[0] == "hypergrad")
    assert retry[2] == pytest.approx(nu * before[2])                      # δ ← νδ
    # ε by the power of ν the trial's values ask for, capped at ν⁴ (a 1000× wider bracket
    # asks for more): an accuracy-limited round, not the generic ε ← νε of other failures
    assert retry[1] == pytest.approx(before[1] * nu ** 4)
    assert len(hg) >= 2


def test_maid_eps_floor_still_tightens_delta_after_accuracy_limited_round(quad):
    """With ε at its floor, an accuracy-limited round still tightens δ (a loose δ is one cause
    of it); the run stops at the floor only once δ is there too."""
    spy = _Spy(_WideValueBracket(quad))
    nu = outer_options("maid", {})["nu"]
    r = run_outer(spy, "maid", dict(screen=False, omega="bound", eps0=1e-3, eps_min=1e-3, delta0=0.1,
                                    delta_min=0.1 * nu ** 3, max_iter=1, max_backtracks=0, tol=1e-12, step0=0.1))
    deltas = [c[2] for c in spy.log if c[0] == "hypergrad"]
    assert all(c[1] == pytest.approx(1e-3) for c in spy.log if c[0] == "hypergrad")
    np.testing.assert_allclose(deltas[-4:], [0.1 * nu ** k for k in range(4)])
    assert is_floor_stop(r.reason) and "eps_min" in r.reason


# ------------------------------------------------------------------ HOAG
@pytest.mark.parametrize("schedule", ["quadratic", "cubic", "exponential"])
def test_hoag_makes_progress(quad, schedule):
    o = quad
    F0, Fs = o.F(o.theta_of(o.u0)), o.F(o.theta_star())
    r = run_outer(o, "hoag", dict(schedule=schedule, max_iter=60))
    Fend = o.F(o.theta_of(r.u))
    assert Fend - Fs < 1e-3 * (F0 - Fs)
    assert [rec["eps"] for rec in r.history] == [schedule_eps(schedule, 0.1, k) for k in range(1, len(r.history) + 1)]
    assert all(math.isnan(rec["omega"]) for rec in r.history)
    assert all(rec["eps"] == rec["delta"] for rec in r.history)
    assert r.upper == r.history[-1]["upper"]


def test_hoag_pieces():
    assert schedule_eps("quadratic", 0.1, 0) == 0.1
    assert schedule_eps("quadratic", 0.1, 3) == pytest.approx(0.1 / 16)
    assert schedule_eps("cubic", 0.1, 1) == pytest.approx(0.1 / 8)
    assert schedule_eps("exponential", 0.1, 2) == pytest.approx(0.1 * 0.81)
    assert schedule_eps("cubic", 0.1, 10**6) == 1e-12
    with pytest.raises(ValueError):
        schedule_eps("linear", 0.1, 1)
    # f_k − ε_k ≤ f_{k−1} + ε_{k−1} + ε_{k−1}‖Δθ‖ − (L/2)‖Δθ‖²  → 0.95 L
    assert step_control(2.0, 0.5, 0.01, 1.0, 0.01, 0.1) == pytest.approx(1.9)
    # no sufficient decrease but f did not grow → keep L
    assert step_control(200.0, 0.99, 0.0, 1.0, 0.0, 0.1) == 200.0
    # f grew → 2L
    assert step_control(2.0, 1.5, 0.0, 1.0, 0.0, 0.1) == 4.0
    assert first_L(2.0, 4) == 8.0 and first_L(1e-4, 4) == 1.0


# ------------------------------------------------------------ gd / adam
@pytest.mark.parametrize("method,lr", [("gd", 0.3), ("adam", 0.05)])
def test_plain_make_progress(quad, method, lr):
    o = quad
    F0, Fs = o.F(o.theta_of(o.u0)), o.F(o.theta_star())
    r = run_outer(o, method, dict(lr=lr, steps=60, tol=1e-8))
    assert len(r.history) == 60 and r.reason == "max_iter reached" and not r.converged
    assert o.F(o.theta_of(r.u)) - Fs < 0.05 * (F0 - Fs)
    assert all(rec["eps"] == 1e-8 and rec["step"] == lr for rec in r.history)


# ------------------------------------------------------------------ history
@pytest.mark.parametrize("method", ["maid", "hoag", "gd", "adam"])
def test_history_fields_exact(quad, method):
    r = run_outer(quad, method, {"max_iter": 5} if method in ("maid", "hoag") else {"steps": 5})
    assert len(r.history) >= 1
    lower = cg = 0
    for k, rec in enumerate(r.history, 1):
        assert list(rec) == list(FIELDS) + HYPER_FIELDS
        assert rec["iter"] == k
        assert all(isinstance(rec[f], int) for f in ("iter", "backtracks", "lower_iters", "cg_iters",
                                                     "lower_iters_total", "cg_iters_total"))
        lower += rec["lower_iters"]
        cg += rec["cg_iters"]
        assert rec["lower_iters_total"] == lower and rec["cg_iters_total"] == cg
    walls = [rec["wall_s"] for rec in r.history]
    assert walls == sorted(walls)
    if method != "maid":
        assert all(math.isnan(rec["omega"]) for rec in r.history)
    else:
        assert all(rec["omega"] >= 0 for rec in r.history)


def test_hyper_fields_flattening_and_large_arrays_omitted():
    h = hyper_fields({"s": np.float64(2.0), "v": np.arange(3.0), "m": np.ones((2, 2)), "big": np.zeros(17),
                      "edge": np.zeros(16)})
    assert list(h) == (["hyper.s", "hyper.v[0]", "hyper.v[1]", "hyper.v[2]"]
                       + [f"hyper.m[{i}]" for i in range(4)] + [f"hyper.edge[{i}]" for i in range(16)])
    rec = make_record(iter=1, upper=1, grad_norm=1, omega=float("nan"), eps=1, delta=1, step=1, backtracks=0,
                      lower_iters=1, cg_iters=1, lower_iters_total=1, cg_iters_total=1, wall_s=0.1,
                      hypers={"s": 1.0})
    assert list(rec) == list(FIELDS) + ["hyper.s"]


def test_large_hyper_left_out_of_records():
    o = QuadraticOracles(n=24, shapes={"a": (), "big": (17,)})
    r = run_outer(o, "maid", dict(max_iter=2))
    assert list(r.history[0]) == list(FIELDS) + ["hyper.a"]


# --------------------------------------------------- resume, callback, budget
def _roundtrip(state):
    buf = io.BytesIO()
    np.savez(buf, **state)
    buf.seek(0)
    with np.load(buf) as z:
        return {k: z[k] for k in z.files}


def _strip_wall(hist):
    """Records without wall_s, NaN made comparable (bit-exact otherwise)."""
    return [{k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items() if k != "wall_s"}
            for rec in hist]


@pytest.mark.parametrize("method,opts,stop_at", [
    ("maid", dict(max_iter=12, tol=1e-12), 5),
    ("hoag", dict(max_iter=12, schedule="cubic"), 4),
    ("adam", dict(steps=12, lr=0.05), 7),
    ("gd", dict(steps=12, lr=0.3), 3),
])
def test_resume_is_bit_identical(quad, method, opts, stop_at):
    full = run_outer(quad, method, opts)
    saved = {}

    def cb(rec, state):
        for v in state.values():
            assert isinstance(v, (np.ndarray, int, float, str, bool))
        if rec["iter"] == stop_at:
            saved["state"] = state
            return True
        return False

    part = run_outer(quad, method, opts, callback=cb)
    assert part.reason == "stopped by callback" and len(part.history) == stop_at
    state = _roundtrip(saved["state"])
    if method == "maid":   # the L-BFGS memory travels with the state
        assert np.shape(state["lbfgs/s"])[0] >= 1 and np.shape(state["lbfgs/s"]) == np.shape(state["lbfgs/y"])
    fresh = QuadraticOracles()          # resuming in a new process: new oracles, same problem
    resumed = run_outer(fresh, method, opts, state=state)
    assert len(full.history) == 12
    assert resumed.reason == full.reason
    for k in full.u:
        assert np.array_equal(resumed.u[k], full.u[k])
    assert np.array_equal(np.asarray(resumed.x), np.asarray(full.x))
    assert _strip_wall(resumed.history) == _strip_wall(full.history)
    assert resumed.upper == full.upper
    # the final state resumes too (nothing left to do at max_iter)
    again = run_outer(fresh, method, opts, state=_roundtrip(resumed.state))
    assert len(again.history) == 12 and again.reason == "max_iter reached"


def _stop_at(iteration: int, saved: dict):
    """A callback that keeps the state of record ``iteration`` in ``saved`` and stops there."""
    def cb(rec, state):
        if rec["iter"] == iteration:
            saved["state"] = state
            return True
        return False
    return cb


class _MovingFloor(QuadraticOracles):
    """Accuracy floors that depend on where the run is (as float32's ‖H‖·eps·‖x‖ does)."""

    def accuracy_floor(self, u, x):
        moved = float(np.linalg.norm(self.flatten(u) - self.flatten(self.u0)))
        return 1e-9 * (1.0 + 1e3 * moved), 1e-10 * (1.0 + 1e3 * moved)


def test_resume_keeps_the_refreshed_accuracy_floors():
    """The floors are refreshed with the constants as θ moves; a resume recomputed them at θ₀
    (a float32 TV run then tightened past its floor into the lower solver's cap)."""
    opts = dict(max_iter=40, tol=1e-14, constants_every=2)
    full = run_outer(_MovingFloor(), "maid", opts)
    assert is_floor_stop(full.reason)
    saved: dict = {}
    cb = _stop_at(3, saved)
    run_outer(_MovingFloor(), "maid", opts, callback=cb)
    state = _roundtrip(saved["state"])
    assert state["eps_min"] > 1e-9
    resumed = run_outer(_MovingFloor(), "maid", opts, state=state)
    assert resumed.reason == full.reason
    assert _strip_wall(resumed.history) == _strip_wall(full.history)


def test_resume_rejects_other_method(quad):
    r = run_outer(quad, "hoag", dict(max_iter=2))
    with pytest.raises(ValueError, match="hoag"):
        run_outer(quad, "maid", {}, state=r.state)


@pytest.mark.parametrize("method", ["maid", "hoag", "adam"])
def test_callback_stop(quad, method):
    seen = []

    def cb(rec, state):
        seen.append(rec["iter"])
        return rec["iter"] == 3

    r = run_outer(quad, method, {}, callback=cb)
    assert r.reason == "stopped by callback" and not r.converged
    assert seen == [1, 2, 3] and len(r.history) == 3


@pytest.mark.parametrize("method", ["maid", "hoag", "gd"])
def test_budget_stop(quad, method):
    budget = 150
    opts = dict(budget=budget, tol=1e-14) if method != "gd" else dict(budget=budget, steps=10**6)
    if method == "maid":
        opts["max_iter"] = 10**6
    if method == "hoag":
        opts["max_iter"] = 10**6
    r = run_outer(quad, method, opts)
    assert r.reason == "budget exhausted" and not r.converged
    h = r.history
    total = h[-1]["lower_iters_total"] + h[-1]["cg_iters_total"]
    # strict: the last oracle call is capped by what is left, so the run spends the
    # budget exactly (the double has one sample), never more
    assert total == budget
    if len(h) > 1:  # the run stopped as soon as the budget was spent
        assert h[-2]["lower_iters_total"] + h[-2]["cg_iters_total"] < budget


def test_options_validation(quad):
    with pytest.raises(ValueError, match="unknown outer method"):
        run_outer(quad, "lbfgs", {})
    with pytest.raises(ValueError, match="bad options"):
        run_outer(quad, "maid", {"not_an_option": 1})
    with pytest.raises(ValueError, match="schedule"):
        run_outer(quad, "hoag", {"schedule": "linear"})
    with pytest.raises(ValueError, match="bracket"):
        run_outer(quad, "maid", {"bracket": "taylor"})


# ------------------------------------------------------------ no recompiles
@pytest.mark.parametrize("method", ["maid", "hoag", "gd", "adam"])
def test_no_recompilation_across_iterations(method):
    o = QuadraticOracles(seed=1)
    counts = []

    def cb(rec, state):
        counts.append(dict(o.traces))

    opts = dict(max_iter=25) if method in ("maid", "hoag") else dict(steps=25)
    r = run_outer(o, method, opts, callback=cb)
    assert len(counts) == len(r.history) >= 10
    assert all(c == counts[0] for c in counts), counts
    assert all(v == 1 for v in counts[0].values())
    if method == "maid":   # ε and δ really did change (traced, not static)
        assert len({rec["eps"] for rec in r.history}) > 5
    # a resumed run (NumPy arrays from a saved state) does not retrace either
    run_outer(o, method, opts, state=_roundtrip(r.state))
    assert dict(o.traces) == counts[0]


@pytest.mark.parametrize("method", ["gd", "adam"])
def test_plain_loops_stop_on_a_capped_solve(method):
    """gd/adam used to step on from lower or CG solves stopped by their caps (a diverging
    learning rate then ran for thousands of capped CG solves with no diagnostic)."""
    o = QuadraticOracles(cg_max_iter=1)
    r = run_outer(o, method, dict(lr=0.1, steps=5, tol=1e-12))
    assert r.reason == "CG hit its iteration cap"
    assert len(r.history) == 1 and r.history[0]["step"] == 0.0


TRAIN_SPEC = """
    data X, y = (randn(40, 4, seed=0), randn(40, seed=1))
    data Xv, yv = (randn(30, 4, seed=2), randn(30, seed=3))
    hyper lr : positive = 0.02
    hyper wd : positive = 0.5
    lower {
        w : real[4] = 0
        train 0.5 * mean((X @ w - y)^2) + 0.5 * wd * sumsq(w) with sgd(lr=lr) for 30 steps
    }
    upper minimize 0.5 * mean((Xv @ w - yv)^2)
    solve { outer: OUTER }
"""


@pytest.mark.parametrize("outer", ["maid(max_iter=15)", "hoag(max_iter=15)",
                                   "maid(max_iter=15)\n hypergradient: implicit"])
def test_maid_and_hoag_run_on_a_train_goal(outer):
    """docs/LANGUAGE.md lists maid and hoag without restriction; on a training procedure (exact
    values and unrolled hypergradients, nothing to adapt) MAID runs with ε = δ = 0: no
    probes, every trial one training run, and every accepted step a true decrease.  With
    implicit differentiation of the end point, CG gets the spec's tol instead of δ = 0 (which
    it cannot reach: the run used to stop on CG's cap at once)."""
    prog = bil.compile(TRAIN_SPEC.replace("OUTER", outer))
    assert prog.engine.exact
    f0 = float(prog.objective({}))
    res = prog.run()
    assert res.history and res.upper < f0
    assert res.reason in ("max_iter reached", "gradient norm below tol", "no decrease along the search direction",
                          "step too small")
    # each record's upper is the exact objective at its hypers, decreasing monotonically
    ups = [r["upper"] for r in res.history if r["step"] > 0]
    for rec in res.history[-2:]:
        exact = float(prog.objective({"lr": rec["hyper.lr"], "wd": rec["hyper.wd"]}))
        assert rec["upper"] == pytest.approx(exact, rel=1e-10)
    if outer.startswith("maid"):
        assert all(b < a for a, b in zip(ups, ups[1:]))
        assert all(r["eps"] == 0 and r["delta"] == 0 and r["omega"] == 0 for r in res.history)
        # no probes and no retries at other accuracies: lower iterations are whole training runs
        assert all(r["lower_iters"] % 30 == 0 for r in res.history)
        assert res.reason != "CG hit its iteration cap"
    else:
        # HOAG's tolerance schedule has no effect on exact oracles: recorded as 0, as gd/adam do
        assert all(r["eps"] == 0 and r["delta"] == 0 for r in res.history)


# ------------------------------------- MAID on a non-quadratic F: two ridge penalties
TWO_PENALTIES = """
problem two_penalties
data Xtr, ytr, Xval, yval = dataset("diabetes", split=0.5, seed=0, standardize=true)
hyper a : positive = START
hyper b : positive = START
lower {
    w : real[ncols(Xtr)] = 0
    minimize 0.5 * sumsq(Xtr @ w - ytr) + 0.5 * a * sumsq(w[0:5]) + 0.5 * b * sumsq(w[5:10])
    solver: lbfgs  # inexact solves, whose errors MAID measures (the default here, direct, is exact)
}
upper minimize 0.5 * mean((Xval @ w - yval)^2)
"""


def test_maid_two_penalties_from_a_plateau_converges_and_resumes_bit_identically(monkeypatch):
    """Two ridge penalties started at 1e-4, where F is flat in log a: F is far from quadratic
    in log coordinates, so the cubic cap, the error directions and the unexplored-direction
    length all take part (spied), and the run still gets to the optimum (a fixed unexplored
    length "no longer than the newest step" stalled on this plateau for 100 iterations).
    The state carries them: a resumed run is bit-identical."""
    import bil.runtime.outer.direction as direction_mod
    import bil.runtime.outer.search as search_mod

    used = {"cap": 0, "expand": 0}
    cap0, dir0 = search_mod.cap_along, direction_mod.lbfgs_direction

    def cap_spy(d, alpha, s, limit):
        out = cap0(d, alpha, s, limit)
        used["cap"] += out is not d
        return out

    def dir_spy(z, pairs, unexplored=None, error_dirs=None, expanded=None):
        out = dir0(z, pairs, unexplored, error_dirs, expanded)
        used["expand"] += bool(expanded and expanded[0])
        return out

    monkeypatch.setattr(search_mod, "cap_along", cap_spy)
    monkeypatch.setattr(direction_mod, "lbfgs_direction", dir_spy)
    opts = dict(tol=1e-8, max_iter=100)
    eng = bil.compile(TWO_PENALTIES.replace("START", "1e-4")).engine
    saved: dict = {}

    def keep_13(rec, state):
        # the state after iteration 13: iteration 14 caps its first trial with the cubic through
        # iteration 13's value, and expands along the error directions
        if rec["iter"] == 13:
            saved["state"] = _roundtrip(state)
        return False

    full = run_outer(eng, "maid", opts, callback=keep_13)
    assert full.converged, full.reason
    assert used["cap"] >= 1 and used["expand"] >= 1
    # the optimum (from penalties 1e4 as well, and from a tight grid: a = 13.1309, b = 57.9919)
    assert float(full.hypers["a"]) == pytest.approx(13.1309, rel=1e-4)
    assert float(full.hypers["b"]) == pytest.approx(57.9919, rel=1e-4)
    # resumed from there (the engine is set back to the state's μ): bit-identical
    state = saved["state"]
    assert math.isfinite(state["lbfgs/last_f"]) and np.shape(state["secant/error_dirs"])[1] == 2
    assert 0 < state["lbfgs/unexplored_len"] <= 1.0
    resumed = run_outer(eng, "maid", opts, state=state)
    assert _strip_wall(resumed.history) == _strip_wall(full.history)
    assert resumed.upper == full.upper
    # and what a resume reads back is what was saved (a run already at its max_iter saves it again)
    again = run_outer(eng, "maid", dict(opts, max_iter=13), state=state).state
    for k in ("lbfgs/last_f", "lbfgs/unexplored_len", "secant/error_dirs"):
        np.testing.assert_array_equal(again[k], state[k])
