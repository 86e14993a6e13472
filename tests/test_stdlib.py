"""Tests of the standard library's array/meta functions and data sources."""

import bil  # noqa: F401  (enables float64 before any array is made)

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import bil.stdlib.functions as F
import bil.stdlib.sources as S
from bil.stdlib.errors import StdlibError
from bil.stdlib.registry import REGISTRY

RNG = np.random.default_rng(0)
A = jnp.asarray(RNG.normal(size=(4, 5)))  # generic point, away from kinks with probability 1
POS = jnp.asarray(RNG.uniform(0.5, 2.0, size=(4, 5)))  # for log, sqrt
IMG = jnp.asarray(RNG.uniform(size=(4, 5)))
LABELS = jnp.asarray([0, 2, 1, 2])


def fn(name):
    return REGISTRY[name].impl


# --------------------------------------------------------------------------
# registration


REQUIRED = """sum mean sumsq norm max min exp log log1p sqrt abs square tanh sigmoid softplus relu
logsumexp softmax cross_entropy logistic_loss huber dx dy tv conv2d zeros ones randn shape rows ncols
nclasses onehot dataset image denoising_pairs load""".split()


def test_required_names_registered_with_docs():
    for name in REQUIRED:
        assert name in REGISTRY, name
    for name in list(REGISTRY):
        entry = REGISTRY[name]
        if entry.impl.__module__ == S.__name__ or entry.impl.__module__.startswith(F.__name__ + "."):
            assert entry.doc and "\n" not in entry.doc, name
    assert {REGISTRY[n].kind for n in ("shape", "rows", "ncols", "nclasses")} == {"meta"}
    assert {REGISTRY[n].kind for n in ("dataset", "image", "denoising_pairs", "load")} == {"source"}
    assert REGISTRY["sum"].static == ("axis", "keepdims")
    assert set(REGISTRY["dataset"].static) == {"name", "split", "seed", "standardize", "corrupt_labels"}


# --------------------------------------------------------------------------
# gradients: (name, function of the differentiated args, args, order)

# Order 2 (Hessian-vector products, as Newton-CG and implicit hypergradients use)
# only for the nonlinear losses; order 1 elsewhere keeps the file fast.
GRAD_CASES = [
    ("sum", lambda x: fn("sum")(x), (A,), 1),
    ("sum axis", lambda x: fn("sum")(x, axis=0), (A,), 1),
    ("mean", lambda x: fn("mean")(x, axis=1, keepdims=True), (A,), 1),
    ("sumsq", lambda x: fn("sumsq")(x), (A,), 1),
    ("norm", lambda x: fn("norm")(x), (A,), 1),
    ("norm axis", lambda x: fn("norm")(x, axis=-1), (A,), 1),
    ("max", lambda x: fn("max")(x), (A,), 1),
    ("min", lambda x: fn("min")(x, axis=(0, 1)), (A,), 1),
    ("logsumexp", lambda x: fn("logsumexp")(x), (A,), 1),
    ("logsumexp axis", lambda x: fn("logsumexp")(x, axis=1), (A,), 1),
    ("l1", lambda x: fn("l1")(x), (A,), 1),
    ("trace", lambda x: fn("trace")(x), (A,), 1),
    ("exp", lambda x: fn("exp")(x), (A,), 1),
    ("log", lambda x: fn("log")(x), (POS,), 1),
    ("log1p", lambda x: fn("log1p")(x), (POS,), 1),
    ("sqrt", lambda x: fn("sqrt")(x), (POS,), 1),
    ("abs", lambda x: fn("abs")(x), (A,), 1),
    ("square", lambda x: fn("square")(x), (A,), 1),
    ("sign", lambda x: fn("sign")(x), (A,), 1),
    ("cos", lambda x: fn("cos")(x), (A,), 1),
    ("sin", lambda x: fn("sin")(x), (A,), 1),
    ("tanh", lambda x: fn("tanh")(x), (A,), 1),
    ("sigmoid", lambda x: fn("sigmoid")(x), (A,), 1),
    ("softplus", lambda x: fn("softplus")(x), (A,), 1),
    ("relu", lambda x: fn("relu")(x), (A,), 1),
    ("smooth_abs", lambda x, e: fn("smooth_abs")(x, e), (A, 0.3), 1),
    ("soft_threshold", lambda x, t: fn("soft_threshold")(x, t), (A, 0.01), 1),
    ("maximum", lambda a, b: fn("maximum")(a, b), (A, POS - 1.0), 1),
    ("minimum", lambda a, b: fn("minimum")(a, b), (A, POS - 1.0), 1),
    ("clip", lambda x: fn("clip")(x, -0.51, 0.49), (A,), 1),
    ("where", lambda a, b: fn("where")(A > 0, a, b), (A, POS), 1),
    ("dot", lambda a, b: fn("dot")(a, b), (A, POS.T), 1),
    ("transpose", lambda x: fn("transpose")(x), (A,), 1),
    ("reshape", lambda x: fn("reshape")(x, 2, -1), (A,), 1),
    ("diag", lambda x: fn("diag")(x), (A[0],), 1),
    ("softmax", lambda x: fn("softmax")(x), (A,), 1),
    ("log_softmax", lambda x: fn("log_softmax")(x, axis=0), (A,), 1),
    ("cross_entropy", lambda z: fn("cross_entropy")(z[:, :3], LABELS), (A,), 2),
    ("cross_entropy probs", lambda z, p: fn("cross_entropy")(z, p), (A, jax.nn.softmax(POS)), 1),
    ("logistic_loss", lambda s: fn("logistic_loss")(s, (A[0] > 0).astype(float)), (A[1],), 2),
    ("huber", lambda r, d: fn("huber")(r, d), (A, 0.77), 1),
    ("mse", lambda a, b: fn("mse")(a, b), (A, POS), 1),
    ("dx", lambda u: fn("dx")(u), (IMG,), 1),
    ("dy", lambda u: fn("dy")(u), (IMG,), 1),
    ("tv", lambda u, e: fn("tv")(u, e), (IMG, 0.1), 2),
    ("conv2d", lambda x, k: fn("conv2d")(x, k), (IMG, jnp.asarray(RNG.normal(size=(2, 3, 2)))), 1),
]


@pytest.mark.parametrize("name,f,args,order", GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
def test_grads(name, f, args, order):
    # jit: one compilation of f instead of one per eager op, which dominates the time
    check_grads(jax.jit(f), args, order=order, modes=("rev",))


def test_norm_at_zero_is_finite():
    z = jnp.zeros(3)
    assert fn("norm")(z) == 0
    assert np.all(np.isfinite(jax.grad(fn("norm"))(z)))


# --------------------------------------------------------------------------
# shapes under jax.eval_shape (how the compiler infers them)


def sds(*shape, dtype=jnp.float64):
    return jax.ShapeDtypeStruct(shape, dtype)


SHAPE_CASES = [
    (lambda x: fn("sum")(x), (sds(4, 5),), ()),
    (lambda x: fn("sum")(x, axis=1, keepdims=True), (sds(4, 5),), (4, 1)),
    (lambda x: fn("norm")(x, axis=0), (sds(4, 5),), (5,)),
    (lambda x: fn("logsumexp")(x, axis=-1), (sds(4, 5),), (4,)),
    (lambda x: fn("softmax")(x), (sds(4, 5),), (4, 5)),
    (lambda z, y: fn("cross_entropy")(z, y), (sds(8, 3), sds(8, dtype=jnp.int64)), ()),
    (lambda s, y: fn("logistic_loss")(s, y), (sds(8), sds(8)), ()),
    (lambda r: fn("huber")(r), (sds(8),), ()),
    (lambda u: fn("dx")(u), (sds(6, 7),), (6, 7)),
    (lambda u: fn("dy")(u), (sds(2, 6, 7),), (2, 6, 7)),
    (lambda u: fn("tv")(u, 0.1), (sds(6, 7),), ()),
    (lambda x, k: fn("conv2d")(x, k), (sds(6, 7), sds(3, 3, 4)), (3, 6, 7)),
    (lambda x, k: fn("conv2d")(x, k), (sds(6, 7), sds(5, 5)), (6, 7)),
    (lambda y: fn("onehot")(y, 4), (sds(8, dtype=jnp.int64),), (8, 4)),
    (lambda a, b: fn("dot")(a, b), (sds(4, 5), sds(5)), (4,)),
    (lambda x: fn("reshape")(x, (5, 4)), (sds(4, 5),), (5, 4)),
    (lambda x: fn("diag")(x), (sds(3),), (3, 3)),
    (lambda: fn("zeros")(2, 3), (), (2, 3)),
    (lambda: fn("ones")((4,)), (), (4,)),
    (lambda: fn("randn")(3, 2, seed=1), (), (3, 2)),
    (lambda: fn("eye")(3), (), (3, 3)),
]


@pytest.mark.parametrize("f,args,expected", SHAPE_CASES)
def test_eval_shape(f, args, expected):
    assert jax.eval_shape(f, *args).shape == expected


def test_broadcast_mismatch_is_a_type_error():
    with pytest.raises(TypeError):
        jax.eval_shape(fn("maximum"), sds(3), sds(4))


# --------------------------------------------------------------------------
# closed-form values


def test_dx_dy_values():
    u = jnp.asarray([[1.0, 2.0, 4.0], [0.0, 5.0, 5.0]])
    np.testing.assert_allclose(fn("dx")(u), [[1, 2, 0], [5, 0, 0]])
    np.testing.assert_allclose(fn("dy")(u), [[-1, 3, 1], [0, 0, 0]])


def test_tv_value():
    u = jnp.asarray([[1.0, 2.0, 4.0], [0.0, 5.0, 5.0]])
    gx = np.array([[1, 2, 0], [5, 0, 0]])
    gy = np.array([[-1, 3, 1], [0, 0, 0]])
    eps = 0.5
    np.testing.assert_allclose(fn("tv")(u, eps), np.sum(np.sqrt(gx**2 + gy**2 + eps**2)))
    # a constant image has only the eps floor
    assert np.isclose(fn("tv")(jnp.ones((4, 4)), 0.1), 16 * 0.1)


def test_cross_entropy_value():
    z = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])
    y = np.array([2, 0])
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    expected = -np.mean(logp[np.arange(2), y])
    np.testing.assert_allclose(fn("cross_entropy")(z, y), expected)
    # one-hot targets give the same value; one sample [K] with a scalar label too
    np.testing.assert_allclose(fn("cross_entropy")(z, fn("onehot")(jnp.asarray(y), 3)), expected)
    np.testing.assert_allclose(fn("cross_entropy")(z[0], 2), -logp[0, 2])
    # stable for huge logits
    assert np.isfinite(fn("cross_entropy")(jnp.asarray([[1e4, -1e4]]), jnp.asarray([1])))


def test_logistic_loss_value():
    s = np.array([2.0, -1.0, 0.3])
    y = np.array([1.0, 0.0, 0.0])
    p = 1 / (1 + np.exp(-s))
    expected = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    np.testing.assert_allclose(fn("logistic_loss")(s, y), expected)
    big = fn("logistic_loss")(jnp.asarray([1e4, -1e4]), jnp.asarray([0.0, 1.0]))
    np.testing.assert_allclose(big, 1e4)


def test_huber_value():
    r = np.array([0.5, -2.0, 3.0])
    np.testing.assert_allclose(fn("huber")(r, 1.0), 0.125 + 1.5 + 2.5)
    np.testing.assert_allclose(fn("huber")(r), 0.125 + 1.5 + 2.5)


def test_conv2d_matches_direct_loop():
    x = RNG.normal(size=(5, 6))
    k = RNG.normal(size=(2, 3, 4))
    F_, h, w = k.shape
    ph, pw = (h - 1) // 2, (w - 1) // 2
    xp = np.pad(x, ((ph, h - 1 - ph), (pw, w - 1 - pw)))
    ref = np.zeros((F_, *x.shape))
    for f in range(F_):
        for i in range(x.shape[0]):
            for j in range(x.shape[1]):
                ref[f, i, j] = np.sum(xp[i : i + h, j : j + w] * k[f])
    np.testing.assert_allclose(fn("conv2d")(x, k), ref, atol=1e-12)
    np.testing.assert_allclose(fn("conv2d")(x, k[1]), ref[1], atol=1e-12)
    # a centred delta kernel is the identity
    delta = np.zeros((1, 3, 3))
    delta[0, 1, 1] = 1
    np.testing.assert_allclose(fn("conv2d")(x, delta)[0], x)


def test_misc_values():
    x = jnp.asarray([-2.0, 0.5, 3.0])
    np.testing.assert_allclose(fn("soft_threshold")(x, 1.0), [-1, 0, 2])
    np.testing.assert_allclose(fn("smooth_abs")(jnp.asarray([3.0]), 4.0), [5.0])
    np.testing.assert_allclose(fn("l1")(x), 5.5)
    np.testing.assert_allclose(fn("mse")(x, 0.0), np.mean(np.asarray(x) ** 2))
    np.testing.assert_allclose(fn("norm")(jnp.asarray([3.0, 4.0])), 5.0)
    np.testing.assert_allclose(fn("logsumexp")(jnp.asarray([1000.0, 1000.0])), 1000 + np.log(2))
    np.testing.assert_allclose(fn("onehot")(jnp.asarray([1, 0]), 3), [[0, 1, 0], [1, 0, 0]])
    assert fn("zeros")(2, 3).dtype == jnp.float64
    np.testing.assert_array_equal(fn("randn")(4, seed=3), fn("randn")((4,), seed=3))
    assert not np.allclose(fn("randn")(4, seed=3), fn("randn")(4, seed=4))


def test_meta_functions():
    X = np.zeros((7, 3))
    assert F.shape(X) == (7, 3) and all(type(d) is int for d in F.shape(X))
    assert F.rows(X) == 7 and F.ncols(X) == 3
    assert F.shape(sds(2, 5)) == (2, 5)
    assert F.nclasses(np.array([0, 2, 1])) == 3
    assert F.nclasses(np.array([0.0, 3.0])) == 4
    assert type(F.nclasses(jnp.asarray([1, 4]))) is int


# --------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    "call,arg",
    [
        (lambda: fn("dx")(jnp.ones(3)), 0),
        (lambda: fn("dy")(jnp.ones(3)), 0),
        (lambda: fn("tv")(jnp.ones(3), 0.1), 0),
        (lambda: fn("conv2d")(jnp.ones((2, 4, 4)), jnp.ones((1, 3, 3))), 0),
        (lambda: fn("conv2d")(jnp.ones((4, 4)), jnp.ones(3)), 1),
        (lambda: fn("onehot")(jnp.asarray([0.0, 1.0]), 2), 0),
        (lambda: fn("cross_entropy")(jnp.ones((4, 3)), jnp.ones(5, dtype=int)), 1),
        (lambda: fn("logistic_loss")(jnp.ones((4, 1)), jnp.ones(4)), 1),
        (lambda: fn("sum")(jnp.ones(3), axis=1), "axis"),
        (lambda: fn("zeros")(2, 1.5), 1),
        (lambda: fn("reshape")(jnp.ones(6), 4, 2), None),
        (lambda: F.ncols(np.ones(3)), 0),
        (lambda: F.nclasses(np.array([0.5, 1.0])), 0),
        (lambda: jax.eval_shape(F.nclasses, sds(3)), 0),
    ],
)
def test_bad_input_raises_stdlib_error(call, arg):
    with pytest.raises(StdlibError) as e:
        call()
    assert e.value.message and e.value.arg == arg


def test_ncols_error_has_hint():
    with pytest.raises(StdlibError, match="ncols") as e:
        F.ncols(np.ones(3))
    assert "rows" in e.value.hint


# --------------------------------------------------------------------------
# data sources


@pytest.mark.parametrize(
    "name,nfeat,classification",
    [("diabetes", 10, False), ("breast_cancer", 30, True), ("digits", 64, True), ("iris", 4, True), ("wine", 13, True)],
)
def test_dataset_shapes_and_dtypes(name, nfeat, classification):
    X, y = S.dataset(name)
    assert X.dtype == np.float64 and X.shape[1] == nfeat and y.shape == (X.shape[0],)
    if classification:
        assert y.dtype == np.int64 and y.min() == 0 and set(np.unique(y)) == set(range(y.max() + 1))
    else:
        assert y.dtype == np.float64


def test_dataset_split_is_seeded_and_partitions():
    X, y = S.dataset("diabetes")
    Xtr, ytr, Xva, yva = S.dataset("diabetes", split=0.5, seed=0)
    assert Xtr.shape == (221, 10) and Xva.shape == (221, 10)
    again = S.dataset("diabetes", split=0.5, seed=0)
    other = S.dataset("diabetes", split=0.5, seed=1)
    np.testing.assert_array_equal(again[0], Xtr)
    assert not np.array_equal(other[0], Xtr)
    # the two parts are a permutation of the whole dataset
    both = np.sort(np.concatenate([ytr, yva]))
    np.testing.assert_array_equal(both, np.sort(y))
    assert S.dataset("iris", split=0.8)[0].shape == (120, 4)


def test_dataset_standardize_uses_training_statistics():
    Xtr, ytr, Xva, yva = S.dataset("diabetes", split=0.5, seed=0, standardize=True)
    np.testing.assert_allclose(Xtr.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(Xtr.std(0), 1)
    np.testing.assert_allclose([ytr.mean(), ytr.std()], [0, 1], atol=1e-12)
    assert abs(Xva.mean()) > 1e-8  # validation uses the training statistics, not its own
    raw = S.dataset("diabetes", split=0.5, seed=0)
    mu, sd = raw[0].mean(0), raw[0].std(0)
    np.testing.assert_allclose(Xva, (raw[2] - mu) / sd)
    # digits has constant pixels: they stay finite (std guarded to 1); labels untouched
    Xtr, ytr, _, _ = S.dataset("digits", split=0.5, seed=0, standardize=True)
    assert np.all(np.isfinite(Xtr)) and ytr.dtype == np.int64
    X, y = S.dataset("breast_cancer", standardize=True)
    np.testing.assert_allclose(X.mean(0), 0, atol=1e-10)


def test_dataset_errors():
    with pytest.raises(StdlibError) as e:
        S.dataset("diabetis")
    assert "diabetes" in e.value.hint and e.value.arg == "name"
    for bad in (0.0, 1.0, 1.5, -0.2, "half"):
        with pytest.raises(StdlibError):
            S.dataset("iris", split=bad)


def _recipe(name, seed, ntr, nval=None, corrupt=0.0):
    """The split documented in docs/LANGUAGE.md, written with scikit-learn and NumPy only."""
    import sklearn.datasets

    X, y = getattr(sklearn.datasets, f"load_{name}")(return_X_y=True)
    if np.issubdtype(y.dtype, np.integer):
        y = np.unique(y, return_inverse=True)[1]
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(X))
    cuts = [0, ntr] + ([ntr + nval] if nval is not None else []) + [len(X)]
    parts = [(X[perm[a:b]], y[perm[a:b]].copy()) for a, b in zip(cuts, cuts[1:])]
    if corrupt:
        k = y.max() + 1
        m = round(corrupt * ntr)
        pick = rng.choice(ntr, m, replace=False)
        parts[0][1][pick] = (parts[0][1][pick] + rng.integers(1, k, m)) % k
    return [a for pair in parts for a in pair]


@pytest.mark.parametrize("name", ["diabetes", "breast_cancer", "digits", "iris", "wine", "linnerud"])
def test_dataset_matches_documented_recipe(name):
    n = len(S.dataset(name)[0])
    ntr, nval = round(0.6 * n), round(0.2 * n)
    two = S.dataset(name, split=0.6, seed=3)
    for got, want in zip(two, _recipe(name, 3, ntr), strict=True):
        np.testing.assert_array_equal(got, want)
    three = S.dataset(name, split=(0.6, 0.2), seed=3)
    assert len(three) == 6 and [len(a) for a in three[::2]] == [ntr, nval, n - ntr - nval]
    for got, want in zip(three, _recipe(name, 3, ntr, nval), strict=True):
        np.testing.assert_array_equal(got, want)
    # the three-way split's training part is the two-way split's (same permutation)
    np.testing.assert_array_equal(three[0], two[0])


def test_dataset_three_way_split_counts_and_standardize():
    Xtr, ytr, Xva, yva, Xte, yte = S.dataset("diabetes", split=(200, 100), seed=0, standardize=True)
    assert (len(Xtr), len(Xva), len(Xte)) == (200, 100, 142)
    np.testing.assert_allclose(Xtr.mean(0), 0, atol=1e-12)
    raw = S.dataset("diabetes", split=(200, 100), seed=0)
    mu, sd = raw[0].mean(0), raw[0].std(0)
    np.testing.assert_allclose(Xte, (raw[4] - mu) / sd)   # test standardized with training statistics
    np.testing.assert_allclose(yte, (raw[5] - raw[1].mean()) / raw[1].std())


def test_dataset_corrupt_labels():
    clean = S.dataset("digits", split=0.5, seed=2)
    bad = S.dataset("digits", split=0.5, seed=2, corrupt_labels=0.3)
    flipped = bad[1] != clean[1]
    assert flipped.sum() == round(0.3 * len(clean[1]))       # exactly that many, each to another class
    assert bad[1].min() >= 0 and bad[1].max() <= 9
    for got, want in zip(bad[::2] + bad[3:4], clean[::2] + clean[3:4]):   # X and the validation labels
        np.testing.assert_array_equal(got, want)
    again = S.dataset("digits", split=0.5, seed=2, corrupt_labels=0.3)
    np.testing.assert_array_equal(again[1], bad[1])
    n = len(S.dataset("digits")[0])
    for got, want in zip(bad, _recipe("digits", 2, round(0.5 * n), corrupt=0.3), strict=True):
        np.testing.assert_array_equal(got, want)
    # no split: the whole set is the training set
    X, y = S.dataset("iris", corrupt_labels=0.5)
    assert (y != S.dataset("iris")[1]).sum() == 75


def test_dataset_split_and_corrupt_errors():
    for bad in ((0.6, 0.4), (0.5,) * 3, (0.5, "x"), (0.0, 0.2)):
        with pytest.raises(StdlibError) as e:
            S.dataset("iris", split=bad)
        assert e.value.arg == "split"
    for bad in (-0.1, 1.5, True, "x"):
        with pytest.raises(StdlibError) as e:
            S.dataset("iris", corrupt_labels=bad)
        assert e.value.arg == "corrupt_labels"
    with pytest.raises(StdlibError, match="class labels"):
        S.dataset("diabetes", split=0.5, corrupt_labels=0.1)


def test_image():
    cam = S.image("camera")
    assert cam.shape == (512, 512) and cam.dtype == np.float64
    assert 0 <= cam.min() and cam.max() <= 1
    small = S.image("astronaut", size=32)  # rgb -> gray
    assert small.shape == (32, 32) and small.dtype == np.float64 and 0 <= small.min() <= small.max() <= 1
    assert S.image("coins", size=(20, 30)).shape == (20, 30)


@pytest.mark.parametrize("name", S._IMAGES)
def test_every_listed_image_loads(name):
    img = S._gray(name)
    assert img.ndim == 2 and img.dtype == np.float64 and 0 <= img.min() <= img.max() <= 1


def test_image_unknown_name_hint():
    with pytest.raises(StdlibError) as e:
        S.image("camra")
    assert "camera" in e.value.hint and "moon" in e.value.hint
    with pytest.raises(StdlibError):
        S.image("camera", size=0)


def test_denoising_pairs():
    clean, noisy = S.denoising_pairs(["camera", "moon", "coins"], size=16, sigma=0.1, seed=0)
    assert clean.shape == noisy.shape == (3, 16, 16)
    assert clean.dtype == noisy.dtype == np.float64
    np.testing.assert_allclose(clean[0], S.image("camera", size=16))
    assert 0.08 < np.std(noisy - clean) < 0.12
    again = S.denoising_pairs(["camera", "moon", "coins"], size=16, sigma=0.1, seed=0)[1]
    np.testing.assert_array_equal(again, noisy)
    assert not np.array_equal(S.denoising_pairs(["camera", "moon", "coins"], size=16, seed=1)[1], noisy)
    single = S.denoising_pairs("camera", size=8)
    assert single[0].shape == (1, 8, 8)
    with pytest.raises(StdlibError) as e:
        S.denoising_pairs(["camera", "coins"])  # different native shapes
    assert "size" in e.value.hint
    with pytest.raises(StdlibError):
        S.denoising_pairs(["camera", "mon"], size=8)


def test_load_npz_npy_csv(tmp_path):
    a, b = np.arange(6.0).reshape(2, 3), np.arange(4)
    np.savez(tmp_path / "two.npz", a=a, b=b)
    np.savez(tmp_path / "one.npz", only=a)
    np.save(tmp_path / "x.npy", a.astype(np.float32))
    (tmp_path / "h.csv").write_text("x1,x2,y\n1,2,0\n3,4,1\n5,6,1\n")
    (tmp_path / "n.csv").write_text("1.5,2\n3,4\n")
    (tmp_path / "col.csv").write_text("1\n2\n3\n")

    np.testing.assert_array_equal(S.load(str(tmp_path / "two.npz"), "a"), a)
    labels = S.load(str(tmp_path / "two.npz"), key="b")
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(S.load(str(tmp_path / "one.npz")), a)
    x = S.load(str(tmp_path / "x.npy"))
    assert x.dtype == np.float64 and x.shape == (2, 3)
    h = S.load(str(tmp_path / "h.csv"))
    np.testing.assert_array_equal(h, [[1, 2, 0], [3, 4, 1], [5, 6, 1]])
    np.testing.assert_array_equal(S.load(str(tmp_path / "h.csv"), "y"), [0, 1, 1])
    np.testing.assert_array_equal(S.load(str(tmp_path / "n.csv")), [[1.5, 2], [3, 4]])
    np.testing.assert_array_equal(S.load(str(tmp_path / "col.csv")), [1, 2, 3])


def test_load_relative_to_base_dir(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "v.npy", np.ones(3))
    monkeypatch.chdir("/")
    token = S.base_dir.set(tmp_path)
    try:
        np.testing.assert_array_equal(S.load("data/v.npy"), np.ones(3))
    finally:
        S.base_dir.reset(token)
    with pytest.raises(StdlibError):  # now relative to the working directory "/"
        S.load("data/v.npy")


def test_load_errors(tmp_path):
    np.savez(tmp_path / "two.npz", a=np.ones(2), b=np.zeros(2))
    token = S.base_dir.set(str(tmp_path))
    try:
        with pytest.raises(StdlibError) as e:
            S.load("missing.npz")
        assert str(tmp_path / "missing.npz") in e.value.message and e.value.hint and e.value.arg == "path"
        with pytest.raises(StdlibError) as e:
            S.load("two.npz")
        assert "a" in e.value.hint and "b" in e.value.hint and e.value.arg == "key"
        with pytest.raises(StdlibError) as e:
            S.load("two.npz", "c")
        assert "a, b" in e.value.hint
        (tmp_path / "x.json").write_text("{}")
        with pytest.raises(StdlibError):
            S.load("x.json")
    finally:
        S.base_dir.reset(token)
