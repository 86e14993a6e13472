"""``bil gradcheck``: the hypergradient by every applicable method and by
central finite differences, with their relative differences."""

from __future__ import annotations

import math

from dataclasses import dataclass, field

import jax
import numpy as np
import optax.tree_utils as otu

from bil.core.errors import BilRuntimeError
from bil.runtime.outer.stops import Stop
from bil.stdlib.methods import IMPLICIT_METHODS, Neumann, Unroll



@dataclass
class GradcheckReport:
    names: list            # flattened hyper entries ("lam", "theta[3]")
    grads: dict            # method -> np.ndarray over names
    rel: dict              # method -> max relative difference to finite differences
    ok: bool
    tol: float
    method: str = "implicit"  # the method whose agreement decides `ok`
    notes: list = field(default_factory=list)  # lines printed before the verdict

    def table(self) -> str:
        methods = list(self.grads)
        w = max(12, *(len(n) for n in self.names))
        cw = {m: max(16, len(m)) for m in methods}
        lines = ["  ".join([f"{'hyper':<{w}}"] + [f"{m:>{cw[m]}}" for m in methods])]
        for i, n in enumerate(self.names):
            lines.append("  ".join([f"{n:<{w}}"] + [f"{self.grads[m][i]:>{cw[m]}.9g}" for m in methods]))
        lines.append("")
        for m, r in self.rel.items():
            lines.append(f"max relative difference {m} vs finite differences: {r:.2e}")
        lines.extend(self.notes)
        lines.append("OK" if self.ok else
                     f"MISMATCH: {self.method} and finite differences differ by more than {self.tol:g}")
        return "\n".join(lines)


def _flat(prog, grads):
    return np.concatenate([np.ravel(grads[n]) for n in prog.hypers])


def _names(prog, max_entries):
    out = []
    for n, v in prog.hypers.items():
        a = np.asarray(v)
        if a.ndim == 0:
            out.append((n, ()))
        else:
            out.extend((n, np.unravel_index(i, a.shape)) for i in range(a.size))
    return out[:max_entries]


def _value(prog, hypers, tol, method) -> float:
    """F(θ) for the finite differences.  For an argmin this is the adjoint-corrected value
    f(x̃) − ⟨q, ∇ₓg(x̃)⟩, whose error is second order in the lower accuracy (MAID's bracket):
    f(x̃) alone carries a first-order error ‖∇ₓf‖·‖x̃ − x*‖ that, divided by the small
    step, swamps the difference on ill-conditioned problems."""
    m = prog._method(method)
    hg = prog._hypergrad(hypers, tol, m)
    qr = float(hg.qr) if hg.qr is not None else np.nan   # None/NaN: unknown (unroll, active bounds)
    eng = prog.engine
    if not np.isfinite(qr) and eng.low.bounds is not None and not isinstance(m, Unroll) and not prog.state.is_train:
        # with box bounds the adjoint is 0 on the active coordinates (x̃ sits on its bound there,
        # as x* does once the active set is identified) and ∇ₓg(x*) = 0 on the free ones, so
        # ⟨q, ∇ₓg(x̃)⟩ is the same correction on the free coordinates; without it the values'
        # first-order error gave false mismatches of 1e-5 on zero hypergradient entries
        gx = jax.grad(eng.G)(hg.x, prog._theta(hypers), eng.low.data)
        qr = float(otu.tree_vdot(hg.q, gx))
    return float(hg.f) - (qr if np.isfinite(qr) else 0.0)


def _fd_points(decl, x: float, t: float) -> tuple[float, float]:
    """θ₊ > θ₋ for a central difference at θ = x: x ± t·max(|x|, 1e-3) for a real hyper, and
    ±t in the coordinates the hyper is optimised in (log for positive, logit for bounded) so
    that both stay inside its domain at any valid x (1e-8, or 0.99999999 in [0, 1], used to
    step outside it); the difference quotient over θ₊ − θ₋ is still second-order accurate."""
    if decl.bounds is not None:
        lo, hi = (float(b) for b in decl.bounds)
        r = (x - lo) / (hi - lo)
        s = math.log(r) - math.log1p(-r)

        def at(v):
            return lo + (hi - lo) / (1.0 + math.exp(-v))

        return at(s + t), at(s - t)
    if decl.kind == "positive":
        return x * math.exp(t), x * math.exp(-t)
    h = t * max(abs(x), 1e-3)
    return x + h, x - h


def _columns(prog) -> tuple[list[str], dict, list[str]]:
    """The methods compared (reference first), how each is asked for, and notes on the columns
    shown for information only."""
    spec = prog.engine.method
    train = prog.state.is_train
    names = ["unroll"] if train else ["implicit", "direct", "unroll"]
    if not train and sum(np.size(v) for v in prog.state.lower_vars.values()) > 2000:
        names.remove("direct")  # a dense Hessian would be too large
    if isinstance(spec, Neumann) and not train:
        names.insert(1, "neumann")
    methods = {m: spec if spec.name == m else m for m in names}
    notes = []
    K = spec.truncate if isinstance(spec, Unroll) else None
    if K is not None:
        # truncated backpropagation is biased by design: it is shown, but the unroll column
        # (and the verdict, for a train goal) is the full unrolled derivative
        methods["unroll"] = "unroll" if train else f"unroll(steps={int(spec.steps)})"
        methods[f"unroll(truncate={K})"] = spec
        notes.append(f"unroll(truncate={K}) backpropagates through the last {K} steps only: an approximation "
                     "by design, shown for information (not checked)")
    if train and isinstance(spec, IMPLICIT_METHODS):
        # the spec's choice, shown beside the unrolled reference: it differentiates the argmin
        # of the training loss, which the steps reach only if training converges
        methods[spec.name] = spec
        notes.append(f"{spec.name} on a train goal differentiates the argmin of the training loss, not the "
                     "steps: shown for information (not checked)")
    return names, methods, notes


def _finite_differences(prog, base: dict, picked: list, rel_step: float, solve_tol: float, method):
    """Central differences of F over ``picked`` entries, and each one's roundoff level."""
    eps = float(np.finfo(prog.lowered.dtype).eps)
    fd, noise = [], []
    for n, idx in picked:
        pts = _fd_points(prog.state.hypers[n], float(base[n][idx]), rel_step)
        vals = []
        for p in pts:
            hyp = {k: v.copy() for k, v in base.items()}
            hyp[n][idx] = p
            vals.append(_value(prog, hyp, solve_tol, method))
        width = pts[0] - pts[1]
        fd.append((vals[0] - vals[1]) / width)
        noise.append(10 * eps * max(abs(vals[0]), abs(vals[1])) / width)
    return np.array(fd), np.array(noise)


def gradcheck(prog, hypers=None, *, tol: float = 1e-5, solve_tol: float = 1e-11,
              rel_step: float = 1e-4, max_entries: int = 8) -> GradcheckReport:
    """Compare hypergradient methods against central finite differences.

    Finite differences use a step of ``rel_step·max(|θᵢ|, 1e-3)`` per entry
    (at most ``max_entries`` entries: the largest-magnitude ones of the
    reference gradient) with the lower problem solved to ``solve_tol`` (for an
    argmin, of the adjoint-corrected value, accurate to second order).  The
    reference is ``implicit`` for an argmin and ``unroll`` for a training
    procedure (a spec's ``unroll(truncate=K)``, biased by design, gets a column
    of its own and the reference is the full unroll); each column uses the
    spec's own options when the spec names
    that method, and the spec's ``neumann`` gets a column of its own.  An
    entry where both the reference and the finite difference are within the
    difference's roundoff (10·eps·|F|/2h) of zero agrees.
    """
    base = {k: np.array(v, dtype=float) for k, v in (hypers or prog.hypers).items()}
    names, methods, notes = _columns(prog)
    key = names[0]
    f_ref, ref = prog.value_and_hypergrad(base, tol=solve_tol, method=methods[key])
    if not (np.isfinite(f_ref) and all(np.all(np.isfinite(np.asarray(v))) for v in ref.values())):
        # a comparison of NaNs would only say MISMATCH; say what is wrong, at the upper objective
        raise prog._failure(Stop.NONFINITE_HYPERGRAD, prefix="")
    full = {}
    for m, meth in methods.items():
        if m == key:
            full[m] = ref
            continue
        try:
            full[m] = prog.value_and_hypergrad(base, tol=solve_tol, method=meth)[1]
        except BilRuntimeError as err:
            # a column beside the reference failed (e.g. implicit differentiation at a training
            # end point whose Hessian is not positive definite): show it, do not abort the check
            full[m] = {n: np.full(np.shape(v), np.nan) for n, v in ref.items()}
            notes.append(f"{m} failed: {err.message}")
    entries = _names(prog, 10**9)
    mags = [abs(float(np.asarray(ref[n])[idx])) for n, idx in entries]
    order = sorted(range(len(entries)), key=lambda i: -mags[i])[:max_entries]
    picked = [entries[i] for i in sorted(order)]
    if len(picked) < len(entries):
        notes.append(f"finite differences on {len(picked)} of {len(entries)} hyper entries, those with the largest "
                     f"gradients (--entries {len(entries)} for all)")
    fd, noise = _finite_differences(prog, base, picked, rel_step, solve_tol, methods[key])
    if not np.all(np.isfinite(fd)):
        raise prog._failure(Stop.NONFINITE_HYPERGRAD, prefix="")
    label = [n + (f"[{', '.join(map(str, idx))}]" if idx else "") for n, idx in picked]
    grads = {m: np.array([float(np.asarray(g[n])[idx]) for n, idx in picked]) for m, g in full.items()}
    grads["finite-diff"] = fd
    scale = np.maximum(np.abs(fd), 1e-12)
    zero = np.maximum(np.abs(grads[key]), np.abs(fd)) <= noise  # both zero up to roundoff
    rel = {m: float(np.max(np.where(zero, 0.0, np.abs(grads[m] - fd) / scale), initial=0.0)) for m in full}
    # the verdict allows the finite differences' own roundoff: a difference within it says
    # nothing (F flat to float64 over the step: a positive hyper at 1e-8, a bounded one at 1 - 1e-8)
    diff = np.abs(grads[key] - fd)
    ok = bool(np.all((diff <= tol * scale) | (diff <= noise) | zero))
    blind = [(lab, nz / max(abs(f_), 1e-300)) for lab, f_, nz in zip(label, fd, noise)
             if 0 < nz and nz > 1e-3 * abs(f_)]
    if blind:
        notes.append(f"{', '.join(lab for lab, _ in blind)}: F changes by little more than its roundoff over the "
                     "finite-difference step here, so the finite differences check only to about "
                     + ", ".join(f"{r:.0e}" for _, r in blind) + " (relative)")
    return GradcheckReport(label, grads, rel, ok=ok, tol=tol, method=key, notes=notes)
