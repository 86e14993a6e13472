"""The ``bil`` command.

Subcommands live in one table, :data:`COMMANDS` (name -> :class:`Command`:
help line, a function adding its arguments, a handler, usage examples), so a
new subcommand is two functions and one entry.  ``bil emit --stage NAME`` is
the same again on a smaller scale: :data:`STAGES` maps a stage name to a
function ``Program -> str``.  What the commands print is rendered in
:mod:`bil.compiler.render`; what ``bil run`` does is :mod:`bil.run` (a library the
handler calls).

Exit codes: 0 success; 2 a problem with the spec, the file or the command
line (diagnostics on stderr, never a traceback); 3 an internal error (a bug in
bil: one line asking to report it; ``BIL_TRACEBACK=1`` shows the traceback).
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

import bil
from bil.core.errors import BilError, BilInternalError, BilRuntimeError
from bil.core.version import __version__
from bil.run import RunError, RunRequest, Terminated, compile_file, run_spec
from bil.runtime.distributed import DistributedError

# The compiler and the runtime (JAX, NumPy, matplotlib) are imported by the handlers that use
# them (`import bil` and `bil.run` load neither), so `bil --help` and a usage error start fast.

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
    """A problem with the command line or an output it names (``-o``, ``bil plot DIR``): exit 2, as a
    :class:`bil.run.RunError` (an unreadable spec, an output folder or checkpoint bil may not use)."""


# ------------------------------------------------------------------ helpers
def load(path: str, stderr: TextIO | None = None, overrides=(), allow_paths=()) -> "bil.Program":
    """Compile the spec at ``path``; print its warnings to stderr."""
    return compile_file(path, overrides, stderr, allow_paths)[0]


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
        except (BilError, CliError, RunError) as e:
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
    from bil.compiler.render.latex import standard_form_latex
    from bil.compiler.render.text import standard_form

    program = load(args.file, allow_paths=args.allow_paths)
    text = standard_form_latex(program.state) if args.latex else standard_form(program.state)
    import jax

    if not args.latex and jax.device_count() > 1:   # (one device: nothing to lower for this line)
        from bil.runtime.sharding import describe

        devices = describe(program.lowered.layout)   # several devices: what is split over them
        text = text if devices is None else text.rstrip("\n") + "\n" + devices + "\n"
    write_output(text, args.output)
    return EXIT_OK


# -------------------------------------------------------------- bil emit
#: ``bil emit --stage NAME``: name -> Stage.  Later stages (jaxpr, hlo) add one entry.
STAGES: dict[str, Stage] = {
    "ir": Stage("the checked IR after every front-end pass (deterministic; the golden-test format)",
                lambda program: program.ir()),
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
def _add_no_cache(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-cache", action="store_true",
                   help="do not use the compilation cache (by default compiled programs are kept in "
                        "$BIL_CACHE_DIR, else ~/.cache/bil/jax, and a second run of a spec reuses them)")


def _use_cache(args: argparse.Namespace) -> None:
    if not getattr(args, "no_cache", False):
        from bil.runtime import compile_cache

        compile_cache.enable()


def _gradcheck_args(p: argparse.ArgumentParser) -> None:
    _add_file(p)
    _add_no_cache(p)
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

    _use_cache(args)

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
def _run_args(p: argparse.ArgumentParser) -> None:
    _add_file(p)
    _add_no_cache(p)
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
    _add_distributed(p)


def _add_distributed(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("several processes (hosts)",
                             "start the same command on every host; process 0 writes the output folder")
    g.add_argument("--distributed", action="store_true",
                   help="join JAX's multi-process runtime; without the three options below, JAX detects the "
                        "cluster (SLURM, Open MPI, ...)")
    g.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0 (the coordinator)")
    g.add_argument("--num-processes", type=int, metavar="N", help="how many processes take part")
    g.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0 to N-1")


def _start_distributed(args: argparse.Namespace) -> None:
    """``--distributed``: connect to the other processes before JAX computes anything."""
    given = [f for f, v in (("--coordinator", args.coordinator), ("--num-processes", args.num_processes),
                            ("--process-id", args.process_id)) if v is not None]
    if not args.distributed:
        if given:
            raise CliError(f"{given[0]} needs --distributed")
        return
    from bil.runtime import distributed

    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    distributed.keep_native_stdout_quiet()


def _run(args: argparse.Namespace) -> int:
    from bil.compiler.overrides import parse_assignment

    _start_distributed(args)
    _use_cache(args)

    req = RunRequest(args.file, tuple(parse_assignment(s) for s in args.overrides), out=args.out,
                     resume=args.resume, force=args.force, quiet=args.quiet, allow_paths=tuple(args.allow_paths))
    return EXIT_OK if run_spec(req) else EXIT_RUN_FAILED


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
        "  bil run examples/ridge.bil --quiet && cat runs/ridge/result.json\n"
        "  bil run spec.bil --distributed --coordinator node0:1234 --num-processes 2 --process-id 0   # on node0\n"),
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
    parser.add_argument("--version", action="version", version=f"bil {__version__}")
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
    if isinstance(e, (CliError, RunError, DistributedError)):
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
        if not hasattr(args, "max_elements"):  # `bil plot`: compiles nothing
            return args.handler(args)
        from bil.compiler.limits import limited

        with limited(args.max_elements):
            return args.handler(args)
    except BilInternalError as e:  # a bug met while compiling: named spec, bug report, exit 3
        if os.environ.get("BIL_TRACEBACK") and e.__cause__ is not None:
            traceback.print_exception(e.__cause__)
        _report(e)
        return EXIT_INTERNAL
    except (BilError, CliError, RunError, DistributedError) as e:
        _report(e)
        return EXIT_ERROR
    except Terminated:
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
