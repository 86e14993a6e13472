"""Shape and domain inference: every shape is known before lowering.

Hypers and domains are evaluated as constants.  Lower variables, the lower
objective and the upper objective are evaluated *abstractly* with
``jax.eval_shape`` through the same interpreter used for lowering, so shape
rules are exactly those of the JAX implementations (NumPy broadcasting).
Per-sample data is seen with its sample axis removed, in the lower problem and
in hyper declarations alike (a hyper is shared by all samples: its declaration
may take sizes from per-sample data, which are one sample's, but not values).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import numpy as np

from bil.core import ir
from bil.core.errors import BilError
from bil.compiler.evaluate import Evaluator, check_size, is_concrete, reporting_errors, to_static
from bil.compiler.state import CompileState, HyperInfo, VarInfo
from bil.stdlib import lookup, names
from bil.stdlib.rules import CallArg

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

    failed: list[BilError] = []

    def evaluate(a):
        try:
            v = Evaluator({**statics, **a}, consts, concrete)(e)
        except BilError as err:
            # raised below, outside JAX: through jax.eval_shape it would gain JAX's traceback
            # note, or (JAX_TRACEBACK_FILTERING=remove_frames, as under IPython) a chained copy
            # of itself, and the diagnostic was printed twice
            failed.append(err)
            return 0.0
        if any(isinstance(leaf, str) for leaf in jax.tree.leaves(v)):
            failed.append(BilError("expected a number or an array here, not a string", e.span,
                                   "strings name things (datasets, images, files); use a number or an array here"))
            return 0.0
        return v

    out = jax.eval_shape(evaluate, arrays)
    if failed:
        raise failed[0].with_traceback(None)
    return out


@dataclass(frozen=True)
class InferShapes:
    name: str = "infer-shapes"

    def apply(self, st: CompileState) -> None:
        """Each hyper, lower variable and objective is checked on its own (its errors recorded in
        ``st.diag``); one that uses a name whose declaration failed is skipped (no cascade)."""
        # Hypers are shared by all samples, but their sizes are one sample's, like the lower
        # problem's: `real[ncols(X)]` of a per-sample X[3, 20, 4] is 4 (see `_per_sample_sizes_only`)
        sample = one_sample(st)
        failed: set[str] = set()
        for s in st.module.statements:
            if isinstance(s, ir.Hyper):
                with st.diag.guard() as g:
                    self._hyper(st, st.symbols[s.name], Evaluator(sample))
                if g.failed:
                    failed.add(s.name)
        env = {**abstract_data(st), **{h.name: sds(h.shape) for h in st.hypers.values()}}
        # the lower problem (its variables' domains and initial values included) is written for
        # ONE sample (docs/LANGUAGE.md, Batching): there, a per-sample name is one sample of it, so
        # ncols(X) of X[3, 20, 4] is 4, as in the vmapped solve, not the stacked array's 20
        for v in st.lower.vars:
            if not _uses(v.init, failed) and not _uses_domain(v.domain, failed):
                with st.diag.guard() as g, _per_sample_note(st, v.init):
                    self._lower_var(st, v, Evaluator(sample), env, sample)
                if not g.failed:
                    continue
            failed.add(v.name)
        env.update({v.name: sds(v.shape) for v in st.lower_vars.values()})

        goal = st.lower.goal

        def objective(e: ir.Expr, what: str) -> None:
            # concrete=: meta functions such as nclasses(y) read the data's values
            with _per_sample_note(st, e):
                self._scalar(eval_abstract(e, env, concrete=sample), e, what)
            _check_calls(st, e, env, sample)

        checks = [((st.goal,), lambda: objective(st.goal, "the lower objective")),
                  ((st.upper_expr,), lambda: objective(st.upper_expr, "the upper objective"))]
        if isinstance(goal, ir.Train):
            checks.insert(1, ((goal.expr, goal.optimizer, goal.steps),
                              lambda: self._train(st, goal, Evaluator(sample), env, sample)))
        for exprs, check in checks:
            if not any(_uses(e, failed) for e in exprs):
                with st.diag.guard():
                    check()

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
        for e in (h.init, *_domain_exprs(h.domain)):
            _per_sample_sizes_only(e, st.per_sample, f"the declaration of hyper `{h.name}`",
                                   "a hyper is shared by all samples, so its declaration may use `per sample` data "
                                   "only for sizes (`ncols(X)`, `rows(X)`, `shape(X)`: one sample's, as in the "
                                   "lower block); for a value, bind data without `per sample`")
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
        for e in (v.domain.bounds or ()) if v.domain is not None else ():
            _per_sample_sizes_only(e, st.per_sample, f"the bounds of `{v.name}`",
                                   "bounds are the same for every sample, so they may use `per sample` data only "
                                   "for sizes (`ncols(X)`, `rows(X)`); for a value, bind data without `per sample`")
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
        from bil.compiler.passes.options import MAX_COUNT

        if steps > MAX_COUNT:
            raise BilError(f"{steps:,} steps are more than the {MAX_COUNT:,} a loop can count", goal.steps.span,
                           "step counts are capped at 10^9 (loops count in int32); e.g. `for 1000 steps`")
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


def _per_sample_sizes_only(e: ir.Expr, per_sample: set[str], what: str, hint: str) -> None:
    """Raise a :class:`BilError` at the first per-sample name in ``e`` used other than as the
    argument of a size function (kind ``meta``: ``shape rows ncols nclasses``): ``what`` is one
    value shared by all samples, and a size is the same for each sample, a value is not."""
    stack = [e]
    while stack:
        x = stack.pop()
        fn = lookup(x.func) if isinstance(x, ir.Call) else None
        if fn is not None and fn.kind == "meta":
            continue
        if isinstance(x, ir.Name) and x.id in per_sample:
            raise BilError(f"`per sample` data `{x.id}` used as a value in {what}", x.span, hint)
        stack.extend(reversed(ir.children(x)))


class _per_sample_note:
    """Context manager: a shape error in ``e`` of a per-sample problem says, in its hint, that
    per-sample names (and so the sizes taken from them) are one sample's there."""

    def __init__(self, st: CompileState, e: ir.Expr):
        self.st, self.e = st, e

    def __enter__(self):
        return self

    def __exit__(self, typ, err, tb) -> bool:
        st = self.st
        if isinstance(err, BilError) and st.per_sample and "shape" in err.message:
            names = sorted(ir.free_names(self.e) & st.per_sample) or sorted(st.per_sample)
            shapes = ", ".join(f"`{n}` {tuple(st.data[n].shape[1:])}" for n in names)
            err.hint = (err.hint + "; " if err.hint else "") + (
                f"`per sample` data is one sample: {shapes}, and so are the sizes taken from it "
                "(`rows`, `ncols`, `shape`) in domains")
        return False


def _domain_exprs(dom: ir.Domain | None) -> tuple:
    return () if dom is None else (*(dom.shape or ()), *(dom.bounds or ()))


def _uses(e: ir.Expr | None, names: set[str]) -> bool:
    return e is not None and bool(ir.free_names(e) & names)


def _uses_domain(dom: ir.Domain | None, names: set[str]) -> bool:
    return any(_uses(x, names) for x in _domain_exprs(dom))


def _method(name, kwargs, span):
    from bil.compiler.state import Method

    return Method(name, kwargs, span)


def _check_calls(st: CompileState, e: ir.Expr, env: dict, sample: dict) -> None:
    """Run the compile-time checks stdlib functions registered (``check=``) on each call in ``e``.
    Arguments given as data are known here: a wrong value (labels that are not class indices,
    say) would otherwise give a silently meaningless loss or NaN at run time."""
    for c in ir.walk(e):
        fn = lookup(c.func) if isinstance(c, ir.Call) else None
        if fn is None or fn.check is None:
            continue
        exprs = [*c.args, *(k.value for k in c.kwargs)]
        known = [ir.free_names(x) <= st.data.keys() for x in exprs]
        # evaluated as the lower problem sees them: per sample, once for each sample
        per = any(k and ir.free_names(x) & st.per_sample for k, x in zip(known, exprs))

        @functools.cache   # one abstract evaluation per argument, shared by the samples
        def shape(i: int) -> tuple:
            return tuple(eval_abstract(exprs[i], env, concrete=sample).shape)

        for data in ([one_sample(st, i) for i in range(st.n_samples)] if per else [st.data]):
            value = Evaluator(data)
            args = [CallArg(ir.show(x), functools.partial(shape, i), functools.partial(value, x) if k else None)
                    for i, (x, k) in enumerate(zip(exprs, known))]
            with reporting_errors(c, fn):
                fn.check(*args[:len(c.args)], **{k.name: a for k, a in zip(c.kwargs, args[len(c.args):])})
