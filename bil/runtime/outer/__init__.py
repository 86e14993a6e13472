"""Outer loops over the compiled oracles: MAID (default), HOAG, gd, adam.

    run_outer(oracles, method, options, *, callback=None, state=None) -> OuterResult

* ``oracles``: an :class:`bil.runtime.oracles.AbstractOracles`.
* ``method``: ``"maid"`` | ``"hoag"`` | ``"gd"`` | ``"adam"``.
* ``options``: the keyword dict of the registered outer method
  (``bil/stdlib/methods.py``); missing keys take the registered defaults,
  unknown keys are an error.
* ``callback(record, state)``: called after every outer iteration with the
  history record and the resumable state; returning True stops the run
  (reason ``"stopped by callback"``).  Its time is excluded from ``wall_s``.
* ``state``: a state from ``OuterResult.state`` or the callback (possibly
  round-tripped through ``np.savez``/``np.load``); the run continues exactly
  where it stopped (bit-identical iterates and history, ``wall_s`` aside).

The loops run on the host and make one jitted oracle call at a time; the
oracles' accuracies are traced, so nothing recompiles across iterations.
History fields and the state layout: :mod:`bil.runtime.outer.history`.
"""

from __future__ import annotations

from typing import Callable

from bil.runtime.oracles import AbstractOracles
from bil.runtime.outer.history import FIELDS, OuterResult, finished_result, hyper_fields, make_record

__all__ = ["run_outer", "OuterResult", "METHODS", "FIELDS", "hyper_fields", "make_record", "outer_options"]

METHODS = ("maid", "hoag", "gd", "adam")


def outer_options(method: str, options) -> dict:
    """``options`` (a mapping, or the method's option object) with the registered defaults
    of ``method`` filled in, validated (:func:`bil.stdlib.methods.make_method`)."""
    from bil.stdlib.methods import make_method

    if method not in METHODS:
        raise ValueError(f"unknown outer method {method!r} (expected one of {', '.join(METHODS)})")
    return dict(make_method("outer", method, options).kwargs)


def run_outer(oracles: AbstractOracles, method: str, options: dict | None = None, *,
              callback: Callable[[dict, dict], bool | None] | None = None,
              state: dict | None = None) -> OuterResult:
    """Run the outer method ``method`` on ``oracles`` (see the module docstring)."""
    opts = outer_options(method, options)
    if state is not None and state.get("stop") is not None:
        # the run had stopped for good (converged, a failed solve) when this state was saved
        if str(state.get("method", method)) != method:
            raise ValueError(f"resume state belongs to outer method {state.get('method')!r}, not {method!r}")
        return finished_result(oracles, state)
    if method == "maid":
        from bil.runtime.outer.maid import run_maid

        return run_maid(oracles, opts, callback=callback, state=state)
    if method == "hoag":
        from bil.runtime.outer.hoag import run_hoag

        return run_hoag(oracles, opts, callback=callback, state=state)
    from bil.runtime.outer.plain import run_plain

    return run_plain(oracles, method, opts, callback=callback, state=state)
