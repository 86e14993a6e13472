"""Limits on what compile-time evaluation may make, checked before anything is allocated.

The element limits (per array, per spec), the check of a result's inferred shape
(``jax.eval_shape``) before it is computed, and the check that arithmetic on finite
constants stays finite (``y / 0``, ``log(0)``): each violation a located :class:`BilError`.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax
import numpy as np

from bil.core import ir
from bil.core.errors import BilError
from bil.stdlib.limits import DEFAULT_MAX_ELEMENTS
from bil.stdlib.limits import max_elements as _file_limit

#: the most elements one array made at compile time (a data value, ``zeros(...)``, a
#: broadcast or a product of data, ``real[...]``) may have, and the most all data of one spec
#: may have together: a typo such as ``zeros(1e9, 1e9)`` or ``diag(zeros(100000))`` must be a
#: diagnostic before anything is allocated, not an allocation that kills the process.
#: ``bil.compile(max_elements=)`` / ``--max-elements`` set the first (see :func:`element_limits`).
MAX_ELEMENTS = DEFAULT_MAX_ELEMENTS
#: the most dimensions an array literal (``[[1, 2], [3, 4]]``) may have (NumPy's limit is 64)
MAX_LITERAL_NDIM = 32
MAX_SPEC_ELEMENTS = 2 * 10**9

_limits: contextvars.ContextVar[tuple[int, int]] = contextvars.ContextVar(
    "bil_element_limits", default=(MAX_ELEMENTS, MAX_SPEC_ELEMENTS))


def element_limits() -> tuple[int, int]:
    """``(per array, per spec)`` element limits of the compile in progress."""
    return _limits.get()


@contextlib.contextmanager
def limited(max_elements: int | None = None, max_spec_elements: int | None = None):
    """Set the element limits for the compiles inside the block (``None``: keep the current one)."""
    per_array, per_spec = _limits.get()
    token = _limits.set((per_array if max_elements is None else int(max_elements),
                         per_spec if max_spec_elements is None else int(max_spec_elements)))
    # load() checks files against the same per-array limit (bil/stdlib/files.py)
    file_token = None if max_elements is None else _file_limit.set(int(max_elements))
    try:
        yield
    finally:
        if file_token is not None:
            _file_limit.reset(file_token)
        _limits.reset(token)


_LIMIT_HINT = ("check the sizes (a typo such as `zeros(1e5, 1e5)`, or a broadcast of a column and a row); "
               "a larger limit is set with `bil.compile(..., max_elements=N)` or `--max-elements N`")


def check_size(dims, span, what: str) -> None:
    """Raise a :class:`BilError` when ``dims`` multiply to more than the per-array limit."""
    limit = element_limits()[0]
    total = 1
    for d in dims:
        total *= max(int(d), 0)
    if total > limit:
        raise BilError(f"{what} asks for {total:,} elements, more than the {limit:,} allowed", span, _LIMIT_HINT)


def check_result_size(shape, span, what: str) -> None:
    """:func:`check_size` for a result whose ``shape`` was inferred before computing it."""
    check_size(tuple(shape), span, what)


def _size_dims(pname: str, value) -> list[int]:
    """The dimensions a static size argument asks for (``size``/``n``: a square).  A whole float
    (``randn(1e10)``) counts like the integer; an infinite one as more than any limit."""
    flat = []
    for v in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(v, (tuple, list)):
            flat.extend(v)
        else:
            flat.append(v)
    dims = []
    for v in flat:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            return []
        if not np.isfinite(v):
            dims.append(2**63)
        elif float(v).is_integer():
            dims.append(int(v))
        else:
            return []
    return dims if pname == "shape" else dims * 2


def _is_array(v) -> bool:
    return isinstance(v, (np.ndarray, jax.Array)) and not isinstance(v, jax.core.Tracer)


def _has_arrays(bound) -> bool:
    """A call with an array argument: its result size is inferred exactly (:func:`check_inferred`),
    so its size arguments are not checked on their own (``onehot(y, n)`` is not n by n)."""
    return any(_is_array(v) for v in [*bound.args, *bound.kwargs.values()])


def check_inferred(fn, args, kwargs, span, what: str) -> None:
    """Before computing ``fn(*args, **kwargs)`` on constants, infer its result's shape with
    ``jax.eval_shape`` (nothing is allocated) and refuse one over the element limit.  A call
    without array arguments, or one that cannot be traced, is left to the call itself (its
    size arguments were checked by :func:`check_size`)."""
    args, kwargs = list(args), dict(kwargs)
    slots = [(args, i) for i, v in enumerate(args) if _is_array(v)]
    slots += [(kwargs, k) for k, v in kwargs.items() if _is_array(v)]
    if not slots:
        return

    def abstract(*arrays):
        for (box, key), x in zip(slots, arrays):
            box[key] = x
        return fn(*args, **kwargs)

    specs = [jax.ShapeDtypeStruct(np.shape(box[k]), box[k].dtype) for box, k in slots]
    try:
        out = jax.eval_shape(abstract, *specs)
    except Exception:  # noqa: BLE001 - the real call reports its own errors, located
        return
    for leaf in jax.tree_util.tree_leaves(out):
        if hasattr(leaf, "shape"):
            check_result_size(leaf.shape, span, f"the result of {what} (shape {tuple(leaf.shape)})")


def check_finite(out, inputs, e: ir.Expr, what: str) -> None:
    """A located error where arithmetic on finite constants gives Inf or NaN (``y / 0``,
    ``log(0)``, ``sqrt(-1)``, ``1e308 * 10``): caught at the operation, at compile time."""
    leaves = [x for x in jax.tree_util.tree_leaves(out) if _is_array(x) or isinstance(x, float)]
    bad = [x for x in leaves if np.issubdtype(np.asarray(x).dtype, np.inexact) and not np.all(np.isfinite(x))]
    if not bad:
        return
    for v in jax.tree_util.tree_leaves(list(inputs)):
        if (_is_array(v) or isinstance(v, float)) and np.issubdtype(np.asarray(v).dtype, np.inexact) \
                and not np.all(np.isfinite(v)):
            return  # already non-finite: reported where it came from
    arr = np.asarray(bad[0])
    what_bad = "NaN" if np.any(np.isnan(arr)) else "-Inf" if np.any(arr == -np.inf) else "Inf"
    div0 = isinstance(e, ir.Binary) and e.op == "/" and np.any(np.asarray(inputs[1]) == 0)
    msg = f"division by zero in {what}" if div0 else f"{what} gives {what_bad} on these constants"
    raise BilError(msg + f" ({int(np.sum(~np.isfinite(arr)))} of {arr.size} entries)", e.span,
                   "the operands are data (evaluated at compile time): guard the operation, e.g. `y / (d + 1e-12)`, "
                   "`log(x + 1e-12)`, `sqrt(maximum(x, 0))`, or clean the data")
