"""Independent baselines for the specs in tests/problems/ (issue 13).

Each ``F_<problem>(hypers)`` is the true upper objective at a lower problem
solved accurately here, without bil's solvers: closed forms with NumPy,
scikit-learn, or SciPy's L-BFGS-B to a gradient norm of 1e-10 (gradients from
``jax.grad`` of a hand-written objective where writing them out by hand would
only add risk).  Only the data is read through bil's data sources, so both
sides see the same arrays.  ``grid_<problem>()`` returns the best value of a
grid search over the hypers and the hypers it was found at.
"""

from __future__ import annotations

import functools
import itertools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
from scipy.ndimage import correlate

from bil.stdlib import sources

PROBLEMS = Path(__file__).parent / "problems"


@functools.lru_cache(maxsize=None)
def _value_and_grad(obj):
    return jax.jit(jax.value_and_grad(obj))


def argmin(obj, x0, *args, gtol=1e-10):
    """Minimise obj(x, *args) (a module-level JAX function, compiled once) over x from x0
    with SciPy L-BFGS-B."""
    shape = np.shape(x0)
    vg = _value_and_grad(obj)

    def fun(v):
        f, g = vg(jnp.asarray(v).reshape(shape), *args)
        return float(f), np.ravel(np.asarray(g, dtype=np.float64))

    r = scipy.optimize.minimize(fun, np.ravel(x0).astype(np.float64), jac=True, method="L-BFGS-B",
                                options=dict(gtol=gtol, ftol=0.0, maxiter=50_000, maxcor=30))
    return r.x.reshape(shape)


def best(values):
    """(best value, its hypers) of an iterable of (value, hypers)."""
    return min(values, key=lambda t: t[0])


# (1) TV deblurring ----------------------------------------------------------

def deblur_data():
    clean = sources.image("camera", size=32)
    t = np.arange(-2, 3)
    g = np.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / 2)
    kernel = g / g.sum()
    observed = correlate(clean, kernel, mode="constant") + 0.02 * np.random.default_rng(1).standard_normal((32, 32))
    return clean, kernel, observed


def _tv(u, eps):
    dx = jnp.concatenate([u[:, 1:] - u[:, :-1], jnp.zeros((u.shape[0], 1))], axis=1)
    dy = jnp.concatenate([u[1:, :] - u[:-1, :], jnp.zeros((1, u.shape[1]))], axis=0)
    return jnp.sum(jnp.sqrt(dx**2 + dy**2 + eps**2))


def _blur(u, kernel):
    # same-size correlation with zero padding (scipy.ndimage.correlate, mode="constant")
    return jax.scipy.signal.correlate2d(u, kernel, mode="same")


def _g_deblur(u, kernel, observed, alpha, nu):
    return 0.5 * jnp.sum((_blur(u, kernel) - observed) ** 2) + alpha * _tv(u, nu)


def F_deblur(alpha, nu, data=None):
    clean, kernel, observed = data or deblur_data()
    x = argmin(_g_deblur, observed, kernel, observed, alpha, nu)
    return 0.5 * float(np.sum((x - clean) ** 2))


def grid_deblur():
    data = deblur_data()
    return best((F_deblur(a, n, data), (a, n)) for a in np.geomspace(1e-3, 2e-2, 5)
                for n in np.geomspace(1e-2, 1e-1, 3))


# (2) RBF kernel ridge -------------------------------------------------------

def kernel_data():
    Xtr, ytr, Xval, yval = sources.dataset("diabetes", split=0.3, seed=0, standardize=True)
    sq = lambda A, B: (A**2).sum(1)[:, None] + (B**2).sum(1)[None, :] - 2 * A @ B.T
    return sq(Xtr, Xtr), ytr, sq(Xval, Xtr), yval


def F_kernel(gamma, lam, data=None):
    Dtr, ytr, Dval, yval = data or kernel_data()
    a = np.linalg.solve(np.exp(-gamma * Dtr) + lam * np.eye(len(ytr)), ytr)
    return 0.5 * float(np.mean((np.exp(-gamma * Dval) @ a - yval) ** 2))


def grid_kernel():
    data = kernel_data()
    return best((F_kernel(g, l, data), (g, l)) for g in np.geomspace(1e-3, 1.0, 16)
                for l in np.geomspace(1e-3, 1e2, 16))


# (3) hyper-data-cleaning ----------------------------------------------------

def cleaning_data():
    Xtr, ytr, Xval, yval = sources.dataset("breast_cancer", split=0.5, seed=0, standardize=True)
    flip = 0.5 + 0.5 * np.sign(np.random.default_rng(3).standard_normal(len(ytr)) - 0.5)
    return Xtr, ytr + flip * (1 - 2 * ytr), Xval, yval, flip


def _g_cleaning(w, X, y, c):
    return jnp.mean(c * (jax.nn.softplus(X @ w) - y * (X @ w))) + 0.05 * jnp.sum(w**2)


def F_cleaning(c, data=None):
    Xtr, ynoisy, Xval, yval, _ = data or cleaning_data()
    w = argmin(_g_cleaning, np.zeros(Xtr.shape[1]), Xtr, ynoisy, c)
    s = Xval @ w
    return float(np.mean(np.logaddexp(0, s) - yval * s))


def grid_cleaning():
    """Uniform weights c (one shared value, the spec's starting point is c = 0.5)."""
    data = cleaning_data()
    return best((F_cleaning(np.full(len(data[1]), c), data), c) for c in np.linspace(0.05, 1.0, 20))


# (4) few-shot biased ridge --------------------------------------------------

def fewshot_data():
    z = np.load(PROBLEMS / "fewshot.npz")
    return tuple(z[k].astype(np.float64) for k in ("Xtr", "ytr", "Xval", "yval"))


def F_fewshot(w0, lam, data=None):
    Xtr, ytr, Xval, yval = data or fewshot_data()
    d = Xtr.shape[2]
    W = [np.linalg.solve(X.T @ X + lam * np.eye(d), X.T @ y + lam * w0) for X, y in zip(Xtr, ytr)]
    return float(np.mean([0.5 * np.mean((Xv @ w - yv) ** 2) for Xv, yv, w in zip(Xval, yval, W)]))


def best_w0(lam, data):
    """The exact best bias w0 for a given lam: the validation residuals are affine in w0."""
    Xtr, ytr, Xval, yval = data
    d = Xtr.shape[2]
    A, b = [], []
    for X, y, Xv, yv in zip(Xtr, ytr, Xval, yval):
        Minv = np.linalg.inv(X.T @ X + lam * np.eye(d))
        A.append(lam * Xv @ Minv)
        b.append(yv - Xv @ Minv @ X.T @ y)
    return np.linalg.lstsq(np.vstack(A), np.concatenate(b), rcond=None)[0]


def grid_fewshot():
    """For each lam of a 60-point grid, w0 at its exact optimum (least squares)."""
    data = fewshot_data()
    return best((F_fewshot(best_w0(l, data), l, data), l) for l in np.geomspace(1e-2, 1e2, 60))


# (5) dataset distillation ---------------------------------------------------

def _g_distill(W, S):
    return -jnp.mean(jnp.sum(jnp.eye(10) * jax.nn.log_softmax(S @ W), axis=1)) + 0.005 * jnp.sum(W**2)


def F_distill(S, data=None):
    X, y = data or sources.dataset("digits", standardize=True)
    W = argmin(_g_distill, np.zeros((S.shape[1], 10)), S)
    return float(-np.mean(jax.nn.log_softmax(X @ W)[np.arange(len(y)), y]))


def grid_distill(draws=10):
    """Class means, and the best of `draws` random picks of one real image per class."""
    X, y = data = sources.dataset("digits", standardize=True)
    means = np.stack([X[y == k].mean(0) for k in range(10)])
    rng = np.random.default_rng(0)
    picks = [np.stack([X[rng.choice(np.flatnonzero(y == k))] for k in range(10)]) for _ in range(draws)]
    return best((F_distill(S, data), name) for S, name in [(means, "class means")]
                + [(p, f"random pick {i}") for i, p in enumerate(picks)])


# (6) field of experts -------------------------------------------------------

def foe_data():
    return sources.denoising_pairs(["camera", "coins"], size=32, sigma=0.1, seed=0)


def _g_foe(x, n, K, alpha):
    r = jnp.stack([jax.scipy.signal.correlate2d(x, k, mode="same") for k in K])
    return 0.5 * jnp.sum((x - n) ** 2) + jnp.sum(alpha * jnp.sum(jnp.log1p(r**2), axis=(1, 2)))


def F_foe(K, alpha, data=None):
    clean, noisy = data or foe_data()
    total = 0.0
    for c, n in zip(clean, noisy):
        total += 0.5 * float(np.sum((argmin(_g_foe, n, n, K, alpha) - c) ** 2))
    return total / len(clean)


def grid_foe():
    """The spec's initial filters with one shared weight on a grid (0 = the noisy images)."""
    K0 = 0.3 * np.random.default_rng(2).standard_normal((3, 3, 3))
    data = foe_data()
    return best((F_foe(K0, np.full(3, a), data), a) for a in [0.0, *np.geomspace(1e-3, 1.0, 10)])


# (7) per-group elastic net --------------------------------------------------

def enet_data():
    return sources.dataset("diabetes", split=0.5, seed=0, standardize=True)


def F_enet(l1w, l2w, data=None):
    """Proximal gradient (ISTA) to a fixed point, per-coordinate weights from the groups."""
    Xtr, ytr, Xval, yval = data or enet_data()
    n = len(ytr)
    a1, a2 = np.repeat(l1w, 2), np.repeat(l2w, 2)
    L = np.linalg.eigvalsh(Xtr.T @ Xtr / n).max() + a2.max()
    w = np.zeros(Xtr.shape[1])
    for _ in range(100_000):
        grad = Xtr.T @ (Xtr @ w - ytr) / n + a2 * w
        v = w - grad / L
        w_new = np.sign(v) * np.maximum(np.abs(v) - a1 / L, 0)
        if np.max(np.abs(w_new - w)) < 1e-13:
            break
        w = w_new
    return 0.5 * float(np.mean((Xval @ w_new - yval) ** 2))


def grid_enet():
    """sklearn's ElasticNet (shared weights) on a grid of alpha x l1_ratio."""
    from sklearn.linear_model import ElasticNet

    Xtr, ytr, Xval, yval = enet_data()
    out = []
    for alpha, r in itertools.product(np.geomspace(1e-3, 1.0, 20), [0.05, 0.2, 0.5, 0.8, 1.0]):
        m = ElasticNet(alpha=alpha, l1_ratio=r, fit_intercept=False, tol=1e-12, max_iter=100_000).fit(Xtr, ytr)
        out.append((0.5 * float(np.mean((Xval @ m.coef_ - yval) ** 2)), (alpha * r, alpha * (1 - r))))
    return best(out)


# (8) class-weighted multinomial logistic regression -------------------------

def wine_data():
    return sources.dataset("wine", split=0.5, seed=0, standardize=True)


def _g_wine(W, X, Y, sw):
    return -jnp.mean(sw * jnp.sum(Y * jax.nn.log_softmax(X @ W), axis=1)) + 0.05 * jnp.sum(W**2)


def F_wine(cw, data=None):
    Xtr, ytr, Xval, yval = data or wine_data()
    Y = np.eye(3)[ytr]
    sw = Y @ np.asarray(cw, dtype=np.float64)
    W = argmin(_g_wine, np.zeros((Xtr.shape[1], 3)), Xtr, Y, sw)
    return float(-np.mean(jax.nn.log_softmax(Xval @ W)[np.arange(len(yval)), yval]))


def grid_wine():
    data = wine_data()
    ws = np.geomspace(1.0, 64.0, 4)
    return best((F_wine(np.array(cw), data), cw) for cw in itertools.product(ws, ws, ws))
