"""The base of every method option class, and the checks their ``__post_init__`` run.

A method (``lbfgs``, ``implicit``, ``maid``, ...) is one frozen dataclass
(:mod:`bil.stdlib.methods`): its fields are the keywords a spec may give, with
their defaults, and constructing it validates them.  A bad value raises
:class:`OptionError`, which names the argument (``arg``) so the compiler reports
it at that argument's span, and is a ``ValueError`` for Python callers.
"""

from __future__ import annotations

import dataclasses
import inspect
from types import MappingProxyType
from typing import Any, ClassVar, Mapping

from bil.stdlib.errors import StdlibError
from bil.stdlib.registry import register

#: the most iterations, steps or terms any count may ask for: loops count in int32
MAX_COUNT = 10**9


class OptionError(StdlibError, ValueError):
    """A bad method option: ``message``, ``hint``, and ``arg`` the keyword at fault."""


@dataclasses.dataclass(frozen=True)
class MethodOptions:
    """A method with its options (subclasses are frozen dataclasses).

    ``name`` and ``kind`` are set by :func:`bil.stdlib.methods.register_method`;
    ``aliases`` maps another accepted keyword to the field it stands for.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    aliases: ClassVar[Mapping[str, str]] = MappingProxyType({})

    @property
    def kwargs(self) -> Mapping[str, Any]:
        """Every field (aliases included) by name, read-only."""
        return MappingProxyType({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    @property
    def span(self):
        """Where the spec gave this method (None for a default)."""
        return self.__dict__.get("_span")

    def at(self, span) -> "MethodOptions":
        """This object, remembering ``span`` (not a field: it does not take part in equality)."""
        object.__setattr__(self, "_span", span)
        return self

    def replace(self, **changes) -> "MethodOptions":
        """A copy with ``changes`` applied and validated (an alias replaces its field too)."""
        kw = dict(self.kwargs)
        for alias, target in self.aliases.items():
            if alias in changes or target in changes:
                kw.pop(alias, None)
                kw.pop(target, None)
        return type(self)(**{**kw, **changes}).at(self.span)

    def show(self) -> str:
        """``name(k=v, ...)`` with every option but the aliases."""
        inner = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items() if k not in self.aliases)
        return f"{self.name}({inner})"

    @classmethod
    def call_text(cls) -> str:
        """``name(p, k=default, ...)`` without aliases: the README's and LANGUAGE.md's table rows."""
        parts = []
        for p in inspect.signature(cls).parameters.values():
            if p.name in cls.aliases:
                continue
            parts.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
        return f"{cls.name}({', '.join(parts)})"

    @classmethod
    def summary(cls) -> str:
        """The docstring's first paragraph on one line."""
        return " ".join(inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0].split())

    def _set(self, field: str, value) -> None:
        """Normalise a field in ``__post_init__`` (the dataclass is frozen)."""
        object.__setattr__(self, field, value)

    def _label(self, field: str) -> str:
        return f"`{self.name}({field}=...)`"


def register_method(name: str, *, kind: str):
    """Register an option class under ``name`` in the ``kind`` namespace ("solver", ...)."""
    def deco(cls):
        cls.name, cls.kind = name, kind
        register(name, kind=kind)(cls)
        return cls

    return deco


# ------------------------------------------------------------------ checks
def is_number(v, test=lambda v: True) -> bool:
    """``v`` is a real number (not a bool or a string) and passes ``test``."""
    return not isinstance(v, bool) and isinstance(v, (int, float)) and bool(test(v))


def positive(m: MethodOptions, *fields: str) -> None:
    """Each field, unless None, is a number > 0."""
    for f in fields:
        v = getattr(m, f)
        if v is not None and not is_number(v, lambda v: v > 0):
            raise OptionError(f"{m._label(f)} must be > 0, got {v!r}", arg=f)


def count(m: MethodOptions, *fields: str, least: int = 1) -> None:
    """Each field, unless None, is an integer in [least, MAX_COUNT]."""
    for f in fields:
        check_count(getattr(m, f), m._label(f)[1:-1], f, least)


def check_count(v, label: str, arg: str | None = None, least: int = 1) -> None:
    """``v`` is an integer ≥ ``least`` (1: positive) a loop can count (``label`` names it)."""
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < least:
        what = "a positive integer" if least == 1 else f"an integer >= {least}"
        raise OptionError(f"`{label}` must be {what}, got {v!r}", arg=arg)
    if v > MAX_COUNT:
        raise OptionError(f"`{label}` is {v:,}, more than the {MAX_COUNT:,} iterations a loop can count",
                          "iteration counts are capped at 10^9 (loops count in int32); use a tolerance to stop "
                          "earlier, or a smaller count", arg=arg)


def fraction(m: MethodOptions, *fields: str) -> None:
    """Each field lies in (0, 1)."""
    for f in fields:
        v = getattr(m, f)
        if not is_number(v, lambda v: 0 < v < 1):
            raise OptionError(f"{m._label(f)} must lie in (0, 1), got {v!r}", arg=f)


def at_least_one(m: MethodOptions, *fields: str) -> None:
    """Each field is a number >= 1."""
    for f in fields:
        v = getattr(m, f)
        if not is_number(v, lambda v: v >= 1):
            raise OptionError(f"{m._label(f)} must be >= 1, got {v!r}", arg=f)


def flag(m: MethodOptions, *fields: str) -> None:
    """Each field is True or False."""
    for f in fields:
        v = getattr(m, f)
        if not isinstance(v, bool):
            raise OptionError(f"{m._label(f)} must be true or false, got {v!r}", arg=f)


def choice(m: MethodOptions, field: str, choices: tuple[str, ...], hint: str | None = None) -> None:
    """The field is one of ``choices`` ("a" or "b", got 'c')."""
    v = getattr(m, field)
    if v not in choices:
        quoted = [f'"{c}"' for c in choices]
        listed = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
        raise OptionError(f"{m._label(field)} must be {listed}, got {v!r}", hint, arg=field)


def alias(m: MethodOptions, alias_name: str, target: str, default) -> None:
    """Resolve ``alias_name`` (None when not given) into ``target``; both equal afterwards.

    Given both with different values (``target`` not at its default) is an error."""
    a, t = getattr(m, alias_name), getattr(m, target)
    if a is not None and t != default and a != t:
        raise OptionError(f"`{m.name}` got both `{target}={t!r}` and its alias `{alias_name}={a!r}`",
                          f"`{alias_name}` is another name for `{target}`: give one of them", arg=alias_name)
    value = t if a is None else a
    m._set(target, value)
    m._set(alias_name, value)
