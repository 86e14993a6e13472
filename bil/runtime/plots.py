"""Plots of a run (matplotlib, Agg; no display needed).

* ``upper_vs_cost.png``: upper value against cumulative lower + CG iterations;
* ``upper_vs_samples.png``: upper value against cumulative sample gradients (the
  history's ``sample_grads``: one axis for full-batch and minibatch methods alike);
* ``upper_vs_time.png``: upper value against wall time; all from iteration 0 (the
  starting point, from ``start.npz``), on a log scale of F where F spans decades, else of
  F − final F (``result.json``'s ``upper``; the best recorded F where a recorded value is
  below it), the reference value stated, where that gap spans decades;
* ``hypers.png``: trajectories, or histograms for hypers of more than 16 entries
  (:mod:`bil.runtime.plot_hypers`);
* ``montage.png`` (image problems only): reference / input(s) / reconstruction
  per sample, with the PSNR against the reference in the titles.

``bil run`` writes ``start.npz`` (F(θ₀) and θ₀: the history starts at iteration 1) and,
for image problems, ``images.npz`` beside ``lower.npz``; ``bil plot DIR`` redraws
everything from ``history.csv`` and those files (each optional).

Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot),
so plotting never touches global state or needs a display.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from bil.runtime.outer.history import hyper_fields
from bil.runtime.plot_hypers import column as _col, figure as _figure, hypers_figure, plain_numbers, readable_log_ticks

__all__ = ["plot_history", "start_point", "write_start", "read_start", "with_start", "START_NAME", "image_panels",
           "write_images", "read_images", "plot_montage", "plot_run_dir", "psnr"]

#: data names taken as the clean reference of an image problem, in order of preference
REFERENCE_NAMES = ("clean", "truth", "ground_truth", "gt", "target", "reference", "original", "x_true", "sharp")
#: at most this many samples are shown in a montage
MONTAGE_SAMPLES = 4
IMAGES_NAME = "images.npz"
#: the starting point (F(θ₀) and θ₀), which the history (1-based) does not hold
START_NAME = "start.npz"


def _save(fig, path: Path) -> Path:
    from bil.runtime.results import atomic_open

    # a unique temporary name beside it, renamed into place: a concurrent `bil plot` or a kill
    # never leaves a torn or missing plot
    with atomic_open(path, binary=True) as f:
        fig.savefig(f, format="png")
    return path


def _upper_scale(y: np.ndarray, final: float | None, cut_off: bool = False) -> tuple[str, float, float, str]:
    """How to draw the upper values ``y``: ``("log", ...)`` for positive values spanning more than
    a decade (F itself on a log axis); ``("gap", ref, floor, name)`` when F − ref spans more than
    two decades: log of F − ref, so the progress near the optimum shows.  ref is the run's final
    value (``result.json``'s ``upper``, re-solved to ``lower.tol``) when no recorded value lies
    below it (by more than 1e-6 relative), else the smallest recorded value (an oscillating adam
    run, or values recorded at a loose accuracy); values within ``floor`` of ref (a tenth of the
    smallest positive gap, at least 1e-6 relative) are drawn at ``floor``.  Else ``"linear"``.
    A run ``cut_off`` by its iteration cap or budget gets no gap axis: its last value is not an
    optimum, and F − final F would fall to 0 at the end as if it had converged."""
    f = y[np.isfinite(y)]
    if f.size < 2:
        return "linear", 0.0, 0.0, ""
    if np.all(f > 0) and f.max() / f.min() > 10:
        return "log", 0.0, 0.0, ""
    if cut_off:
        return "linear", 0.0, 0.0, ""
    best = float(f.min())
    if final is not None and np.isfinite(final) and best >= final - 1e-6 * abs(final):
        ref, name = float(final), "final F"
    else:
        ref, name = min(best, final) if final is not None and np.isfinite(final) else best, "best F"
    pos = (f - ref)[f > ref]
    if pos.size and pos.max() / pos.min() > 100:
        return "gap", ref, max(float(pos.min()) / 10, 1e-6 * abs(ref)), name
    return "linear", 0.0, 0.0, ""


def _upper_plot(history: list[dict], x: np.ndarray, xlabel: str, title: str, path: Path,
                final: float | None = None, cut_off: bool = False) -> Path:
    fig = _figure()
    ax = fig.add_subplot()
    y = _col(history, "upper")
    it = _col(history, "iter")
    mode, ref, floor, refname = _upper_scale(y, final, cut_off)
    if len(x) and np.any(np.isfinite(y)):
        shown = np.maximum(y - ref, floor) if mode == "gap" else y
        ax.plot(x, shown, marker="o", markersize=3, linewidth=1.5)
        last = int(np.flatnonzero(np.isfinite(y))[-1])
        if len(it) and it[0] == 0 and np.isfinite(y[0]):
            ax.annotate(f"start {y[0]:.6g}", (x[0], shown[0]), textcoords="offset points", xytext=(6, 4),
                        fontsize=8, va="bottom")
        ax.annotate(f"{y[last]:.7g}", (x[last], shown[last]), textcoords="offset points", xytext=(-4, 6),
                    ha="right", fontsize=8)
        if mode == "gap":
            low = np.isfinite(y) & (y - ref <= floor)
            ax.plot(x[low], shown[low], marker="v", markersize=7, color="C3", linestyle="none", fillstyle="none",
                    label=f"{refname} = {ref:.7g}\n(▽: within {floor:.1g} of it)")
            ax.legend(fontsize=8, loc="best")
    else:
        # (an all-NaN history, a run whose first solve failed, used to draw empty axes with a
        # made-up range and no word)
        ax.text(0.5, 0.5, "no finite upper values recorded" if len(x) else "no iterations recorded",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
    if mode == "linear":
        plain_numbers(ax.yaxis)
    else:
        ax.set_yscale("log")
        readable_log_ticks(ax.yaxis, y if mode == "log" else np.maximum(y - ref, floor))
    ax.set_ylabel({"log": "upper objective F (log scale)",
                   "gap": f"F − {refname}  (log scale)",
                   "linear": "upper objective F"}[mode])
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3, which="both" if mode != "linear" else "major")
    return _save(fig, path)


def with_start(history: list[dict], start: dict | None) -> list[dict]:
    """The history with the starting point prepended as iteration 0 (cost and time 0), when
    ``start`` (:func:`read_start`) is known and the history does not already begin there."""
    if not start or (history and int(float(history[0].get("iter", 1))) == 0):
        return list(history)
    rec = dict(iter=0, upper=start["upper"], lower_iters_total=0, cg_iters_total=0, sample_grads=0, wall_s=0.0)
    cols = set(history[0]) if history else set()
    rec.update({k: v for k, v in hyper_fields(start["hypers"]).items() if k in cols})
    return [rec, *history]


def plot_history(history: list[dict], plots_dir: str | os.PathLike, problem: str = "",
                 start: dict | None = None, final: Mapping[str, Any] | None = None,
                 final_upper: float | None = None, cut_off: bool = False) -> list[Path]:
    """Draw the history plots (three, four with ``sample_grads``) into ``plots_dir``; return their paths.

    ``start`` (:func:`read_start`) adds the starting point as iteration 0 and tells which hypers
    are ``positive`` (log axes); ``final`` (the learned hypers, ``hypers.npz``) gives the hypers
    of more than 16 entries, which the history leaves out, their histogram panels;
    ``final_upper`` (``result.json``'s ``upper``) is the reference of a log-of-gap upper axis,
    which a run ``cut_off`` by its iteration cap or budget does not get."""
    d = Path(plots_dir)
    history = with_start(history, start)
    cost = _col(history, "lower_iters_total") + _col(history, "cg_iters_total")
    prefix = f"{problem}: " if problem else ""
    paths = [
        _upper_plot(history, cost, "cumulative lower + CG iterations", f"{prefix}upper value vs cost",
                    d / "upper_vs_cost.png", final_upper, cut_off),
        _upper_plot(history, _col(history, "wall_s"), "wall time (s)", f"{prefix}upper value vs time",
                    d / "upper_vs_time.png", final_upper, cut_off),
        _save(hypers_figure(history, start=start, final=final), d / "hypers.png"),
    ]
    if history and all("sample_grads" in r for r in history):   # histories written before the column lack it
        paths.insert(1, _upper_plot(history, _col(history, "sample_grads"), "cumulative sample gradients (rows)",
                                    f"{prefix}upper value vs sample gradients", d / "upper_vs_samples.png",
                                    final_upper, cut_off))
    return paths


# ---------------------------------------------------------------- the starting point
def start_point(program) -> dict:
    """``{"upper": F(θ₀), "hypers": θ₀, "positive": {name: bool}}`` at the spec's initial hypers
    (user coordinates), the lower problem solved to ``lower.tol`` from its initial values with
    the value oracle (a training procedure: its steps, by the hypergradient oracle), both
    already compiled by a run; ``upper`` is NaN where that solve fails."""
    eng = program.engine
    st = program.state
    u0 = eng.u0
    x0 = eng.init_lower(u0)
    if st.is_train:
        # the run compiled the hypergradient, not the value oracle: a training procedure's
        # value is exact, and this reuses that compilation (seconds on examples/learned_lr.bil)
        v = eng.hypergrad(u0, x0, eng.init_adjoint(x0), 0.0, 0.0)
    else:
        tol = max(float(st.options["lower"]["tol"]), eng.mu() * eng.accuracy_floor(u0, x0)[0])
        v = eng.value(u0, x0, tol / eng.mu())
    f = float(v.f) if int(v.lower_status) == 0 else float("nan")
    return {"upper": f, "hypers": eng.to_user(u0),
            "positive": {n: h.kind == "positive" and h.bounds is None for n, h in st.hypers.items()}}


def write_start(out_dir: str | os.PathLike, start: dict) -> Path:
    """``start.npz``: ``upper``, ``hyper.NAME`` (user coordinates), ``positive.NAME``."""
    from bil.runtime.results import write_arrays

    arrays: dict[str, Any] = {"upper": np.float64(start["upper"])}
    arrays.update({f"hyper.{n}": np.asarray(v) for n, v in start["hypers"].items()})
    arrays.update({f"positive.{n}": np.bool_(v) for n, v in start["positive"].items()})
    path = Path(out_dir) / START_NAME
    write_arrays(path, arrays)
    return path


def read_start(path: str | os.PathLike) -> dict | None:
    """What :func:`write_start` wrote, or None when there is no such file."""
    path = Path(path)
    if not path.is_file():
        return None
    out: dict[str, Any] = {"upper": float("nan"), "hypers": {}, "positive": {}}
    with np.load(path, allow_pickle=False) as z:
        for key in z.files:
            kind, _, name = key.partition(".")
            if key == "upper":
                out["upper"] = float(z[key])
            elif kind == "hyper":
                out["hypers"][name] = np.asarray(z[key])
            elif kind == "positive":
                out["positive"][name] = bool(z[key])
    return out


def _final(path: Path) -> tuple[float | None, bool]:
    """(``upper`` of a run's ``result.json``, was the run cut off by max_iter or budget?);
    (None, False) when unreadable."""
    import json

    from bil.runtime.outer.stops import Stop

    try:
        res = json.loads(path.read_text())
        return float(res["upper"]), Stop.of(str(res.get("reason", ""))) in (Stop.MAX_ITER, Stop.BUDGET)
    except (OSError, ValueError, KeyError, TypeError):
        return None, False


def _read_arrays(path: str | os.PathLike) -> dict | None:
    path = Path(path)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        return {k: np.asarray(z[k]) for k in z.files}


# ---------------------------------------------------------------- images
def psnr(ref: np.ndarray, img: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB, the peak being the reference's value range."""
    ref = np.asarray(ref, dtype=np.float64)
    img = np.asarray(img, dtype=np.float64)
    mse = float(np.mean((ref - img) ** 2))
    peak = float(ref.max() - ref.min()) or 1.0
    if mse == 0.0:
        return float("inf")
    return 10.0 * math.log10(peak * peak / mse)


def image_panels(program, lower: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]] | None:
    """For an image problem, ``{"ref": {name: arr}, "in": {...}, "rec": {...}}`` with a
    leading sample axis; ``None`` when the problem is not one.

    An image problem has a lower variable that is a 2-D image per sample (both
    sides at least 8) and data of the same per-sample shape, one of which is
    the reference: a data name such as ``clean`` (:data:`REFERENCE_NAMES`), or
    else the image data that the upper objective refers to.
    """
    from bil.core import ir

    st = program.state
    per_sample = st.n_samples is not None
    for var, info in st.lower_vars.items():
        shape = tuple(info.shape)
        if len(shape) != 2 or min(shape) < 8 or var not in lower:
            continue
        rec = np.asarray(lower[var], dtype=np.float64)
        rec = rec if per_sample else rec[None]
        cands: dict[str, np.ndarray] = {}
        for name, arr in st.data.items():
            a = np.asarray(arr)
            if a.dtype.kind not in "fiu":
                continue
            if per_sample and name in st.per_sample and a.shape[1:] == shape:
                cands[name] = a.astype(np.float64)
            elif not per_sample and a.shape == shape:
                cands[name] = a.astype(np.float64)[None]
        if not cands:
            continue
        ref = next((n for n in REFERENCE_NAMES if n in cands), None)
        if ref is None:
            used = ir.free_names(st.upper.expr) if st.upper is not None else set()
            ref = next((n for n in cands if n in used), None)
        if ref is None:
            continue
        inputs = {n: a for n, a in cands.items() if n != ref}
        return {"ref": {ref: cands[ref]}, "in": inputs, "rec": {var: rec}}
    return None


def write_images(out_dir: str | os.PathLike, panels: dict) -> Path:
    from bil.runtime.results import write_arrays

    path = Path(out_dir) / IMAGES_NAME
    flat = {f"{role}__{name}": arr[:MONTAGE_SAMPLES] for role, group in panels.items() for name, arr in group.items()}
    write_arrays(path, flat)
    return path


def read_images(path: str | os.PathLike) -> dict | None:
    path = Path(path)
    if not path.is_file():
        return None
    panels: dict[str, dict[str, np.ndarray]] = {"ref": {}, "in": {}, "rec": {}}
    with np.load(path, allow_pickle=False) as z:
        for key in z.files:
            role, _, name = key.partition("__")
            if role in panels:
                panels[role][name] = np.asarray(z[key])
    return panels if panels["ref"] and panels["rec"] else None


def plot_montage(panels: dict, path: str | os.PathLike) -> Path:
    """Rows: samples; columns: reference, inputs, reconstruction; PSNR in the titles."""
    (ref_name, ref), = panels["ref"].items()
    (rec_name, rec), = panels["rec"].items()
    columns = [(ref_name, ref, False)] + [(n, a, True) for n, a in panels["in"].items()] + \
              [(f"{rec_name} (reconstruction)", rec, True)]
    n = min(len(ref), MONTAGE_SAMPLES)
    ncol = len(columns)
    fig = _figure(2.6 * ncol, 2.7 * n)
    lo, hi = float(ref[:n].min()), float(ref[:n].max())
    for i in range(n):
        for j, (name, arr, score) in enumerate(columns):
            ax = fig.add_subplot(n, ncol, i * ncol + j + 1)
            ax.imshow(arr[i], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            title = name
            if score:
                title += f"\nPSNR {psnr(ref[i], arr[i]):.2f} dB"
            if n > 1 and j == 0:
                title = f"sample {i}: " + title
            ax.set_title(title, fontsize=9)
            ax.set_axis_off()
    # which peak: a spec's psnr(x, ref) defaults to peak 1, so say it
    fig.supxlabel(f"PSNR peak: the {ref_name} image's value range (as scikit-image's data_range)",
                  fontsize=8, color="0.35")
    return _save(fig, Path(path))


def plot_run_dir(out_dir: str | os.PathLike, history: list[dict] | None = None, problem: str = "") -> list[Path]:
    """(Re)draw every plot of a run folder from ``history.csv`` (and ``start.npz``, ``hypers.npz``,
    ``images.npz`` where present)."""
    from bil.runtime.results import read_history_csv

    out = Path(out_dir)
    if history is None:
        history = read_history_csv(out / "history.csv")
    upper, cut_off = _final(out / "result.json")
    paths = plot_history(history, out / "plots", problem, start=read_start(out / START_NAME),
                         final=_read_arrays(out / "hypers.npz"), final_upper=upper, cut_off=cut_off)
    panels = read_images(out / IMAGES_NAME)
    if panels is not None:
        paths.append(plot_montage(panels, out / "plots" / "montage.png"))
    return paths
