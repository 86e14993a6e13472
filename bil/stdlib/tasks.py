"""``tasks(...)``: synthetic linear-regression task batches for few-shot (``per sample``) problems.

A task family is a mean weight vector w̄ ~ N(0, I_dim) drawn from ``family``;
each task t draws w_t = w̄ + spread * N(0, I), inputs x ~ N(0, I) and targets
y = x·w_t + noise * N(0, 1), all from ``seed``.  Two calls with the same
``family`` and different ``seed`` give fresh tasks of the same distribution
(training and held-out tasks).  Bind the result ``per sample``: each task is
one sample.
"""

from __future__ import annotations

import numpy as np

from bil.stdlib.errors import StdlibError
from bil.stdlib.registry import register
from bil.stdlib.sources import _int


def _nonneg(value, arg):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value) or value < 0:
        raise StdlibError(f"tasks: {arg} must be a number >= 0, got {value!r}", arg=arg)
    return float(value)


@register("tasks", kind="source", static=("n", "dim", "shots", "queries", "spread", "noise", "family", "seed"))
def tasks(n, dim, shots=10, queries=20, spread=0.3, noise=0.1, family=0, seed=0):
    """n synthetic regression tasks as (X [n, shots, dim], y [n, shots], Xq [n, queries, dim], yq [n, queries]); y = X w_t + noise, w_t = w̄ + spread * N(0, I)."""
    n, dim = _int(n, "tasks", "n", lo=1), _int(dim, "tasks", "dim", lo=1)
    shots, queries = _int(shots, "tasks", "shots", lo=1), _int(queries, "tasks", "queries", lo=1)
    spread, noise = _nonneg(spread, "spread"), _nonneg(noise, "noise")
    if n * (shots + queries) * dim > 10**8:
        raise StdlibError(f"tasks: {n} tasks of {shots} + {queries} points in {dim} dimensions are more than "
                          "10^8 numbers", arg="n", hint="fewer tasks, points or dimensions")
    wbar = np.random.default_rng(_int(family, "tasks", "family")).standard_normal(dim)
    rng = np.random.default_rng(_int(seed, "tasks", "seed"))
    w = wbar + spread * rng.standard_normal((n, dim))
    X = rng.standard_normal((n, shots + queries, dim))
    y = np.einsum("tpd,td->tp", X, w) + noise * rng.standard_normal((n, shots + queries))
    return X[:, :shots], y[:, :shots], X[:, shots:], y[:, shots:]
