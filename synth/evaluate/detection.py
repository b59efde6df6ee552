"""Detection metric: a classifier two-sample test (C2ST) between real and synthetic rows."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from .fidelity import NULL_LABEL, _categorical, _columns, _is_numeric, _numeric

__all__ = ["c2st_auc", "encode_features"]

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
