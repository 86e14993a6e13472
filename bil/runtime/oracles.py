"""The interface between a compiled problem and the outer loops.

A compiled program exposes a few jitted *oracles* (lower solve, upper value,
hypergradient) whose accuracies are traced arguments.  MAID, HOAG and the plain
optimisers in :mod:`bil.runtime.outer` only talk to this interface, so every
method runs on exactly the same compiled code and is compared on one cost axis:
lower-level iterations plus CG iterations.

Coordinates: ``u`` is the hyper dict in *unconstrained* coordinates (log for
``positive``, logit for bounded); ``to_user(u)`` maps back.  ``x`` and ``q`` are
the lower iterate and the adjoint (pytrees, with a leading sample axis for
``per sample`` problems); pass them back in to warm-start.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, NamedTuple


#: lower/CG status of a solve stopped by the call's ``cap`` (the outer loop's remaining budget)
BUDGET = 4


class UpperValue(NamedTuple):
    """Upper value at an inexact lower solution (accuracy ``eps``)."""

    f: Any            # f(x̃, θ)
    x: Any            # x̃ (warm start for the next call)
    lower_iters: Any  # lower iterations spent (summed over samples)
    lower_status: Any  # 0 ok, 1 iteration cap, 2 non-finite, 4 the call's `cap` (max over samples)
    gx_norm: Any      # ‖∇ₓ f(x̃, θ)‖


class HyperGrad(NamedTuple):
    """Inexact hypergradient z = ∇θ f − Jᵀ q at accuracies (eps, delta)."""

    f: Any
    z: Any            # dict like u: the hypergradient in unconstrained coordinates
    x: Any
    q: Any            # adjoint (warm start for the next call)
    lower_iters: Any
    cg_iters: Any
    lower_status: Any
    cg_status: Any    # 0 ok, 1 cap, 2 non-finite, 3 Hessian not positive definite, 4 the call's `cap`
    gx_norm: Any      # ‖∇ₓ f(x̃)‖
    q_norm: Any       # ‖q‖
    jtq_norm: Any     # ‖Jᵀ q‖
    #: ⟨q, ∇ₓg(x̃, θ)⟩: the adjoint-weighted lower residual, for MAID's corrected
    #: value f(x̃) − ⟨q, ∇ₓg⟩ (``maid(bracket="adjoint")``).  None (or NaN) where
    #: unknown or not meaningful (active bounds, unrolled); MAID then falls back to
    #: the plain value bracket.
    qr: Any = None


class Constants(NamedTuple):
    """Cheap estimates of the constants in MAID's error bound, at one point."""

    mu: float     # strong convexity of g in x (given by the user or estimated)
    L_f: float    # ‖∇²ₓₓ f‖
    J_norm: float  # ‖∇²ₓθ g‖
    L_H: float    # Lipschitz constant of ∇²ₓₓ g in x (directional estimate)
    L_J: float    # Lipschitz constant of ∇²ₓθ g in x (directional estimate)
    #: Lipschitz constant of ∇θ f in x (‖∇²θₓ f‖); 0 when the upper objective's
    #: θ-part does not involve x (e.g. a separable regulariser on θ).
    L_ftheta: float = 0.0


class AbstractOracles(ABC):
    """What an outer loop may ask of a compiled problem."""

    #: initial hypers in unconstrained coordinates
    u0: dict
    #: True when values and hypergradients do not depend on the accuracies ``eps`` and
    #: ``delta`` (a training procedure: a fixed number of steps, differentiated exactly);
    #: MAID then runs with ε = δ = 0, i.e. backtracking on exact values
    exact: bool = False

    @abstractmethod
    def to_user(self, u: dict) -> dict:
        """Hypers in the user's coordinates (NumPy arrays)."""

    @abstractmethod
    def init_lower(self, u: dict) -> Any:
        """The lower variables' initial values at ``u`` (first warm start)."""

    @abstractmethod
    def init_adjoint(self, x: Any) -> Any:
        """A zero adjoint shaped like ``x``."""

    @abstractmethod
    def value(self, u: dict, x0: Any, eps: float, cap: int | None = None) -> UpperValue:
        """Solve the lower problem to ‖x̃ − x*‖ ≤ eps from ``x0`` and evaluate f.

        ``cap``: at most this many lower iterations in this call (the outer
        loop's remaining ``budget``); a solve stopped by it reports
        ``lower_status`` 4 (``BUDGET``).  None: only the solver's own max_iter."""

    @abstractmethod
    def hypergrad(self, u: dict, x0: Any, q0: Any, eps: float, delta: float,
                  cap: int | None = None) -> HyperGrad:
        """Lower solve to accuracy eps, CG to absolute residual delta, then z.

        ``cap`` limits lower + CG iterations together (lower first, CG gets the
        rest); a solve it stops reports status 4, as in :meth:`value`."""

    @abstractmethod
    def constants(self, u: dict, x: Any) -> Constants:
        """Estimates of μ, L_f, ‖J‖, L_H, L_J at (u, x)."""

    # ---- optional queries (default implementations; override where known) ----
    def lower_grad_norm(self, u: dict, x: Any) -> float:
        """‖∇ₓ g(x, θ)‖ at (u, x), without solving (HOAG's relative tolerance).

        The default says "unknown" (NaN); HOAG then uses absolute tolerances.
        """
        return float("nan")

    def set_strong_convexity(self, mu: float | None) -> None:
        """Set the μ the oracles use to turn ε into a lower tolerance (‖∇ₓg‖ ≤ μ·ε);
        None resets it to the estimate at θ₀.  :meth:`constants` updates it as θ moves;
        outer loops call this at their start (None) or on resume (the μ of the saved
        state), so that a run does not depend on what ran before it on the same
        oracles.  The default does nothing (a μ that never changes)."""

    def accuracy_floor(self, u: dict, x: Any) -> tuple[float, float]:
        """(ε, δ) below which the arithmetic cannot certify a solve: one unit of
        roundoff of ‖∇ₓg‖ (over μ) and of ‖∇ₓf‖ at (u, x), the initial lower
        iterate.  Outer loops never ask for less (a float32 run would otherwise
        ask for ε ≈ 1e-6 on ridge and spend 30000 iterations failing).  The
        default, 0, means unknown."""
        return 0.0, 0.0

    def log_hypers(self) -> dict | None:
        """``{name: bool}``: which hypers of ``u`` are in log coordinates.

        HOAG clips those to its box.  ``None`` (the default) means unknown, and
        HOAG then clips every hyper, as Pedregosa's reference code does.
        """
        return None
