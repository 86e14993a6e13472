"""JAX's persistent compilation cache for `bil run` and `bil gradcheck` (on unless `--no-cache`).

A second run of the same spec loads its compiled programs from disk instead of compiling them
again.  The folder is ``$BIL_CACHE_DIR``, else ``$XDG_CACHE_HOME/bil/jax``, else
``~/.cache/bil/jax``; a ``JAX_COMPILATION_CACHE_DIR`` set by the user wins over all of them.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_folder() -> Path:
    if os.environ.get("BIL_CACHE_DIR"):
        return Path(os.environ["BIL_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bil" / "jax"


def enable(folder: Path | None = None) -> Path | None:
    """Turn the cache on (in ``folder``, default :func:`default_folder`); the folder used, or
    None where none can be written (the run then simply compiles, as without the cache)."""
    import jax

    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(os.environ["JAX_COMPILATION_CACHE_DIR"])   # JAX reads it itself
    folder = Path(folder) if folder is not None else default_folder()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            return None
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    # bil's programs are many and small: cache every one, not only those that took > 1 s
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return folder
