"""Property tests: whatever reaches ``bil.compile`` (or ``--set``), the outcome is a program or
a located :class:`bil.BilError` -- never another exception, an internal error (a
:class:`BilInternalError` counts as a failure here), an abort or a hang.

Inputs: random text, random bytes (decoded as Latin-1), random sequences of the language's own
tokens, token-level mutations (delete, duplicate, swap, truncate, replace) of every spec in
tests/golden, grammar-aware expressions (random calls of the standard library, operators,
literals and names, in data statements -- folded at compile time -- and in objectives), deep
nesting, huge literals, and random ``--set`` overrides: about 2 500 cases (plus a systematic
sweep), all derandomised.

Compiles run with ``max_elements=10**6`` (the guard is the same at any limit; the fuzzer should
not allocate 800 MB arrays).  Time is checked as CPU time per case, with a generous bound (a
wall-clock bound failed on a loaded machine); a hang is caught by an alarm.
"""

import re
import signal
import time
from pathlib import Path

import bil
import pytest
from bil.core.errors import BilInternalError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

GOLDEN = Path(__file__).parent / "golden"
SPECS = {p.stem: p.read_text() for p in sorted(GOLDEN.glob("*.bil"))}
#: CPU seconds one compile may take (XLA compiles a new data shape in about a second)
CPU_LIMIT_S = 30.0
#: wall-clock seconds after which a case counts as a hang
HANG_S = 120
MAX_ELEMENTS = 10**6

SETTINGS = settings(derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])

# A token, then the whitespace and comments after it.
TOKEN = re.compile(r'("(?:[^"\\\n]|\\.)*"|[A-Za-z_]\w*|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|\*\*|\S)((?:\s|#[^\n]*)*)')
VOCAB = sorted({m.group(1) for text in SPECS.values() for m in TOKEN.finditer(text)} | {
    "problem", "data", "hyper", "def", "lower", "upper", "solve", "minimize", "train", "with", "for",
    "steps", "per", "sample", "in", "true", "false", "real", "positive", "{", "}", "(", ")", "[", "]",
    ",", ":", "=", "+", "-", "*", "/", "^", "@", "**", "0", "1", "-1", "1e9", '"x"', "x", "w", "\n",
    "1e400", "9" * 30, '"\\x"', "10^15", "\ufeff", "\r\n", "\f"})


LEADING = re.compile(r"(?:\s|#[^\n]*)*")


def tokens(text: str) -> list[tuple[str, str]]:
    """``(token, separator)`` pairs; leading comments are skipped."""
    start = LEADING.match(text).end()
    return [(m.group(1), m.group(2)) for m in TOKEN.finditer(text, start)]


def join(toks) -> str:
    return "".join(t + (s or " ") for t, s in toks)


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang()


@pytest.fixture(scope="module", autouse=True)
def warm_data_sources():
    for text in SPECS.values():
        try:
            bil.compile(text)
        except bil.BilError:
            pass  # load("small.csv") relative to the cwd: an error, as text


def compile_text(text: str, overrides=None) -> None:
    """Compile ``text``: a program or a located BilError, within the CPU bound, never a hang."""
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_S)
    t0 = time.process_time()
    try:
        bil.compile(text, overrides=overrides, max_elements=MAX_ELEMENTS)
    except BilInternalError as e:
        pytest.fail(f"internal error:\n{e}\n--- spec:\n{text}\n--- overrides: {overrides}")
    except bil.BilError as e:
        rendered = str(e)  # rendering must not fail either
        assert e.line is not None and e.column is not None, f"an error without a location:\n{rendered}\n{text}"
    except _Hang:
        pytest.fail(f"compiling took more than {HANG_S} s:\n{text}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    cpu = time.process_time() - t0
    assert cpu < CPU_LIMIT_S, f"compiling took {cpu:.1f} s of CPU:\n{text}"


@settings(SETTINGS, max_examples=400)
@given(st.text(max_size=300))
def test_random_text(text):
    compile_text(text)


@settings(SETTINGS, max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes(data):
    compile_text(data.decode("latin-1"))


@settings(SETTINGS, max_examples=400)
@given(st.lists(st.sampled_from(VOCAB), max_size=60))
def test_random_token_sequences(words):
    compile_text(" ".join(words))


MUTATIONS = ("delete", "duplicate", "swap", "truncate")


@st.composite
def mutated(draw):
    name = draw(st.sampled_from(sorted(SPECS)))
    toks = tokens(SPECS[name])
    for _ in range(draw(st.integers(1, 3))):
        if not toks:
            break
        kind = draw(st.sampled_from(MUTATIONS + ("replace",)))
        i = draw(st.integers(0, len(toks) - 1))
        if kind == "delete":
            del toks[i]
        elif kind == "duplicate":
            toks.insert(i, toks[i])
        elif kind == "swap":
            j = draw(st.integers(0, len(toks) - 1))
            toks[i], toks[j] = toks[j], toks[i]
        elif kind == "replace":
            toks[i] = (draw(st.sampled_from(VOCAB)), toks[i][1])
        else:
            toks = toks[:i]
    return join(toks)


@settings(SETTINGS, max_examples=600)
@given(mutated())
def test_token_mutations_of_every_spec(text):
    compile_text(text)


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("kind", MUTATIONS)
def test_each_mutation_of_each_spec_at_every_fifth_token(name, kind):
    """A systematic sweep (not random): one mutation at every fifth token."""
    toks = tokens(SPECS[name])
    for i in range(0, len(toks), 5):
        t = list(toks)
        if kind == "delete":
            del t[i]
        elif kind == "duplicate":
            t.insert(i, t[i])
        elif kind == "swap":
            t[i], t[(i + 1) % len(t)] = t[(i + 1) % len(t)], t[i]
        else:
            t = t[:i]
        compile_text(join(t))


# ------------------------------------------------------------ grammar-aware
BASE = """data X = randn(20, 3, seed=0)
data y = randn(20, seed=1)
data labels = [0, 1, 2, 1]
hyper lam : positive = 1.0
lower {
    w = zeros(3)
    minimize sumsq(X @ w - y) + lam * sumsq(w)GOAL
}
upper minimize sumsq(X @ w - y)
"""
NAMES = ["X", "y", "labels", "w", "lam", "nope", "Z"]
NUMBERS = ["0", "1", "2", "3", "-1", "0.5", "1e5", "100000", "10^9", "1e308", "1e-320", "9" * 19, "2^63",
           "0x7fffffffffffffff", "1_000", ".5", "1e400", "9" * 30]
STRINGS = ['"camera"', '"x.npz"', '"\\x41"', '"\\x"', '"\\u12"', '"a\\\\b"', '"\\N{DIGIT ONE}"', '""']
FUNCS = ["sum", "mean", "sumsq", "norm", "max", "exp", "log", "sqrt", "abs", "tanh", "sigmoid", "softplus",
         "maximum", "clip", "where", "dot", "transpose", "reshape", "eye", "diag", "zeros", "ones", "randn",
         "softmax", "log_softmax", "cross_entropy", "logistic_loss", "huber", "mse", "onehot", "dx", "tv",
         "shape", "rows", "ncols", "nclasses", "trace", "l1", "logsumexp", "soft_threshold", "sign"]
KEYWORDS = ["axis", "seed", "shape", "n", "keepdims", "delta", "lo", "hi"]


def _call(args):
    return st.builds(lambda f, a, kw: f"{f}({', '.join(a + kw)})", st.sampled_from(FUNCS), st.just(args[0]),
                     st.lists(st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYWORDS), args[1]), max_size=2))


def expressions():
    # mostly well-formed leaves, so that calls and operators are reached often; now and then a
    # hostile literal
    common = ["X", "y", "labels", "0", "1", "2", "3", "20", "0.5", "-1", "100000", "1e5"]
    leaf = st.sampled_from(common * 4 + NAMES + NUMBERS + STRINGS)

    def extend(inner):
        binary = st.builds(lambda a, op, b: f"{a} {op} {b}", inner, st.sampled_from("+-*/@^"), inner)
        call = st.lists(inner, max_size=3).flatmap(lambda a: _call((a, inner)))
        return (binary | call | st.builds(lambda a: f"-{a}", inner) | st.builds(lambda a: f"({a})", inner)
                | st.builds(lambda a, i: f"{a}[{i}]", inner, st.sampled_from(["0", "-1", "1:3", ":, 0", "99", "0.5"]))
                | st.lists(inner, min_size=1, max_size=3).map(lambda xs: f"[{', '.join(xs)}]"))

    return st.recursive(leaf, extend, max_leaves=8)


@settings(SETTINGS, max_examples=300)
@given(expressions())
def test_grammar_aware_data_expressions(expr):
    """Data is folded at compile time: sizes, overflow, division by zero, strings, shapes."""
    compile_text(f"data Z = {expr}\n" + BASE.replace("GOAL", ""))


@settings(SETTINGS, max_examples=120)
@given(expressions())
def test_grammar_aware_objective_terms(expr):
    compile_text(BASE.replace("GOAL", f" + sum({expr})"))


@settings(SETTINGS, max_examples=40)
@given(st.sampled_from(["-", "abs(", "(", "[", "X + ", "exp(", "sum(", "w * "]), st.integers(1, 300))
def test_deep_nesting(opener, depth):
    closer = {"abs(": ")", "(": ")", "[": "]", "exp(": ")", "sum(": ")"}.get(opener, "")
    compile_text(BASE.replace("GOAL", f" + sum({opener * depth}1{closer * depth})"))


@settings(SETTINGS, max_examples=100)
@given(st.integers(1, 6000), st.sampled_from(["9", "0", "1"]), st.sampled_from(["", ".0", "e5", "e-999", "e999"]),
       st.sampled_from(["data Z = {}\n", "hyper h = {}\n", "solve {{ seed: {} }}\n"]))
def test_huge_literals(n, digit, tail, where):
    compile_text(where.format("1" + digit * n + tail) + BASE.replace("GOAL", ""))


OVERRIDE_KEYS = ["hyper.lam", "lower.solver", "lower.tol", "lower.max_iter", "lower.solver.memory",
                 "solve.outer", "solve.outer.max_iter", "solve.hypergradient", "solve.hypergradient.k",
                 "solve.precision", "solve.seed", "solve.nope", "hyper.nope"]
OVERRIDE_VALUES = st.sampled_from(NUMBERS + STRINGS + [
    "fista(mu=1)", "implicit() } solve { seed: 1", "neumann(k=10^15)", "maid(max_iter=0)", "lbfgs(", "}",
    "float32", "float64", "[0.1, 0.2]", "hoag(schedule=\"cubic\")", "unroll(steps=10^15)", "x\ny", "\x00"])


@settings(SETTINGS, max_examples=250)
@given(st.lists(st.tuples(st.sampled_from(OVERRIDE_KEYS), OVERRIDE_VALUES | expressions() | st.text(max_size=20)),
                min_size=1, max_size=3))
def test_random_overrides(pairs):
    """``--set KEY=VALUE`` as the CLI passes it: (key, text) pairs applied in order."""
    compile_text(BASE.replace("GOAL", ""), overrides=pairs)
