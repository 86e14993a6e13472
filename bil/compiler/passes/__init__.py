"""Compiler passes, in pipeline order.  Each is a small frozen dataclass with a
``name`` and ``apply(state)``; :data:`PIPELINE` is the straight line they run in."""

from bil.compiler.passes.collect import Collect
from bil.compiler.passes.resolve import Resolve
from bil.compiler.passes.inline import Inline
from bil.compiler.passes.fold import EvaluateData, HoistConstants
from bil.compiler.passes.shapes import InferShapes
from bil.compiler.passes.options import CheckOptions
from bil.compiler.passes.levels import Levels
from bil.compiler.passes.structure import DetectStructure
from bil.compiler.passes.nonsmooth import SplitNonsmooth
from bil.compiler.passes.solver_choice import ChooseSolver
from bil.compiler.finite_sum import FiniteSumPass

PIPELINE = (
    Collect(),
    Resolve(),
    Inline(),
    EvaluateData(),
    InferShapes(),
    CheckOptions(),
    FiniteSumPass(),
    HoistConstants(),
    Levels(),
    SplitNonsmooth(),
    DetectStructure(),
    ChooseSolver(),
)

__all__ = ["PIPELINE", "Collect", "Resolve", "Inline", "EvaluateData", "InferShapes", "CheckOptions",
           "FiniteSumPass", "HoistConstants", "Levels", "SplitNonsmooth", "DetectStructure", "ChooseSolver"]
