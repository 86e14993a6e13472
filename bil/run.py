"""``bil run`` as a library: compile → output folder → resume → run → write the outputs.

:func:`run_spec` is what the command does once its arguments are parsed (``bil.cli`` only
parses them and reports errors); tests drive it in-process.  The steps:

1. compile the spec (:func:`compile_file`; ``--set`` overrides applied);
2. check the output folder (not ``/``, the home folder or the spec's folder; only a folder
   ``bil run`` wrote, unless ``force``), create it, probe that it is writable, and lock it
   (one run per folder);
3. with ``resume``: check that the checkpoint there fits (same problem, spec and data; the
   same overrides but for the limits) and decide whether anything is left to do; without it:
   clear what an earlier run left;
4. run the outer loop with a progress display, checkpointing every ``checkpoint_every``
   iterations and on Ctrl-C or SIGTERM;
5. write result.json, history.csv, the arrays and the plots, then mark the folder current.

With several processes (``--distributed``, :mod:`bil.runtime.distributed`) every process
compiles and runs; only process 0 checks, locks and writes the folder and prints progress;
a resumed run's processes all read process 0's checkpoint (a shared file system) and check
that they read the same one.

Problems outside the spec (the folder, the checkpoint) raise :class:`RunError`; errors in
the spec raise :class:`bil.BilError`.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import bil
from bil.core.version import __version__
from bil.runtime import distributed
from bil.runtime.outer.stops import RESUMABLE, Stop

#: a checkpoint may differ from the resuming command in these keys only (extending a run)
_RESUME_FREE_KEYS = frozenset({"solve.outer.max_iter", "solve.outer.steps", "solve.outer.budget",
                               "solve.checkpoint_every"})   # (how often it saves: no effect on results)
#: stop reasons after which --resume continues the run (with raised limits); any other stop is final
_RESUMABLE_STOPS = RESUMABLE
#: hidden, for tests: seconds to sleep after each outer iteration (so a kill lands mid-run)
_SLEEP_ENV = "BIL_TEST_SLEEP_PER_ITER"


class RunError(Exception):
    """A problem outside the spec (an unreadable spec file, an output folder bil may not use, a
    checkpoint that does not fit): the CLI prints ``bil: error: MESSAGE`` and exits 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM during a run: handled as an interruption (checkpoint saved); the CLI exits 143."""


def _terminate(signum, frame) -> None:
    raise Terminated


@dataclass(frozen=True)
class RunRequest:
    """What ``bil run`` is asked to do (its command line, parsed)."""

    file: str
    #: ``--set`` overrides, parsed: ``(key, value text)`` pairs in order
    overrides: tuple[tuple[str, str], ...] = ()
    #: the output folder (default ``runs/<problem>/``)
    out: str | None = None
    resume: bool = False
    force: bool = False
    quiet: bool = False
    allow_paths: tuple[str, ...] = ()


def compile_file(path: str, overrides=(), stderr: TextIO | None = None,
                 allow_paths=()) -> tuple["bil.Program", bytes]:
    """Compile ``path`` with ``--set`` overrides; ``(program, spec bytes)``; warnings to stderr.
    ``load`` may read files in the spec's folder and in ``allow_paths`` (``--allow-path``)."""
    p = Path(path)
    try:
        spec = p.read_bytes()
        spec.decode("utf-8")
    except IsADirectoryError:
        raise RunError(f"`{path}` is a directory, not a .bil file") from None
    except FileNotFoundError:
        raise RunError(f"no such file: `{path}`") from None
    except OSError as e:
        raise RunError(f"cannot read `{path}`: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise RunError(f"`{path}` is not UTF-8 text (byte {e.start}); is it a .bil file?") from None
    program = bil.compile(p, overrides=list(overrides) or None, allow_paths=list(allow_paths or ()))
    if distributed.is_writer():
        for w in program.warnings:
            print(w, file=stderr or sys.stderr)
    return program, spec


def run_spec(req: RunRequest) -> bool:
    """Run ``req`` to the end (see the module docstring); False when the run stopped on a failed
    solve (its outputs up to the last good point are written, the diagnostic printed)."""
    from bil.runtime import outdir

    overrides = list(req.overrides)
    # a resumed run's limits apply to the outer method its checkpoint was written with, which an
    # earlier `--set solve.outer=adam(...)` may have chosen: checked after merging, below
    first = [kv for kv in overrides if kv[0] not in _RESUME_FREE_KEYS] if req.resume else overrides
    with distributed.together("compiling the spec"):
        program, spec = compile_file(req.file, first, allow_paths=req.allow_paths)
    if req.out is not None and not str(req.out).strip():
        raise RunError("--out needs a folder name (got an empty one)")
    out = Path(req.out) if req.out else Path("runs") / program.name
    # one run per folder, locked by process 0 only; released (and removed) when this one ends
    lock = outdir.RunLock(out) if distributed.is_writer() else None
    try:
        try:
            with distributed.together(f"preparing the output folder `{out}`"):
                if lock is not None:
                    _prepare_folder(out, program, req)
                    lock.acquire()
                    outdir.clean_stale_temps(out)   # left by a killed run: nobody else writes here now
            return _run_locked(req, program, spec, out, overrides, first)
        finally:
            if lock is not None:
                lock.release()
    except outdir.OutDirError as e:
        raise RunError(str(e)) from None


def _prepare_folder(out: Path, program, req: RunRequest) -> None:
    """Refuse a folder bil may not use; create ``out`` and check that it is writable."""
    from bil.runtime import outdir

    try:
        # not /, the home folder or the spec's folder; only a folder bil wrote (or --force)
        outdir.check_place(out, program.state.base_dir)
        if not req.force and not outdir.is_ours(out, req.resume):
            raise outdir.refuse_foreign(out)
    except outdir.OutDirError as e:
        raise RunError(str(e)) from None
    try:
        out.mkdir(parents=True, exist_ok=True)
        # before the run, not after it: a folder it cannot write would lose the whole run
        probe = out / outdir.PROBE_NAME
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise RunError(str(outdir.OutDirError.too_long(out))) from None
        raise RunError(f"cannot write to `{out}`: {e.strerror or e}; pass another --out DIR") from None


def _run_locked(req: RunRequest, program, spec: bytes, out: Path, overrides, first) -> bool:
    """The run with the output folder locked: resume checks, clearing a fresh run's folder, the run."""
    from bil.runtime import checkpoint, results

    ckpt = checkpoint.checkpoint_path(out)
    sha = results.spec_sha256(spec)
    data_sha = results.data_sha256(program.state.data)

    state = None
    if req.resume:
        # every process reads process 0's checkpoint (the folder on a shared file system)
        distributed.agree(ckpt.read_bytes() if ckpt.is_file() else b"", f"checkpoint `{ckpt}`",
                          "--resume across hosts needs the output folder on a file system they all share")
        resumed = _resume(req, program, spec, out, ckpt, overrides, first, sha, data_sha)
        if isinstance(resumed, bool):   # nothing left to do
            return resumed
        program, spec, state, overrides = resumed
    if state is None and distributed.is_writer():   # a fresh run: nothing stale may survive
        _clear_folder(out, ckpt)

    outer = program.state.options["solve"]["outer"]
    if state is not None and str(state.get("method", outer.name)) != outer.name:
        raise RunError(f"`{ckpt}` belongs to outer method `{state.get('method')}`, but the spec now uses "
                       f"`{outer.name}`; run without --resume to start over")
    start = int(state.get("iteration", 0)) if state is not None else 0
    meta = {"spec_sha256": sha, "data_sha256": data_sha, "overrides": [list(kv) for kv in overrides],
            "problem": program.name, "method": outer.name, "bil": __version__, "spec": str(req.file)}
    # SIGTERM (a scheduler's or `kill`'s stop) ends the run like Ctrl-C: the checkpoint is saved
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:          # not the main thread (bil.cli.main called from a worker): leave it
        previous = None
    try:
        return _run_loop(req, program, spec, out, ckpt, state, meta, start)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _resume(req: RunRequest, program, spec: bytes, out: Path, ckpt: Path, overrides, first, sha: str,
            data_sha: str):
    """``(program, spec, state, overrides)`` to continue from the checkpoint in ``out`` (state None:
    there is none, start afresh), or the run's outcome (a bool) when nothing is left to do."""
    from bil.runtime import checkpoint, outdir

    if not ckpt.is_file():
        # printed even with --quiet: the run's earlier --set values are not known here
        _note(f"bil: no checkpoint in `{out}`; starting from the beginning with this command's --set values")
        if first != overrides:
            program, spec = compile_file(req.file, overrides, allow_paths=req.allow_paths)
        return program, spec, None, overrides
    state, meta = checkpoint.load(ckpt)
    if meta.get("problem") not in (None, program.name):
        raise RunError(f"`{ckpt}` belongs to problem `{meta.get('problem')}` (`{meta.get('spec')}`), not "
                       f"`{program.name}`; pass that spec, another --out, or run without --resume")
    if meta.get("spec_sha256") != sha:
        raise RunError(f"`{req.file}` changed since `{ckpt}` was written; run without --resume to "
                       f"start over")
    if meta.get("data_sha256", data_sha) != data_sha:
        raise RunError(f"the data of `{req.file}` (what its `data` statements load or generate) "
                       f"changed since `{ckpt}` was written; run without --resume to start over")
    overrides = _resume_overrides(overrides, meta, ckpt)
    if overrides != first:
        program, spec = compile_file(req.file, overrides, allow_paths=req.allow_paths)
    if outdir.outputs_iteration(out) is None and distributed.is_writer():
        outdir.write_marker(out)   # a folder an older bil wrote: ours from now on
    finished = meta.get("finished")
    if finished is not None and finished not in _RESUMABLE_STOPS:
        # nothing left to do (re-running would add an iteration); its outputs are on disk,
        # unless the run was killed between its last checkpoint and writing them
        wrote = _write_missing_outputs(program, out, state, finished, spec)
        _note(f"bil: the run in `{out}` already finished after iteration {meta.get('iteration')} "
              f"({finished}); its results are {'written now' if wrote else 'there'}. Run without "
              "--resume to start over")
        # the run's own status: a script's `bil run --resume || ...` must see a failed run fail
        return program._failure(finished) is None
    reached = _limit_reached(program, state, meta)
    if reached:
        # a limit at or below what the run has done: resuming would only rewrite its outputs
        spent, why = reached
        wrote = _write_missing_outputs(program, out, state, why, spec)
        _note(f"bil: the run in `{out}` has already done {spent}; its results are "
              f"{'written now' if wrote else 'there'}. Raise the limit to continue")
        return True
    return program, spec, state, overrides


def _note(text: str) -> None:
    """A message on stderr, from process 0 only (the others print errors only)."""
    if distributed.is_writer():
        print(text, file=sys.stderr)


def _clear_folder(out: Path, ckpt: Path) -> None:
    """Remove what an earlier run left in ``out`` (its checkpoint, outputs and plots)."""
    from bil.runtime import checkpoint, outdir, plots, results

    outdir.write_marker(out)   # (no outputs written yet) before anything is removed
    checkpoint.remove(ckpt)
    # (a kill before this run writes its own would leave the earlier run's beside its checkpoint)
    for name in (*results.OUTPUT_NAMES, plots.IMAGES_NAME, plots.START_NAME):
        (out / name).unlink(missing_ok=True)
    for png in (out / "plots").glob("*.png"):
        png.unlink(missing_ok=True)


def _run_loop(req: RunRequest, program, spec: bytes, out: Path, ckpt: Path, state, meta: dict,
              start: int) -> bool:
    """The run from the progress display on (the run, the final checkpoint and the outputs)."""
    import time

    from bil.runtime import checkpoint, outdir, results
    from bil.runtime.outer.history import history_from_state
    from bil.runtime.progress import RunProgress, print_summary

    outer = program.state.options["solve"]["outer"]
    every = int(program.state.options["solve"]["checkpoint_every"])
    total = outer.kwargs.get("max_iter", outer.kwargs.get("steps"))
    sleep = float(os.environ.get(_SLEEP_ENV, "0") or 0)
    last: dict = {}
    writer = distributed.is_writer()
    with RunProgress(program.name, outer.name, total, start=start, quiet=req.quiet or not writer) as progress:
        from bil.runtime.sharding import describe

        devices = describe(program.lowered.layout)   # several devices: what is split over them
        if devices is not None:
            progress.note(devices)

        def callback(record: dict, st: dict) -> None:
            last["state"], last["iter"] = st, int(record["iter"])
            progress.update(record)
            if record["iter"] % every == 0:
                st = distributed.to_host(st)   # (every process: gathering is collective)
                if writer:
                    # the history so far first, so that a run killed later leaves it beside its checkpoint
                    results.write_history_csv(out / "history.csv", history_from_state(st))
                    checkpoint.save(ckpt, st, {**meta, "iteration": int(record["iter"])})
                last["saved"] = int(record["iter"])
            if sleep:
                time.sleep(sleep)

        try:
            result = program.run(callback=callback, state=state)
        except KeyboardInterrupt:
            if "state" in last and last.get("saved") != last["iter"] and writer and not distributed.active():
                checkpoint.save(ckpt, last["state"], {**meta, "iteration": last["iter"]})
            if "state" in last:
                progress.note(f"interrupted after iteration {last['iter']}; checkpoint in `{ckpt}`; continue "
                              f"with `bil run {req.file} --out {out} --resume`")
            raise
        except (ValueError, KeyError) as e:  # a checkpoint that does not fit this spec, or damaged
            if state is None:
                raise
            what = f"it lacks {e}" if isinstance(e, KeyError) else str(e)
            raise RunError(f"cannot resume from `{ckpt}`: {what}; run without --resume to start over") from None

    # the final state, so that --resume continues from here (raised limits) or knows it is done
    final = distributed.to_host(result.state)
    if writer:
        checkpoint.save(ckpt, final, {**meta, "iteration": int(final.get("iteration", 0)), "finished": result.reason})
    res = _write_outputs(out, program, result, spec)
    if not writer:
        return result.error is None   # (process 0 prints the run's diagnostic)
    outdir.mark_outputs(out, int(result.state.get("iteration", 0)))   # all outputs are on disk
    if not req.quiet:
        print_summary(res, str(out))
    for w in result.warnings:   # e.g. a nonconvex lower problem (bil.diagnosis.curvature)
        print(w, file=sys.stderr)
    if result.error is not None:
        # The outputs above hold the last good point; the diagnostic says where and what to try.
        print(result.error, file=sys.stderr)
        return False
    return True


def _resume_overrides(given: list[tuple[str, str]], meta: dict, ckpt: Path) -> list[tuple[str, str]]:
    """The overrides to resume with: the checkpoint's, updated with the given ones.  Only the
    limits (``_RESUME_FREE_KEYS``) may change; any other key given with another value, or
    not in the checkpoint, is an error."""
    saved = dict(tuple(kv) for kv in meta.get("overrides", []))
    changed = [k for k, v in given if k not in _RESUME_FREE_KEYS and saved.get(k) != v]
    if changed:
        shown = " ".join(f"--set {k}={v}" for k, v in saved.items()) or "no --set"
        free = ", ".join(sorted(_RESUME_FREE_KEYS))
        raise RunError(f"`{ckpt}` was written with {shown}; a resumed run may change only {free} "
                       f"(not {', '.join(f'`{k}`' for k in changed)}); run without --resume to start over")
    merged = dict(saved)
    merged.update(dict(given))
    return list(merged.items())


def _limit_reached(program, state: dict, meta: dict) -> tuple[str, str] | None:
    """What the checkpointed run has done and the stop reason, if that already meets the
    outer method's iteration limit or budget (else None)."""
    kw = program.state.options["solve"]["outer"].kwargs
    done = int(state.get("iteration", meta.get("iteration") or 0))
    limit = kw.get("max_iter", kw.get("steps"))
    if limit is not None and done >= int(limit):
        return f"{done} iterations (limit {int(limit)})", Stop.MAX_ITER.value
    cost = int(state.get("lower_iters_total", 0)) + int(state.get("cg_iters_total", 0))
    if kw.get("budget") is not None and cost >= int(kw["budget"]):
        return f"{cost} lower + CG iterations (budget {int(kw['budget'])})", Stop.BUDGET.value
    return None


def _outputs_current(out: Path, iteration: int) -> bool:
    """Are all of ``out``'s outputs (result.json, history.csv, the arrays, the plots) those of the
    run up to ``iteration``?  The marker records it once the last of them is written."""
    import json

    from bil.runtime import outdir

    if outdir.outputs_iteration(out) != iteration:
        return False
    try:
        res = json.loads((out / "result.json").read_text())
    except (OSError, ValueError):
        return False
    return (out / "history.csv").is_file() and isinstance(res, dict) and res.get("iterations") == iteration


def _write_missing_outputs(program, out: Path, state: dict, reason: str, spec: bytes) -> bool:
    """Write the outputs of a finished (or limit-reached) checkpointed run if they are not on disk
    (a kill between the checkpoint and the outputs); True when it wrote them."""
    from bil.runtime import outdir

    if _outputs_current(out, int(state.get("iteration", 0))):
        return False
    _write_outputs(out, program, program.result_from_state(state, reason), spec)   # (every process computes)
    if distributed.is_writer():
        outdir.mark_outputs(out, int(state.get("iteration", 0)))
    return True


def _write_outputs(out: Path, program, result, spec: bytes) -> dict:
    """result.json, history.csv, the npz files and the plots of a run (process 0 writes; every
    process calls it, since gathering arrays laid out over other processes is collective); the
    result.json dict (empty on the other processes)."""
    from bil.runtime import plots, results

    if distributed.active():
        import copy

        result = copy.copy(result)
        for name in ("hypers", "lower", "state"):
            setattr(result, name, distributed.to_host(getattr(result, name)))
    start = distributed.to_host(plots.start_point(program))   # iteration 0 of the plots (a solve)
    if not distributed.is_writer():
        return {}
    res = results.write_all(out, problem=program.name, result=result, spec_bytes=spec)
    panels = plots.image_panels(program, result.lower)
    if panels is not None:
        plots.write_images(out, panels)
    plots.write_start(out, start)
    plots.plot_run_dir(out, history=result.history, problem=program.name)
    return res
