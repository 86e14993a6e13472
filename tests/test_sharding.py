"""Several devices (bil.runtime.sharding): the same results as one device, the lower solution laid
out over every device, nothing recompiled across outer iterations.

The pytest process has one CPU device; the 4-device runs are subprocesses with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (tests/sharding_cases.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bil.runtime import sharding

from sharding_cases import run_case

ROOT = Path(__file__).resolve().parents[1]


def _on_devices(case: str, folder: Path, n: int = 4) -> dict:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "sharding_cases.py"), case, str(folder)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _same(a: dict, b: dict) -> None:
    """Every number of the two runs equal to 1e-10 (they differ by roundoff, ~1e-15)."""
    assert abs(a["value"] - b["value"]) <= 1e-10 and abs(a["upper"] - b["upper"]) <= 1e-10
    for key in ("grad", "hypers"):
        for name in a[key]:
            np.testing.assert_allclose(a[key][name], b[key][name], rtol=0, atol=1e-10)
    np.testing.assert_allclose(a["history"], b["history"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(a["x"], b["x"], rtol=0, atol=1e-10)


def _no_recompiles(r: dict) -> None:
    """Every function compiled by the end of the first outer iteration (``tasks``: the first
    hypergradient) has the same number of compiled versions at the end of the run (later ones,
    the final upper value's, are new)."""
    first, last = r["sizes"]["first"], r["sizes"]["last"]
    assert first and {k: last[k] for k in first} == first


def _tasks_closed_form(lam: float) -> tuple[float, float]:
    """F(λ) and dF/dλ of the ``tasks`` case in numpy: wᵢ = Aᵢ⁻¹Xᵢᵀyᵢ with Aᵢ = XᵢᵀXᵢ + λI,
    F = meanᵢ ½·mean((Vᵢwᵢ − vᵢ)²), dF/dλ = −meanᵢ ∇fᵢᵀAᵢ⁻¹wᵢ."""
    import bil
    from sharding_cases import TASKS

    d = {k: np.asarray(v) for k, v in bil.compile(TASKS).state.data.items()}   # (front end only)
    Fs, dFs = [], []
    for X, y, V, v in zip(d["Xtr"], d["ytr"], d["Xval"], d["yval"]):
        A = X.T @ X + lam * np.eye(X.shape[1])
        w = np.linalg.solve(A, X.T @ y)
        r = V @ w - v
        Fs.append(0.5 * np.mean(r ** 2))
        dFs.append(-(V.T @ r / len(v)) @ np.linalg.solve(A, w))
    return float(np.mean(Fs)), float(np.mean(dFs))


def test_tasks_split_over_4_devices(tmp_path):
    """8 ridge tasks (a CG lower solve each) on 4 devices, 2 per device: the closed-form value and
    hypergradient at two hypers, the second without compiling again.  (Equal to one device: the
    slow tests below.)"""
    many = _on_devices("tasks", tmp_path)
    assert many["x_devices"] == 4 and many["data_split"] == ["Xtr", "Xval", "ytr", "yval"]
    assert many["note"] == "devices: 4; 8 samples split 2 per device"
    for lam, value, grad in ((1.0, many["value"], many["grad"]["lam"]), (2.0, many["upper"], many["grad2"]["lam"])):
        F, dF = _tasks_closed_form(lam)
        assert abs(value - F) <= 1e-10 and abs(grad - dF) <= 1e-9
    _no_recompiles(many)


@pytest.mark.slow
def test_per_sample_split_over_4_devices(tmp_path):
    """8 images (a FISTA lower solve each) on 4 devices: 2 per device, the same numbers as one device."""
    (tmp_path / "4").mkdir()
    many = _on_devices("tv8", tmp_path / "4")
    one = run_case("tv8", str(tmp_path))
    assert one["x_devices"] == 1 and one["note"] is None
    assert many["x_devices"] == 4 and many["data_split"] == ["clean", "noisy"]
    assert many["note"] == "devices: 4; 8 samples split 2 per device"
    _same(many, one)
    _no_recompiles(many)


@pytest.mark.slow
def test_rows_split_over_4_devices(tmp_path):
    """16384 rows × 16 on 4 devices: X and y split by rows (Xv, 512 rows, too small: replicated)."""
    (tmp_path / "4").mkdir()
    many = _on_devices("ridge", tmp_path / "4")
    one = run_case("ridge", str(tmp_path))
    assert many["x_devices"] == 4 and many["data_split"] == ["X", "y"]
    assert many["note"] == "devices: 4; data with 16384 rows split 4096 rows per device"
    _same(many, one)
    _no_recompiles(many)


@pytest.mark.slow
@pytest.mark.parametrize("n, used", [(6, 3), (5, None)])
def test_samples_not_divisible(tmp_path, n, used):
    """6 samples on 4 devices go on 3 of them; 5 (prime) are replicated on all four; same numbers."""
    (tmp_path / "4").mkdir()
    many = _on_devices(f"tv{n}", tmp_path / "4")
    one = run_case(f"tv{n}", str(tmp_path))
    if used:
        assert many["x_devices"] == used and "over 3 of them" in many["note"]
    else:
        assert many["x_devices"] == 4 and many["data_split"] == [] and "cannot be split evenly" in many["note"]
    _same(many, one)
    _no_recompiles(many)


# ------------------------------------------------------------------------- the rules, without devices
def _devices(per_process: list[int]):
    return [SimpleNamespace(id=i, process_index=p) for p, k in enumerate(per_process) for i in range(k)]


@pytest.mark.parametrize("n, per_process, used", [
    (8, [4], 4), (64, [4], 4), (6, [4], 3), (3, [4], 3), (7, [4], 1), (5, [4], 1),
    (8, [2, 2], 4), (6, [2, 2], 2), (4, [4, 4], 4), (3, [2, 2], 0)])
def test_devices_for_samples(n, per_process, used):
    """The most devices that divide N, the same number from every process (none when impossible)."""
    got = sharding._devices_for(n, _devices(per_process))
    assert len(got) == used and (used == 0 or n % used == 0)
    counts = {p: sum(d.process_index == p for d in got) for p in range(len(per_process))}
    assert used == 0 or len(set(counts.values())) == 1


def test_split_rows_rule():
    """Split by rows: a row count divisible by the device count whose arrays hold ≥ 2^16 elements per device."""
    big = sharding.MIN_ELEMENTS_PER_DEVICE * 4
    data = {"names": {"X": np.zeros((big // 16, 16)), "y": np.zeros(big // 16), "small": np.zeros((512, 4))},
            "consts": {}}
    assert sharding._split_rows(data, 4) == big // 16
    assert sharding._split_rows(data, 3) is None                # 16384 rows do not divide by 3
    assert sharding._split_rows({"names": {"X": np.zeros((1024, 16))}, "consts": {}}, 4) is None  # too small


def test_one_device_unchanged():
    """One device: no layout, the program's data as lowered."""
    assert sharding.plan(8, {"names": {}, "consts": {}}, {"names": {}, "consts": {}}, devices=["cpu0"]) is None
