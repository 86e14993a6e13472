"""Collect statements into a symbol table; one definition per name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bil.core import ir
from bil.core.errors import BilError
from bil.compiler.state import CompileState
from bil.grammar.parser import KEYWORDS


@dataclass(frozen=True)
class Collect:
    name: str = "collect"

    def apply(self, st: CompileState) -> None:
        seen_blocks: dict[str, object] = {}
        if st.source.file != "<string>":
            st.problem = Path(st.source.file).stem  # the default name: the file stem
        for s in st.module.statements:
            with st.diag.guard():  # each statement's errors are its own
                self._statement(st, s, seen_blocks)
        # Names given from Python (`bil.compile(..., data=...)`) that no `data`
        # statement binds are data too: the spec may use them like any other.
        for n in st.data_override:
            if n not in st.symbols:
                st.symbols[n] = ir.Data((n,), ir.Name(None, n), False)
            elif not isinstance(st.symbols[n], ir.Data):
                raise BilError(f"`{n}` given in `data=` is not a data name of the spec (it is a "
                               f"{type(st.symbols[n]).__name__.lower()})", _span_of(st.symbols[n]),
                               "pass arrays only for data names, or for names the spec does not define")
        end = st.source.span(st.source.last_line, 1)
        if st.lower is None:
            raise BilError("the spec has no `lower` block", end,
                           "add `lower { x = 0  minimize ... }` stating the lower-level problem")
        if st.upper is None:
            raise BilError("the spec has no `upper` objective", end, "add `upper minimize EXPR`")
        if not any(isinstance(s, ir.Hyper) for s in st.module.statements):
            raise BilError("the spec declares no `hyper`", end,
                           "declare the upper-level variables, e.g. `hyper lam : positive = 1.0`")

    def _statement(self, st: CompileState, s, seen_blocks: dict) -> None:
        kind = type(s).__name__.lower()
        if isinstance(s, (ir.Problem, ir.Lower, ir.Upper, ir.Solve)):
            if kind in seen_blocks:
                prev = seen_blocks[kind]
                raise BilError(f"a second `{_kw(s)}` statement", s.span,
                               f"a spec has at most one; the first is at line {prev.span.line}")
            seen_blocks[kind] = s
        if isinstance(s, ir.Problem):
            st.problem = s.name
        elif isinstance(s, ir.Data):
            for n, sp in zip(s.names, s.name_spans or (s.span,) * len(s.names)):
                self._define(st, n, s, sp)
            st.data_stmts.append(s)
        elif isinstance(s, ir.Hyper):
            self._define(st, s.name, s, s.span)
        elif isinstance(s, ir.Def):
            self._define(st, s.name, s, s.span)
            if st.symbols[s.name] is s:
                st.defs[s.name] = s
            for i, p in enumerate(s.params):
                with st.diag.guard():
                    if p in s.params[:i]:
                        raise BilError(f"parameter `{p}` appears twice in `def {s.name}`", s.span,
                                       "give each parameter its own name")
                    self._check_keyword(p, s.span)
        elif isinstance(s, ir.Lower):
            st.lower = s
            for v in s.vars:
                self._define(st, v.name, v, v.span)
        elif isinstance(s, ir.Upper):
            st.upper = s
        elif isinstance(s, ir.Solve):
            st.solve = s

    @staticmethod
    def _check_keyword(name: str, span) -> None:
        if name in KEYWORDS:
            raise BilError(f"`{name}` is a reserved keyword and cannot be used as a name", span,
                           f"rename it (e.g. `{name}_`)")

    def _define(self, st: CompileState, name: str, node, span) -> None:
        """Bind ``name`` (the first definition wins; a reserved word is reported but still bound,
        so that its uses are not reported again as unknown names)."""
        with st.diag.guard():
            if name in st.symbols:
                prev = st.symbols[name]
                raise BilError(f"`{name}` is already defined", span,
                               f"first defined at line {_span_of(prev).line}; choose another name")
            st.symbols[name] = node
            self._check_keyword(name, span)


def _span_of(node):
    return node.span


def _kw(s) -> str:
    return {ir.Problem: "problem", ir.Lower: "lower", ir.Upper: "upper", ir.Solve: "solve"}[type(s)]
