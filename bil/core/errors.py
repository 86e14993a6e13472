"""Diagnostics: ``FILE:LINE:COL: error: MESSAGE``, the line, a caret, a hint.

Semantic errors are raised in passes (never inside lark callbacks) as
:class:`BilError`; lark's own errors are converted in one place,
:mod:`bil.grammar.parser`.
"""

from __future__ import annotations

from dataclasses import dataclass

from bil.core.source import Span

#: the most diagnostics one check reports (as compilers do: the rest usually follow from these)
MAX_ERRORS = 20


class BilError(Exception):
    """An error in a spec (or at run time, attributed to a spec line).

    ``str(err)`` renders the full diagnostic.  Attributes: ``file``, ``line``,
    ``column``, ``message``, ``hint``, ``span`` (of the first error), and
    ``errors``: every independent error found by the check (``[err]`` when there
    is one; ``str(err)`` then renders them all and their count).
    """

    severity = "error"

    def __init__(self, message: str, span: Span | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint
        self.errors: list[BilError] = [self]

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
        one = render(self.severity, self.message, self.span, self.hint)
        if len(self.errors) <= 1:
            return one
        rest = [render(e.severity, e.message, e.span, e.hint) for e in self.errors[1:]]
        n = len(self.errors)
        where = f"{self.file}: " if self.file else ""
        more = " (stopped at this many; fix these first)" if n >= MAX_ERRORS else ""
        return "\n".join([one, *rest, f"{where}{n} errors{more}"])


class Diagnostics:
    """The independent errors of one check, collected up to :data:`MAX_ERRORS`.

    A pass checks independent statements inside ``with diag.guard() as g:``; an
    error there is recorded (``g.failed``) and the pass goes on with the next
    statement, skipping whatever depends on a failed one (so that errors do not
    cascade).  The pipeline calls :meth:`raise_any` after each pass.
    """

    def __init__(self, cap: int = MAX_ERRORS):
        self.cap = cap
        self.errors: list[BilError] = []
        self._once: set = set()

    def add(self, err: BilError) -> None:
        """Record ``err`` (and the errors it carries) once each; raise them all at the cap."""
        seen = {_key(e) for e in self.errors}
        for e in err.errors:
            if _key(e) not in seen:
                seen.add(_key(e))
                self.errors.append(e)
        if len(self.errors) >= self.cap:
            self.raise_any()

    def once(self, key) -> bool:
        """True the first time ``key`` is asked about: for an error reported at its first
        occurrence only (an undeclared name used ten times is one mistake)."""
        if key in self._once:
            return False
        self._once.add(key)
        return True

    def guard(self) -> "_Guard":
        return _Guard(self)

    def raise_any(self) -> None:
        """Raise the recorded errors as one :class:`BilError` (the first, carrying all), if any."""
        if self.errors:
            errors = sorted(self.errors[: self.cap], key=lambda e: (e.line or 0, e.column or 0))  # source order
            first = errors[0]
            first.errors = errors
            first.__suppress_context__ = True
            raise first.with_traceback(None)


class _Guard:
    """``with diag.guard() as g``: a :class:`BilError` in the block is recorded, not raised."""

    def __init__(self, diag: Diagnostics):
        self.diag, self.failed = diag, False

    def __enter__(self) -> "_Guard":
        return self

    def __exit__(self, typ, err, tb) -> bool:
        if isinstance(err, BilError):
            self.failed = True
            self.diag.add(err)
            return True
        return False


def _key(e: BilError) -> tuple:
    return (e.file, e.line, e.column, e.message)


class BilRuntimeError(BilError):
    """A failure while solving (NaN, divergence, a cap hit), named at the spec line."""


class BilUsageError(BilError, ValueError):
    """A bad argument to the Python API (an unknown hyper, a value outside its domain):
    a :class:`BilError` with a hint, and a ``ValueError`` for code that catches those."""


class BilInternalError(BilError):
    """A bug in bil met while compiling a spec (an exception no check anticipated): reported
    as an error that names the spec and asks for a bug report; the CLI exits 3."""

    @classmethod
    def of(cls, exc: BaseException, file: str | None) -> "BilInternalError":
        first = (str(exc).splitlines() or [""])[0][:300]
        err = cls(f"internal error while compiling {file or 'the spec'}: {type(exc).__name__}: {first}", None,
                  "this is a bug in bil, not in the spec: please report it with the spec "
                  "(set BIL_TRACEBACK=1 to see the traceback)")
        err.__cause__ = exc
        return err


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
