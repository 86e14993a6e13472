"""Time to first result (issue 15, item 3): for every example, the wall time of `bil check`, of a
first `bil run` with an empty compilation cache and of a second run with the same cache, and the
number of XLA compilations of the first run.

Each command is a fresh `python -m bil` process (start-up, imports, data loading, compilation
and the run itself all count), run one at a time.  The machine's load average is printed with
every row: on a shared machine the times are only comparable at similar load.

    python benchmarks/startup.py                                  # all examples/*.bil
    python benchmarks/startup.py ridge tv_denoise                 # some of them
    python benchmarks/startup.py --set deblur=solve.outer.max_iter=5   # a capped run (shown in the table)
    python benchmarks/startup.py --json times.json                # also keep the rows (appended as they come)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _bil(args: list[str], env: dict, timeout: float) -> tuple[float, int, str]:
    """(wall seconds, exit code, stderr) of ``python -m bil ARGS``."""
    t = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-m", "bil", *args], env=env, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return time.perf_counter() - t, -1, ""
    return time.perf_counter() - t, p.returncode, p.stderr


def measure(name: str, sets: list[str], timeout: float) -> dict:
    """One example's row: check, first run (empty cache, compilations counted), second run."""
    spec = str(EXAMPLES / f"{name}.bil")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    extra = [a for s in sets for a in ("--set", s)]
    row = {"example": name, "set": sets, "load_before": os.getloadavg()[0]}
    row["check_s"], row["check_rc"], _ = _bil(["check", spec], env, timeout)
    with tempfile.TemporaryDirectory(prefix="bil-startup-") as tmp:
        env["BIL_CACHE_DIR"] = str(Path(tmp) / "cache")
        first_env = {**env, "JAX_LOG_COMPILES": "1"}
        row["first_s"], row["first_rc"], err = _bil(["run", spec, "--quiet", "--out", f"{tmp}/a", *extra],
                                                    first_env, timeout)
        row["compilations"] = sum(line.startswith("Compiling ") for line in err.splitlines())
        row["second_s"], row["second_rc"], _ = _bil(["run", spec, "--quiet", "--out", f"{tmp}/b", *extra],
                                                    env, timeout)
    row["load_after"] = os.getloadavg()[0]
    return row


def _cell(seconds: float, rc: int) -> str:
    if rc == -1:
        return f"> {seconds:.0f} (timeout)"
    return f"{seconds:.1f}" + ("" if rc in (0, 1) else f" (exit {rc})")


def table(rows: list[dict]) -> str:
    out = ["| example | `bil check` s | first `bil run` s (empty cache) | compilations | second run s (cached) "
           "| load avg | run with |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        sets = ", ".join(f"`--set {s}`" for s in r["set"]) or "as written"
        out.append(f"| {r['example']} | {_cell(r['check_s'], r['check_rc'])} | {_cell(r['first_s'], r['first_rc'])} "
                   f"| {r['compilations']} | {_cell(r['second_s'], r['second_rc'])} "
                   f"| {r['load_before']:.1f}–{r['load_after']:.1f} | {sets} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("examples", nargs="*", help="example names (default: every examples/*.bil)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=KEY=VALUE",
                    help="run example NAME with `--set KEY=VALUE` (repeatable; shown in the table)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per command (default 900)")
    ap.add_argument("--json", metavar="PATH", help="append each row to PATH as a JSON line")
    args = ap.parse_args(argv)
    names = args.examples or sorted(p.stem for p in EXAMPLES.glob("*.bil"))
    overrides: dict[str, list[str]] = {}
    for s in args.sets:
        name, _, kv = s.partition("=")
        overrides.setdefault(name, []).append(kv)
    rows = []
    for name in names:
        rows.append(measure(name, overrides.get(name, []), args.timeout))
        print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(rows[-1]) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
