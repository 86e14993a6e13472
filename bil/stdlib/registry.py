"""The one registry of the standard library.

Every name a spec can call is registered here by a decorator placed beside its
implementation (``@register("logsumexp")``), the way JAX registers a primitive's
rules where the primitive is defined.  The compiler never imports stdlib
modules directly: it asks this registry.

Kinds
-----
``array``       differentiable JAX functions of arrays (``sum``, ``tv``, ...).
                Their shape rule is abstract evaluation of the implementation
                (``jax.eval_shape``), so shapes follow NumPy/JAX exactly.
``meta``        compile-time functions of shapes/values (``ncols``, ``shape``);
                evaluated during constant folding, never traced.
``source``      data sources (``dataset``, ``image``, ``load``, ...), evaluated
                once at compile time with NumPy.
``solver``      lower-level solvers named in ``solver:`` options.
``optimizer``   optimizers named in ``train ... with OPT`` goals and ``outer:``.
``hypergradient`` / ``outer``  names accepted by the ``solve`` block.

Signatures (arity, keywords) are taken from the implementation with
``inspect.signature`` so the compiler can check calls and report errors at the
call's span before anything runs.  An array function may also register its
polynomial-degree rule, its LaTeX form and a compile-time argument check
(``degree=``, ``latex=``, ``check=``; see :mod:`bil.stdlib.rules`); without
them the compiler assumes the sound defaults (not polynomial,
``\\operatorname{name}(...)``, no check).
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

KINDS = ("array", "meta", "source", "solver", "optimizer", "hypergradient", "outer")


@dataclass(frozen=True)
class Function:
    """A registered standard-library entry."""

    name: str
    impl: Callable[..., Any]
    kind: str
    #: names of parameters that must be compile-time constants (``axis``,
    #: sizes, seeds, names of datasets).  They are passed as Python values.
    static: tuple[str, ...] = ()
    doc: str = ""
    signature: inspect.Signature = field(default=None, compare=False)  # type: ignore[assignment]
    #: polynomial-degree rule (:mod:`bil.stdlib.rules`); None: not polynomial
    degree: Callable[..., Any] | None = field(default=None, compare=False)
    #: LaTeX template (``#1`` ...) or callable of the printed arguments; None: ``\\operatorname{name}``
    latex: str | Callable[..., Any] | None = field(default=None, compare=False)
    #: compile-time argument check, called like ``impl`` with :class:`bil.stdlib.rules.CallArg` values
    check: Callable[..., Any] | None = field(default=None, compare=False)

    def bind(self, args: tuple, kwargs: dict) -> inspect.BoundArguments:
        """Bind call arguments; raises ``TypeError`` with Python's message."""
        return self.signature.bind(*args, **kwargs)

    def describe(self) -> str:
        """``name(param, ...)`` for hints and the README."""
        return f"{self.name}{self.signature}"


REGISTRY: dict[str, Function] = {}


def register(name: str, *, kind: str = "array", static: tuple[str, ...] = (), doc: str | None = None,
             degree: Callable[..., Any] | None = None, latex: str | Callable[..., Any] | None = None,
             check: Callable[..., Any] | None = None):
    """Register ``fn`` under ``name`` with its optional rules (:mod:`bil.stdlib.rules`).  Duplicates are rejected."""
    if kind not in KINDS:
        raise ValueError(f"unknown stdlib kind {kind!r}")
    if kind != "array" and (degree, latex, check) != (None, None, None):
        raise ValueError(f"stdlib {kind} {name!r}: degree=, latex= and check= are for array functions")
    if not (latex is None or isinstance(latex, str) or callable(latex)) or \
            not all(r is None or callable(r) for r in (degree, check)):
        raise ValueError(f"stdlib {name!r}: degree= and check= are callables, latex= a template or a callable")

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        key = (kind if kind in ("solver", "optimizer", "hypergradient", "outer") else "fn", name)
        if key in _KEYS:
            raise ValueError(f"stdlib name {name!r} ({kind}) registered twice")
        _KEYS.add(key)
        entry = Function(
            name=name,
            impl=fn,
            kind=kind,
            static=static,
            doc=inspect.cleandoc(doc or fn.__doc__ or ""),
            signature=inspect.signature(fn),
            degree=degree,
            latex=latex,
            check=check,
        )
        if kind in ("array", "meta", "source"):
            REGISTRY[name] = entry
        else:
            _NAMESPACES.setdefault(kind, {})[name] = entry
        return fn

    return deco


_KEYS: set[tuple[str, str]] = set()
#: solvers, optimizers, hypergradient methods and outer loops live in their own
#: namespaces: ``gd`` is both a lower solver and an outer loop.
_NAMESPACES: dict[str, dict[str, Function]] = {}


def lookup(name: str, kind: str | None = None) -> Function | None:
    """The entry called ``name`` among functions (default) or in a namespace."""
    if kind in (None, "array", "meta", "source"):
        return REGISTRY.get(name)
    return _NAMESPACES.get(kind, {}).get(name)


def names(kind: str | None = None) -> list[str]:
    """Sorted names in the function table or in a namespace."""
    if kind in (None, "array", "meta", "source"):
        return sorted(n for n, f in REGISTRY.items() if kind is None or f.kind == kind)
    return sorted(_NAMESPACES.get(kind, {}))


def closest(name: str, candidates: list[str]) -> str | None:
    """The closest candidate to ``name`` (for "did you mean ...?" hints)."""
    got = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return got[0] if got else None

