"""Outer loops over the compiled oracles: MAID (default), HOAG, gd, adam; SOBA and SABA
(:mod:`bil.runtime.stochastic`) over minibatches of ``sampled`` rows.

    run_outer(oracles, method, options, *, callback=None, state=None) -> OuterResult

* ``oracles``: an :class:`bil.runtime.oracles.AbstractOracles`.
* ``method``: ``"maid"`` | ``"hoag"`` | ``"gd"`` | ``"adam"`` | ``"soba"`` | ``"saba"``.
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
History fields and the state layout: :mod:`bil.runtime.outer.history`; the loop protocol and
the one driver that runs every method: :mod:`bil.runtime.outer.driver`.
"""

from __future__ import annotations

from typing import Callable

__all__ = ["run_outer", "OuterResult", "METHODS", "FIELDS", "hyper_fields", "make_record", "outer_options",
           "make_loop"]

METHODS = ("maid", "hoag", "gd", "adam", "soba", "saba", "adaptive")
#: loaded on first use, so that ``bil.runtime.outer.stops`` imports without JAX (the CLI's need)
_LAZY = {"OuterResult": "history", "FIELDS": "history", "hyper_fields": "history", "make_record": "history"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"bil.runtime.outer.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def outer_options(method: str, options) -> dict:
    """``options`` (a mapping, or the method's option object) with the registered defaults
    of ``method`` filled in, validated (:func:`bil.stdlib.methods.make_method`)."""
    from bil.stdlib.methods import make_method

    if method not in METHODS:
        raise ValueError(f"unknown outer method {method!r} (expected one of {', '.join(METHODS)})")
    return dict(make_method("outer", method, options).kwargs)


def make_loop(oracles, method: str, opts: dict):
    """The outer loop of ``method`` with the full options ``opts`` (:func:`outer_options`)."""
    if method == "maid":
        from bil.runtime.outer.maid import Maid

        return Maid.from_options(oracles, opts)
    if method == "adaptive":   # minibatch oracles (bil.runtime.stochastic.oracles.StochasticOracles)
        from bil.runtime.outer.adaptive_loop import AdaptiveLoop

        return AdaptiveLoop.from_options(oracles, opts)
    if method == "hoag":
        from bil.runtime.outer.hoag import Hoag

        return Hoag.from_options(oracles, opts)
    if method in ("soba", "saba"):
        from bil.runtime.stochastic.loop import StochasticLoop

        return StochasticLoop(oracles, method, opts)
    from bil.runtime.outer.plain import Plain

    return Plain.from_options(oracles, method, opts)


def run_outer(oracles, method: str, options: dict | None = None, *,
              callback: Callable[[dict, dict], bool | None] | None = None,
              state: dict | None = None):
    """Run the outer method ``method`` on ``oracles`` (see the module docstring)."""
    from bil.runtime.outer.driver import drive
    from bil.runtime.outer.history import finished_result

    opts = outer_options(method, options)
    if state is not None and state.get("stop") is not None:
        # the run had stopped for good (converged, a failed solve) when this state was saved
        if str(state.get("method", method)) != method:
            raise ValueError(f"resume state belongs to outer method {state.get('method')!r}, not {method!r}")
        return finished_result(oracles, state)
    return drive(make_loop(oracles, method, opts), callback, state)
