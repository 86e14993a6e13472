"""Plots of a run (matplotlib, Agg; no display needed).

* ``upper_vs_cost.png``: upper value against cumulative lower + CG iterations;
* ``upper_vs_time.png``: upper value against wall time;
* ``hypers.png``: each hyper's trajectory (user coordinates) over outer iterations;
* ``montage.png`` (image problems only): reference / input(s) / reconstruction
  per sample, with the PSNR against the reference in the titles.

Everything but the montage is drawn from the history records alone, so
``bil plot DIR`` redraws from ``history.csv``; the montage is drawn from
``images.npz``, which ``bil run`` writes beside ``lower.npz`` for image problems.

Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot),
so plotting never touches global state or needs a display.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

__all__ = ["plot_history", "image_panels", "write_images", "read_images", "plot_montage", "plot_run_dir", "psnr"]

#: data names taken as the clean reference of an image problem, in order of preference
REFERENCE_NAMES = ("clean", "truth", "ground_truth", "gt", "target", "reference", "original", "x_true", "sharp")
#: at most this many samples are shown in a montage
MONTAGE_SAMPLES = 4
IMAGES_NAME = "images.npz"


def _figure(w: float = 6.4, h: float = 4.2):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=110, layout="constrained")


def _save(fig, path: Path) -> Path:
    from bil.runtime.results import atomic_open

    # a unique temporary name beside it, renamed into place: a concurrent `bil plot` or a kill
    # never leaves a torn or missing plot
    with atomic_open(path, binary=True) as f:
        fig.savefig(f, format="png")
    return path


def _col(history: list[dict], name: str) -> np.ndarray:
    return np.array([float(r.get(name, np.nan)) for r in history], dtype=float)


def _log_if_positive(ax, y: np.ndarray) -> None:
    """Log scale for positive values spanning more than a decade; else plain numbers (no offset)."""
    finite = y[np.isfinite(y)]
    if finite.size and np.all(finite > 0) and finite.max() / finite.min() > 10:
        ax.set_yscale("log")
    else:
        from matplotlib.ticker import ScalarFormatter

        fmt = ScalarFormatter(useOffset=False)
        fmt.set_scientific(True)
        fmt.set_powerlimits((-3, 4))
        ax.yaxis.set_major_formatter(fmt)


def _upper_plot(history: list[dict], x: np.ndarray, xlabel: str, title: str, path: Path) -> Path:
    fig = _figure()
    ax = fig.add_subplot()
    y = _col(history, "upper")
    if len(x) and np.any(np.isfinite(y)):
        ax.plot(x, y, marker="o", markersize=3, linewidth=1.5)
        last = int(np.flatnonzero(np.isfinite(y))[-1])
        ax.annotate(f"{y[last]:.6g}", (x[last], y[last]), textcoords="offset points", xytext=(-4, 6), ha="right",
                    fontsize=8)
    else:
        # (an all-NaN history, a run whose first solve failed, used to draw empty axes with a
        # made-up range and no word)
        ax.text(0.5, 0.5, "no finite upper values recorded" if len(x) else "no iterations recorded",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
    _log_if_positive(ax, y)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("upper objective")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


_HYPER_COL = re.compile(r"^hyper\.(?P<name>.+?)(?:\[(?P<i>\d+)\])?$")


def _hyper_groups(history: list[dict]) -> dict[str, list[str]]:
    """``{name: [column, ...]}`` for the ``hyper.*`` columns, in column order."""
    groups: dict[str, list[str]] = {}
    for rec in history[:1]:
        for c in rec:
            m = _HYPER_COL.match(c)
            if m:
                groups.setdefault(m.group("name"), []).append(c)
    return groups


def _hyper_plot(history: list[dict], path: Path) -> Path:
    from matplotlib.ticker import MaxNLocator

    groups = _hyper_groups(history)
    n = max(1, len(groups))
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = _figure(4.2 * cols, 3.2 * rows)
    it = _col(history, "iter")
    if not groups:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no hyper trajectories recorded\n(arrays of more than 16 values are left out)",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return _save(fig, path)
    for k, (name, columns) in enumerate(groups.items()):
        ax = fig.add_subplot(rows, cols, k + 1)
        ys = []
        for c in columns:
            y = _col(history, c)
            ys.append(y)
            label = c[len("hyper."):] if len(columns) > 1 else None
            ax.plot(it, y, marker="o" if len(it) < 40 else None, markersize=3, linewidth=1.3, label=label)
        _log_if_positive(ax, np.concatenate(ys))
        if 1 < len(columns) <= 16:   # (up to the 16 entries history.csv keeps)
            ax.legend(fontsize=7 if len(columns) <= 8 else 5, ncols=1 if len(columns) <= 8 else 2)
        ax.set_title(name)
        ax.set_xlabel("outer iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))   # no 1.5th iteration
        ax.grid(True, alpha=0.3)
    fig.suptitle("hypers (user coordinates)")
    return _save(fig, path)


def plot_history(history: list[dict], plots_dir: str | os.PathLike, problem: str = "") -> list[Path]:
    """Draw the three history plots into ``plots_dir``; return their paths."""
    d = Path(plots_dir)
    cost = _col(history, "lower_iters_total") + _col(history, "cg_iters_total")
    prefix = f"{problem}: " if problem else ""
    return [
        _upper_plot(history, cost, "cumulative lower + CG iterations", f"{prefix}upper value vs cost",
                    d / "upper_vs_cost.png"),
        _upper_plot(history, _col(history, "wall_s"), "wall time (s)", f"{prefix}upper value vs time",
                    d / "upper_vs_time.png"),
        _hyper_plot(history, d / "hypers.png"),
    ]


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
    from bil.compiler import ir

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
    return _save(fig, Path(path))


def plot_run_dir(out_dir: str | os.PathLike, history: list[dict] | None = None, problem: str = "") -> list[Path]:
    """(Re)draw every plot of a run folder from ``history.csv`` (and ``images.npz``)."""
    from bil.runtime.results import read_history_csv

    out = Path(out_dir)
    if history is None:
        history = read_history_csv(out / "history.csv")
    paths = plot_history(history, out / "plots", problem)
    panels = read_images(out / IMAGES_NAME)
    if panels is not None:
        paths.append(plot_montage(panels, out / "plots" / "montage.png"))
    return paths
