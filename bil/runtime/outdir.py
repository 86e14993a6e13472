"""The output folder of ``bil run``: which folders it may write, one run at a time, no stray files.

* **Which folders.**  Never ``/``, the home folder or the spec's own folder.  A
  folder ``bil run`` created or wrote holds the marker :data:`MARKER`; a fresh run
  clears an earlier run's outputs only there, and refuses a non-empty folder
  without it (unless ``--force``).
* **One run at a time.**  :class:`RunLock` holds an exclusive ``fcntl.flock`` on
  :data:`LOCK_NAME` (holding the owner's PID, for the message) for the whole run.
  The kernel drops it when the process dies, so a killed run's lock is taken over.
* **No stray files.**  Every file is written to a unique temporary name beside it
  and renamed into place (:func:`bil.runtime.results.atomic_open`); temporaries a
  killed run left behind are removed by the next run (:func:`clean_stale_temps`).
* **Complete outputs.**  The marker records the iteration whose outputs were all
  written (:func:`mark_outputs`), so ``--resume`` after a kill between
  ``result.json`` and the plots writes what is missing.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

MARKER = ".bil-run"
LOCK_NAME = ".bil-lock"
#: the CLI's check that a folder is writable (written and removed before the run)
PROBE_NAME = ".bil-write-test"
#: files bil writes in an output folder (temporaries of atomic writes: ``.NAME.RANDOM.tmp``)
_OWN_NAMES = ("result.json", "history.csv", "hypers.npz", "lower.npz", "images.npz", "checkpoint.npz", MARKER)


class OutDirError(Exception):
    """A folder ``bil run`` may not or cannot use (the CLI reports it, exit 2)."""

    @classmethod
    def too_long(cls, out: Path) -> "OutDirError":
        longest = max((len(part.encode()) for part in Path(out).parts), default=0)
        return cls(f"the output folder name is too long ({len(str(out))} characters, the longest part "
                   f"{longest} bytes; file systems allow 255 bytes per name); pass a shorter --out DIR")


def _os_error(out: Path, e: OSError) -> OutDirError:
    if e.errno == errno.ENAMETOOLONG:
        return OutDirError.too_long(out)
    return OutDirError(f"cannot use `{out}` as the output folder: {e.strerror or e}; pass another --out DIR")


def check_place(out: Path, spec_folder: Path | None) -> None:
    """Refuse ``/``, the home folder, the spec's folder and names the file system cannot hold."""
    try:
        real = out.resolve()
        exists = out.exists()
    except OSError as e:
        raise _os_error(out, e) from None
    if real == Path(real.anchor):
        raise OutDirError(f"refusing to write run outputs into the root folder `{out}`; pass --out DIR")
    if real == Path.home().resolve():
        raise OutDirError(f"refusing to write run outputs into the home folder `{out}`; pass --out DIR")
    if spec_folder is not None and real == Path(spec_folder).resolve():
        raise OutDirError(f"refusing to write run outputs into the spec's own folder `{out}`; pass --out DIR "
                          "(e.g. runs/NAME)")
    if exists and not out.is_dir():
        raise OutDirError(f"`{out}` exists and is not a folder; pass --out DIR")


def _read_marker(out: Path) -> dict | None:
    try:
        text = (out / MARKER).read_text()
    except OSError:
        return None
    try:
        info = json.loads(text)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def is_ours(out: Path, resuming: bool) -> bool:
    """May ``bil run`` write (and clear its outputs) in ``out``?  Yes if it does not exist, is
    empty, holds the marker, or (resuming) holds a checkpoint an older bil wrote."""
    if not out.exists():
        return True
    if _read_marker(out) is not None:
        return True
    names = {p.name for p in out.iterdir()} - {LOCK_NAME, PROBE_NAME}   # (a killed run's)
    if not names:
        return True
    from bil.runtime.checkpoint import CHECKPOINT_NAME

    return resuming and CHECKPOINT_NAME in names


def refuse_foreign(out: Path) -> OutDirError:
    """The error for a folder ``bil run`` may not write in; a live run's lock there is named first
    (that run's temporary files make the folder look foreign while it starts)."""
    holder = lock_holder(out)
    if holder is not None:
        return _busy(out, holder)
    return OutDirError(f"`{out}` is not empty and was not written by `bil run` (it has no {MARKER} file); "
                       "refusing to clear or overwrite files there. Pass another --out DIR, or --force to use it "
                       "anyway (bil then replaces only its own output names)")


def write_marker(out: Path, outputs_iteration: int | None = None) -> None:
    """Mark ``out`` as a ``bil run`` folder; ``outputs_iteration``: the iteration whose outputs
    are all on disk (None: not yet)."""
    from bil.runtime.results import atomic_open

    info = {"written_by": "bil run", "outputs_iteration": outputs_iteration}
    with atomic_open(out / MARKER) as f:
        f.write(json.dumps(info) + "\n")


def mark_outputs(out: Path, iteration: int) -> None:
    """Record that every output of the run up to ``iteration`` is written."""
    write_marker(out, int(iteration))


def outputs_iteration(out: Path) -> int | None:
    """The iteration whose outputs were all written, per the marker (None if unknown)."""
    info = _read_marker(out) or {}
    it = info.get("outputs_iteration")
    return it if isinstance(it, int) else None


def clean_stale_temps(out: Path) -> list[Path]:
    """Remove temporary files of atomic writes a killed run left in ``out`` and ``out/plots``
    (call with the lock held: no other writer is running)."""
    stale = [out / PROBE_NAME]
    for name in _OWN_NAMES:
        stale += out.glob(f".{name}.*.tmp")
    # plots: ``.NAME.png.RANDOM.tmp``, and ``.NAME.png.tmp.png`` as bil 0.x named them
    stale += [*(out / "plots").glob(".*.png.*.tmp"), *(out / "plots").glob(".*.png.tmp.png")]
    removed = []
    for p in stale:
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def _busy(out: Path, holder: str) -> OutDirError:
    who = f" (pid {holder})" if holder.isdigit() else ""
    return OutDirError(f"another `bil run`{who} is writing to `{out}`; wait for it to finish, or pass another "
                       "--out DIR")


def lock_holder(out: Path) -> str | None:
    """The PID text of the run holding ``out``'s lock, or None if nobody holds it (read only)."""
    import fcntl

    try:
        fd = os.open(Path(out) / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return os.read(fd, 32).decode(errors="replace").strip()
    finally:
        os.close(fd)   # (closing also drops a shared lock just taken)
    return None


def _flock_retrying(fd: int) -> bool:
    """Take an exclusive lock, retrying briefly: another process's :func:`lock_holder` may hold a
    shared lock for a moment."""
    import fcntl
    import time

    for attempt in range(5):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            if attempt < 4:
                time.sleep(0.02)
    return False


class RunLock:
    """An exclusive lock on an output folder for one ``bil run`` (a context manager)."""

    def __init__(self, out: Path):
        self.path = Path(out) / LOCK_NAME
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise _os_error(self.path.parent, e) from None
            if not _flock_retrying(fd):
                holder = os.read(fd, 32).decode(errors="replace").strip()
                os.close(fd)
                raise _busy(self.path.parent, holder) from None
            # the file we locked may have been removed by its previous holder in the meantime
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self.fd = fd
                return
            os.close(fd)
        raise OutDirError(f"cannot lock `{self.path.parent}`: other runs keep taking it; try again")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink()
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None
