"""The ``bil`` command.

Subcommands live in one table, :data:`COMMANDS` (name -> :class:`Command`:
help line, a function adding its arguments, a handler, usage examples), so a
new subcommand is two functions and one entry.  ``bil emit --stage NAME`` is
the same again on a smaller scale: :data:`STAGES` maps a stage name to a
function ``Program -> str``.

Exit codes: 0 success; 2 a problem with the spec, the file or the command
line (diagnostics on stderr, never a traceback); 3 an internal error (a bug in
bil: one line asking to report it; ``BIL_TRACEBACK=1`` shows the traceback).
"""

from __future__ import annotations

import argparse
import errno
import io
import math
import os
import signal
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

import bil
from bil.compiler import ir
from bil.compiler.errors import BilError, BilInternalError, BilRuntimeError
from bil.compiler.limits import limited

EXIT_OK, EXIT_ERROR, EXIT_INTERNAL = 0, 2, 3
#: `bil run` stopped on a failed solve (results up to the last good point are written)
EXIT_RUN_FAILED = 1


@dataclass(frozen=True)
class Command:
    """One subcommand: ``bil NAME ...``."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[argparse.Namespace], int]
    #: usage examples, shown by ``bil NAME --help``
    examples: str = ""


@dataclass(frozen=True)
class Stage:
    """One ``bil emit --stage NAME`` output."""

    help: str
    render: Callable[["bil.Program"], str]


class CliError(Exception):
    """A problem outside the spec (unreadable file, unwritable output): exit 2."""


# ------------------------------------------------------------------ helpers
def load(path: str, stderr: TextIO | None = None, overrides=(), allow_paths=()) -> "bil.Program":
    """Compile the spec at ``path``; print its warnings to stderr."""
    return compile_file(path, overrides, stderr, allow_paths)[0]


def compile_file(path: str, overrides=(), stderr: TextIO | None = None,
                 allow_paths=()) -> tuple["bil.Program", bytes]:
    """Compile ``path`` with ``--set`` overrides; ``(program, spec bytes)``; warnings to stderr.
    ``load`` may read files in the spec's folder and in ``allow_paths`` (``--allow-path``)."""
    p = Path(path)
    try:
        spec = p.read_bytes()
        spec.decode("utf-8")
    except IsADirectoryError:
        raise CliError(f"`{path}` is a directory, not a .bil file") from None
    except FileNotFoundError:
        raise CliError(f"no such file: `{path}`") from None
    except OSError as e:
        raise CliError(f"cannot read `{path}`: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise CliError(f"`{path}` is not UTF-8 text (byte {e.start}); is it a .bil file?") from None
    program = bil.compile(p, overrides=list(overrides) or None, allow_paths=list(allow_paths or ()))
    for w in program.warnings:
        print(w, file=stderr or sys.stderr)
    return program, spec


def write_output(text: str, output: str | None) -> None:
    """``text`` to ``output`` (a path) or to stdout."""
    if output is None or output == "-":
        sys.stdout.write(text)
        return
    try:
        Path(output).write_text(text)
    except OSError as e:
        raise CliError(f"cannot write `{output}`: {e.strerror or e}") from None


def _add_file(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="a .bil spec")
    _add_allow_path(p)


def _add_allow_path(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-path", dest="allow_paths", metavar="DIR", action="append", default=[],
                   help="let load(...) read files in DIR too (repeatable); by default only files inside the "
                        "spec's folder are read (after following symlinks)")


def _add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", metavar="PATH", help="write to PATH instead of stdout")


# ------------------------------------------------------------ bil check
def _check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", metavar="FILE", nargs="+", help="one or more .bil specs")
    _add_allow_path(p)


def _check(args: argparse.Namespace) -> int:
    status = EXIT_OK
    for f in args.files:
        try:
            program = load(f, allow_paths=args.allow_paths)
        except (BilError, CliError) as e:
            _report(e)
            status = max(status, EXIT_INTERNAL if isinstance(e, BilInternalError) else EXIT_ERROR)
            continue
        n = len(program.warnings)
        print(f"{f}: ok" + (f" ({n} warning{'s' if n != 1 else ''})" if n else ""))
    return status


# ------------------------------------------------------------ bil graph
def _graph_args(p: argparse.ArgumentParser) -> None:
    _add_file(p)
    p.add_argument("--format", choices=("text", "dot"), default="text",
                   help="text (one node per line, with its level and dependencies) or Graphviz dot "
                        "(default: text)")
    _add_output(p)


def _graph(args: argparse.Namespace) -> int:
    write_output(load(args.file, allow_paths=args.allow_paths).graph_text(args.format), args.output)
    return EXIT_OK


# ------------------------------------------------------------- bil show
def _show_args(p: argparse.ArgumentParser) -> None:
    _add_file(p)
    p.add_argument("--latex", action="store_true", help="print the problem as LaTeX (sympy's printer)")
    _add_output(p)


def _show(args: argparse.Namespace) -> int:
    program = load(args.file, allow_paths=args.allow_paths)
    text = standard_form_latex(program) if args.latex else standard_form(program)
    write_output(text, args.output)
    return EXIT_OK


# -------------------------------------------------------------- bil emit
def _stage_ir(program: "bil.Program") -> str:
    return program.ir()


#: ``bil emit --stage NAME``: name -> Stage.  Later stages (jaxpr, hlo) add one entry.
STAGES: dict[str, Stage] = {
    "ir": Stage("the checked IR after every front-end pass (deterministic; the golden-test format)", _stage_ir),
    "jaxpr": Stage("the jaxpr of the hypergradient oracle (lower solve + adjoint + z) at the initial hypers",
                   lambda program: program.emit("jaxpr")),
    "hlo": Stage("the StableHLO text of the same jitted oracle", lambda program: program.emit("hlo")),
}


def _emit_args(p: argparse.ArgumentParser) -> None:
    _add_file(p)
    p.add_argument("--stage", choices=sorted(STAGES), default="ir",
                   help="what to print: " + "; ".join(f"{k}: {s.help}" for k, s in sorted(STAGES.items()))
                        + " (default: ir)")
    _add_output(p)


def _emit(args: argparse.Namespace) -> int:
    write_output(STAGES[args.stage].render(load(args.file, allow_paths=args.allow_paths)), args.output)
    return EXIT_OK


# --------------------------------------------------------- bil gradcheck
def _gradcheck_args(p: argparse.ArgumentParser) -> None:
    _add_file(p)
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="evaluate at other hypers or options, e.g. hyper.lam=3 (repeatable; see `bil run --help`)")
    p.add_argument("--tol", type=float, default=1e-5,
                   help="largest accepted relative difference between implicit (unroll for a `train` "
                        "goal) and finite differences "
                        "(default 1e-5)")
    p.add_argument("--entries", type=int, default=8,
                   help="finite differences on at most this many hyper entries, the largest gradients "
                        "(default 8)")


def _gradcheck(args: argparse.Namespace) -> int:
    from bil.compiler.overrides import parse_assignment
    from bil.runtime.gradcheck import gradcheck

    if args.entries < 1:
        raise CliError(f"--entries must be at least 1, got {args.entries}")
    if not args.tol > 0:
        raise CliError(f"--tol must be a positive relative tolerance, got {args.tol:g}")
    overrides = [parse_assignment(s) for s in args.overrides]
    program, _ = compile_file(args.file, overrides, allow_paths=args.allow_paths)
    if program.state.options["solve"]["precision"] != "float64":
        # Finite differences and a 1e-11 lower solve need float64; the check is
        # about the derivatives, not about the precision a run uses.
        print("bil: gradcheck computes in float64 (the spec asks for float32)", file=sys.stderr)
        program, _ = compile_file(args.file, overrides + [("solve.precision", '"float64"')], stderr=io.StringIO(),
                                  allow_paths=args.allow_paths)
    try:
        report = gradcheck(program, tol=args.tol, max_entries=args.entries)
    except BilRuntimeError as e:
        # a solve failed at these hypers: a failed check (1, as `bil run` exits on a failed
        # solve), not an error in the spec or the command line (2)
        _report(e)
        return EXIT_RUN_FAILED
    print(report.table())
    return EXIT_OK if report.ok else 1


# --------------------------------------------------------------- bil run
#: a checkpoint may differ from the resuming command in these keys only (extending a run)
_RESUME_FREE_KEYS = frozenset({"solve.outer.max_iter", "solve.outer.steps", "solve.outer.budget",
                               "solve.checkpoint_every"})   # (how often it saves: no effect on results)
#: stop reasons after which --resume continues the run (with raised limits); any other stop is final
#: (bil.runtime.outer.history.RESUMABLE_STOPS, not imported: the CLI loads JAX only when it runs)
_RESUMABLE_STOPS = frozenset({"max_iter reached", "budget exhausted", "stopped by callback"})
#: hidden, for tests: seconds to sleep after each outer iteration (so a kill lands mid-run)
_SLEEP_ENV = "BIL_TEST_SLEEP_PER_ITER"


def _run_args(p: argparse.ArgumentParser) -> None:
    _add_file(p)
    p.add_argument("--out", metavar="DIR",
                   help="output folder (default: runs/<problem>/); bil marks it as its own (a .bil-run file), "
                        "locks it while it runs, and refuses /, the home folder, the spec's folder and a non-empty "
                        "folder it did not write")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="override an option or a hyper's initial value (repeatable): hyper.NAME (user "
                        "coordinates), lower.solver|tol|max_iter, lower.solver.KW, solve.OPTION, "
                        "solve.outer.KW, solve.hypergradient.KW; VALUE is a .bil expression")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint in the output folder (same spec; the --set values it "
                        "was written with are reused; only solve.outer.max_iter/steps/budget may be given anew)")
    p.add_argument("--force", action="store_true",
                   help="use an --out folder that is not empty and was not written by `bil run` (only bil's own "
                        "output names there are replaced)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display and no summary table")


def _resume_overrides(given: list[tuple[str, str]], meta: dict, ckpt: Path) -> list[tuple[str, str]]:
    """The overrides to resume with: the checkpoint's, updated with the given ones.  Only the
    limits (``_RESUME_FREE_KEYS``) may change; any other key given with another value, or
    not in the checkpoint, is an error."""
    saved = dict(tuple(kv) for kv in meta.get("overrides", []))
    changed = [k for k, v in given if k not in _RESUME_FREE_KEYS and saved.get(k) != v]
    if changed:
        shown = " ".join(f"--set {k}={v}" for k, v in saved.items()) or "no --set"
        free = ", ".join(sorted(_RESUME_FREE_KEYS))
        raise CliError(f"`{ckpt}` was written with {shown}; a resumed run may change only {free} "
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
        return f"{done} iterations (limit {int(limit)})", "max_iter reached"
    cost = int(state.get("lower_iters_total", 0)) + int(state.get("cg_iters_total", 0))
    if kw.get("budget") is not None and cost >= int(kw["budget"]):
        return f"{cost} lower + CG iterations (budget {int(kw['budget'])})", "budget exhausted"
    return None


class _Terminated(KeyboardInterrupt):
    """SIGTERM during `bil run`: handled as an interruption (checkpoint saved), exit 143."""


def _terminate(signum, frame) -> None:
    raise _Terminated


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
    _write_outputs(out, program, program.result_from_state(state, reason), spec)
    outdir.mark_outputs(out, int(state.get("iteration", 0)))
    return True


def _write_outputs(out: Path, program, result, spec: bytes) -> dict:
    """result.json, history.csv, the npz files and the plots of a run; the result.json dict."""
    from bil.runtime import plots, results

    res = results.write_all(out, problem=program.name, result=result, spec_bytes=spec)
    panels = plots.image_panels(program, result.lower)
    if panels is not None:
        plots.write_images(out, panels)
    plots.write_start(out, plots.start_point(program))   # iteration 0 of the plots
    plots.plot_run_dir(out, history=result.history, problem=program.name)
    return res


def _run(args: argparse.Namespace) -> int:
    from bil.compiler.overrides import parse_assignment
    from bil.runtime import outdir

    overrides = [parse_assignment(s) for s in args.overrides]
    # a resumed run's limits apply to the outer method its checkpoint was written with, which an
    # earlier `--set solve.outer=adam(...)` may have chosen: checked after merging, below
    first = [kv for kv in overrides if kv[0] not in _RESUME_FREE_KEYS] if args.resume else overrides
    program, spec = compile_file(args.file, first, allow_paths=args.allow_paths)
    if args.out is not None and not str(args.out).strip():
        raise CliError("--out needs a folder name (got an empty one)")
    out = Path(args.out) if args.out else Path("runs") / program.name
    try:
        # not /, the home folder or the spec's folder; only a folder bil wrote (or --force)
        outdir.check_place(out, program.state.base_dir)
        if not args.force and not outdir.is_ours(out, args.resume):
            raise outdir.refuse_foreign(out)
    except outdir.OutDirError as e:
        raise CliError(str(e)) from None
    try:
        out.mkdir(parents=True, exist_ok=True)
        # before the run, not after it: a folder it cannot write would lose the whole run
        probe = out / outdir.PROBE_NAME
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise CliError(str(outdir.OutDirError.too_long(out))) from None
        raise CliError(f"cannot write to `{out}`: {e.strerror or e}; pass another --out DIR") from None
    try:
        with outdir.RunLock(out):   # one run per folder; released (and removed) when this one ends
            outdir.clean_stale_temps(out)   # left by a killed run: nobody else writes here now
            return _run_locked(args, program, spec, out, overrides, first)
    except outdir.OutDirError as e:
        raise CliError(str(e)) from None


def _run_locked(args, program, spec: bytes, out: Path, overrides, first) -> int:
    """`bil run` with the output folder locked: resume checks, clearing a fresh run's folder, the run."""
    from bil.runtime import checkpoint, outdir, plots, results

    ckpt = checkpoint.checkpoint_path(out)
    sha = results.spec_sha256(spec)
    data_sha = results.data_sha256(program.state.data)

    state = None
    if args.resume:
        if ckpt.is_file():
            state, meta = checkpoint.load(ckpt)
            if meta.get("problem") not in (None, program.name):
                raise CliError(f"`{ckpt}` belongs to problem `{meta.get('problem')}` (`{meta.get('spec')}`), not "
                               f"`{program.name}`; pass that spec, another --out, or run without --resume")
            if meta.get("spec_sha256") != sha:
                raise CliError(f"`{args.file}` changed since `{ckpt}` was written; run without --resume to "
                               f"start over")
            if meta.get("data_sha256", data_sha) != data_sha:
                raise CliError(f"the data of `{args.file}` (what its `data` statements load or generate) "
                               f"changed since `{ckpt}` was written; run without --resume to start over")
            overrides = _resume_overrides(overrides, meta, ckpt)
            if overrides != first:
                program, spec = compile_file(args.file, overrides, allow_paths=args.allow_paths)
            if outdir.outputs_iteration(out) is None:
                outdir.write_marker(out)   # a folder an older bil wrote: ours from now on
            finished = meta.get("finished")
            if finished is not None and finished not in _RESUMABLE_STOPS:
                # nothing left to do (re-running would add an iteration); its outputs are on disk,
                # unless the run was killed between its last checkpoint and writing them
                wrote = _write_missing_outputs(program, out, state, finished, spec)
                print(f"bil: the run in `{out}` already finished after iteration {meta.get('iteration')} "
                      f"({finished}); its results are {'written now' if wrote else 'there'}. Run without "
                      "--resume to start over", file=sys.stderr)
                # the run's own status: a script's `bil run --resume || ...` must see a failed run fail
                return EXIT_RUN_FAILED if program._failure(finished) is not None else EXIT_OK
            reached = _limit_reached(program, state, meta)
            if reached:
                # a limit at or below what the run has done: resuming would only rewrite its outputs
                spent, why = reached
                wrote = _write_missing_outputs(program, out, state, why, spec)
                print(f"bil: the run in `{out}` has already done {spent}; its results are "
                      f"{'written now' if wrote else 'there'}. Raise the limit to continue", file=sys.stderr)
                return EXIT_OK
        else:
            # printed even with --quiet: the run's earlier --set values are not known here
            print(f"bil: no checkpoint in `{out}`; starting from the beginning with this command's --set values",
                  file=sys.stderr)
            if first != overrides:
                program, spec = compile_file(args.file, overrides, allow_paths=args.allow_paths)
    if state is None:  # a fresh run: nothing stale may survive from an earlier one
        outdir.write_marker(out)   # (no outputs written yet) before anything is removed
        checkpoint.remove(ckpt)
        # (a kill before this run writes its own would leave the earlier run's beside its checkpoint)
        for name in (*results.OUTPUT_NAMES, plots.IMAGES_NAME, plots.START_NAME):
            (out / name).unlink(missing_ok=True)
        for png in (out / "plots").glob("*.png"):
            png.unlink(missing_ok=True)

    outer = program.state.options["solve"]["outer"]
    if state is not None and str(state.get("method", outer.name)) != outer.name:
        raise CliError(f"`{ckpt}` belongs to outer method `{state.get('method')}`, but the spec now uses "
                       f"`{outer.name}`; run without --resume to start over")
    start = int(state.get("iteration", 0)) if state is not None else 0
    # SIGTERM (a scheduler's or `kill`'s stop) ends the run like Ctrl-C: the checkpoint is saved
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:          # not the main thread (bil.cli.main called from a worker): leave it
        previous = None
    try:
        return _run_loop(args, program, spec, out, ckpt, state, overrides, sha, data_sha, start)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run_loop(args, program, spec, out, ckpt, state, overrides, sha, data_sha, start) -> int:
    """`bil run` from the progress display on (the run, the final checkpoint and the outputs)."""
    import time

    from bil.runtime import checkpoint, outdir
    from bil.runtime.progress import RunProgress, print_summary

    outer = program.state.options["solve"]["outer"]
    every = int(program.state.options["solve"]["checkpoint_every"])
    total = outer.kwargs.get("max_iter", outer.kwargs.get("steps"))
    meta = {"spec_sha256": sha, "data_sha256": data_sha, "overrides": [list(kv) for kv in overrides],
            "problem": program.name, "method": outer.name, "bil": bil.__version__, "spec": str(args.file)}
    sleep = float(os.environ.get(_SLEEP_ENV, "0") or 0)
    last: dict = {}
    with RunProgress(program.name, outer.name, total, start=start, quiet=args.quiet) as progress:
        def callback(record: dict, st: dict) -> None:
            last["state"], last["iter"] = st, int(record["iter"])
            progress.update(record)
            if record["iter"] % every == 0:
                checkpoint.save(ckpt, st, {**meta, "iteration": int(record["iter"])})
                last["saved"] = int(record["iter"])
            if sleep:
                time.sleep(sleep)

        try:
            result = program.run(callback=callback, state=state)
        except KeyboardInterrupt:
            if "state" in last and last.get("saved") != last["iter"]:
                checkpoint.save(ckpt, last["state"], {**meta, "iteration": last["iter"]})
            if "state" in last:
                progress.note(f"interrupted after iteration {last['iter']}; checkpoint in `{ckpt}`; continue "
                              f"with `bil run {args.file} --out {out} --resume`")
            raise
        except (ValueError, KeyError) as e:  # a checkpoint that does not fit this spec, or damaged
            if state is None:
                raise
            what = f"it lacks {e}" if isinstance(e, KeyError) else str(e)
            raise CliError(f"cannot resume from `{ckpt}`: {what}; run without --resume to start over") from None

    # the final state, so that --resume continues from here (raised limits) or knows it is done
    checkpoint.save(ckpt, result.state, {**meta, "iteration": int(result.state.get("iteration", 0)),
                                         "finished": result.reason})
    res = _write_outputs(out, program, result, spec)
    outdir.mark_outputs(out, int(result.state.get("iteration", 0)))   # all outputs are on disk
    if not args.quiet:
        print_summary(res, str(out))
    for w in result.warnings:   # e.g. a nonconvex lower problem (bil.runtime.curvature)
        print(w, file=sys.stderr)
    if result.error is not None:
        # The outputs above hold the last good point; the diagnostic says where and what to try.
        print(result.error, file=sys.stderr)
        return EXIT_RUN_FAILED
    return EXIT_OK


# -------------------------------------------------------------- bil plot
def _plot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="a run folder written by `bil run` (it holds history.csv)")


def _plot(args: argparse.Namespace) -> int:
    import json

    from bil.runtime.plots import plot_run_dir
    from bil.runtime.results import read_history_csv

    out = Path(args.dir)
    if not out.is_dir():
        raise CliError(f"no such folder: `{out}`")
    hist = out / "history.csv"
    if not hist.is_file():
        raise CliError(f"`{out}` has no history.csv; is it a folder written by `bil run`?")
    try:
        history = read_history_csv(hist)
    except (OSError, ValueError) as e:
        raise CliError(f"cannot read `{hist}`: {e}") from None
    problem = ""
    try:
        problem = str(json.loads((out / "result.json").read_text()).get("problem", ""))
    except (OSError, ValueError, AttributeError):
        pass
    for path in plot_run_dir(out, history=history, problem=problem):
        print(path)
    return EXIT_OK


#: ``bil NAME``: name -> Command.  Later subcommands (run, gradcheck, plot) add one entry.
COMMANDS: dict[str, Command] = {
    "check": Command(
        "parse and check specs; print diagnostics (exit 0 if fine, 2 if not)", _check_args, _check,
        "  bil check examples/ridge.bil\n"
        "  bil check examples/*.bil          # several at once; exit 2 if any has an error\n"),
    "graph": Command(
        "print the dependency graph of a spec (text or Graphviz dot)", _graph_args, _graph,
        "  bil graph examples/ridge.bil\n"
        "  bil graph examples/ridge.bil --format dot | dot -Tsvg > ridge.svg\n"),
    "show": Command(
        "print the problem in standard bilevel form, with shapes, structure and options", _show_args, _show,
        "  bil show examples/ridge.bil\n"
        "  bil show examples/ridge.bil --latex > ridge.tex\n"),
    "emit": Command(
        "print an intermediate form of a spec (--stage)", _emit_args, _emit,
        "  bil emit examples/ridge.bil                # the IR (default stage)\n"
        "  bil emit examples/ridge.bil --stage ir -o ridge.ir\n"),
    "gradcheck": Command(
        "the hypergradient by every applicable method and by central finite differences (exit 1 if "
        "implicit (unroll for a `train` goal) and finite differences disagree, or a solve fails)", _gradcheck_args,
        _gradcheck,
        "  bil gradcheck examples/ridge.bil\n"
        "  bil gradcheck examples/tv_denoise.bil --set hyper.alpha=0.05 --set hyper.nu=0.01\n"),
    "run": Command(
        "learn the hypers: live progress, then result.json, history.csv, hypers.npz, lower.npz and plots/ "
        "in the output folder", _run_args, _run,
        "  bil run examples/ridge.bil                          # writes runs/ridge/\n"
        "  bil run examples/ridge.bil --out /tmp/r --set solve.outer.max_iter=20\n"
        "  bil run examples/tv_denoise.bil --set 'lower.solver=fista(mu=1)' --set hyper.alpha=0.01\n"
        "  bil run examples/ridge.bil --set 'solve.outer=hoag(schedule=\"cubic\")' --set lower.max_iter=500\n"
        "  bil run examples/tv_denoise.bil --resume             # continue from runs/tv_denoise/checkpoint.npz\n"
        "  bil run examples/ridge.bil --quiet && cat runs/ridge/result.json\n"),
    "plot": Command(
        "redraw the plots of a run folder from its history.csv (and images.npz)", _plot_args, _plot,
        "  bil plot runs/ridge                 # rewrites runs/ridge/plots/*.png\n"
        "  bil plot /tmp/r\n"),
}


# ------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bil",
        description="bil: a declarative language and compiler for bilevel optimization.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  bil check examples/ridge.bil\n"
               "  bil show examples/tv_denoise.bil --latex\n"
               "  bil graph examples/ridge.bil --format dot\n"
               "  bil emit examples/ridge.bil --stage ir\n"
               "  bil run examples/ridge.bil --out runs/ridge --set solve.outer.max_iter=20\n"
               "  bil plot runs/ridge\n\n"
               "`bil COMMAND --help` shows each command's options and examples.\n"
               "Exit codes: 0 ok, 1 `bil run` stopped on a failed solve (results written), 2 error in the spec or\n"
               "the command line, 3 internal error.",
    )
    parser.add_argument("--version", action="version", version=f"bil {bil.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help,
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog=("examples:\n" + cmd.examples) if cmd.examples else None)
        cmd.add_arguments(p)
        if name != "plot":
            p.add_argument("--max-elements", type=_max_elements, metavar="N", default=None,
                           help="the most elements one array made at compile time may have (default 10^8)")
        p.set_defaults(handler=cmd.handler)
    return parser


def _max_elements(text: str) -> int:
    try:
        n = float(text)
    except ValueError:
        n = math.nan
    if not (n >= 1 and n.is_integer()):
        raise argparse.ArgumentTypeError(f"must be a positive whole number (e.g. 1e9), got {text!r}")
    return int(n)


def _report(e: BaseException) -> None:
    if isinstance(e, CliError):
        print(f"bil: error: {e}", file=sys.stderr)
    else:
        print(e, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run ``bil`` with ``argv`` (default: the process arguments); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors
        return e.code if isinstance(e.code, int) else EXIT_ERROR
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    try:
        with limited(getattr(args, "max_elements", None)):
            return args.handler(args)
    except BilInternalError as e:  # a bug met while compiling: named spec, bug report, exit 3
        if os.environ.get("BIL_TRACEBACK") and e.__cause__ is not None:
            traceback.print_exception(e.__cause__)
        _report(e)
        return EXIT_INTERNAL
    except (BilError, CliError) as e:
        _report(e)
        return EXIT_ERROR
    except _Terminated:
        print("bil: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("bil: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `bil graph ... | head`: the reader went away; not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except Exception as e:  # noqa: BLE001 - the one place that turns bugs into a message
        if os.environ.get("BIL_TRACEBACK"):
            traceback.print_exc()
        first = str(e).splitlines()[0] if str(e) else ""
        print(f"bil: internal error: {type(e).__name__}: {first} -- this is a bug in bil, please report it "
              f"with the spec (set BIL_TRACEBACK=1 to see the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


# ------------------------------------------------------------ standard form
#: names sympy would not print as Greek letters on its own
_LATEX_NAMES = {"lam": "lambda", "lmbda": "lambda", "lambda_": "lambda"}


def _dims(shape) -> str:
    return "×".join(str(d) for d in shape)


def _hyper_domain(h) -> str:
    """``lam > 0``, ``0 < a < 1``, ``theta ∈ ℝ^(64×10)``."""
    if not h.shape:
        if h.bounds is not None:
            return f"{h.bounds[0]:g} < {h.name} < {h.bounds[1]:g}"
        return f"{h.name} > 0" if h.kind == "positive" else f"{h.name} ∈ ℝ"
    if h.bounds is not None:
        base = f"({h.bounds[0]:g}, {h.bounds[1]:g})"
    else:
        base = "(0, ∞)" if h.kind == "positive" else "ℝ"
    return f"{h.name} ∈ {base}^({_dims(h.shape)})"


def _var_domain(v) -> str:
    shape = f"[{', '.join(map(str, v.shape))}]" if v.shape else ""
    if v.bounds is not None and v.bounds != (0.0, float("inf")):
        return f"{v.kind}{shape} in [{v.bounds[0]:g}, {v.bounds[1]:g}]"
    return f"{v.kind}{shape}"


def _arr_text(a) -> str:
    import numpy as np

    a = np.asarray(a)
    if a.size == 1:
        return f"{a.reshape(()).item():g}"
    if np.all(a == a.flat[0]):
        return f"{a.flat[0].item():g} (all {a.size})"
    return f"array of {a.size} values, mean {a.mean():g}"


def _structure_lines(st) -> list[str]:
    xs = ", ".join(st.lower_vars)
    out = []
    if st.is_train:
        solve = st.options["solve"]["hypergradient"]
        out.append(f"the lower problem is a training procedure: {st.train_steps} steps of "
                   f"{st.train_optimizer.name}; hypergradient by {solve.show()}")
    elif st.structure.get("nonsmooth") is not None:
        split = st.structure["nonsmooth"]
        how = "chosen for the non-smooth terms" if split.switched else "as given"
        out.append(f"lower objective = smooth part + separable non-smooth terms: solved by proximal gradient "
                   f"({st.options['lower']['solver'].name}, {how}); differentiated on their support")
        out += [f"  non-smooth: {p}" for p in split.penalties]
    else:
        from bil.compiler.passes.solver_choice import solver_reason

        deg = st.structure.get("lower_degree")
        if deg == 2:
            out.append(f"lower objective is quadratic in {xs} (proved: degree ≤ 2)")
        elif deg == 1:
            out.append(f"lower objective is at most linear in {xs}: it needs bounds to have a minimiser")
        elif deg == 0:
            out.append(f"lower objective does not depend on {xs}")
        else:
            from bil.compiler.degree import CAP

            bound = "" if deg is None else f" (degree up to {deg})" if deg < CAP else " (degree 2^20 or more)"
            out.append(f"lower objective is not known to be quadratic in {xs}{bound}")
        out.append(solver_reason(st))
    out.append(f"upper objective is {'quadratic' if st.structure.get('upper_quadratic') else 'not quadratic'} "
               f"in {xs}")
    direct = st.structure.get("hypers_in_upper") or []
    if direct:
        out.append("hypers in the upper objective itself: " + ", ".join(direct))
    return out


def _options(st) -> list[tuple[str, str, bool]]:
    """``(block.key, value, is_default)`` for every option, defaults filled in."""
    given = {"lower": {o.key for o in st.lower.options},
             "solve": {o.key for o in (st.solve.options if st.solve else ())}}
    rows = []
    for block in ("lower", "solve"):
        for k, v in st.options.get(block, {}).items():
            rows.append((f"{block}.{k}", v.show() if hasattr(v, "show") else repr(v), k not in given[block]))
    return rows


def standard_form(program: "bil.Program") -> str:
    """The problem in standard bilevel form, with shapes, structure and options (``bil show``)."""
    from bil.compiler.passes.inline import substitute

    st = program.state
    hypers = list(st.hypers.values())
    xs = list(st.lower_vars)
    thetas = st.structure.get("hypers_in_lower") or []
    arg = f"({', '.join(thetas)})" if thetas else ""
    star = {x: ir.Name(None, f"{x}*") for x in xs}
    upper = ir.show(st.upper_expr if st.is_train else substitute(st.upper_expr, star))
    lines = [f"problem {st.problem}  ({st.source.file})", ""]
    lines.append("  minimize over " + ", ".join(_hyper_domain(h) for h in hypers))
    if st.n_samples is not None:
        lines.append(f"      mean over {st.n_samples} samples of  {upper}")
    else:
        lines.append(f"      {upper}")
    lines.append("  subject to")
    who = ", ".join(xs)
    if st.is_train:
        opt_args = ", ".join(f"{k}={ir.show(e)}" for k, e in st.train_args.items())
        lines.append(f"      {who}{arg} = {st.train_steps} steps of {st.train_optimizer.name}({opt_args}) on  "
                     f"{ir.show(st.goal)}")
        lines.append("      from " + ", ".join(f"{v.name} = {ir.show(v.init)}" for v in st.lower_vars.values()))
    else:
        lines.append(f"      {', '.join(x + '*' for x in xs)}{arg} ∈ argmin_{who}  {ir.show(st.goal)}")
    if st.n_samples is not None:
        lines.append("      for each sample")

    lines += ["", "hypers θ"]
    for h in hypers:
        transform = {"exp": f"optimised as log({h.name})", "sigmoid": "optimised through a sigmoid",
                     "identity": ""}[h.transform]
        kind = f"{h.kind}[{', '.join(map(str, h.shape))}]" if h.shape else f"{h.kind} scalar"
        if h.bounds is not None:
            kind += f" in [{h.bounds[0]:g}, {h.bounds[1]:g}]"
        lines.append(f"  {h.name:<10} {kind:<24} init {_arr_text(h.init)}" + (f"  ({transform})" if transform else ""))
    lines.append("lower variables" + (" (per sample)" if st.n_samples is not None else ""))
    for v in st.lower_vars.values():
        lines.append(f"  {v.name:<10} {_var_domain(v):<24} init {ir.show(v.init)}")
    if st.data_stmts:
        lines.append("data (evaluated once)")
        for d in st.data_stmts:
            per = "  per sample" if d.per_sample else ""
            lines.append(f"  {', '.join(d.names)} = {ir.show(d.expr)}{per}")
            for n in d.names:
                a = st.data[n]
                lines.append(f"    {n:<10} {a.dtype}[{', '.join(map(str, a.shape))}]")
    extra = sorted(set(st.data) - {n for d in st.data_stmts for n in d.names})
    if extra:
        lines.append("data (given from Python)")
        for n in extra:
            a = st.data[n]
            lines.append(f"    {n:<10} {a.dtype}[{', '.join(map(str, a.shape))}]")
    if st.consts:
        lines.append("hoisted constants (computed once, outside every solver loop)")
        for key, c in st.consts.items():
            import numpy as np

            a = np.asarray(c.value)
            shape = f"{a.dtype}[{', '.join(map(str, a.shape))}]" + (" per sample" if c.per_sample else "")
            lines.append(f"  {key:<10} {shape:<24} = {c.label}")
    if st.n_samples is not None:
        names = ", ".join(sorted(st.per_sample))
        lines.append(f"samples: {st.n_samples} ({names} per sample): one lower problem per sample, batched; "
                     "the upper objective is averaged over samples")
    else:
        lines.append("samples: 1 (no `per sample` data)")
    lines.append("structure")
    lines += [f"  {s}" for s in _structure_lines(st)]
    lines.append("options (* = default)")
    rows = _options(st)
    width = max((len(k) for k, _, _ in rows), default=0)
    lines += [f"  {k:<{width}}  {v}{'  *' if d else ''}" for k, v, d in rows]
    for w in st.warnings:
        lines.append(f"warning: {w.message} (line {w.span.line})")
    return "\n".join(lines) + "\n"


def _latex_name(name: str) -> str:
    import sympy as sp

    from bil.compiler.symbolic import BilLatexPrinter

    # the same printer as the expressions: a multi-letter name is \mathrm{lr}, not l·r
    return BilLatexPrinter().doprint(sp.Symbol(_LATEX_NAMES.get(name, name)))


def _latex_hyper_domain(h) -> str:
    n = _latex_name(h.name)
    if not h.shape:
        if h.bounds is not None:
            return f"{h.bounds[0]:g} < {n} < {h.bounds[1]:g}"
        return f"{n} > 0" if h.kind == "positive" else rf"{n} \in \mathbb{{R}}"
    dims = r" \times ".join(map(str, h.shape))
    if h.bounds is not None:
        return rf"{n} \in ({h.bounds[0]:g}, {h.bounds[1]:g})^{{{dims}}}"
    base = r"\mathbb{R}_{>0}" if h.kind == "positive" else r"\mathbb{R}"
    return rf"{n} \in {base}^{{{dims}}}"


def _latex_var_domain(v) -> str:
    n = _latex_name(v.name)
    if v.bounds is None:
        return n
    if v.bounds == (0.0, float("inf")):
        return rf"{n} \geq 0"
    dims = (r"^{" + r" \times ".join(map(str, v.shape)) + "}") if v.shape else ""
    return rf"{n} \in [{v.bounds[0]:g}, {v.bounds[1]:g}]{dims}"


def standard_form_latex(program: "bil.Program") -> str:
    r"""``\min_{θ} f(x^*(θ), θ) \quad \text{s.t.}\quad x^*(θ) \in \arg\min_x g(x, θ)`` as LaTeX."""
    from bil.compiler.passes.inline import substitute
    from bil.compiler.symbolic import latex

    st = program.state
    rename = {n: ir.Name(None, _LATEX_NAMES[n]) for n in list(st.hypers) + list(st.lower_vars) + list(st.data)
              if n in _LATEX_NAMES}
    star = {x: ir.Name(None, _LATEX_NAMES.get(x, x) + "^*") for x in st.lower_vars}
    thetas = st.structure.get("hypers_in_lower") or []
    arg = (r"\left(" + ", ".join(_latex_name(t) for t in thetas) + r"\right)") if thetas else ""
    under = ",\\ ".join(_latex_hyper_domain(h) for h in st.hypers.values())
    upper_expr = substitute(st.upper_expr, {**rename, **({} if st.is_train else star)})
    upper = latex(upper_expr)
    if st.n_samples is not None:
        upper = rf"\frac{{1}}{{{st.n_samples}}} \sum_{{i=1}}^{{{st.n_samples}}} \left[{upper}\right]_i"
    goal = latex(substitute(st.goal, rename))
    xs = [_latex_name(x) for x in st.lower_vars]
    if st.is_train:
        lhs = (", ".join(xs) if len(xs) == 1 else r"\left(" + ", ".join(xs) + r"\right)") + arg
        opt_args = ", ".join(f"{k}={latex(substitute(e, rename))}" for k, e in st.train_args.items())
        constraint = (rf"{lhs} = \text{{{st.train_steps} steps of }} \operatorname{{{st.train_optimizer.name}}}"
                      rf"\left({opt_args}\right) \text{{ on }} {goal}")
    else:
        stars = [x + "^*" for x in xs]
        lhs = (stars[0] if len(stars) == 1 else r"\left(" + ", ".join(stars) + r"\right)") + arg
        sub = ", ".join(_latex_var_domain(v) for v in st.lower_vars.values())
        constraint = rf"{lhs} \in \arg\min_{{{sub}}} \; {goal}"
    if st.n_samples is not None:
        constraint += r", \quad i = 1, \dots, " + str(st.n_samples)
    return rf"\min_{{{under}}} \; {upper} \quad \text{{s.t.}}\quad {constraint}" + "\n"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
