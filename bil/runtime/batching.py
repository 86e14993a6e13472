"""Per-sample batching of a lowered program: the objectives F and G, vmapped maps and reductions.

Per-sample work (lower solves, adjoint solves) is written for one sample and
batched with ``jax.vmap``; the upper objective of a ``per sample`` problem is the
mean over samples, the lower one their sum.  Also the engine's cache of jitted
functions (one compiled function per key)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bil.runtime import sharding


class Batching:
    """Mixin of :class:`bil.runtime.engine.Engine`: needs ``self.low`` and ``self._jitted``."""

    def _theta(self, p, coords: str):
        return self.low.transform.to_user(p) if coords == "u" else p

    def _vmap(self, fn, in_axes):
        """Map ``fn`` over samples when the problem is per sample (each device its own samples
        when they are split over devices, :mod:`bil.runtime.sharding`)."""
        return sharding.map_samples(fn, in_axes, self.low.layout) if self.low.batched else fn

    def _g1(self, x, params):
        theta, d = params
        return self.low.g(x, theta, d)

    def _s1(self, x, params):
        """The smooth part of g (all of g without non-smooth terms): what the solvers differentiate."""
        theta, d = params
        return (self.low.g_smooth or self.low.g)(x, theta, d)

    @property
    def _prox(self):
        """``prox(z, t, (θ, d))`` of the non-smooth terms, or None."""
        return None if self.low.nonsmooth is None else self.low.nonsmooth.prox

    @property
    def _reduced(self) -> bool:
        """Implicit derivatives live on an active set: bounds, or non-smooth terms pinning entries at 0."""
        return self.low.bounds is not None or self.low.nonsmooth is not None

    def F(self, X, theta, d):
        """The upper objective: mean over samples of f."""
        if not self.low.batched:
            return self.low.f(X, theta, d)
        return jnp.mean(jax.vmap(self.low.f, in_axes=(0, None, self.low.data_axes))(X, theta, d))

    def G(self, X, theta, d):
        """The stacked lower objective: sum over samples of g."""
        if not self.low.batched:
            return self.low.g(X, theta, d)
        return jnp.sum(jax.vmap(self.low.g, in_axes=(0, None, self.low.data_axes))(X, theta, d))

    def X_init(self, theta, d):
        return self._laid(self._vmap(self.low.x_init, (None, self.low.data_axes))(theta, d))

    def _laid(self, x):
        """Lower variables (or adjoints) of a problem whose data is split by rows, laid out alike
        on every call (:func:`bil.runtime.sharding.constrain`); as they are otherwise."""
        return sharding.constrain(x, self.low.layout)

    def _sum(self, v):
        return jnp.sum(v) if self.low.batched else v

    def _max(self, v):
        return jnp.max(v) if self.low.batched else v

    def _rss(self, v):
        return jnp.sqrt(jnp.sum(v ** 2)) if self.low.batched else v

    def _jit(self, key, fn, static=()):
        if key not in self._jitted:
            self._jitted[key] = jax.jit(fn, static_argnames=static)
        return self._jitted[key]
