"""Start-up cost: `bil --help`, `bil --version` and `import bil` / `import bil.cli` load neither JAX
nor matplotlib (the compiler and the runtime are imported by the commands that use them), while
`import bil` still makes JAX compute in float64."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("jax", "matplotlib", "numpy", "optax", "sympy", "sklearn", "skimage", "rich", "networkx", "lark")


def _python(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("JAX_ENABLE_X64", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["run", "--help"], []])
def test_cli_without_a_spec_loads_no_heavy_module(argv):
    code = ("import sys, contextlib, io\nfrom bil.cli import main\n"
            f"with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            f"    main({argv!r})\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    assert _python(code) == "[]"


def test_import_bil_is_lazy_but_float64():
    code = ("import sys, bil\nlazy = sorted(m for m in ('jax', 'bil.api', 'bil.program') if m in sys.modules)\n"
            "import jax.numpy as jnp\nprint(lazy, jnp.zeros(1).dtype, bil.compile.__module__, bil.Program.__name__)")
    assert _python(code) == "[] float64 bil.api Program"


def test_jax_imported_before_bil_is_switched_to_float64():
    import importlib

    import jax

    import bil

    jax.config.update("jax_enable_x64", False)
    try:
        importlib.reload(bil)
        assert jax.config.jax_enable_x64
    finally:
        jax.config.update("jax_enable_x64", True)
