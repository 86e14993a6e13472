"""One interpreter for IR expressions, used three ways.

* constant folding: names bound to concrete NumPy/JAX values, evaluated eagerly;
* shape inference: the same walk under ``jax.eval_shape`` (values are abstract);
* lowering: the same walk inside a jitted function (values are tracers).

Errors raised while evaluating a node (a JAX broadcasting error, a stdlib
``StdlibError``) are converted here into :class:`BilError` at that node's span,
so the user sees which sub-expression failed.
"""

from __future__ import annotations

import operator
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from bil.core import ir
from bil.core.errors import BilError
from bil.compiler.limits import (  # noqa: F401 - re-exported for the passes
    MAX_ELEMENTS, MAX_LITERAL_NDIM, _has_arrays, _size_dims, check_finite, check_inferred, check_size,
    element_limits, limited)
from bil.stdlib import lookup
from bil.stdlib.errors import StdlibError

_BINOPS: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "@": jnp.matmul,
}


def _power(a, b):
    # Integer literal exponents lower to integer_pow (exact, and fine at a=0);
    # jnp.power would go through log for float exponents.
    if isinstance(b, (int, np.integer)) and not isinstance(b, bool):
        return jax.lax.integer_pow(jnp.asarray(a), int(b)) if b >= 0 else 1.0 / jax.lax.integer_pow(jnp.asarray(a), -int(b))
    return jnp.power(a, b)


#: integer operators whose concrete results are checked against int64 (they wrap silently:
#: `10^19` gave -8446744073709551616, `2^62 * 4` gave 0)
_INT_CHECKED = {"+": operator.add, "-": operator.sub, "*": operator.mul, "^": operator.pow}
_INT_LIMIT = 2.0 ** 63            # int64 holds [-2^63, 2^63)


def _concrete_ints(a, b) -> bool:
    return all(is_concrete(v) and np.issubdtype(np.asarray(v).dtype, np.integer) for v in (a, b))


def _check_int_range(e, a, b) -> None:
    """A located error where integer arithmetic on constants leaves int64."""
    with np.errstate(all="ignore"):
        approx = _INT_CHECKED[e.op](np.asarray(a, np.float64), np.asarray(b, np.float64))
    if np.any((approx >= _INT_LIMIT) | (approx < -_INT_LIMIT)):
        raise BilError(f"integer overflow in `{e.op}`: the result does not fit in 64 bits", e.span,
                       "write a float for a number this large (`1e19`, `2.0^64`)")


def is_concrete(v: Any) -> bool:
    """True for Python values and concrete arrays (not tracers / abstract values)."""
    if isinstance(v, (list, tuple)):
        return all(is_concrete(x) for x in v)
    if isinstance(v, jax.core.Tracer) or isinstance(v, jax.ShapeDtypeStruct):
        return False
    return True


def to_static(v: Any) -> Any:
    """A concrete value as a plain Python value (for ``axis=``, sizes, names)."""
    if isinstance(v, (list, tuple)):
        return type(v)(to_static(x) for x in v)
    if isinstance(v, (np.ndarray, jax.Array)) and np.ndim(v) == 0:
        return np.asarray(v).item()
    if isinstance(v, (np.ndarray, jax.Array)):
        return tuple(np.asarray(v).tolist())
    if isinstance(v, np.generic):
        return v.item()
    return v


class Evaluator:
    """Evaluate expressions in an environment ``name -> value``."""

    def __init__(self, env: Mapping[str, Any], consts: Mapping[int, Any] | None = None,
                 concrete: Mapping[str, Any] | None = None):
        self.env = env
        #: values of hoisted ``ir.Const`` nodes by key (lowering passes them in
        #: as arguments instead of baking them into the jaxpr)
        self.consts = consts or {}
        #: concrete data for the arguments of meta functions (``nclasses(y)`` needs the
        #: labels' values) while ``env`` holds abstract ones (shape inference)
        self.concrete = concrete

    def __call__(self, e: ir.Expr) -> Any:
        method = getattr(self, "_" + type(e).__name__)
        return method(e)

    # ------------------------------------------------------------- leaves
    def _Num(self, e: ir.Num):
        return e.value

    def _Str(self, e: ir.Str):
        return e.value

    def _Bool(self, e: ir.Bool):
        return e.value

    def _Const(self, e: ir.Const):
        return self.consts.get(e.key, e.value)

    def _Name(self, e: ir.Name):
        try:
            return self.env[e.id]
        except KeyError:
            raise BilError(f"unknown name `{e.id}`", e.span) from None

    def _TupleExpr(self, e: ir.TupleExpr):
        return tuple(self(x) for x in e.items)

    def _ListExpr(self, e: ir.ListExpr):
        items = [self(x) for x in e.items]
        if not items or any(isinstance(x, str) for x in items):
            return items  # a list of names, e.g. denoising_pairs(["camera", "moon"])
        if any(np.ndim(x) >= MAX_LITERAL_NDIM for x in items if not isinstance(x, (str, list, tuple))):
            raise BilError(f"an array literal nested more than {MAX_LITERAL_NDIM} levels deep", e.span,
                           "arrays have at most 32 dimensions; check the brackets")
        with _at(e):
            if all(isinstance(x, (int, float)) for x in items):
                return np.asarray(items)  # a constant array literal stays concrete
            return jnp.stack([jnp.asarray(x) for x in items])

    # --------------------------------------------------------- operators
    def _Unary(self, e: ir.Unary):
        v = self(e.operand)
        with _at(e):
            return -_array_or_scalar(v, e.operand)

    def _Binary(self, e: ir.Binary):
        # a long sum `a + b + c + ...` parses left-deep: walk down its left spine with a loop,
        # so the Python stack stays flat whatever its length (300 terms under jax.jacfwd ran
        # out of recursion depth), then apply the operators bottom up
        spine = [e]
        while isinstance(spine[-1].left, ir.Binary):
            spine.append(spine[-1].left)
        acc = self(spine[-1].left)
        for node in reversed(spine):
            acc = self._apply(node, acc, self(node.right))
        return acc

    def _apply(self, e: ir.Binary, a, b):
        a = _array_or_scalar(a, e.left)
        b = _array_or_scalar(b, e.right)
        with _at(e, op=e.op):
            if e.op in _INT_CHECKED and _concrete_ints(a, b):
                _check_int_range(e, a, b)
            if e.op == "@" and (np.ndim(a) == 0 or np.ndim(b) == 0):
                raise BilError("`@` needs arrays of at least one dimension on both sides", e.span,
                               "use `*` to multiply by a scalar")
            op = _power if e.op == "^" else _BINOPS[e.op]
            if not (is_concrete(a) and is_concrete(b)):
                return op(a, b)
            check_inferred(op, (a, b), {}, e.span, f"`{e.op}`")
            with np.errstate(all="ignore"):
                out = op(a, b)
            check_finite(out, (a, b), e, f"`{e.op}`")
            return out

    def _Index(self, e: ir.Index):
        raw = self(e.base)
        if isinstance(raw, tuple) and len(e.indices) == 1 and not isinstance(e.indices[0], ir.Slice):
            # a tuple of sizes (shape(X)[1]) or of values: pick one entry
            i = self._index_part(e.indices[0])
            if not isinstance(i, int):
                raise BilError("a tuple is indexed by a constant integer", e.indices[0].span,
                               "e.g. `shape(X)[1]`")
            if not -len(raw) <= i < len(raw):
                raise BilError(f"index {i} is out of range for a tuple of {len(raw)} values", e.indices[0].span,
                               f"valid indices are 0 .. {len(raw) - 1}")
            return raw[i]
        base = _array_or_scalar(raw, e.base)
        idx = tuple(self._index_part(i) for i in e.indices)
        with _at(e):
            if np.ndim(base) < len([i for i in idx if i is not None]):
                raise BilError(f"too many indices: the value has {np.ndim(base)} dimension(s) "
                               f"but {len(idx)} were given", e.span,
                               f"give at most {np.ndim(base)} indices (`:` keeps a whole axis)")
            # JAX clamps out-of-range indices of traced arrays; report them instead.
            for axis, (i, part) in enumerate(zip(idx, e.indices)):
                size = np.shape(base)[axis]
                if isinstance(i, int) and not -size <= i < size:
                    raise BilError(f"index {i} is out of range for axis {axis} of size {size}", part.span,
                                   f"valid indices are 0 .. {size - 1} (or -{size} .. -1 from the end)")
            return base[idx if len(idx) > 1 else idx[0]]

    def _index_part(self, i: ir.Expr):
        if isinstance(i, ir.Slice):
            parts = []
            for p in (i.lo, i.hi, i.step):
                if p is None:
                    parts.append(None)
                    continue
                v = self(p)
                if not is_concrete(v):
                    raise BilError("slice bounds must be constants", p.span)
                parts.append(int(to_static(v)))
            return slice(*parts)
        v = self(i)
        if is_concrete(v) and np.ndim(v) == 0:
            s = to_static(v)
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not float(s).is_integer():
                raise BilError(f"an index must be an integer, got {s!r}", i.span,
                               "indices count from 0; `:` or `a:b` select ranges")
            return int(s)
        return v

    # ------------------------------------------------------------- calls
    def _Call(self, e: ir.Call):
        fn = lookup(e.func)
        if fn is None:
            raise BilError(f"unknown function `{e.func}`", e.name_span or e.span)
        ev = self
        if fn.kind == "meta" and self.concrete is not None and all(
                ir.free_names(a) <= self.concrete.keys() for a in [*e.args, *(k.value for k in e.kwargs)]):
            ev = Evaluator(self.concrete, self.consts)
        exprs = [*e.args, *(k.value for k in e.kwargs)]
        if ev is self and self.concrete is not None and fn.kind != "meta":
            # static parameters (sizes, seeds) read the data's values, as `real[H]` does: an argument
            # of data only is evaluated on them (the others stay abstract: data is not baked in)
            static = _static_positions(e, fn)
            const = Evaluator(self.concrete, self.consts)
            vals = [const(a) if i in static and ir.free_names(a) <= self.concrete.keys() else ev(a)
                    for i, a in enumerate(exprs)]
        else:
            vals = [ev(a) for a in exprs]
        args = vals[:len(e.args)]
        kwargs = {k.name: v for k, v in zip(e.kwargs, vals[len(e.args):])}
        try:
            bound = fn.bind(tuple(args), kwargs)
        except TypeError as err:
            raise BilError(f"{err} in call to `{e.func}`", e.span, f"signature: {fn.describe()}") from None
        # Static parameters must be compile-time constants, given as Python values.
        for pname in list(bound.arguments):
            if pname in fn.static or fn.kind in ("meta", "source"):
                val = bound.arguments[pname]
                if fn.kind != "meta" and not is_concrete(val):
                    at = next((exprs[i].span for i in _static_positions(e, fn, pname)
                               if not is_concrete(vals[i])), arg_span(e, fn, pname))
                    raise BilError(f"argument `{pname}` of `{e.func}` must be a constant (it may not depend on "
                                   "hypers or lower variables)", at,
                                   f"write a number or an expression of data here; signature: {fn.describe()}")
                if fn.kind != "meta":
                    bound.arguments[pname] = to_static(val)
                if pname in ("shape", "n", "size") and fn.kind != "meta" and not _has_arrays(bound):
                    check_size(_size_dims(pname, bound.arguments[pname]), arg_span(e, fn, pname), f"`{e.func}`")
        concrete = fn.kind == "array" and is_concrete([*bound.args, *bound.kwargs.values()])
        with _at(e, call=fn):
            if not concrete:
                return fn.impl(*bound.args, **bound.kwargs)
            check_inferred(fn.impl, bound.args, bound.kwargs, e.span, f"`{e.func}`")
            with np.errstate(all="ignore"):
                out = fn.impl(*bound.args, **bound.kwargs)
        check_finite(out, [*bound.args, *bound.kwargs.values()], e, f"`{e.func}`")
        return out


def _array_or_scalar(v: Any, e: ir.Expr):
    if isinstance(v, str):
        raise BilError("a string cannot be used in arithmetic", e.span,
                       "strings name things (datasets, images, files); use a number or an array here")
    if isinstance(v, list):
        raise BilError("a list of strings cannot be used in arithmetic", e.span,
                       "an array literal holds numbers only, e.g. `[1, 2.5, 3]`")
    if isinstance(v, tuple):
        raise BilError(f"a tuple of {len(v)} values cannot be used as an array", e.span,
                       "bind its parts to names with `data a, b = ...`")
    return v


def _positions(e: ir.Call, fn) -> dict[str, tuple[int, ...]]:
    """Parameter name -> positions, in ``[*e.args, *e.kwargs]``, of the arguments bound to it (a
    ``*shape`` parameter holds several); empty where the call does not bind."""
    try:
        bound = fn.bind(tuple(range(len(e.args))), {k.name: len(e.args) + j for j, k in enumerate(e.kwargs)})
    except TypeError:
        return {}
    return {name: tuple(i for i in (v if isinstance(v, tuple) else (v,)) if isinstance(i, int))
            for name, v in bound.arguments.items()}


def _static_positions(e: ir.Call, fn, pname: str | None = None) -> set[int]:
    """Positions of the arguments bound to ``fn``'s static parameters (or to ``pname`` only)."""
    return {i for name, pos in _positions(e, fn).items()
            if (name in fn.static or fn.kind == "source") and (pname is None or name == pname) for i in pos}


def arg_span(e: ir.Call, fn, pname: str | None):
    """The span of the argument named ``pname`` in the call ``e`` (by keyword or by position
    in ``fn``'s signature; the first of a ``*shape``); the call's own span when it is not given there."""
    pos = _positions(e, fn).get(pname) if pname is not None else None
    if not pos:
        return e.span
    return [*e.args, *(k.value for k in e.kwargs)][pos[0]].span


def reporting_errors(e: ir.Call, fn) -> "_at":
    """Context manager: a ``StdlibError`` raised for the call ``e`` to ``fn`` (by its implementation
    or its compile-time check) becomes a :class:`BilError` at the argument it names."""
    return _at(e, call=fn)


class _at:
    """Context manager: turn errors raised while evaluating node ``e`` into BilError."""

    def __init__(self, e: ir.Expr, op: str | None = None, call=None):
        self.e, self.op, self.call = e, op, call

    def __enter__(self):
        return self

    def __exit__(self, typ, err, tb):
        if err is None or isinstance(err, BilError):
            return False
        e = self.e
        if isinstance(err, StdlibError):
            span = e.span
            if isinstance(e, ir.Call) and err.arg is not None:
                span = arg_span(e, self.call, err.arg) if isinstance(err.arg, str) else (
                    e.args[err.arg].span if isinstance(err.arg, int) and err.arg < len(e.args) else e.span)
            raise BilError(err.message, span, err.hint or self._signature()) from None
        if isinstance(err, (TypeError, ValueError, IndexError, ZeroDivisionError)):
            msg = str(err).split("\n")[0]
            if self.op is not None and "shape" in msg.lower():
                hint = ("`@` is matrix multiplication: the inner dimensions must agree" if self.op == "@"
                        else "element-wise operators broadcast like NumPy: trailing dimensions must agree or be 1")
                raise BilError(f"shape mismatch in `{self.op}`: {msg}", e.span, hint) from None
            if isinstance(e, ir.Index) and "Indexer must have integer" in msg:
                raise BilError("an index must be an integer constant (or a slice)", e.span,
                               "indices cannot depend on hypers or lower variables; use data, e.g. `X[0]`, "
                               "`X[:, 1:3]`") from None
            what = f"`{self.call.name}`" if self.call is not None else "expression"
            raise BilError(f"error evaluating {what}: {msg}", e.span,
                           self._signature() or "check the operands' shapes and types") from None
        return False

    def _signature(self) -> str | None:
        """The called function's signature, as the hint of an error in its arguments."""
        return f"signature: {self.call.describe()}" if self.call is not None else None
