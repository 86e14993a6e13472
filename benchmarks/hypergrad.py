"""Time per hypergradient: bil against jaxopt, optimistix and a hand-written JAX implementation.

    pip install -e .[bench]                   # jaxopt, optimistix (benchmark extras only)
    python benchmarks/hypergrad.py            # ridge, TV 64x64, TV 128x128, digits
    python benchmarks/hypergrad.py --quick    # CI smoke: fewer repeats, TV 64x64 only
    python benchmarks/hypergrad.py --problems ridge,digits --repeats 100

Problems (issues 3 and 15, "Measured"):

* ``ridge``: ``examples/ridge.bil`` (diabetes, 10 features, ``direct()``);
* ``tv``: ``examples/tv_denoise.bil`` (3 images, per sample, ``fista(mu=1)``),
  compiled with ``size=`` set to 64 and 128;
* ``digits``: ``examples/digits_penalties.bil`` (multinomial logistic
  regression, 640 hypers, default ``lbfgs``).

The first table is the time per hypergradient of bil (its engine's jitted oracle, what
the outer loops call, and the public ``prog.value_and_hypergrad``) and of the peers
(``benchmarks/hypergrad_peers.py``: jaxopt and optimistix given the same problem,
tolerances and solver family, each one ``jax.jit(jax.value_and_grad(...))``), with
bil / best peer, and each side's hypergradient error against bil at 1e-10.  The second
compares bil's engine with the hand-written implementation below (TV and digits).

All sides compute, in one jitted call, the hypergradient with respect to the
hypers in user coordinates at ε = δ = 1e-6: lower solve until ‖∇ₓg‖ ≤ 1e-6
(per sample ‖∇ₓgᵢ‖ ≤ 1e-6/√N), CG on Hessian-vector products until the
absolute residual is ≤ 1e-6 (per sample 1e-6/√N), then z = ∇θf − Jᵀq.

bil:  ``prog.engine.hypergradient(theta, X0, Q0, 1e-6, 1e-6, coords="theta")`` (engine), and
``prog.value_and_hypergrad(hypers, tol=1e-6)`` (API: checks the hypers and the statuses).
hand: written directly with jnp below: the same objectives, the same lower
solver as bil uses for the spec (FISTA with backtracking, μ-momentum and
adaptive restart for TV; ``optax.lbfgs`` in a ``lax.while_loop`` for digits),
``jax.vmap`` over samples, textbook CG (recursive residual, one matvec per
iteration plus one for the warm-start residual) on ``jax.jvp`` of
``jax.grad``, and z through one ``jax.vjp``.

Every timed run starts from the same cold point (the lower variables' initial
values, zero adjoint), so every run does identical work.  Runs of all sides
alternate (so load drift on a shared machine hits both alike) and the table
reports medians.  "compile" is the first call's time minus the warm median.
The script also checks that both sides give the same hypergradient (relative
difference, must be ≤ 1e-5) and prints each side's error against a reference
computed by bil at ε = δ = 1e-10.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bil  # noqa: E402  (enables float64)
import hypergrad_peers as hp  # noqa: E402

PEERS = ("jaxopt", "optimistix")

EPS = DELTA = 1e-6
MAX_ITER = 10_000      # the specs' lower max_iter (bil's default)
CG_MAX_ITER = 1_000    # bil's implicit(max_iter=) default
AGREE = 1e-5           # required relative agreement of the two hypergradients


def _vdot(a, b):
    return jnp.vdot(a, b)


def _nrm(a):
    return jnp.sqrt(jnp.vdot(a, a))


# =============================================================== hand-written
# ------------------------------------------------------------------- solvers
def fista(vg, x0, tol, max_iter, mu, L0=1.0, shrink=0.9, max_ls=50, roundoff=100.0):
    """FISTA with backtracking on L, momentum (1-√(μ/L))/(1+√(μ/L)), adaptive restart.

    Stops when ‖∇f(x_k)‖ ≤ tol (checked at the start).  Same rule, constants
    and acceptance test as a careful textbook implementation: L is shrunk by
    ``shrink`` before each iteration and doubled until sufficient decrease
    holds (accepting, within roundoff of f, on the curvature form of the test,
    without which backtracking stalls near tight tolerances).
    """
    eps = jnp.finfo(x0.dtype).eps
    f0, g0 = vg(x0)

    def trial(y, fy, gy, L):
        x = y - gy / L
        f, g = vg(x)
        d = x - y
        dd = _vdot(d, d)
        lhs = f - fy - _vdot(gy, d)
        quad = 0.5 * L * dd
        ok = (lhs <= quad) | ((lhs <= quad + roundoff * eps * (jnp.abs(f) + jnp.abs(fy)))
                              & (_vdot(g - gy, d) <= L * dd))
        return x, f, g, ok

    def cond(c):
        x, g, y, L, k, failed = c
        return (_nrm(g) > tol) & (k < max_iter) & ~failed

    def body(c):
        x, g, y, L, k, _ = c
        fy, gy = vg(y)

        def ls_cond(s):
            return ~s[4] & (s[5] < max_ls)

        def ls_body(s):
            L = 2.0 * s[0]
            return (L, *trial(y, fy, gy, L), s[5] + 1)

        L = shrink * L
        L, x1, _, g1, ok, _ = jax.lax.while_loop(ls_cond, ls_body, (L, *trial(y, fy, gy, L), 0))
        dx = x1 - x
        q = jnp.sqrt(jnp.clip(mu / L, 0.0, 1.0))
        beta = jnp.where(_vdot(y - x1, dx) > 0, 0.0, (1.0 - q) / (1.0 + q))
        return x1, g1, x1 + beta * dx, L, k + 1, ~ok

    x, g, _, _, k, failed = jax.lax.while_loop(
        cond, body, (x0, g0, x0, jnp.asarray(L0, x0.dtype), jnp.int32(0), jnp.bool_(False)))
    return x, k, _nrm(g)


def lbfgs(fun, x0, tol, max_iter, memory=10):
    """optax.lbfgs (zoom line search) until ‖∇f‖ ≤ tol (checked at the start).

    Value and gradient at the new iterate are read from the line search's
    state (what ``optax.value_and_grad_from_state`` returns), so each
    iteration evaluates the objective only inside the line search.
    """
    opt = optax.lbfgs(memory_size=memory)
    f0, g0 = jax.value_and_grad(fun)(x0)

    def cond(c):
        x, f, g, s, k = c
        return (_nrm(g) > tol) & (k < max_iter)

    def body(c):
        x, f, g, s, k = c
        upd, s = opt.update(g, s, x, value=f, grad=g, value_fn=fun)
        x = optax.apply_updates(x, upd)
        return x, otu.tree_get(s, "value"), otu.tree_get(s, "grad"), s, k + 1

    x, f, g, s, k = jax.lax.while_loop(cond, body, (x0, f0, g0, opt.init(x0), jnp.int32(0)))
    return x, k, _nrm(g)


def cg(A, b, x0, tol, max_iter):
    """Conjugate gradient for A x = b until ‖r‖ ≤ tol (recursive residual)."""
    r = b - A(x0)
    rr = _vdot(r, r)

    def cond(c):
        x, r, p, rr, k = c
        return (jnp.sqrt(rr) > tol) & (k < max_iter)

    def body(c):
        x, r, p, rr, k = c
        Ap = A(p)
        alpha = rr / _vdot(p, Ap)
        x = x + alpha * p
        r = r - alpha * Ap
        rr1 = _vdot(r, r)
        return x, r, r + (rr1 / rr) * p, rr1, k + 1

    x, r, _, rr, k = jax.lax.while_loop(cond, body, (x0, r, r, rr, jnp.int32(0)))
    return x, k, jnp.sqrt(rr)


def hvp(grad_fn, x, v):
    return jax.jvp(grad_fn, (x,), (v,))[1]


# ------------------------------------------------------------ TV denoising
def tv_g(x, theta, noisy):
    """One image: 0.5‖x − noisy‖² + α Σ √(dx² + dy² + ν²) (forward differences, Neumann)."""
    dx = jnp.diff(x, axis=1, append=x[:, -1:])
    dy = jnp.diff(x, axis=0, append=x[-1:, :])
    return 0.5 * jnp.sum((x - noisy) ** 2) + theta["alpha"] * jnp.sum(jnp.sqrt(dx * dx + dy * dy + theta["nu"] ** 2))


def tv_F(X, clean):
    """Upper objective: mean over images of 0.5‖x − clean‖²."""
    return jnp.mean(0.5 * jnp.sum((X - clean) ** 2, axis=(1, 2)))


@jax.jit
def tv_hand(theta, X0, Q0, tol, delta, noisy, clean):
    n = X0.shape[0]
    tol_i, delta_i = tol / math.sqrt(n), delta / math.sqrt(n)
    grad_x = jax.grad(tv_g)

    def solve_one(x0, y):
        return fista(jax.value_and_grad(lambda x: tv_g(x, theta, y)), x0, tol_i, MAX_ITER, mu=1.0)

    X, lit, gn = jax.vmap(solve_one)(X0, noisy)
    B = jax.grad(tv_F)(X, clean)

    def adjoint_one(x, b, q0, y):
        return cg(lambda v: hvp(lambda z: grad_x(z, theta, y), x, v), b, q0, delta_i, CG_MAX_ITER)

    Q, cit, res = jax.vmap(adjoint_one)(X, B, Q0, noisy)
    # f does not depend on theta, so z = -Jᵀq.
    _, vjp = jax.vjp(lambda th: jax.vmap(grad_x, (0, None, 0))(X, th, noisy), theta)
    (jtq,) = vjp(Q)
    z = jax.tree.map(jnp.negative, jtq)
    return tv_F(X, clean), z, X, Q, (lit, cit, _rss(gn), _rss(res))


def _rss(v):
    return jnp.sqrt(jnp.sum(v ** 2))


# ------------------------------------------------------------------ digits
def _xent(logits, y):
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=-1))


def dig_g(W, theta, Xtr, ytr):
    return _xent(Xtr @ W, ytr) + 0.5 * jnp.sum(jnp.exp(theta["theta"]) * W * W)


@jax.jit
def dig_hand(theta, W0, Q0, tol, delta, Xtr, ytr, Xval, yval):
    grad_w = jax.grad(dig_g)
    W, lit, gn = lbfgs(lambda w: dig_g(w, theta, Xtr, ytr), W0, tol, MAX_ITER)
    f, B = jax.value_and_grad(lambda w: _xent(Xval @ w, yval))(W)
    Q, cit, res = cg(lambda v: hvp(lambda w: grad_w(w, theta, Xtr, ytr), W, v), B, Q0, delta, CG_MAX_ITER)
    _, vjp = jax.vjp(lambda th: grad_w(W, th, Xtr, ytr), theta)
    (jtq,) = vjp(Q)
    z = jax.tree.map(jnp.negative, jtq)  # the upper objective does not depend on theta
    return f, z, W, Q, (lit, cit, gn, res)


# ================================================================ harness
def _block(x):
    return jax.block_until_ready(x)


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(tree[k])) for k in sorted(tree)])


def _rel(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def _read(out):
    """A ``(f, {hyper: gradient})`` of device arrays as numbers on the host (``float``, numpy)."""
    f, z = out
    return float(f), {k: np.asarray(v) for k, v in z.items()}


#: a side whose warm call is shorter than this is timed in blocks of calls this long
BLOCK_S = 2e-3


def _alternating(sides, repeats):
    """Per-call times of each side (name -> ``call()``), ``repeats`` samples each.  Sides take
    turns, in alternating order, so load drift hits all alike.  A call shorter than
    :data:`BLOCK_S` is timed as the mean of a block of calls at least that long: timed one by
    one, microsecond calls measure the timer and whatever the previous side left in the
    caches (ridge: a few µs of Python costs several times more right after a compiled call)."""
    block = {}
    for k, fn in sides.items():
        t = time.perf_counter()
        for _ in range(3):
            fn()
        block[k] = max(1, math.ceil(BLOCK_S / max((time.perf_counter() - t) / 3, 1e-7)))
    times = {k: [] for k in sides}
    order = list(sides)
    for i in range(repeats):
        for k in order[:: 1 if i % 2 == 0 else -1]:
            fn, n = sides[k], block[k]
            t = time.perf_counter()
            for _ in range(n):
                fn()
            times[k].append((time.perf_counter() - t) / n)
    return times


def bench_case(name, size, prog, hand_call, repeats, peers=None, source=None):
    """Time bil, the hand-written side (if any) and the ``peers`` (name -> ``call(theta) -> (f, z)``,
    jitted); return a result row (dict)."""
    eng = prog.engine
    theta = prog._theta(None)
    X0 = eng.X_init(theta, prog.lowered.data)
    Q0 = eng.init_adjoint(X0)
    _block((X0, Q0))
    peers = {k: v for k, v in (peers or {}).items() if v is not None}

    def run_bil(eps=EPS, delta=DELTA):
        return _block(eng.hypergradient(theta, X0, Q0, eps, delta, coords="theta"))

    def run_hand(eps=EPS, delta=DELTA):
        return _block(hand_call(theta, X0, Q0, eps, delta))

    # as a user writes them: numbers for scalar hypers
    user = {k: float(v) if np.ndim(v) == 0 else np.asarray(v) for k, v in theta.items()}
    jtheta = jax.device_put(theta)
    # bil as an ordinary JAX function: prog.objective solves to the spec's lower tol, set to ε here
    at_eps = bil.compile(source, overrides={"lower.tol": EPS})
    objective = jax.jit(jax.value_and_grad(at_eps.objective))
    sides = {"bil": run_bil, "api": lambda: prog.value_and_hypergrad(user, tol=EPS),
             "objective": lambda: _block(objective(jtheta))}
    if hand_call is not None:
        sides["hand"] = run_hand
    for k, call in peers.items():
        sides[k] = (lambda call: lambda: _block(call(jtheta)))(call)
        # the peer's result read as numbers, as the API returns them
        sides[k + "+read"] = (lambda call: lambda: _read(call(jtheta)))(call)
    first = {}
    for k, fn in sides.items():
        t = time.perf_counter()
        out = fn()
        first[k] = (time.perf_counter() - t, out)
    times = _alternating(sides, repeats)
    med = {k: float(np.median(v)) for k, v in times.items()}

    # Accuracy: each side's hypergradient against a tight reference.
    ref, _ = run_bil(1e-10, 1e-10)
    zr = _flat(ref.z)
    hb, (gn_b, res_b) = first["bil"][1]
    zb = _flat(hb.z)
    row = dict(problem=name, size=size, bil_ms=1e3 * med["bil"], api_ms=1e3 * med["api"],
               objective_ms=1e3 * med["objective"],
               bil_compile=first["bil"][0] - med["bil"], bil_lower=int(hb.lower_iters), bil_cg=int(hb.cg_iters),
               bil_gn=float(gn_b), bil_res=float(res_b), bil_err=_rel(zb, zr), api_err=_rel(_flat(first["api"][1][1]), zr),
               objective_err=_rel(_flat(first["objective"][1][1]), zr),
               bil_status=(int(hb.lower_status), int(hb.cg_status)), repeats=repeats,
               bil_iqr=1e3 * (np.percentile(times["bil"], 75) - np.percentile(times["bil"], 25)),
               peers={k: dict(ms=1e3 * med[k], read_ms=1e3 * med[k + "+read"], err=_rel(_flat(first[k][1][1]), zr),
                              compile=first[k][0] - med[k]) for k in peers})
    if hand_call is None:
        return row
    hh = first["hand"][1]
    mb, mh = med["bil"], med["hand"]
    zh = _flat(hh[1])
    lit_h, cit_h, gn_h, res_h = hh[4]
    row.update(
        hand_ms=1e3 * mh, ratio=mb / mh,
        hand_iqr=1e3 * (np.percentile(times["hand"], 75) - np.percentile(times["hand"], 25)),
        ratio_p10=float(np.percentile(times["bil"], 10) / np.percentile(times["hand"], 10)),
        hand_compile=first["hand"][0] - mh,
        hand_lower=int(np.sum(lit_h)), hand_lower_per=np.atleast_1d(np.asarray(lit_h)).tolist(),
        hand_cg=int(np.sum(cit_h)), hand_cg_per=np.atleast_1d(np.asarray(cit_h)).tolist(),
        hand_gn=float(gn_h), hand_res=float(res_h), agree=_rel(zb, zh), hand_err=_rel(zh, zr),
    )
    return row


def tv_case(size, repeats):
    src = (ROOT / "examples" / "tv_denoise.bil").read_text()
    src, n = re.subn(r"size=\d+", f"size={size}", src, count=1)   # the training images, not the held-out ones
    assert n == 1, "could not set size= in tv_denoise.bil"
    t = time.perf_counter()
    prog = bil.compile(src)
    prog.engine  # noqa: B018  (lowering)
    source = src
    t_front = time.perf_counter() - t
    d = prog.lowered.data["names"]
    noisy, clean = d["noisy"], d["clean"]

    def hand(theta, X0, Q0, eps, delta):
        return tv_hand(theta, X0["x"], Q0["x"], eps, delta, noisy, clean)

    X0 = prog.engine.X_init(prog._theta(None), prog.lowered.data)["x"]
    peers = {k: hp.tv(k, d, X0, EPS, DELTA, MAX_ITER) for k in PEERS}
    row = bench_case("tv_denoise (3 images)", f"{size}x{size}", prog, hand, repeats, peers, source=source)
    row["front"] = t_front
    return row


def digits_case(repeats):
    t = time.perf_counter()
    prog = bil.compile(ROOT / "examples" / "digits_penalties.bil")
    prog.engine  # noqa: B018
    t_front = time.perf_counter() - t
    d = prog.lowered.data["names"]

    def hand(theta, X0, Q0, eps, delta):
        return dig_hand(theta, X0["W"], Q0["W"], eps, delta, d["Xtr"], d["ytr"], d["Xval"], d["yval"])

    n_hypers = int(np.size(prog.lowered.theta0["theta"]))
    W0 = prog.engine.X_init(prog._theta(None), prog.lowered.data)["W"]
    peers = {k: hp.digits(k, d, W0, EPS, DELTA, MAX_ITER) for k in PEERS}
    row = bench_case(f"digits logistic ({n_hypers} hypers)", "64x10", prog, hand, repeats, peers,
                     source=ROOT / "examples" / "digits_penalties.bil")
    row["front"] = t_front
    counts = hp.lbfgs_evaluations(d, W0, jnp.asarray(prog.lowered.theta0["theta"]), EPS, MAX_ITER)
    print("digits lower solve, (iterations, value-and-gradient evaluations) with the initial one:",
          ", ".join(f"{k} {v}" for k, v in counts.items()))
    return row


def ridge_case(repeats):
    """ridge.bil (diabetes, 10 features, ``direct()``): peers only (benchmarks/ridge_peers.py has
    the hand-written closed form)."""
    t = time.perf_counter()
    prog = bil.compile(ROOT / "examples" / "ridge.bil")
    prog.engine  # noqa: B018
    t_front = time.perf_counter() - t
    d = prog.lowered.data["names"]
    peers = {k: hp.ridge(k, d, EPS, DELTA) for k in PEERS}
    row = bench_case("ridge (diabetes)", "221x10", prog, None, repeats, peers, source=ROOT / "examples" / "ridge.bil")
    row["front"] = t_front
    return row


def print_table(rows):
    rows = [r for r in rows if "hand_ms" in r]
    hdr = (f"{'problem':<28} {'size':>8} {'bil ms':>8} {'hand ms':>8} {'bil/hand':>8} "
           f"{'compile bil s':>13} {'compile hand s':>14} {'lower it bil/hand':>18} {'CG it bil/hand':>15}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['problem']:<28} {r['size']:>8} {r['bil_ms']:>8.2f} {r['hand_ms']:>8.2f} {r['ratio']:>8.3f} "
              f"{r['bil_compile']:>13.2f} {r['hand_compile']:>14.2f} "
              f"{str(r['bil_lower']) + '/' + str(r['hand_lower']):>18} "
              f"{str(r['bil_cg']) + '/' + str(r['hand_cg']):>15}")
    print()
    print("median of", rows[0]["repeats"], "warm samples each (alternating sides), ε = δ = 1e-6, float64, "
          f"{jax.devices()[0].platform}; iteration counts are summed over samples.")
    print("Accuracy (relative ‖z_bil − z_hand‖, and each against bil at ε = δ = 1e-10); "
          "final ‖∇g‖ and CG residual (stacked):")
    ok = True
    for r in rows:
        good = (r["agree"] <= AGREE and r["hand_gn"] <= EPS and r["hand_res"] <= DELTA
                and r["bil_gn"] <= EPS and r["bil_res"] <= DELTA and r["bil_status"] == (0, 0))
        ok &= good
        print(f"  {r['problem']} {r['size']}: {'ok' if good else 'FAIL'}  z agree {r['agree']:.1e}; "
              f"error vs reference bil {r['bil_err']:.1e} hand {r['hand_err']:.1e}; "
              f"‖∇g‖ bil {r['bil_gn']:.1e} hand {r['hand_gn']:.1e}; "
              f"CG residual bil {r['bil_res']:.1e} hand {r['hand_res']:.1e}")
        print(f"      hand per-sample iterations: lower {r['hand_lower_per']} CG {r['hand_cg_per']}; "
              f"IQR ms bil {r['bil_iqr']:.2f} hand {r['hand_iqr']:.2f}; "
              f"bil/hand of 10th percentiles {r['ratio_p10']:.3f}; spec parse+check+lower {r['front']:.2f}s")
    return ok


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CI smoke: fewer repeats, TV at 64x64 only (plus digits)")
    ap.add_argument("--repeats", type=int, default=None, help="timed samples per side (default 50, --quick 5)")
    ap.add_argument("--problems", default="ridge,tv,digits", help="comma-separated subset of ridge,tv,digits")
    args = ap.parse_args(argv)
    repeats = args.repeats or (5 if args.quick else 50)
    if repeats < 5:
        ap.error("--repeats must be at least 5")
    sizes = (64,) if args.quick else (64, 128)
    which = set(args.problems.split(","))

    rows = [ridge_case(repeats)] if "ridge" in which else []
    rows += [tv_case(s, repeats) for s in sizes] if "tv" in which else []
    rows += [digits_case(repeats)] if "digits" in which else []
    hp.print_peers(rows, PEERS, EPS)
    print()
    ok = print_table(rows) if any("hand_ms" in r for r in rows) else True
    if not ok:
        print(f"FAIL: a solve missed its tolerance, or bil and the hand-written hypergradients differ by "
              f"more than {AGREE:g} relative")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
