"""Losses and classification: softmax, cross-entropy, logistic, Huber, mse, one-hot.

The label checks (``class_label_problem``) run at compile time on labels given
as data (the ``check=`` rules) and inside the functions on concrete labels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bil.stdlib import rules
from bil.stdlib.errors import StdlibError
from bil.stdlib.functions.common import _axis, _dim, _is_abstract, _ndim_error
from bil.stdlib.registry import register


@register("softmax", static=("axis",))
def softmax(x, axis=-1):
    """Softmax exp(x) / sum(exp(x)) along `axis` (default: last)."""
    return jax.nn.softmax(x, axis=_axis(x, axis, "softmax"))


@register("log_softmax", static=("axis",))
def log_softmax(x, axis=-1):
    """log(softmax(x)) along `axis` (default: last), computed stably."""
    return jax.nn.log_softmax(x, axis=_axis(x, axis, "log_softmax"))


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


def _check_class_labels(y: np.ndarray, logits_shape: tuple, name: str | None = None) -> None:
    bad = class_label_problem(y, logits_shape, name)
    if bad is not None:
        raise StdlibError(bad[0], hint=bad[1], arg=1)


def _labels_fit_logits(logits: rules.CallArg, labels: rules.CallArg) -> None:
    """Compile-time check of ``cross_entropy``'s labels given as data (see ``class_label_problem``)."""
    if labels.value is not None:
        _check_class_labels(np.asarray(labels.value), logits.shape, labels.text)


def _labels_are_binary(scores: rules.CallArg, labels: rules.CallArg) -> None:
    """Compile-time check of ``logistic_loss``'s labels given as data: 0 or 1."""
    y = None if labels.value is None else np.asarray(labels.value)
    if y is not None and y.size and y.dtype != bool and not np.all((y == 0) | (y == 1)):
        raise StdlibError(f"logistic_loss expects 0/1 labels, but `{labels.text}` has other values",
                          hint="binary labels are 0 or 1 (dataset(\"breast_cancer\") gives them)", arg=1)


@register("cross_entropy", check=_labels_fit_logits)
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


@register("logistic_loss", check=_labels_are_binary)
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


@register("mse", degree=rules.squared_difference)
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
