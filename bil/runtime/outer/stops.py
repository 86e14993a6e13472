"""Why an outer loop stopped (:class:`Stop`) and what a lower or CG solve reported (:class:`Status`).

A run's ``reason`` stays a plain string (``result.json``, checkpoints, the summary
table); :class:`Stop` is the one place that spells those strings and says what each
means for the caller: whether ``--resume`` continues after it, the exit code of
``bil run``, and for a failed solve the solver statuses its diagnostic is built from.
Two reasons carry a detail after their fixed text (the accuracy floor, an invalid μ):
:meth:`Stop.of` recognises them by that prefix.  No JAX here: the CLI imports this
before it loads the runtime.
"""

from __future__ import annotations

import enum

__all__ = ["Status", "Stop", "RESUMABLE"]


class Status(enum.IntEnum):
    """A lower or CG solve's status (the oracles' ``lower_status`` / ``cg_status``)."""

    OK = 0
    CAP = 1          # its own iteration cap
    NONFINITE = 2    # NaN or Inf met
    NOT_PD = 3       # CG met non-positive curvature (the lower Hessian is not positive definite)
    BUDGET = 4       # the call's ``cap`` (what is left of the outer budget) cut it short


class Stop(str, enum.Enum):
    """A stop reason: its text (or the fixed start of it), exit code, resumability and, for a
    failed solve, the (lower, CG) statuses that describe it."""

    def __new__(cls, text: str, exit_code: int = 0, resumable: bool = False,
                statuses: tuple[int, int] | None = None, hint: str | None = None):
        obj = str.__new__(cls, text)
        obj._value_ = text
        obj.exit_code = exit_code
        obj.resumable = resumable
        obj.statuses = statuses
        obj.hint = hint
        return obj

    CONVERGED = "gradient norm below tol"
    MAX_ITER = ("max_iter reached", 0, True)
    BUDGET = ("budget exhausted", 0, True)
    CALLBACK = ("stopped by callback", 0, True)
    #: followed by `` at ε = … (why); …`` (:func:`bil.runtime.outer.floor.floor_reason`)
    FLOOR = "accuracy floor reached"
    STEP_TOO_SMALL = "step too small"
    NO_DECREASE = "no decrease along the search direction"
    LOWER_NONFINITE = ("lower solve produced non-finite values", 1, False, (Status.NONFINITE, Status.OK))
    LOWER_CAP = ("lower solve hit its iteration cap", 1, False, (Status.CAP, Status.OK))
    CG_NONFINITE = ("adjoint solve produced non-finite values", 1, False, (Status.OK, Status.NONFINITE))
    NOT_PD = ("adjoint solve failed: lower Hessian not positive definite", 1, False, (Status.OK, Status.NOT_PD))
    CG_CAP = ("CG hit its iteration cap", 1, False, (Status.OK, Status.CAP))
    NONFINITE_HYPERGRAD = ("non-finite hypergradient", 1, False, None,
                           "check the upper objective's domain (log/sqrt of non-positive values, division by 0) "
                           "over the values the lower variables and the hypers take")
    #: followed by `` mu=VALUE``
    INVALID_MU = ("invalid strong-convexity estimate", 1, False, None,
                  "add a strongly convex term (e.g. `+ 1e-3 * sumsq(x)`), or use `outer: hoag(...)`")

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def of(cls, reason) -> "Stop | None":
        """The member a reason string belongs to (exact text, or a prefixed detail), else None."""
        if reason is None:
            return None
        text = str(reason)
        try:
            return cls(text)
        except ValueError:
            pass
        for member in (cls.FLOOR, cls.INVALID_MU):
            if text.startswith(member.value):
                return member
        return None

    @classmethod
    def invalid_mu(cls, mu: float) -> str:
        """The reason of a run stopped by a strong-convexity estimate μ ≤ 0 or non-finite."""
        return f"{cls.INVALID_MU.value} mu={mu!r}"

    @property
    def failed(self) -> bool:
        """Did the run end on a failed solve or non-finite values (exit 1)?"""
        return self.exit_code != 0


#: stop reasons a resumed run continues from (a raised limit, a callback that said stop)
RESUMABLE = frozenset(m.value for m in Stop if m.resumable)
