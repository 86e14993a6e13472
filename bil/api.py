"""The Python API: :func:`compile` gives a :class:`Program`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from bil.compiler.errors import BilError
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
            return p.read_text(), str(p)
        except OSError as e:
            raise BilError(f"cannot read spec `{p}`: {e.strerror or e}", None,
                           "check the path; relative paths are taken from the current directory") from None
        except UnicodeDecodeError as e:
            raise BilError(f"spec `{p}` is not UTF-8 text (byte {e.start})", None,
                           "is it a .bil file?") from None
    if not isinstance(path_or_source, str):
        raise TypeError(f"compile() takes a path or source text, not {type(path_or_source).__name__}")
    return path_or_source, "<string>"


def compile(path_or_source: str | os.PathLike, data: Mapping[str, Any] | None = None,  # noqa: A001
            overrides: Mapping[str, Any] | None = None,
            base_dir: str | os.PathLike | None = None,
            allow_paths: "list[str | os.PathLike] | None" = None) -> "Program":
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

    A spec with errors raises one :class:`BilError` whose ``errors`` lists every
    independent error found (at most 20); ``str(err)`` shows them all.
    """
    text, file = read_spec(path_or_source)
    from bil.program import Program

    from bil.stdlib import files

    if isinstance(allow_paths, (str, os.PathLike)):
        allow_paths = [allow_paths]
    allowed = tuple(Path(d).expanduser().resolve() for d in (allow_paths or ()))
    token = files.allowed_dirs.set(allowed)
    try:
        return Program(check(text, file, data, overrides=overrides, base_dir=base_dir))
    finally:
        files.allowed_dirs.reset(token)
