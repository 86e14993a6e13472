"""Generate fewshot.npz: 24 linear-regression tasks w_t = m + 0.3 * noise in R^5,
5 training and 10 validation samples each, noise std 0.3 (run: python make_fewshot.py)."""
import numpy as np

rng = np.random.default_rng(0)
T, d, ntr, nval = 24, 5, 5, 10
m = rng.standard_normal(d)
W = m + 0.3 * rng.standard_normal((T, d))
Xtr = rng.standard_normal((T, ntr, d))
Xval = rng.standard_normal((T, nval, d))
ytr = np.einsum("tnd,td->tn", Xtr, W) + 0.3 * rng.standard_normal((T, ntr))
yval = np.einsum("tnd,td->tn", Xval, W) + 0.3 * rng.standard_normal((T, nval))
np.savez_compressed("fewshot.npz", **{k: v.astype(np.float32) for k, v in
                                      dict(Xtr=Xtr, ytr=ytr, Xval=Xval, yval=yval).items()})
