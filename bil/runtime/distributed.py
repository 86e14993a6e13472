"""Several processes (hosts) on JAX's own multi-process runtime: ``bil run --distributed``.

Every process runs the same program (the outer loop alike on each; a ``per sample`` problem's
samples split over every process's devices by :mod:`bil.runtime.sharding`, which gathers the
lower solutions to every process after each solve); :func:`initialize` connects them through ``jax.distributed.initialize`` (a coordinator address, the number of processes and
this process's index, or, when none is given, JAX's own cluster detection: SLURM, Open MPI,
Kubernetes, cloud TPU).  It must run before JAX computes anything: the backends are created
at the first computation, and only then do they see the other processes' devices.

Only process 0 writes (results, history, plots, checkpoints) and prints progress
(:func:`is_writer`); the others print errors only.  Steps where the processes must agree go
through :func:`together` (one process failing stops them all with a message, not a hang in
the next collective) and :func:`agree` (the same bytes everywhere, e.g. the checkpoint a
resumed run reads).  :func:`to_host` gathers arrays laid out over other processes' devices
before anything is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import re

__all__ = ["DistributedError", "CLI_NAMES", "API_NAMES", "initialize", "active", "process_index", "process_count",
           "is_writer", "keep_native_stdout_quiet", "together", "agree", "to_host"]


class DistributedError(Exception):
    """The processes could not be connected, or they disagree: ``bil run`` reports it (exit 2)."""


#: how the three settings are named in messages: the command's flags, or the Python API's keywords
CLI_NAMES = {"coordinator": "--coordinator", "num_processes": "--num-processes", "process_id": "--process-id"}
API_NAMES = {k: f"`{k}=`" for k in CLI_NAMES}

_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^\s:]+):(\d{1,5})$")


def _check(coordinator: str | None, num_processes: int | None, process_id: int | None, names: dict) -> None:
    if coordinator is not None:
        m = _ADDRESS.match(str(coordinator))
        if m is None or not 0 < int(m.group(2)) < 65536:
            raise DistributedError(f"{names['coordinator']} must be HOST:PORT (e.g. node01:1234), got {coordinator!r}")
    for key, v in (("num_processes", num_processes), ("process_id", process_id)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise DistributedError(f"{names[key]} must be a whole number, got {v!r}")
    if num_processes is not None and num_processes < 1:
        raise DistributedError(f"{names['num_processes']} must be at least 1, got {num_processes}")
    if process_id is not None:
        if process_id < 0:
            raise DistributedError(f"{names['process_id']} must be 0 or more, got {process_id}")
        if num_processes is not None and process_id >= num_processes:
            raise DistributedError(f"{names['process_id']} must be below {names['num_processes']} ({num_processes}), "
                                   f"got {process_id}")


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, names: dict = CLI_NAMES) -> None:
    """Connect this process to the others (once; a second call with the runtime up does nothing).

    Arguments left out are found by JAX's cluster detection; where it finds nothing (not in a
    cluster job, and no coordinator given) a :class:`DistributedError` says what to pass."""
    import jax

    _check(coordinator, num_processes, process_id, names)
    if jax.distributed.is_initialized():
        return
    # CPU collectives between processes (a CPU-only cluster, or the tests); GPUs and TPUs use
    # their own.  A choice the user made (JAX_CPU_COLLECTIVES_IMPLEMENTATION=mpi) is kept.
    if jax.config.values.get("jax_cpu_collectives_implementation") in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
    except ValueError as e:
        # JAX's cluster detection found no cluster and not every setting was given
        missing = str(e).strip().rstrip(".")
        raise DistributedError(
            f"cannot start the distributed runtime: no cluster (SLURM, Open MPI, ...) detected and not every "
            f"setting given ({missing[0].lower() + missing[1:]}); pass {names['coordinator']} HOST:PORT, "
            f"{names['num_processes']} N and {names['process_id']} I") from None
    except RuntimeError as e:
        if "should only be called once" in str(e):
            return
        if "must be called before" in str(e):
            raise DistributedError(
                "the distributed runtime must start before JAX computes anything, and JAX has already "
                "computed in this process; in Python, call bil.compile(..., distributed=True) (or "
                "bil.runtime.distributed.initialize) first") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistributedError(f"cannot connect to the coordinator {coordinator or '(detected)'}: {first}") from None


def active() -> bool:
    """Is this one of several processes?"""
    import jax

    return jax.distributed.is_initialized() and jax.process_count() > 1


def process_index() -> int:
    import jax

    return jax.process_index() if jax.distributed.is_initialized() else 0


def process_count() -> int:
    import jax

    return jax.process_count() if jax.distributed.is_initialized() else 1


def is_writer() -> bool:
    """Does this process write the outputs and print progress?  Process 0 only."""
    return process_index() == 0


def keep_native_stdout_quiet() -> None:
    """Send what native code prints on stdout (the gloo collectives' "[Gloo] Rank 0 is connected to
    3 peer ranks" lines, one per group of devices that first computes together) to /dev/null, while
    Python's ``sys.stdout`` keeps the real stdout.  For the ``bil`` command (its stdout is its
    own); the Python API leaves the caller's file descriptors alone."""
    import io
    import os
    import sys

    sys.stdout.flush()
    try:
        real = os.dup(1)
        null = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    os.dup2(null, 1)
    os.close(null)
    sys.stdout = io.TextIOWrapper(os.fdopen(real, "wb", buffering=0), encoding=sys.stdout.encoding,
                                  errors=sys.stdout.errors, line_buffering=True, write_through=True)


def _gather(row):
    """``row`` of every process, stacked in process order (a collective: all must call it)."""
    import numpy as np
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(row))


@contextlib.contextmanager
def together(what: str):
    """Run the block on every process, then check that none failed.

    A failing process re-raises its own error; the others raise a :class:`DistributedError`
    naming it, instead of waiting for it in the next collective.  ``what`` says what the
    block does (``"compiling the spec"``)."""
    import numpy as np
    if not active():
        yield
        return
    try:
        yield
    except BaseException:
        _gather(np.array([1], np.int32))
        raise
    failed = np.flatnonzero(_gather(np.array([0], np.int32))[:, 0])
    if failed.size:
        who = ", ".join(map(str, failed))
        raise DistributedError(f"process {who} stopped while {what} (see its error); every process stops")


def agree(data: bytes, what: str, hint: str = "") -> None:
    """Check that every process holds the same ``data`` (by its SHA-256); a
    :class:`DistributedError` naming the processes that differ from process 0 if not."""
    import numpy as np
    if not active():
        return
    digest = np.frombuffer(hashlib.sha256(data).digest(), dtype=np.uint8)
    rows = _gather(digest)
    differ = [i for i in range(rows.shape[0]) if not np.array_equal(rows[i], rows[0])]
    if differ:
        raise DistributedError(f"process {', '.join(map(str, differ))} sees another {what} than process 0"
                               + (f"; {hint}" if hint else ""))


def to_host(tree):
    """``tree`` with every array as a NumPy array; arrays laid out over other processes' devices
    are gathered first (a collective: every process must call it with the same tree).  In a
    one-process run, ``tree`` itself."""
    import jax
    import numpy as np

    if not active():
        return tree

    def one(v):
        if isinstance(v, jax.Array) and not v.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(v, tiled=True))
        return np.asarray(v) if isinstance(v, jax.Array) else v

    return jax.tree.map(one, tree)
