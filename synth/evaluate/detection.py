"""Detection metric: a classifier two-sample test (C2ST) between real and synthetic rows."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from .fidelity import NULL_LABEL, _categorical, _columns, _is_numeric, _numeric

__all__ = ["alpha_precision_beta_recall", "c2st_auc", "encode_features", "logistic_detection", "one_hot_features"]

#: categories beyond this many (most frequent first) share one "other" code; stays below
#: HistGradientBoosting's ``max_bins`` (255) limit on categorical codes.
_MAX_CAT_CODES = 250


def encode_features(
    frames: list[pd.DataFrame], kinds: Mapping[str, str], columns: list[str]
) -> tuple[list[np.ndarray], list[bool], list[str]]:
    """Encode several frames consistently for HistGradientBoosting.

    Numeric/datetime columns stay numeric (datetimes as epoch ns) with NaN for nulls;
    categorical/boolean columns become shared ordinal codes (NaN for nulls, handled natively
    by the model), the ``_MAX_CAT_CODES`` most frequent pooled values keeping their own code
    and the rest sharing one.  A column that had to be capped also gets a numeric feature
    holding each value's pooled frequency, so that e.g. invented or over-repeated rare
    categories remain detectable.  The encoding never looks at labels.

    Returns ``(matrices, categorical_mask, feature_names)``.
    """
    sizes = [len(f) for f in frames]
    bounds = np.cumsum([0] + sizes)
    blocks: list[np.ndarray] = []
    mask: list[bool] = []
    names: list[str] = []
    for col in columns:
        kind = kinds[col]
        if _is_numeric(kind):
            blocks.append(np.concatenate([_numeric(f[col], kind) for f in frames]))
            mask.append(False)
            names.append(col)
            continue
        pooled = pd.concat([_categorical(f[col]) for f in frames], ignore_index=True)
        null = (pooled == NULL_LABEL).to_numpy()
        codes, uniques = pd.factorize(pooled, sort=False)
        counts = np.bincount(codes, minlength=len(uniques))
        counts_nonnull = counts.copy()
        null_pos = pd.Index(uniques).get_indexer([NULL_LABEL])[0]
        if null_pos >= 0:
            counts_nonnull[null_pos] = -1
        order = np.argsort(-counts_nonnull, kind="stable")
        n_keep = min(_MAX_CAT_CODES, int((counts_nonnull > 0).sum()))
        mapping = np.full(len(uniques), float(n_keep))  # "other"
        mapping[order[:n_keep]] = np.arange(n_keep, dtype=float)
        enc = mapping[codes]
        enc[null] = np.nan
        blocks.append(enc)
        mask.append(True)
        names.append(col)
        if (counts_nonnull > 0).sum() > _MAX_CAT_CODES:
            freq = counts[codes].astype(float)
            freq[null] = np.nan
            blocks.append(freq)
            mask.append(False)
            names.append(f"{col}__count")
    X = np.column_stack(blocks) if blocks else np.zeros((int(bounds[-1]), 0))
    return [X[bounds[i]: bounds[i + 1]] for i in range(len(frames))], mask, names


def c2st_auc(
    real: pd.DataFrame,
    synth: pd.DataFrame,
    kinds: Mapping[str, str],
    *,
    seed: int,
    max_rows: int = 10000,
    n_splits: int = 5,
) -> float:
    """Classifier two-sample test: mean ROC AUC of telling real rows from synthetic rows.

    ``n = min(len(real), len(synth), max_rows // 2)`` rows are sampled from each side
    (balanced classes, at most ``max_rows`` rows in all), encoded with
    :func:`encode_features` and classified by a ``HistGradientBoostingClassifier`` with
    native categorical and missing-value support; the score is the mean AUC over an
    ``n_splits``-fold stratified cross-validation.  0.5 means indistinguishable, 1.0
    perfectly separable (values slightly below 0.5 are noise).  Deterministic for a given
    ``seed``.
    """
    cols = _columns(kinds, real, synth)
    n = min(len(real), len(synth), max_rows // 2)
    if n < n_splits:
        raise ValueError(f"need at least {n_splits} rows on each side, got {n}")
    rng = np.random.default_rng(seed)
    ri = np.sort(rng.choice(len(real), size=n, replace=False))
    si = np.sort(rng.choice(len(synth), size=n, replace=False))
    (Xr, Xs), cat_mask, _ = encode_features([real.iloc[ri], synth.iloc[si]], kinds, cols)
    X = np.vstack([Xr, Xs])
    y = np.concatenate([np.zeros(n, dtype=np.int64), np.ones(n, dtype=np.int64)])
    if X.shape[1] == 0:
        return 0.5

    folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    aucs = []
    for k, (tr, te) in enumerate(folds.split(X, y)):
        clf = HistGradientBoostingClassifier(
            categorical_features=np.asarray(cat_mask, dtype=bool),
            max_iter=100,
            early_stopping=False,
            random_state=seed + k,
        )
        clf.fit(X[tr], y[tr])
        aucs.append(roc_auc_score(y[te], clf.predict_proba(X[te])[:, 1]))
    return float(np.mean(aucs))


def one_hot_features(frames: list[pd.DataFrame], kinds: Mapping[str, str], columns: list[str],
                     max_categories: int = 50) -> list[np.ndarray]:
    """Frames as dense numeric matrices for linear and distance-based metrics: numerics scaled by
    the first frame's mean/std (nulls at the mean plus a null flag), categoricals one-hot over the
    first frame's `max_categories` most frequent values (the rest share one column)."""
    blocks: list[list[np.ndarray]] = [[] for _ in frames]
    for col in columns:
        kind = kinds[col]
        if _is_numeric(kind):
            vals = [_numeric(f[col], kind).astype(float) for f in frames]
            ref = vals[0][np.isfinite(vals[0])]
            mu, sd = (float(ref.mean()), float(ref.std()) or 1.0) if len(ref) else (0.0, 1.0)
            for b, v in zip(blocks, vals):
                null = ~np.isfinite(v)
                b.append(np.where(null, 0.0, (v - mu) / sd)[:, None])
                if any((~np.isfinite(x)).any() for x in vals):
                    b.append(null[:, None].astype(float))
            continue
        cats = [_categorical(f[col]) for f in frames]
        top = list(cats[0].value_counts().index[:max_categories])
        for b, c in zip(blocks, cats):
            onehot = np.stack([(c == v).to_numpy() for v in top] + [~c.isin(top).to_numpy()], axis=1)
            b.append(onehot.astype(float))
    return [np.hstack(b) if b else np.zeros((len(f), 0)) for b, f in zip(blocks, frames)]


def logistic_detection(real: pd.DataFrame, synth: pd.DataFrame, kinds: Mapping[str, str], *, seed: int,
                       max_rows: int = 10000, n_splits: int = 3) -> float:
    """SDMetrics' LogisticDetection definition: a logistic regression telling real from synthetic
    rows (scaled numerics, one-hot categoricals, stratified cross-validation); the score is
    ``1 - (2 * max(AUC, 0.5) - 1)``: 1 = indistinguishable, 0 = fully separable. The linear
    counterpart of :func:`c2st_auc`, reported so numbers line up with published tables."""
    from sklearn.linear_model import LogisticRegression

    cols = _columns(kinds, real, synth)
    n = min(len(real), len(synth), max_rows // 2)
    rng = np.random.default_rng(seed)
    r = real.iloc[np.sort(rng.choice(len(real), n, replace=False))]
    s = synth.iloc[np.sort(rng.choice(len(synth), n, replace=False))]
    Xr, Xs = one_hot_features([r, s], kinds, cols)
    X, y = np.vstack([Xr, Xs]), np.r_[np.zeros(n), np.ones(n)]
    if X.shape[1] == 0:
        return 1.0
    aucs = []
    for tr, te in StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(X, y):
        clf = LogisticRegression(max_iter=500).fit(X[tr], y[tr])
        aucs.append(roc_auc_score(y[te], clf.predict_proba(X[te])[:, 1]))
    return float(1.0 - (2.0 * max(float(np.mean(aucs)), 0.5) - 1.0))


def alpha_precision_beta_recall(real: pd.DataFrame, synth: pd.DataFrame, kinds: Mapping[str, str], *, seed: int,
                                max_rows: int = 5000, n_alphas: int = 30) -> dict:
    """α-precision, β-recall and authenticity (Alaa et al. 2022, the synthcity definitions) in the
    scaled one-hot feature space of :func:`one_hot_features`, centred on the real rows' mean (the
    "naive" variant: no learnt one-class embedding).

    α-precision: for each α, the share of synthetic rows inside the ball holding the α most typical
    real rows, against α (1 = synthetic rows are as typical as real ones); β-recall: the share of
    real rows whose nearest synthetic row lies within their own nearest-real distance and among the
    β most typical synthetic rows, against β; authenticity: share of synthetic rows farther from
    their nearest real row than that real row is from its own nearest real neighbour."""
    from sklearn.neighbors import NearestNeighbors

    cols = _columns(kinds, real, synth)
    rng = np.random.default_rng(seed)
    r = real.iloc[np.sort(rng.choice(len(real), min(len(real), max_rows), replace=False))]
    s = synth.iloc[np.sort(rng.choice(len(synth), min(len(synth), max_rows), replace=False))]
    X, Y = one_hot_features([r, s], kinds, cols)
    alphas = np.linspace(0, 1, n_alphas)
    center = X.mean(axis=0)
    radii = np.quantile(np.linalg.norm(X - center, axis=1), alphas)
    syn_d = np.linalg.norm(Y - center, axis=1)
    precision_curve = np.array([(syn_d <= rad).mean() for rad in radii])
    real_nn = NearestNeighbors(n_neighbors=2).fit(X)
    real_to_real = real_nn.kneighbors(X)[0][:, 1]
    real_to_syn, idx = NearestNeighbors(n_neighbors=1).fit(Y).kneighbors(X)
    real_to_syn, idx = real_to_syn[:, 0], idx[:, 0]
    closest_d = np.linalg.norm(Y[idx] - Y.mean(axis=0), axis=1)
    syn_radii = np.quantile(closest_d, alphas)
    recall_curve = np.array([((real_to_syn <= real_to_real) & (closest_d <= rad)).mean() for rad in syn_radii])
    syn_to_real, ridx = real_nn.kneighbors(Y, n_neighbors=1)
    authentic = syn_to_real[:, 0] > real_to_real[ridx[:, 0]]
    return {"alpha_precision": float(1 - np.abs(precision_curve - alphas).sum() / alphas.sum()),
            "beta_recall": float(1 - np.abs(recall_curve - alphas).sum() / alphas.sum()),
            "authenticity": float(authentic.mean()), "rows": [len(r), len(s)],
            "variant": "naive (scaled one-hot features, real mean as centre)"}
