"""Held-out outcomes of the gallery examples against the baselines a practitioner would use.

    bil run examples/NAME.bil --out runs/NAME         # for each example (see GALLERY)
    python benchmarks/gallery_baselines.py            # table: bil's test metrics vs baselines
    python benchmarks/gallery_baselines.py ridge --runs /tmp/runs

Every example splits its data into train (the lower problem), validation (the upper
objective) and test (never seen by the run).  Two kinds of functions per example:

* ``baseline_NAME(data)``: what scikit-learn / numpy / scikit-image give on the same
  split (grids and CV estimators chosen on data the run could see, scored on test);
  never bil's solvers.
* ``outcome_NAME(data, hypers, lower)``: what the run learned, scored on test with
  numpy from its learned hypers and lower solution (``hypers.npz``, ``lower.npz`` of
  the run folder, or ``bil.Result.hypers`` / ``.lower`` in-process).  ``tv_denoise``
  alone solves its held-out images with the spec's own lower problem at the learned
  hypers (``bil.compile(spec, data=...)``): the smoothed-TV model is what was learned.

``data`` is the spec's own data (``spec_data(NAME)``: ``bil.compile(spec).state.data``,
evaluated at compile time, before any solver): baseline and run see the same arrays.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
GALLERY = ("tv_denoise", "ridge", "digits_penalties", "elastic_net", "data_cleaning", "learned_lr", "meta_ridge")


def spec_data(name: str, **compile_kw) -> dict:
    """The arrays bound by ``data`` statements of ``examples/NAME.bil``, as numpy."""
    import bil

    prog = bil.compile(EXAMPLES / f"{name}.bil", **compile_kw)
    return {k: np.asarray(v) for k, v in prog.state.data.items()}


# ------------------------------------------------------------------ shared helpers
def _softmax_ce(logits, y):
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def _classify(W, X, y, b=0.0) -> dict:
    logits = X @ W + b
    return {"test_acc": float((logits.argmax(axis=1) == y).mean()), "test_ce": _softmax_ce(logits, y)}


def _multinomial(X, y, c, weights=None):
    """argmin_W mean_i weights_i CE(X_i W, y_i) + 0.5 c ||W||^2 (no intercept), by scikit-learn."""
    from sklearn.linear_model import LogisticRegression

    n = len(y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = LogisticRegression(C=1.0 / (n * c), fit_intercept=False, tol=1e-10, max_iter=10000)
        m.fit(X, y, sample_weight=weights)
    return m.coef_.T


def _psnr(clean, rec) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(clean, rec, data_range=float(clean.max() - clean.min())))


# ------------------------------------------------------------------ (1) tv_denoise
TV_GRID = np.logspace(-3, 0, 20)   # skimage's Chambolle TV weight


def baseline_tv_denoise(data) -> dict:
    """The best of 20 TV weights (skimage's Chambolle TV), chosen on the training images."""
    from skimage.restoration import denoise_tv_chambolle

    def mean_psnr(clean, noisy, wt):
        return np.mean([_psnr(c, denoise_tv_chambolle(x, weight=wt)) for c, x in zip(clean, noisy)])

    train = [mean_psnr(data["clean"], data["noisy"], wt) for wt in TV_GRID]
    best = float(TV_GRID[int(np.argmax(train))])
    return {"weight": best, "train_psnr": float(max(train)),
            "test_psnr": float(mean_psnr(data["test_clean"], data["test_noisy"], best)),
            "noisy_test_psnr": float(np.mean([_psnr(c, x) for c, x in zip(data["test_clean"], data["test_noisy"])]))}


def outcome_tv_denoise(data, hypers, lower) -> dict:
    import bil

    held_out = bil.compile(EXAMPLES / "tv_denoise.bil", data={"clean": data["test_clean"], "noisy": data["test_noisy"]})
    rec = held_out.solve_lower({k: float(v) for k, v in hypers.items()})["x"]
    return {"test_psnr": float(np.mean([_psnr(c, x) for c, x in zip(data["test_clean"], rec)]))}


# ------------------------------------------------------------------ (2) ridge
def _ridge_path(X, y):
    """w(lam) = (X'X + lam I)^-1 X'y for any lam, from one eigendecomposition."""
    s, V = np.linalg.eigh(X.T @ X)
    b = V.T @ (X.T @ y)
    return lambda lam: V @ (b / (s + lam))


def baseline_ridge(data) -> dict:
    """lam minimising the validation loss exactly: closed-form w(lam), dense log grid then Brent."""
    from scipy.optimize import minimize_scalar

    w = _ridge_path(data["Xtr"], data["ytr"])
    val = lambda t: 0.5 * np.mean((data["Xval"] @ w(np.exp(t)) - data["yval"]) ** 2)  # noqa: E731
    grid = np.linspace(np.log(1e-4), np.log(1e4), 2001)
    t0 = grid[int(np.argmin([val(t) for t in grid]))]
    t = minimize_scalar(val, bounds=(t0 - 0.01, t0 + 0.01), method="bounded", options={"xatol": 1e-10}).x
    lam = float(np.exp(t))
    return {"lam": lam, "val_loss": float(val(t)), "test_mse": _mse(data, w(lam))}


def _mse(data, w) -> float:
    return float(np.mean((data["Xte"] @ w - data["yte"]) ** 2))


def outcome_ridge(data, hypers, lower) -> dict:
    return {"lam": float(hypers["lam"]), "test_mse": _mse(data, np.asarray(lower["w"]))}


# ------------------------------------------------------------------ (3) digits_penalties
PENALTY_GRID = np.logspace(-4, 4, 20)


def baseline_digits_penalties(data) -> dict:
    """One penalty for all coefficients (20-point grid, chosen on validation cross-entropy), and
    scikit-learn's LogisticRegressionCV (5-fold, 20 Cs, intercept) fitted on train + validation."""
    from sklearn.linear_model import LogisticRegressionCV

    Ws = [_multinomial(data["Xtr"], data["ytr"], c) for c in PENALTY_GRID]
    val = [_softmax_ce(data["Xval"] @ W, data["yval"]) for W in Ws]
    k = int(np.argmin(val))
    grid = _classify(Ws[k], data["Xte"], data["yte"])
    X, y = np.vstack([data["Xtr"], data["Xval"]]), np.concatenate([data["ytr"], data["yval"]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cv = LogisticRegressionCV(Cs=20, cv=5, max_iter=5000).fit(X, y)
    lrcv = _classify(cv.coef_.T, data["Xte"], data["yte"], cv.intercept_)
    return {"grid_penalty": float(PENALTY_GRID[k]), "grid_val_ce": float(val[k]), "grid_test_acc": grid["test_acc"], "grid_test_ce": grid["test_ce"],
            "lrcv_test_acc": lrcv["test_acc"], "lrcv_test_ce": lrcv["test_ce"]}


def outcome_digits_penalties(data, hypers, lower) -> dict:
    return _classify(np.asarray(lower["W"]), data["Xte"], data["yte"])


# ------------------------------------------------------------------ (4) elastic_net
def _support(data, w) -> dict:
    w = np.asarray(w)
    on, truth = np.abs(w) > 0, np.abs(data["wtrue"]) > 0
    return {"test_mse": _mse(data, w), "support": int(on.sum()), "true_in_support": int((on & truth).sum()),
            "false_in_support": int((on & ~truth).sum())}


ENET_RATIOS = [0.1, 0.5, 0.7, 0.9, 0.95, 0.99, 1.0]


def baseline_elastic_net(data) -> dict:
    """scikit-learn's ElasticNetCV (5-fold over 7 l1 ratios x 100 alphas) on train + validation, and
    the same estimator on the information the run had: fitted on train, (alpha, l1 ratio) of that
    grid chosen on validation."""
    from sklearn.linear_model import ElasticNet, ElasticNetCV

    X, y = np.vstack([data["Xtr"], data["Xval"]]), np.concatenate([data["ytr"], data["yval"]])
    m = ElasticNetCV(l1_ratio=ENET_RATIOS, cv=5, max_iter=100000).fit(X, y)
    cv = {f"cv_{k}": v for k, v in _support(data, m.coef_).items()}
    cv["cv_test_mse"] = float(np.mean((m.predict(data["Xte"]) - data["yte"]) ** 2))  # with its intercept
    fits = [ElasticNet(alpha=a, l1_ratio=r, max_iter=100000).fit(data["Xtr"], data["ytr"])
            for r in ENET_RATIOS for a in m.alphas_[ENET_RATIOS.index(r)][::4]]
    best = min(fits, key=lambda f: np.mean((f.predict(data["Xval"]) - data["yval"]) ** 2))
    grid = {f"grid_{k}": v for k, v in _support(data, best.coef_).items()}
    grid["grid_test_mse"] = float(np.mean((best.predict(data["Xte"]) - data["yte"]) ** 2))
    return {**cv, **grid}


def outcome_elastic_net(data, hypers, lower) -> dict:
    l1w, active = np.broadcast_to(hypers["l1w"], data["wtrue"].shape), np.abs(data["wtrue"]) > 0
    return {"l1w_median_active": float(np.median(l1w[active])), "l1w_median_inactive": float(np.median(l1w[~active])),
            "l2w": float(hypers["l2w"]), **_support(data, lower["w"])}


# ------------------------------------------------------------------ (6) data_cleaning
CLEANING_L2 = 0.01   # the spec's fixed 0.5 * 0.01 * sumsq(W)


def flipped_labels(data, seed=0, ftr=0.5) -> np.ndarray:
    """Which training labels ``corrupt_labels`` flipped: the clean labels by the split recipe of
    docs/LANGUAGE.md (NumPy and scikit-learn only), compared with ``data["ytr"]`` (the spec's, or
    its first rows)."""
    import sklearn.datasets

    _, y = sklearn.datasets.load_digits(return_X_y=True)
    perm = np.random.default_rng(seed).permutation(len(y))
    clean = y[perm[:round(ftr * len(y))]]
    return clean[:len(data["ytr"])] != data["ytr"]   # a reduced run keeps the first rows


def baseline_data_cleaning(data) -> dict:
    """The same model trained without weights (every sample weight 1), and, for reference, on
    the clean samples only (an oracle that knows which labels were flipped)."""
    flipped = flipped_labels(data)
    plain = _classify(_multinomial(data["Xtr"], data["ytr"], CLEANING_L2), data["Xte"], data["yte"])
    oracle = _classify(_multinomial(data["Xtr"], data["ytr"], CLEANING_L2, (~flipped).astype(float)),
                       data["Xte"], data["yte"])
    return {"flipped": float(flipped.mean()), "unweighted_test_acc": plain["test_acc"],
            "unweighted_test_ce": plain["test_ce"], "oracle_test_acc": oracle["test_acc"]}


def outcome_data_cleaning(data, hypers, lower) -> dict:
    flipped = flipped_labels(data)
    weight = np.asarray(hypers["weight"])
    lowest = np.argsort(weight, kind="stable")[:int(flipped.sum())]
    return {**_classify(np.asarray(lower["W"]), data["Xte"], data["yte"]),
            "flipped_among_lowest": float(flipped[lowest].mean()),
            "mean_weight_flipped": float(weight[flipped].mean()), "mean_weight_clean": float(weight[~flipped].mean())}


# ------------------------------------------------------------------ (7) learned_lr
LR_GRID, WD_GRID = np.logspace(-2, 0, 5), np.logspace(-4, 0, 5)


def _logistic(w, X, y) -> float:
    s = X @ w
    return float(np.mean(np.logaddexp(0.0, s) - y * s))


def sgd_momentum(X, y, lr, wd, steps=100, momentum=0.9) -> np.ndarray:
    """The spec's training procedure in NumPy: optax.sgd(lr, momentum) (trace = g + m trace,
    w -= lr trace) on mean logistic loss + 0.5 wd ||w||^2, from w = 0."""
    w, trace = np.zeros(X.shape[1]), np.zeros(X.shape[1])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(X @ w)))
        trace = X.T @ (p - y) / len(y) + wd * w + momentum * trace
        w = w - lr * trace
    return w


def _binary(w, data) -> dict:
    return {"test_loss": _logistic(w, data["Xte"], data["yte"]),
            "test_acc": float(((data["Xte"] @ w > 0) == data["yte"]).mean())}


def baseline_learned_lr(data) -> dict:
    """The best (lr, wd) of a 5 x 5 log grid by validation loss, the same 100 steps in NumPy."""
    pairs = [(lr, wd) for lr in LR_GRID for wd in WD_GRID]
    ws = [sgd_momentum(data["Xtr"], data["ytr"], lr, wd) for lr, wd in pairs]
    k = int(np.argmin([_logistic(w, data["Xval"], data["yval"]) for w in ws]))
    return {"lr": float(pairs[k][0]), "wd": float(pairs[k][1]), **_binary(ws[k], data)}


def outcome_learned_lr(data, hypers, lower) -> dict:
    return {"lr": float(hypers["lr"]), "wd": float(hypers["wd"]), **_binary(np.asarray(lower["w"]), data)}


# ------------------------------------------------------------------ (8) meta_ridge
def _adapt(Xs, ys, w0, lam):
    """Per task: argmin_w 0.5 ||Xs w - ys||^2 + 0.5 lam ||w - w0||^2."""
    d = Xs.shape[-1]
    A = np.einsum("tni,tnj->tij", Xs, Xs) + lam * np.eye(d)
    return np.linalg.solve(A, (np.einsum("tni,tn->ti", Xs, ys) + lam * w0)[..., None])[..., 0]


def meta_error(Xs, ys, Xq, yq, w0, lam) -> float:
    """0.5 * mean squared query error after adapting to each task's support set (the upper objective)."""
    w = _adapt(Xs, ys, w0, lam)
    return float(0.5 * np.mean((np.einsum("tqi,ti->tq", Xq, w) - yq) ** 2))


def closed_form_w0(Xs, ys, Xq, yq, lam) -> np.ndarray:
    """The query loss is quadratic in w0 (w(w0) is affine): least squares over the stacked tasks."""
    d = Xs.shape[-1]
    A = np.einsum("tni,tnj->tij", Xs, Xs) + lam * np.eye(d)
    Ainv = np.linalg.inv(A)
    M = lam * np.einsum("tqi,tij->tqj", Xq, Ainv).reshape(-1, d)
    r = (yq - np.einsum("tqi,ti->tq", Xq, _adapt(Xs, ys, np.zeros(d), lam))).reshape(-1)
    return np.linalg.lstsq(M, r, rcond=None)[0]


META_GRID = np.logspace(-3, 3, 61)


def baseline_meta_ridge(data) -> dict:
    """w0 = 0 (plain ridge per task, lam from a grid) and the closed-form w0 with its best lam on
    the grid, both chosen on the training tasks' query sets, scored on the held-out tasks."""
    tr = (data["Xtr"], data["ytr"], data["Xval"], data["yval"])
    te = (data["Xs_te"], data["ys_te"], data["Xq_te"], data["yq_te"])
    zero = np.zeros(data["Xtr"].shape[-1])
    lam0 = META_GRID[int(np.argmin([meta_error(*tr, zero, lam) for lam in META_GRID]))]
    w0s = [closed_form_w0(*tr, lam) for lam in META_GRID]
    k = int(np.argmin([meta_error(*tr, w0, lam) for w0, lam in zip(w0s, META_GRID)]))
    return {"zero_lam": float(lam0), "zero_test_error": meta_error(*te, zero, lam0),
            "closed_lam": float(META_GRID[k]), "closed_test_error": meta_error(*te, w0s[k], META_GRID[k]),
            "closed_train_error": meta_error(*tr, w0s[k], META_GRID[k])}


def outcome_meta_ridge(data, hypers, lower) -> dict:
    te = (data["Xs_te"], data["ys_te"], data["Xq_te"], data["yq_te"])
    w0, lam = np.asarray(hypers["w0"]), float(hypers["lam"])
    return {"lam": lam, "test_error": meta_error(*te, w0, lam),
            "w0_dist_to_mean": float(np.linalg.norm(w0 - data["wbar"]))}


# ------------------------------------------------------------------ the table
def load_run(folder: Path) -> tuple[dict, dict, dict]:
    """(result.json, hypers, lower) of a ``bil run`` output folder."""
    result = json.loads((folder / "result.json").read_text())
    with np.load(folder / "hypers.npz") as h, np.load(folder / "lower.npz") as x:
        return result, dict(h), dict(x)


def _fmt(d: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in d.items())


def start_outcome(name: str, data: dict, folder: Path) -> dict:
    """The test metrics at the run's starting hypers (``start.npz``), the lower problem solved by
    ``bil.compile(spec).solve_lower``: what the run started from, scored like what it learned."""
    import bil

    with np.load(folder / "start.npz") as s:
        hypers = {k[len("hyper."):]: s[k] for k in s.files if k.startswith("hyper.")}
    prog = bil.compile(EXAMPLES / f"{name}.bil")
    return globals()[f"outcome_{name}"](data, hypers, prog.solve_lower(hypers))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", default=list(GALLERY), help=f"examples (default: all of {', '.join(GALLERY)})")
    ap.add_argument("--runs", default="runs", help="folder holding NAME/ output folders of `bil run` (default: runs)")
    args = ap.parse_args(argv)
    for name in args.names:
        data = spec_data(name)
        print(f"{name}\n  baseline:      {_fmt(globals()[f'baseline_{name}'](data))}")
        folder = Path(args.runs) / name
        if not (folder / "result.json").exists():
            print(f"  bil:           no run: `bil run examples/{name}.bil --out {folder}` first")
            continue
        result, hypers, lower = load_run(folder)
        print(f"  bil at start:  {_fmt(start_outcome(name, data, folder))}")
        print(f"  bil learned:   {_fmt(globals()[f'outcome_{name}'](data, hypers, lower))}, "
              f"wall_s {float(result['wall_s']):.1f}, iterations {result['iterations']}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
