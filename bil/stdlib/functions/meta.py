"""Compile-time functions of shapes and values (``kind="meta"``): ``shape``, ``rows``, ``ncols``, ``nclasses``.

They run during constant folding on concrete arrays (or on abstract ones, for
shapes) and return Python ints or tuples of ints.
"""

from __future__ import annotations

import numpy as np

from bil.stdlib.errors import StdlibError
from bil.stdlib.functions.common import _is_abstract
from bil.stdlib.registry import register


@register("shape", kind="meta")
def shape(x):
    """The shape of x as a tuple of ints."""
    return tuple(int(d) for d in (x.shape if hasattr(x, "shape") else np.shape(x)))


@register("rows", kind="meta")
def rows(x):
    """The size of the first axis of x (number of rows or samples)."""
    s = shape(x)
    if not s:
        raise StdlibError("rows: a scalar has no rows", arg=0)
    return s[0]


@register("ncols", kind="meta")
def ncols(x):
    """The size of the second axis of x (number of columns or features)."""
    s = shape(x)
    if len(s) < 2:
        raise StdlibError(
            f"ncols expects an array with at least 2 dimensions, got shape {s}",
            hint="for a 1-D array use rows(x) or shape(x)",
            arg=0,
        )
    return s[1]


@register("nclasses", kind="meta")
def nclasses(labels):
    """Number of classes, max(labels) + 1, of integer labels known at compile time."""
    if _is_abstract(labels):
        raise StdlibError(
            "nclasses needs labels known at compile time",
            hint="call it on data (e.g. the labels returned by dataset(...)), not on a variable",
            arg=0,
        )
    y = np.asarray(labels)
    if y.size == 0:
        raise StdlibError("nclasses: the labels are empty", arg=0)
    if not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)))):
        raise StdlibError(
            f"nclasses expects integer class labels, got dtype {y.dtype} with non-integer values",
            hint="class labels are 0..K-1",
            arg=0,
        )
    if y.min() < 0:
        raise StdlibError(f"nclasses: labels must be >= 0, found {y.min()}", hint="class labels are 0..K-1", arg=0)
    return int(y.max()) + 1
