"""bil: a declarative language and compiler for bilevel optimization.

    >>> import bil
    >>> prog = bil.compile("examples/ridge.bil")
    >>> value, grads = prog.value_and_hypergrad()
"""

import jax as _jax

# float64 by default (the hypergradient tests run at float64 tolerance);
# a spec's `precision: "float32"` casts its arrays for GPU runs.
_jax.config.update("jax_enable_x64", True)

from bil.api import compile  # noqa: E402,A004
from bil.core.errors import BilError, BilInternalError, BilRuntimeError, BilUsageError  # noqa: E402
from bil.core.version import __version__  # noqa: E402
from bil.program import Program, Result  # noqa: E402

__all__ = ["compile", "BilError", "BilInternalError", "BilRuntimeError", "BilUsageError", "Program", "Result", "__version__"]
