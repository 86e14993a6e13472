"""Held-out outcomes of gallery examples 5, 9-12 against the baselines a practitioner would use.

    bil run examples/NAME.bil --out runs/NAME                 # for each example (see GALLERY)
    python benchmarks/gallery_baselines_imaging.py            # table: bil's test metrics vs baselines
    python benchmarks/gallery_baselines_imaging.py deblur --runs /tmp/runs

The same structure as ``gallery_baselines.py`` (examples 1-4, 6-8): every example splits
its data into train (the lower problem), validation (the upper objective) and test (never
seen by the run).  Per example:

* ``baseline_NAME(data)``: what scikit-learn / numpy / scikit-image give on the same split
  (grids chosen on data the run could see, scored on test); never bil's solvers.
* ``outcome_NAME(data, hypers, lower)``: what the run learned, scored on test with numpy from
  its learned hypers and lower solution (``hypers.npz``, ``lower.npz``, or ``bil.Result``).
  The image examples solve their held-out images with the spec's own lower problem at the
  learned hypers (``bil.compile(spec, data=...)``): that model is what was learned.

``data`` is the spec's own data (``spec_data(NAME)``), so baseline and run see the same arrays.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gallery_baselines import _fmt, _psnr, load_run, spec_data  # noqa: E402  (the helpers both tables share)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
GALLERY = ("kernel_ridge", "distill", "foe_denoise", "deblur", "mlp_decay")


def _softmax_ce(logits, y) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def _classify(logits, y) -> dict:
    return {"test_acc": float((logits.argmax(axis=1) == y).mean()), "test_ce": _softmax_ce(logits, y)}


def _mean_psnr(clean, recs) -> float:
    return float(np.mean([_psnr(c, r) for c, r in zip(clean, recs)]))


def _solve_held_out(name, data_over, hypers):
    """The spec's lower problem on held-out data at the learned hypers (the learned model)."""
    import bil

    prog = bil.compile(EXAMPLES / f"{name}.bil", data=data_over)
    return prog.solve_lower({k: np.asarray(v) for k, v in hypers.items()})


# ------------------------------------------------------------------ (5) kernel_ridge
KR_GRID = {"alpha": np.logspace(-3, 2, 11), "gamma": np.logspace(-3, 0, 10)}


def _kr_test_mse(data, gamma, alpha, X, y) -> float:
    from sklearn.kernel_ridge import KernelRidge

    m = KernelRidge(kernel="rbf", alpha=alpha, gamma=gamma).fit(X, y)
    return float(np.mean((m.predict(data["Xte"]) - data["yte"]) ** 2))


def baseline_kernel_ridge(data) -> dict:
    """GridSearchCV(KernelRidge) over 11 x 10 (alpha, gamma): (a) with the run's own split (fit on
    train, chosen on validation, refit on train); (b) 5-fold CV on train + validation, refit there."""
    from sklearn.kernel_ridge import KernelRidge
    from sklearn.model_selection import GridSearchCV, PredefinedSplit

    X, y = np.vstack([data["Xtr"], data["Xval"]]), np.concatenate([data["ytr"], data["yval"]])
    fold = np.r_[-np.ones(len(data["ytr"])), np.zeros(len(data["yval"]))]
    a = GridSearchCV(KernelRidge(kernel="rbf"), KR_GRID, cv=PredefinedSplit(fold), refit=False,
                     scoring="neg_mean_squared_error").fit(X, y).best_params_
    b = GridSearchCV(KernelRidge(kernel="rbf"), KR_GRID, cv=5, scoring="neg_mean_squared_error").fit(X, y)
    return {"split_gamma": float(a["gamma"]), "split_alpha": float(a["alpha"]),
            "split_test_mse": _kr_test_mse(data, a["gamma"], a["alpha"], data["Xtr"], data["ytr"]),
            "cv5_test_mse": float(np.mean((b.predict(data["Xte"]) - data["yte"]) ** 2))}


def outcome_kernel_ridge(data, hypers, lower) -> dict:
    from sklearn.metrics.pairwise import rbf_kernel

    gamma = float(hypers["gamma"])
    pred = rbf_kernel(data["Xte"], data["Xtr"], gamma=gamma) @ np.asarray(lower["a"])
    return {"gamma": gamma, "lam": float(hypers["lam"]), "test_mse": float(np.mean((pred - data["yte"]) ** 2))}


# ------------------------------------------------------------------ (9) distill
DISTILL_L2 = 0.01   # the spec's 0.005 * sumsq(W) = 0.5 * 0.01 * ||W||^2


def _multinomial(X, y, c):
    """argmin_W mean_i CE(X_i W, y_i) + 0.5 c ||W||^2 (no intercept), by scikit-learn."""
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = LogisticRegression(C=1.0 / (len(y) * c), fit_intercept=False, tol=1e-10, max_iter=10000).fit(X, y)
    return m.coef_.T


def baseline_distill(data, draws: int = 20) -> dict:
    """The same model trained on 10 random real training images (one per class; mean and best of
    `draws` draws) and on the 10 class means of the training images."""
    labels = np.arange(10)
    rng = np.random.default_rng(0)
    accs = []
    for _ in range(draws):
        pick = [rng.choice(np.flatnonzero(data["ytr"] == k)) for k in labels]
        accs.append(_classify(data["Xte"] @ _multinomial(data["Xtr"][pick], labels, DISTILL_L2), data["yte"])["test_acc"])
    means = _classify(data["Xte"] @ _multinomial(data["means"], labels, DISTILL_L2), data["yte"])
    return {"random_test_acc": float(np.mean(accs)), "random_best_test_acc": float(np.max(accs)),
            "means_test_acc": means["test_acc"], "means_test_ce": means["test_ce"]}


def outcome_distill(data, hypers, lower) -> dict:
    return _classify(data["Xte"] @ np.asarray(lower["W"]), data["yte"])


# ------------------------------------------------------------------ (10) foe_denoise
TV_GRID = np.logspace(-3, 0, 20)   # skimage's Chambolle TV weight


def baseline_foe_denoise(data) -> dict:
    """TV denoising (skimage's Chambolle), the best of 20 weights on the training images."""
    from skimage.restoration import denoise_tv_chambolle

    def mean_psnr(clean, noisy, wt):
        return _mean_psnr(clean, [denoise_tv_chambolle(x, weight=wt) for x in noisy])

    train = [mean_psnr(data["clean"], data["noisy"], wt) for wt in TV_GRID]
    best = float(TV_GRID[int(np.argmax(train))])
    return {"tv_weight": best, "tv_test_psnr": mean_psnr(data["test_clean"], data["test_noisy"], best),
            "noisy_test_psnr": _mean_psnr(data["test_clean"], data["test_noisy"])}


def outcome_foe_denoise(data, hypers, lower) -> dict:
    x = _solve_held_out("foe_denoise", {"clean": data["test_clean"], "noisy": data["test_noisy"]}, hypers)["x"]
    return {"train_psnr": _mean_psnr(data["clean"], np.asarray(lower["x"])),
            "test_psnr": _mean_psnr(data["test_clean"], np.asarray(x))}


# ------------------------------------------------------------------ (11) deblur
BLUR_SIGMA = 1.5
WIENER_GRID = np.logspace(-4, 1, 20)


def gaussian_psf(sigma=BLUR_SIGMA) -> np.ndarray:
    """The spec's blur kernel: a normalised Gaussian of 2 ceil(3 sigma) + 1 taps per axis."""
    r = np.arange(2 * math.ceil(3 * sigma) + 1) - math.ceil(3 * sigma)
    g = np.exp(-0.5 * (r / sigma) ** 2)
    return np.outer(g, g) / np.sum(g) ** 2


def baseline_deblur(data) -> dict:
    """Wiener deconvolution (skimage, periodic like the spec's blur), the best of 20 balances on the
    training images; and scikit-image's unsupervised Wiener (no parameter to choose)."""
    from skimage.restoration import unsupervised_wiener, wiener

    psf = gaussian_psf()

    def mean_psnr(clean, blurred, bal):
        return _mean_psnr(clean, [wiener(b, psf, bal, clip=False) for b in blurred])

    train = [mean_psnr(data["clean"], data["blurred"], bal) for bal in WIENER_GRID]
    best = float(WIENER_GRID[int(np.argmax(train))])
    uw = [unsupervised_wiener(b, psf, clip=False, rng=0)[0] for b in data["test_blurred"]]
    return {"wiener_balance": best, "wiener_test_psnr": mean_psnr(data["test_clean"], data["test_blurred"], best),
            "unsupervised_wiener_test_psnr": _mean_psnr(data["test_clean"], uw),
            "blurred_test_psnr": _mean_psnr(data["test_clean"], data["test_blurred"])}


def outcome_deblur(data, hypers, lower) -> dict:
    x = _solve_held_out("deblur", {"clean": data["test_clean"], "blurred": data["test_blurred"]}, hypers)["x"]
    return {"alpha": float(hypers["alpha"]), "nu": float(hypers["nu"]),
            "test_psnr": _mean_psnr(data["test_clean"], np.asarray(x))}


# ------------------------------------------------------------------ (12) mlp_decay
WD_GRID = np.logspace(-5, -1, 5)


def train_mlp(data, wd1, wd2, steps=200, lr=0.1, momentum=0.9):
    """The spec's training procedure in NumPy: optax.sgd(lr, momentum) (trace = g + m trace,
    p -= lr trace) on mean cross-entropy + 0.5 wd1 ||W1||^2 + 0.5 wd2 ||W2||^2, full batch."""
    X, y = data["Xtr"], data["ytr"]
    P = [data["W1init"].copy(), np.zeros(data["W1init"].shape[1]), data["W2init"].copy(), np.zeros(10)]
    T = [np.zeros_like(p) for p in P]
    Y = np.eye(10)[y]
    for _ in range(steps):
        W1, b1, W2, b2 = P
        h = np.maximum(X @ W1 + b1, 0.0)
        z = h @ W2 + b2
        p = np.exp(z - z.max(axis=1, keepdims=True))
        dz = (p / p.sum(axis=1, keepdims=True) - Y) / len(y)
        dh = (dz @ W2.T) * (h > 0)
        G = [X.T @ dh + wd1 * W1, dh.sum(0), h.T @ dz + wd2 * W2, dz.sum(0)]
        T = [g + momentum * t for g, t in zip(G, T)]
        P = [q - lr * t for q, t in zip(P, T)]
    return P


def _mlp_logits(P, X):
    W1, b1, W2, b2 = P
    return np.maximum(X @ W1 + b1, 0.0) @ W2 + b2


def baseline_mlp_decay(data) -> dict:
    """The best (wd1, wd2) of a 5 x 5 log grid by validation cross-entropy, the same 200 steps in NumPy."""
    pairs = [(a, b) for a in WD_GRID for b in WD_GRID]
    nets = [train_mlp(data, a, b) for a, b in pairs]
    k = int(np.argmin([_softmax_ce(_mlp_logits(P, data["Xval"]), data["yval"]) for P in nets]))
    start = _classify(_mlp_logits(train_mlp(data, 1e-3, 1e-3), data["Xte"]), data["yte"])
    return {"grid_wd1": float(pairs[k][0]), "grid_wd2": float(pairs[k][1]),
            **{f"grid_{k2}": v for k2, v in _classify(_mlp_logits(nets[k], data["Xte"]), data["yte"]).items()},
            **{f"start_{k2}": v for k2, v in start.items()}}


def outcome_mlp_decay(data, hypers, lower) -> dict:
    P = [np.asarray(lower[k]) for k in ("W1", "b1", "W2", "b2")]
    return {"wd1": float(hypers["wd1"]), "wd2": float(hypers["wd2"]), **_classify(_mlp_logits(P, data["Xte"]), data["yte"])}


# ------------------------------------------------------------------ the table
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", default=list(GALLERY), help=f"examples (default: all of {', '.join(GALLERY)})")
    ap.add_argument("--runs", default="runs", help="folder holding NAME/ output folders of `bil run` (default: runs)")
    args = ap.parse_args(argv)
    rows = []
    for name in args.names:
        data = spec_data(name)
        base = globals()[f"baseline_{name}"](data)
        folder = Path(args.runs) / name
        if (folder / "result.json").exists():
            result, hypers, lower = load_run(folder)
            got = globals()[f"outcome_{name}"](data, hypers, lower)
            got["wall_s"] = round(float(result["wall_s"]), 1)
        else:
            got = {"missing": f"run `bil run examples/{name}.bil --out {folder}` first"}
        rows.append((name, _fmt(got), _fmt(base)))
    width = max(len(r[0]) for r in rows)
    for name, got, base in rows:
        print(f"{name:<{width}}  bil (test): {got}\n{'':<{width}}  baseline:   {base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
