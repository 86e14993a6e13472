"""Lowering: a checked program becomes pure JAX functions.

For one sample (the whole problem when nothing is ``per sample``):

* ``g(x, theta, d)``  the lower objective (or training loss),
* ``f(x, theta, d)``  the upper objective,
* ``x_init(theta, d)`` the lower variables' initial values,
* ``opt_kwargs(theta, d)`` the training optimizer's arguments (train goals),

where ``x`` and ``theta`` are dicts name -> array (theta in *user*
coordinates) and ``d = {"names": data, "consts": hoisted constants}`` is
passed as an argument (never baked into a jaxpr) with the sample axis removed.
:class:`~bil.runtime.lowered.Lowered` holds them: the runtime solves that, knowing nothing of the spec.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from bil.core import ir
from bil.compiler.evaluate import Evaluator
from bil.compiler.state import CompileState
from bil.runtime.lowered import Lowered, Transform


def _expr_fn(e: ir.Expr) -> Callable:
    def fn(x, theta, d):
        return Evaluator({**d["names"], **theta, **x}, d["consts"])(e)

    return fn


def lower(st: CompileState) -> Lowered:
    """Lower a checked program (every pass has run) to JAX functions."""
    dtype = jnp.float32 if st.options["solve"]["precision"] == "float32" else jnp.float64

    def cast(a):
        if isinstance(a, jax.Array):
            return a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a
        # a host array: cast and copy on the host, then place it (jnp.asarray would compile a
        # program per data shape; device_put compiles nothing)
        a = np.array(a, dtype=dtype if np.issubdtype(np.asarray(a).dtype, np.floating) else None, copy=True)
        return jax.device_put(a)

    names = {n: cast(v) for n, v in st.data.items()}
    consts = {k: cast(c.value) for k, c in st.consts.items() if not isinstance(c.value, (int, float, tuple, str))}
    data = {"names": names, "consts": consts}
    axes = {"names": {n: (0 if n in st.per_sample else None) for n in names},
            "consts": {k: (0 if st.consts[k].per_sample else None) for k in consts}}

    bounds = None
    if any(v.bounds is not None for v in st.lower_vars.values()):
        lo = {n: jnp.full(v.shape, v.bounds[0] if v.bounds else -jnp.inf, dtype) for n, v in st.lower_vars.items()}
        hi = {n: jnp.full(v.shape, v.bounds[1] if v.bounds else jnp.inf, dtype) for n, v in st.lower_vars.items()}
        bounds = (lo, hi)

    inits = {n: _expr_fn(v.init) for n, v in st.lower_vars.items()}
    shapes = {n: v.shape for n, v in st.lower_vars.items()}

    def x_init(theta, d):
        return {n: jnp.broadcast_to(jnp.asarray(fn({}, theta, d), dtype), shapes[n]) for n, fn in inits.items()}

    g_raw, f_raw = _expr_fn(st.goal), _expr_fn(st.upper_expr)

    def g(x, theta, d):
        return jnp.asarray(g_raw(x, theta, d), dtype)

    def f(x, theta, d):
        return jnp.asarray(f_raw(x, theta, d), dtype)

    opt_kwargs = None
    if st.is_train:
        arg_fns = {k: _expr_fn(e) for k, e in st.train_args.items()}
        static = dict(st.train_optimizer.kwargs)

        def opt_kwargs(theta, d):
            out = {k: v for k, v in static.items() if k not in arg_fns}
            out.update({k: fn({}, theta, d) for k, fn in arg_fns.items()})
            return out

    theta0 = {n: jnp.asarray(h.init, dtype) for n, h in st.hypers.items()}
    g_smooth, nonsmooth = _split(st, dtype)
    return Lowered(options=st.options, transform=Transform({n: (h.transform, h.bounds) for n, h in st.hypers.items()}), dtype=dtype, data=data, data_axes=axes,
                   n_samples=st.n_samples, var_shapes=shapes, bounds=bounds, g=g, f=f, x_init=x_init,
                   opt_kwargs=opt_kwargs, train_steps=st.train_steps,
                   optimizer=st.train_optimizer.name if st.is_train else None,
                   lower_span=st.lower.span, upper_span=st.upper.span, theta0=theta0,
                   g_smooth=g_smooth, nonsmooth=nonsmooth, rows=_rows(st, dtype))


def _rows(st: CompileState, dtype):
    """The minibatch objectives of the finite-sum proof (:mod:`bil.compiler.finite_sum`), or None."""
    info = st.structure.get("finite_sum")
    if info is None:
        return None
    from bil.runtime.stochastic.rows import Rows, minibatch_fn

    def fn(form):
        def evaluate(env, consts):
            return Evaluator(env, consts)(form.minibatch)

        return minibatch_fn(evaluate, info.row_counts, info.sampled, form.row_hypers, dtype)

    return Rows(dict(info.row_counts), dict(info.sampled), info.lower.groups, info.upper.groups,
                fn(info.lower), fn(info.upper))


def _split(st: CompileState, dtype):
    """(s, Nonsmooth) for a lower objective split by the compiler's split-nonsmooth pass, else (None, None)."""
    split = st.structure.get("nonsmooth")
    if split is None:
        return None, None
    from bil.runtime.prox import Nonsmooth, VarTerm

    def theta_fn(e):
        fn = None if e is None else _expr_fn(e)
        return None if fn is None else (lambda theta, d: fn({}, theta, d))

    s_raw = _expr_fn(split.smooth)

    def g_smooth(x, theta, d):
        return jnp.asarray(s_raw(x, theta, d), dtype)

    terms = {p.var: VarTerm(theta_fn(p.l1), theta_fn(p.group_weight), theta_fn(p.groups)) for p in split.penalties}
    return g_smooth, Nonsmooth(terms, dtype)
