"""Parse ``.bil`` text into the IR.  The only module that knows lark's tree shapes.

Two steps, kept apart on purpose: lark builds a parse tree (positions
propagated), then :class:`_ToIR` turns it into IR nodes purely structurally.
Semantic checks happen later in passes, because lark wraps exceptions raised
inside Transformer callbacks in ``VisitError``.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
from importlib import resources

import lark
from lark import Token, Transformer, v_args

from bil.core import ir
from bil.core.errors import BilError
from bil.grammar.guards import _meta_span, _printable, balance_sums, check_depth, unescape

#: the largest integer literal (int64, as JAX and NumPy hold it)
_MAX_INT = 2**63 - 1
from bil.core.source import Source, Span

KEYWORDS = ("problem", "data", "hyper", "def", "lower", "upper", "solve", "minimize", "train",
            "with", "for", "steps", "true", "false")


@functools.lru_cache(maxsize=1)
def _lark() -> lark.Lark:
    grammar = resources.files("bil.grammar").joinpath("bil.lark").read_text()
    # The basic lexer reserves keywords everywhere (a contextual lexer would
    # read `minimize` as a NAME wherever only a name can follow).
    return lark.Lark(grammar, parser="lalr", lexer="basic", propagate_positions=True, maybe_placeholders=True)


def parse(text: str, file: str = "<string>") -> ir.Module:
    """Parse ``text``; raise :class:`BilError` on a syntax error."""
    if text.startswith("\ufeff"):  # a UTF-8 byte-order mark, as some editors write
        text = text[1:]
    source = Source(text, file)
    try:
        tree = _lark().parse(text)
    except lark.exceptions.UnexpectedInput as e:
        raise _syntax_error(e, source) from None
    except RecursionError:
        raise _too_deep(source) from None
    balance_sums(tree)
    check_depth(tree, source)
    try:
        return _ToIR(source).transform(tree)
    except RecursionError:
        raise _too_deep(source) from None
    except lark.exceptions.VisitError as e:
        if isinstance(e.orig_exc, RecursionError):
            raise _too_deep(source) from None
        if isinstance(e.orig_exc, BilError):  # a located error from a callback (e.g. a huge literal)
            raise e.orig_exc from None
        raise e.orig_exc from None


def _too_deep(source: Source) -> BilError:
    return BilError("the spec nests too deeply to compile", source.span(1, 1),
                    "split the expression with `def`s or intermediate `data` names")


# ------------------------------------------------------------- syntax errors
def _display(term: str) -> str:
    """A readable name for a lark terminal (``RBRACE`` -> ``}``)."""
    for t in _lark().terminals:
        if t.name == term:
            if t.pattern.type == "str":
                return f"`{t.pattern.value}`"
            return {"NAME": "a name", "NUMBER": "a number", "STRING": "a string"}.get(term, term)
    return term


def _expected(names) -> str:
    shown = sorted({_display(n) for n in names if not n.startswith("$")})
    if len(shown) > 8:
        shown = shown[:8] + ["..."]
    return ", ".join(shown)


_OPEN = {"(": ")", "[": "]", "{": "}"}
_CLOSE = {v: k for k, v in _OPEN.items()}
_STATEMENT_KEYWORDS = ("problem", "data", "hyper", "def", "lower", "upper", "solve")


def _scan(text: str, end: int) -> tuple[list[Token], list[Token]]:
    """Tokens before offset ``end`` and the brackets still open there."""
    before: list[Token] = []
    stack: list[Token] = []
    try:
        for tok in _lark().lex(text):
            if tok.start_pos >= end:
                break
            before.append(tok)
            if str(tok) in _OPEN:
                stack.append(tok)
            elif str(tok) in _CLOSE and stack and str(stack[-1]) == _CLOSE[str(tok)]:
                stack.pop()
    except lark.exceptions.LarkError:
        pass
    return before, stack


def _unclosed(stack: list[Token]) -> str:
    tok = stack[-1]
    return f"the `{tok}` opened at line {tok.line}, column {tok.column} is never closed"


def _syntax_error(e: lark.exceptions.UnexpectedInput, source: Source) -> BilError:
    line, col = max(getattr(e, "line", 1) or 1, 1), max(getattr(e, "column", 1) or 1, 1)
    if isinstance(e, lark.exceptions.UnexpectedCharacters):
        ch = source.line(line)[col - 1 : col] or "?"
        if ch == "'":
            return BilError("strings use double quotes, not `'`", source.span(line, col),
                            'write "..." instead of \'...\'')
        if ch == '"':
            return BilError("unterminated string", source.span(line, col, line, len(source.line(line)) + 1),
                            "close it with `\"` on the same line")
        return BilError(f"unexpected character `{_printable(ch)}`", source.span(line, col),
                        "check for a stray character")
    if isinstance(e, lark.exceptions.UnexpectedEOF) or (
        isinstance(e, lark.exceptions.UnexpectedToken) and e.token.type == "$END"
    ):
        last = source.last_line
        end_col = len(source.line(last)) + 1
        span = source.span(last, max(end_col - 1, 1), last, end_col)
        _, stack = _scan(source.text, len(source.text))
        if stack:
            return BilError(f"unexpected end of file: {_unclosed(stack)}", span,
                            f"add a `{_OPEN[str(stack[-1])]}`")
        return BilError("unexpected end of file", span, f"expected {_expected(e.expected)}")
    assert isinstance(e, lark.exceptions.UnexpectedToken)
    tok = e.token
    span = source.span(tok.line, tok.column, tok.end_line, tok.end_column)
    expected = _expected(e.expected)
    before, stack = _scan(source.text, tok.start_pos)
    prev = str(before[-1]) if before else ""
    word = str(tok)
    # A missing closing bracket shows up as the next statement (or a closing
    # bracket of another kind) where the parser still wanted the inside.
    if stack and (word in _STATEMENT_KEYWORDS or (word in _CLOSE and _CLOSE[word] != str(stack[-1]))):
        return BilError(f"expected `{_OPEN[str(stack[-1])]}` before `{word}`: {_unclosed(stack)}", span,
                        f"add a `{_OPEN[str(stack[-1])]}`")
    if word in ("minimize", "train") and prev == "{" and "NAME" in e.expected:
        return BilError(f"the `lower` block declares its variables before `{word}`", span,
                        "start it with the lower variables, e.g. `w : real[10] = 0`")
    if word == "}" and "MINIMIZE" in e.expected and "TRAIN" in e.expected:
        return BilError("the `lower` block has no goal", span,
                        "add `minimize EXPR` or `train EXPR with OPTIMIZER for N steps`")
    if word in ("minimize", "train"):
        # a goal already seen in this block: a block has exactly one
        opened = max((i for i, t in enumerate(before) if str(t) in ("lower", "upper")), default=None)
        if opened is not None and any(str(t) in ("minimize", "train") for t in before[opened + 1:]):
            return BilError("a second goal: this block already has a `minimize` or `train`", span,
                            "a block has one goal: add the terms into one objective with `+`")
    if (before and before[-1].type == "NAME" and ("COLON" in e.expected or "EQUAL" in e.expected)
            and stack and str(stack[-1]) == "{" and len(before) > 1
            and str(before[-2]) not in ("hyper", "data", "def", "lower", ",", ":", "=")):
        # a misspelt keyword (`minimise 0.5 * ...`) reads as a name that the parser wanted to be an
        # option key or a declaration (inside a block, where a goal can start): point at the
        # word, not at what follows it
        prev_tok = before[-1]
        guess = difflib.get_close_matches(str(prev_tok), ["minimize", "train"], n=1, cutoff=0.75)
        if guess:
            return BilError(f"unexpected name `{prev_tok}`",
                            source.span(prev_tok.line, prev_tok.column, prev_tok.end_line, prev_tok.end_column),
                            f"did you mean `{guess[0]}`?")
    if word in KEYWORDS and "NAME" in e.expected:
        return BilError(f"`{tok}` is a reserved keyword and cannot be used as a name", span,
                        f"rename it (e.g. `{tok}_`); expected {expected}")
    if word == "=" and "EQUAL" not in e.expected and "COLON" in e.expected:
        return BilError("unexpected `=`", span, "options are written `key: value`")
    # `1e` (an exponent without digits) lexes as the number 1 and the name e: the parser
    # only trips later, so point at the number instead
    bad = [m for m in _BAD_NUMBER.finditer(source.line(tok.line)) if m.start() < tok.column - 1]
    if bad:
        m = bad[-1]
        return BilError(f"malformed number `{m.group(0)}`: an exponent needs digits",
                        source.span(tok.line, m.start() + 1, tok.line, m.end() + 1),
                        f"e.g. `{m.group(0)}-3` or `{m.group(0)}3`")
    return BilError(f"unexpected `{tok}`", span, f"expected {expected}")


#: a number whose exponent has no digits (`1e`, `2.5E`), not part of a name
_BAD_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d*)?[eE](?![\w+-])")


# ------------------------------------------------------------- tree -> IR
def _tok_span(source: Source, tok: Token) -> Span:
    return Span(source, tok.line, tok.column, tok.end_line, tok.end_column)


def _binary(op: str):
    """A Transformer callback building ``ir.Binary`` with operator ``op``."""

    @v_args(meta=True)
    def callback(self, meta, c):
        return ir.Binary(self._sp(meta), op, c[0], c[1])

    return callback


class _ToIR(Transformer):
    def __init__(self, source: Source):
        super().__init__(visit_tokens=False)
        self.src = source

    def _sp(self, meta) -> Span:
        return _meta_span(self.src, meta)

    # ---------------------------------------------------------- statements
    @v_args(meta=True)
    def start(self, meta, stmts):
        return ir.Module(tuple(stmts), span=self._sp(meta))

    @v_args(meta=True)
    def problem_stmt(self, meta, c):
        return ir.Problem(str(c[0]), span=self._sp(meta))

    @v_args(meta=True)
    def data_stmt(self, meta, c):
        names, expr = c[0], c[1]
        mod = c[2] if len(c) > 2 else None
        return ir.Data(tuple(str(n) for n in names), expr, mod == "per sample", span=self._sp(meta),
                       name_spans=tuple(_tok_span(self.src, n) for n in names), sampled=mod == "sampled")

    def per_sample(self, c):
        if (str(c[0]), str(c[1])) != ("per", "sample"):
            raise BilError(f"unexpected `{c[0]} {c[1]}` after the data expression", _tok_span(self.src, c[0]),
                           "the only words allowed there are `per sample` (a leading sample axis) or `sampled` "
                           "(a leading row axis the objectives are means over)")
        return "per sample"

    def sampled(self, c):
        if str(c[0]) != "sampled":
            raise BilError(f"unexpected `{c[0]}` after the data expression", _tok_span(self.src, c[0]),
                           "the only words allowed there are `sampled` (a leading row axis the objectives are "
                           "means over) or `per sample` (a leading sample axis)")
        return "sampled"

    def name_list(self, c):
        return list(c)

    @v_args(meta=True)
    def hyper_stmt(self, meta, c):
        return ir.Hyper(str(c[0]), c[1], c[2], span=_tok_span(self.src, c[0]))

    @v_args(meta=True)
    def def_stmt(self, meta, c):
        return ir.Def(str(c[0]), c[1], c[2], span=_tok_span(self.src, c[0]))

    def params(self, c):
        return tuple(str(p) for p in c if p is not None)

    def domain_opt(self, c):
        return c[0] if c else None

    @v_args(meta=True)
    def domain(self, meta, c):
        base, shape, bounds = c[0], None, None
        for part in c[1:]:
            if isinstance(part, tuple) and part and part[0] == "shape":
                shape = part[1]
            elif isinstance(part, tuple) and part and part[0] == "bounds":
                bounds = part[1]
        return ir.Domain(str(base), shape, bounds, span=self._sp(meta))

    def shape(self, c):
        return ("shape", tuple(c))

    def bounds(self, c):
        if str(c[0]) != "in":
            raise BilError(f"unexpected `{c[0]}` in a domain", _tok_span(self.src, c[0]),
                           "bounds are written `in [lo, hi]`, e.g. `real[3] in [0, 1]`")
        return ("bounds", (c[1], c[2]))

    @v_args(meta=True)
    def lower_stmt(self, meta, c):
        name = c[0]
        vars_ = tuple(x for x in c[1:] if isinstance(x, ir.LowerVar))
        goal = next(x for x in c[1:] if isinstance(x, (ir.Minimize, ir.Train)))
        opts = tuple(x for x in c[1:] if isinstance(x, ir.Option))
        # The block's span is its first line (`lower {`), which is where
        # runtime failures of the lower solve are reported.
        sp = self._sp(meta)
        return ir.Lower(name, vars_, goal, opts, span=Span(self.src, sp.line, sp.column, sp.line, sp.column + 5))

    def lower_name(self, c):
        return str(c[0]) if c and c[0] is not None else None

    @v_args(meta=True)
    def lower_var(self, meta, c):
        return ir.LowerVar(str(c[0]), c[1], c[2], span=_tok_span(self.src, c[0]))

    @v_args(meta=True)
    def minimize(self, meta, c):
        return ir.Minimize(c[0], span=self._sp(meta))

    @v_args(meta=True)
    def train(self, meta, c):
        return ir.Train(c[0], c[1], c[2], span=self._sp(meta))

    @v_args(meta=True)
    def upper_simple(self, meta, c):
        return ir.Upper(c[0], (), span=self._sp(meta))

    @v_args(meta=True)
    def upper_block(self, meta, c):
        return ir.Upper(c[0], tuple(c[1:]), span=self._sp(meta))

    @v_args(meta=True)
    def solve_stmt(self, meta, c):
        return ir.Solve(tuple(c), span=self._sp(meta))

    @v_args(meta=True)
    def option(self, meta, c):
        return ir.Option(str(c[0]), c[1], span=_tok_span(self.src, c[0]))

    # --------------------------------------------------------- expressions
    add = _binary("+")
    sub = _binary("-")
    mul = _binary("*")
    div = _binary("/")
    matmul = _binary("@")
    pow = _binary("^")

    @v_args(meta=True)
    def neg(self, meta, c):
        return ir.Unary(self._sp(meta), "-", c[0])

    @v_args(meta=True)
    def pos(self, meta, c):
        return c[0]

    @v_args(meta=True)
    def call(self, meta, c):
        name, args = c[0], c[1] or []
        pos_args = tuple(a for a in args if not isinstance(a, ir.Keyword))
        kws = tuple(a for a in args if isinstance(a, ir.Keyword))
        return ir.Call(self._sp(meta), str(name), pos_args, kws, name_span=_tok_span(self.src, name))

    def arguments(self, c):
        return list(c)

    def kwname(self, c):
        return c[0]

    @v_args(meta=True)
    def kwarg(self, meta, c):
        return ir.Keyword(str(c[0]), c[1], span=_tok_span(self.src, c[0]))

    @v_args(meta=True)
    def index(self, meta, c):
        return ir.Index(self._sp(meta), c[0], tuple(c[1]))

    def subscripts(self, c):
        return list(c)

    @v_args(meta=True)
    def slice2(self, meta, c):
        return ir.Slice(self._sp(meta), c[0], c[1], None)

    @v_args(meta=True)
    def slice3(self, meta, c):
        return ir.Slice(self._sp(meta), c[0], c[1], c[2])

    @v_args(meta=True)
    def number(self, meta, c):
        text = str(c[0])
        t = text.replace("_", "")
        shown = text if len(text) <= 24 else f"{text[:10]}...{text[-6:]} ({len(text)} characters)"
        is_int = t[:2].lower() in ("0x", "0o", "0b") or t.isdigit()
        if is_int and len(t.lstrip("0")) > 25:  # more digits than any int64 (before converting: slow)
            raise BilError(f"integer literal {shown} is too large (more than 2^63 - 1)", self._sp(meta),
                           "write it as a float (e.g. `1e30`), or use a smaller count")
        value = int(t, 0) if is_int else float(t)
        if isinstance(value, int) and value > _MAX_INT:
            raise BilError(f"integer literal {shown} is too large (more than 2^63 - 1)", self._sp(meta),
                           f"write it as a float, e.g. `{float(value):.3g}`, or use a smaller count")
        if isinstance(value, float) and math.isinf(value):
            raise BilError(f"number {shown} overflows a float64 (largest about 1.8e308)", self._sp(meta),
                           "use a smaller number")
        return ir.Num(self._sp(meta), value)

    @v_args(meta=True)
    def string(self, meta, c):
        return ir.Str(self._sp(meta), unescape(str(c[0]), self._sp(meta)))

    @v_args(meta=True)
    def true(self, meta, c):
        return ir.Bool(self._sp(meta), True)

    @v_args(meta=True)
    def false(self, meta, c):
        return ir.Bool(self._sp(meta), False)

    @v_args(meta=True)
    def name(self, meta, c):
        return ir.Name(self._sp(meta), str(c[0]))

    @v_args(meta=True)
    def tuple(self, meta, c):
        return ir.TupleExpr(self._sp(meta), tuple(c))

    @v_args(meta=True)
    def list(self, meta, c):
        return ir.ListExpr(self._sp(meta), tuple(x for x in c if x is not None))
