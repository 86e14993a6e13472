"""bil: a declarative language and compiler for bilevel optimization.

    >>> import bil
    >>> prog = bil.compile("examples/ridge.bil")
    >>> value, grads = prog.value_and_hypergrad()

Importing ``bil`` loads neither JAX nor the compiler: ``bil.compile``, ``bil.Program`` and
``bil.Result`` are loaded on first use, so ``bil --help`` starts in a fraction of a second.
"""

import os as _os
import sys as _sys

from bil.core.errors import BilError, BilInternalError, BilRuntimeError, BilUsageError
from bil.core.version import __version__

# float64 by default (the hypergradient tests run at float64 tolerance); a spec's
# `precision: "float32"` casts its arrays for GPU runs.  JAX reads JAX_ENABLE_X64 when it is
# first imported, so setting it here enables x64 without importing JAX now; a JAX imported
# before bil is switched directly.
_os.environ["JAX_ENABLE_X64"] = "1"
if hasattr(_sys.modules.get("jax"), "config"):
    _sys.modules["jax"].config.update("jax_enable_x64", True)

__all__ = ["compile", "BilError", "BilInternalError", "BilRuntimeError", "BilUsageError", "Program", "Result", "__version__"]


def __getattr__(name: str):
    """``bil.compile``, ``bil.Program``, ``bil.Result``: imported on first use (they load JAX)."""
    if name == "compile":
        from bil.api import compile as value
    elif name in ("Program", "Result"):
        from bil import program

        value = getattr(program, name)
    else:
        raise AttributeError(f"module 'bil' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
