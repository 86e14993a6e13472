"""Source text and spans: every IR node points back at the characters it came from."""

from __future__ import annotations

from dataclasses import dataclass, field


def split_lines(text: str) -> tuple[str, ...]:
    """The lines of ``text`` as the parser counts them: only ``\\n`` ends a line (a ``\\r``
    before it is dropped, so ``\\r\\n`` files read alike); ``\\f``, a lone ``\\r``, U+2028 and the
    other characters :meth:`str.splitlines` breaks at stay inside their line."""
    return tuple(ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n"))


@dataclass(frozen=True)
class Source:
    """A spec's text and the name it is reported under (a path or ``<string>``)."""

    text: str
    file: str = "<string>"
    lines: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lines", split_lines(self.text))

    @property
    def last_line(self) -> int:
        """The number of the last line (a final newline ends it; it does not start another)."""
        n = len(self.lines)
        return n - 1 if n > 1 and not self.lines[-1] else n

    def line(self, n: int) -> str:
        """The 1-based line ``n`` (empty past the end)."""
        return self.lines[n - 1] if 1 <= n <= len(self.lines) else ""

    def span(self, line: int, column: int, end_line: int | None = None, end_column: int | None = None) -> "Span":
        return Span(self, line, column, end_line or line, end_column or column + 1)


@dataclass(frozen=True)
class Span:
    """A 1-based, end-exclusive range in a :class:`Source`."""

    source: Source = field(repr=False, compare=False)
    line: int
    column: int
    end_line: int
    end_column: int

    @property
    def file(self) -> str:
        return self.source.file

    def text(self) -> str:
        """The characters the span covers (first line only when multi-line)."""
        src = self.source.line(self.line)
        end = self.end_column if self.end_line == self.line else len(src) + 1
        return src[self.column - 1 : end - 1]

    def render(self, width: int = 100) -> str:
        """The source line and a caret under the span (first line only).

        Lines longer than ``width`` are cut to a window around the span.
        """
        # control characters (a lone `\r`, `\f`, NUL) would move the terminal's cursor: one `?` each
        src = "".join(ch if ch.isprintable() or ch == "\t" else "?" for ch in self.source.line(self.line))
        end = self.end_column if self.end_line == self.line else len(src) + 1
        start = self.column - 1
        carets = max(1, min(end - self.column, width))
        if len(src) > width:
            lo = max(0, min(start - width // 4, len(src) - width))
            shown = src[lo : lo + width]
            prefix = "..." if lo > 0 else ""
            suffix = "..." if lo + width < len(src) else ""
            src, start = prefix + shown + suffix, start - lo + len(prefix)
            carets = max(1, min(carets, len(prefix) + len(shown) - start))
        gutter = f"{self.line:>4} | "
        pad = "".join("\t" if ch == "\t" else " " for ch in src[:start])
        return f"{gutter}{src}\n{' ' * (len(gutter) - 2)}| {pad}{'^' * carets}"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"

    def merge(self, other: "Span") -> "Span":
        """The smallest span covering both."""
        a, b = sorted([self, other], key=lambda s: (s.line, s.column))
        end = max([self, other], key=lambda s: (s.end_line, s.end_column))
        return Span(self.source, a.line, a.column, end.end_line, end.end_column)
