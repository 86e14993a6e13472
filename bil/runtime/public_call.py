"""The public ``value_and_hypergrad`` as one jitted call with little Python around it.

On a small problem (ridge, 10 features) the solves take a few hundred microseconds, so
the Python around them decides the time per call.  A call here is: the hypers checked
(scalars given as numbers by a few comparisons, anything else by
:meth:`bil.program.Program._theta`, which raises the usage errors), one jitted function that makes the lower start, solves the lower problem and the
adjoint and forms z, with everything the caller needs packed into one flat array, and one
transfer of that array to the host.  A call whose
statuses are not both 0 is handed back to the program's general path, which repeats
the solves and raises its located error with the same diagnosis as before.

Four things keep that call short on a small problem (measured on ridge, README "Against
jaxopt and optimistix"): on CPU, with little data, the program runs on the calling thread
(:func:`_on_caller`);
hypers given as numbers and tolerances are remembered, checked, as device
arrays (a numpy argument is copied to the device on every call); data of at most
``_CONST_BYTES`` on one device is a constant of the compiled program, as a peer that
closes over its data has it (XLA folds what does not depend on the hypers, e.g. XᵀX);
and a ``direct`` lower solver runs its one-pass form (:func:`bil.runtime.quadratic.one_pass`:
one Cholesky solve each way, certified by the same residuals), whose failed certificate
sends the call to the general path like any failed solve.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from bil.runtime import quadratic

#: the packed output's head: f, lower status, ‖∇ₓg‖, adjoint status, adjoint residual
_HEAD = 5
#: value types checked here; anything else goes through the program's own checks
_NUMBERS = (float, int, np.float64, np.float32)
#: how many checked hyper dicts :meth:`PublicCall.theta` remembers
_SEEN = 64
#: data of at most this many bytes (on one device) is baked into the compiled call (digits:
#: 0.9 MB, its call 10% faster so; XLA lays out and folds constants at compile time)
_CONST_BYTES = 2 << 20
#: with at most this many bytes of data the call runs on the calling thread (:func:`_on_caller`):
#: ridge (35 kB) 87 -> 29 µs; digits (0.9 MB, 18 ms a call) was 3-5% slower so
_ON_CALLER_BYTES = 256 << 10


def _on_caller(out, tol):
    """``out``, from a program XLA:CPU runs on the calling thread.

    A program that holds a host callback is executed synchronously on CPU (IFRT sets it, so
    that a callback may call back into JAX); any other one above ~1000 flops is handed to a
    worker thread and awaited, which cost ~55 µs a call on the loaded 2-core machine (XLA
    estimates 5 µs on an idle one), four times ridge's whole solve.  The public call awaits
    its result at once, so running it here loses nothing: the callback sits in a branch
    never taken (``tol`` < 0, which the API refuses), as lineax's error checks do."""
    def never(o):
        return jax.pure_callback(np.asarray, jax.ShapeDtypeStruct(o.shape, o.dtype), o)

    return jax.lax.cond(tol < 0, never, lambda o: o, out)


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
        self._tols: dict = {}   # tol -> device scalar of the program's dtype
        self._ready: dict = {}  # (hyper items, tol, method) -> (jitted call, arguments)

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
            # on the device, as every call passes them (numpy and device arrays are separate
            # entries of jit's cache; a numpy argument is copied on every call)
            hit = self._seen[key] = jax.device_put({**self.theta0, **{k: np.asarray(x) for k, x in key}})
        return hit

    def _checked(self, hypers) -> dict | None:
        theta = self.program._theta(hypers)
        if any(isinstance(v, jax.core.Tracer) for v in theta.values()):
            return None
        # numpy: checked anew on every call, and jit copies numpy faster than device_put
        # (its second entry for them reuses the compiled program)
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
    @functools.cached_property
    def _data_bytes(self) -> int:
        return sum(int(np.size(a)) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(self.program.lowered.data))

    @functools.cached_property
    def _baked(self) -> bool:
        """Is the data small and on one device (then a constant of the compiled call)?"""
        return self.eng.low.layout is None and self._data_bytes <= _CONST_BYTES

    def _fn(self, m, key):
        """The jitted call: ``fn(theta, tol)`` where the data is baked in, else ``fn(theta, tol, data)``."""
        fn = self._fns.get(key)
        if fn is None:
            eng = self.eng
            names = [k for k, _, _ in self.layout]

            def packed(theta, tol, d):
                with quadratic.one_pass():   # trace time: a direct solver's one-pass form
                    X0 = eng.X_init(theta, d)
                    # adjoint from 0 (None: its residual is the right-hand side, no product)
                    hg, (gn, res) = eng._hypergrad_impl(theta, X0, None, tol, tol, d, "theta", m)
                dt = eng.low.dtype
                head = jnp.stack([jnp.asarray(v, dt) for v in (hg.f, hg.lower_status, gn, hg.cg_status, res)])
                out = jnp.concatenate([head] + [jnp.ravel(jnp.asarray(hg.z[k], dt)) for k in names])
                return _on_caller(out, tol) if on_cpu else out

            on_cpu = (self.eng.low.layout is None and jax.default_backend() == "cpu"
                      and self._data_bytes <= _ON_CALLER_BYTES)

            if self._baked:
                data = self.program.lowered.data
                fn = jax.jit(lambda theta, tol: packed(theta, tol, data))
            else:
                fn = jax.jit(packed)
            self._fns[key] = fn
        return fn

    def _prepared(self, hypers, tol: float, method):
        """(jitted call, its arguments), or None for traced hypers.  Calls with
        the same numbers are remembered by value (the checks passed once: numbers that
        compare equal are checked alike; an array or anything unhashable is checked on every
        call)."""
        try:
            seen = (tuple(hypers.items()) if type(hypers) is dict else None if hypers is None else (),
                    tol, method)
            ready = self._ready.get(seen) if seen[0] != () else None
        except TypeError:
            seen = ready = None
        if ready is not None:
            return ready
        theta = self.theta(hypers)
        if theta is None:
            return None
        m, key = self.method(method)
        t = self._tols.get(tol)
        if t is None:
            if len(self._tols) >= _SEEN:
                self._tols.clear()
            t = self._tols[tol] = jax.device_put(np.asarray(tol, self.dtype))
        ready = (self._fn(m, key), (theta, t) if self._baked else (theta, t, self.program.lowered.data))
        if seen is not None and seen[0] != ():
            if len(self._ready) >= _SEEN:
                self._ready.clear()
            self._ready[seen] = ready
        return ready

    def __call__(self, hypers, tol: float, method=None):
        """``(f, {hyper: gradient})``, or None where the general path must answer (traced
        hypers, or a failed solve it has to diagnose)."""
        ready = self._prepared(hypers, tol, method)
        if ready is None:
            return None
        fn, args = ready
        out = np.asarray(fn(*args))
        f, lower_status, _, cg_status, _ = out[:_HEAD].tolist()
        if lower_status != 0 or cg_status != 0:
            return None
        return f, {k: out[i:j].reshape(shape) for k, i, j, shape in self.slices}
