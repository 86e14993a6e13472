"""The public ``value_and_hypergrad`` as one jitted call with little Python around it.

On a small problem (ridge, 10 features) the solves take tens of microseconds, so
the Python around them decides the time per call.  A call here is: the hypers checked
(scalars given as numbers by a few comparisons, anything else by
:meth:`bil.program.Program._theta`, which raises the usage errors), one jitted function
that makes the lower start, solves the lower problem and the adjoint and forms z, with f,
one failure flag and z packed into one flat array, and one transfer of that array to the
host.  A call whose flag is set is handed back to the program's general path, which
repeats the solves and raises its located error with the same diagnosis as before.

What keeps that call short on a small problem (measured on ridge, README "Against
jaxopt and optimistix", docs/ALGORITHMS.md "Quadratic lower problems"): on CPU, with
little data, the program runs on the calling thread (:func:`_on_caller`); hypers given as
numbers and tolerances are remembered, checked, as device arrays (a numpy argument is
copied on every call) and passed flat (a dict is flattened on every call); data of at
most ``_CONST_BYTES`` on one device is a constant of the compiled program, as a peer that
closes over its data has it (XLA folds what does not depend on the hypers, e.g. XᵀX); a
``direct`` lower solver runs its one-pass form (:func:`bil.runtime.quadratic.one_pass`:
one Cholesky solve each way, certified by the same residuals), whose failed certificate
sends the call to the general path like any failed solve; and a remembered call, its
result read as one list, takes a handful of Python operations (each costs several times
its usual time right after the compiled call).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from bil.runtime import quadratic

#: the packed output's head: f, and 0 where the lower and adjoint solves both succeeded
_HEAD = 2
#: packed outputs of at most this many numbers are read back as one Python list (each numpy
#: operation after the compiled call costs several times its usual time: ridge 43 -> 35 µs)
_LIST = 64
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
        self.unpack = _unpacker(self.slices, int(ends[-1]), self.dtype.type)
        self._fns: dict = {}
        self._methods: dict = {}
        self._seen: dict = {}   # ((name, value), ...) -> checked theta
        self._tols: dict = {}   # tol -> device scalar of the program's dtype
        self._ready: dict = {}  # (hyper items, tol, method) -> (jitted call, arguments)

    # ---------------------------------------------------------------- inputs
    def theta(self, hypers: Mapping[str, Any] | None) -> tuple | None:
        """Hypers as the jitted call takes them (in :attr:`layout` order), checked; None for
        traced values, which only the general path takes.  Numbers for scalar hypers are
        checked by a few comparisons and the last few such dicts remembered by value; anything
        else goes through :meth:`bil.program.Program._theta`, which raises the usage errors."""
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
            given = dict(key)
            hit = self._seen[key] = tuple(jax.device_put([np.asarray(given.get(k, a)) for k, a in self.theta0.items()]))
        return hit

    def _checked(self, hypers) -> tuple | None:
        theta = self.program._theta(hypers)
        if any(isinstance(v, jax.core.Tracer) for v in theta.values()):
            return None
        # numpy: a call not remembered (see _prepared) is checked anew every time, and for it jit
        # copies numpy faster than device_put (its second entry for them reuses the compiled program)
        return tuple(theta[k] for k in self.theta0)

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
        """The jitted call: ``fn(*hypers, tol)`` where the data is baked in, else
        ``fn(*hypers, tol, data)``; the hypers flat, in :attr:`layout` order (a dict costs
        its flattening on every call)."""
        fn = self._fns.get(key)
        if fn is None:
            eng = self.eng
            names = [k for k, _, _ in self.layout]

            def packed(values, tol, d):
                theta = dict(zip(names, values))
                with quadratic.one_pass():   # trace time: a direct solver's one-pass form
                    X0 = eng.X_init(theta, d)
                    # adjoint from 0 (None: its residual is the right-hand side, no product)
                    hg, _ = eng._hypergrad_impl(theta, X0, None, tol, tol, d, "theta", m)
                dt = eng.low.dtype
                failed = (hg.lower_status != 0) | (hg.cg_status != 0)
                head = jnp.stack([jnp.asarray(hg.f, dt), failed.astype(dt)])
                out = jnp.concatenate([head] + [jnp.ravel(jnp.asarray(hg.z[k], dt)) for k in names])
                return _on_caller(out, tol) if on_cpu else out

            on_cpu = (self.eng.low.layout is None and jax.default_backend() == "cpu"
                      and self._data_bytes <= _ON_CALLER_BYTES)

            if self._baked:
                data = self.program.lowered.data
                fn = jax.jit(lambda *a: packed(a[:-1], a[-1], data))
            else:
                fn = jax.jit(lambda *a: packed(a[:-2], a[-2], a[-1]))
            self._fns[key] = fn
        return fn

    def _prepared(self, hypers, tol, method):
        """(jitted call, its arguments), or None for traced hypers; ``tol`` as the caller gave
        it (the program's default for None; ``Program._api_tol`` checks it on a first call).
        Calls with the same values are remembered (the checks passed once): numbers by value
        (numbers that compare equal are checked alike), numpy arrays of at most ``_KEYED``
        entries by content; anything else is checked on every call."""
        seen = _key(hypers, tol, method)
        ready = self._ready.get(seen) if seen is not None else None
        if ready is not None:
            return ready
        tol = self.program._api_tol(tol)   # a usage error for a bad one, before any work
        theta = self.theta(hypers)
        if theta is None:
            return None
        m, key = self.method(method)
        t = self._tols.get(tol)
        if t is None:
            if len(self._tols) >= _SEEN:
                self._tols.clear()
            t = self._tols[tol] = jax.device_put(np.asarray(tol, self.dtype))
        if seen is not None:   # remembered: on the device once (jit copies a numpy argument every call)
            theta = tuple(jax.device_put(list(theta)))
        ready = (self._fn(m, key), (*theta, t) if self._baked else (*theta, t, self.program.lowered.data))
        if seen is not None:
            if len(self._ready) >= _SEEN:
                self._ready.clear()
            self._ready[seen] = ready
        return ready

    def __call__(self, hypers, tol: float | None, method=None):
        """``(f, {hyper: gradient})``, or None where the general path must answer (traced
        hypers, or a failed solve it has to diagnose)."""
        try:   # the common case, a dict of numbers seen before, in as few operations as can be
            ready = self._ready[(tuple(hypers.items()), tol, method)]
        except (KeyError, TypeError, AttributeError):
            ready = self._prepared(hypers, tol, method)
            if ready is None:
                return None
        fn, args = ready
        return self.unpack(np.asarray(fn(*args)))


#: numpy hypers of at most this many entries are remembered by content (their bytes hashed)
_KEYED = 1 << 16


def _key(hypers, tol, method):
    """A hashable key for a call with a dict of numbers and numpy arrays (arrays by dtype, shape
    and bytes), else None: such a call is checked anew."""
    if hypers is None or (type(hypers) is dict and not hypers):
        return (None, tol, method)          # the initial hypers
    if type(hypers) is not dict:
        return None
    items = []
    for k, v in hypers.items():
        if type(v) is np.ndarray:
            if v.size > _KEYED or v.dtype == object:
                return None
            v = ("array", v.dtype.str, v.shape, v.tobytes())
        items.append((k, v))
    try:
        key = (tuple(items), tol, method)
        hash(key)
    except TypeError:
        return None
    return key


def _unpacker(slices, size, scalar):
    """``unpack(out) -> (f, {hyper: gradient})`` or None (a failed solve) for the packed output
    of :meth:`PublicCall._fn`; a scalar hyper's gradient is a numpy scalar, an array hyper's a
    view of ``out``.  Each operation after the compiled call is costly, so a short output is
    read as one list."""
    if size <= _LIST and all(shape == () for _, _, _, shape in slices):
        def unpack(out):
            h = out.tolist()
            if h[1]:
                return None
            return h[0], {k: scalar(h[i]) for k, i, _, _ in slices}
    else:
        def unpack(out):
            f, failed = out[:_HEAD].tolist()
            if failed:
                return None
            return f, {k: out[i] if shape == () else out[i:j].reshape(shape) for k, i, j, shape in slices}
    return unpack
