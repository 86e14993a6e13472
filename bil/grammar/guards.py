"""Guards of the parser against hostile input: string escapes (a bad one, a NUL), long flat
sums (regrouped so that they do not nest thousands deep), and a nesting-depth limit checked
without recursion.  Each problem is a located :class:`BilError`."""

from __future__ import annotations

import lark

from bil.core.errors import BilError
from bil.core.source import Source, Span


def _meta_span(source: Source, meta) -> Span:
    """The span of a lark tree node (line 1, column 1 when lark gave it no position)."""
    if getattr(meta, "empty", True):
        return source.span(1, 1)
    return Span(source, meta.line, meta.column, meta.end_line, meta.end_column)


def _printable(ch: str) -> str:
    """A character as it can be shown in a message (`\\x1c`, `space`)."""
    return ch if ch.isprintable() and not ch.isspace() else repr(ch)[1:-1] if ch != " " else "space"


#: the deepest nesting of expressions accepted (calls in calls, `- - x`, lists in lists, sums of
#: more terms than this): the passes walk expressions recursively
MAX_DEPTH = 200


def check_depth(tree: lark.Tree, source: Source) -> None:
    """A located error at the first expression nested deeper than :data:`MAX_DEPTH` (found
    without recursion, so that the check itself cannot run out of stack)."""
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BilError(f"expressions nested more than {MAX_DEPTH} levels deep (here)", _meta_span(source, node.meta),
                           "split the expression with intermediate `def`s or `data` names")
        for child in node.children:
            if isinstance(child, lark.Tree):
                stack.append((child, depth + (child.data not in _STATEMENT_RULES)))


#: a sum of more terms than this is regrouped into a balanced tree (see :func:`_balance_sums`)
_LONG_SUM = 32


def balance_sums(tree: lark.Tree) -> None:
    """Regroup every long flat sum ``a + b - c + ...`` (which parses as a chain nested as deep as
    it has terms) into a balanced tree of ``+`` over the terms, ``-`` terms negated, so that a
    sum of thousands of terms nests only ``log2`` deep.  In place, without recursion."""
    stack = [tree]
    while stack:
        node = stack.pop()
        terms = _sum_terms(node) if node.data in ("add", "sub") else None
        if terms is not None and len(terms) > _LONG_SUM:
            balanced = _balanced(terms)
            node.data, node.children, node._meta = balanced.data, balanced.children, balanced.meta
            stack.extend(t for t in terms)
            continue
        stack.extend(c for c in node.children if isinstance(c, lark.Tree))


def _sum_terms(node: lark.Tree) -> list[lark.Tree]:
    """The terms of the flat sum rooted at ``node`` (left spine), ``-`` terms wrapped in ``neg``."""
    terms = []
    while isinstance(node, lark.Tree) and node.data in ("add", "sub"):
        left, right = node.children
        terms.append(right if node.data == "add" else lark.Tree("neg", [right], right.meta))
        node = left
    terms.append(node)
    return terms[::-1]


def _balanced(terms: list[lark.Tree]) -> lark.Tree:
    if len(terms) == 1:
        return terms[0]
    mid = len(terms) // 2
    left, right = _balanced(terms[:mid]), _balanced(terms[mid:])
    meta = lark.tree.Meta()
    meta.empty = False
    for attr in ("line", "column", "start_pos"):
        setattr(meta, attr, getattr(left.meta, attr))
    for attr in ("end_line", "end_column", "end_pos"):
        setattr(meta, attr, getattr(right.meta, attr))
    return lark.Tree("add", [left, right], meta)


_STATEMENT_RULES = {"start", "problem_stmt", "data_stmt", "hyper_stmt", "def_stmt", "lower_stmt", "upper_simple",
                    "upper_block", "solve_stmt", "option", "name_list", "per_sample", "sampled", "params", "domain_opt",
                    "domain", "shape", "bounds", "lower_name", "lower_var", "minimize", "train", "arguments",
                    "subscripts", "kwarg", "kwname"}


_ESCAPES = {"\\": "\\", '"': '"', "n": "\n", "t": "\t", "r": "\r"}


def unescape(literal: str, span: Span) -> str:
    """The value of a string literal: ``\\\\``, ``\\"``, ``\\n``, ``\\t``, ``\\r``, ``\\xHH``,
    ``\\uHHHH``; any other escape, or a NUL character, is a located error."""
    body, out, i = literal[1:-1], [], 0
    while i < len(body):
        ch = body[i]
        if ch == "\0":
            raise BilError("a string contains a NUL character", span, "remove it (strings name files and datasets)")
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1]
        width = {"x": 2, "u": 4}.get(nxt)
        if width is not None:
            digits = body[i + 2 : i + 2 + width]
            if len(digits) < width or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise BilError(f"bad escape `\\{nxt}{digits}` in a string: `\\{nxt}` takes {width} hex digits",
                               span, f"e.g. `\\{nxt}{'0' * (width - 2)}41` for `A`; write `\\\\` for a backslash")
            code = int(digits, 16)
            if code == 0 or 0xD800 <= code <= 0xDFFF:
                raise BilError(f"bad escape `\\{nxt}{digits}` in a string: "
                               + ("a NUL character" if code == 0 else "half of a surrogate pair"), span,
                               "write the character itself (the file is UTF-8)")
            out.append(chr(code))
            i += 2 + width
        elif nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        else:
            raise BilError(f"unknown escape `\\{_printable(nxt)}` in a string", span,
                           "known escapes: \\\\ \\\" \\n \\t \\r \\xHH \\uHHHH; write `\\\\` for a backslash "
                           "(or use `/` in paths)")
    return "".join(out)
