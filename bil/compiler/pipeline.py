"""The front end as a straight line: parse, then each pass of :data:`PIPELINE`."""

from __future__ import annotations

import time
from typing import Any, Mapping

from bil.compiler.errors import BilError
from bil.compiler.passes import PIPELINE
from bil.compiler.state import CompileState
from bil.grammar import parse


def check(text: str, file: str = "<string>", data: Mapping[str, Any] | None = None,
          timings: dict[str, float] | None = None, overrides: Mapping[str, Any] | None = None) -> CompileState:
    """Parse and run every pass; raise :class:`BilError` on the first error.

    ``overrides`` (``{"solve.outer.max_iter": 20, "hyper.alpha": "0.1"}``, see
    :mod:`bil.compiler.overrides`) are applied to the parsed module first.
    """
    t0 = time.perf_counter()
    module = parse(text, file)
    if overrides:
        from bil.compiler.overrides import apply_overrides

        module = apply_overrides(module, overrides)
    if timings is not None:
        timings["parse"] = time.perf_counter() - t0
    from bil.compiler.source import Source

    st = CompileState(source=module.span.source if module.span else Source(text, file), module=module,
                      data_override=dict(data or {}))
    if module.span is None or not module.statements:
        raise BilError("the spec is empty", st.source.span(1, 1),
                       "a spec needs at least `hyper`, `lower { ... }` and `upper minimize ...`")
    for p in PIPELINE:
        t = time.perf_counter()
        try:
            p.apply(st)
        except BilError:
            raise
        except RecursionError:
            raise BilError("the spec nests too deeply to compile", st.source.span(1, 1),
                           "split long chains (of `def`s calling each other, or of nested calls) with "
                           "intermediate `def`s or `data` names") from None
        if timings is not None:
            timings[p.name] = time.perf_counter() - t
    return st
