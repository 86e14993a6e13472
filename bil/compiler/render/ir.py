"""The deterministic text dump of a checked program's IR: the golden-test format and
``bil emit --stage ir``."""

from __future__ import annotations

import numpy as np

from bil.core import ir
from bil.compiler.state import CompileState


def _arr(a) -> str:
    a = np.asarray(a)
    if a.size == 1:
        return f"{a.reshape(()).item()!r}"
    if a.size and np.all(a == a.flat[0]):
        return f"full({list(a.shape)}, {a.flat[0].item()!r})"
    if a.size <= 8:
        return repr(a.tolist())
    return f"array{list(a.shape)}"


def _val(v) -> str:
    if isinstance(v, (np.ndarray,)) or hasattr(v, "shape"):
        a = np.asarray(v)
        return f"{a.dtype}{list(a.shape)}" if a.size > 1 else repr(a.reshape(()).item())
    return repr(v)


def dump_ir(st: CompileState) -> str:
    """The IR after all passes, one line per fact, in a fixed order."""
    out = [f"problem {st.problem}"]
    for d in st.data_stmts:
        per = " per sample" if d.per_sample else " sampled" if d.sampled else ""
        for n in d.names:
            a = st.data[n]
            out.append(f"data {n} : {a.dtype}{list(a.shape)}{per} = {ir.show(d.expr, keys=True)}")
    for h in st.hypers.values():
        b = f" in [{h.bounds[0]!r}, {h.bounds[1]!r}]" if h.bounds else ""
        out.append(f"hyper {h.name} : {h.kind}{list(h.shape)}{b} = {_arr(h.init)}  # via {h.transform}")
    for d in sorted(st.defs):
        df = st.defs[d]
        out.append(f"def {d}({', '.join(df.params)}) = {ir.show(df.body, keys=True)}  # inlined")
    out.append("lower {")
    for v in st.lower_vars.values():
        b = f" in [{v.bounds[0]!r}, {v.bounds[1]!r}]" if v.bounds else ""
        out.append(f"  var {v.name} : {v.kind}{list(v.shape)}{b} = {ir.show(v.init, keys=True)}")
    if st.is_train:
        args = ", ".join(f"{k}={ir.show(e, keys=True)}" for k, e in st.train_args.items())
        out.append(f"  train {ir.show(st.goal, keys=True)}")
        out.append(f"    with {st.train_optimizer.name}({args}) for {st.train_steps} steps")
    else:
        out.append(f"  minimize {ir.show(st.goal, keys=True)}")
    for k, v in st.options.get("lower", {}).items():
        out.append(f"  {k}: {v.show() if hasattr(v, 'show') else repr(v)}")
    out.append("}")
    out.append(f"upper minimize {ir.show(st.upper_expr, keys=True)}")
    out.append("solve {")
    for k, v in st.options.get("solve", {}).items():
        out.append(f"  {k}: {v.show() if hasattr(v, 'show') else repr(v)}")
    out.append("}")
    for key, c in st.consts.items():
        ps = " per sample" if c.per_sample else ""
        out.append(f"const {key} : {_val(c.value)}{ps} = {c.label}")
    out.append("levels " + ", ".join(f"{n}={st.levels[n]}" for n in sorted(st.levels) if not n.startswith("<")))
    out.append("structure " + ", ".join(f"{k}={v}" for k, v in sorted(st.structure.items())))
    if st.n_samples is not None:
        out.append(f"samples {st.n_samples}")
    for w in st.warnings:
        out.append(f"warning {w.span.line}:{w.span.column} {w.message}")
    return "\n".join(out) + "\n"
