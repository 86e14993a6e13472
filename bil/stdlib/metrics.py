"""Evaluation metrics: ``accuracy``, ``psnr``.

Both are ordinary array functions, so an upper objective may use them (PSNR is
smooth in the reconstruction; accuracy is piecewise constant, its gradient 0:
use it to report, and a smooth loss such as ``cross_entropy`` to learn).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from bil.stdlib.errors import StdlibError
from bil.stdlib.functions import _check_class_labels, _is_abstract
from bil.stdlib.registry import register


@register("accuracy")
def accuracy(scores, labels):
    """Fraction of correct predictions: argmax of logits [N, K] against integer labels [N], or sign of scores [N] against 0/1 labels."""
    scores, labels = jnp.asarray(scores), jnp.asarray(labels)
    if scores.ndim == 2 and labels.shape == scores.shape[:1]:
        if not _is_abstract(labels):
            _check_class_labels(np.asarray(labels), scores.shape)
        pred = jnp.argmax(scores, axis=-1)
    elif scores.ndim == 1 and labels.shape == scores.shape:
        pred = (scores > 0).astype(jnp.int32)
    else:
        raise StdlibError(
            f"accuracy: labels of shape {tuple(labels.shape)} do not go with scores of shape {tuple(scores.shape)}",
            hint="give logits [N, K] with integer labels [N], or scores [N] with 0/1 labels [N]", arg=1)
    return jnp.mean((pred == labels.astype(pred.dtype)).astype(jnp.result_type(float)))


@register("psnr")
def psnr(x, ref, peak=1.0):
    """Peak signal-to-noise ratio 10 log10(peak^2 / mean((x - ref)^2)) in dB (peak 1 for images in [0, 1])."""
    x, ref = jnp.asarray(x), jnp.asarray(ref)
    if x.shape != ref.shape:
        raise StdlibError(f"psnr: x of shape {tuple(x.shape)} and ref of shape {tuple(ref.shape)} differ",
                          hint="compare a reconstruction with the clean image of the same shape", arg=1)
    if isinstance(peak, (int, float, np.number)) and not peak > 0:
        raise StdlibError(f"psnr: peak must be > 0, got {peak}", arg="peak",
                          hint="the largest possible pixel value: 1 for images in [0, 1]")
    return 10.0 * jnp.log10(jnp.square(peak) / jnp.mean(jnp.square(x - ref)))
