"""Proximal operators and active sets of the separable non-smooth lower terms.

The compiler (``bil/compiler/passes/nonsmooth.py``) splits a lower objective into
g = s + h with h(x, θ) = Σ_v [Σᵢ a_vᵢ(θ)|x_vᵢ| + Σ_g b_vg(θ)‖x_v,g‖].  The solvers take
proximal steps x⁺ = prox_{t h}(y − t∇s(y)) with

* soft-thresholding  prox_{t a|·|}(v) = sign(v)·max(|v| − t a, 0)  (per entry),
* block soft-thresholding  prox_{t b‖·‖}(v_g) = max(0, 1 − t b/‖v_g‖)·v_g  (per group),

composed (soft first) when a variable carries both, which is exactly the prox of
their sum for non-overlapping groups (sparse group lasso).  Bounds on an l1
variable are applied after the prox (in one dimension the prox of a convex
function plus an interval's indicator is the projection of its prox).

The *support* (1 where the solution is in the smooth region of h: xᵢ ≠ 0, or its
group is non-zero; 0 where h pins it at 0) is the active set of implicit
differentiation: there h is smooth and ∇s + ∇h = 0 defines x*(θ) by the
implicit function theorem; off it x*(θ) stays 0 (Blondel et al. 2022, "Efficient
and modular implicit differentiation", the prox-gradient fixed point restricted
to the support).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import jax.numpy as jnp


def soft_threshold(v, t):
    """sign(v)·max(|v| − t, 0): the prox of t·|·|."""
    return jnp.sign(v) * jnp.maximum(jnp.abs(v) - t, 0.0)


def _group_norms(v, groups):
    """‖v_g‖ per group (groups: a 0/1 matrix [n, G], or None for one group) and the group of each entry."""
    if groups is None:
        n = jnp.sqrt(jnp.sum(jnp.square(v)))
        return n, lambda per_group: per_group
    return jnp.sqrt(groups.T @ jnp.square(v)), lambda per_group: groups @ per_group


def block_soft_threshold(v, t, groups=None):
    """max(0, 1 − t/‖v_g‖)·v_g per group; entries in no group (a zero row of ``groups``) are left as they are."""
    norms, spread = _group_norms(v, groups)
    safe = jnp.where(norms > 0, norms, 1.0)
    scale = jnp.where(norms > 0, jnp.maximum(0.0, 1.0 - t / safe), 0.0)
    if groups is None:
        return v * scale
    return v * spread(scale) + v * (1.0 - jnp.sum(groups, axis=1))


@dataclass(frozen=True)
class VarTerm:
    """One variable's penalty as functions of (θ, d): the l1 weights and the group weights (each or None)."""

    l1: Optional[Callable] = None
    group_weight: Optional[Callable] = None
    groups: Optional[Callable] = None


@dataclass(frozen=True)
class Nonsmooth:
    """h's proximal operator and support over the lower variables (dicts name -> array)."""

    terms: dict  # var name -> VarTerm
    dtype: object

    def _parts(self, name, theta, d):
        term = self.terms[name]
        a = None if term.l1 is None else jnp.asarray(term.l1(theta, d), self.dtype)
        b = None if term.group_weight is None else jnp.asarray(term.group_weight(theta, d), self.dtype)
        m = None if term.groups is None else jnp.asarray(term.groups(theta, d), self.dtype)
        return a, b, m

    def prox(self, x, t, params):
        """prox_{t h(·, θ)}(x), params = (θ, data)."""
        theta, d = params
        out = dict(x)
        for name in self.terms:
            a, b, m = self._parts(name, theta, d)
            v = x[name]
            if a is not None:
                v = soft_threshold(v, t * a)
            if b is not None:
                v = block_soft_threshold(v, t * b, m)
            out[name] = v
        return out

    def support(self, x, params):
        """1 where h is smooth at x (the active set of the implicit derivative), 0 where it pins x at 0."""
        theta, d = params
        out = {k: jnp.ones_like(v) for k, v in x.items()}
        for name in self.terms:
            a, b, m = self._parts(name, theta, d)
            v = x[name]
            mask = jnp.ones(v.shape, bool)
            if a is not None:
                mask = mask & ((v != 0) | (a == 0))  # an unpenalised entry is smooth even at 0
            if b is not None:
                norms, spread = _group_norms(v, m)
                on = (norms > 0) | (b == 0)
                if m is None:
                    mask = mask & on
                else:
                    grouped = jnp.sum(m, axis=1) > 0
                    mask = mask & (~grouped | (spread(on.astype(self.dtype)) > 0))
            out[name] = mask.astype(v.dtype)
        return out
