"""Finite-sum analysis of objectives over ``sampled`` data (docs/LANGUAGE.md, "Sampled data").

A ``sampled`` data statement declares that the leading axis of its names is a row axis
the objectives are means over.  :class:`FiniteSum` proves that the lower and upper
objectives are ``c + Σ_k a_k · R_k``: ``c`` and ``a_k`` use no sampled data, and each
``R_k`` is a mean or a sum over the rows of one row group of a *row-wise* term (leading
axis the row axis; row i depends only on row i of the sampled data: element-wise
operations, ``X @ w``, broadcasting against other values, stdlib functions known to be
row-wise).  Anything else that touches sampled data is a located error.

It also writes each objective's *minibatch* form, the expression the stochastic oracles
evaluate on a batch of rows (:mod:`bil.runtime.stochastic`): every sum over rows is
scaled by ``N / B`` (a name ``__scale_GROUP`` bound at run time), a hyper that is indexed
by row (``weight * loss`` with ``weight`` of N entries) is read at the batch's rows
(``__row_GROUP_NAME``), and size functions of sampled data (``rows(X)``) become the
numbers they are on all rows.  Full-batch methods never see these forms.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import jax
import numpy as np

from bil.core import ir
from bil.core.errors import BilError
from bil.compiler.evaluate import Evaluator
from bil.compiler.passes.shapes import eval_abstract, sds
from bil.compiler.state import CompileState
from bil.stdlib import lookup

#: reductions that close a row-wise term over the row axis: name -> "mean" or "sum"
REDUCTIONS = {"mean": "mean", "sum": "sum", "sumsq": "sum", "l1": "sum", "huber": "sum", "mse": "mean",
              "logistic_loss": "mean", "cross_entropy": "mean"}
#: losses that return the mean over their rows (one number)
CLOSED_LOSSES = frozenset({"mse", "logistic_loss", "cross_entropy"})
#: functions that keep the row axis, applied element by element (with broadcasting)
ELEMENTWISE = frozenset({"exp", "log", "log1p", "sqrt", "abs", "square", "sign", "cos", "sin", "tanh", "sigmoid",
                         "softplus", "relu", "smooth_abs", "soft_threshold", "maximum", "minimum", "clip", "where"})
#: functions acting on the last axis only (row-wise when the row axis is not the last)
LAST_AXIS = frozenset({"softmax", "log_softmax", "onehot"})

_HINT = ("an objective over `sampled` data must be a constant plus means (or sums) over its rows of row-wise terms, "
         "e.g. `mean(loss(X @ w, y)) + lam * sumsq(w)`; a value that needs all rows at once goes in a `data` "
         "statement of its own (`data ybar = mean(y)`), which is not sampled")


@dataclass(frozen=True)
class _Kind:
    """What a subexpression is: ``const`` (no sampled data), ``row`` (row-wise over ``group``)
    or ``sum`` (a linear combination of closed reductions over ``groups``)."""

    tag: str
    group: Optional[str] = None
    groups: frozenset = frozenset()


CONST = _Kind("const")


@dataclass
class SumForm:
    """One objective's proof: the row groups its reductions run over, and its minibatch form."""

    groups: tuple[str, ...]
    minibatch: ir.Expr
    #: (group, hyper) pairs of hypers read at the batch's rows
    row_hypers: tuple[tuple[str, str], ...] = ()


@dataclass
class FiniteSumInfo:
    """What the analysis proved (``st.structure["finite_sum"]``)."""

    row_counts: dict[str, int]
    sampled: dict[str, str]          # data name -> group
    lower: SumForm
    upper: SumForm


class _Analysis:
    def __init__(self, st: CompileState):
        self.st = st
        #: abstract values of every name (data on all rows) for :meth:`shape`
        self.env = {**{n: sds(np.shape(a), np.asarray(a).dtype) for n, a in st.data.items()},
                    **{h.name: sds(h.shape) for h in st.hypers.values()},
                    **{v.name: sds(v.shape) for v in st.lower_vars.values()}}
        self.row_hypers: set[tuple[str, str]] = set()

    def shape(self, e: ir.Expr) -> tuple:
        """The shape of ``e`` on all rows."""
        return tuple(jax.tree.leaves(eval_abstract(e, self.env, concrete=self.st.data))[0].shape)

    def error(self, e: ir.Expr, what: str, hint: str = _HINT) -> BilError:
        return BilError(f"`{ir.show(e)}` {what}", e.span, hint)

    # ------------------------------------------------------------- dispatch
    def __call__(self, e: ir.Expr) -> tuple[_Kind, ir.Expr]:
        if isinstance(e, ir.Name):
            g = self.st.sampled.get(e.id)
            return (_Kind("row", g) if g else CONST), e
        if isinstance(e, (ir.Num, ir.Str, ir.Bool, ir.Const, ir.Slice)):
            return CONST, e
        if isinstance(e, ir.Unary):
            k, a = self(e.operand)
            return k, replace(e, operand=a)
        if isinstance(e, ir.Binary):
            return self.binary(e)
        if isinstance(e, ir.Call):
            return self.call(e)
        if isinstance(e, ir.Index):
            return self.index(e)
        kids = [self(c) for c in ir.children(e)]
        if any(k.tag != "const" for k, _ in kids):
            raise self.error(e, "mixes rows of `sampled` data in a tuple or list")
        return CONST, e

    # ------------------------------------------------------------ operators
    def binary(self, e: ir.Binary) -> tuple[_Kind, ir.Expr]:
        (ka, a), (kb, b) = self(e.left), self(e.right)
        out = replace(e, left=a, right=b)
        if ka.tag == kb.tag == "const":
            return CONST, out
        if "sum" in (ka.tag, kb.tag):
            return self.combine(e, out, ka, kb)
        if e.op == "@":
            if ka.tag == "row" and kb.tag == "const" and len(self.shape(e.left)) >= 2:
                return ka, out
            raise self.error(e, "contracts or mixes the rows of `sampled` data",
                             "`X @ w` with the sampled `X` on the left keeps one result per row; write a sum over "
                             "rows as `sum(...)` or `mean(...)`")
        return self.broadcast(e, [(ka, e.left, a), (kb, e.right, b)], lambda xs: replace(e, left=xs[0], right=xs[1]))

    def combine(self, e: ir.Binary, out: ir.Expr, ka: _Kind, kb: _Kind) -> tuple[_Kind, ir.Expr]:
        """Linear combinations of closed reductions: ``R ± R``, ``R ± c``, ``c · R``, ``R · c``, ``R / c``."""
        tags = (ka.tag, kb.tag)
        if "row" in tags:
            raise self.error(e, "uses a mean (or sum) over rows inside a row-wise term: a minibatch estimate of "
                                "it would be biased")
        linear = (e.op in "+-" and "row" not in tags) or (e.op == "*" and "const" in tags) or (
            e.op == "/" and kb.tag == "const")
        if not linear:
            raise self.error(e, "is not linear in a mean (or sum) over rows of `sampled` data: a minibatch "
                                "estimate of it would be biased")
        return _Kind("sum", groups=ka.groups | kb.groups), out

    def broadcast(self, e: ir.Expr, parts, rebuild) -> tuple[_Kind, ir.Expr]:
        """Element-wise operands: row-wise ones of one group, the others broadcast over the rows."""
        groups = {k.group for k, _, _ in parts if k.tag == "row"}
        if any(k.tag == "sum" for k, _, _ in parts) and not groups:
            raise self.error(e, "is a nonlinear function of a mean (or sum) over rows of `sampled` data: a "
                                "minibatch estimate of it would be biased")
        if any(k.tag == "sum" for k, _, _ in parts):
            raise self.error(e, "uses a mean (or sum) over rows inside a row-wise term: a minibatch estimate of "
                                "it would be biased")
        if len(groups) > 1:
            raise self.error(e, f"combines rows of different `sampled` statements ({', '.join(sorted(groups))})",
                             "rows of different statements are not paired: bind data whose rows belong together "
                             "in one `sampled` statement")
        (group,) = groups
        rank = max(len(self.shape(orig)) for k, orig, _ in parts if k.tag == "row")
        new = []
        for k, orig, a in parts:
            if k.tag == "const":
                a = self.against_rows(e, orig, a, group, rank)
            new.append(a)
        return _Kind("row", group), rebuild(new)

    def against_rows(self, e, orig: ir.Expr, a: ir.Expr, group: str, rank: int) -> ir.Expr:
        """A value without rows broadcast against row-wise ones: fine unless its leading axis
        meets the row axis; a hyper of N entries there is read at the batch's rows."""
        shape = self.shape(orig)
        if len(shape) < rank or shape[0] == 1:
            return a
        n = self.st.row_counts[group]
        if len(shape) == rank and shape[0] == n and isinstance(orig, ir.Name) and orig.id in self.st.hypers:
            self.row_hypers.add((group, orig.id))
            return ir.Name(orig.span, f"__row_{group}_{orig.id}")
        raise self.error(orig, f"(shape {list(shape)}) meets the row axis of `sampled` data in `{ir.show(e)}`",
                         "only a hyper with one entry per row (a name of shape [N, ...]) may be paired with rows; "
                         "other values broadcast over trailing axes")

    def index(self, e: ir.Index) -> tuple[_Kind, ir.Expr]:
        k, base = self(e.base)
        idx = [self(i) for i in e.indices]
        out = replace(e, base=base, indices=tuple(i for _, i in idx))
        if k.tag == "const" and len(idx) == 1 and idx[0][0].tag == "row":
            return idx[0][0], out        # `c[y]`: a value looked up by each row's label
        if any(ki.tag != "const" for ki, _ in idx):
            raise self.error(e, "indexes with `sampled` data", "a value may be looked up by one sampled index "
                                                               "(`c[y]`); anything else mixes rows")
        if k.tag == "const":
            return CONST, out
        first = e.indices[0] if e.indices else None
        if k.tag == "row" and isinstance(first, ir.Slice) and first.lo is first.hi is first.step is None:
            return k, out
        raise self.error(e, "selects rows of `sampled` data", "keep every row (`X[:, j]`); a subset of rows goes in "
                                                               "a `data` statement of its own")

    # ---------------------------------------------------------------- calls
    def call(self, e: ir.Call) -> tuple[_Kind, ir.Expr]:
        fn = lookup(e.func)
        touches = bool(ir.free_names(e) & self.st.sampled.keys())
        if fn is not None and fn.kind == "meta":
            return CONST, (self.size_value(e) if touches else e)
        args = [(self(a), a) for a in e.args]
        kws = [(self(k.value), k) for k in e.kwargs]
        kinds = [k for (k, _), _ in args] + [k for (k, _), _ in kws]

        def rebuild(new):
            return replace(e, args=tuple(new[:len(args)]),
                           kwargs=tuple(replace(k, value=v) for (_, k), v in zip(kws, new[len(args):])))

        if all(k.tag == "const" for k in kinds):
            return CONST, rebuild([a for (_, a), _ in args] + [a for (_, a), _ in kws])
        parts = [(k, orig, a) for ((k, a), orig) in args] + [(k, kw.value, a) for ((k, a), kw) in kws]
        if (e.func in ("mean", "sum") and len(parts) == 1 and parts[0][0].tag == "sum"
                and self.shape(e.args[0]) == ()):   # `mean(logistic_loss(...))`: the mean of one number is it
            return parts[0][0], rebuild([parts[0][2]])
        if e.func in REDUCTIONS and self.reduces_rows(e):
            closed = (_closed_loss(e.args[0]) if any(k.tag == "sum" for k, _, _ in parts)
                      and self.shape(e.args[0]) != () else None)
            if closed is not None:
                raise self.error(e, f"reduces `{ir.show(closed)}`, which is already a mean over the rows (one "
                                    "number), after combining it with an array",
                                 "for one loss per row write it out, e.g. `-sum(log_softmax(X @ W) * onehot(y, "
                                 "nclasses(y)), axis=1)` for cross-entropy, `(X @ w - y)^2` for squared error, "
                                 "`softplus(-s * (X @ w))` for the logistic loss with labels s = ±1; then "
                                 "`mean(c * losses)` weights the rows")
            kind, new = self.broadcast(e, parts, rebuild)
            if REDUCTIONS[e.func] == "sum":
                new = ir.Binary(e.span, "*", ir.Name(e.span, f"__scale_{kind.group}"), new)
            return _Kind("sum", groups=frozenset({kind.group})), new
        if e.func in ELEMENTWISE or (e.func in LAST_AXIS and self.last_axis_rowwise(e)):
            return self.broadcast(e, parts, rebuild)
        if e.func in REDUCTIONS and parts[0][0].tag == "row":   # over an inner axis: still one value per row
            return self.broadcast(e, parts, rebuild)
        raise self.error(e, f"applies `{e.func}` to `sampled` data, which is not known to act row by row",
                         _HINT if e.func not in ("max", "min", "logsumexp", "norm") else
                         f"`{e.func}` over rows is not a mean or a sum: " + _HINT)

    def reduces_rows(self, e: ir.Call) -> bool:
        """True for a reduction over all axes, or over axis 0 of a vector (one scalar over all rows)."""
        axis = {k.name: k.value for k in e.kwargs}.get("axis")
        if axis is None or e.func not in ("mean", "sum", "sumsq", "l1"):
            return True
        ax = Evaluator(self.st.data)(axis)
        rank = len(self.shape(e.args[0]))
        if ax in (0, -rank) and rank == 1:
            return True
        if ax in (0, -rank):
            raise self.error(e, "reduces over the row axis but keeps other axes: a function of it would be a "
                                "biased minibatch estimate", "reduce over all axes (`sum(r)`), or over the "
                                                             "other axes first (`sum(r, axis=1)`)")
        return False

    def last_axis_rowwise(self, e: ir.Call) -> bool:
        if e.func == "onehot":
            return True
        axis = {k.name: k.value for k in e.kwargs}.get("axis")
        ax = -1 if axis is None else Evaluator(self.st.data)(axis)
        rank = len(self.shape(e.args[0]))
        return rank >= 2 and ax not in (0, -rank)

    def size_value(self, e: ir.Call) -> ir.Expr:
        """A size function of sampled data as the number it is on all rows (a batch has fewer)."""
        v = Evaluator(self.st.data)(e)
        if isinstance(v, tuple):
            return ir.TupleExpr(e.span, tuple(ir.Num(e.span, int(i)) for i in v))
        return ir.Num(e.span, v)


def _closed_loss(e: ir.Expr):
    """A loss call inside ``e`` that returns the mean over its rows (``cross_entropy(...)``), or None."""
    if isinstance(e, ir.Call) and e.func in CLOSED_LOSSES:
        return e
    for c in ir.children(e):
        found = _closed_loss(c)
        if found is not None:
            return found
    return None


def analyse(st: CompileState, e: ir.Expr, what: str) -> SumForm:
    """The proof for one objective ``e`` (its minibatch form), or a located error."""
    a = _Analysis(st)
    kind, new = a(e)
    if kind.tag == "row":
        raise BilError(f"{what} `{ir.show(e)}` keeps one value per row of `sampled` data", e.span, _HINT)
    return SumForm(tuple(sorted(kind.groups)), new, tuple(sorted(a.row_hypers)))


@dataclass(frozen=True)
class FiniteSumPass:
    """Prove the finite-sum form of the objectives of a spec with ``sampled`` data."""

    name: str = "finite-sum"

    def apply(self, st: CompileState) -> None:
        outer = st.options["solve"]["outer"]
        if getattr(outer, "stochastic", False):
            _check_stochastic(st, outer)
        if not st.sampled:
            return
        if st.per_sample:
            d = next(d for d in st.data_stmts if d.sampled)
            raise BilError("`sampled` data cannot be combined with `per sample` data", d.span,
                           "a `per sample` problem solves one lower problem per sample; declare the rows of one "
                           "problem `sampled`, or split the spec")
        lower = upper = None
        with st.diag.guard():
            lower = analyse(st, st.goal, "the lower objective")
        with st.diag.guard():
            upper = analyse(st, st.upper_expr, "the upper objective")
        if lower is not None and upper is not None:
            st.structure["finite_sum"] = FiniteSumInfo(dict(st.row_counts), dict(st.sampled), lower, upper)


def _check_stochastic(st: CompileState, outer) -> None:
    """A stochastic outer method needs `sampled` data and a smooth, unbounded lower objective."""
    span = outer.span or st.solve.span
    if not st.sampled:
        raise BilError(f"`{outer.name}` draws minibatches of rows, but no data is `sampled`", span,
                       "declare the rows the objectives average over, e.g. `data X, y = ... sampled`, and write "
                       "the lower objective as a mean over them")
    if st.is_train:
        raise BilError(f"`{outer.name}` needs a lower objective to minimise, not a `train` procedure", span,
                       "write the lower problem as `minimize ...`")
    if any(v.bounds is not None for v in st.lower_vars.values()):
        raise BilError(f"`{outer.name}` takes plain gradient steps on the lower variables, which are bounded here",
                       span, "drop the lower variables' bounds, or use a full-batch method (`maid`)")


__all__ = ["FiniteSumPass", "FiniteSumInfo", "SumForm", "analyse", "REDUCTIONS", "ELEMENTWISE"]
