"""One small bad spec per diagnostic (tests/errors/*.bil).

Each file starts with ``# expect: LINE:COL: error: MESSAGE-SUBSTRING`` (or
``warning:``) and optionally ``# hint: SUBSTRING``.  The test compiles the file
and checks the position, the message, the rendering (``FILE:LINE:COL: error:``,
the source line, a caret) and the hint.
"""

import re
import subprocess
import sys
from pathlib import Path

import bil  # noqa: F401
import pytest

import bil.cli

ERRORS = Path(__file__).parent / "errors"
EXAMPLES = Path(__file__).parent.parent / "examples"
SPECS = sorted(ERRORS.glob("*.bil"))
EXPECT = re.compile(r"#\s*expect:\s*(\d+):(\d+):\s*(error|warning):\s*(.+?)\s*$")
HINT = re.compile(r"#\s*hint:\s*(.+?)\s*$")


def expectation(path: Path):
    lines = path.read_text().splitlines()
    m = EXPECT.match(lines[0])
    assert m, f"{path.name}: the first line must be `# expect: LINE:COL: error: MESSAGE`"
    hint = next((HINT.match(ln).group(1) for ln in lines[1:3] if HINT.match(ln)), None)
    return int(m.group(1)), int(m.group(2)), m.group(3), m.group(4), hint


def test_there_are_enough_bad_specs():
    assert len(SPECS) >= 30
    messages = [expectation(p)[3] for p in SPECS]
    assert len(set(messages)) == len(messages), "one spec per diagnostic"


def _check_rendered(text: str, path: Path, line: int, col: int, severity: str):
    head = f"{path}:{line}:{col}: {severity}: "
    assert text.startswith(head), text
    source_line = path.read_text().splitlines()[line - 1]
    rendered = text.splitlines()
    assert len(rendered) >= 3, text
    shown = rendered[1].split("| ", 1)[1]
    assert shown == source_line or shown.strip(".") in source_line, text
    caret_line = rendered[2]
    assert "^" in caret_line, text
    # the caret sits under the reported column (lines shorter than the window are shown whole)
    if len(source_line) <= 100:
        assert caret_line.split("| ", 1)[1].index("^") == col - 1, text


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_diagnostic(path: Path):
    line, col, severity, message, hint = expectation(path)
    if severity == "warning":
        program = bil.compile(path)
        found = [w for w in program.warnings if message in w.message]
        assert found, [str(w) for w in program.warnings]
        w = found[0]
        assert (w.span.line, w.span.column) == (line, col), str(w)
        _check_rendered(str(w), path, line, col, "warning")
        if hint:
            assert w.hint and hint in w.hint, str(w)
        return
    with pytest.raises(bil.BilError) as info:
        bil.compile(path)
    err = info.value
    assert message in err.message, str(err)
    assert (err.line, err.column) == (line, col), str(err)
    assert err.file == str(path)
    _check_rendered(str(err), path, line, col, "error")
    # the quality bar: every error says what to try
    assert err.hint and "\nhint: " in str(err), f"{path.name}: no hint\n{err}"
    if hint:
        assert hint in err.hint, str(err)


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_cli_check_exit_code(path: Path, capsys):
    _, _, severity, message, _ = expectation(path)
    code = bil.cli.main(["check", str(path)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "internal error" not in err, err
    assert message in err
    assert code == (0 if severity == "warning" else 2)


def test_cli_check_subprocess_never_prints_a_traceback():
    """All bad specs at once through the real entry point: exit 2, diagnostics only."""
    r = subprocess.run([sys.executable, "-m", "bil", "check", *map(str, SPECS)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr[-2000:]
    errors = [p for p in SPECS if expectation(p)[2] == "error"]
    reported = re.findall(r"^(\S+\.bil):\d+:\d+: error: ", r.stderr, flags=re.M)
    assert sorted(set(reported)) == sorted(map(str, errors))
    # a spec with several independent errors (the same mistake in both objectives) says how many
    for f in set(reported):
        n = reported.count(f)
        assert (f"{f}: {n} errors" in r.stderr) == (n > 1), f


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.bil")), ids=lambda p: p.stem)
def test_cli_check_examples_pass(path: Path, capsys):
    assert bil.cli.main(["check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert f"{path}: ok" in out
    assert "error" not in err
