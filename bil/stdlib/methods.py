"""Names accepted in options: lower solvers, optimizers, hypergradients, outer loops.

Each entry is a signature only: calling it returns the keyword arguments with
defaults filled in, which is what the compiler stores in the IR and the runtime
reads.  Keeping them in the registry means the compiler checks arity and
keywords (``fista(mu=1)``, ``maid(eps0=...)``) with the same machinery as
ordinary functions, and the README's option tables are generated from here.
"""

from __future__ import annotations

from bil.stdlib.registry import register


# ---------------------------------------------------------------- lower solvers
@register("lbfgs", kind="solver")
def lbfgs(memory=10):
    """L-BFGS with a zoom line search (optax); the default lower solver for objectives not proved quadratic."""
    return dict(memory=memory)


@register("fista", kind="solver")
def fista(mu=None, L0=1.0):
    """Accelerated proximal gradient with backtracking; `mu` is the strong-convexity modulus."""
    return dict(mu=mu, L0=L0)


@register("gd", kind="solver")
def gd_solver(lr=None):
    """Gradient descent, fixed step `lr` or Armijo backtracking when omitted."""
    return dict(lr=lr)


@register("newton_cg", kind="solver")
def newton_cg(cg_max_iter=50):
    """Truncated Newton with CG on Hessian-vector products and a line search."""
    return dict(cg_max_iter=cg_max_iter)


@register("direct", kind="solver")
def direct():
    """Quadratic objectives only: factor the Hessian once (Cholesky, LU fallback) and solve,
    refined to `tol`; the adjoint reuses the factor.  Default for quadratic, unbounded lower
    problems with at most 2000 variables."""
    return dict()


@register("cg", kind="solver")
def cg_solver():
    """Quadratic objectives only: conjugate gradients on Hessian-vector products to `tol`,
    warm started.  Default for quadratic, unbounded lower problems with more than 2000 variables."""
    return dict()


# ------------------------------------------------------ training optimizers
@register("sgd", kind="optimizer")
def sgd(lr, momentum=0.0, nesterov=False):
    """Stochastic gradient descent (optax.sgd); `lr` and `momentum` may be hypers."""
    return dict(lr=lr, momentum=momentum, nesterov=nesterov)


@register("adam", kind="optimizer")
def adam(lr, b1=0.9, b2=0.999, eps=1e-8):
    """Adam (optax.adam); `lr` may be a hyper."""
    return dict(lr=lr, b1=b1, b2=b2, eps=eps)


@register("rmsprop", kind="optimizer")
def rmsprop(lr, decay=0.9):
    """RMSProp (optax.rmsprop)."""
    return dict(lr=lr, decay=decay)


@register("adagrad", kind="optimizer")
def adagrad(lr):
    """Adagrad (optax.adagrad)."""
    return dict(lr=lr)


# ---------------------------------------------------- hypergradient methods
@register("implicit", kind="hypergradient")
def implicit(linear="cg", max_iter=1000):
    """Implicit differentiation: solve H q = grad_x f by `linear` = "cg" or "direct"."""
    return dict(linear=linear, max_iter=max_iter)


@register("neumann", kind="hypergradient")
def neumann(k=20, alpha=None):
    """Truncated Neumann series for H^-1 with `k` terms and step `alpha` (default 1/L estimate)."""
    return dict(k=k, alpha=alpha)


@register("unroll", kind="hypergradient")
def unroll(truncate=None, steps=1000):
    """Reverse mode through the lower iterations; `truncate=K` keeps only the last K.

    For a `train` goal the training steps themselves are unrolled.  For an
    argmin, `steps` iterations of accelerated gradient descent from the lower
    variables' initial values are unrolled (line-search solvers have
    data-dependent loops that reverse mode cannot traverse), with step 1/L, L
    the largest Hessian norm at the start and at a solution from the spec's
    solver (solved, not differentiated; its iterations count in the cost),
    and adaptive momentum restart.
    """
    return dict(truncate=truncate, steps=steps)


# ------------------------------------------------------------- outer loops
@register("maid", kind="outer")
def maid(eps0=0.1, delta0=0.1, eta=1e-4, lam=1e-8, rho=0.5, nu=0.5, nu_plus=1.25,
         rho_plus=1.25, step0=1.0, max_step=1.0, max_iter=100, max_backtracks=8,
         budget=None, tol=1e-6, eps_min="auto", delta_min="auto", constants_every=5,
         omega="secant", safety=2.0, bracket="adjoint", direction="lbfgs", memory=5, h0="auto",
         cubic=True, screen=True):
    """Adaptively inexact descent (Salehi et al. 2025): ε, δ and the step are adapted.

    `eps0`, `delta0`: first accuracies (‖x̃ − x*‖ ≤ ε, CG residual ≤ δ).  `eta`:
    descent test ω ≤ (1 − eta)‖z‖.  `lam` (< eta; the reference code's eta²):
    sufficient decrease f̄⁺(θ − αd) − f̄⁻(θ) + lam·α⟨z, d⟩ ≤ 0 on the certified
    bracket of the upper values (d = z for a gradient step).  `rho`:
    backtracking factor.  `nu`: tightening factor (only the accuracy whose
    term of ω dominates is tightened by the descent test; both after a failed
    backtracking round).  `nu_plus`, `rho_plus`: loosening of ε, δ and growth
    of the first trial step after a success (1.25: faster than the
    reference's 1.05 / 1.11, which cost more on TV denoising).  `step0` is
    the length ‖αz‖ of the first gradient trial step (unconstrained
    coordinates); later gradient trials start at rho_plus times the last
    accepted α, always within the trust region ‖αd‖ ≤ `max_step`.
    `direction`: "lbfgs" (default) steps along an L-BFGS direction d = Hz
    (`memory` pairs) whenever ω certifies it as a descent direction, first
    trial α = 1, else along z; "gradient" always along z (the paper).
    `h0`: the L-BFGS initial inverse Hessian: "subspace" scales the directions
    the stored steps have explored per hyper (the least-squares fit of s ≈ D·y)
    and the others (where the part of z there is above its error, measured
    along the directions in which z's error was seen to lie) so that the step
    there is as long as a first gradient step: `step0`, shortened as
    backtracking shortens it (hypers of very different curvature: TV's weight
    and smoothing);
    "scalar" is ⟨s, y⟩/⟨y, y⟩·I throughout; "auto" (default) is "subspace" when
    there are at most `memory` hypers, else "scalar".  `cubic`: cap the first
    trial's move along the last step at the minimum of the cubic through the
    upper values and slopes at its two ends, where that is less than half of
    what the quasi-Newton model extrapolates (True by default).
    `screen`: evaluate each trial coarse to fine, from the accuracy at which
    the bracket decides a trial far worse than predicted down to ε (True by
    default; False solves every trial to ε at once).  `max_iter`,
    `max_backtracks` (trials per round, one more per retry), `budget` (total
    lower + CG iterations, strict: every solve is capped by what is left),
    `tol` (stop when ‖z‖ + ω ≤ tol), `eps_min`,
    `delta_min`: floors of ε and δ.  "auto" (default): in float64 100
    roundoff units times ‖x̃‖ (ε) and times ‖∇ₓf(x̃)‖ (δ), i.e. ε ≥
    2.2e-14·‖x̃‖, in float32 one unit; refreshed with the constants as x̃
    moves.  A number is an absolute floor.  Either is never below one
    roundoff unit of ‖∇ₓg‖/μ (float32 also ‖H‖·‖x̃‖/μ) and of ‖∇ₓf‖.  Where the lower solver or CG
    cannot reach an accuracy that MAID asks for after a point is certified
    (its iteration cap at the current point or at two trials in a row, the
    floors, or `max_backtracks`-long rounds failing 8 times in one
    iteration), the run stops at its best certified point with the reason
    "accuracy floor reached at ε = ..." (exit 0), not an error.  `omega`: the error estimate ω of ‖z − ∇F‖ in the
    descent test: "secant" (default) = safety·(k_ε·ε + k_δ·δ), slopes measured
    a posteriori on pairs of hypergradients at the same θ (an estimate; steps
    stay certified by the bracket); "bound" = the a-priori bound with the
    engine's constants (μ, L_f, ‖J‖, L_H, L_J), 10–3·10⁵× the true error on TV
    denoising.  `safety`: factor on the secant estimate.  `constants_every`:
    accepted iterations between re-estimates of the engine's constants
    (running extremes kept) and between re-measurements of the secant slopes.
    `bracket`: the certified bracket of the upper value used to accept steps:
    "adjoint" (default) = the corrected value f(x̃) − ⟨q̃, ∇ₓg(x̃)⟩ ±
    (δε + ½(L_f + L_H‖q̃‖)ε²), second order in the accuracies, intersected
    with the value bracket (a trial whose value bracket cannot decide costs a
    CG solve there, reused by the next point); "value" = f(x̃) ±
    (‖∇ₓf‖ε + ½L_f ε²) only.  The paper's method is
    `maid(direction="gradient", bracket="value", screen=False)`.
    """
    return dict(locals())


@register("hoag", kind="outer")
def hoag(schedule="quadratic", eps0=0.1, max_iter=100, budget=None, tol=1e-6,
         clip=(-10.0, 6.0)):
    """Pedregosa's HOAG with a decreasing tolerance `schedule` (quadratic, cubic, exponential).

    `budget`: total lower + CG iterations, strict as in `maid`."""
    return dict(locals())


@register("gd", kind="outer")
def gd_outer(lr=0.1, steps=100, tol=1e-8, budget=None):
    """Plain gradient descent on the hypergradient (optax.sgd) at fixed accuracy `tol`."""
    return dict(locals())


@register("adam", kind="outer")
def adam_outer(lr=0.05, steps=100, tol=1e-8, budget=None):
    """Adam on the hypergradient (optax.adam) at fixed accuracy `tol`."""
    return dict(locals())
