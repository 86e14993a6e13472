"""Size limits on data a spec reads or builds (hostile or careless input).

One constant for the whole package: :data:`DEFAULT_MAX_ELEMENTS` elements per
array.  :data:`max_elements` is the limit in force; the compiler (``bil.compile
(max_elements=...)``, ``bil ... --max-elements``) may set it for one compile.
"""

from __future__ import annotations

import contextvars

#: the largest array (in elements) a spec may load or build unless told otherwise: 10^8
#: float64 values are 800 MB
DEFAULT_MAX_ELEMENTS = 10**8

#: the limit in force (set for one compile; default :data:`DEFAULT_MAX_ELEMENTS`)
max_elements: contextvars.ContextVar[int] = contextvars.ContextVar("max_elements", default=DEFAULT_MAX_ELEMENTS)


def current_max_elements() -> int:
    """The element limit in force for this compile."""
    return int(max_elements.get())
