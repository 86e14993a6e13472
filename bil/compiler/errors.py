"""Diagnostics: ``FILE:LINE:COL: error: MESSAGE``, the line, a caret, a hint.

Semantic errors are raised in passes (never inside lark callbacks) as
:class:`BilError`; lark's own errors are converted in one place,
:mod:`bil.grammar.parser`.
"""

from __future__ import annotations

from dataclasses import dataclass

from bil.compiler.source import Span


class BilError(Exception):
    """An error in a spec (or at run time, attributed to a spec line).

    ``str(err)`` renders the full diagnostic.  Attributes: ``file``, ``line``,
    ``column``, ``message``, ``hint``, ``span``.
    """

    severity = "error"

    def __init__(self, message: str, span: Span | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint

    @property
    def file(self) -> str | None:
        return self.span.file if self.span else None

    @property
    def line(self) -> int | None:
        return self.span.line if self.span else None

    @property
    def column(self) -> int | None:
        return self.span.column if self.span else None

    def __str__(self) -> str:
        return render(self.severity, self.message, self.span, self.hint)


class BilRuntimeError(BilError):
    """A failure while solving (NaN, divergence, a cap hit), named at the spec line."""


class BilUsageError(BilError, ValueError):
    """A bad argument to the Python API (an unknown hyper, a value outside its domain):
    a :class:`BilError` with a hint, and a ``ValueError`` for code that catches those."""


@dataclass(frozen=True)
class Warning_:
    """A compile-time warning (same format as errors, severity ``warning``)."""

    message: str
    span: Span | None = None
    hint: str | None = None

    def __str__(self) -> str:
        return render("warning", self.message, self.span, self.hint)


def render(severity: str, message: str, span: Span | None, hint: str | None) -> str:
    head = f"{span}: {severity}: {message}" if span else f"{severity}: {message}"
    parts = [head]
    if span is not None:
        parts.append(span.render())
    if hint:
        parts.append(f"hint: {hint}")
    return "\n".join(parts)
