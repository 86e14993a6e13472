"""What the passes know about a spec: filled in, pass by pass, on one object."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import networkx as nx
import numpy as np

from bil.core import ir
from bil.core.errors import Diagnostics, Warning_
from bil.core.source import Source

#: levels of the level analysis, from "depends on nothing" upwards
CONST, THETA, LOWER = "const", "theta", "lower"


@dataclass
class HyperInfo:
    """A hyper after shape/domain inference.  ``init`` is in user coordinates."""

    name: str
    node: ir.Hyper
    kind: str  # "real" | "positive"
    shape: tuple[int, ...] = ()
    bounds: Optional[tuple[float, float]] = None
    init: Optional[np.ndarray] = None

    @property
    def transform(self) -> str:
        """The bijection from unconstrained to user coordinates."""
        if self.bounds is not None:
            return "sigmoid"
        return "exp" if self.kind == "positive" else "identity"


@dataclass
class VarInfo:
    """A lower variable after inference (shape per sample)."""

    name: str
    node: ir.LowerVar
    init: ir.Expr
    shape: tuple[int, ...] = ()
    kind: str = "real"
    bounds: Optional[tuple[float, float]] = None


@dataclass
class Method:
    """A training optimizer as ``train ... with OPT`` names it: name and its constant defaults.

    Its arguments that are expressions (a learned ``lr=lr``) are ``train_args``; the option
    objects of ``solver:``, ``hypergradient:`` and ``outer:`` are :mod:`bil.stdlib.methods`'."""

    name: str
    kwargs: dict[str, Any]
    span: Any = None

    def show(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.name}({inner})"


@dataclass
class CompileState:
    source: Source
    module: ir.Module
    data_override: dict[str, Any] = field(default_factory=dict)
    #: the folder relative paths (``load("f.npz")``) are taken from: the spec's folder, or for a
    #: spec given as text the current folder or ``base_dir=`` (absolute; set by the pipeline)
    base_dir: Optional[Path] = None
    problem: str = "problem"
    graph: nx.DiGraph = field(default_factory=nx.DiGraph)
    #: user symbols: name -> IR statement node (Data, Hyper, LowerVar, Def)
    symbols: dict[str, Any] = field(default_factory=dict)
    defs: dict[str, ir.Def] = field(default_factory=dict)
    data_stmts: list[ir.Data] = field(default_factory=list)
    lower: Optional[ir.Lower] = None
    upper: Optional[ir.Upper] = None
    solve: Optional[ir.Solve] = None
    # filled by fold / shapes
    data: dict[str, np.ndarray] = field(default_factory=dict)
    per_sample: set[str] = field(default_factory=set)
    n_samples: Optional[int] = None
    #: ``sampled`` data: name -> its row group (the statement's first name); group -> row count N
    sampled: dict[str, str] = field(default_factory=dict)
    row_counts: dict[str, int] = field(default_factory=dict)
    hypers: dict[str, HyperInfo] = field(default_factory=dict)
    lower_vars: dict[str, VarInfo] = field(default_factory=dict)
    goal: Optional[ir.Expr] = None
    upper_expr: Optional[ir.Expr] = None
    train_optimizer: Optional[Method] = None
    train_args: dict[str, ir.Expr] = field(default_factory=dict)
    train_steps: Optional[int] = None
    consts: dict[str, ir.Const] = field(default_factory=dict)
    # filled by options / levels / structure
    options: dict[str, Any] = field(default_factory=dict)
    levels: dict[str, str] = field(default_factory=dict)
    structure: dict[str, Any] = field(default_factory=dict)
    warnings: list[Warning_] = field(default_factory=list)
    #: independent errors found so far (raised together after the pass that found them)
    diag: Diagnostics = field(default_factory=Diagnostics)

    @property
    def is_train(self) -> bool:
        return isinstance(self.lower.goal, ir.Train)
