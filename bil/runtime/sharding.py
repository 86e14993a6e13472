"""Every device at once: a 1-D mesh over ``jax.devices()`` and how a program's arrays lie on it.

With one device nothing changes (:func:`place` returns the program as lowered).  With
several (GPUs, TPUs, ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` on CPU, or
every process's devices after ``jax.distributed.initialize``):

* a ``per sample`` problem lays its per-sample data along the sample axis over the
  devices, and each device solves its own samples' lower and adjoint problems
  (:func:`map_samples`: ``shard_map`` of the ``vmap``, so every device runs its own solver
  loop and stops when its own samples have converged); reductions over samples (the
  upper mean, iteration counts, residual norms) are XLA's all-reduces.  When N is not a
  multiple of the device count, the samples go on the largest number of devices that
  divides N (in a multi-process run, the same number from every process; :func:`_devices_for`);
* otherwise, data with many rows (:data:`MIN_ELEMENTS_PER_DEVICE`) is split by rows over
  the devices and XLA (GSPMD) partitions the sums over rows, inserting the all-reduce;
* everything else is replicated.

Arrays are built with ``jax.make_array_from_callback`` from the full host array, which
works alike in one process and in many (each process holds the whole host array).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

#: the mesh's one axis
AXIS = "dev"

#: row-split data when the arrays sharing a row count hold at least this many elements per
#: device: below it a device's share of a sum is a few microseconds, less than the all-reduce
MIN_ELEMENTS_PER_DEVICE = 2 ** 16


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a program's arrays lie on the devices (``None`` on :class:`Lowered`: one device)."""

    mesh: Mesh
    #: per-sample arrays are split along the sample axis (a ``per sample`` problem)
    samples: bool
    #: the row count of the data split by rows, else None
    rows: Optional[int]
    #: one line for the user: what is split, over how many devices
    note: str


@functools.lru_cache(maxsize=None)
def _mesh(devices: tuple) -> Mesh:
    return Mesh(np.array(devices, dtype=object), (AXIS,))


def _devices_for(n: int, devices: list) -> list:
    """The devices N samples are split over: the most that divide N.  In a multi-process run the
    same number from every process (a process without a share could not run the program), else
    none (the samples are then replicated)."""
    procs = sorted({d.process_index for d in devices})
    by_proc = {p: [d for d in devices if d.process_index == p] for p in procs}
    local = min(len(v) for v in by_proc.values())
    for m in range(local, 0, -1):
        if n % (m * len(procs)) == 0:
            return [d for p in procs for d in by_proc[p][:m]]
    return []


def plan(n_samples: Optional[int], data: dict, data_axes: dict, devices: Optional[list] = None) -> Optional[Layout]:
    """The layout of a program's data on ``devices`` (default every device), or None for one device."""
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) < 2:
        return None
    if n_samples is not None:
        used = _devices_for(n_samples, devices)
        if len(used) >= 2:
            per = n_samples // len(used)
            note = f"devices: {len(devices)}; {n_samples} samples split {per} per device"
            if len(used) < len(devices):
                note += (f" over {len(used)} of them (the most that divide {n_samples}; a multiple of "
                         f"{len(devices)} samples uses all)")
            return Layout(_mesh(tuple(used)), True, None, note)
        return Layout(_mesh(tuple(devices)), False, None,
                      f"devices: {len(devices)}; {n_samples} samples cannot be split evenly: every device holds "
                      f"all of them (a multiple of {len(devices)} samples splits them)")
    rows = _split_rows(data, len(devices))
    if rows is None:
        return Layout(_mesh(tuple(devices)), False, None,
                      f"devices: {len(devices)}; no data large enough to split by rows: replicated")
    return Layout(_mesh(tuple(devices)), False, rows,
                  f"devices: {len(devices)}; data with {rows} rows split {rows // len(devices)} rows per device")


def _split_rows(data: dict, n_dev: int) -> Optional[int]:
    """The row count to split by: the largest, among those divisible by the device count,
    whose arrays hold at least :data:`MIN_ELEMENTS_PER_DEVICE` elements per device."""
    size: dict[int, int] = {}
    for a in jax.tree.leaves(data):
        if np.ndim(a) >= 1 and np.shape(a)[0] % n_dev == 0:
            r = int(np.shape(a)[0])
            size[r] = size.get(r, 0) + int(np.size(a))
    ok = [r for r, s in size.items() if s // n_dev >= MIN_ELEMENTS_PER_DEVICE]
    return max(ok) if ok else None


def spec(split: bool) -> P:
    return P(AXIS) if split else P()


def put(host, mesh: Mesh, split: bool):
    """A global array from the full host array: split along axis 0 or replicated on ``mesh``."""
    host = np.asarray(host)
    return jax.make_array_from_callback(host.shape, NamedSharding(mesh, spec(split)), lambda idx: host[idx])


def place(low):
    """``low`` with its data laid out over every device (:func:`plan`), or ``low`` itself on one device."""
    layout = plan(low.n_samples, low.data, low.data_axes)
    if layout is None:
        return low

    def one(a, axis):
        if layout.samples:
            split = axis == 0
        else:
            split = layout.rows is not None and np.ndim(a) >= 1 and np.shape(a)[0] == layout.rows
        return put(a, layout.mesh, split)

    data = jax.tree.map(lambda axis, a: one(a, axis), low.data_axes, low.data, is_leaf=lambda v: v is None)
    return dataclasses.replace(low, data=data, layout=layout)


def map_samples(fn, in_axes, layout: Optional[Layout]):
    """``jax.vmap(fn, in_axes)`` over samples; with samples split over devices, each device maps
    its own share (``shard_map``), outputs split along the sample axis."""
    vm = jax.vmap(fn, in_axes=in_axes)
    if layout is None or not layout.samples:
        return vm
    specs = jax.tree.map(lambda ax: spec(ax == 0), in_axes, is_leaf=lambda v: v is None)
    return jax.shard_map(vm, mesh=layout.mesh, in_specs=specs, out_specs=P(AXIS), check_vma=False)


def constrain(tree, layout: Optional[Layout]):
    """Lower variables (or adjoints) laid out like the data: split along axis 0 where they have
    the split length, else replicated.  Inside jit, so every call's outputs lie alike and the next
    call, which takes them back, never meets new input shardings (no recompiles).

    When the devices belong to several processes (``bil run --distributed``), replicated: each
    solve ends with an all-gather, so every process holds the whole iterate, which the outer
    loop reads on the host (a process can read only arrays it holds in full)."""
    if layout is None:
        return tree
    several = spans_processes(layout)
    if layout.samples and not several:   # (per-sample outputs: map_samples's out_specs lay them out)
        return tree

    def one(a):
        split = not several and layout.rows is not None and np.ndim(a) >= 1 and np.shape(a)[0] == layout.rows
        return jax.lax.with_sharding_constraint(a, NamedSharding(layout.mesh, spec(split)))

    return jax.tree.map(one, tree)


def spans_processes(layout: Optional[Layout]) -> bool:
    """Does the layout use devices of more than one process (a multi-process run)?"""
    return layout is not None and len({d.process_index for d in layout.mesh.devices.flat}) > 1


def describe(layout: Optional[Layout]) -> Optional[str]:
    """The layout's line for ``bil run`` and ``bil show`` (None on one device)."""
    return None if layout is None else layout.note
