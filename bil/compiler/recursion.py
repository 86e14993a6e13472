"""Where a compiler pass ran out of Python stack: a located "nests too deeply" error.

The parser's guard (:func:`bil.grammar.guards.check_depth`) bounds how deeply the
*text* nests, but a pass can still recurse further than Python's stack allows: a chain
of 300 ``def``s each calling the previous one is shallow text that inlines into one
deep expression.  The :class:`RecursionError` itself says nothing about where; the
frames it unwound through do: each recursive pass holds the IR node it is working on
(with its :class:`~bil.core.source.Span`) in a local variable.  The outermost such
nodes on the statement's line lead to the expression the user wrote that started the deep
descent (the call of the last ``def`` of the chain); the innermost one shows how far it got.
"""

from __future__ import annotations

from types import TracebackType

from bil.core import ir
from bil.core.errors import BilError
from bil.core.source import Source, Span

_HINT = ("split long chains (of `def`s calling each other, or of nested calls) with intermediate `def`s or "
         "`data` names")


def _node_spans(tb: TracebackType | None, source: Source | None):
    """Spans of IR expressions held by the frames of ``tb``, outermost frame first (one per frame)."""
    while tb is not None:
        for v in tb.tb_frame.f_locals.values():
            span = getattr(v, "span", None) if isinstance(v, (ir.Expr, ir.Def, ir.Minimize)) else None
            if isinstance(span, Span) and (source is None or span.source is source):
                yield span
                break
        tb = tb.tb_next


def too_deep(exc: RecursionError, source: Source | None, fallback: Span | None = None) -> BilError:
    """The located error for a :class:`RecursionError` raised while compiling ``source``:
    at the outermost expression the unwound frames were working on (else ``fallback``),
    naming the line the descent had reached when the stack ran out."""
    spans = list(_node_spans(exc.__traceback__, source))
    if not spans:
        return BilError("the spec nests too deeply to compile", fallback, _HINT)
    # the frames form one chain, each node inside the one before: the last of them still on the
    # first one's line is the deepest expression written there (the call of the chain's last `def`)
    outer, inner = spans[0], spans[-1]
    for span in spans:
        if span.line != spans[0].line:
            break
        outer = span
    reached = f"; the expansion had reached line {inner.line} when Python's stack ran out" \
        if inner.line != outer.line else ""
    return BilError("this expression nests too deeply to compile (after expanding `def` calls and "
                    "nested operations)", outer, _HINT + reached)
