"""How the cost of a hypergradient grows with pixels × samples, and the same batch on 1 and 4 devices.

    python benchmarks/scaling.py            # batches 1, 4, 16, 64 × sizes 32, 64, 128, 256 (long on 2 cores)
    python benchmarks/scaling.py --quick    # batches 1, 4, 16 × sizes 32, 64 (a few minutes)
    python benchmarks/scaling.py --parts devices --batch 64 --size 32

The problem is ``examples/tv_denoise.bil`` (smoothed-TV denoising, FISTA lower solves, CG
adjoints) with B images of S×S pixels per sample (the stdlib's images, cycled; noise drawn per
image).  One hypergradient = the lower solves from the noisy images and the adjoint solves, at
θ₀, in one jitted call of the engine; its time is the median of ``--repeats`` calls after one
call that compiles (excluded).  Accuracy is fixed per pixel: the stacked lower gradient and the
adjoint residual to 1e-6·√(B·S²), i.e. each image's to 1e-6·S, so the iterations per image do
not grow with B or S and the cost should grow like B·S².  Memory is XLA's own account of the
compiled program (arguments + outputs + temporaries, ``memory_analysis()``).

Part ``devices``: the B-image batch in two subprocesses with 1 and 4 forced CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count``): each one's time per hypergradient, and
the largest difference of value and hypergradient between the two.  Forced CPU devices share the
machine's cores: they show that the split gives the same numbers and what it costs; where 4 are
faster than 1, it is because 4 devices run on 4 threads and use cores one device leaves idle, not
because there is more hardware.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACCURACY = 1e-6   # per pixel (see the module docstring)


def spec(batch: int, size: int) -> str:
    """examples/tv_denoise.bil with ``batch`` images of ``size``² pixels (no held-out data)."""
    from bil.stdlib.sources import _IMAGES

    names = [_IMAGES[i % len(_IMAGES)] for i in range(batch)]
    text = open(os.path.join(ROOT, "examples", "tv_denoise.bil")).read()
    lines = [ln for ln in text.splitlines() if not ln.startswith("data test_clean")]
    text = "\n".join(lines)
    old = 'denoising_pairs(["camera", "moon", "coins"], size=64'
    assert old in text, "examples/tv_denoise.bil changed: update benchmarks/scaling.py"
    return text.replace(old, f"denoising_pairs({json.dumps(names)}, size={size}")


def measure(batch: int, size: int, repeats: int) -> dict:
    """Median time per hypergradient (compile excluded), iterations, memory, and the numbers."""
    import bil
    from bil.runtime.lower_solve import _cap, _scalar

    prog = bil.compile(spec(batch, size))
    eng = prog.engine
    u = eng.u0
    X0 = eng.init_lower(u)
    Q0 = eng.init_adjoint(X0)
    tol = ACCURACY * np.sqrt(batch * size * size)

    def call():
        hg, _ = eng.hypergradient(u, X0, Q0, tol, tol)
        jax_block(hg)
        return hg

    t0 = time.perf_counter()
    hg = call()
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    key = next(k for k in eng._jitted if isinstance(k, tuple) and k[0] == "hg")
    dt = eng.low.dtype
    mem = eng._jitted[key].lower(u, X0, Q0, _scalar(tol, dt), _scalar(tol, dt), _cap(None),
                                 eng.low.data).compile().memory_analysis()
    peak = None if mem is None else (mem.argument_size_in_bytes + mem.output_size_in_bytes
                                     + mem.temp_size_in_bytes)
    x = next(iter(hg.x.values()))
    return {"batch": batch, "size": size, "pixels": batch * size * size, "time_s": float(np.median(times)),
            "compile_s": compile_s, "lower_iters": int(hg.lower_iters), "cg_iters": int(hg.cg_iters),
            "peak_mb": None if peak is None else peak / 2 ** 20, "value": float(hg.f),
            "grad": {k: float(np.ravel(v)[0]) for k, v in hg.z.items()}, "devices": len(x.sharding.device_set),
            "note": prog.lowered.layout.note if prog.lowered.layout is not None else "one device"}


def jax_block(tree):
    import jax

    jax.block_until_ready(tree)


def grid(batches, sizes, repeats) -> list[dict]:
    rows = []
    for b in batches:
        for s in sizes:
            r = measure(b, s, repeats)
            rows.append(r)
            print(f"  B={b:3d} S={s:4d}: {1e3 * r['time_s']:9.1f} ms  (compile {r['compile_s']:.1f} s)", flush=True)
    return rows


def print_grid(rows: list[dict]) -> None:
    base = rows[0]
    unit = base["time_s"] / base["pixels"]
    print("\nTime per hypergradient (median, compile excluded) against pixels × samples; "
          f"'per px' is the time per pixel relative to B={base['batch']}, S={base['size']}")
    print(f"| {'B':>3} | {'S':>4} | {'pixels':>9} | {'ms':>9} | {'per px':>6} | {'lower it/img':>12} | "
          f"{'CG it/img':>9} | {'peak MB':>8} |")
    print("|" + "|".join("-" * w for w in (5, 6, 11, 11, 8, 14, 11, 10)) + "|")
    for r in rows:
        rel = r["time_s"] / r["pixels"] / unit
        mb = "-" if r["peak_mb"] is None else f"{r['peak_mb']:.1f}"
        print(f"| {r['batch']:>3} | {r['size']:>4} | {r['pixels']:>9} | {1e3 * r['time_s']:>9.1f} | {rel:>6.2f} | "
              f"{r['lower_iters'] / r['batch']:>12.0f} | {r['cg_iters'] / r['batch']:>9.0f} | {mb:>8} |")


def on_devices(n: int, batch: int, size: int, repeats: int) -> dict:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", str(batch), str(size),
                          str(repeats)], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def devices_part(batch: int, size: int, repeats: int) -> None:
    one, four = on_devices(1, batch, size, repeats), on_devices(4, batch, size, repeats)
    diff = max([abs(one["value"] - four["value"])] + [abs(one["grad"][k] - four["grad"][k]) for k in one["grad"]])
    print(f"\n{batch} images of {size}×{size} on 1 and 4 forced CPU devices (subprocesses)")
    print(f"| devices | lower solution on | ms per hypergradient | ratio | largest difference |")
    print("|---|---|---|---|---|")
    for r in (one, four):
        print(f"| {4 if r is four else 1} | {r['devices']} device(s) | {1e3 * r['time_s']:.1f} | "
              f"{r['time_s'] / one['time_s']:.2f} | {'' if r is one else f'{diff:.1e}'} |")
    print(f"(4 devices: {four['note']})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="batches 1, 4, 16 × sizes 32, 64")
    ap.add_argument("--parts", default="grid,devices", help="grid, devices (comma-separated)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=None, help="images in the devices part [64]")
    ap.add_argument("--size", type=int, default=None, help="image size in the devices part [32]")
    ap.add_argument("--child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child)))
        return
    parts = set(args.parts.split(","))
    if "grid" in parts:
        batches, sizes = ([1, 4, 16], [32, 64]) if args.quick else ([1, 4, 16, 64], [32, 64, 128, 256])
        print_grid(grid(batches, sizes, args.repeats))
    if "devices" in parts:
        devices_part(args.batch or 64, args.size or 32, args.repeats)


if __name__ == "__main__":
    main()
