"""The problem in standard bilevel form, as text (``bil show``): domains, shapes, data, hoisted
constants, the structure the compiler found and every option, defaults marked."""

from __future__ import annotations

import numpy as np

from bil.core import ir
from bil.compiler.degree import CAP
from bil.compiler.passes.inline import substitute
from bil.compiler.passes.solver_choice import solver_reason
from bil.compiler.state import CompileState


def _dims(shape) -> str:
    return "×".join(str(d) for d in shape)


def _hyper_domain(h) -> str:
    """``lam > 0``, ``0 < a < 1``, ``theta ∈ ℝ^(64×10)``."""
    if not h.shape:
        if h.bounds is not None:
            return f"{h.bounds[0]:g} < {h.name} < {h.bounds[1]:g}"
        return f"{h.name} > 0" if h.kind == "positive" else f"{h.name} ∈ ℝ"
    if h.bounds is not None:
        base = f"({h.bounds[0]:g}, {h.bounds[1]:g})"
    else:
        base = "(0, ∞)" if h.kind == "positive" else "ℝ"
    return f"{h.name} ∈ {base}^({_dims(h.shape)})"


def _var_domain(v) -> str:
    shape = f"[{', '.join(map(str, v.shape))}]" if v.shape else ""
    if v.bounds is not None and v.bounds != (0.0, float("inf")):
        return f"{v.kind}{shape} in [{v.bounds[0]:g}, {v.bounds[1]:g}]"
    return f"{v.kind}{shape}"


def _arr_text(a) -> str:
    a = np.asarray(a)
    if a.size == 1:
        return f"{a.reshape(()).item():g}"
    if np.all(a == a.flat[0]):
        return f"{a.flat[0].item():g} (all {a.size})"
    return f"array of {a.size} values, mean {a.mean():g}"


def structure_lines(st: CompileState) -> list[str]:
    """The structure the compiler found (quadratic, split, training) and the solver it chose, one fact a line."""
    xs = ", ".join(st.lower_vars)
    out = []
    if st.is_train:
        solve = st.options["solve"]["hypergradient"]
        how = ("reverse mode through all of them" if getattr(solve, "truncate", None) is None
               else f"reverse mode through the last {solve.truncate} of them") if solve.name == "unroll" \
            else solve.show()
        out.append(f"the lower problem is a training procedure: {st.train_steps} steps of "
                   f"{st.train_optimizer.name}; hypergradient by {how}")
    elif st.structure.get("nonsmooth") is not None:
        split = st.structure["nonsmooth"]
        how = "chosen for the non-smooth terms" if split.switched else "as given"
        out.append(f"lower objective = smooth part + separable non-smooth terms: solved by proximal gradient "
                   f"({st.options['lower']['solver'].name}, {how}); differentiated on their support")
        out += [f"  non-smooth: {p}" for p in split.penalties]
    else:
        deg = st.structure.get("lower_degree")
        if deg == 2:
            out.append(f"lower objective is quadratic in {xs} (proved: degree ≤ 2)")
        elif deg == 1:
            out.append(f"lower objective is at most linear in {xs}: it needs bounds to have a minimiser")
        elif deg == 0:
            out.append(f"lower objective does not depend on {xs}")
        else:
            bound = "" if deg is None else f" (degree up to {deg})" if deg < CAP else " (degree 2^20 or more)"
            out.append(f"lower objective is not known to be quadratic in {xs}{bound}")
        out.append(solver_reason(st))
    out.append(f"upper objective is {'quadratic' if st.structure.get('upper_quadratic') else 'not quadratic'} "
               f"in {xs}")
    direct = st.structure.get("hypers_in_upper") or []
    if direct:
        out.append("hypers in the upper objective itself: " + ", ".join(direct))
    return out


def option_rows(st: CompileState) -> list[tuple[str, str, bool]]:
    """``(block.key, value, is_default)`` for every option, defaults filled in."""
    given = {"lower": {o.key for o in st.lower.options},
             "solve": {o.key for o in (st.solve.options if st.solve else ())}}
    rows = []
    for block in ("lower", "solve"):
        for k, v in st.options.get(block, {}).items():
            text = v.show() if hasattr(v, "show") else repr(v)
            if (block, k) == ("solve", "hypergradient") and _factor_adjoint(st, v):
                text += "  (the adjoint uses direct()'s factor: its `linear` and `max_iter` are not used)"
            elif (block, k) == ("solve", "hypergradient") and st.is_train and getattr(v, "name", "") == "unroll":
                text += f"  (the {st.train_steps} training steps are unrolled; `steps` is for argmin lower problems)"
            rows.append((f"{block}.{k}", text, k not in given[block]))
    return rows


def _factor_adjoint(st: CompileState, method) -> bool:
    """Is the implicit adjoint solved with the ``direct()`` lower solver's factor (as the engine does)?"""
    from bil.stdlib.methods import Direct, Implicit

    return isinstance(method, Implicit) and isinstance(st.options.get("lower", {}).get("solver"), Direct)


def standard_form(st: CompileState) -> str:
    """The problem in standard bilevel form, with shapes, structure and options (``bil show``)."""
    lines = _formulation(st) + [""] + _declarations(st)
    lines.append("structure")
    lines += [f"  {s}" for s in structure_lines(st)]
    lines.append("options (* = default)")
    rows = option_rows(st)
    width = max((len(k) for k, _, _ in rows), default=0)
    lines += [f"  {k:<{width}}  {v}{'  *' if d else ''}" for k, v, d in rows]
    for w in st.warnings:
        lines.append(f"warning: {w.message} (line {w.span.line})")
    return "\n".join(lines) + "\n"


def _formulation(st: CompileState) -> list[str]:
    """``minimize over θ  F  subject to  x* ∈ argmin g`` (or the training procedure)."""
    hypers = list(st.hypers.values())
    xs = list(st.lower_vars)
    thetas = st.structure.get("hypers_in_lower") or []
    arg = f"({', '.join(thetas)})" if thetas else ""
    star = {x: ir.Name(None, f"{x}*") for x in xs}
    upper = ir.show(st.upper_expr if st.is_train else substitute(st.upper_expr, star))
    lines = [f"problem {st.problem}  ({st.source.file})", ""]
    lines.append("  minimize over " + ", ".join(_hyper_domain(h) for h in hypers))
    if st.n_samples is not None:
        lines.append(f"      mean over {st.n_samples} samples of  {upper}")
    else:
        lines.append(f"      {upper}")
    lines.append("  subject to")
    who = ", ".join(xs)
    if st.is_train:
        opt_args = ", ".join(f"{k}={ir.show(e)}" for k, e in st.train_args.items())
        lines.append(f"      {who}{arg} = {st.train_steps} steps of {st.train_optimizer.name}({opt_args}) on  "
                     f"{ir.show(st.goal)}")
        lines.append("      from " + ", ".join(f"{v.name} = {ir.show(v.init)}" for v in st.lower_vars.values()))
    else:
        lines.append(f"      {', '.join(x + '*' for x in xs)}{arg} ∈ argmin_{who}  {ir.show(st.goal)}")
    if st.n_samples is not None:
        lines.append("      for each sample")
    return lines


def _declarations(st: CompileState) -> list[str]:
    """The hypers, lower variables, data, hoisted constants and samples, one per line."""
    lines = ["hypers θ"]
    for h in st.hypers.values():
        transform = {"exp": f"optimised as log({h.name})", "sigmoid": "optimised through a sigmoid",
                     "identity": ""}[h.transform]
        kind = f"{h.kind}[{', '.join(map(str, h.shape))}]" if h.shape else f"{h.kind} scalar"
        if h.bounds is not None:
            kind += f" in [{h.bounds[0]:g}, {h.bounds[1]:g}]"
        lines.append(f"  {h.name:<10} {kind:<24} init {_arr_text(h.init)}" + (f"  ({transform})" if transform else ""))
    lines.append("lower variables" + (" (per sample)" if st.n_samples is not None else ""))
    for v in st.lower_vars.values():
        lines.append(f"  {v.name:<10} {_var_domain(v):<24} init {ir.show(v.init)}")
    if st.data_stmts:
        lines.append("data (evaluated once)")
        for d in st.data_stmts:
            per = "  per sample" if d.per_sample else "  sampled" if d.sampled else ""
            lines.append(f"  {', '.join(d.names)} = {ir.show(d.expr)}{per}")
            for n in d.names:
                a = st.data[n]
                lines.append(f"    {n:<10} {a.dtype}[{', '.join(map(str, a.shape))}]")
    extra = sorted(set(st.data) - {n for d in st.data_stmts for n in d.names})
    if extra:
        lines.append("data (given from Python)")
        for n in extra:
            a = st.data[n]
            lines.append(f"    {n:<10} {a.dtype}[{', '.join(map(str, a.shape))}]")
    if st.consts:
        lines.append("hoisted constants (computed once, outside every solver loop)")
        for key, c in st.consts.items():
            a = np.asarray(c.value)
            shape = f"{a.dtype}[{', '.join(map(str, a.shape))}]" + (" per sample" if c.per_sample else "")
            lines.append(f"  {key:<10} {shape:<24} = {c.label}")
    if st.n_samples is not None:
        names = ", ".join(sorted(st.per_sample))
        lines.append(f"samples: {st.n_samples} ({names} per sample): one lower problem per sample, batched; "
                     "the upper objective is averaged over samples")
    else:
        lines.append("samples: 1 (no `per sample` data)")
    fs = st.structure.get("finite_sum")
    if fs is not None:
        def over(groups):
            return " + ".join(f"{fs.row_counts[g]} rows of {g}" for g in groups) or "no sampled data"

        lines.append(f"sampled rows: lower objective proved a mean over {over(fs.lower.groups)}, upper over "
                     f"{over(fs.upper.groups)} (minibatch methods: soba, saba, adaptive)")
    return lines
