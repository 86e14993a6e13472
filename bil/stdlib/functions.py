"""Array and meta functions of the standard library.

``kind="array"`` functions are plain JAX: they take ``jnp`` arrays (or Python
scalars) and return a ``jnp`` array.  The compiler infers their result shapes by
running them under ``jax.eval_shape``, so every check here looks at shapes and
dtypes only, never at values.  Parameters listed in ``static=`` (axes, sizes,
seeds) arrive as Python values.

``kind="meta"`` functions (``shape rows ncols nclasses``) run during constant
folding on concrete arrays and return Python ints or tuples of ints.

Bad user input raises :class:`StdlibError`; the compiler reports it at the
call (or at the argument named by ``arg``).  Broadcasting mismatches are left
to JAX, whose ``TypeError`` the compiler also turns into a diagnostic.
"""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp as _jax_logsumexp

from bil.stdlib.errors import StdlibError
from bil.stdlib.registry import register

# --------------------------------------------------------------------------
# helpers


def _axis(x, axis, fname):
    """Normalise ``axis`` (None, int, or a list/tuple of ints) and check its range."""
    if axis is None:
        return None
    ndim = jnp.ndim(x)
    many = isinstance(axis, (list, tuple))
    axes = tuple(axis) if many else (axis,)
    for a in axes:
        try:
            a = operator.index(a)
        except TypeError:
            raise StdlibError(f"{fname}: axis must be an integer, got {a!r}", arg="axis") from None
        if not -ndim <= a < ndim:
            raise StdlibError(
                f"{fname}: axis {a} is out of range for an array with {ndim} dimension(s)",
                hint=f"valid axes are {-ndim}..{ndim - 1}" if ndim else "a scalar has no axes; drop axis=",
                arg="axis",
            )
    axes = tuple(operator.index(a) for a in axes)
    return axes if many else axes[0]


def _dim(d, fname, arg):
    """One size: a non-negative compile-time integer (-1 allowed for reshape)."""
    # numpy integers and integral floats from constant folding are accepted
    if isinstance(d, (float, np.floating)) and float(d).is_integer():
        d = int(d)
    try:
        d = operator.index(d)
    except TypeError:
        raise StdlibError(
            f"{fname}: size {d!r} is not an integer",
            hint="sizes must be compile-time integers, e.g. rows(x) or 64",
            arg=arg,
        ) from None
    if d < 0 and not (fname == "reshape" and d == -1):
        raise StdlibError(f"{fname}: size {d} is negative", arg=arg)
    return d


def _shape_arg(shape, fname):
    """Shape given as ints ``f(2, 3)`` or as one tuple ``f(shape(x))``."""
    if len(shape) == 1 and isinstance(shape[0], (list, tuple)):
        shape = tuple(shape[0])
    return tuple(_dim(d, fname, i) for i, d in enumerate(shape))


def _ndim_error(fname, what, x, arg=0, hint=None):
    return StdlibError(f"{fname} expects {what}, got an array of shape {tuple(jnp.shape(x))}", hint=hint, arg=arg)


def _is_abstract(x):
    return isinstance(x, (jax.ShapeDtypeStruct, jax.core.Tracer))


# --------------------------------------------------------------------------
# reductions


@register("sum", static=("axis", "keepdims"))
def sum_(x, axis=None, keepdims=False):
    """Sum of the elements (over `axis` if given)."""
    return jnp.sum(x, axis=_axis(x, axis, "sum"), keepdims=keepdims)


@register("mean", static=("axis", "keepdims"))
def mean(x, axis=None, keepdims=False):
    """Mean of the elements (over `axis` if given)."""
    return jnp.mean(x, axis=_axis(x, axis, "mean"), keepdims=keepdims)


@register("sumsq", static=("axis", "keepdims"))
def sumsq(x, axis=None, keepdims=False):
    """Sum of squares of the elements, sum(x^2) (over `axis` if given)."""
    return jnp.sum(jnp.square(x), axis=_axis(x, axis, "sumsq"), keepdims=keepdims)


@register("norm", static=("axis", "keepdims"))
def norm(x, axis=None, keepdims=False):
    """Euclidean norm sqrt(sum(x^2)) (over `axis` if given); its gradient at 0 is 0."""
    s = jnp.sum(jnp.square(x), axis=_axis(x, axis, "norm"), keepdims=keepdims)
    # Double `where`: sqrt's infinite slope at 0 would give 0 * inf = NaN gradients.
    pos = s > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, s, 1.0)), 0.0)


@register("group_l1")
def group_l1(x, groups, weights=1.0):
    """Group lasso sum_g weights_g * norm(x[groups[:, g] == 1]) for a 0/1 matrix groups [n, G] (e.g. onehot(labels, G))."""
    if jnp.ndim(x) != 1:
        raise _ndim_error("group_l1", "a 1-D array", x)
    if jnp.ndim(groups) != 2 or jnp.shape(groups)[0] != jnp.shape(x)[0]:
        raise _ndim_error("group_l1", f"a 0/1 matrix of shape ({jnp.shape(x)[0]}, G)", groups, arg=1,
                          hint="one row per entry of x, one column per group: onehot(labels, G)")
    if jnp.ndim(weights) > 1 or (jnp.ndim(weights) == 1 and jnp.shape(weights)[0] not in (1, jnp.shape(groups)[1])):
        raise _ndim_error("group_l1", f"a scalar or {jnp.shape(groups)[1]} group weights", weights, arg=2)
    s = jnp.asarray(groups, jnp.result_type(x, float)).T @ jnp.square(x)
    # Double `where`, as in `norm`: a group at 0 has gradient 0, never 0 * inf = NaN.
    pos = s > 0
    return jnp.sum(weights * jnp.where(pos, jnp.sqrt(jnp.where(pos, s, 1.0)), 0.0))


@register("max", static=("axis", "keepdims"))
def max_(x, axis=None, keepdims=False):
    """Largest element (over `axis` if given)."""
    return jnp.max(x, axis=_axis(x, axis, "max"), keepdims=keepdims)


@register("min", static=("axis", "keepdims"))
def min_(x, axis=None, keepdims=False):
    """Smallest element (over `axis` if given)."""
    return jnp.min(x, axis=_axis(x, axis, "min"), keepdims=keepdims)


@register("logsumexp", static=("axis", "keepdims"))
def logsumexp(x, axis=None, keepdims=False):
    """log(sum(exp(x))) computed stably (over `axis` if given)."""
    return _jax_logsumexp(x, axis=_axis(x, axis, "logsumexp"), keepdims=keepdims)


@register("l1", static=("axis", "keepdims"))
def l1(x, axis=None, keepdims=False):
    """Sum of absolute values, sum(abs(x)) (over `axis` if given)."""
    return jnp.sum(jnp.abs(x), axis=_axis(x, axis, "l1"), keepdims=keepdims)


@register("trace")
def trace(x):
    """Sum of the diagonal of a square or rectangular 2-D array."""
    if jnp.ndim(x) != 2:
        raise _ndim_error("trace", "a 2-D array", x)
    return jnp.trace(x)


# --------------------------------------------------------------------------
# element-wise


@register("exp")
def exp(x):
    """Element-wise exponential."""
    return jnp.exp(x)


@register("log")
def log(x):
    """Element-wise natural logarithm."""
    return jnp.log(x)


@register("log1p")
def log1p(x):
    """Element-wise log(1 + x), accurate for small x."""
    return jnp.log1p(x)


@register("sqrt")
def sqrt(x):
    """Element-wise square root."""
    return jnp.sqrt(x)


@register("abs")
def abs_(x):
    """Element-wise absolute value."""
    return jnp.abs(x)


@register("square")
def square(x):
    """Element-wise square, x^2."""
    return jnp.square(x)


@register("sign")
def sign(x):
    """Element-wise sign (-1, 0 or 1); its gradient is 0."""
    return jnp.sign(x)


@register("cos")
def cos(x):
    """Element-wise cosine."""
    return jnp.cos(x)


@register("sin")
def sin(x):
    """Element-wise sine."""
    return jnp.sin(x)


@register("tanh")
def tanh(x):
    """Element-wise hyperbolic tangent."""
    return jnp.tanh(x)


@register("sigmoid")
def sigmoid(x):
    """Element-wise logistic sigmoid 1 / (1 + exp(-x))."""
    x = jnp.asarray(x)
    # integers are promoted like exp(0) is (jax.nn.sigmoid itself rejects them)
    return jax.nn.sigmoid(x if jnp.issubdtype(x.dtype, jnp.inexact) else x.astype(jnp.result_type(float)))


@register("softplus")
def softplus(x):
    """Element-wise log(1 + exp(x)), computed stably."""
    return jax.nn.softplus(x)


@register("relu")
def relu(x):
    """Element-wise max(x, 0)."""
    return jax.nn.relu(x)


@register("smooth_abs")
def smooth_abs(x, eps):
    """Element-wise smooth absolute value sqrt(x^2 + eps^2)."""
    return jnp.sqrt(jnp.square(x) + jnp.square(eps))


@register("soft_threshold")
def soft_threshold(x, t):
    """Element-wise shrinkage sign(x) * max(abs(x) - t, 0) (the prox of t*l1)."""
    return jnp.sign(x) * jnp.maximum(jnp.abs(x) - t, 0.0)


@register("maximum")
def maximum(a, b):
    """Element-wise maximum of two arrays (broadcast)."""
    return jnp.maximum(a, b)


@register("minimum")
def minimum(a, b):
    """Element-wise minimum of two arrays (broadcast)."""
    return jnp.minimum(a, b)


@register("clip")
def clip(x, lo, hi):
    """Element-wise clamp of x to [lo, hi]."""
    return jnp.clip(x, lo, hi)


@register("where")
def where(c, a, b):
    """Element-wise choice: a where c is true (nonzero), else b."""
    return jnp.where(c, a, b)


# --------------------------------------------------------------------------
# linear algebra and shape manipulation


@register("dot")
def dot(a, b):
    """Dot product of vectors, or matrix product (like numpy.dot)."""
    return jnp.dot(a, b)


@register("transpose")
def transpose(x):
    """Reverse the axes (the matrix transpose for a 2-D array)."""
    return jnp.transpose(x)


@register("reshape", static=("shape",))
def reshape(x, *shape):
    """Reshape to the given sizes (one size may be -1); sizes or one tuple."""
    dims = _shape_arg(shape, "reshape")
    size = int(np.prod(jnp.shape(x), dtype=np.int64))
    known = int(np.prod([d for d in dims if d != -1], dtype=np.int64))
    if dims.count(-1) > 1 or (-1 not in dims and known != size) or (-1 in dims and (known == 0 or size % known)):
        raise StdlibError(
            f"reshape: cannot reshape an array of shape {tuple(jnp.shape(x))} ({size} elements) to {dims}",
            hint="the sizes must multiply to the number of elements; at most one size may be -1",
        )
    return jnp.reshape(x, dims)


@register("eye", static=("n",))
def eye(n):
    """The n-by-n identity matrix."""
    return jnp.eye(_dim(n, "eye", "n"))


@register("diag")
def diag(x):
    """Diagonal matrix from a 1-D array, or the diagonal of a 2-D array."""
    if jnp.ndim(x) not in (1, 2):
        raise _ndim_error("diag", "a 1-D or 2-D array", x)
    return jnp.diag(x)


# --------------------------------------------------------------------------
# array constructors (all arguments static)


@register("zeros", static=("shape",))
def zeros(*shape):
    """Array of zeros of the given shape: zeros(3, 4) or zeros(shape(x))."""
    return jnp.zeros(_shape_arg(shape, "zeros"))


@register("ones", static=("shape",))
def ones(*shape):
    """Array of ones of the given shape: ones(3, 4) or ones(shape(x))."""
    return jnp.ones(_shape_arg(shape, "ones"))


@register("randn", static=("shape", "seed"))
def randn(*shape, seed=0):
    """Standard normal samples of the given shape, reproducible from `seed`."""
    dims = _shape_arg(shape, "randn")
    try:
        seed = operator.index(seed)
    except TypeError:
        raise StdlibError(f"randn: seed must be an integer, got {seed!r}", arg="seed") from None
    # All arguments are compile-time constants, so NumPy draws the samples:
    # jax.random would compile a kernel for every new shape (~1 s each).
    return np.random.default_rng(seed).standard_normal(dims)


# --------------------------------------------------------------------------
# losses and classification


@register("softmax", static=("axis",))
def softmax(x, axis=-1):
    """Softmax exp(x) / sum(exp(x)) along `axis` (default: last)."""
    return jax.nn.softmax(x, axis=_axis(x, axis, "softmax"))


@register("log_softmax", static=("axis",))
def log_softmax(x, axis=-1):
    """log(softmax(x)) along `axis` (default: last), computed stably."""
    return jax.nn.log_softmax(x, axis=_axis(x, axis, "log_softmax"))


@register("cross_entropy")
def cross_entropy(logits, labels):
    """Mean softmax cross-entropy of logits [N, K] with integer labels [N] (or targets [N, K])."""
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    if logits.ndim not in (1, 2):
        raise _ndim_error("cross_entropy", "logits of shape [N, K] (or [K] for one sample)", logits)
    logp = jax.nn.log_softmax(logits, axis=-1)
    if not _is_abstract(labels):
        _check_class_labels(np.asarray(labels), logits.shape)
    if labels.shape == logits.shape:
        # Same shape as the logits: class probabilities (e.g. onehot(y, K)).
        nll = -jnp.sum(labels * logp, axis=-1)
    elif labels.shape == logits.shape[:-1]:
        # Labels read from a CSV arrive as floats; class indices are their integer part.
        idx = labels.astype(jnp.int32)
        nll = -jnp.take_along_axis(logp, idx[..., None], axis=-1)[..., 0]
    else:
        raise StdlibError(
            f"cross_entropy: labels of shape {labels.shape} do not match logits of shape {logits.shape}",
            hint=f"pass integer labels of shape {logits.shape[:-1]} or class probabilities of shape {logits.shape}",
            arg=1,
        )
    return jnp.mean(nll)


def class_label_problem(y: np.ndarray, logits_shape: tuple, name: str | None = None) -> tuple[str, str] | None:
    """(message, hint) when concrete labels ``y`` cannot go with logits of ``logits_shape`` in
    cross_entropy, else None.  Same shape: class probabilities (≥ 0, summing to 1 along the
    last axis); one axis less: class indices 0..K-1.  A common slip, 0/1 labels of N rows
    with one logit per row, is neither: it would read as N-class probabilities."""
    shape = tuple(logits_shape)
    k = shape[-1] if shape else 1
    if y.size == 0 or y.dtype == bool:
        return None
    if y.shape == shape:
        if np.all(y >= 0) and np.allclose(np.sum(y, axis=-1), 1.0, rtol=1e-6, atol=1e-6):
            return None
        if len(shape) == 1:
            return (f"cross_entropy: logits of shape {shape} with labels of the same shape read as class "
                    "probabilities of one sample, but these labels are not ≥ 0 and summing to 1",
                    "for N samples give logits of shape [N, K] (e.g. X @ W with W of shape [d, K]); "
                    "with one score per sample and 0/1 labels use logistic_loss(scores, labels)")
        return ("cross_entropy: labels of the logits' shape are class probabilities, but these are not "
                "≥ 0 and summing to 1 along the last axis",
                "give integer class labels of one axis less, or probabilities such as onehot(y, K)")
    if not np.all(y == np.round(y)):
        return ("cross_entropy expects integer class labels, got non-integer values",
                "class labels are 0..K-1; for regression targets use a squared loss such as mse(...)")
    if y.min() < 0 or y.max() >= k:
        return (f"cross_entropy: labels range over {int(y.min())}..{int(y.max())} but the logits have {k} classes",
                f"give the logits nclasses({name}) = {int(y.max()) + 1} columns" if name else
                f"the logits need max(label) + 1 = {int(y.max()) + 1} columns (nclasses(labels) gives it)")
    return None


def _check_class_labels(y: np.ndarray, logits_shape: tuple) -> None:
    bad = class_label_problem(y, logits_shape)
    if bad is not None:
        raise StdlibError(bad[0], hint=bad[1], arg=1)


@register("logistic_loss")
def logistic_loss(scores, labels):
    """Mean logistic loss of real scores against 0/1 labels of the same shape."""
    scores, labels = jnp.asarray(scores), jnp.asarray(labels)
    if scores.shape != labels.shape:
        # Broadcasting [N, 1] against [N] would silently build an [N, N] loss.
        raise StdlibError(
            f"logistic_loss: scores of shape {scores.shape} and labels of shape {labels.shape} differ",
            hint="scores and labels must have the same shape, e.g. X @ w with w a vector",
            arg=1,
        )
    # -log sigmoid(s) for y=1 and -log sigmoid(-s) for y=0, i.e. softplus(-(2y-1) s):
    # stable for large |s|, unlike log(sigmoid(s)).
    return jnp.mean(jax.nn.softplus((1.0 - 2.0 * labels) * scores))


@register("huber")
def huber(r, delta=1.0):
    """Huber loss summed over elements: 0.5 r^2 where |r| <= delta, else delta (|r| - delta/2)."""
    if isinstance(delta, (int, float, np.number)) and not delta > 0:   # a constant: check it (a hyper may be traced)
        raise StdlibError(f"huber: delta must be > 0, got {delta}", arg="delta",
                          hint="delta is where the loss turns from quadratic to linear, e.g. huber(r, 1.0)")
    a = jnp.abs(r)
    return jnp.sum(jnp.where(a <= delta, 0.5 * jnp.square(r), delta * (a - 0.5 * delta)))


@register("mse")
def mse(a, b):
    """Mean squared error mean((a - b)^2)."""
    return jnp.mean(jnp.square(jnp.asarray(a) - jnp.asarray(b)))


@register("onehot", static=("n",))
def onehot(labels, n):
    """One-hot float encoding [..., n] of integer labels in 0..n-1."""
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise StdlibError(
            f"onehot: labels must be integers, got dtype {labels.dtype}",
            hint="class labels from dataset(...) are integers; nclasses(y) gives n",
            arg=0,
        )
    n = _dim(n, "onehot", "n")
    if n < 1:
        raise StdlibError("onehot: the number of classes n must be at least 1", arg=1)
    if not _is_abstract(labels) and labels.size and (int(jnp.min(labels)) < 0 or int(jnp.max(labels)) >= n):
        raise StdlibError(f"onehot: labels range over {int(jnp.min(labels))}..{int(jnp.max(labels))}, "
                          f"outside 0..{n - 1}", hint="n is the number of classes: nclasses(y) gives it", arg=0)
    return jax.nn.one_hot(labels, n, dtype=jnp.result_type(float))


# --------------------------------------------------------------------------
# images


@register("dx")
def dx(u):
    """Forward difference along columns (last axis), 0 in the last column (Neumann boundary)."""
    if jnp.ndim(u) < 2:
        raise _ndim_error("dx", "an image (a 2-D array)", u, hint="dx and dy act on the last two axes")
    # Appending the last column makes its difference exactly 0.
    return jnp.diff(u, axis=-1, append=u[..., -1:])


@register("dy")
def dy(u):
    """Forward difference along rows (second-to-last axis), 0 in the last row (Neumann boundary)."""
    if jnp.ndim(u) < 2:
        raise _ndim_error("dy", "an image (a 2-D array)", u, hint="dx and dy act on the last two axes")
    return jnp.diff(u, axis=-2, append=u[..., -1:, :])


@register("tv")
def tv(u, eps):
    """Smoothed isotropic total variation sum(sqrt(dx(u)^2 + dy(u)^2 + eps^2))."""
    if jnp.ndim(u) < 2:
        raise _ndim_error("tv", "an image (a 2-D array)", u)
    return jnp.sum(jnp.sqrt(jnp.square(dx(u)) + jnp.square(dy(u)) + jnp.square(eps)))


@register("conv2d", static=("padding",))
def conv2d(x, kernels, padding="zero"):
    """2-D correlation x [H, W], kernels [F, h, w] -> [F, H, W], same size with `padding` = "zero" (default), "reflect", "symmetric", "edge" or "wrap"; "valid" shrinks it."""
    from bil.stdlib.imaging import correlate  # imaging imports this module's helpers

    x, k = jnp.asarray(x), jnp.asarray(kernels)
    if x.ndim != 2:
        raise _ndim_error("conv2d", "an image x of shape [H, W]", x, arg=0)
    single = k.ndim == 2  # one kernel [h, w] gives one map [H, W]
    if single:
        k = k[None]
    if k.ndim != 3:
        raise _ndim_error("conv2d", "kernels of shape [F, h, w] (or one kernel [h, w])", k, arg=1)
    dtype = jnp.result_type(x, k)
    if not jnp.issubdtype(dtype, jnp.inexact):
        dtype = jnp.result_type(float)
    # out[f, i, j] = sum_ab x[i + a - (h-1)//2, j + b - (w-1)//2] k[f, a, b] ("SAME" at stride 1)
    out = correlate(x.astype(dtype), k.astype(dtype), padding)
    return out[0] if single else out


# --------------------------------------------------------------------------
# meta: compile-time functions of shapes and values


@register("shape", kind="meta")
def shape(x):
    """The shape of x as a tuple of ints."""
    return tuple(int(d) for d in (x.shape if hasattr(x, "shape") else np.shape(x)))


@register("rows", kind="meta")
def rows(x):
    """The size of the first axis of x (number of rows or samples)."""
    s = shape(x)
    if not s:
        raise StdlibError("rows: a scalar has no rows", arg=0)
    return s[0]


@register("ncols", kind="meta")
def ncols(x):
    """The size of the second axis of x (number of columns or features)."""
    s = shape(x)
    if len(s) < 2:
        raise StdlibError(
            f"ncols expects an array with at least 2 dimensions, got shape {s}",
            hint="for a 1-D array use rows(x) or shape(x)",
            arg=0,
        )
    return s[1]


@register("nclasses", kind="meta")
def nclasses(labels):
    """Number of classes, max(labels) + 1, of integer labels known at compile time."""
    if _is_abstract(labels):
        raise StdlibError(
            "nclasses needs labels known at compile time",
            hint="call it on data (e.g. the labels returned by dataset(...)), not on a variable",
            arg=0,
        )
    y = np.asarray(labels)
    if y.size == 0:
        raise StdlibError("nclasses: the labels are empty", arg=0)
    if not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)))):
        raise StdlibError(
            f"nclasses expects integer class labels, got dtype {y.dtype} with non-integer values",
            hint="class labels are 0..K-1",
            arg=0,
        )
    if y.min() < 0:
        raise StdlibError(f"nclasses: labels must be >= 0, found {y.min()}", hint="class labels are 0..K-1", arg=0)
    return int(y.max()) + 1
