"""Data sources: datasets, images and files, evaluated once at compile time.

Sources run with NumPy (never traced) and return NumPy arrays: float64 for
features and images, int64 for class labels, or tuples of them.  Everything
they use ships inside installed packages (scikit-learn's bundled datasets,
scikit-image's bundled images): nothing is downloaded.

Relative paths given to ``load`` are resolved against :data:`base_dir`, which
the compiler sets, for the whole compile, to the spec's folder (or, for a spec
given as text, to the current folder or the API's ``base_dir=``).
"""

from __future__ import annotations

import contextvars
import functools
import operator
import zipfile
from pathlib import Path

import numpy as np

from bil.stdlib import files
from bil.stdlib.errors import StdlibError
from bil.stdlib.registry import closest, register

#: Folder that relative ``load`` paths are resolved against; the compiler sets
#: it to the spec's folder.  The default ``Path(".")`` means the current
#: working directory at the time of the call.
base_dir: contextvars.ContextVar[Path | str] = contextvars.ContextVar("base_dir", default=Path("."))
#: what :data:`base_dir` is, in words (``{}``: the folder), for the hint of a missing file
base_origin: contextvars.ContextVar[str] = contextvars.ContextVar("base_origin", default="the current folder ({})")


def _unknown(what, name, known, arg="name"):
    near = closest(str(name), list(known))
    hint = (f"did you mean {near!r}? " if near else "") + f"known {what}s: {', '.join(known)}"
    return StdlibError(f"unknown {what} {name!r}", hint=hint, arg=arg)


def _int(value, fname, arg, lo=None):
    try:
        value = operator.index(value)
    except TypeError:
        raise StdlibError(f"{fname}: {arg} must be an integer, got {value!r}", arg=arg) from None
    if lo is not None and value < lo:
        raise StdlibError(f"{fname}: {arg} must be >= {lo}, got {value}", arg=arg)
    return value


# --------------------------------------------------------------------------
# datasets

#: name -> scikit-learn loader; only datasets bundled with the package (no network).
_DATASETS = {
    "breast_cancer": "load_breast_cancer",
    "diabetes": "load_diabetes",
    "digits": "load_digits",
    "iris": "load_iris",
    "linnerud": "load_linnerud",
    "wine": "load_wine",
}


@functools.lru_cache(maxsize=None)
def _raw_dataset(name):
    import sklearn.datasets

    X, y = getattr(sklearn.datasets, _DATASETS[name])(return_X_y=True)
    X = np.asarray(X, dtype=np.float64)
    if np.issubdtype(np.asarray(y).dtype, np.integer):
        # Class labels as 0..K-1 whatever the loader used.
        y = np.unique(y, return_inverse=True)[1].reshape(np.shape(y)).astype(np.int64)
    else:
        y = np.asarray(y, dtype=np.float64)
    X.flags.writeable = False
    y.flags.writeable = False
    return X, y


def _standardize(train, *others):
    """Center and scale columns with the training statistics (std 0 -> 1)."""
    mu = train.mean(axis=0)
    sd = train.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)  # constant columns (digits' border pixels) stay finite
    return tuple((a - mu) / sd for a in (train, *others))


def _split_sizes(split, n):
    """``(ntr, nval)`` for ``split=``: a training fraction in (0, 1) or an int count of
    training samples (two parts), or a pair of them (three parts: train, val, test)."""
    parts = tuple(split) if isinstance(split, (tuple, list)) else (split,)
    if len(parts) not in (1, 2):
        raise StdlibError(f"dataset: split must be one number or a pair, got {split!r}", arg="split",
                          hint="split=0.5 (train, val) or split=(0.6, 0.2) (train, val, test)")
    sizes = []
    for p in parts:
        if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, float, np.integer, np.floating)):
            raise StdlibError(f"dataset: split must be a number or a pair of numbers, got {split!r}", arg="split")
        # a fraction in (0, 1) of all n samples, or (an int >= 1) a number of samples; 1.0 is neither
        if 0 < p < 1:
            sizes.append(int(round(p * n)))
        elif isinstance(p, (int, np.integer)) and p >= 1:
            sizes.append(int(p))
        else:
            raise StdlibError(f"dataset: split={split!r} is not a fraction in (0, 1)", arg="split",
                              hint="split is the fraction of samples used for training, e.g. split=0.5, "
                                   "or (train, val) fractions, e.g. split=(0.6, 0.2)")
    rest = n - sum(sizes)
    if min(sizes) < 1 or rest < 1:
        names = ("training", "validation", "test")[: len(sizes) + 1]
        got = ", ".join(f"{k} for {w}" for k, w in zip(sizes, names[:-1]))
        raise StdlibError(f"dataset: split={split!r} leaves {got} and {rest} of {n} samples for {names[-1]}; "
                          "every part must be non-empty", arg="split")
    return sizes[0], (sizes[1] if len(sizes) == 2 else None)


def _corrupt(y, idx, fraction, rng, nclass):
    """Flip ``round(fraction * len(idx))`` of the labels ``y[idx]`` (drawn without replacement)
    to another class, uniformly among the other ``nclass - 1``."""
    m = int(round(fraction * len(idx)))
    pick = idx[rng.choice(len(idx), size=m, replace=False)]
    y[pick] = (y[pick] + rng.integers(1, nclass, size=m)) % nclass


def _check_corrupt(corrupt_labels, y):
    if isinstance(corrupt_labels, (bool, np.bool_)) or not isinstance(
            corrupt_labels, (int, float, np.integer, np.floating)) or not 0 <= corrupt_labels <= 1:
        raise StdlibError(f"dataset: corrupt_labels must be a fraction in [0, 1], got {corrupt_labels!r}",
                          arg="corrupt_labels", hint="e.g. corrupt_labels=0.2 flips 20% of the training labels")
    if corrupt_labels and not np.issubdtype(y.dtype, np.integer):
        raise StdlibError("dataset: corrupt_labels needs class labels; this dataset's targets are real numbers",
                          arg="corrupt_labels", hint="use a classification dataset: breast_cancer, digits, iris, wine")


@register("dataset", kind="source", static=("name", "split", "seed", "standardize", "corrupt_labels"),
          doc="A bundled scikit-learn dataset as (X, y), (Xtr, ytr, Xval, yval) with split=ftr, or train/val/test "
              "with split=(ftr, fval).")
def dataset(name, split=None, seed=0, standardize=False, corrupt_labels=0.0):
    """A bundled dataset as (X, y), (Xtr, ytr, Xval, yval) with split=ftr, or train/val/test with split=(ftr, fval).

    The recipe, reproducible with NumPy alone (``X, y`` from scikit-learn's ``load_NAME(return_X_y=True)``,
    class labels mapped to 0..K-1 by ``np.unique``): ``rng = np.random.default_rng(seed)``,
    ``perm = rng.permutation(n)``; training rows ``perm[:ntr]``, validation ``perm[ntr:ntr + nval]``, test
    the rest, with ``ntr = round(ftr * n)`` (an int is a count).  ``corrupt_labels=c`` then, with the same
    ``rng``, picks ``round(c * ntr)`` training rows by ``rng.choice(ntr, m, replace=False)`` and adds
    ``rng.integers(1, K, m)`` to their labels modulo K.  ``standardize`` centres and scales X (and a real y)
    with the training part's mean and std (std 0 counts as 1).
    """
    if name not in _DATASETS:
        raise _unknown("dataset", name, sorted(_DATASETS))
    if not isinstance(standardize, (bool, np.bool_)):
        raise StdlibError(f"dataset: standardize must be true or false, got {standardize!r}", arg="standardize",
                          hint="e.g. dataset(\"diabetes\", standardize=true)")
    X, y = _raw_dataset(name)
    _check_corrupt(corrupt_labels, y)
    n = X.shape[0]
    regression = np.issubdtype(y.dtype, np.floating)
    nclass = int(y.max()) + 1 if not regression else 0
    rng = np.random.default_rng(_int(seed, "dataset", "seed"))
    if split is None:
        X, y = np.array(X), np.array(y)
        if corrupt_labels:
            _corrupt(y, np.arange(n), corrupt_labels, rng, nclass)
        parts = [(X, y)]
    else:
        ntr, nva = _split_sizes(split, n)
        perm = rng.permutation(n)
        bounds = [0, ntr] + ([ntr + nva] if nva is not None else []) + [n]
        parts = [(X[perm[a:b]], y[perm[a:b]]) for a, b in zip(bounds, bounds[1:])]
        if corrupt_labels:
            _corrupt(parts[0][1], np.arange(ntr), corrupt_labels, rng, nclass)
    if standardize:
        xs = _standardize(*(p[0] for p in parts))
        ys = _standardize(*(p[1] for p in parts)) if regression else [p[1] for p in parts]
        parts = list(zip(xs, ys))
    return tuple(a for pair in parts for a in pair)


# --------------------------------------------------------------------------
# images

#: scikit-image images that ship inside the package (checked to load offline).
_IMAGES = (
    "astronaut",
    "brick",
    "camera",
    "cat",
    "cell",
    "checkerboard",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "colorwheel",
    "grass",
    "gravel",
    "horse",
    "hubble_deep_field",
    "immunohistochemistry",
    "logo",
    "microaneurysms",
    "moon",
    "page",
    "retina",
    "rocket",
    "shepp_logan_phantom",
    "text",
)


@functools.lru_cache(maxsize=None)
def _gray(name):
    """Image ``name`` as a read-only float64 grayscale array in [0, 1]."""
    import skimage.color
    import skimage.data
    import skimage.util

    try:
        img = getattr(skimage.data, name)()
    except Exception as e:  # noqa: BLE001 - e.g. a file that needs an optional download
        raise StdlibError(
            f"image {name!r} could not be loaded: {e}",
            hint="this scikit-image installation does not ship it; try 'camera' or 'moon'",
            arg="name",
        ) from None
    img = skimage.util.img_as_float64(np.asarray(img))
    if img.ndim == 3 and img.shape[-1] == 4:
        img = skimage.color.rgba2rgb(img)
    if img.ndim == 3:
        img = skimage.color.rgb2gray(img)
    img = np.clip(img, 0.0, 1.0)
    img.flags.writeable = False
    return img


def _size(size, fname):
    """``size`` as (height, width): an int n means n x n."""
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return tuple(_int(s, fname, "size", lo=1) for s in size)
    s = _int(size, fname, "size", lo=1)
    return (s, s)


@register("image", kind="source", static=("name", "size"))
def image(name, size=None):
    """A bundled scikit-image picture as a grayscale float64 array in [0, 1], resized to size x size if given (skimage.transform.resize, anti-aliased)."""
    if name not in _IMAGES:
        raise _unknown("image", name, _IMAGES)
    img = _gray(name)
    if size is not None:
        import skimage.transform

        img = skimage.transform.resize(img, _size(size, "image"), anti_aliasing=True)
    return np.array(np.clip(img, 0.0, 1.0), dtype=np.float64)


@register("denoising_pairs", kind="source", static=("names", "size", "sigma", "seed"))
def denoising_pairs(names, size=None, sigma=0.1, seed=0):
    """Stacked (clean, noisy) images [N, size, size] (each as image(name, size)); noisy = clean + sigma * numpy.random.default_rng(seed).standard_normal((N, size, size))."""
    if isinstance(names, str):
        names = [names]
    names = list(names)
    if not names:
        raise StdlibError("denoising_pairs: no image names given", hint='e.g. ["camera", "moon"]', arg="names")
    for nm in names:
        if nm not in _IMAGES:
            raise _unknown("image", nm, _IMAGES, arg="names")
    if not isinstance(sigma, (int, float, np.integer, np.floating)) or isinstance(sigma, bool) or sigma < 0:
        raise StdlibError(f"denoising_pairs: sigma must be a number >= 0, got {sigma!r}", arg="sigma")
    clean = [image(nm, size) for nm in names]
    shapes = {c.shape for c in clean}
    if len(shapes) > 1:
        raise StdlibError(
            f"denoising_pairs: the images have different shapes {sorted(shapes)}",
            hint="pass size= to resize them all, e.g. size=64",
            arg="size",
        )
    clean = np.stack(clean)
    rng = np.random.default_rng(_int(seed, "denoising_pairs", "seed"))
    noisy = clean + float(sigma) * rng.standard_normal(clean.shape)
    return clean, noisy


# --------------------------------------------------------------------------
# files (where a file may be, its size limits and what errors show: bil.stdlib.files)

_FORMATS = files.FORMATS


def _as_numeric(a, where):
    a = np.asarray(a)
    if a.dtype == bool:
        return a
    if np.issubdtype(a.dtype, np.integer):
        return a.astype(np.int64)
    if np.issubdtype(a.dtype, np.floating):
        return a.astype(np.float64)
    raise StdlibError(f"load: {where} holds non-numeric data (dtype {a.dtype})", hint="store numeric arrays")


@register("load", kind="source", static=("path", "key"))
def load(path, key=None):
    """An array from a .npz (key selects the array), .npy or .csv/.tsv/.txt file, relative to the spec's folder."""
    # Only files inside the spec's folder (or an allowed folder) are read, sizes are checked
    # from headers first, and errors never quote the file's contents (bil/stdlib/files.py).
    p = files.resolve(path, Path(base_dir.get()), base_origin.get())
    suffix = p.suffix.lower()
    if suffix == ".npz" and not zipfile.is_zipfile(p):
        raise StdlibError(f"load: {p.name} is not a valid .npz file (not a zip archive)", arg="path",
                          hint="write it with numpy.savez(...) or numpy.savez_compressed(...)")
    if suffix == ".npz":
        try:
            with zipfile.ZipFile(p) as z:
                keys = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
        except (zipfile.BadZipFile, OSError) as e:
            raise StdlibError(f"load: {p.name} is not a readable .npz file ({type(e).__name__})",
                              arg="path") from None
        if key is None:
            if len(keys) != 1:
                raise StdlibError(
                    f"load: {p.name} holds {len(keys)} arrays; say which one",
                    hint=f'pass a key, e.g. load("{path}", "{keys[0] if keys else "x"}"); keys: {", ".join(keys)}',
                    arg="key",
                )
            key = keys[0]
        if key not in keys:
            raise _unknown("key", key, keys, arg="key")
        files.check_npz(p, key)
        try:
            with np.load(p, allow_pickle=False) as z:
                return _as_numeric(z[key], f"{p.name}[{key!r}]")
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:  # e.g. truncated; never unpickled
            raise StdlibError(f"load: cannot read {p.name}[{key!r}] ({type(e).__name__})", arg="key") from None
    if key is not None and suffix == ".npy":
        raise StdlibError("load: key= applies to .npz files (and to columns of text files with a header)", arg="key")
    if suffix == ".npy":
        files.check_npy(p)
        try:
            return _as_numeric(np.load(p, allow_pickle=False), p.name)
        except (ValueError, OSError, EOFError) as e:
            raise StdlibError(f"load: cannot read {p.name} ({type(e).__name__})", arg="path") from None
    delimiter = {".csv": ",", ".tsv": "\t", ".txt": None}[suffix]
    return files.load_text(p, key, delimiter)
