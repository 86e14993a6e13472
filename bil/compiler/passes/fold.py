"""Constant work done once at compile time.

:class:`EvaluateData` runs the ``data`` statements (data sources are read
here, never inside a solver).  :class:`HoistConstants` replaces every
non-trivial sub-expression of the lower and upper problems that depends on
data only with an :class:`ir.Const`, so it is computed once instead of in
every solver iteration (per sample when it uses ``per sample`` data).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import jax
import networkx as nx
import numpy as np

from bil.core import ir
from bil.core.errors import BilError, BilUsageError
from bil.compiler.evaluate import Evaluator
from bil.compiler.limits import element_limits
from bil.compiler.state import CompileState
from bil.stdlib import sources


def as_data_array(value, span, name: str) -> np.ndarray:
    """A data value as a NumPy array (numbers and arrays only)."""
    if isinstance(value, tuple):
        raise BilError(f"data `{name}` must be an array or a number, but the expression gives {len(value)} values",
                       span, f"bind each value to a name: `data {', '.join(f'{name}{i}' for i in range(1, len(value) + 1))} = ...`")
    if isinstance(value, (str, list)) and not isinstance(value, np.ndarray):
        if isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
            return np.asarray(value)
        raise BilError(f"data `{name}` must be an array or a number, not {type(value).__name__}", span)
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):
        raise BilError(f"data `{name}` must be an array or a number", span) from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise BilError(f"data `{name}` must be numeric", span)
    if np.issubdtype(arr.dtype, np.inexact) and not np.all(np.isfinite(arr)):
        # caught here, at its statement: downstream it became "the lower solve produced NaN" or a
        # "singular Hessian" at the lower block
        bad = np.argwhere(~np.isfinite(arr))
        where = f" at index {tuple(int(i) for i in bad[0])}" if arr.ndim else ""
        what = "NaN" if np.isnan(arr[tuple(bad[0])] if arr.ndim else arr) else "Inf"
        hint = ("a file with missing or non-numeric cells, or arithmetic such as log(0), sqrt(-1), 0^-1: clean "
                f"the data ({len(bad)} non-finite entr{'y' if len(bad) == 1 else 'ies'})")
        if span is None:
            raise BilUsageError(f"data `{name}` given in `data=` contains {what}{where}", None, hint)
        raise BilError(f"data `{name}` contains {what}{where}", span, hint)
    return arr


@dataclass(frozen=True)
class EvaluateData:
    name: str = "evaluate-data"

    def apply(self, st: CompileState) -> None:
        token = sources.base_dir.set(st.base_dir or Path("."))   # the pipeline sets it too
        try:
            total, limit = 0, element_limits()[1]
            for d in _in_dependency_order(st.data_stmts, set(st.data_override)):
                self._one(st, d)
                total += sum(st.data[n].size for n in d.names if n in st.data)
                if total > limit:
                    raise BilError(f"the data of this spec reaches {total:,} elements here, more than the "
                                   f"{limit:,} allowed in all", d.span,
                                   "use smaller data, or raise the limit with `bil.compile(..., "
                                   "max_spec_elements=N)`")
        finally:
            sources.base_dir.reset(token)
        declared = {n for d in st.data_stmts for n in d.names}
        for n, v in st.data_override.items():
            if n not in declared:  # a name given from Python only (see Collect)
                st.data[n] = as_data_array(v, None, n)
        for d in st.data_stmts:
            if d.sampled:
                _rows(st, d)
            if d.per_sample:
                for n, sp in zip(d.names, d.name_spans or (d.span,) * len(d.names)):
                    arr = st.data[n]
                    if arr.ndim == 0:
                        raise BilError(f"`{n}` is `per sample` but is a scalar", sp,
                                       "its leading axis must index samples")
                    if arr.shape[0] == 0:
                        raise BilError(f"`{n}` is `per sample` but has no samples (leading size 0)", sp,
                                       "give at least one sample, or drop `per sample`")
                    if st.n_samples is None:
                        st.n_samples = arr.shape[0]
                    elif arr.shape[0] != st.n_samples:
                        raise BilError(f"`{n}` has {arr.shape[0]} samples but earlier per-sample data has "
                                       f"{st.n_samples}", sp, "every per-sample name needs the same leading size")
                    st.per_sample.add(n)

    def _one(self, st: CompileState, d: ir.Data) -> None:
        names = d.names
        if all(n in st.data_override for n in names):
            for n in names:
                st.data[n] = as_data_array(st.data_override[n], d.span, n)
            return
        value = Evaluator(st.data)(d.expr)
        if len(names) == 1:
            values = [value]
        else:
            if not isinstance(value, (tuple, list)) or isinstance(value, np.ndarray):
                raise BilError(f"{len(names)} names are bound but the expression gives a single value",
                               d.expr.span, f"bind one name, e.g. `data {names[0]} = ...`")
            if len(value) != len(names):
                raise BilError(f"the expression gives {len(value)} values but {len(names)} names are bound",
                               d.expr.span, f"bind exactly {len(value)} names")
            values = list(value)
        for n, v in zip(names, values):
            st.data[n] = as_data_array(st.data_override.get(n, v), d.expr.span, n)


def _rows(st: CompileState, d: ir.Data) -> None:
    """Record the names of a ``sampled`` statement as one row group: all share their leading size N."""
    group = d.names[0]
    for n, sp in zip(d.names, d.name_spans or (d.span,) * len(d.names)):
        arr = st.data[n]
        if arr.ndim == 0 or arr.shape[0] == 0:
            raise BilError(f"`{n}` is `sampled` but {'is a scalar' if arr.ndim == 0 else 'has no rows'}", sp,
                           "its leading axis must index rows (samples) that the objectives average over")
        n_rows = st.row_counts.setdefault(group, arr.shape[0])
        if arr.shape[0] != n_rows:
            raise BilError(f"`{n}` has {arr.shape[0]} rows but `{group}` of the same `sampled` statement has "
                           f"{n_rows}", sp, "every name of one `sampled` statement needs the same leading size; "
                           "data with another row count goes in a statement of its own")
        st.sampled[n] = group


def _in_dependency_order(stmts: list, given: set) -> list:
    """The data statements in an order where every name is bound before it is used (the spec
    may name them in any order, like everything else), source order among independent ones;
    a cycle is an error at its first statement.  A statement whose names are all ``given``
    from Python is not evaluated, so it depends on nothing."""
    binder = {n: i for i, d in enumerate(stmts) for n in d.names}
    g = nx.DiGraph()
    g.add_nodes_from(range(len(stmts)))
    for i, d in enumerate(stmts):
        if all(n in given for n in d.names):
            continue
        for n in ir.free_names(d.expr):
            if n in binder:
                g.add_edge(binder[n], i)
    try:
        order = list(nx.lexicographical_topological_sort(g))
    except nx.NetworkXUnfeasible:
        cycle = sorted({u for u, _ in nx.find_cycle(g)})
        first = stmts[cycle[0]]
        if len(cycle) == 1:
            used = sorted(ir.free_names(first.expr) & set(first.names))
            msg = f"data `{used[0]}` is defined in terms of itself"
        else:
            names = sorted({n for i in cycle for n in stmts[i].names})
            msg = f"data {', '.join(f'`{n}`' for n in names)} depend on each other"
        raise BilError(msg, first.span, "data is evaluated once, before anything else: break the cycle by "
                       "giving one of them a value that does not use the others") from None
    return [stmts[i] for i in order]


def _trivial(e: ir.Expr) -> bool:
    return isinstance(e, (ir.Num, ir.Str, ir.Bool, ir.Name, ir.Const, ir.Slice)) or (
        isinstance(e, ir.Unary) and isinstance(e.operand, ir.Num)) or (  # `-1`
        isinstance(e, ir.ListExpr) and all(isinstance(i, (ir.Num, ir.Str, ir.Bool)) for i in e.items))


@dataclass(frozen=True)
class HoistConstants:
    name: str = "hoist-constants"

    def apply(self, st: CompileState) -> None:
        counter = itertools.count(len(st.consts))
        data_names = set(st.data)

        def hoist(e: ir.Expr) -> ir.Expr:
            if e is None:
                return None
            free = ir.free_names(e)
            if free <= data_names and not _trivial(e) and not isinstance(e, (ir.TupleExpr,)):
                return self._make_const(st, e, free, f"c{next(counter)}")
            if isinstance(e, ir.Slice):
                return e  # slice bounds stay static expressions, never arrays

            from bil.compiler.passes.inline import _map_children

            return _map_children(e, hoist)

        st.goal = hoist(st.goal)
        st.upper_expr = hoist(st.upper_expr)
        st.train_args = {k: hoist(v) for k, v in st.train_args.items()}
        for info in st.lower_vars.values():
            info.init = hoist(info.init)

    def _make_const(self, st: CompileState, e: ir.Expr, free: set[str], key: str) -> ir.Const:
        batched = sorted(free & st.per_sample)
        shared = {n: st.data[n] for n in free - set(batched)}
        if batched:
            def one(sample):
                return Evaluator({**shared, **sample})(e)

            value = jax.vmap(one)({n: st.data[n] for n in batched})
        else:
            value = Evaluator(shared)(e)
        if isinstance(value, (jax.Array,)):
            value = np.asarray(value)
        c = ir.Const(e.span, key=key, label=ir.show(e), value=value, per_sample=bool(batched))
        st.consts[key] = c
        return c
