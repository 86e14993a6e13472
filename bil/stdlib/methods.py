"""Every method a spec names in an option: lower solvers, optimizers, hypergradients, outer loops.

Each method is one frozen option class registered once (:func:`register_method`):
its fields are the keywords with their defaults, and constructing it validates
them (:mod:`bil.stdlib.method_options`).  The compiler binds ``fista(mu=1)``
against the class's signature (arity, keywords, "did you mean" hints, like any
function) and constructs it; the runtime receives the object and reads its
attributes.  The option tables of ``docs/LANGUAGE.md`` are :func:`option_table`'s
output (``tests/test_stdlib.py`` checks they agree).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Optional

from bil.stdlib.method_options import (MethodOptions, OptionError, alias, at_least_one, check_count, choice,
                                       count, flag, fraction, is_number, positive, register_method)
from bil.stdlib.registry import lookup, names

__all__ = ["MethodOptions", "OptionError", "register_method", "method_class", "make_method", "option_table"]


def method_class(name: str, kind: str) -> type[MethodOptions] | None:
    """The option class registered as ``name`` in namespace ``kind``, or None."""
    fn = lookup(name, kind)
    return None if fn is None else fn.impl


def make_method(kind: str, name: str, options: Any = None) -> MethodOptions:
    """``name``'s options object from a mapping of keywords (defaults filled in, validated).

    ``options`` may already be an object of that class (returned as is).  Raises
    ``ValueError``: an unknown method, an unknown keyword ("bad options"), a bad value."""
    cls = method_class(name, kind)
    if cls is None:
        raise ValueError(f"unknown {kind} method {name!r} (expected one of {', '.join(names(kind))})")
    if isinstance(options, cls):
        return options
    try:
        return cls(**dict(options or {}))
    except TypeError as e:
        raise ValueError(f"bad options for {kind} method {name!r}: {e}") from None


def option_table(kind: str) -> str:
    """The Markdown table of ``kind``'s methods (call with defaults, first paragraph of the doc)."""
    rows = ["| call | meaning |", "| --- | --- |"]
    for n in names(kind):
        cls = method_class(n, kind)
        rows.append(f"| `{cls.call_text()}` | {cls.summary()} |")
    return "\n".join(rows)


# ---------------------------------------------------------------- lower solvers
@register_method("lbfgs", kind="solver")
@dataclass(frozen=True)
class Lbfgs(MethodOptions):
    """L-BFGS with a zoom line search (optax); the default lower solver for objectives not proved quadratic."""

    memory: int = 10

    def __post_init__(self):
        count(self, "memory")


@register_method("fista", kind="solver")
@dataclass(frozen=True)
class Fista(MethodOptions):
    """Accelerated proximal gradient with backtracking; `mu` is the strong-convexity modulus.
    The default for bounded variables and non-smooth terms."""

    mu: Optional[float] = None
    L0: float = 1.0

    def __post_init__(self):
        positive(self, "mu", "L0")


@register_method("gd", kind="solver")
@dataclass(frozen=True)
class GdSolver(MethodOptions):
    """(Proximal) gradient descent, fixed step `lr` or Armijo backtracking when omitted."""

    lr: Optional[float] = None

    def __post_init__(self):
        positive(self, "lr")


@register_method("newton_cg", kind="solver")
@dataclass(frozen=True)
class NewtonCG(MethodOptions):
    """Truncated Newton with CG on Hessian-vector products and a line search."""

    cg_max_iter: int = 50

    def __post_init__(self):
        count(self, "cg_max_iter")


@register_method("direct", kind="solver")
@dataclass(frozen=True)
class Direct(MethodOptions):
    """Quadratic objectives only: factor the Hessian once (Cholesky, LU fallback) and solve,
    refined to `tol`; an implicit adjoint reuses the factor (whatever `linear=` says; the runs'
    `cg_iters` then count its refinement steps).  Default for quadratic, unbounded lower
    problems with at most 2000 variables."""


@register_method("cg", kind="solver")
@dataclass(frozen=True)
class CG(MethodOptions):
    """Quadratic objectives only: conjugate gradients on Hessian-vector products to `tol`,
    warm started.  Default for quadratic, unbounded lower problems with more than 2000 variables."""


#: lower solvers for quadratic objectives only (the compiler checks the degree)
QUADRATIC_SOLVERS = (Direct, CG)
#: lower solvers that handle bounds and non-smooth terms (projected / proximal steps)
PROX_SOLVERS = (Fista, GdSolver)


# ------------------------------------------------------ training optimizers
# ``lr`` (and sgd's ``momentum``) may be hypers: the compiler checks those
# arguments itself (they are expressions); only constant values are checked here.
def _constant_lr(m) -> None:
    if is_number(m.lr) and not m.lr > 0:
        raise OptionError(f"the learning rate must be > 0, got {m.lr:g}", arg="lr")


@register_method("sgd", kind="optimizer")
@dataclass(frozen=True)
class Sgd(MethodOptions):
    """Stochastic gradient descent (optax.sgd); `lr` and `momentum` may be hypers."""

    lr: Any
    momentum: Any = 0.0
    nesterov: bool = False

    def __post_init__(self):
        _constant_lr(self)


@register_method("adam", kind="optimizer")
@dataclass(frozen=True)
class Adam(MethodOptions):
    """Adam (optax.adam); `lr` may be a hyper."""

    lr: Any
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self):
        _constant_lr(self)


@register_method("rmsprop", kind="optimizer")
@dataclass(frozen=True)
class RMSProp(MethodOptions):
    """RMSProp (optax.rmsprop)."""

    lr: Any
    decay: float = 0.9

    def __post_init__(self):
        _constant_lr(self)


@register_method("adagrad", kind="optimizer")
@dataclass(frozen=True)
class Adagrad(MethodOptions):
    """Adagrad (optax.adagrad)."""

    lr: Any

    def __post_init__(self):
        _constant_lr(self)


# ---------------------------------------------------- hypergradient methods
@register_method("implicit", kind="hypergradient")
@dataclass(frozen=True)
class Implicit(MethodOptions):
    """Implicit differentiation: solve H q = grad_x f by `linear` = "cg" or "direct"."""

    linear: str = "cg"
    max_iter: int = 1000

    def __post_init__(self):
        choice(self, "linear", ("cg", "direct"))
        count(self, "max_iter")


@register_method("neumann", kind="hypergradient")
@dataclass(frozen=True)
class Neumann(MethodOptions):
    """Truncated Neumann series for H^-1 with `k` terms and step `alpha` (default 1/L estimate)."""

    k: int = 20
    alpha: Optional[float] = None

    def __post_init__(self):
        positive(self, "alpha")
        count(self, "k")


@register_method("unroll", kind="hypergradient")
@dataclass(frozen=True)
class Unroll(MethodOptions):
    """Reverse mode through the lower iterations; `truncate=K` keeps only the last K.

    For a `train` goal the training steps themselves are unrolled.  For an
    argmin, `steps` iterations of accelerated gradient descent from the lower
    variables' initial values are unrolled (line-search solvers have
    data-dependent loops that reverse mode cannot traverse), with step 1/L, L
    the largest Hessian norm at the start and at a solution from the spec's
    solver (solved, not differentiated; its iterations count in the cost),
    and adaptive momentum restart.
    """

    truncate: Optional[int] = None
    steps: int = 1000

    def __post_init__(self):
        count(self, "truncate", "steps")


#: hypergradients from the adjoint equation at a lower solution (not unrolled)
IMPLICIT_METHODS = (Implicit, Neumann)


# ------------------------------------------------------------- outer loops
@register_method("maid", kind="outer")
@dataclass(frozen=True)
class Maid(MethodOptions):
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

    eps0: float = 0.1
    delta0: float = 0.1
    eta: float = 1e-4
    lam: float = 1e-8
    rho: float = 0.5
    nu: float = 0.5
    nu_plus: float = 1.25
    rho_plus: float = 1.25
    step0: float = 1.0
    max_step: float = 1.0
    max_iter: int = 100
    max_backtracks: int = 8
    budget: Optional[int] = None
    tol: float = 1e-6
    eps_min: Any = "auto"
    delta_min: Any = "auto"
    constants_every: int = 5
    omega: str = "secant"
    safety: float = 2.0
    bracket: str = "adjoint"
    direction: str = "lbfgs"
    memory: int = 5
    h0: str = "auto"
    cubic: bool = True
    screen: bool = True

    def __post_init__(self):
        choice(self, "omega", ("secant", "bound"))
        choice(self, "bracket", ("value", "adjoint"))
        choice(self, "direction", ("lbfgs", "gradient"),
               "\"gradient\" is the published method (steps along the hypergradient)")
        choice(self, "h0", ("auto", "subspace", "scalar"),
               "\"scalar\" is the textbook L-BFGS scaling <s, y>/<y, y> in every direction")
        flag(self, "screen", "cubic")
        positive(self, "eps0", "delta0", "step0", "max_step", "tol", "eta", "lam", "budget", "safety")
        positive(self, *(f for f in ("eps_min", "delta_min") if getattr(self, f) != "auto"))
        count(self, "max_iter", "memory", "constants_every")
        count(self, "max_backtracks", least=0)   # 0: one trial per round (the runtime's tests use it)
        fraction(self, "rho", "nu")
        at_least_one(self, "nu_plus", "rho_plus")


@register_method("hoag", kind="outer")
@dataclass(frozen=True)
class Hoag(MethodOptions):
    """Pedregosa's HOAG with a decreasing tolerance `schedule` (quadratic, cubic, exponential).

    `budget`: total lower + CG iterations, strict as in `maid`."""

    schedule: str = "quadratic"
    eps0: float = 0.1
    max_iter: int = 100
    budget: Optional[int] = None
    tol: float = 1e-6
    clip: Optional[tuple] = (-10.0, 6.0)

    def __post_init__(self):
        choice(self, "schedule", ("quadratic", "cubic", "exponential"))
        positive(self, "eps0", "tol", "budget")
        count(self, "max_iter")
        c = self.clip
        if c is not None and not (isinstance(c, (tuple, list)) and len(c) == 2
                                  and all(is_number(v) for v in c) and c[0] < c[1]):
            raise OptionError(f"`hoag(clip=...)` must be a pair `(lo, hi)` of numbers with lo < hi, got {c!r}",
                              "e.g. `clip=(-10, 6)` (the box for log-coordinate hypers)", arg="clip")


@dataclass(frozen=True)
class _PlainOuter(MethodOptions):
    """gd and adam on the hypergradient at fixed accuracy ``tol`` (``steps``: alias of ``max_iter``)."""

    aliases = MappingProxyType({"steps": "max_iter"})

    lr: float = 0.1
    max_iter: int = 100
    tol: float = 1e-8
    budget: Optional[int] = None
    steps: Optional[int] = None

    def __post_init__(self):
        count(self, "steps", "max_iter")
        alias(self, "steps", "max_iter", 100)
        positive(self, "lr", "tol", "budget")


@register_method("gd", kind="outer")
@dataclass(frozen=True)
class GdOuter(_PlainOuter):
    """Plain gradient descent on the hypergradient (optax.sgd) at fixed accuracy `tol`; `steps` is
    another name for `max_iter`."""


@register_method("adam", kind="outer")
@dataclass(frozen=True)
class AdamOuter(_PlainOuter):
    """Adam on the hypergradient (optax.adam) at fixed accuracy `tol`; `steps` is another name for
    `max_iter`."""

    lr: float = 0.05


# the stochastic outer loops (SOBA, SABA) register themselves in their own module
from bil.stdlib import stochastic_methods  # noqa: E402,F401
