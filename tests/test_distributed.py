"""`bil run --distributed`: two processes on localhost (CPU, gloo collectives, two forced
devices each) run the same spec through JAX's multi-process runtime, the spec's samples split
over the four devices of both.

The result must be the single-process run's; only process 0 writes the output folder or
prints; a resumed run's processes read the same checkpoint (and stop, all of them, with an
error when they do not).  Every subprocess has a timeout, so a hung collective fails the
test instead of blocking the suite.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bil
from bil.cli import main
from bil.runtime import distributed

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "tests" / "problems" / "fewshot_ridge.bil"
TIMEOUT = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    return env


def _start(outs: list[Path], *args: str, only: dict | None = None) -> list[subprocess.Popen]:
    """``bil run SPEC --distributed ...`` as processes 0..len(outs)-1, process i writing to
    ``outs[i]`` (the same folder for all in a real cluster), with ``only[i]`` (a list of
    arguments) added for process i alone."""
    port, n = _free_port(), len(outs)
    return [subprocess.Popen([sys.executable, "-m", "bil", "run", str(SPEC), "--out", str(out), *args,
                              *(only or {}).get(i, []),
                              "--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(n),
                              "--process-id", str(i)],
                             cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i, out in enumerate(outs)]


def _finish(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    """``(exit code, stdout, stderr)`` of every process; all killed if one outlives the timeout."""
    done = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=TIMEOUT)
            done.append((p.returncode, out, err))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"a distributed run did not finish in {TIMEOUT} s: " + "\n".join(p.stderr.read() for p in procs))
    return done


def _own_lines(text: str) -> list[str]:
    """``text`` without the gloo library's connection lines (its C++ code prints them on stdout;
    bil silences those of its own collectives, but a library may connect again later)."""
    return [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("[Gloo]")]


def _reference(max_iter: int):
    return bil.compile(SPEC, overrides={"solve.outer.max_iter": max_iter}).run()


def _assert_same_result(res: dict, ref) -> None:
    """The distributed run's result.json against the single-process (one-device) run.

    The two processes split the 24 tasks over their 4 devices (6 each); every task's lower and
    adjoint solves are the same floating-point operations as on one device, and only the sums
    over tasks (the upper mean, the hypergradient) are added in another order (per device, then
    across devices).  That reorders 24 terms: a relative difference of a few 1e-16 per sum, which
    two outer steps carry into the hypers without amplifying it by more than the problem's
    condition number (< 1e3 here).  So 1e-10 bounds it with a wide margin while any real error
    (a task missing or counted twice, a stale iterate) changes the result at 1e-3 or more; the
    iteration counts must be equal, so no stopping decision was flipped."""
    assert res["iterations"] == len(ref.history)
    assert res["lower_iters"] == int(ref.state["lower_iters_total"])
    assert res["cg_iters"] == int(ref.state["cg_iters_total"])
    np.testing.assert_allclose(res["upper"], ref.upper, rtol=1e-10)
    for name, v in ref.hypers.items():
        np.testing.assert_allclose(np.asarray(res["hypers"][name]), np.asarray(v), rtol=1e-10, atol=0)


def test_two_processes_give_the_single_process_result_and_only_process_0_writes(tmp_path):
    out0, out1 = tmp_path / "run", tmp_path / "run_of_process_1"
    procs = _start([out0, out1], "--set", "solve.outer.max_iter=2")
    ref = _reference(2)                                   # (while the two run)
    (rc0, so0, se0), (rc1, so1, se1) = _finish(procs)
    assert (rc0, rc1) == (0, 0), se0 + se1
    res = json.loads((out0 / "result.json").read_text())
    _assert_same_result(res, ref)
    assert (out0 / "checkpoint.npz").is_file() and (out0 / "history.csv").is_file()
    # process 0 split the 24 tasks over the 4 devices of both processes, and printed the progress and summary
    assert "devices: 4; 24 samples split 6 per device" in se0 and "iter 2" in se0
    assert "upper" in so0 and "max_iter reached" in so0
    # process 1 computed the same run but wrote nothing (not even its --out folder) and printed nothing
    assert not out1.exists()
    assert _own_lines(so1) == [] and _own_lines(se1) == []


@pytest.mark.slow
def test_resume_across_processes_continues_from_process_0s_checkpoint(tmp_path):
    out = tmp_path / "run"
    first = _finish(_start([out, out], "-q", "--set", "solve.outer.max_iter=2"))
    assert [r[0] for r in first] == [0, 0], first
    resumed = _finish(_start([out, out], "-q", "--resume", "--set", "solve.outer.max_iter=3"))
    assert [r[0] for r in resumed] == [0, 0], resumed
    _assert_same_result(json.loads((out / "result.json").read_text()), _reference(3))
    assert len((out / "history.csv").read_text().splitlines()) == 1 + 3


@pytest.mark.slow
def test_processes_that_see_different_checkpoints_all_stop_with_an_error(tmp_path):
    out = tmp_path / "run"
    assert [r[0] for r in _finish(_start([out, out], "-q", "--set", "solve.outer.max_iter=1"))] == [0, 0]
    other = tmp_path / "not_shared"        # process 1's "file system" has no checkpoint
    runs = _finish(_start([out, other], "-q", "--resume", "--set", "solve.outer.max_iter=2"))
    assert [r[0] for r in runs] == [2, 2], runs
    for _, _, err in runs:
        assert "process 1 sees another checkpoint" in err and "share" in err
        assert "Traceback" not in err


@pytest.mark.slow
def test_a_spec_error_on_one_process_stops_every_process(tmp_path):
    out = tmp_path / "run"
    runs = _finish(_start([out, out], "-q", only={1: ["--set", "hyper.lam=-1"]}))   # lam is `positive`
    assert [r[0] for r in runs] == [2, 2], runs
    assert "error" in runs[1][2] and "lam" in runs[1][2]                # process 1: the spec's diagnostic
    assert "process 1 stopped while compiling the spec" in runs[0][2]
    assert not (out / "result.json").exists()
    assert all("Traceback" not in err for _, _, err in runs)


_API_SCRIPT = """
import json, sys
import bil
port, i = sys.argv[1], int(sys.argv[2])
prog = bil.compile(sys.argv[3], overrides={"solve.outer.max_iter": 1}, distributed=True,
                   coordinator="127.0.0.1:" + port, num_processes=2, process_id=i)
mesh = prog.lowered.layout.mesh
r = prog.run()
print(json.dumps({"devices": int(mesh.devices.size), "processes": sorted({d.process_index for d in mesh.devices.flat}),
                  "upper": r.upper, "lam": float(r.hypers["lam"])}))
"""


@pytest.mark.slow
def test_the_python_api_splits_the_samples_over_every_processs_devices():
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-c", _API_SCRIPT, str(port), str(i), str(SPEC)], cwd=REPO, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    ref = _reference(1)
    runs = _finish(procs)
    assert [r[0] for r in runs] == [0, 0], runs
    got = [json.loads(_own_lines(out)[-1]) for _, out, _ in runs]
    for g in got:
        assert g["devices"] == 4 and g["processes"] == [0, 1]
        np.testing.assert_allclose([g["upper"], g["lam"]], [ref.upper, ref.hypers["lam"]], rtol=1e-10)
    assert got[0] == got[1]   # every process holds the same result


# ------------------------------------------------------------ settings (no processes started)
@pytest.mark.parametrize("args, message", [
    (["--coordinator", "h:1"], "--coordinator needs --distributed"),
    (["--distributed", "--coordinator", "h"], "--coordinator must be HOST:PORT"),
    (["--distributed", "--coordinator", "h:1", "--num-processes", "0"], "--num-processes must be at least 1"),
    (["--distributed", "--num-processes", "2", "--process-id", "2"], "--process-id must be below --num-processes"),
])
def test_bad_distributed_flags_are_errors_not_tracebacks(args, message, capsys):
    assert main(["run", str(SPEC), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_distributed_without_settings_or_cluster_says_what_to_pass(monkeypatch, capsys):
    # nothing for JAX's cluster detection to find (it reads these variables; mpi4py is opt-in only)
    for var in ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(var, raising=False)
    # (JAX refuses to start the runtime once it has computed; this process has, in other tests)
    monkeypatch.setattr("jax._src.xla_bridge.backends_are_initialized", lambda: False)
    assert main(["run", str(SPEC), "--distributed"]) == 2
    err = capsys.readouterr().err
    assert "no cluster (SLURM, Open MPI, ...) detected" in err and "--coordinator HOST:PORT" in err
    assert not distributed.active()


def test_the_python_api_checks_its_distributed_keywords():
    with pytest.raises(bil.BilUsageError, match="`process_id=` needs `distributed=True`"):
        bil.compile(SPEC, process_id=1)
    with pytest.raises(bil.BilUsageError, match="`num_processes=` must be a whole number"):
        bil.compile(SPEC, distributed=True, num_processes="2")
