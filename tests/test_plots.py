"""The plots of a run: iteration 0, log axes where a researcher needs them, histograms for
hypers of more than 16 entries (checked on the matplotlib objects, not on pixels)."""

import numpy as np
import pytest

import bil
import bil.runtime.plots as plots
from bil.runtime.outer.history import hyper_fields


@pytest.fixture
def figs(monkeypatch):
    """name -> Figure of every plot saved while the test runs."""
    saved = {}
    real = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (saved.__setitem__(path.name, fig), real(fig, path))[1])
    return saved


def _history(uppers, hypers):
    return [dict(iter=i + 1, upper=u, lower_iters_total=10 * (i + 1), cg_iters_total=5 * (i + 1),
                 wall_s=0.1 * (i + 1), **hyper_fields(h)) for i, (u, h) in enumerate(zip(uppers, hypers))]


def _start(upper, hypers, positive):
    return {"upper": upper, "hypers": {k: np.asarray(v, float) for k, v in hypers.items()}, "positive": positive}


def test_iteration_zero_and_log_gap_axis(tmp_path, figs):
    """F from 16 to 3.2036 with the last steps ~1e-4 apart: log of F − final F, start at cost 0."""
    uppers = [12.2, 4.77, 3.2100, 3.2040, 3.20360]
    hist = _history(uppers, [{"alpha": a, "nu": n} for a, n in zip((0.018, 0.05, 0.08, 0.079, 0.078),
                                                             (0.0066, 0.004, 0.003, 0.0028, 0.0025))])
    start = _start(16.37, {"alpha": 0.0067, "nu": 0.0067}, {"alpha": True, "nu": True})
    plots.plot_history(hist, tmp_path, "tv", start=start, final_upper=3.2035)
    ax = figs["upper_vs_cost.png"].axes[0]
    assert ax.get_yscale() == "log" and "final F" in ax.get_ylabel()
    x, y = ax.lines[0].get_data()
    assert x[0] == 0 and len(x) == 6                          # iteration 0 at cost 0, then the 5 records
    np.testing.assert_allclose(y, np.array([16.37, *uppers]) - 3.2035)
    assert "final F = 3.2035" in ax.get_legend().get_texts()[0].get_text()   # the reference value is stated
    hyp = figs["hypers.png"].axes
    assert [a.get_title() for a in hyp] == ["alpha", "nu"]
    assert all(a.get_yscale() == "log" for a in hyp)          # positive hypers on log axes
    assert list(hyp[0].lines[0].get_xdata()) == [0, 1, 2, 3, 4, 5]
    assert hyp[0].lines[0].get_ydata()[0] == 0.0067
    hyp[0].figure.canvas.draw()
    labels = [t.get_text() for t in hyp[1].get_yticklabels() if t.get_text()]
    assert len(labels) >= 2 and all("10^" not in s and "$" not in s for s in labels)   # plain numbers


def test_a_run_cut_off_while_improving_gets_no_gap_axis(tmp_path, figs):
    """F still falling when max_iter stopped the run: F − final F would dive to 0 at the end as if
    it had converged (a new user read it so); F itself is drawn instead, also from a run folder."""
    import json

    uppers = [0.1038, 0.090, 0.082, 0.0771, 0.0757, 0.07512, 0.07510]
    hist = _history(uppers, [{"w": 1.0}] * len(uppers))
    plots.plot_history(hist, tmp_path, final_upper=0.07510, cut_off=True)
    ax = figs["upper_vs_cost.png"].axes[0]
    assert ax.get_yscale() == "linear" and ax.get_ylabel() == "upper objective F"
    np.testing.assert_allclose(ax.lines[0].get_ydata(), uppers)
    plots.plot_history(hist, tmp_path, final_upper=0.07510)          # converged: the gap axis
    assert "final F" in figs["upper_vs_cost.png"].axes[0].get_ylabel()
    from bil.runtime.results import write_history_csv
    write_history_csv(tmp_path / "history.csv", hist)
    (tmp_path / "result.json").write_text(json.dumps({"upper": 0.0751, "reason": "max_iter reached"}))
    plots.plot_run_dir(tmp_path)
    assert figs["upper_vs_cost.png"].axes[0].get_yscale() == "linear"


def test_linear_axes_for_small_ranges_and_real_hypers(tmp_path, figs):
    hist = _history([0.2626, 0.2614, 0.2596, 0.2571], [{"w": v} for v in (-1.0, 0.5, 2.0, 3.0)])
    plots.plot_history(hist, tmp_path, start=_start(0.2630, {"w": -2.0}, {"w": False}))
    assert figs["upper_vs_cost.png"].axes[0].get_yscale() == "linear"
    assert figs["hypers.png"].axes[0].get_yscale() == "linear"
    # F spanning decades: F itself on a log axis
    hist = _history([0.3, 0.01, 0.0006], [{"w": 1.0}] * 3)
    plots.plot_history(hist, tmp_path)
    ax = figs["upper_vs_cost.png"].axes[0]
    assert ax.get_yscale() == "log" and list(ax.lines[0].get_ydata()) == [0.3, 0.01, 0.0006]
    # a recorded value below the final one (adam oscillating, or recorded at a loose accuracy): F − best F,
    # the best drawn at the floor, a tenth of the smallest positive gap
    hist = _history([0.066, 0.064, 0.06402, 0.0641, 0.06415], [{"w": 1.0}] * 5)
    plots.plot_history(hist, tmp_path, final_upper=0.06415)
    ax = figs["upper_vs_cost.png"].axes[0]
    assert ax.get_yscale() == "log" and "best F = 0.064" in ax.get_legend().get_texts()[0].get_text()
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [0.002, 2e-6, 2e-5, 1e-4, 1.5e-4])


def test_many_entry_hyper_gets_histogram_and_heat_map(tmp_path, figs):
    rng = np.random.default_rng(0)
    theta = -3 + 0.3 * rng.standard_normal((64, 10))
    lam = np.exp(rng.standard_normal(40))
    hist = _history([0.34, 0.30], [{"theta": theta, "lam": lam, "s": 1.0}] * 2)
    assert not any(k.startswith("hyper.theta") for k in hist[0])   # the history has no columns for them
    start = _start(0.35, {"theta": -3.0, "lam": np.ones(40), "s": 2.0}, {"theta": False, "lam": True, "s": True})
    plots.plot_history(hist, tmp_path, start=start, final={"theta": theta, "lam": lam, "s": np.float64(1.0)})
    axes = figs["hypers.png"].axes
    titles = [a.get_title() for a in axes]
    assert "s" in titles and "theta: entries, start vs learned" in titles
    assert "lam: entries, start vs learned" in titles and any(t.startswith("theta: learned values") for t in titles)
    h = axes[titles.index("theta: entries, start vs learned")]
    assert sum(p.get_height() for p in h.patches) == 640           # every learned entry counted
    assert any(line.get_xdata()[0] == -3.0 for line in h.lines)    # the constant start as a line
    assert axes[titles.index("lam: entries, start vs learned")].get_xscale() == "log"


def test_a_stack_of_filters_is_drawn_as_tiles(tmp_path, figs):
    """A hyper of 4 filters 3×3 (a new user's field of experts): four 3×3 tiles side by side,
    labelled [0]..[3], not a 4×9 map with fractional ticks."""
    rng = np.random.default_rng(1)
    F = rng.standard_normal((4, 3, 3))
    hist = _history([1.0, 0.5], [{"F": F}] * 2)
    plots.plot_history(hist, tmp_path, start=_start(1.2, {"F": F * 0}, {"F": False}), final={"F": F})
    axes = figs["hypers.png"].axes
    ax = next(a for a in axes if a.get_title().startswith("F: learned values"))
    img = ax.images[0].get_array()
    assert img.shape == (3, 4 * 4 - 1)                                   # 3 rows, 4 tiles of 3 and 3 gaps
    np.testing.assert_array_equal(np.asarray(img)[:, 4:7], F[1])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["[0]", "[1]", "[2]", "[3]"]
    assert "4 matrices of 3×3" in ax.get_xlabel()


def test_start_point_is_the_upper_value_at_the_initial_hypers(tmp_path):
    """start.npz holds F(θ₀) (the lower problem solved to lower.tol; here against ridge's closed
    form) and θ₀; with_start prepends them as iteration 0."""
    from bil.stdlib.sources import dataset

    spec = tmp_path / "r.bil"
    spec.write_text(
        "problem r\n"
        'data X, y, Xv, yv = dataset("diabetes", split=0.5, seed=0, standardize=true)\n'
        "hyper lam : positive = 2.0\n"
        "lower {\n    w : real[ncols(X)] = 0\n    minimize 0.5 * sumsq(X @ w - y) + 0.5 * lam * sumsq(w)\n}\n"
        "upper minimize 0.5 * mean((Xv @ w - yv)^2)\n")
    start = plots.start_point(bil.compile(spec))
    X, y, Xv, yv = dataset("diabetes", split=0.5, seed=0, standardize=True)
    w = np.linalg.solve(X.T @ X + 2.0 * np.eye(X.shape[1]), X.T @ y)
    assert abs(start["upper"] - 0.5 * np.mean((Xv @ w - yv) ** 2)) < 1e-8
    assert start["positive"] == {"lam": True}
    plots.write_start(tmp_path, start)
    back = plots.read_start(tmp_path / plots.START_NAME)
    assert back["upper"] == start["upper"] and float(back["hypers"]["lam"]) == 2.0 and back["positive"]["lam"]
    rows = plots.with_start(_history([0.3], [{"lam": 3.0}]), back)
    assert [r["iter"] for r in rows] == [0, 1] and rows[0]["hyper.lam"] == 2.0
    assert plots.read_start(tmp_path / "missing.npz") is None


def test_sample_gradients_axis_when_the_history_counts_them(tmp_path, figs):
    """A history with ``sample_grads`` gets upper_vs_samples.png, from iteration 0 at 0 samples;
    an older history without the column gets the three other plots only."""
    hist = [dict(r, sample_grads=500 * (i + 1)) for i, r in enumerate(_history([2.0, 1.5, 1.2], [{"w": 1.0}] * 3))]
    paths = plots.plot_history(hist, tmp_path, start=_start(3.0, {"w": 1.0}, {"w": False}))
    assert [p.name for p in paths] == ["upper_vs_cost.png", "upper_vs_samples.png", "upper_vs_time.png", "hypers.png"]
    ax = figs["upper_vs_samples.png"].axes[0]
    x, _ = ax.lines[0].get_data()
    assert list(x) == [0, 500, 1000, 1500] and "sample gradients" in ax.get_xlabel()
    old = plots.plot_history(_history([2.0, 1.5], [{"w": 1.0}] * 2), tmp_path / "old")
    assert [p.name for p in old] == ["upper_vs_cost.png", "upper_vs_time.png", "hypers.png"]
