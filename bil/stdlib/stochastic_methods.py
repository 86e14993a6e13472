"""Option classes of the stochastic outer methods (SOBA, SABA) over ``sampled`` rows.

Registered in the ``outer`` namespace like :mod:`bil.stdlib.methods`' loops (which imports
this module); their runtime is :mod:`bil.runtime.stochastic`.  ``stochastic = True`` tells
the compiler they need a spec with ``sampled`` data (:mod:`bil.compiler.finite_sum`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from bil.stdlib.method_options import MethodOptions, OptionError, count, flag, positive, register_method


@dataclass(frozen=True)
class _Stochastic(MethodOptions):
    stochastic: ClassVar[bool] = True

    batch: int = 64
    rho: float = 0.1
    gamma: float = 0.01
    max_iter: int = 10000
    chunk: int = 100
    budget: Optional[int] = None
    seed: int = 0

    def __post_init__(self):
        count(self, "batch", "max_iter", "chunk", "budget")
        positive(self, "rho", "gamma")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise OptionError(f"{self._label('seed')} must be an integer >= 0, got {self.seed!r}", arg="seed")


@register_method("soba", kind="outer")
@dataclass(frozen=True)
class Soba(_Stochastic):
    """SOBA (Dagréou et al. 2022): one SGD step per iteration on the lower variables (step `rho`), the
    linear-system variable (`rho`) and the hypers (`gamma`), each from a minibatch of `batch` rows of every
    `sampled` statement; with `decay` the steps shrink as `rho/t^(2/5)`, `gamma/t^(3/5)`.

    `max_iter` counts iterations; `chunk` iterations run in one compiled step and make one history
    record; `budget`: total sample gradients; `seed`: the minibatch sequence (same seed, same run)."""

    decay: bool = True

    def __post_init__(self):
        super().__post_init__()
        flag(self, "decay")


@register_method("saba", kind="outer")
@dataclass(frozen=True)
class Saba(_Stochastic):
    """SABA (Dagréou et al. 2022): SOBA's joint steps with SAGA estimates (a memory of each row's
    last oracle values), constant steps `rho` and `gamma`; options as in `soba`."""
