"""``hypers.png``: what the hypers did during a run, and the axis helpers all plots share.

A hyper with at most 16 entries (:data:`bil.runtime.outer.history.MAX_FLAT_HYPER`) has
history columns and gets its trajectory over the outer iterations (iteration 0 is the
starting point when it is known).  A larger one has no columns; it gets a histogram of its
entries, start against learned, and for a matrix a heat map of the learned values.  Hypers
of a ``positive`` domain are drawn on log axes (so are other hypers whose values are all
positive and span more than a decade); log axes get plain-number ticks when they span less
than three decades.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import numpy as np

from bil.runtime.outer.history import MAX_FLAT_HYPER

__all__ = ["hypers_figure", "column", "figure", "plain_numbers", "readable_log_ticks"]

_HYPER_COL = re.compile(r"^hyper\.(?P<name>.+?)(?:\[(?P<i>\d+)\])?$")


def figure(w: float = 6.4, h: float = 4.2):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=110, layout="constrained")


def column(history: list[dict], name: str) -> np.ndarray:
    return np.array([float(r.get(name, np.nan)) for r in history], dtype=float)


def plain_numbers(axis) -> None:
    """Plain numbers on a linear axis (no offset such as "+3.2036"; powers of ten outside 1e-3..1e4)."""
    from matplotlib.ticker import ScalarFormatter

    fmt = ScalarFormatter(useOffset=False)
    fmt.set_scientific(True)
    fmt.set_powerlimits((-3, 4))
    axis.set_major_formatter(fmt)


def readable_log_ticks(axis, values: np.ndarray) -> None:
    """Ticks a reader can read on a log axis: within a decade, a handful of plain numbers
    (matplotlib would show one tick or none); within three decades 1, 2, 5 × 10^k as plain
    numbers; beyond that matplotlib's powers of ten."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullFormatter, NullLocator

    v = values[np.isfinite(values) & (values > 0)]
    if not v.size:
        return
    lo, hi = float(v.min()), float(v.max())
    fmt = FuncFormatter(lambda t, _: f"{t:.3g}")
    if hi / lo < 10:
        ticks = [t for t in MaxNLocator(nbins=5).tick_values(lo, hi) if t > 0]
        if len(ticks) < 2 or lo == hi:
            ticks = [lo, hi] if lo != hi else [lo]
        axis.set_major_locator(FixedLocator(ticks))
        axis.set_minor_locator(NullLocator())
        axis.set_major_formatter(fmt)
    elif hi / lo < 1e3:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(fmt)
        axis.set_minor_formatter(NullFormatter())


def _hyper_groups(history: list[dict]) -> dict[str, list[str]]:
    """``{name: [column, ...]}`` for the ``hyper.*`` columns, in column order."""
    groups: dict[str, list[str]] = {}
    for rec in history[:1]:
        for c in rec:
            m = _HYPER_COL.match(c)
            if m:
                groups.setdefault(m.group("name"), []).append(c)
    return groups


def _is_log(name: str, values: np.ndarray, positive: Mapping[str, bool]) -> bool:
    v = values[np.isfinite(values)]
    if not v.size or np.any(v <= 0):
        return False
    if name in positive:
        return bool(positive[name])
    return v.max() / v.min() > 10


def _trajectory(ax, history: list[dict], name: str, columns: list[str], positive) -> None:
    from matplotlib.ticker import MaxNLocator

    it = column(history, "iter")
    ys = []
    for c in columns:
        y = column(history, c)
        ys.append(y)
        label = c[len("hyper."):] if len(columns) > 1 else None
        ax.plot(it, y, marker="o" if len(it) < 40 else None, markersize=3, linewidth=1.3, label=label)
    allv = np.concatenate(ys)
    if _is_log(name, allv, positive):
        ax.set_yscale("log")
        readable_log_ticks(ax.yaxis, allv)
        ax.set_ylabel("log scale", fontsize=8)
    else:
        plain_numbers(ax.yaxis)
    if 1 < len(columns) <= 4:
        ax.legend(fontsize=7)
    elif 4 < len(columns) <= MAX_FLAT_HYPER:   # beside the axes: inside, so many entries hid the curves
        ax.legend(fontsize=7 if len(columns) <= 8 else 6, ncols=1 if len(columns) <= 8 else 2,
                  loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_title(name)
    ax.set_xlabel("outer iteration (0 = start)" if len(it) and it[0] == 0 else "outer iteration")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))   # no 1.5th iteration
    ax.grid(True, alpha=0.3)


def _histogram(ax, name: str, learned: np.ndarray, start: np.ndarray | None, log: bool) -> None:
    """Start vs learned distribution of a many-entry hyper's entries (log-spaced bins on a log
    axis for a positive one); a constant start is a vertical line, not a one-bin spike."""
    vals = [learned.ravel()] + ([start.ravel()] if start is not None else [])
    allv = np.concatenate(vals)
    allv = allv[np.isfinite(allv)]
    lo, hi = (float(allv.min()), float(allv.max())) if allv.size else (0.0, 1.0)
    if lo == hi:
        lo, hi = (lo / 2, hi * 2) if log else (lo - 0.5, hi + 0.5)
    bins = np.geomspace(lo, hi, 31) if log else np.linspace(lo, hi, 31)
    if start is not None:
        s = start.ravel()
        if np.all(s == s[0]):
            ax.axvline(s[0], color="C1", linestyle="--", linewidth=1.5, label=f"start: all {s.size} = {s[0]:.3g}")
        else:
            ax.hist(s, bins=bins, histtype="step", color="C1", linewidth=1.5, label="start")
    ax.hist(learned.ravel(), bins=bins, color="C0", alpha=0.7, label=f"learned ({learned.size} entries)")
    if log:
        ax.set_xscale("log")
        readable_log_ticks(ax.xaxis, allv)
    ax.set_title(f"{name}: entries, start vs learned", fontsize=10)
    ax.set_xlabel(f"{name} (log scale)" if log else name)
    ax.set_ylabel("entries")
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)


#: a 3-D hyper of at most this many matrices (filters) is drawn as that many tiles
MAX_TILES = 16


def _heat_map(fig, ax, name: str, learned: np.ndarray, start: np.ndarray | None, log: bool) -> None:
    """The learned values of a matrix hyper (log10 for a positive one), rows × columns, or of a
    stack of at most ``MAX_TILES`` matrices (filters) side by side; with a constant start, a
    diverging map centred there (red above the start, blue below)."""
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.ticker import MaxNLocator

    tiled = learned.ndim == 3 and learned.shape[0] <= MAX_TILES
    if tiled:   # a stack of small matrices (filters): side by side, one column of gap between them
        k, h, w = learned.shape
        a = np.full((h, k * (w + 1) - 1), np.nan)
        for i in range(k):
            a[:, i * (w + 1):i * (w + 1) + w] = learned[i]
    else:
        a = learned.reshape(learned.shape[0], -1)
    shown = np.log10(a) if log else a
    norm, cmap = None, "viridis"
    if start is not None and np.all(start == start.flat[0]):
        c = float(np.log10(start.flat[0]) if log else start.flat[0])
        lo, hi = float(np.nanmin(shown)), float(np.nanmax(shown))
        if lo < c < hi:
            norm, cmap = TwoSlopeNorm(vcenter=c, vmin=lo, vmax=hi), "RdBu_r"
    im = ax.imshow(shown, aspect="equal" if tiled else "auto", interpolation="nearest", cmap=cmap, norm=norm)
    centre = f" (white = start {start.flat[0]:.3g})" if norm is not None else ""
    fig.colorbar(im, ax=ax, label=f"log10 {name}" if log else name)
    ax.set_title(f"{name}: learned values{centre}", fontsize=10)
    if tiled:
        ax.set_xticks([(w - 1) / 2 + i * (w + 1) for i in range(k)], [f"[{i}]" for i in range(k)])
        ax.set_yticks([])
        ax.set_xlabel(f"{name}[i]: {k} matrices of {h}×{w}")
    else:
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(integer=True))
        shape = "×".join(map(str, learned.shape[1:]))
        ax.set_xlabel(f"axis 1 ({a.shape[1]})" if learned.ndim == 2 else f"axes 1.. ({shape}, flattened)")
        ax.set_ylabel(f"axis 0 ({a.shape[0]})")


def hypers_figure(history: list[dict], start: dict | None = None, final: Mapping[str, Any] | None = None):
    """The figure of ``hypers.png``: trajectories of the small hypers, histograms (plus heat
    maps) of the large ones."""
    positive = (start or {}).get("positive", {})
    starts = (start or {}).get("hypers", {})
    groups = _hyper_groups(history)
    big = {n: np.asarray(v, dtype=float) for n, v in (final or {}).items()
           if np.size(v) > MAX_FLAT_HYPER and n not in groups}
    panels = [("traj", n) for n in groups] + [(kind, n) for n, v in big.items()
                                              for kind in (("hist", "heat") if v.ndim >= 2 else ("hist",))]
    n = max(1, len(panels))
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = figure(4.4 * cols, 3.4 * rows)
    if not panels:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no hypers recorded\n(arrays of more than 16 values are drawn from hypers.npz, "
                "which this folder lacks)", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    for k, (kind, name) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        if kind == "traj":
            _trajectory(ax, history, name, groups[name], positive)
            continue
        v = big[name]
        log = _is_log(name, v, positive)
        s = starts.get(name)
        s = None if s is None else np.broadcast_to(np.asarray(s, dtype=float), v.shape)
        if kind == "hist":
            _histogram(ax, name, v, s, log)
        else:
            _heat_map(fig, ax, name, v, s, log)
    fig.suptitle("hypers (user coordinates)")
    return fig
