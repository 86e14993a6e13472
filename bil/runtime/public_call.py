"""The public ``value_and_hypergrad`` as one jitted call with little Python around it.

On a small problem (ridge, 10 features) the solves take a few hundred microseconds, so
the Python around them decides the time per call.  A call here is: the hypers checked
(scalars given as numbers by a few comparisons, anything else by
:meth:`bil.program.Program._theta`, which raises the usage errors), one jitted function that makes the lower start, solves the lower problem and the
adjoint and forms z, with everything the caller needs packed into one flat array, and one
transfer of that array to the host.  A call whose
statuses are not both 0 is handed back to the program's general path, which repeats
the solves and raises its located error with the same diagnosis as before.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

#: the packed output's head: f, lower status, ‖∇ₓg‖, adjoint status, adjoint residual
_HEAD = 5
#: value types checked here; anything else goes through the program's own checks
_NUMBERS = (float, int, np.float64, np.float32)
#: how many checked hyper dicts :meth:`PublicCall.theta` remembers
_SEEN = 64


class PublicCall:
    """``value_and_hypergrad`` of one :class:`bil.program.Program` (the program keeps one)."""

    def __init__(self, program):
        self.program = program
        eng = program.engine
        self.eng = eng
        self.dtype = np.dtype(program.lowered.dtype)
        theta0 = program._theta0
        self.theta0 = theta0
        #: hyper name -> (lo, hi) open interval its values must lie in (None: any finite value)
        self.scalar = {}
        for k, a in theta0.items():
            if np.shape(a) != ():
                continue
            h = program.state.hypers[k]
            lo, hi = (-math.inf, math.inf) if h.bounds is None else (float(h.bounds[0]), float(h.bounds[1]))
            if h.kind == "positive":
                lo = max(lo, 0.0)
            self.scalar[k] = (lo, hi)
        #: z's layout in the packed output: (name, shape, size), in the jitted output's order
        self.layout = [(k, np.shape(a), int(np.size(a))) for k, a in theta0.items()]
        ends = np.cumsum([_HEAD] + [size for _, _, size in self.layout])
        #: (name, start, end, shape) of each hyper's gradient in the packed output
        self.slices = [(k, int(i), int(j), shape) for (k, shape, _), i, j in zip(self.layout, ends[:-1], ends[1:])]
        self._fns: dict = {}
        self._methods: dict = {}
        self._seen: dict = {}   # ((name, value), ...) -> checked theta
        self._tols: dict = {}   # tol -> numpy scalar of the program's dtype

    # ---------------------------------------------------------------- inputs
    def theta(self, hypers: Mapping[str, Any] | None) -> dict | None:
        """Hypers as the jitted call takes them (numpy arrays), checked; None for traced
        values, which only the general path takes.  Numbers for scalar hypers are checked by
        a few comparisons and the last few such dicts remembered by value; anything else
        goes through :meth:`bil.program.Program._theta`, which raises the usage errors."""
        if hypers is None:
            hypers = {}
        if type(hypers) is not dict:
            return self._checked(hypers)
        dt = self.dtype.type
        key = []
        for k, v in hypers.items():
            bounds = self.scalar.get(k)
            if bounds is None or not (type(v) in _NUMBERS or (type(v) is np.ndarray and v.shape == ())):
                return self._checked(hypers)
            try:
                x = dt(v)
            except (OverflowError, TypeError, ValueError):
                return self._checked(hypers)
            if not (bounds[0] < x < bounds[1]) or not math.isfinite(x):
                return self._checked(hypers)
            key.append((k, x))
        key = tuple(key)
        hit = self._seen.get(key)
        if hit is None:
            if len(self._seen) >= _SEEN:
                self._seen.clear()
            # numpy, as every call passes (numpy and device arrays are separate entries of jit's cache)
            hit = self._seen[key] = {**self.theta0, **{k: np.asarray(x) for k, x in key}}
        return hit

    def _checked(self, hypers) -> dict | None:
        theta = self.program._theta(hypers)
        if any(isinstance(v, jax.core.Tracer) for v in theta.values()):
            return None
        return theta

    def method(self, method):
        """The :class:`MethodOptions` for ``method`` (parsed once per text) and its cache key."""
        key = method if isinstance(method, str) or method is None else repr(method)
        got = self._methods.get(key)
        if got is None:
            m = self.program._method(method)
            got = self._methods[key] = (m, repr(m))
        return got

    # ------------------------------------------------------------------ call
    def _fn(self, m, key):
        fn = self._fns.get(key)
        if fn is None:
            eng = self.eng
            names = [k for k, _, _ in self.layout]

            def packed(theta, tol, d):
                X0 = eng.X_init(theta, d)
                Q0 = jax.tree.map(jnp.zeros_like, X0)
                hg, (gn, res) = eng._hypergrad_impl(theta, X0, Q0, tol, tol, d, "theta", m)
                dt = eng.low.dtype
                head = jnp.stack([jnp.asarray(v, dt) for v in (hg.f, hg.lower_status, gn, hg.cg_status, res)])
                return jnp.concatenate([head] + [jnp.ravel(jnp.asarray(hg.z[k], dt)) for k in names])

            fn = self._fns[key] = jax.jit(packed)
        return fn

    def __call__(self, hypers, tol: float, method=None):
        """``(f, {hyper: gradient})``, or None where the general path must answer (traced
        hypers, or a failed solve it has to diagnose)."""
        theta = self.theta(hypers)
        if theta is None:
            return None
        m, key = self.method(method)
        t = self._tols.get(tol)
        if t is None:
            if len(self._tols) >= _SEEN:
                self._tols.clear()
            t = self._tols[tol] = np.asarray(tol, self.dtype)
        out = np.asarray(self._fn(m, key)(theta, t, self.program.lowered.data))
        f, lower_status, _, cg_status, _ = out[:_HEAD].tolist()
        if lower_status != 0 or cg_status != 0:
            return None
        return f, {k: out[i:j].reshape(shape) for k, i, j, shape in self.slices}
