"""The stop-reason enum and the outer-loop driver on a toy loop (no oracles, no compilation)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from bil.runtime.outer.driver import drive, pytree_state
from bil.runtime.outer.floor import floor_reason
from bil.runtime.outer.history import OuterResult
from bil.runtime.outer.stops import RESUMABLE, Status, Stop

DOCS = Path(__file__).resolve().parents[1] / "docs" / "ALGORITHMS.md"


def test_stop_reasons_parse_back_and_say_how_a_run_ends():
    assert RESUMABLE == {"max_iter reached", "budget exhausted", "stopped by callback"}
    floor = floor_reason(1e-3, "ε at its floor")
    assert Stop.of(floor) is Stop.FLOOR and not Stop.FLOOR.failed and not Stop.FLOOR.resumable
    assert Stop.of(Stop.invalid_mu(-1.0)) is Stop.INVALID_MU and Stop.INVALID_MU.exit_code == 1
    assert Stop.of("lower solve hit its iteration cap") is Stop.LOWER_CAP
    assert Stop.LOWER_CAP.statuses == (Status.CAP, Status.OK) and Stop.NOT_PD.statuses == (0, 3)
    assert Stop.of("something else") is None and Stop.of(None) is None
    assert str(Stop.CONVERGED) == "gradient norm below tol" and f"{Stop.BUDGET}" == "budget exhausted"
    # a failure is described either by solver statuses (Engine.failure) or by its own hint
    assert all((m.statuses is not None) != (m.hint is not None) for m in Stop if m.failed)


def test_every_stop_reason_is_in_the_documented_table():
    table = DOCS.read_text()
    for m in Stop:
        assert f"| `{m.value}" in table, m


@pytree_state
@dataclasses.dataclass
class _Count:
    u: float
    f: float


class _Toy:
    """u ← u/2 per iteration; fails (after spending) when ``fail_at`` is reached."""

    name = "toy"

    def __init__(self, max_iter: int, fail_at: float = -1.0):
        self.max_iter, self.budget, self.fail_at = max_iter, None, fail_at

    def init(self, tr):
        return _Count(8.0, 64.0), None

    def restore(self, tr, saved):
        return _Count(float(saved["u"]), float(saved["upper"]))

    def step(self, s, tr):
        tr.spend(3, 1)
        u = s.u / 2
        if u <= self.fail_at:
            return s, None, Stop.LOWER_NONFINITE
        s = _Count(u, u * u)
        return s, {**self.stop_record(s), "step": 0.5}, (Stop.CONVERGED if u < 1 else None)

    def stop_record(self, s):
        return dict(upper=s.f, grad_norm=s.u, omega=math.nan, eps=0.0, delta=0.0, step=0.0, backtracks=0,
                    hypers={"u": s.u})

    def flatten(self, s):
        return {"u": s.u, "upper": s.f}

    def result(self, s, tr, reason):
        return OuterResult(u={"u": s.u}, hypers={"u": s.u}, x=None, q=None, upper=s.f, history=tr.history,
                           converged=reason == Stop.CONVERGED, reason=reason)


def _columns(res):
    return [(r["iter"], r["upper"], r["lower_iters_total"]) for r in res.history]


def test_driver_limits_callback_and_bit_identical_resume():
    full = drive(_Toy(10))
    assert full.reason == "gradient norm below tol" and full.converged and len(full.history) == 4
    assert full.state["stop"] == "gradient norm below tol"
    assert drive(_Toy(2)).reason == "max_iter reached"
    states = []
    cut = drive(_Toy(10), callback=lambda rec, st: states.append(st) or rec["iter"] == 2)
    assert cut.reason == "stopped by callback" and "stop" not in cut.state and len(states) == 2
    saved = {k: (np.asarray(v) if not isinstance(v, str) else v) for k, v in states[-1].items()}
    again = drive(_Toy(10), saved=saved)
    assert _columns(again) == _columns(full) and again.reason == full.reason


def test_driver_records_a_failed_iteration_with_step_zero():
    res = drive(_Toy(10, fail_at=2.0))
    assert res.reason == "lower solve produced non-finite values" and not res.converged
    last = res.history[-1]
    assert len(res.history) == 2 and last["step"] == 0.0 and last["upper"] == 16.0
    assert last["lower_iters"] == 3 and res.state["stop"] == res.reason
