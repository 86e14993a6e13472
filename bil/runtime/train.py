"""Unrolled training procedures (docs/ALGORITHMS.md, "Hypergradients": unrolling).

``train`` runs a fixed number of optax steps with ``lax.scan``; it is an
ordinary differentiable JAX function of ``params`` and of the optimizer's
hyperparameters (e.g. a learned learning rate), so reverse-mode
differentiation through it gives the unrolled hypergradient.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu

from bil.runtime import solvers
from bil.runtime.lower_solve import Solved

__all__ = ["OPTIMIZERS", "make_optimizer", "train"]


def _is_zero(v) -> bool:
    """True only for a concrete Python/NumPy zero (a traced value is never 'zero')."""
    return isinstance(v, (int, float)) and v == 0


def _sgd(lr, momentum=0.0, nesterov=False):
    # optax wants momentum=None for plain SGD; a traced momentum is kept as is.
    return optax.sgd(lr, momentum=None if _is_zero(momentum) else momentum,
                     nesterov=bool(nesterov))


def _momentum(lr, momentum=0.9, nesterov=False):
    return optax.sgd(lr, momentum=momentum, nesterov=bool(nesterov))


def _adam(lr, b1=0.9, b2=0.999, eps=1e-8):
    return optax.adam(lr, b1=b1, b2=b2, eps=eps)


def _rmsprop(lr, decay=0.9, eps=1e-8):
    return optax.rmsprop(lr, decay=decay, eps=eps)


def _adagrad(lr, eps=1e-7):
    return optax.adagrad(lr, eps=eps)


OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": _sgd,
    "momentum": _momentum,
    "adam": _adam,
    "rmsprop": _rmsprop,
    "adagrad": _adagrad,
}


def make_optimizer(name: str, kwargs: dict) -> optax.GradientTransformation:
    """Build an optax optimizer from its DSL name and keyword arguments.

    ``kwargs`` values may be traced scalars (learned learning rates), so call
    this inside the traced function.  ``learning_rate`` is accepted as an
    alias of ``lr``.  Supported: sgd(lr, momentum=0.0, nesterov=False),
    momentum(lr, momentum=0.9, nesterov=False), adam(lr, b1=0.9, b2=0.999,
    eps=1e-8), rmsprop(lr, decay=0.9, eps=1e-8), adagrad(lr, eps=1e-7).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(OPTIMIZERS)}")
    kwargs = dict(kwargs)
    if "learning_rate" in kwargs:
        if "lr" in kwargs:
            raise ValueError("give either lr or learning_rate, not both")
        kwargs["lr"] = kwargs.pop("learning_rate")
    try:
        return OPTIMIZERS[name](**kwargs)
    except TypeError as e:
        raise ValueError(f"bad arguments for optimizer {name!r}: {e}") from None


def train(fun: Callable, x0, params, opt_name: str, opt_kwargs: dict, steps: int,
          truncate: int | None = None, project: Callable | None = None):
    """Run ``steps`` optimizer steps on ``fun(x, params)`` from ``x0``.

    Args:
      fun: training loss ``fun(x, params)``.
      x0: initial pytree.
      params: pytree of (possibly traced) parameters passed to ``fun``.
      opt_name, opt_kwargs: optimizer, see :func:`make_optimizer`; values may
        be traced and depend on ``params``.
      steps: static number of steps.
      truncate: if ``K < steps``, only the last K steps are differentiated
        (truncated back-propagation, Shaban et al. 2019): the state (x and the
        optimizer state) is passed through ``stop_gradient`` after the first
        ``steps - K`` steps.  ``None`` or ``K >= steps`` is the full unroll.
      project: optional map onto the feasible set (bounded variables), applied
        to ``x0`` and after every step: projected training.

    Returns:
      ``(x_final, losses)`` with ``losses[i]`` the loss before step ``i``.
    """
    steps = int(steps)
    opt = make_optimizer(opt_name, opt_kwargs)
    vg = jax.value_and_grad(fun)

    # Rematerialize each step on the backward pass: reverse mode then stores
    # only the scan carry per step (x, optimizer state), not every
    # intermediate of the loss and its gradient.
    @jax.checkpoint
    def step(carry, _):
        x, s = carry
        loss, g = vg(x, params)
        updates, s = opt.update(g, s, x)
        x = optax.apply_updates(x, updates)
        return (x if project is None else project(x), s), loss

    def run(carry, n):
        if n == 0:
            return carry, jnp.zeros((0,), jnp.result_type(float))
        return jax.lax.scan(step, carry, None, length=n)

    if project is not None:
        x0 = project(x0)
    carry = (x0, opt.init(x0))
    if truncate is None or int(truncate) >= steps:
        (x, _), losses = run(carry, steps)
        return x, losses
    k = max(int(truncate), 0)
    carry, head = run(carry, steps - k)
    carry = jax.lax.stop_gradient(carry)
    (x, _), tail = run(carry, k)
    return x, jnp.concatenate([head, tail.astype(head.dtype)])


class Training:
    """Mixin of :class:`bil.runtime.engine.Engine`: a ``train`` goal's lower "solve"."""

    def _train(self, theta, d, X0, truncate=None, from_init=True) -> Solved:
        """A training procedure: `steps` optimizer steps from the initial values."""
        low = self.low

        # bounded variables are trained by projected steps (each update clipped to the box)
        proj = None if low.bounds is None else solvers.projector(low.bounds)

        def one(theta, d, x0):
            x, _ = train(self._g1, x0, (theta, d), low.optimizer, low.opt_kwargs(theta, d),
                               low.train_steps, truncate, project=proj)
            g_end, gx = jax.value_and_grad(self._g1)(x, (theta, d))
            gn = otu.tree_norm(gx)
            # diverged: the training loss ended above where it started (a learning rate past
            # the stable range; 1e-8 of slack for a start that is already a minimiser), or NaN/Inf.
            # Its end point and hypergradient are garbage, not a result (status 2)
            g_start = jax.lax.stop_gradient(self._g1(x0, (theta, d)))
            diverged = jax.lax.stop_gradient(g_end) > g_start + 1e-8 * jnp.maximum(1.0, jnp.abs(g_start))
            ok = jnp.isfinite(gn) & jnp.isfinite(g_end) & ~diverged
            status = jnp.where(ok, 0, 2).astype(jnp.int32)
            return x, jnp.int32(low.train_steps), gn, status

        # Training always starts from the spec's initial values (that is the
        # procedure being differentiated); X0 is ignored.
        X0 = self.X_init(theta, d)
        x, it, gn, stt = self._vmap(one, (None, low.data_axes, 0))(theta, d, X0)
        return Solved(self._laid(x), self._sum(it), self._rss(gn), self._max(stt))
