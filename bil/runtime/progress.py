"""Live progress of an outer run and the final summary table (rich).

On a terminal the progress is a live line (bar over the iteration cap, upper
value, ‖z‖, ε, δ, step, cumulative lower + CG cost); elsewhere (a pipe, a CI
log) it is one plain line per iteration.  Progress goes to stderr, the summary
table to stdout.  ``quiet`` silences both.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Mapping

import numpy as np

__all__ = ["RunProgress", "summary_table", "print_summary", "format_hyper"]


def _num(v: Any, fmt: str = ".4e") -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(f):
        return "-"
    return format(f, fmt)


def format_hyper(value: Any, max_items: int = 6) -> str:
    """A hyper's value for display: a number, a short list, or a summary of a large array."""
    a = np.asarray(value, dtype=np.float64)
    if a.ndim == 0:
        return f"{float(a):.6g}"
    if a.size <= max_items:
        return "[" + ", ".join(f"{float(v):.4g}" for v in a.ravel()) + "]"
    shape = "×".join(map(str, a.shape))
    return f"array[{shape}]  min {a.min():.4g}  mean {a.mean():.4g}  max {a.max():.4g}"


class RunProgress:
    """Context manager: ``with RunProgress(...) as p: ... p.update(record)``."""

    def __init__(self, problem: str, method: str, total: int | None, *, start: int = 0, quiet: bool = False,
                 file=None):
        from rich.console import Console

        self.problem = problem
        self.method = method
        self.total = total
        self.start = start
        self.quiet = quiet
        self.console = Console(file=file or sys.stderr, highlight=False)
        self.live = self.console.is_terminal and not quiet
        self._progress = None
        self._task = None
        self._live = None
        self._stats = None

    def __enter__(self) -> "RunProgress":
        if self.quiet:
            return self
        if self.live:
            from rich.console import Group
            from rich.live import Live
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, \
                TimeElapsedColumn
            from rich.text import Text

            # the bar on one line, the numbers on the next (they fit an 80-column terminal)
            self._progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"),
                                      BarColumn(bar_width=30), MofNCompleteColumn(), TimeElapsedColumn(),
                                      console=self.console)
            self._task = self._progress.add_task(f"{self.problem} ({self.method})", total=self.total,
                                                 completed=self.start)
            self._stats = Text("  compiling..." if not self.start else f"  resuming after iteration {self.start}",
                               no_wrap=False)
            self._live = Live(Group(self._progress, self._stats), console=self.console, refresh_per_second=8,
                              transient=False)
            self._live.__enter__()
        else:
            what = f"{self.problem}: outer {self.method}" + (f", up to {self.total} iterations" if self.total else "")
            if self.start:
                what += f", resuming after iteration {self.start}"
            self.console.print(what)
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    @staticmethod
    def stats(rec: Mapping[str, Any]) -> str:
        cost = int(rec.get("lower_iters_total", 0)) + int(rec.get("cg_iters_total", 0))
        # ε and δ, unless both are 0 (an unrolled training procedure has no solve accuracies)
        acc = (f"ε {_num(rec.get('eps'), '.1e')}  δ {_num(rec.get('delta'), '.1e')}  "
               if rec.get("eps") or rec.get("delta") else "")
        return (f"upper {_num(rec.get('upper'), '.6g')}  ‖z‖ {_num(rec.get('grad_norm'), '.2e')}  {acc}"
                f"step {_num(rec.get('step'), '.2e')}  cost {cost}")

    def update(self, rec: Mapping[str, Any]) -> None:
        if self.quiet:
            return
        if self._live is not None:
            self._progress.update(self._task, completed=int(rec["iter"]))
            self._stats.plain = "  " + self.stats(rec)
        else:
            width = len(str(self.total)) if self.total else 3
            self.console.print(f"  iter {int(rec['iter']):>{width}}  {self.stats(rec)}", soft_wrap=True)

    def note(self, text: str) -> None:
        if not self.quiet:
            (self._live.console if self._live is not None else self.console).print(text, soft_wrap=True)


def summary_table(result: Mapping[str, Any], out_dir: str | None = None):
    """A rich Table of a ``result.json`` dict."""
    from rich.table import Table

    t = Table(title=f"{result['problem']}" + (f"  →  {out_dir}" if out_dir else ""), show_header=True,
              header_style="bold", title_justify="left")
    t.add_column("", style="bold")
    t.add_column("value")
    for name, v in result["hypers"].items():
        t.add_row(f"hyper {name}", format_hyper(v))
    t.add_row("upper", f"{float(result['upper']):.10g}" if isinstance(result["upper"], (int, float))
              else str(result["upper"]))
    t.add_row("iterations", str(result["iterations"]))
    t.add_row("lower iterations", str(result["lower_iters"]))
    t.add_row("CG iterations", str(result["cg_iters"]))
    t.add_row("wall time", f"{float(result['wall_s']):.2f} s")
    t.add_row("stopped", str(result["reason"]))
    return t


def print_summary(result: Mapping[str, Any], out_dir: str | None = None, file=None) -> None:
    from rich.console import Console

    Console(file=file or sys.stdout, highlight=False).print(summary_table(result, out_dir))
