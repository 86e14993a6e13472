"""Hyper declarations of a `per sample` problem see one sample's sizes, as the
lower block does (a shared w0 of one task's feature size, meta-learning); a
per-sample value there is a located error."""

import bil
import numpy as np
import pytest

META = """
data X = load("tasks.npz", "X") per sample
data y = load("tasks.npz", "y") per sample
hyper w0 : real[ncols(X)] = 0.5
hyper lam : positive = 2.0
lower {
    w = zeros(ncols(X))
    minimize 0.5 * sumsq(X @ w - y) + 0.5 * lam * sumsq(w - w0)
}
upper minimize 0.5 * sumsq(X @ w - y)
"""


def test_a_shared_hyper_takes_one_samples_size(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(3, 10, 4)), rng.normal(size=(3, 10))
    np.savez(tmp_path / "tasks.npz", X=X, y=y)
    (tmp_path / "meta.bil").write_text(META)
    prog = bil.compile(tmp_path / "meta.bil")
    assert prog.state.hypers["w0"].shape == (4,)          # ncols of one task, not the stacked 10
    np.testing.assert_array_equal(prog.hypers["w0"], np.full(4, 0.5))
    w0, lam = np.linspace(-1, 1, 4), 2.0
    f, g = prog.value_and_hypergrad({"w0": w0, "lam": lam})
    # closed form: w_i = (X_i'X_i + lam I)^-1 (X_i'y_i + lam w0); the upper value is the mean over tasks
    fs, gs = [], []
    for Xi, yi in zip(X, y):
        A = Xi.T @ Xi + lam * np.eye(4)
        wi = np.linalg.solve(A, Xi.T @ yi + lam * w0)
        r = Xi @ wi - yi
        fs.append(0.5 * r @ r)
        gs.append(lam * np.linalg.solve(A, Xi.T @ r))      # d f_i / d w0 (A symmetric)
    assert f == pytest.approx(np.mean(fs), rel=1e-10)
    np.testing.assert_allclose(g["w0"], np.mean(gs, axis=0), rtol=1e-7, atol=1e-12)


def test_a_per_sample_value_in_a_hyper_is_located():
    with pytest.raises(bil.BilError) as info:
        bil.compile("""
data X = randn(3, 10, 4, seed=0) per sample
hyper w0 : real[ncols(X)] = X[0, :]
lower {
    w = zeros(ncols(X))
    minimize sumsq(X @ w) + sumsq(w - w0)
}
upper minimize sumsq(w)
""")
    err = info.value
    assert (err.line, err.column) == (3, 29) and "per sample" in err.message and "per sample" in err.hint
