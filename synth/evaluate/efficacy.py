"""Machine-learning efficacy: train on synthetic, test on real (TSTR) against train-real-test-real."""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.metrics import accuracy_score, f1_score, r2_score, roc_auc_score

from .fidelity import CATEGORICAL_KINDS, NULL_LABEL, _categorical, _columns, _is_numeric, _numeric

__all__ = ["ml_efficacy"]

_MAX_CAT_CODES = 250  # below HistGradientBoosting's max_bins=255


def _fit_encoder(
    train: pd.DataFrame, kinds: Mapping[str, str], columns: list[str]
) -> tuple[Callable[[pd.DataFrame], np.ndarray], np.ndarray]:
    """Fit a feature encoder on one training frame only (nothing is learnt from test data).

    Numeric/datetime: float (epoch ns), NaN for nulls.  Categorical/boolean: codes of the
    ``_MAX_CAT_CODES`` most frequent non-null training values; any other value (rare or
    unseen at fit time) shares an "other" code; nulls are NaN (native missing support).
    Returns ``(transform, categorical_mask)``.
    """
    vocab: dict[str, pd.Index] = {}
    for col in columns:
        if not _is_numeric(kinds[col]):
            s = _categorical(train[col])
            counts = s[s != NULL_LABEL].value_counts(sort=False)
            # stable order: most frequent first, ties by first appearance in the data
            order = np.argsort(-counts.to_numpy(), kind="stable")
            vocab[col] = pd.Index(counts.index[order[:_MAX_CAT_CODES]])

    def transform(frame: pd.DataFrame) -> np.ndarray:
        blocks = []
        for col in columns:
            kind = kinds[col]
            if _is_numeric(kind):
                blocks.append(_numeric(frame[col], kind))
            else:
                s = _categorical(frame[col])
                codes = vocab[col].get_indexer(s).astype(np.float64)
                codes[codes < 0] = len(vocab[col])  # "other"
                codes[(s == NULL_LABEL).to_numpy()] = np.nan
                blocks.append(codes)
        return np.column_stack(blocks) if blocks else np.zeros((len(frame), 0))

    mask = np.array([not _is_numeric(kinds[c]) for c in columns], dtype=bool)
    return transform, mask


class _Constant:
    """Stand-in classifier when the training labels hold a single class."""

    def __init__(self, label: str):
        self.classes_ = np.array([label], dtype=object)

    def predict(self, X):
        return np.full(len(X), self.classes_[0], dtype=object)

    def predict_proba(self, X):
        return np.ones((len(X), 1))


def _labels(series: pd.Series) -> np.ndarray:
    return _categorical(series).astype(str).to_numpy(dtype=object)


def _score_one(
    train: pd.DataFrame,
    test: pd.DataFrame,
    kinds: Mapping[str, str],
    features: list[str],
    target: str,
    classification: bool,
    seed: int,
    max_iter: int,
) -> dict:
    transform, cat_mask = _fit_encoder(train, kinds, features)
    X_tr, X_te = transform(train), transform(test)
    if classification:
        y_tr, y_te = _labels(train[target]), _labels(test[target])
        if len(np.unique(y_tr)) < 2:
            model = _Constant(y_tr[0])
        else:
            model = HistGradientBoostingClassifier(
                categorical_features=cat_mask, max_iter=max_iter, early_stopping=False,
                random_state=seed)
            model.fit(X_tr, y_tr)
        pred = model.predict(X_te)
        test_classes = np.unique(y_te)
        out = {
            "f1_macro": float(f1_score(y_te, pred, labels=test_classes, average="macro",
                                       zero_division=0)),
            "accuracy": float(accuracy_score(y_te, pred)),
        }
        if len(test_classes) == 2:
            pos = test_classes[1]
            classes = list(model.classes_)
            proba = model.predict_proba(X_te)
            p = proba[:, classes.index(pos)] if pos in classes else np.zeros(len(y_te))
            out["auc"] = float(roc_auc_score(y_te == pos, p))
        return out
    y_tr, y_te = _numeric(train[target], kinds[target]), _numeric(test[target], kinds[target])
    model = HistGradientBoostingRegressor(
        categorical_features=cat_mask, max_iter=max_iter, early_stopping=False, random_state=seed)
    model.fit(X_tr, y_tr)
    return {"r2": float(r2_score(y_te, model.predict(X_te)))}


def ml_efficacy(
    train_real: pd.DataFrame,
    synth: pd.DataFrame,
    test_real: pd.DataFrame,
    kinds: Mapping[str, str],
    target: str,
    *,
    seed: int,
    max_train_rows: int = 50_000,
    max_iter: int = 100,
) -> dict:
    """Train-on-synthetic / test-on-real efficacy relative to train-on-real / test-on-real.

    The same ``HistGradientBoosting`` model (native categorical and missing support; all
    columns of ``kinds`` except ``target`` as features; encoder fitted on the training frame
    only) is trained once on ``synth`` and once on ``train_real`` (each subsampled to
    ``max_train_rows`` with ``seed``) and scored on ``test_real``.  Rows whose target is
    null are dropped from all three frames.

    * categorical/boolean target (classification): ``f1_macro`` (macro F1 over the test
      classes), ``accuracy`` and, when the test target is binary, ``auc``;
    * numeric/datetime target (regression): ``r2``.

    Returns ``{"task", "target", "real": {metric: v}, "synthetic": {metric: v},
    "ratio": {metric: synthetic / real or None when real <= 0}, "n_train_real",
    "n_train_synthetic", "n_test"}``.
    """
    cols = _columns(kinds, train_real, synth, test_real)
    if target not in kinds:
        raise KeyError(f"target {target!r} not in kinds")
    features = [c for c in cols if c != target]
    classification = kinds[target] in CATEGORICAL_KINDS
    rng = np.random.default_rng(seed)

    def prepare(frame: pd.DataFrame, cap: int | None) -> pd.DataFrame:
        frame = frame[frame[target].notna()]
        if cap is not None and len(frame) > cap:
            frame = frame.iloc[np.sort(rng.choice(len(frame), size=cap, replace=False))]
        return frame

    tr_real = prepare(train_real, max_train_rows)
    tr_syn = prepare(synth, max_train_rows)
    te = prepare(test_real, None)
    if min(len(tr_real), len(tr_syn), len(te)) == 0:
        raise ValueError("a frame has no rows with a non-null target")

    real_scores = _score_one(tr_real, te, kinds, features, target, classification, seed, max_iter)
    syn_scores = _score_one(tr_syn, te, kinds, features, target, classification, seed, max_iter)
    ratio = {k: (syn_scores[k] / v if v is not None and v > 0 else None)
             for k, v in real_scores.items()}
    return {
        "task": "classification" if classification else "regression",
        "target": target,
        "real": real_scores,
        "synthetic": syn_scores,
        "ratio": ratio,
        "n_train_real": int(len(tr_real)),
        "n_train_synthetic": int(len(tr_syn)),
        "n_test": int(len(te)),
    }
