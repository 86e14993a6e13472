"""Per-entry weights of a separable l1 term written through axes, reshapes and transposes.

A term such as ``sum(c * l1(reshape(d * w, 5, 2), axis=1))`` is Σᵢ aᵢ|wᵢ| for one lower
variable w.  :class:`WeightPusher` finds a (an IR expression that broadcasts to w's shape)
by pushing the outer weight C down the layers, using the static shapes the compiler knows:

* outside ``abs``: a factor d of hypers and data multiplies C (d must be ≥ 0: the caller
  checks the factors returned in ``signed``); ``sum``/``l1`` over ``axis=k`` spreads C over
  the summed axis, C → reshape(C · ones(reduced), keepdims shape); ``c @ L`` and
  ``dot(c, L)`` of 1-D arrays are ``sum(c * L)``;
* inside ``abs``: a factor d multiplies C by |d|; ``reshape(B, …)`` reshapes C (full size)
  back to B's shape; ``transpose(B)`` transposes it.

Anything else (``abs(A @ w)``, a weight that would enlarge the array it multiplies) is a
located error: it is not a separable sum of |wᵢ|.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from bil.core import ir
from bil.core.errors import BilError
from bil.compiler.evaluate import Evaluator
from bil.compiler.passes.shapes import abstract_data, eval_abstract, one_sample, sds
from bil.compiler.state import CompileState

#: reductions whose ``axis=``/``keepdims=`` keywords the pusher understands
_REDUCE_KW = {"axis", "keepdims"}


def _nums(span, dims) -> tuple[ir.Expr, ...]:
    return tuple(ir.Num(span, int(d)) for d in dims)


def _call(span, func: str, *args: ir.Expr) -> ir.Call:
    return ir.Call(span, func, tuple(args), ())


def full(w: ir.Expr, shape: tuple, span) -> ir.Expr:
    """``w`` broadcast to ``shape`` (``w * ones(shape)``)."""
    return ir.Binary(span, "*", w, _call(span, "ones", *_nums(span, shape))) if shape else w


class WeightPusher:
    """Pushes a weight down a separable l1 term to its lower variable (see the module docstring).

    ``split(e)`` gives (factors involving lower variables, the others) of a product; ``error(call)``
    the located error for an argument of ``abs``/``l1`` that is not a lower variable times factors.
    """

    def __init__(self, st: CompileState, split: Callable, error: Callable, unsupported: Callable):
        self.st, self.split, self.error, self.unsupported = st, split, error, unsupported
        self.lower = set(st.lower_vars)
        self.env = {**abstract_data(st), **{h: sds(i.shape) for h, i in st.hypers.items()},
                    **{v: sds(i.shape) for v, i in st.lower_vars.items()}}
        self.sample = one_sample(st)

    def shape(self, e: ir.Expr) -> tuple:
        consts = {c.key: (c.value[0] if c.per_sample else c.value) for c in ir.walk(e) if isinstance(c, ir.Const)}
        return tuple(eval_abstract(e, self.env, consts, concrete=self.sample).shape)

    def is_lower(self, e: ir.Expr) -> bool:
        return bool(ir.free_names(e) & self.lower)

    def _peel(self, e: ir.Expr, c: Optional[ir.Expr], signed: list, kink: ir.Call):
        """(the one factor of ``e`` holding a lower variable, ``c`` times the other factors); the
        other factors go to ``signed`` (they must stay >= 0)."""
        low, rest = self.split(e)
        if len(low) != 1 or low[0][1] != 1:
            raise self.unsupported(kink)
        atom = low[0][0]
        if rest:
            if self.shape(atom) != self.shape(e):
                raise self._enlarged(rest, atom, kink)
            signed.extend(f if p > 0 else ir.Binary(f.span, "/", ir.Num(f.span, 1), f) for f, p in rest)
            c = times(c, product(rest, e.span), e.span)
        return atom, c

    # ------------------------------------------------------------ outside abs
    def outside(self, e: ir.Expr, c: Optional[ir.Expr], signed: list, kink: ir.Call) -> tuple[str, Optional[ir.Expr]]:
        """(variable, weight) of Σ c ⊙ e, where e holds the kink; factors outside abs go to ``signed``."""
        atom, c = self._peel(e, c, signed, kink)
        if isinstance(atom, ir.Call) and atom.func == "abs" and len(atom.args) == 1 and not atom.kwargs:
            return self.inside(atom.args[0], c, atom)
        if isinstance(atom, ir.Call) and atom.func in ("l1", "sum") and len(atom.args) == 1 \
                and {k.name for k in atom.kwargs} <= _REDUCE_KW:
            arg = atom.args[0]
            c = self._spread(c, atom, self.shape(arg))
            if atom.func == "l1":
                return self.inside(arg, c, atom)
            return self.outside(arg, c, signed, kink)
        pair = self._dot_operands(atom)
        if pair is not None:
            vec, inner = pair
            if len(self.shape(vec)) == 1 and self.shape(vec) == self.shape(inner):
                signed.append(vec)
                return self.outside(inner, times(c, vec, atom.span), signed, kink)
        raise self.unsupported(kink)

    def _dot_operands(self, e: ir.Expr):
        """(the non-lower vector, the lower operand) of ``a @ b`` or ``dot(a, b)``, else None."""
        if isinstance(e, ir.Binary) and e.op == "@":
            a, b = e.left, e.right
        elif isinstance(e, ir.Call) and e.func == "dot" and len(e.args) == 2 and not e.kwargs:
            a, b = e.args
        else:
            return None
        if self.is_lower(a) == self.is_lower(b):
            return None
        return (b, a) if self.is_lower(a) else (a, b)

    def _spread(self, c: Optional[ir.Expr], red: ir.Call, shape: tuple) -> Optional[ir.Expr]:
        """The weight c of ``red(x, axis=k)`` (a sum) as a weight on x: c spread over the summed axes."""
        kw = {k.name: k.value for k in red.kwargs}
        axes = tuple(range(len(shape)))
        if "axis" in kw:
            a = _static(kw["axis"], red)
            axes = tuple(sorted({int(i) % len(shape) for i in np.atleast_1d(a)})) if shape else ()
        keep = bool(_static(kw["keepdims"], red)) if "keepdims" in kw else False
        if c is None:
            return None
        kept = tuple(1 if i in axes else d for i, d in enumerate(shape))
        reduced = kept if keep else tuple(d for i, d in enumerate(shape) if i not in axes)
        cs = self.shape(c)
        if np.broadcast_shapes(cs, reduced) != reduced:
            raise BilError(f"the weight `{ir.show(c)}` of shape {cs} does not match the shape {reduced} of "
                           f"`{ir.show(red)}`", red.span, "give one weight per entry of the reduced array, or a scalar")
        if keep or kept == reduced or cs == ():
            return c
        c = full(c, reduced, red.span)
        return _call(red.span, "reshape", c, *_nums(red.span, kept)) if kept else c

    # ------------------------------------------------------------- inside abs
    def inside(self, e: ir.Expr, c: Optional[ir.Expr], call: ir.Call) -> tuple[str, Optional[ir.Expr]]:
        """(variable, weight) of Σ c ⊙ |e|."""
        low, rest = self.split(e)
        if len(low) != 1 or low[0][1] != 1:
            raise self.error(e, call)
        atom = low[0][0]
        if rest:
            if not isinstance(atom, ir.Name) and self.shape(atom) != self.shape(e):
                raise self._enlarged(rest, atom, call)
            c = times(c, _call(e.span, "abs", product(rest, e.span)), e.span)
        if isinstance(atom, ir.Name):
            return atom.id, c
        if isinstance(atom, ir.Call) and atom.func in ("reshape", "transpose") and atom.args and not atom.kwargs \
                and self.is_lower(atom.args[0]) and not any(self.is_lower(a) for a in atom.args[1:]):
            inner = atom.args[0]
            if c is not None:
                c = full(c, self.shape(atom), atom.span)
                if atom.func == "transpose":
                    c = _call(atom.span, "transpose", c)
                else:
                    dims = self.shape(inner)
                    c = _call(atom.span, "reshape", c, *_nums(atom.span, dims)) if dims else _call(atom.span, "sum", c)
            return self.inside(inner, c, call)
        raise self.error(e, call)

    # ------------------------------------------------------------ row groups
    def group_rows(self, e: ir.Expr, c: Optional[ir.Expr], signed: list, kink: ir.Call):
        """(variable, group weights [G], groups [n, G]) of Σ c ⊙ norm(reshape(w, r, m), axis=k): the groups
        are the rows (k = 1) or the columns (k = 0) of the reshaped 1-D variable w."""
        atom, c = self._peel(e, c, signed, kink)
        if isinstance(atom, ir.Call) and atom.func == "sum" and len(atom.args) == 1 and not atom.kwargs:
            return self.group_rows(atom.args[0], c, signed, kink)
        pair = self._dot_operands(atom)
        if pair is not None and len(self.shape(pair[0])) == 1 and self.shape(pair[0]) == self.shape(pair[1]):
            signed.append(pair[0])
            return self.group_rows(pair[1], times(c, pair[0], atom.span), signed, kink)
        kw = {k.name: k.value for k in atom.kwargs} if isinstance(atom, ir.Call) else {}
        if not (isinstance(atom, ir.Call) and atom.func == "norm" and len(atom.args) == 1 and set(kw) == {"axis"}):
            raise self.unsupported(kink)
        r = atom.args[0]
        if not (isinstance(r, ir.Call) and r.func == "reshape" and isinstance(r.args[0], ir.Name)
                and r.args[0].id in self.lower and len(self.shape(r.args[0])) == 1 and len(self.shape(r)) == 2):
            raise BilError("`norm(..., axis=k)` of a lower variable is a group penalty only as the norms of the rows "
                           "or columns of `reshape(w, r, m)` of a 1-D lower variable w", atom.span,
                           "write `sum(c * norm(reshape(w, r, m), axis=1))`, or `group_l1(w, M, weights)` with a "
                           "0/1 group matrix M such as `onehot([0, 0, 1, 1], 2)`")
        k = int(_static(kw["axis"], atom))
        if k not in (-2, -1, 0, 1):
            raise BilError(f"axis {k} is out of range for a 2-D array", kw["axis"].span)
        rows, cols = self.shape(r)
        n_groups, sp = (cols, atom.span) if k % 2 == 0 else (rows, atom.span)
        # M[i, g] = 1 when entry i of w lies in row (axis=1) / column (axis=0) g of reshape(w, rows, cols)
        eye = _call(sp, "reshape", _call(sp, "eye", ir.Num(sp, n_groups)),
                    *_nums(sp, (1, cols, cols) if k % 2 == 0 else (rows, 1, rows)))
        spread = _call(sp, "ones", *_nums(sp, (rows, 1, 1) if k % 2 == 0 else (1, cols, 1)))
        groups = _call(sp, "reshape", ir.Binary(sp, "*", eye, spread), *_nums(sp, (rows * cols, n_groups)))
        if c is not None and np.broadcast_shapes(self.shape(c), (n_groups,)) != (n_groups,):
            raise BilError(f"the weight `{ir.show(c)}` of shape {self.shape(c)} does not match the {n_groups} groups "
                           f"of `{ir.show(atom)}`", atom.span, "give one weight per group, or a scalar")
        weight = full(c, (n_groups,), sp) if c is not None else full(ir.Num(sp, 1.0), (n_groups,), sp)
        return r.args[0].id, weight, groups

    def _enlarged(self, rest, atom, call) -> BilError:
        return BilError(f"the factor `{ir.show(product(rest, call.span))}` enlarges `{ir.show(atom)}` (shape "
                        f"{self.shape(atom)}) by broadcasting, so the term is not one weight per entry", call.span,
                        "give the weights the shape of what they multiply, or a scalar")


def _static(e: ir.Expr, call: ir.Call):
    try:
        return Evaluator({})(e)
    except BilError:
        raise BilError(f"`{call.func}`'s axis and keepdims must be constants here", e.span) from None


def product(factors, span) -> Optional[ir.Expr]:
    """The product of (factor, ±1) pairs (None when there are none)."""
    acc = None
    for f, p in factors:
        f = f if p > 0 else ir.Binary(f.span, "/", ir.Num(f.span, 1), f)
        acc = f if acc is None else ir.Binary(span, "*", acc, f)
    return acc


def times(a: Optional[ir.Expr], b: Optional[ir.Expr], span) -> Optional[ir.Expr]:
    """a * b, where None stands for 1."""
    if a is None or b is None:
        return b if a is None else a
    return ir.Binary(span, "*", a, b)
