"""Split a lower objective into a smooth part and separable non-smooth penalties.

g(x, θ) = s(x, θ) + Σ h_v(x_v, θ), each h_v a penalty on one lower variable whose
proximal operator is known (bil/runtime/prox.py):

* weighted l1:  ``c * l1(w)``, ``l1(c * w)``, ``sum(c * abs(w))``, ``abs(w)`` for a scalar w,
  and the same through axes, reshapes and transposes (``sum(c * l1(reshape(d * w, 5, 2), axis=1))``,
  ``c @ sum(abs(transpose(R)), axis=0)``; the per-entry weights a are computed by
  :mod:`bil.compiler.passes.separable`) → Σᵢ aᵢ|wᵢ| (soft-thresholding);
* group lasso:  ``c * group_l1(w, M, weights)``, ``c * norm(w)``, ``sum(c * norm(reshape(w, r, m),
  axis=k))`` (the rows or columns as groups) → Σ_g b_g‖w_g‖ (block soft-thresholding),

where the factors c, a, b depend only on hypers and data and are ≥ 0, and the term
is *added* to the objective.  Several l1 terms on one variable add up; an l1 and a
group term on one variable (sparse group lasso) compose.  Any other ``abs``/``l1``/
``group_l1`` of the lower variables (``abs(A @ w)``, ``l1(w)^2`` is smooth and left
alone) is an error at the call: it is non-smooth and has no proximal operator here.

The split is ``state.structure["nonsmooth"]`` (a :class:`NonsmoothSplit`); the lower
solver becomes ``fista`` when the spec names none, and a solver that cannot take a
proximal step (lbfgs, newton_cg, ...) is an error at its option.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import jax
import numpy as np

from bil.core import ir
from bil.core.errors import BilError
from bil.compiler.evaluate import Evaluator
from bil.compiler.passes.separable import WeightPusher, product, times
from bil.core.source import Span
from bil.compiler.state import CompileState
from bil.stdlib.methods import PROX_SOLVERS, make_method

#: calls whose kink at 0 makes a term non-smooth when their argument involves a lower variable
KINKED = ("abs", "l1", "group_l1")

_SMOOTH_HINT = ("exact l1 needs a lower variable times factors of hypers and data (`lam * l1(w)`, `l1(c * w)`, "
                "`sum(c * abs(w))`, `sum(c * l1(reshape(w, 5, 2), axis=1))`, `group_l1(w, M, weights)`), added "
                "to the objective; otherwise use a smooth "
                "approximation: `smooth_abs(A @ w, 1e-3)` or `huber(A @ w, 1e-3)`")


@dataclass(frozen=True)
class Penalty:
    """The non-smooth part on one lower variable: Σᵢ l1ᵢ|wᵢ| + Σ_g group_weight_g ‖w_g‖.

    ``l1``: the (summed) l1 weights, broadcast to the variable's shape, or None.
    ``group_weight``: the group weights (scalar or [G]), or None; ``groups``: the 0/1
    matrix [n, G] of ``group_l1``, or None for ``norm(w)`` (the whole variable is one group).
    """

    var: str
    l1: Optional[ir.Expr] = None
    group_weight: Optional[ir.Expr] = None
    groups: Optional[ir.Expr] = None
    span: Optional[Span] = None

    def __str__(self) -> str:
        parts = []
        if self.l1 is not None:
            parts.append(f"l1({self.var}) weighted by {ir.show(self.l1)}")
        if self.group_weight is not None:
            what = f"group_l1({self.var}, {ir.show(self.groups)})" if self.groups is not None else f"norm({self.var})"
            parts.append(f"{what} weighted by {ir.show(self.group_weight)}")
        return " + ".join(parts)


@dataclass(frozen=True)
class NonsmoothSplit:
    """g = smooth + Σ penalties; ``switched``: the solver was changed to fista for them."""

    smooth: ir.Expr
    penalties: tuple[Penalty, ...]
    switched: bool = False

    def __str__(self) -> str:
        return "; ".join(str(p) for p in self.penalties)


# ------------------------------------------------------------------ tree shapes
def _terms(e: ir.Expr) -> list[tuple[ir.Expr, int]]:
    """The additive terms of ``e`` with their signs (iterative: long sums are left-deep)."""
    out, stack = [], [(e, 1)]
    while stack:
        t, s = stack.pop()
        if isinstance(t, ir.Binary) and t.op in "+-":
            stack.append((t.right, s if t.op == "+" else -s))
            stack.append((t.left, s))
        elif isinstance(t, ir.Unary) and t.op == "-":
            stack.append((t.operand, -s))
        else:
            out.append((t, s))
    return out


def _factors(e: ir.Expr) -> list[tuple[ir.Expr, int]]:
    """The factors of a product/quotient chain with exponents ±1 (a unary minus is a factor -1)."""
    if isinstance(e, ir.Binary) and e.op in ("*", "/"):
        right = _factors(e.right)
        return _factors(e.left) + (right if e.op == "*" else [(f, -p) for f, p in right])
    if isinstance(e, ir.Unary) and e.op == "-":
        return [(ir.Num(e.span, -1), 1)] + _factors(e.operand)
    return [(e, 1)]


def _calls_outside_powers(e: ir.Expr, keep):
    """The calls ``t`` in ``e`` with ``keep(t)``, outside powers (``l1(w)^2`` is smooth)."""
    stack = [e]
    while stack:
        t = stack.pop()
        if isinstance(t, ir.Binary) and t.op == "^":
            continue
        if isinstance(t, ir.Call) and keep(t):
            yield t
        stack.extend(ir.children(t))


def _axis_norms(e: ir.Expr, lower: set[str]):
    """``norm(..., axis=k)`` calls of a lower variable outside powers: norms of groups of it (non-smooth)."""
    return _calls_outside_powers(
        e, lambda t: t.func == "norm" and bool(t.kwargs) and bool(t.args) and _of_variable(t.args[0], lower))


def _of_variable(e: ir.Expr, lower: set[str]) -> bool:
    """``e`` is a lower variable, reshaped, transposed or times hypers and data (``norm(A @ w)`` is not)."""
    if isinstance(e, ir.Name):
        return e.id in lower
    if isinstance(e, ir.Call) and e.func in ("reshape", "transpose") and e.args:
        return _of_variable(e.args[0], lower)
    if isinstance(e, ir.Binary) and e.op in "*/":
        sides = [x for x in (e.left, e.right) if ir.free_names(x) & lower]
        return len(sides) == 1 and (sides[0] is e.left or e.op == "*") and _of_variable(sides[0], lower)
    return False


def _kinks(e: ir.Expr, lower: set[str]):
    """Calls in KINKED whose arguments involve a lower variable, outside powers (``l1(w)^2`` is smooth)."""
    return _calls_outside_powers(e, lambda t: t.func in KINKED and bool(ir.free_names(t) & lower))


class _Matcher:
    """Recognises one non-smooth term (see the module docstring)."""

    def __init__(self, st: CompileState):
        self.st = st
        self.lower = set(st.lower_vars)
        self.pusher = WeightPusher(st, lambda e: self.split(_factors(e)), lambda e, call: self.not_a_variable(call),
                                   self.unsupported)

    def is_lower(self, e) -> bool:
        return bool(ir.free_names(e) & self.lower)

    def split(self, factors):
        """(factors involving lower variables, the others)."""
        return ([fp for fp in factors if self.is_lower(fp[0])], [fp for fp in factors if not self.is_lower(fp[0])])

    @staticmethod
    def not_a_variable(call: ir.Call) -> BilError:
        """The error for ``abs``/``l1`` of something that is not a lower variable times factors."""
        return BilError(f"`{call.func}({ir.show(call.args[0])})` is non-smooth, and its argument is not a lower "
                        "variable times factors of hypers and data (possibly reshaped or transposed), so bil has "
                        "no proximal operator for it", call.span, _SMOOTH_HINT)

    @staticmethod
    def unsupported(kink: ir.Call) -> BilError:
        return BilError(f"`{kink.func}(...)` of a lower variable appears in a form bil cannot split off as a "
                        "separable non-smooth term", kink.span, _SMOOTH_HINT)

    def term(self, t: ir.Expr, sign: int, kink: ir.Call) -> tuple[str, str, ir.Expr, Optional[ir.Expr], list]:
        """(var, kind, weight, groups, weights that must be ≥ 0) of one non-smooth term."""
        low, rest = self.split(_factors(t))
        if len(low) != 1 or low[0][1] != 1:
            raise BilError(f"`{kink.func}(...)` of a lower variable must be added to the objective, multiplied "
                           "only by factors of hypers and data", kink.span, _SMOOTH_HINT)
        atom = low[0][0]
        outer = product(rest, t.span)
        # `- lam * l1(w)` parses as (-lam) * l1(w): a literal -1 factor subtracts the term too
        if sign * (-1) ** sum(isinstance(f, ir.Num) and f.value == -1 for f, _ in rest) < 0:
            raise BilError(f"`{kink.func}(...)` of a lower variable is subtracted from the objective", kink.span,
                           "a subtracted l1 or group penalty is concave: the lower problem would have no convex "
                           "minimiser; add it with a weight >= 0")
        signed = [outer] if outer is not None else []
        if isinstance(atom, ir.Call) and atom.func == "abs" and self.st.lower_vars.get(
                getattr(atom.args[0], "id", None)) is not None and self.st.lower_vars[atom.args[0].id].shape != ():
            raise BilError("`abs(...)` of a vector lower variable is not a scalar term", atom.span,
                           "sum it: `sum(c * abs(w))`, or write `l1(w)`")
        if isinstance(kink, ir.Call) and kink.func == "norm":
            var, weight, groups = self.pusher.group_rows(atom, outer, signed, kink)
            return var, "group", weight, groups, signed
        if isinstance(atom, ir.Call) and atom.func in ("l1", "abs", "sum") or _is_dot(atom):
            var, weight = self.pusher.outside(atom, outer, signed, kink)
            return var, "l1", weight if weight is not None else ir.Num(t.span, 1.0), None, signed
        if isinstance(atom, ir.Call) and atom.func == "group_l1":
            args = {**dict(zip(("x", "groups", "weights"), atom.args)), **{k.name: k.value for k in atom.kwargs}}
            if isinstance(args.get("x"), ir.Name) and args["x"].id in self.lower and not any(
                    self.is_lower(args[k]) for k in ("groups", "weights") if k in args):
                weight = times(outer, args.get("weights"), t.span) or ir.Num(t.span, 1.0)
                return args["x"].id, "group", weight, args["groups"], signed + (
                    [args["weights"]] if "weights" in args else [])
        if isinstance(atom, ir.Call) and atom.func == "norm" and not atom.kwargs and len(atom.args) == 1 \
                and isinstance(atom.args[0], ir.Name) and atom.args[0].id in self.lower:
            return atom.args[0].id, "group", outer or ir.Num(t.span, 1.0), None, signed
        raise self.unsupported(kink)


def _is_dot(e: ir.Expr) -> bool:
    return (isinstance(e, ir.Binary) and e.op == "@") or (isinstance(e, ir.Call) and e.func == "dot")


def _value_at_start(st: CompileState, e: ir.Expr) -> np.ndarray:
    """``e`` (hypers and data only) at the initial hypers, one value per sample stacked if per sample."""
    free = ir.free_names(e)
    theta = {h: st.hypers[h].init for h in free & set(st.hypers)}
    shared = {n: st.data[n] for n in free & set(st.data) if n not in st.per_sample}
    b_names = {n: st.data[n] for n in free & st.per_sample}
    consts = {c.key: c.value for c in ir.walk(e) if isinstance(c, ir.Const)}
    b_consts = {k: v for k, v in consts.items() if st.consts[k].per_sample}

    def one(bn, bc):
        return Evaluator({**shared, **theta, **bn}, {**consts, **bc})(e)

    if b_names or b_consts:
        return np.asarray(jax.vmap(one)(b_names, b_consts))
    return np.asarray(one({}, {}))


def _check_weight(st: CompileState, w: ir.Expr, span) -> None:
    """A weight outside ``abs`` must stay ≥ 0: no hyper that may turn negative, and ≥ 0 at the start."""
    for h in sorted(ir.free_names(w) & set(st.hypers)):
        info = st.hypers[h]
        if info.kind != "positive" and (info.bounds is None or info.bounds[0] < 0):
            raise BilError(f"the weight of a non-smooth term depends on `{h}`, which may become negative", span,
                           f"declare it `hyper {h} : positive` (or bounded in [lo, hi] with lo >= 0): a negative "
                           "weight on an l1 or group term makes the lower problem non-convex")
    if np.any(_value_at_start(st, w) < 0):
        raise BilError(f"the weight `{ir.show(w)}` of a non-smooth term is negative", span,
                       "l1 and group penalties need weights >= 0 (a subtracted penalty is not convex)")


def _choose_solver(st: CompileState, span) -> bool:
    """fista for a non-smooth objective unless the spec names a proximal solver; True if switched."""
    given = any(o.key == "solver" for o in st.lower.options)
    solver = st.options["lower"]["solver"]
    if given:
        if not isinstance(solver, PROX_SOLVERS):
            raise BilError(f"`{solver.name}` needs a smooth lower objective, but it has non-smooth terms",
                           solver.span, "use `solver: fista(...)` (accelerated proximal gradient) or "
                           "`gd(...)` (proximal gradient), or leave `solver:` out to get fista")
        return False
    st.options["lower"]["solver"] = make_method("solver", "fista")
    return True


@dataclass(frozen=True)
class SplitNonsmooth:
    name: str = "split-nonsmooth"

    def apply(self, st: CompileState) -> None:
        if st.is_train:
            return
        m = _Matcher(st)
        smooth, found = [], {}
        for t, sign in _terms(st.goal):
            kinks = list(_kinks(t, m.lower)) + list(_axis_norms(t, m.lower))
            atom_norm = any(isinstance(f, ir.Call) and f.func == "norm" and not f.kwargs and len(f.args) == 1
                            and isinstance(f.args[0], ir.Name) and f.args[0].id in m.lower
                            for f, _ in _factors(t))
            if not kinks and not atom_norm:
                smooth.append((t, sign))
                continue
            kink = kinks[0] if kinks else t
            var, kind, weight, groups, signed = m.term(t, sign, kink)
            for w in signed:
                _check_weight(st, w, t.span)
            found.setdefault(var, []).append((kind, weight, groups, t.span))
        if not found:
            return
        penalties = tuple(self._merge(st, var, terms) for var, terms in found.items())
        switched = _choose_solver(st, st.lower.span)
        st.structure["nonsmooth"] = NonsmoothSplit(self._sum(smooth, st.goal.span), penalties, switched)

    @staticmethod
    def _merge(st: CompileState, var: str, terms: list) -> Penalty:
        l1 = gw = groups = None
        span = terms[0][3]
        for kind, weight, grp, sp in terms:
            if kind == "l1":
                l1 = weight if l1 is None else ir.Binary(sp, "+", l1, weight)
                continue
            if gw is not None:
                raise BilError(f"a second group penalty on `{var}`", sp,
                               "bil's proximal operators take one group term per lower variable: merge them into "
                               "one `group_l1(w, M, weights)`")
            info = st.lower_vars[var]
            if info.bounds is not None:
                raise BilError(f"a group penalty on the bounded lower variable `{var}` has no simple proximal "
                               "operator", sp, "drop the bounds, or use an l1 penalty (which combines with bounds)")
            if grp is not None and len(info.shape) != 1:
                raise BilError(f"`group_l1` needs a 1-D lower variable; `{var}` has shape {info.shape}", sp)
            gw, groups = weight, grp
        if l1 is not None:
            shape = _value_at_start(st, l1).shape[1 if ir.free_names(l1) & st.per_sample else 0:]
            target = st.lower_vars[var].shape
            if np.broadcast_shapes(shape, target) != tuple(target):
                raise BilError(f"the l1 weights of `{var}` have shape {shape}, which does not broadcast to its "
                               f"shape {tuple(target)}", span, "give one weight per entry, or a scalar")
        return Penalty(var, l1, gw, groups, span)

    @staticmethod
    def _sum(terms: list[tuple[ir.Expr, int]], span) -> ir.Expr:
        """The smooth terms added back up, left-deep (0 when there are none)."""
        if not terms:
            return ir.Num(span, 0.0)
        first, s = terms[0]
        acc = first if s > 0 else ir.Unary(first.span, "-", first)
        for t, s in terms[1:]:
            acc = ir.Binary(t.span, "+" if s > 0 else "-", acc, t)
        return acc
