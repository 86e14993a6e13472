"""The standard library: registered functions, data sources, solver and optimizer names."""

from bil.stdlib.registry import REGISTRY, Function, closest, lookup, names, register

# importing the implementations runs their @register decorators: the registry is full as soon as
# any part of bil.stdlib is imported (the registry itself never imports them: no import cycle)
from bil.stdlib import functions, methods, sources  # noqa: E402,F401  isort: skip
from bil.stdlib import arrays, imaging, kernels, metrics, robust, tasks  # noqa: E402,F401  isort: skip
from bil.stdlib import adaptive_method  # noqa: E402,F401  isort: skip

__all__ = ["REGISTRY", "Function", "closest", "lookup", "names", "register"]
