"""Fidelity of array columns (images, series windows): what `evaluate` reports for them.

Images (arrays of two or more dimensions) are compared in a feature space learnt from the real
training arrays: the hidden layer of a small classifier of the label column when the table has
one (the model's class condition), else a PCA of the pixels. In that space:

- KID: unbiased MMD^2 with the cubic polynomial kernel (Binkowski et al. 2018), synthetic vs
  held-out real; the real training arrays vs held-out real give the floor it should approach;
- precision / recall of k-NN manifolds (Kynkaanniemi et al. 2019);
- label accuracy: the classifier (trained on real arrays) labels each synthetic array; the share
  that gets the label its row carries (a conditional model must draw the class it was asked for).

Series (one-dimensional arrays): mean autocorrelation over lags 1..L/2, the normalised
periodogram (log-spectral distance in dB) and the marginal Wasserstein distance (in real std
units), synthetic vs held-out real, with real-train vs held-out as the floor and time-shuffled
real windows as the no-structure ceiling.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from synth.table.columns.array import flatten

MAX_ROWS = 2000  # pairwise-distance metrics are quadratic: compare at most this many arrays per side


def kid(a: np.ndarray, b: np.ndarray) -> float:
    d = a.shape[1]
    kaa, kbb, kab = ((x @ y.T / d + 1.0) ** 3 for x, y in ((a, a), (b, b), (a, b)))
    m, n = len(a), len(b)
    return float((kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
                 - 2 * kab.mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    from sklearn.metrics import pairwise_distances

    def radii(x: np.ndarray) -> np.ndarray:
        return np.sort(pairwise_distances(x), axis=1)[:, min(k, len(x) - 1)]  # index 0 is the point itself

    r_real, r_fake = radii(real), radii(fake)
    d = pairwise_distances(fake, real)
    return float(np.mean((d <= r_real[None, :]).any(axis=1))), float(np.mean((d.T <= r_fake[None, :]).any(axis=1)))


def acf(x: np.ndarray, lags: int) -> np.ndarray:
    """Mean over windows of each window's sample autocorrelation at lags 1..lags."""
    x = x - x.mean(axis=1, keepdims=True)
    var = (x ** 2).sum(axis=1)
    var[var == 0] = 1.0
    return np.stack([(x[:, :-k] * x[:, k:]).sum(axis=1) / var for k in range(1, lags + 1)], axis=1).mean(axis=0)


def spectrum(x: np.ndarray) -> np.ndarray:
    from scipy.signal import periodogram

    _, p = periodogram(x, axis=1, detrend="constant")
    p = p[:, 1:]
    return (p / np.maximum(p.sum(axis=1, keepdims=True), 1e-12)).mean(axis=0)


def series_scores(x: np.ndarray, real: np.ndarray, lags: int | None = None) -> dict:
    from scipy.stats import wasserstein_distance

    lags = lags or max(1, min(48, real.shape[1] // 2))
    a, ar = acf(x, lags), acf(real, lags)
    s, sr = spectrum(x), spectrum(real)
    return {"acf_mae": float(np.abs(a - ar).mean()), "acf_max_err": float(np.abs(a - ar).max()),
            "spectrum_l1": float(np.abs(s - sr).sum()),
            "log_spectral_distance": float(np.sqrt(np.mean((10 * np.log10((s + 1e-12) / (sr + 1e-12))) ** 2))),
            "marginal_wasserstein_over_std": float(wasserstein_distance(x.ravel(), real.ravel())
                                                   / max(real.std(), 1e-12))}


class FeatureSpace:
    """Features of flattened images learnt from real training arrays (and labels, when given)."""

    def __init__(self, x: np.ndarray, labels: np.ndarray | None, seed: int):
        self.scale = max(float(np.abs(x).max()), 1e-12)
        xs = x / self.scale
        self.clf = None
        if labels is not None and len(np.unique(labels)) > 1:
            from sklearn.neural_network import MLPClassifier

            self.clf = MLPClassifier(hidden_layer_sizes=(128,), max_iter=400, random_state=seed).fit(xs, labels)
        else:
            from sklearn.decomposition import PCA

            self.pca = PCA(n_components=min(32, xs.shape[1], len(xs)), random_state=seed).fit(xs)

    @property
    def name(self) -> str:
        return "hidden layer of an MLP classifier of the label (128 units)" if self.clf else "PCA of pixels (32)"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        xs = x / self.scale
        if self.clf is not None:
            return np.maximum(xs @ self.clf.coefs_[0] + self.clf.intercepts_[0], 0.0)
        return self.pca.transform(xs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.clf.predict(x / self.scale)


def _sample(x: np.ndarray, labels: np.ndarray | None, rng: np.random.Generator):
    if len(x) <= MAX_ROWS:
        return x, labels
    keep = np.sort(rng.choice(len(x), MAX_ROWS, replace=False))
    return x[keep], None if labels is None else labels[keep]


def label_column(kinds: dict[str, str], table: pa.Table) -> str | None:
    """The class label of array rows: the table's one categorical column (None if not exactly one)."""
    cats = [c for c, k in kinds.items() if k in ("categorical", "boolean") and c in table.schema.names]
    return cats[0] if len(cats) == 1 else None


def evaluate_arrays(train: pa.Table, test: pa.Table, synthetic: pa.Table, kinds: dict[str, str], *,
                    seed: int = 0) -> dict:
    """{array column: metrics} for every array column in `kinds` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    label = label_column(kinds, train)
    out: dict[str, dict] = {}
    for col in (c for c, k in kinds.items() if k == "array"):
        tr, shape = flatten(col, train.column(col))
        te, _ = flatten(col, test.column(col), shape)
        sy, _ = flatten(col, synthetic.column(col), shape)
        lab = lambda t: np.asarray(t.column(label).to_pylist(), dtype=object).astype(str) if label else None  # noqa: E731
        tr, y_tr = _sample(tr, lab(train), rng)
        te, y_te = _sample(te, lab(test), rng)
        sy, y_sy = _sample(sy, lab(synthetic), rng)
        if len(shape) == 1:
            shuffled = rng.permuted(tr[:len(te)], axis=1)
            out[col] = {"kind": "series", "shape": shape, **series_scores(sy, te),
                        "reference": {"real_train": series_scores(tr, te), "time_shuffled_real": series_scores(shuffled, te)}}
            continue
        space = FeatureSpace(tr, y_tr, seed)
        f_tr, f_te, f_sy = space(tr), space(te), space(sy)
        p, r = precision_recall(f_te, f_sy)
        p0, r0 = precision_recall(f_te, f_tr[:len(f_sy)])
        m = {"kind": "image", "shape": shape, "features": space.name, "kid": kid(f_sy, f_te),
             "precision": p, "recall": r,
             "reference": {"real_train": {"kid": kid(f_tr, f_te), "precision": p0, "recall": r0}}}
        if space.clf is not None:
            m["label"] = label
            m["label_accuracy"] = float(np.mean(space.predict(sy) == y_sy))
            m["reference"]["real_heldout_label_accuracy"] = float(np.mean(space.predict(te) == y_te))
        out[col] = m
    return out
