"""Image operators: padded 2-D correlation (``conv2d``'s ``padding=``) and ``gaussian_blur``.

``conv2d`` is registered in ``functions.py``; its boundary handling lives here
so that one function pads for both.  Padding modes name what lies outside the
image: ``"zero"`` (0), ``"reflect"`` (mirrored about the edge pixel),
``"symmetric"`` (mirrored, edge pixel repeated), ``"edge"`` (the edge pixel),
``"wrap"`` (periodic), or ``"valid"`` (no padding: the output shrinks by the
kernel size minus one).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from bil.stdlib.errors import StdlibError
from bil.stdlib.functions.common import _ndim_error
from bil.stdlib import rules
from bil.stdlib.registry import register

#: padding= name -> jnp.pad mode (None: no padding)
PADDINGS = {"zero": "constant", "reflect": "reflect", "symmetric": "symmetric", "edge": "edge", "wrap": "wrap",
            "valid": None}


def check_padding(fname, padding):
    if padding not in PADDINGS:
        raise StdlibError(f"{fname}: unknown padding {padding!r}", arg="padding",
                          hint="padding is one of " + ", ".join(f'"{p}"' for p in PADDINGS))
    return PADDINGS[padding]


def correlate(x, k, padding="zero", fname="conv2d"):
    """out[..., f, i, j] = sum_ab xp[..., i + a, j + b] k[f, a, b], xp = x padded by (h-1)//2 before
    and h-1-(h-1)//2 after (rows; columns alike), so a same-size output is centred like "SAME"."""
    mode = check_padding(fname, padding)
    h, w = k.shape[-2:]
    if mode is not None:
        pads = [(0, 0)] * (x.ndim - 2) + [((h - 1) // 2, h - 1 - (h - 1) // 2), ((w - 1) // 2, w - 1 - (w - 1) // 2)]
        if mode in ("reflect", "symmetric") and (x.shape[-2] < h // 2 + 1 or x.shape[-1] < w // 2 + 1):
            raise StdlibError(f"{fname}: a {x.shape[-2]}x{x.shape[-1]} image is too small for {padding} padding "
                              f"of a {h}x{w} kernel", arg="padding", hint='use padding="edge" or "zero"')
        x = jnp.pad(x, pads, mode=mode)
    elif x.shape[-2] < h or x.shape[-1] < w:
        raise StdlibError(f"{fname}: a {x.shape[-2]}x{x.shape[-1]} image is smaller than the {h}x{w} kernel",
                          arg="padding", hint='padding="valid" needs the kernel to fit inside the image')
    lead = x.shape[:-2]
    out = jax.lax.conv_general_dilated(
        x.reshape((-1, 1) + x.shape[-2:]),  # [N, C=1, H, W]
        k[:, None],  # [O=F, I=1, h, w]
        window_strides=(1, 1), padding="VALID")
    return out.reshape(lead + out.shape[1:])


@register("gaussian_blur", static=("size", "padding"), degree=rules.linear)
def gaussian_blur(x, sigma, size=None, padding="reflect"):
    """Blur the last two axes of x by a normalised Gaussian of std `sigma` pixels (size x size, default 2 ceil(3 sigma) + 1)."""
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise _ndim_error("gaussian_blur", "an image [H, W] (or a stack [..., H, W])", x, arg=0)
    if jnp.ndim(sigma) != 0:
        raise _ndim_error("gaussian_blur", "a scalar sigma", sigma, arg=1)
    known = isinstance(sigma, (int, float, np.number))
    if known and not sigma > 0:
        raise StdlibError(f"gaussian_blur: sigma must be > 0, got {sigma}", arg=1,
                          hint="sigma is the blur's standard deviation in pixels, e.g. 1.5")
    if size is None:
        if not known:
            raise StdlibError("gaussian_blur: a learned sigma needs a fixed kernel size", arg=1,
                              hint="give size=, e.g. gaussian_blur(x, sigma, size=9)")
        size = 2 * math.ceil(3 * sigma) + 1
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise StdlibError(f"gaussian_blur: size must be a positive integer, got {size!r}", arg="size")
    dtype = jnp.result_type(x, sigma, float)
    r = jnp.arange(size, dtype=dtype) - (size - 1) / 2
    g = jnp.exp(-0.5 * jnp.square(r / sigma))
    g = g / jnp.sum(g)
    return correlate(x.astype(dtype), jnp.outer(g, g)[None], padding, "gaussian_blur")[..., 0, :, :]


@register("blur", static=("size", "padding"), degree=rules.linear)
def blur(x, sigma, size=None, padding="reflect"):
    """The same as gaussian_blur(x, sigma, size, padding)."""
    return gaussian_blur(x, sigma, size=size, padding=padding)
