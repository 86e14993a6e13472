"""Gallery examples 5 and 9-12 (issue 17): each runs at reduced size and its outcome points the
right way against its baseline (benchmarks/gallery_baselines_imaging.py, computed without bil).

The default-run test takes one outer iteration of each example on tiny data (``bil.compile(spec,
data=...)``, ``prog.run(max_iter=1)``): it must lower the upper objective.  The ``slow`` tests
(~25 s of CPU each) learn on reduced data and compare the direction of the outcome with the
baseline's, and run each example with its defaults, as ``bil run`` does.
"""

import importlib.util
from pathlib import Path

import bil
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
_spec = importlib.util.spec_from_file_location("gallery_imaging", ROOT / "benchmarks" / "gallery_baselines_imaging.py")
G = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(G)


def _run_small(name, data, max_iter):
    prog = bil.compile(EXAMPLES / f"{name}.bil", data=data)
    start = float(prog.objective(prog.hypers))
    res = prog.run(max_iter=max_iter)
    assert res.error is None and res.upper < start, (res.reason, res.upper, start)
    return res


def _rows(data, n, keys, offset=0):
    return {k: data[k][offset:offset + n] for k in keys}


def _tiny(name):
    """A few samples (rows or pictures cropped to 16 x 16) of each example's data."""
    d = G.spec_data(name)
    if name in ("deblur", "foe_denoise"):
        keys = ("clean", "blurred") if name == "deblur" else ("clean", "noisy")
        return {k: _crop(d[k][:1], 16) for k in keys}
    if name == "distill":
        return {"Xval": d["Xval"][:40], "yval": d["yval"][:40]}
    return {k: d[k][:30] for k in ("Xtr", "ytr", "Xval", "yval")}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["deblur", "distill", "foe_denoise", "kernel_ridge", "mlp_decay"])
def test_one_outer_iteration_on_tiny_data_lowers_the_upper_value(name):
    _run_small(name, _tiny(name), 1)


# ------------------------------------------------------------------ (5) kernel_ridge
@pytest.mark.slow
def test_kernel_ridge_small_beats_its_grid_on_validation():
    """The learned (gamma, lam) fit the validation set at least as well as the best of the
    GridSearchCV grid on the same split (the grid is a subset of what is searched), and the
    learned model's test error is below the starting point's."""
    from sklearn.kernel_ridge import KernelRidge

    d = G.spec_data("kernel_ridge")
    small = {**_rows(d, 60, ("Xtr", "ytr")), **_rows(d, 40, ("Xval", "yval")), **_rows(d, 40, ("Xte", "yte"))}
    res = _run_small("kernel_ridge", small, 20)

    def val_mse(gamma, alpha):
        m = KernelRidge(kernel="rbf", gamma=gamma, alpha=alpha).fit(small["Xtr"], small["ytr"])
        return float(np.mean((m.predict(small["Xval"]) - small["yval"]) ** 2))

    grid = min(val_mse(g, a) for g in G.KR_GRID["gamma"] for a in G.KR_GRID["alpha"])
    assert 2 * res.upper <= grid   # the spec's upper is 0.5 * the validation MSE
    learned = G.outcome_kernel_ridge(small, res.hypers, res.lower)["test_mse"]
    assert learned < G._kr_test_mse(small, 0.1, 1.0, small["Xtr"], small["ytr"])   # the spec's start


# ------------------------------------------------------------------ (9) distill
@pytest.mark.slow
def test_distill_small_beats_class_means_on_test():
    """Ten images learned on a small validation set train a better test classifier than the
    class means they start from (the baseline), and than random real images."""
    d = G.spec_data("distill")
    small = {**_rows(d, 150, ("Xval", "yval")), "Xte": d["Xte"], "yte": d["yte"]}
    res = _run_small("distill", small, 15)
    got = G.outcome_distill(d, res.hypers, res.lower)["test_acc"]
    base = G.baseline_distill(d, draws=5)
    assert got > base["means_test_acc"] > base["random_test_acc"]


# ------------------------------------------------------------------ (10) foe_denoise, (11) deblur
def _crop(a, n=24):
    return np.ascontiguousarray(a[..., 20:20 + n, 20:20 + n])


@pytest.mark.slow
def test_deblur_small_beats_the_wiener_grid_on_held_out_images():
    import scipy.ndimage as nd

    d = G.spec_data("deblur")
    rng = np.random.default_rng(0)
    small = {}
    for pre in ("", "test_"):
        clean = _crop(d[pre + "clean"][:2])
        small[pre + "clean"] = clean
        small[pre + "blurred"] = np.stack([nd.correlate(c, G.gaussian_psf(), mode="wrap") for c in clean]) \
            + 0.01 * rng.standard_normal(clean.shape)
    res = _run_small("deblur", {"clean": small["clean"], "blurred": small["blurred"]}, 10)
    x = bil.compile(EXAMPLES / "deblur.bil", data={"clean": small["test_clean"], "blurred": small["test_blurred"]}
                    ).solve_lower(res.hypers)["x"]
    got = G._mean_psnr(small["test_clean"], x)
    base = G.baseline_deblur(small)
    assert got > base["wiener_test_psnr"] > base["blurred_test_psnr"]


@pytest.mark.slow
def test_foe_small_denoises_held_out_images():
    """A few outer iterations on small crops: the learned filters denoise held-out crops
    (PSNR above the noisy input's)."""
    d = G.spec_data("foe_denoise")
    small = {k: _crop(d[k][:2]) for k in ("clean", "noisy", "test_clean", "test_noisy")}
    res = _run_small("foe_denoise", {"clean": small["clean"], "noisy": small["noisy"]}, 4)
    x = bil.compile(EXAMPLES / "foe_denoise.bil", data={"clean": small["test_clean"], "noisy": small["test_noisy"]}
                    ).solve_lower(res.hypers)["x"]
    assert G._mean_psnr(small["test_clean"], x) > G._mean_psnr(small["test_clean"], small["test_noisy"])


# ------------------------------------------------------------------ (12) mlp_decay
@pytest.mark.slow
def test_mlp_decay_small_lowers_validation_loss():
    d = G.spec_data("mlp_decay")
    small = {**_rows(d, 150, ("Xtr", "ytr")), **_rows(d, 100, ("Xval", "yval"))}
    res = _run_small("mlp_decay", small, 3)
    assert set(res.hypers) == {"wd1", "wd2"}


# ------------------------------------------------------------------ full size (bil run's defaults)
FULL = {  # example -> (bil's test metric, the baseline's, larger is better)
    "kernel_ridge": ("test_mse", "split_test_mse", False),
    "distill": ("test_acc", "means_test_acc", True),
    "deblur": ("test_psnr", "wiener_test_psnr", True),
    "foe_denoise": ("test_psnr", "tv_test_psnr", True),
    "mlp_decay": ("test_ce", "grid_test_ce", False),   # test accuracy ties (0.978 both)
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FULL))
def test_full_example_against_its_baseline(name):
    got_key, base_key, larger = FULL[name]
    prog = bil.compile(EXAMPLES / f"{name}.bil")
    res = prog.run()
    assert res.error is None
    data = G.spec_data(name)
    got = getattr(G, f"outcome_{name}")(data, res.hypers, res.lower)[got_key]
    base = getattr(G, f"baseline_{name}")(data)[base_key]
    assert (got > base) if larger else (got < base), (got, base)
