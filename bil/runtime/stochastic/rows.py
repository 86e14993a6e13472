"""The minibatch objectives of a program with ``sampled`` data, as the runtime gets them.

:func:`bil.compiler.lower.lower` fills a :class:`Rows` from the compiler's finite-sum proof
(:mod:`bil.compiler.finite_sum`).  ``g(x, theta, d, idx)`` and ``f(x, theta, d, idx)`` are
the lower and upper objectives with every mean over the rows of a group replaced by the
mean over the rows ``idx[group]`` (an int array of B row indices, repeats allowed) and every
sum by ``N / B`` times the sum over them: unbiased estimates of g and f, exact (up to
roundoff) when ``idx[group]`` is every row once.  ``theta`` is in user coordinates, ``d`` is
the lowered data (``Lowered.data``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax.numpy as jnp

__all__ = ["Rows", "minibatch_fn"]


@dataclass(frozen=True)
class Rows:
    """Row groups and minibatch objectives (see the module docstring)."""

    row_counts: dict[str, int]        # group -> N
    sampled: dict[str, str]           # data name -> group
    lower_groups: tuple[str, ...]     # groups the lower objective averages over
    upper_groups: tuple[str, ...]
    g: Callable
    f: Callable


def minibatch_fn(evaluate: Callable, row_counts: dict, sampled: dict, row_hypers, dtype) -> Callable:
    """``fn(x, theta, d, idx, taken=None)``: ``evaluate(env)`` (an objective's minibatch form) on
    the rows ``idx[group]`` of the sampled data, with ``__scale_GROUP`` = N / B and the hypers
    indexed by row read at those rows.  ``taken`` (data name -> its rows ``idx`` already read,
    e.g. a slice of data permuted once) replaces the gather for the names it holds."""

    def fn(x, theta, d, idx, taken=None):
        taken = taken or {}
        names = {n: (taken[n] if n in taken else a[idx[sampled[n]]] if n in sampled and sampled[n] in idx else a)
                 for n, a in d["names"].items()}
        extra = {f"__scale_{gr}": jnp.asarray(row_counts[gr] / i.shape[0], dtype) for gr, i in idx.items()}
        extra.update({f"__row_{gr}_{h}": theta[h][idx[gr]] for gr, h in row_hypers})
        return jnp.asarray(evaluate({**names, **theta, **x, **extra}, d["consts"]), dtype)

    return fn
