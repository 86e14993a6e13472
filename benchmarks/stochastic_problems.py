"""The three problems of ``benchmarks/stochastic.py``, generated with a seed.

Each generator returns a :class:`Problem`: the per-row losses as a
:class:`bil.runtime.outer.adaptive_ops.RowProblem`, the data as NumPy arrays (to be
written to .npz for the ``.bil`` specs), the spec texts, and ``true_F(u)``: the
full-batch upper value at the exact lower solution (closed form for the quadratic,
a tight full-batch solve otherwise).

(a) ``quadratic``: the simulated quadratic bilevel problem (our own generator after the
    description of benchmark_bilevel's): lower rows gᵢ(x, θ) = ½(aᵢᵀx − bᵢᵀθ − yᵢ)² +
    (μ/2)‖x‖² with E[aaᵀ] of spectrum log-spaced in [10⁻³, 1]·(1 − μ) (so the lower
    Hessian has spectrum in [μ + ..., 1], μ = 0.01), upper rows fⱼ = ½(cⱼᵀx − sⱼ)²;
    x*(θ) is affine in θ, so F is a quadratic in θ and F* is a least-squares solve.
(b) ``logreg``: L2 selection, one penalty exp(θₖ) per feature, logistic regression on
    n rows × 22 features (a planted sparse-ish model, correlated features), upper:
    validation logistic loss.
(c) ``cleaning``: hyper-data-cleaning, one weight σ(θᵢ) ∈ [0, 1] per training row (30% of
    the labels flipped), logistic regression, upper: validation logistic loss.  (θ is the
    weight's unconstrained coordinate, the runtime's u.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import bil  # noqa: F401  (float64)
from bil.runtime.outer.adaptive_ops import RowProblem
from bil.runtime.solvers import lbfgs

__all__ = ["Problem", "quadratic", "logreg", "cleaning"]


@dataclass
class Problem:
    name: str
    rows: RowProblem
    data: dict            # name -> np.ndarray (the .npz of the specs)
    sampled_spec: str     # the spec (bil), reading ``data.npz``, its training and validation rows `sampled`
    true_F: Callable[[Any], float]
    F_star: float | None = None   # closed form where known

    @property
    def full_spec(self) -> str:
        """The same spec without the `sampled` declarations (its full-batch twin)."""
        return self.sampled_spec.replace(") sampled\n", ")\n")


# ---------------------------------------------------------------- (a) quadratic
def quadratic(n: int = 32768, m: int = 1024, d: int = 100, p: int = 10, mu: float = 0.01, seed: int = 0) -> Problem:
    rng = np.random.default_rng(seed)
    xi = np.linalg.qr(rng.standard_normal((n, d)))[0] * np.sqrt(n)        # ξᵀξ/n = I exactly
    lam = np.logspace(0, -3, d) * (1 - mu)
    Q = np.linalg.qr(rng.standard_normal((d, d)))[0]
    A = (xi * np.sqrt(lam)) @ Q.T                                           # AᵀA/n = Q diag(λ) Qᵀ
    G = rng.standard_normal((p, d)) / np.sqrt(d)
    B = A @ G.T + 0.3 * rng.standard_normal((n, p))                          # θ moves x*: bᵢ correlates with aᵢ
    x_true = rng.standard_normal(d)
    y = A @ x_true - B @ rng.standard_normal(p) + 0.5 * rng.standard_normal(n)
    C = (rng.standard_normal((m, d)) * np.sqrt(lam)) @ Q.T
    s = C @ x_true + 0.5 * rng.standard_normal(m)
    H = A.T @ A / n + mu * np.eye(d)
    P = np.linalg.solve(H, A.T @ B / n)
    q0 = np.linalg.solve(H, A.T @ y / n)
    Cm, cp = C.T @ C / m, C.T @ s / m
    theta_star = np.linalg.solve(P.T @ Cm @ P, -P.T @ (Cm @ q0 - cp))

    def F(u):
        th = np.asarray(u["theta"], dtype=float)
        x = P @ th + q0
        return float(0.5 * np.mean((C @ x - s) ** 2))

    def g_row(x, u, r):
        return 0.5 * (r["a"] @ x - r["b"] @ u["theta"] - r["y"]) ** 2 + 0.5 * mu * (x @ x)

    def f_row(x, u, r):
        return 0.5 * (r["c"] @ x - r["s"]) ** 2

    rows = RowProblem.from_rows(g_row, f_row, {"a": jnp.asarray(A), "b": jnp.asarray(B), "y": jnp.asarray(y)},
                      {"c": jnp.asarray(C), "s": jnp.asarray(s)}, jnp.zeros(d), {"theta": jnp.zeros(p)})
    spec = f"""problem quadratic
data A, B, y = (load("data.npz", "A"), load("data.npz", "B"), load("data.npz", "y")) sampled
data C, s = (load("data.npz", "C"), load("data.npz", "s")) sampled
hyper theta : real[{p}] = 0
lower {{
    x : real[{d}] = 0
    minimize 0.5 * mean((A @ x - B @ theta - y)^2) + 0.5 * {mu} * sumsq(x)
}}
upper minimize 0.5 * mean((C @ x - s)^2)
"""
    data = {"A": A, "B": B, "y": y, "C": C, "s": s}
    return Problem("quadratic", rows, data, spec, F, F({"theta": theta_star}))


# ------------------------------------------------------- logistic losses, solved tight
def _logistic_F(X, y, Xv, yv, weights_of, reg):
    """true_F(u) for a (weighted) L2 logistic regression lower problem, by a tight L-BFGS solve."""
    X, y, Xv, yv = map(jnp.asarray, (X, y, Xv, yv))

    def g(w, u):
        return jnp.mean(weights_of(u) * jnp.logaddexp(0.0, -y * (X @ w))) + reg(w, u)

    @jax.jit
    def solve(u, w0):
        return lbfgs(g, w0, u, 1e-10, 5000).x

    state = {"w": jnp.zeros(X.shape[1])}

    def F(u):
        u = jax.tree_util.tree_map(jnp.asarray, u)
        state["w"] = solve(u, state["w"])
        return float(jnp.mean(jnp.logaddexp(0.0, -yv * (Xv @ state["w"]))))

    return F


def _features(rng, n, d):
    L = np.linalg.cholesky(0.5 * np.eye(d) + 0.5 * np.ones((d, d)) / d + 0.0 * np.eye(d))
    return rng.standard_normal((n, d)) @ L.T


# ---------------------------------------------------------------- (b) logreg penalties
def logreg(n: int = 200_000, m: int = 50_000, d: int = 22, seed: int = 0) -> Problem:
    rng = np.random.default_rng(seed)
    w_true = rng.standard_normal(d) * (rng.random(d) < 0.5)
    X, Xv = _features(rng, n, d), _features(rng, m, d)
    y = np.where(rng.random(n) < 1 / (1 + np.exp(-X @ w_true)), 1.0, -1.0)
    yv = np.where(rng.random(m) < 1 / (1 + np.exp(-Xv @ w_true)), 1.0, -1.0)

    def g_row(w, u, r):
        return jnp.logaddexp(0.0, -r["y"] * (r["X"] @ w)) + 0.5 * jnp.sum(jnp.exp(u["theta"]) * w ** 2)

    def f_row(w, u, r):
        return jnp.logaddexp(0.0, -r["y"] * (r["X"] @ w))

    rows = RowProblem.from_rows(g_row, f_row, {"X": jnp.asarray(X), "y": jnp.asarray(y)},
                      {"X": jnp.asarray(Xv), "y": jnp.asarray(yv)}, jnp.zeros(d), {"theta": jnp.full(d, -3.0)})
    F = _logistic_F(X, y, Xv, yv, lambda u: 1.0, lambda w, u: 0.5 * jnp.sum(jnp.exp(u["theta"]) * w ** 2))
    spec = f"""problem logreg_penalties
data X, y = (load("data.npz", "X"), load("data.npz", "y")) sampled
data Xv, yv = (load("data.npz", "Xv"), load("data.npz", "yv")) sampled
hyper theta : real[{d}] = -3
lower {{
    w : real[{d}] = 0
    minimize mean(log(1 + exp(-y * (X @ w)))) + 0.5 * sum(exp(theta) * w^2)
}}
upper minimize mean(log(1 + exp(-yv * (Xv @ w))))
"""
    return Problem("logreg", rows, {"X": X, "y": y, "Xv": Xv, "yv": yv}, spec, F)


# ---------------------------------------------------------------- (c) data cleaning
def cleaning(n: int = 20_000, m: int = 5_000, d: int = 22, flip: float = 0.3, reg: float = 1e-3,
             seed: int = 0) -> Problem:
    rng = np.random.default_rng(seed)
    w_true = rng.standard_normal(d)
    X, Xv = _features(rng, n, d), _features(rng, m, d)
    y = np.where(X @ w_true + 0.3 * rng.standard_normal(n) > 0, 1.0, -1.0)
    yv = np.where(Xv @ w_true + 0.3 * rng.standard_normal(m) > 0, 1.0, -1.0)
    y = np.where(rng.random(n) < flip, -y, y)

    def g_row(w, u, r):
        return jax.nn.sigmoid(u["theta"][r["i"]]) * jnp.logaddexp(0.0, -r["y"] * (r["X"] @ w)) + 0.5 * reg * (w @ w)

    def f_row(w, u, r):
        return jnp.logaddexp(0.0, -r["y"] * (r["X"] @ w))

    rows = RowProblem.from_rows(g_row, f_row, {"X": jnp.asarray(X), "y": jnp.asarray(y), "i": jnp.arange(n)},
                      {"X": jnp.asarray(Xv), "y": jnp.asarray(yv)}, jnp.zeros(d), {"theta": jnp.zeros(n)})
    F = _logistic_F(X, y, Xv, yv, lambda u: jax.nn.sigmoid(u["theta"]), lambda w, u: 0.5 * reg * (w @ w))
    spec = f"""problem cleaning
data X, y = (load("data.npz", "X"), load("data.npz", "y")) sampled
data Xv, yv = (load("data.npz", "Xv"), load("data.npz", "yv")) sampled
hyper weight : real[rows(X)] in [0, 1] = 0.5
lower {{
    w : real[{d}] = 0
    minimize mean(weight * log(1 + exp(-y * (X @ w)))) + 0.5 * {reg} * sumsq(w)
}}
upper minimize mean(log(1 + exp(-yv * (Xv @ w))))
"""
    return Problem("cleaning", rows, {"X": X, "y": y, "Xv": Xv, "yv": yv}, spec, F)
