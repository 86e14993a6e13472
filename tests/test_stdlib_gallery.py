"""The standard-library functions the gallery needs (issue 17): gradients, values, shapes, errors."""

import bil  # noqa: F401  (enables float64 before any array is made)

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from bil.stdlib.errors import StdlibError
from bil.stdlib.registry import REGISTRY, names

names()  # loads every stdlib module

RNG = np.random.default_rng(1)
A = jnp.asarray(RNG.normal(size=(4, 5)))
B = jnp.asarray(RNG.normal(size=(3, 5)))
IMG = jnp.asarray(RNG.uniform(size=(7, 6)))
K = jnp.asarray(RNG.normal(size=(2, 3, 3)))
SPD = jnp.asarray(RNG.normal(size=(4, 4)))
SPD = SPD @ SPD.T + 4 * jnp.eye(4)

NEW = "charbonnier log_cosh pnorm rbf_kernel sq_dists accuracy psnr gaussian_blur blur concat stack outer logdet tasks"


def fn(name):
    return REGISTRY[name].impl


def test_registered_once_with_one_line_docs():
    for name in NEW.split():
        assert name in REGISTRY and REGISTRY[name].doc and "\n" not in REGISTRY[name].doc, name
    assert REGISTRY["conv2d"].static == ("padding",)
    assert REGISTRY["tasks"].kind == "source"


# One jitted check per module (each case compiled on its own cost ~1 s apiece on the CI's 2 cores);
# order 2 (Hessian-vector products, as implicit hypergradients use) for the smooth penalties and kernels.
GRAD_GROUPS = {
    "robust": (lambda x, e, p: (fn("charbonnier")(x, e), fn("charbonnier")(x, 0.1, axis=1), fn("log_cosh")(x),
                                fn("log_cosh")(30 * x, axis=(0,)), fn("pnorm")(x, p), fn("pnorm")(x, 3, axis=0)),
               (A, 0.3, 1.7), 2),
    "kernels": (lambda x, z, g: (fn("sq_dists")(x, z), fn("rbf_kernel")(x, z, g)), (A, B, 0.4), 2),
    "imaging": (lambda x, k, s: (fn("gaussian_blur")(x, s, size=5), fn("conv2d")(x, k, padding="reflect"),
                                 fn("conv2d")(x, k, padding="valid"), fn("psnr")(x, 0.5 + 0 * x)), (IMG, K, 1.2), 1),
    "arrays": (lambda a, b, m: (fn("concat")(a, b, axis=0), fn("stack")(a, 2 * a, axis=1), fn("outer")(a[0], b[1]),
                                fn("logdet")(m), fn("accuracy")(a, jnp.asarray([0, 1, 2, 1]))), (A, B, SPD), 1),
}


@pytest.mark.parametrize("group", sorted(GRAD_GROUPS))
def test_grads(group):
    f, args, order = GRAD_GROUPS[group]
    check_grads(jax.jit(f), args, order=order, modes=("rev",))


def test_values():
    x = jnp.asarray([0.0, 3.0, -4.0])
    assert np.isclose(fn("charbonnier")(x, 1e-3), 7.0, atol=1e-2)
    assert np.isclose(fn("log_cosh")(x), np.sum(np.log(np.cosh(np.asarray(x)))))
    assert fn("log_cosh")(jnp.asarray([1e4])) == pytest.approx(1e4 - np.log(2))       # no overflow
    assert np.isclose(fn("pnorm")(x, 2), 5.0) and np.isclose(fn("pnorm")(x, 1), 7.0)
    g = jax.grad(lambda v, p: fn("pnorm")(v, p), argnums=(0, 1))(jnp.zeros(3), 1.5)
    assert all(np.all(np.isfinite(a)) for a in g)                                       # 0 is no NaN
    D = np.sum((np.asarray(A)[:, None] - np.asarray(B)[None]) ** 2, -1)
    assert np.allclose(fn("sq_dists")(A, B), D) and np.allclose(fn("rbf_kernel")(A, B, 0.3), np.exp(-0.3 * D))
    assert np.allclose(np.diag(fn("sq_dists")(A)), 0)
    assert fn("accuracy")(jnp.asarray([[2.0, 1.0], [0.0, 1.0], [3.0, 0.0]]), jnp.asarray([0, 1, 1])) == 2 / 3
    assert fn("accuracy")(jnp.asarray([0.5, -1.0]), jnp.asarray([1, 1])) == 0.5
    assert np.isclose(fn("psnr")(jnp.full((2, 2), 0.1), jnp.zeros((2, 2))), 20.0)
    assert np.isclose(fn("logdet")(SPD), np.linalg.slogdet(np.asarray(SPD))[1])
    assert np.isnan(fn("logdet")(-jnp.eye(3)))
    assert fn("concat")(A, B).shape == (7, 5) and fn("stack")(A, A, axis=-1).shape == (4, 5, 2)
    assert np.allclose(fn("outer")(A[0], B[0]), np.outer(A[0], B[0]))


def test_blur_matches_scipy_and_keeps_constants():
    import scipy.ndimage as nd
    img = np.asarray(RNG.uniform(size=(12, 10)))
    got = fn("gaussian_blur")(jnp.asarray(img), 1.0)           # size 2*ceil(3)+1 = 7, reflect
    want = nd.gaussian_filter(img, 1.0, mode="mirror", truncate=3.0)
    # scipy samples the same Gaussian at the same 7 taps and normalises: equal up to roundoff
    assert np.allclose(got, want, atol=1e-12)
    assert np.allclose(fn("blur")(jnp.ones((2, 9, 9)), 1.0), 1.0)   # a stack; constants stay
    assert fn("gaussian_blur")(jnp.ones((9, 9)), 1.0, padding="zero")[0, 0] < 1


@pytest.mark.parametrize("padding,mode", [("reflect", "reflect"), ("symmetric", "symmetric"),
                                          ("edge", "edge"), ("wrap", "wrap"), ("zero", "constant")])
def test_conv2d_padding_matches_pad_then_loop(padding, mode):
    x, k = np.asarray(IMG), np.asarray(K[0, :, :2])
    xp = np.pad(x, [(1, 1), (0, 1)], mode=mode)
    want = np.array([[np.sum(xp[i:i + 3, j:j + 2] * k) for j in range(6)] for i in range(7)])
    assert np.allclose(fn("conv2d")(jnp.asarray(x), jnp.asarray(k), padding=padding), want)
    assert fn("conv2d")(jnp.asarray(x), jnp.asarray(k), padding="valid").shape == (5, 5)


@pytest.mark.parametrize("call,arg", [
    (lambda: fn("charbonnier")(A, 0.0), "eps"),
    (lambda: fn("pnorm")(A, 0.5), "p"),
    (lambda: fn("rbf_kernel")(A, A[:, :3], 1.0), 1),
    (lambda: fn("rbf_kernel")(A[0], A, 1.0), 0),
    (lambda: fn("rbf_kernel")(A, B, jnp.ones(2)), 2),
    (lambda: fn("accuracy")(A, jnp.zeros(5, dtype=int)), 1),
    (lambda: fn("psnr")(A, B), 1),
    (lambda: fn("gaussian_blur")(A[0], 1.0), 0),
    (lambda: fn("gaussian_blur")(A, -1.0), 1),
    (lambda: fn("gaussian_blur")(A, 1.0, padding="mirror"), "padding"),
    (lambda: fn("conv2d")(IMG, jnp.ones((1, 9, 9)), padding="valid"), "padding"),
    (lambda: fn("concat")(A), None),
    (lambda: fn("concat")(A, B[:, :2]), 1),
    (lambda: fn("stack")(A, B), 1),
    (lambda: fn("stack")(A, A, axis=3), "axis"),
    (lambda: fn("outer")(A, B), 0),
    (lambda: fn("logdet")(A), 0),
    (lambda: fn("tasks")(0, 3), "n"),
    (lambda: fn("tasks")(3, 3, noise=-1), "noise"),
])
def test_bad_input_is_located(call, arg):
    with pytest.raises(StdlibError) as e:
        call()
    assert e.value.message and e.value.arg == arg


def test_tasks_family_and_seed():
    Xs, ys, Xq, yq = fn("tasks")(6, 4, shots=5, queries=7, noise=0.0, seed=1)
    assert Xs.shape == (6, 5, 4) and ys.shape == (6, 5) and Xq.shape == (6, 7, 4) and yq.shape == (6, 7)
    # noise 0: each task's points lie on one linear function, shots and queries alike
    W = np.stack([np.linalg.lstsq(np.concatenate([Xs[t], Xq[t]]), np.concatenate([ys[t], yq[t]]), rcond=None)[0]
                  for t in range(6)])
    assert np.allclose(np.concatenate([Xq[t] @ W[t] for t in range(6)]), yq.ravel())
    again = fn("tasks")(6, 4, shots=5, queries=7, noise=0.0, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip((Xs, ys, Xq, yq), again))
    other = fn("tasks")(6, 4, shots=5, queries=7, noise=0.0, seed=2)
    assert not np.array_equal(other[0], Xs)
    # spread 0: every task of a family is the family's mean weights, whatever the seed
    for seed in (3, 4):
        X, y, _, _ = fn("tasks")(2, 4, shots=6, spread=0.0, noise=0.0, family=5, seed=seed)
        w = np.linalg.lstsq(X[0], y[0], rcond=None)[0]
        assert np.allclose(w, np.random.default_rng(5).standard_normal(4))


SPEC_ERRORS = [
    ("data X = randn(5, 3)\ndata Z = randn(4, 2)\nhyper g : positive = 1\nlower { w = zeros(4)\n"
     "minimize sumsq(rbf_kernel(X, Z, g) @ w) + sumsq(w) }\nupper minimize sumsq(w)", 5, 30, "does not match"),
    ("data x = randn(8, 8)\nhyper s : positive = 1\nlower { u = zeros(8, 8)\n"
     "minimize sumsq(gaussian_blur(u, s) - x) }\nupper minimize sumsq(u)", 4, 33, "fixed kernel size"),
    ("data a = randn(3)\ndata b = randn(2, 2)\nhyper t = 1\nlower { u = zeros(3)\n"
     "minimize sumsq(concat(a, b) - t) + sumsq(u) }\nupper minimize sumsq(u)", 5, 16, "same number"),
    ("data x = randn(8, 8)\nhyper t = 1\nlower { u = zeros(8, 8)\n"
     "minimize sumsq(conv2d(u, ones(3, 3), padding=\"mirror\") - x) }\nupper minimize sumsq(u) + t", 4, 46,
     "unknown padding"),
]


@pytest.mark.parametrize("src,line,col,msg", SPEC_ERRORS, ids=["rbf", "blur", "concat", "padding"])
def test_spec_errors_are_located(src, line, col, msg):
    with pytest.raises(bil.BilError) as e:
        bil.compile(src)
    assert msg in e.value.message and (e.value.line, e.value.column) == (line, col), str(e.value)


def test_tasks_matches_documented_recipe():
    """docs/LANGUAGE.md, Tasks: the NumPy recipe, written out."""
    n, dim, shots, queries, spread, noise, family, seed = 3, 4, 2, 5, 0.7, 0.2, 9, 4
    wbar = np.random.default_rng(family).standard_normal(dim)
    rng = np.random.default_rng(seed)
    w = wbar + spread * rng.standard_normal((n, dim))
    X = rng.standard_normal((n, shots + queries, dim))
    y = np.einsum("tpd,td->tp", X, w) + noise * rng.standard_normal((n, shots + queries))
    got = fn("tasks")(n, dim, shots=shots, queries=queries, spread=spread, noise=noise, family=family, seed=seed)
    for a, b in zip(got, (X[:, :shots], y[:, :shots], X[:, shots:], y[:, shots:])):
        assert np.array_equal(a, b)


def test_dataset_linnerud_three_way_split_standardizes_its_three_targets():
    """The one dataset with a matrix target: split in three, y standardized per column on train."""
    import bil.stdlib.sources as S

    Xtr, ytr, Xva, yva, Xte, yte = S.dataset("linnerud", split=(0.5, 0.25), seed=0, standardize=True)
    assert [a.shape for a in (Xtr, ytr, Xva, yva, Xte, yte)] == [(10, 3)] * 2 + [(5, 3)] * 4
    assert np.allclose(ytr.mean(axis=0), 0) and np.allclose(ytr.std(axis=0), 1)
    with pytest.raises(StdlibError, match="class labels"):
        S.dataset("linnerud", corrupt_labels=0.2)
