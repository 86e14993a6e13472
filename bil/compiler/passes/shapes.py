"""Shape and domain inference: every shape is known before lowering.

Hypers and domains are evaluated as constants.  Lower variables, the lower
objective and the upper objective are evaluated *abstractly* with
``jax.eval_shape`` through the same interpreter used for lowering, so shape
rules are exactly those of the JAX implementations (NumPy broadcasting).
Per-sample data is seen with its sample axis removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np

from bil.compiler import ir
from bil.compiler.errors import BilError
from bil.compiler.evaluate import Evaluator, check_size, is_concrete, to_static
from bil.compiler.state import CompileState, HyperInfo, VarInfo
from bil.stdlib import lookup, names
from bil.stdlib.functions import class_label_problem

DOMAINS = ("real", "positive")


def sds(shape, dtype=np.float64) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), dtype)


def abstract_data(st: CompileState) -> dict:
    """Data and hoisted constants as abstract values, sample axis removed."""
    env = {}
    for n, v in st.data.items():
        shape = v.shape[1:] if n in st.per_sample else v.shape
        env[n] = sds(shape, v.dtype)
    return env


def one_sample(st: CompileState, i: int = 0) -> dict:
    """The data as sample ``i``'s lower problem sees it: per-sample names without their sample
    axis (the first sample by default: for shapes, every sample is the same)."""
    return {n: (v[i] if n in st.per_sample else v) for n, v in st.data.items()}


def eval_abstract(e: ir.Expr, env: dict, consts: dict | None = None, concrete: dict | None = None):
    """Shape/dtype of ``e`` when names take the abstract values in ``env``.

    A string (or a list holding one) is not a JAX value: it is reported at
    ``e`` instead of failing inside ``jax.eval_shape``.
    """
    arrays = {k: v for k, v in env.items() if isinstance(v, jax.ShapeDtypeStruct)}
    statics = {k: v for k, v in env.items() if not isinstance(v, jax.ShapeDtypeStruct)}

    def evaluate(a):
        v = Evaluator({**statics, **a}, consts, concrete)(e)
        if any(isinstance(leaf, str) for leaf in jax.tree.leaves(v)):
            raise BilError("expected a number or an array here, not a string", e.span,
                           "strings name things (datasets, images, files); use a number or an array here")
        return v

    return jax.eval_shape(evaluate, arrays)


@dataclass(frozen=True)
class InferShapes:
    name: str = "infer-shapes"

    def apply(self, st: CompileState) -> None:
        const = Evaluator(st.data)
        for s in st.module.statements:
            if isinstance(s, ir.Hyper):
                self._hyper(st, st.symbols[s.name], const)
        env = {**abstract_data(st), **{h.name: sds(h.shape) for h in st.hypers.values()}}
        # the lower problem (its variables' domains and initial values included) is written for
        # ONE sample (docs/LANGUAGE.md, Batching): there, a per-sample name is one sample of it, so
        # ncols(X) of X[3, 20, 4] is 4, as in the vmapped solve, not the stacked array's 20
        sample = one_sample(st)
        for v in st.lower.vars:
            self._lower_var(st, v, Evaluator(sample), env, sample)
        env.update({v.name: sds(v.shape) for v in st.lower_vars.values()})

        goal = st.lower.goal
        # concrete=: meta functions such as nclasses(y) read the data's values
        self._scalar(eval_abstract(st.goal, env, concrete=sample), st.goal, "the lower objective")
        if isinstance(goal, ir.Train):
            self._train(st, goal, Evaluator(sample), env, sample)
        self._scalar(eval_abstract(st.upper_expr, env, concrete=sample), st.upper_expr, "the upper objective")
        for e in (st.goal, st.upper_expr):
            _check_labels(st, e, env, sample)

    # ---------------------------------------------------------------- parts
    def _domain(self, dom: ir.Domain | None, const: Evaluator, what: str):
        """(kind, shape or None, bounds or None) of a domain annotation."""
        if dom is None:
            return "real", None, None
        if dom.base not in DOMAINS:
            from bil.stdlib import closest

            guess = closest(dom.base, list(DOMAINS))
            raise BilError(f"unknown domain `{dom.base}` for {what}", dom.span,
                           (f"did you mean `{guess}`? " if guess else "") + "domains are `real` and `positive`")
        shape = None
        if dom.shape is not None:
            shape = []
            for x in dom.shape:
                v = to_static(const(x))
                if isinstance(v, tuple) and all(isinstance(i, int) for i in v):
                    shape.extend(v)  # real[shape(X)]
                    continue
                if not isinstance(v, (int, np.integer)) and not (isinstance(v, float) and v.is_integer()):
                    raise BilError(f"a dimension must be an integer, got {v!r}", x.span,
                                   "sizes are whole numbers, e.g. `real[10]` or `real[ncols(X)]`")
                if int(v) < 1:
                    raise BilError(f"a dimension must be at least 1, got {int(v)}", x.span,
                                   "sizes are positive, e.g. `real[10]` or `real[ncols(X)]`")
                shape.append(int(v))
            shape = tuple(shape)
            check_size(shape, dom.span, f"the domain of {what}")
        bounds = None
        if dom.bounds is not None:
            lo, hi = (to_static(const(b)) for b in dom.bounds)
            for b, v in zip(dom.bounds, (lo, hi)):
                if not isinstance(v, (int, float)):
                    raise BilError("bounds must be numbers", b.span,
                                   "one number per side, e.g. `in [0, 1]` (the same bounds for every entry)")
            if not lo < hi:
                raise BilError(f"empty bounds: the lower bound {lo} is not below the upper bound {hi}", dom.span,
                               f"write the smaller bound first: `in [{hi}, {lo}]`")
            if dom.base == "positive" and lo < 0:
                raise BilError(f"a `positive` domain cannot have a negative lower bound ({lo:g})", dom.bounds[0].span,
                               f"write `positive in [0, {hi:g}]`, or `real in [{lo:g}, {hi:g}]` for a signed value")
            bounds = (float(lo), float(hi))
        return dom.base, shape, bounds

    def _hyper(self, st: CompileState, h: ir.Hyper, const: Evaluator) -> None:
        kind, shape, bounds = self._domain(h.domain, const, f"hyper `{h.name}`")
        raw = const(h.init)
        if not is_concrete(raw) or isinstance(raw, (str, list, tuple)):
            raise BilError(f"the initial value of hyper `{h.name}` must be a number or an array", h.init.span)
        init = np.asarray(raw, dtype=np.float64)
        if shape is not None:
            try:
                init = np.broadcast_to(init, shape).copy()
            except ValueError:
                raise BilError(f"initial value of shape {init.shape} does not fit the domain shape {shape}",
                               h.init.span, "give a scalar (broadcast) or an array of the domain's shape") from None
        if not np.all(np.isfinite(init)):
            raise BilError(f"the initial value of hyper `{h.name}` is not finite", h.init.span)
        if bounds is not None and not np.all((init > bounds[0]) & (init < bounds[1])):
            raise BilError(f"the initial value of `{h.name}` must lie strictly inside [{bounds[0]:g}, {bounds[1]:g}]",
                           h.init.span, "bounded hypers are optimised through a sigmoid, which never reaches its ends")
        if kind == "positive" and not np.all(init > 0):
            raise BilError(f"`{h.name}` is `positive` but its initial value is not > 0", h.init.span,
                           "positive hypers are optimised in log-coordinates")
        st.hypers[h.name] = HyperInfo(h.name, h, kind, tuple(init.shape), bounds, init)

    def _lower_var(self, st: CompileState, v: ir.LowerVar, const: Evaluator, env: dict, sample: dict) -> None:
        kind, shape, bounds = self._domain(v.domain, const, f"lower variable `{v.name}`")
        init_shape = eval_abstract(v.init, env, concrete=sample)
        if isinstance(init_shape, (tuple, list)) or not hasattr(init_shape, "shape"):
            raise BilError(f"the initial value of `{v.name}` must be a number or an array", v.init.span)
        if shape is None:
            shape = tuple(init_shape.shape)
        else:
            try:
                np.broadcast_shapes(tuple(init_shape.shape), shape)
                if np.broadcast_shapes(tuple(init_shape.shape), shape) != shape:
                    raise ValueError
            except ValueError:
                raise BilError(f"initial value of shape {tuple(init_shape.shape)} does not fit the domain shape "
                               f"{shape}", v.init.span,
                               "give a scalar (broadcast) or an array of the domain's shape") from None
        if kind == "positive" and bounds is None:
            bounds = (0.0, float("inf"))
        st.lower_vars[v.name] = VarInfo(v.name, v, v.init, shape, kind, bounds)

    def _train(self, st: CompileState, goal: ir.Train, const: Evaluator, env: dict, sample: dict) -> None:
        opt = goal.optimizer
        if isinstance(opt, ir.Name):
            opt = ir.Call(opt.span, opt.id, (), (), name_span=opt.span)
        if not isinstance(opt, ir.Call) or lookup(opt.func, "optimizer") is None:
            known = names("optimizer")
            label = opt.func if isinstance(opt, ir.Call) else ir.show(opt)
            from bil.stdlib import closest

            guess = closest(label, known)
            raise BilError(f"unknown optimizer `{label}`", getattr(opt, "name_span", None) or opt.span,
                           (f"did you mean `{guess}`? " if guess else "") + "known: " + ", ".join(known))
        fn = lookup(opt.func, "optimizer")
        from bil.compiler.passes.resolve import check_signature

        check_signature(fn, opt, f"optimizer `{opt.func}`")
        try:
            bound = fn.bind(opt.args, {k.name: k.value for k in opt.kwargs})
        except TypeError as err:
            raise BilError(f"{err} in optimizer `{opt.func}`", opt.span, f"signature: {fn.describe()}") from None
        args = {}
        for pname, expr in bound.arguments.items():
            if not isinstance(expr, ir.Expr):
                continue
            if isinstance(fn.signature.parameters[pname].default, bool) and not isinstance(expr, ir.Bool):
                # a flag selects the update rule: it cannot be learned or traced
                raise BilError(f"optimizer argument `{pname}` must be `true` or `false`", expr.span,
                               "a flag is a constant: write `true` or `false`")
            lower = sorted(ir.free_names(expr) & set(st.lower_vars))
            if lower:
                raise BilError(f"optimizer argument `{pname}` may not depend on the lower variable `{lower[0]}`",
                               expr.span, "optimizer arguments are constants or hypers (e.g. a learned "
                               "learning rate `lr=lr` with `hyper lr : positive`)")
            val = eval_abstract(expr, env, concrete=sample)
            if not hasattr(val, "shape") or val.shape != ():
                raise BilError(f"optimizer argument `{pname}` must be a scalar", expr.span,
                               f"one number for the whole procedure; signature: {fn.describe()}")
            if pname == "lr" and ir.free_names(expr) <= set(st.data):
                lr = to_static(const(expr))
                if isinstance(lr, (int, float)) and not lr > 0:
                    raise BilError(f"the learning rate must be > 0, got {lr:g}", expr.span,
                                   "a step against the gradient needs lr > 0; to learn it, use a "
                                   "`positive` hyper")
            args[pname] = expr
        varying = sorted(ir.free_names(goal.steps) - set(st.data))
        if varying:
            raise BilError(f"the number of steps must be a constant integer, but it uses `{varying[0]}`",
                           goal.steps.span, "steps are fixed at compile time (they set the unrolled loop's length)")
        steps = to_static(const(goal.steps))
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise BilError(f"the number of steps must be a positive integer, got {steps!r}", goal.steps.span,
                           "e.g. `for 100 steps`")
        defaults = {k: p.default for k, p in fn.signature.parameters.items() if p.default is not p.empty}
        st.train_optimizer = _method(opt.func, {**defaults}, opt.span)
        st.train_args = args
        st.train_steps = steps

    @staticmethod
    def _scalar(val, e: ir.Expr, what: str) -> None:
        shape = getattr(val, "shape", None)
        if shape is None:
            raise BilError(f"{what} must be a scalar expression", e.span,
                           "minimize one number, e.g. a sum such as `sumsq(...) + lam * sumsq(w)`")
        if tuple(shape) != ():
            raise BilError(f"{what} must be a scalar, but this expression has shape {tuple(shape)}", e.span,
                           "reduce it, e.g. with `sum(...)`, `mean(...)` or `sumsq(...)`")


def _method(name, kwargs, span):
    from bil.compiler.state import Method

    return Method(name, kwargs, span)


#: functions whose second argument holds labels (class indices, or 0/1)
_LABELED = frozenset({"cross_entropy", "logistic_loss"})


def _check_labels(st: CompileState, e: ir.Expr, env: dict, sample: dict) -> None:
    """Labels given as data are known at compile time: check their values where a wrong
    value would otherwise give a silently meaningless loss (float labels truncated to a
    class index, an index past the last class: NaN at run time)."""
    for c in ir.walk(e):
        if not (isinstance(c, ir.Call) and c.func in _LABELED and len(c.args) == 2):
            continue
        logits, labels = c.args
        if not (ir.free_names(labels) <= st.data.keys()):
            continue
        # evaluated as the lower problem sees them: per sample, each sample's own labels
        if ir.free_names(labels) & st.per_sample:
            ys = [np.asarray(Evaluator(one_sample(st, i))(labels)) for i in range(st.n_samples)]
        else:
            ys = [np.asarray(Evaluator(st.data)(labels))]
        y = np.concatenate([a.ravel() for a in ys])
        if y.size == 0 or y.dtype == bool:
            continue
        if c.func == "cross_entropy":
            z = eval_abstract(logits, env, concrete=sample)   # the logits' shape: the classes
            for yi in ys:
                bad = class_label_problem(yi, tuple(z.shape), ir.show(labels))
                if bad is not None:
                    raise BilError(bad[0], labels.span, bad[1])
        elif not np.all((y == 0) | (y == 1)):
            raise BilError(f"logistic_loss expects 0/1 labels, but `{ir.show(labels)}` has other values",
                           labels.span, "binary labels are 0 or 1 (dataset(\"breast_cancer\") gives them)")
