"""Shared pytest configuration: float64 JAX, one compilation cache per test session, and the
``--update-golden`` flag."""

import os
import tempfile

import bil  # noqa: F401  (first: enables jax_enable_x64 before any test imports jax)
import jax
import pytest

from bil.runtime import compile_cache

jax.config.update("jax_enable_x64", True)

# One persistent compilation cache per session, shared by the xdist workers and the `bil`
# subprocesses the tests start (they inherit the variable): the same small programs are
# compiled once per session, and nothing is written to the user's ~/.cache.  The controller
# sets it before the workers start; a worker finds it set.
if "BIL_CACHE_DIR" not in os.environ:
    os.environ["BIL_CACHE_DIR"] = tempfile.mkdtemp(prefix="bil-test-cache-")
compile_cache.enable()


def pytest_addoption(parser):
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/golden/*.ir from the compiler's current output instead of comparing",
    )


@pytest.fixture
def update_golden(request) -> bool:
    """True when pytest runs with ``--update-golden``."""
    return request.config.getoption("--update-golden")
