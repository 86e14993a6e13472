"""Former home of the expression LaTeX printer, now :mod:`bil.compiler.render.expr_latex`.

Kept only while ``bil/cli.py`` (being split into ``compiler/render/``) still imports it
from here; delete it once nothing does.
"""

from bil.compiler.render.expr_latex import BilLatexPrinter, display, latex  # noqa: F401
