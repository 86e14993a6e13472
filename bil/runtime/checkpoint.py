"""Atomic checkpoints of an outer run: the resumable state plus metadata.

A checkpoint is one ``.npz`` file holding the outer loop's state (the flat dict
described in :mod:`bil.runtime.outer.history`: arrays and scalars, the history
included) and a JSON metadata string under :data:`META_KEY` (which spec, which
overrides, which bil version).  It is written to a temporary file in the same
folder, flushed to disk, and renamed over the previous checkpoint with
``os.replace``, so a run killed at any moment leaves either the old checkpoint
or the new one, never a torn file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from bil.core.errors import BilError
from bil.runtime.results import atomic_open

__all__ = ["CHECKPOINT_NAME", "META_KEY", "checkpoint_path", "save", "load", "remove"]

CHECKPOINT_NAME = "checkpoint.npz"
META_KEY = "__bil_meta__"


def checkpoint_path(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / CHECKPOINT_NAME


def save(path: str | os.PathLike, state: dict, meta: dict | None = None) -> Path:
    """Write ``state`` (and ``meta``, JSON-serialisable) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    for k, v in state.items():
        if k == META_KEY:
            raise ValueError(f"state key {META_KEY!r} is reserved")
        arrays[k] = np.asarray(v)
    arrays[META_KEY] = np.asarray(json.dumps(meta or {}, sort_keys=True))
    with atomic_open(path, binary=True, fsync=True) as f:
        np.savez(f, **arrays)
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (best effort; not every platform allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(path: str | os.PathLike) -> tuple[dict[str, Any], dict]:
    """``(state, meta)`` from a checkpoint written by :func:`save`.

    Scalars come back as Python scalars (0-d arrays unwrapped), strings as
    ``str``; arrays as NumPy arrays.  A missing or unreadable file is a
    :class:`BilError`.
    """
    path = Path(path)
    if not path.is_file():
        raise BilError(f"no checkpoint at `{path}`", None, "run without --resume to start from the beginning")
    try:
        with np.load(path, allow_pickle=False) as z:
            raw = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - any decoding failure means a bad file
        raise BilError(f"cannot read checkpoint `{path}`: {e}", None,
                       "delete it and run without --resume to start from the beginning") from None
    meta_raw = raw.pop(META_KEY, None)
    try:
        meta = json.loads(str(meta_raw)) if meta_raw is not None else {}
    except json.JSONDecodeError:
        meta = {}
    state: dict[str, Any] = {}
    for k, v in raw.items():
        if v.ndim == 0:
            state[k] = v.item() if v.dtype.kind in "biufcU" else v
        else:
            state[k] = v
    return state, meta


def remove(path: str | os.PathLike) -> None:
    """Delete a checkpoint (and stray temporary files beside it) if present."""
    path = Path(path)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    for stray in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            stray.unlink()
        except OSError:
            pass
