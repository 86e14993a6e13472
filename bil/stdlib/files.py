"""Reading a data file for ``load()``: where it may be, how big it may be, what an error may show.

* **Where.**  A path is resolved to its real target (``~`` expanded, ``..`` and
  symlinks followed) and must lie inside the spec's folder or a folder allowed
  with ``--allow-path DIR`` / ``bil.compile(allow_paths=[...])``
  (:data:`allowed_dirs`).  The file type is judged on the real target's name.
* **How big.**  Sizes are read from headers before anything is allocated:
  ``.npy`` and ``.npz`` members from their array headers, an ``.npz``'s total
  uncompressed size from its zip directory, a text table's rows and columns
  from a streaming count.  Each array may hold at most
  :func:`bil.stdlib.limits.current_max_elements` elements.
* **What an error shows.**  Paths and the key the user wrote; never a line of
  the file.  Header names of a text table are listed only when they look like
  column names.
"""

from __future__ import annotations

import contextvars
import math
import re
import zipfile
from pathlib import Path

import numpy as np
import numpy.lib.format as npformat

from bil.stdlib.errors import StdlibError
from bil.stdlib.limits import current_max_elements
from bil.stdlib.registry import closest

#: folders besides the spec's folder that ``load`` may read from (resolved, absolute); ``bil.compile``
#: sets it for every compile.  ``None`` (the default) is a direct Python call of ``load``, outside any
#: spec: the programmer's own path, not confined.
allowed_dirs: contextvars.ContextVar[tuple[Path, ...] | None] = contextvars.ContextVar("allowed_dirs", default=None)

FORMATS = (".npz", ".npy", ".csv", ".tsv", ".txt")
#: bytes a text table may spend per element at most (digits, sign, exponent, separator)
_TEXT_BYTES_PER_ELEMENT = 64
#: the longest header line read (a longer one is not a table's header)
_MAX_HEADER_LINE = 1 << 16
#: a header field listed in a hint only if it looks like a column name
_COLUMN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\- ]{0,39}")
_ALLOW_HINT = "pass --allow-path DIR to `bil` (or allow_paths=[DIR] to bil.compile) to allow another folder"


def _inside(real: Path, root: Path) -> bool:
    return real == root or root in real.parents


def resolve(path, base: Path, origin: str) -> Path:
    """The real file ``path`` names (relative paths from ``base``; ``origin`` says what
    ``base`` is, with ``{}`` for the folder); a :class:`StdlibError` if it lies outside the
    allowed folders, is not a regular file, or has an unsupported type."""
    if not isinstance(path, (str, Path)) or not str(path).strip():
        raise StdlibError(f"load: path must be a non-empty string, got {path!r}", arg="path")
    if "\x00" in str(path):
        raise StdlibError("load: the path contains a NUL character", arg="path")
    base = Path(base).resolve()
    p = Path(path).expanduser()
    p = p if p.is_absolute() else base / p
    try:
        real = p.resolve()
    except (OSError, RuntimeError) as e:   # a symlink loop, a name too long
        raise StdlibError(f"load: cannot resolve {str(path)!r}: {getattr(e, 'strerror', None) or e}",
                          arg="path") from None
    allowed = allowed_dirs.get()
    if allowed is not None and not any(_inside(real, r) for r in (base, *allowed)):
        via = f" (it resolves to {str(real)!r})" if str(real) != str(p) else ""
        raise StdlibError(f"load: {str(path)!r} is outside {origin.format(base)}{via}; bil reads data files "
                          "only from there", hint=_ALLOW_HINT, arg="path")
    if real.is_dir():
        raise StdlibError(f"load: {str(real)!r} is a folder, not a file", arg="path",
                          hint="name a .npz, .npy, .csv, .tsv or .txt file inside it")
    if not real.exists():
        raise StdlibError(f"load: no such file {str(real)!r}",
                          hint=f"relative paths are resolved against {origin.format(base)}", arg="path")
    if not real.is_file():
        raise StdlibError(f"load: {str(real)!r} is not a regular file (a pipe or a device?)", arg="path",
                          hint="copy the data into a .npz, .npy, .csv, .tsv or .txt file")
    suffix = real.suffix.lower()
    if suffix not in FORMATS:
        target = f" (the target of {str(path)!r})" if real.name != Path(str(path)).name else ""
        raise StdlibError(f"load: unsupported file type {suffix or real.name!r}{target}",
                          hint=f"supported: {', '.join(FORMATS)}", arg="path")
    return real


# ------------------------------------------------------------------ sizes
def _too_big(what: str, n: int, arg: str = "path") -> StdlibError:
    limit = current_max_elements()
    return StdlibError(f"load: {what} holds {n:,} elements, more than the limit of {limit:,}", arg=arg,
                       hint="use a smaller file, or raise the limit with --max-elements N "
                            "(bil.compile(max_elements=N))")


def _npy_header(f, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` from an open ``.npy`` stream, reading only its header."""
    try:
        version = npformat.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = npformat.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = npformat.read_array_header_2_0(f)
        else:   # (3, 0): a UTF-8 header, read by numpy's own (private) reader
            shape, _, dtype = npformat._read_array_header(f, version)   # noqa: SLF001
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as e:
        raise StdlibError(f"load: {name} is not a valid .npy array ({type(e).__name__})", arg="path",
                          hint="write it with numpy.save(...)") from None
    return tuple(int(s) for s in shape), dtype


def _check_array(shape, dtype, name: str, arg: str) -> None:
    if dtype.hasobject:
        raise StdlibError(f"load: {name} holds Python objects (dtype object), which bil never unpickles",
                          hint="store numeric arrays", arg=arg)
    n = math.prod(shape)
    if n > current_max_elements():
        raise _too_big(f"{name} (shape {tuple(shape)})", n, arg)


def check_npy(real: Path) -> None:
    with open(real, "rb") as f:
        shape, dtype = _npy_header(f, real.name)
    _check_array(shape, dtype, real.name, "path")


def check_npz(real: Path, key: str) -> None:
    """The zip directory's total uncompressed size and ``key``'s array header, before reading it."""
    limit = current_max_elements()
    try:
        with zipfile.ZipFile(real) as z:
            total = sum(i.file_size for i in z.infolist())
            if total > 8 * limit + (1 << 20):
                raise StdlibError(f"load: {real.name} inflates to {total:,} bytes, more than the "
                                  f"{8 * limit:,} that {limit:,} float64 elements take", arg="path",
                                  hint="use a smaller file, or raise the limit with --max-elements N "
                                       "(bil.compile(max_elements=N))")
            with z.open(f"{key}.npy") as f:
                shape, dtype = _npy_header(f, f"{real.name}[{key!r}]")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError, KeyError) as e:
        raise StdlibError(f"load: {real.name} is not a readable .npz file ({type(e).__name__})", arg="path",
                          hint="write it with numpy.savez(...) or numpy.savez_compressed(...)") from None
    _check_array(shape, dtype, f"{real.name}[{key!r}]", "key")


# ------------------------------------------------------------------ text tables
def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _split(line: str, delimiter):
    return [t.strip() for t in (line.split(delimiter) if delimiter else line.split())]


def _count_lines(real: Path) -> int:
    n, last = 0, b"\n"
    with open(real, "rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


def _bad_field(real: Path, delimiter, skip: int, width: int) -> str:
    """Where the first non-numeric field or ragged row is (line and field numbers, no content)."""
    with open(real, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if lineno <= skip or not line.strip():
                continue
            fields = _split(line, delimiter)
            if len(fields) != width:
                return f"line {lineno} has {len(fields)} fields, the first data line {width}"
            for j, t in enumerate(fields, 1):
                if not _is_number(t):
                    return f"line {lineno}, field {j} is not a number"
    return "the rows are not a numeric table"


def _columns_hint(header: list[str], key: str) -> str:
    shown = [h for h in header if _COLUMN_NAME.fullmatch(h)]
    if len(shown) != len(header) or len(header) > 50:
        return f"the header line has {len(header)} fields; check the spelling of {key!r}"
    near = closest(key, shown)
    return (f"did you mean {near!r}? " if near else "") + f"columns: {', '.join(shown)}"


def load_text(real: Path, key, delimiter) -> np.ndarray:
    """A numeric table (first line a header if not all numbers): [N] for one column, else [N, C];
    with ``key``, the column of that header name."""
    try:
        with open(real, encoding="utf-8") as f:
            first = f.readline(_MAX_HEADER_LINE)
    except UnicodeDecodeError as e:
        raise StdlibError(f"load: {real.name} is not UTF-8 text (byte {e.start})", arg="path",
                          hint="save the table as UTF-8 text, or as .npy/.npz") from None
    if len(first) >= _MAX_HEADER_LINE and not first.endswith("\n"):
        raise StdlibError(f"load: the first line of {real.name} is longer than {_MAX_HEADER_LINE:,} characters",
                          arg="path", hint="is it a numeric table? store large data as .npy/.npz")
    fields = _split(first, delimiter)
    header = None if all(_is_number(t) for t in fields if t) else fields
    limit = current_max_elements()
    size = real.stat().st_size
    if size > _TEXT_BYTES_PER_ELEMENT * limit:
        raise StdlibError(f"load: {real.name} is {size:,} bytes, more than a table of {limit:,} elements takes",
                          arg="path", hint="use a smaller file (or .npy/.npz), or raise the limit with "
                                           "--max-elements N (bil.compile(max_elements=N))")
    rows = _count_lines(real) - (1 if header else 0)
    if rows * max(len(fields), 1) > limit:
        raise _too_big(f"{real.name} ({rows:,} rows of {len(fields)} columns)", rows * max(len(fields), 1))
    try:
        data = np.loadtxt(real, delimiter=delimiter, skiprows=1 if header else 0, dtype=np.float64, ndmin=2,
                          encoding="utf-8")
    except (ValueError, UnicodeDecodeError):
        where = _bad_field(real, delimiter, 1 if header else 0, len(fields))
        raise StdlibError(f"load: could not read {real.name} as numbers: {where}",
                          hint="only numeric tables are supported (one header line allowed)") from None
    if key is None:
        # One column reads as a vector [N], several as a table [N, C].
        return data[:, 0] if data.shape[1] == 1 else data
    if header is None:
        raise StdlibError(f"load: {real.name} has no header line to look up {key!r} in", arg="key")
    if key not in header:
        raise StdlibError(f"unknown column {key!r} in {real.name}", hint=_columns_hint(header, str(key)), arg="key")
    return data[:, header.index(key)]
