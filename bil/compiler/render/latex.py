"""The problem in standard bilevel form as LaTeX (``bil show --latex``), expressions printed by
sympy's LaTeX printer (:mod:`bil.compiler.render.expr_latex`)."""

from __future__ import annotations

from bil.core import ir
from bil.compiler.passes.inline import substitute
from bil.compiler.state import CompileState

#: names sympy would not print as Greek letters on its own
_LATEX_NAMES = {"lam": "lambda", "lmbda": "lambda", "lambda_": "lambda"}


def _latex_name(name: str) -> str:
    import sympy as sp

    from bil.compiler.render.expr_latex import BilLatexPrinter

    # the same printer as the expressions: a multi-letter name is \mathrm{lr}, not l·r
    return BilLatexPrinter().doprint(sp.Symbol(_LATEX_NAMES.get(name, name)))


def _latex_hyper_domain(h) -> str:
    n = _latex_name(h.name)
    if not h.shape:
        if h.bounds is not None:
            return f"{h.bounds[0]:g} < {n} < {h.bounds[1]:g}"
        return f"{n} > 0" if h.kind == "positive" else rf"{n} \in \mathbb{{R}}"
    dims = r" \times ".join(map(str, h.shape))
    if h.bounds is not None:
        return rf"{n} \in ({h.bounds[0]:g}, {h.bounds[1]:g})^{{{dims}}}"
    base = r"\mathbb{R}_{>0}" if h.kind == "positive" else r"\mathbb{R}"
    return rf"{n} \in {base}^{{{dims}}}"


def _latex_var_domain(v) -> str:
    n = _latex_name(v.name)
    if v.bounds is None:
        return n
    if v.bounds == (0.0, float("inf")):
        return rf"{n} \geq 0"
    dims = (r"^{" + r" \times ".join(map(str, v.shape)) + "}") if v.shape else ""
    return rf"{n} \in [{v.bounds[0]:g}, {v.bounds[1]:g}]{dims}"


def standard_form_latex(st: CompileState) -> str:
    r"""``\min_{θ} f(x^*(θ), θ) \quad \text{s.t.}\quad x^*(θ) \in \arg\min_x g(x, θ)`` as LaTeX."""
    from bil.compiler.render.expr_latex import latex   # (sympy: loaded only to print LaTeX)

    rename = {n: ir.Name(None, _LATEX_NAMES[n]) for n in list(st.hypers) + list(st.lower_vars) + list(st.data)
              if n in _LATEX_NAMES}
    star = {x: ir.Name(None, _LATEX_NAMES.get(x, x) + "^*") for x in st.lower_vars}
    thetas = st.structure.get("hypers_in_lower") or []
    arg = (r"\left(" + ", ".join(_latex_name(t) for t in thetas) + r"\right)") if thetas else ""
    under = ",\\ ".join(_latex_hyper_domain(h) for h in st.hypers.values())
    upper_expr = substitute(st.upper_expr, {**rename, **({} if st.is_train else star)})
    upper = latex(upper_expr)
    if st.n_samples is not None:
        upper = rf"\frac{{1}}{{{st.n_samples}}} \sum_{{i=1}}^{{{st.n_samples}}} \left[{upper}\right]_i"
    goal = latex(substitute(st.goal, rename))
    xs = [_latex_name(x) for x in st.lower_vars]
    if st.is_train:
        lhs = (", ".join(xs) if len(xs) == 1 else r"\left(" + ", ".join(xs) + r"\right)") + arg
        opt_args = ", ".join(f"{k}={latex(substitute(e, rename))}" for k, e in st.train_args.items())
        constraint = (rf"{lhs} = \text{{{st.train_steps} steps of }} \operatorname{{{st.train_optimizer.name}}}"
                      rf"\left({opt_args}\right) \text{{ on }} {goal}")
    else:
        stars = [x + "^*" for x in xs]
        lhs = (stars[0] if len(stars) == 1 else r"\left(" + ", ".join(stars) + r"\right)") + arg
        sub = ", ".join(_latex_var_domain(v) for v in st.lower_vars.values())
        constraint = rf"{lhs} \in \arg\min_{{{sub}}} \; {goal}"
    if st.n_samples is not None:
        constraint += r", \quad i = 1, \dots, " + str(st.n_samples)
    return rf"\min_{{{under}}} \; {upper} \quad \text{{s.t.}}\quad {constraint}" + "\n"
