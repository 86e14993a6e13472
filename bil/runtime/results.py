"""A run's results on disk: ``result.json``, ``history.csv``, ``hypers.npz``, ``lower.npz``.

``result.json`` has exactly the keys of :data:`RESULT_KEYS`:

``problem``      the spec's problem name
``hypers``       name -> value (a number, or a nested list), user coordinates
``upper``        the upper value at the learned hypers (lower problem solved to
                 ``lower.tol``; the history's ``upper`` is at each method's own accuracy)
``iterations``   outer iterations (over resumed runs too)
``lower_iters``  lower-solver iterations, total
``cg_iters``     CG iterations, total
``wall_s``       wall time of the outer loop, seconds (over resumed runs too)
``reason``       why the run stopped
``versions``     ``{"bil": ..., "jax": ...}``
``spec_sha256``  SHA-256 of the spec file's bytes

``history.csv`` has one row per outer iteration and the history record's fields
as columns (:data:`bil.runtime.outer.history.FIELDS`, then ``hyper.*``); floats
are written with ``repr`` so they read back bit for bit.  ``hypers.npz`` and
``lower.npz`` hold the learned hypers and the lower variables (with a leading
sample axis for ``per sample`` problems) as arrays.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

__all__ = ["RESULT_KEYS", "spec_sha256", "result_dict", "write_result_json", "write_history_csv",
           "read_history_csv", "write_arrays", "write_all", "history_columns"]

RESULT_KEYS = ("problem", "hypers", "upper", "iterations", "lower_iters", "cg_iters", "wall_s", "reason",
               "versions", "spec_sha256")
INT_COLUMNS = frozenset({"iter", "backtracks", "lower_iters", "cg_iters", "lower_iters_total", "cg_iters_total",
                         "sample_grads"})


def spec_sha256(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def data_sha256(data: Mapping[str, Any]) -> str:
    """A digest of a program's evaluated data (names, dtypes, shapes and values): what
    ``load(...)`` read may change between a run and its ``--resume`` while the spec does not."""
    h = hashlib.sha256()
    for name in sorted(data):
        a = np.ascontiguousarray(np.asarray(data[name]))
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def versions() -> dict[str, str]:
    import jax

    from bil.core.version import __version__

    return {"bil": __version__, "jax": jax.__version__}


def _json_value(a) -> Any:
    """A number or nested list; non-finite floats as strings ("nan", "inf")."""
    arr = np.asarray(a)
    if arr.ndim == 0:
        return _json_scalar(arr.item())
    return [_json_value(x) for x in arr]


def _json_scalar(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def result_dict(*, problem: str, hypers: Mapping[str, Any], upper: float, history: list[dict],
                state: Mapping[str, Any] | None, reason: str, spec_bytes: bytes | str) -> dict:
    """The ``result.json`` content (keys :data:`RESULT_KEYS`, in that order)."""
    state = dict(state or {})
    last = history[-1] if history else {}
    iterations = int(state.get("iteration", last.get("iter", len(history))))
    lower_iters = int(state.get("lower_iters_total", last.get("lower_iters_total", 0)))
    cg_iters = int(state.get("cg_iters_total", last.get("cg_iters_total", 0)))
    wall = float(state.get("wall_s", last.get("wall_s", 0.0)))
    out = {
        "problem": str(problem),
        "hypers": {k: _json_value(v) for k, v in hypers.items()},
        "upper": _json_scalar(float(upper)),
        "iterations": iterations,
        "lower_iters": lower_iters,
        "cg_iters": cg_iters,
        "wall_s": wall,
        "reason": str(reason),
        "versions": versions(),
        "spec_sha256": spec_sha256(spec_bytes),
    }
    assert tuple(out) == RESULT_KEYS
    return out


# ------------------------------------------------------------- atomic writes
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, binary: bool = False, fsync: bool = False):
    """Open a temporary file beside ``path``; on success rename it onto ``path``.

    Readers (and a run killed at any moment) see the old file or the new one,
    never a partial one.  The file gets the usual permissions (0666 & ~umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", newline="", encoding="utf-8")) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _atomic_write(path: Path, write) -> None:
    with atomic_open(path) as f:
        write(f)


def write_result_json(path: str | os.PathLike, result: dict) -> None:
    _atomic_write(Path(path), lambda f: f.write(json.dumps(result, indent=2) + "\n"))


def history_columns(history: Iterable[dict]) -> list[str]:
    """The record fields first (in record order), then any column seen later."""
    cols: list[str] = []
    seen = set()
    for rec in history:
        for k in rec:
            if k not in seen:
                seen.add(k)
                cols.append(k)
    if not cols:
        from bil.runtime.outer.history import FIELDS

        cols = list(FIELDS)
    return cols


def write_history_csv(path: str | os.PathLike, history: list[dict]) -> None:
    cols = history_columns(history)

    def write(f):
        w = csv.writer(f, lineterminator="\n")
        w.writerow(cols)
        for rec in history:
            w.writerow([_csv_cell(rec.get(c, "")) for c in cols])

    _atomic_write(Path(path), write)


def _csv_cell(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(int(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return repr(float(v))  # shortest round-trip form: reads back bit for bit
    return str(v)


def read_history_csv(path: str | os.PathLike) -> list[dict]:
    """Records back from ``history.csv`` (ints for the counter columns, floats otherwise)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return []
    cols, out = rows[0], []
    for row in rows[1:]:
        if not row:
            continue
        rec = {}
        for c, v in zip(cols, row):
            if v == "":
                rec[c] = float("nan")
            elif c in INT_COLUMNS:
                rec[c] = int(float(v))
            else:
                rec[c] = float(v)
        out.append(rec)
    return out


def write_arrays(path: str | os.PathLike, arrays: Mapping[str, Any]) -> None:
    """``np.savez`` of name -> array, written atomically."""
    with atomic_open(path, binary=True) as f:
        np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})


#: the files :func:`write_all` writes (a fresh ``bil run`` removes an earlier run's first)
OUTPUT_NAMES = ("result.json", "history.csv", "hypers.npz", "lower.npz")


def write_all(out_dir: str | os.PathLike, *, problem: str, result, spec_bytes: bytes | str) -> dict:
    """Write ``result.json``, ``history.csv``, ``hypers.npz`` and ``lower.npz`` for a
    :class:`bil.Result`; return the ``result.json`` dict."""
    out = Path(out_dir)
    res = result_dict(problem=problem, hypers=result.hypers, upper=result.upper, history=result.history,
                      state=result.state, reason=result.reason, spec_bytes=spec_bytes)
    write_history_csv(out / "history.csv", result.history)
    write_arrays(out / "hypers.npz", result.hypers)
    write_arrays(out / "lower.npz", result.lower)
    write_result_json(out / "result.json", res)
    return res
