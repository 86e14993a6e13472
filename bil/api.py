"""The Python API: :func:`compile` gives a :class:`Program`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from bil.core.errors import BilError, BilInternalError, BilUsageError
from bil.compiler.limits import limited
from bil.compiler.pipeline import check


def read_spec(path_or_source: str | os.PathLike) -> tuple[str, str]:
    """``(text, file name)`` of a spec given as a path or as source text.

    A ``pathlib.Path``, or a string ending in ``.bil``, names a file; any other
    string is source text.
    """
    if isinstance(path_or_source, os.PathLike) or (
        isinstance(path_or_source, str) and path_or_source.strip().endswith(".bil") and "\n" not in path_or_source
    ):
        p = Path(path_or_source)
        try:
            return p.read_text(encoding="utf-8"), str(p)
        except OSError as e:
            raise BilError(f"cannot read spec `{p}`: {e.strerror or e}", None,
                           "check the path; relative paths are taken from the current directory") from None
        except UnicodeDecodeError as e:
            raise BilError(f"spec `{p}` is not UTF-8 text (byte {e.start})", None,
                           "is it a .bil file?") from None
    if not isinstance(path_or_source, str):
        raise BilUsageError(f"compile() takes a path or source text, not {type(path_or_source).__name__}", None,
                            "give a `pathlib.Path`, a string ending in `.bil`, or the spec's text")
    return path_or_source, "<string>"


def compile(path_or_source: str | os.PathLike, data: Mapping[str, Any] | None = None,  # noqa: A001
            overrides: Mapping[str, Any] | None = None,
            base_dir: str | os.PathLike | None = None,
            allow_paths: "list[str | os.PathLike] | None" = None, max_elements: int | None = None,
            max_spec_elements: int | None = None, distributed: bool = False, coordinator: str | None = None,
            num_processes: int | None = None, process_id: int | None = None) -> "Program":
    """Parse, check and analyse a spec; return a :class:`Program`.

    ``data`` binds names to arrays supplied from Python, overriding the spec's
    ``data`` statements (or adding names the spec does not bind).

    ``overrides`` maps ``--set`` keys to values, applied before checking:
    ``{"solve.outer.max_iter": 20, "lower.solver": "fista(mu=1)", "hyper.alpha": 0.1}``
    (hyper values in user coordinates; strings are `.bil` expressions), or a
    list of ``(key, value)`` pairs applied in order.  An unknown key is a
    :class:`BilError` listing the valid ones.

    Relative paths (``load("train.npz")``, in any statement or override) are taken
    from ``base_dir`` if given, else from the spec file's folder, else (a spec
    given as text) from the current folder.  ``load`` reads only files inside that
    folder or inside one of ``allow_paths`` (folders; relative ones from the current
    folder), after following symlinks.

    ``max_elements`` (default 10^8) caps the elements of any one array made at compile
    time, ``max_spec_elements`` (default 2·10^9) those of all the spec's data together;
    sizes are inferred before anything is allocated.

    ``distributed=True`` joins JAX's multi-process runtime first (``jax.distributed.initialize``
    with ``coordinator="HOST:PORT"``, ``num_processes`` and ``process_id``, or, left out, what
    JAX detects of the cluster); call it before anything else computes with JAX.  Every process
    then runs the same program; write results from process 0 only
    (``bil.runtime.distributed.is_writer()``).

    A spec with errors raises one :class:`BilError` whose ``errors`` lists every
    independent error found (at most 20); ``str(err)`` shows them all.  Nothing else
    escapes: an unexpected exception (a bug in bil) becomes a :class:`BilInternalError`.
    """
    _start_distributed(distributed, coordinator, num_processes, process_id)
    text, file = read_spec(path_or_source)
    data = _check_data_arg(data)
    limits = _check_limit(max_elements, "max_elements"), _check_limit(max_spec_elements, "max_spec_elements")
    from bil.program import Program

    from bil.stdlib import files

    if isinstance(allow_paths, (str, os.PathLike)):
        allow_paths = [allow_paths]
    allowed = tuple(Path(d).expanduser().resolve() for d in (allow_paths or ()))
    token = files.allowed_dirs.set(allowed)
    try:
        with limited(*limits):
            return Program(check(text, file, data, overrides=overrides, base_dir=base_dir))
    except BilError:
        raise
    except RecursionError as e:   # outside a pass (those locate their own): where the frames say
        from bil.compiler.recursion import too_deep

        raise too_deep(e, None) from None
    except Exception as e:  # noqa: BLE001 - the one place that turns a bug into a report
        raise BilInternalError.of(e, file) from e
    finally:
        files.allowed_dirs.reset(token)


def _start_distributed(distributed: bool, coordinator, num_processes, process_id) -> None:
    """``distributed=True``: connect to the other processes (errors as :class:`BilUsageError`)."""
    given = [k for k, v in (("coordinator", coordinator), ("num_processes", num_processes),
                            ("process_id", process_id)) if v is not None]
    if not distributed:
        if given:
            raise BilUsageError(f"`{given[0]}=` needs `distributed=True`", None,
                                "e.g. `bil.compile(spec, distributed=True, coordinator=\"node0:1234\", ...)`")
        return
    from bil.runtime.distributed import API_NAMES, DistributedError, initialize

    try:
        initialize(coordinator, num_processes, process_id, names=API_NAMES)
    except DistributedError as e:
        raise BilUsageError(str(e), None, "every process calls bil.compile with the same spec and its own "
                            "`process_id=`; see the README, `Several hosts`") from None


def _check_data_arg(data) -> Mapping[str, Any] | None:
    """``data=`` is a mapping from names to arrays: anything else is a usage error."""
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise BilUsageError(f"`data=` must map names to arrays, not a {type(data).__name__}", None,
                            "e.g. `bil.compile(spec, data={\"X\": X, \"y\": y})`")
    bad = [k for k in data if not isinstance(k, str) or not k.isidentifier()]
    if bad:
        raise BilUsageError(f"`data=` keys must be names, got {bad[0]!r}", None,
                            "the keys are the names the spec uses, e.g. `{\"X\": X}`")
    return data


def _check_limit(value, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 1 or \
            (isinstance(value, float) and not value.is_integer()):
        raise BilUsageError(f"`{name}=` must be a positive whole number, got {value!r}", None,
                            f"e.g. `{name}=10**9`")
    return int(value)
