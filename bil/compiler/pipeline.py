"""The front end as a straight line: parse, then each pass of :data:`PIPELINE`.

Passes record independent errors in ``state.diag`` and go on; after each pass
the errors found so far are raised together (a later pass would only repeat
them as consequences).  Relative paths are taken from ``state.base_dir``
throughout (data, hyper and lower initial values, options, ``--set`` values).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping

from bil.core.errors import BilError
from bil.compiler.passes import PIPELINE
from bil.compiler.recursion import too_deep
from bil.core.source import Source
from bil.compiler.state import CompileState
from bil.grammar import parse
from bil.stdlib import sources

#: passes whose recorded errors leave a state the next pass can check without repeating them
#: (a name defined twice: the first definition stands; a reserved word as a name: still bound)
GOES_ON = frozenset({"collect"})


def spec_folder(file: str, base_dir: str | os.PathLike | None = None) -> Path:
    """The absolute folder relative paths in the spec ``file`` are taken from: ``base_dir`` if
    given, else the spec's folder, else (a spec given as text) the current folder."""
    if base_dir is not None:
        return Path(base_dir).expanduser().resolve()
    if file == "<string>":
        return Path.cwd()
    return Path(file).expanduser().resolve().parent


def check(text: str, file: str = "<string>", data: Mapping[str, Any] | None = None,
          timings: dict[str, float] | None = None, overrides: Mapping[str, Any] | None = None,
          base_dir: str | os.PathLike | None = None) -> CompileState:
    """Parse and run every pass; raise :class:`BilError` (carrying every independent
    error found, see :class:`bil.core.errors.Diagnostics`) on errors.

    ``overrides`` (``{"solve.outer.max_iter": 20, "hyper.alpha": "0.1"}``, see
    :mod:`bil.compiler.overrides`) are applied to the parsed module first.
    ``base_dir``: see :func:`spec_folder`.
    """
    folder = spec_folder(file, base_dir)
    token = sources.base_dir.set(folder)
    origin = sources.base_origin.set(
        "`base_dir=` ({})" if base_dir is not None else "the spec's folder ({})" if file != "<string>" else
        "the current folder ({}), as the spec was given as text (`base_dir=` names another)")
    try:
        return _check(text, file, data, timings, overrides, folder)
    finally:
        sources.base_origin.reset(origin)
        sources.base_dir.reset(token)


def _check(text, file, data, timings, overrides, folder: Path) -> CompileState:
    t0 = time.perf_counter()
    module = parse(text, file)
    if overrides:
        from bil.compiler.overrides import apply_overrides

        module = apply_overrides(module, overrides)
    if timings is not None:
        timings["parse"] = time.perf_counter() - t0
    st = CompileState(source=module.span.source if module.span else Source(text, file), module=module,
                      data_override=dict(data or {}), base_dir=folder)
    if module.span is None or not module.statements:
        raise BilError("the spec is empty", st.source.span(1, 1),
                       "a spec needs at least `hyper`, `lower { ... }` and `upper minimize ...`")
    for p in PIPELINE:
        t = time.perf_counter()
        stopped = True   # by an error the pass raised (one it recorded in st.diag lets it go on)
        try:
            p.apply(st)
            stopped = False
        except BilError as e:
            st.diag.add(e)
        except RecursionError as e:   # located at the expression whose expansion ran out of stack
            st.diag.add(too_deep(e, st.source, st.source.span(1, 1)))
        if stopped or p.name not in GOES_ON:
            st.diag.raise_any()
        if timings is not None:
            timings[p.name] = time.perf_counter() - t
    return st
