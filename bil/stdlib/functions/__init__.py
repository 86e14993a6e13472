"""Array and meta functions of the standard library, one module per theme.

``kind="array"`` functions are plain JAX: they take ``jnp`` arrays (or Python
scalars) and return a ``jnp`` array.  The compiler infers their result shapes by
running them under ``jax.eval_shape``, so every check here looks at shapes and
dtypes only, never at values.  Parameters listed in ``static=`` (axes, sizes,
seeds) arrive as Python values.  Each registers its degree rule, LaTeX form and
compile-time check beside it (:mod:`bil.stdlib.rules`).

``kind="meta"`` functions (``shape rows ncols nclasses``) run during constant
folding on concrete arrays and return Python ints or tuples of ints.

Bad user input raises :class:`StdlibError`; the compiler reports it at the
call (or at the argument named by ``arg``).  Broadcasting mismatches are left
to JAX, whose ``TypeError`` the compiler also turns into a diagnostic.
"""

# Importing the theme modules runs their @register decorators.
from bil.stdlib.functions import constructors, elementwise, images, linalg, losses, reductions  # noqa: F401
from bil.stdlib.functions.common import _axis, _dim, _is_abstract, _ndim_error, _shape_arg  # noqa: F401
from bil.stdlib.functions.losses import _check_class_labels, class_label_problem  # noqa: F401
from bil.stdlib.functions.meta import ncols, nclasses, rows, shape  # noqa: F401
