"""One call that runs every evaluation metric and returns a JSON-serialisable dict."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .detection import alpha_precision_beta_recall, c2st_auc, logistic_detection
from .efficacy import ml_efficacy
from .fidelity import column_shapes, fit_report, pair_trends
from .privacy import distance_to_closest_record, membership_inference

__all__ = ["evaluate", "summary_table", "to_jsonable"]


def to_jsonable(obj: Any) -> Any:
    """Plain Python types only: numpy scalars -> int/float/bool, NaN/inf -> None, tuples and
    arrays -> lists, mapping keys -> str."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def evaluate(
    train_real: pd.DataFrame,
    test_real: pd.DataFrame,
    synth: pd.DataFrame,
    kinds: Mapping[str, str],
    *,
    target: str | None = None,
    seed: int = 0,
) -> dict:
    """Run the whole evaluation suite.

    Fidelity and detection compare ``synth`` with ``train_real`` (the data the generator
    learnt from); ML efficacy trains on ``synth`` / ``train_real`` and tests on
    ``test_real``; privacy measures distances to ``train_real`` with ``test_real`` as the
    holdout.  Result keys:

    * ``column_shapes``, ``pair_trends``, ``fit``: :func:`column_shapes`,
      :func:`pair_trends`, :func:`fit_report`;
    * ``quality_score``: mean of the column-shapes and pair-trends means (as SDMetrics'
      QualityReport score);
    * ``detection``: ``{"c2st_auc", "score", "logistic_detection"}`` with ``score = 1 - (2 * max(auc, 0.5) - 1)``
      (1 = indistinguishable; SDMetrics' detection convention) and SDMetrics' LogisticDetection;
    * ``precision_recall``: α-precision, β-recall and authenticity (synthcity definitions);
    * ``efficacy``: :func:`ml_efficacy` for ``target`` or ``None`` without a target;
    * ``privacy``: :func:`distance_to_closest_record`, with ``membership_inference``
      (:func:`membership_inference`, train members vs test non-members) inside;
    * ``n_rows``: ``{"train", "test", "synthetic"}``.

    Everything is plain JSON (floats, ints, strings, lists, dicts, ``None``) and
    deterministic for a given ``seed``.
    """
    shapes = column_shapes(train_real, synth, kinds)
    trends = pair_trends(train_real, synth, kinds)
    fit = fit_report(train_real, synth, kinds)
    parts = [v for v in (shapes["mean"], trends["mean"]) if v is not None]
    auc = c2st_auc(train_real, synth, kinds, seed=seed)
    result = {
        "column_shapes": shapes,
        "pair_trends": trends,
        "fit": fit,
        "quality_score": float(np.mean(parts)) if parts else None,
        "detection": {"c2st_auc": auc, "score": 1.0 - (2.0 * max(auc, 0.5) - 1.0),
                      "logistic_detection": logistic_detection(train_real, synth, kinds, seed=seed)},
        "precision_recall": alpha_precision_beta_recall(train_real, synth, kinds, seed=seed),
        "efficacy": (ml_efficacy(train_real, synth, test_real, kinds, target, seed=seed)
                     if target is not None else None),
        "privacy": {**distance_to_closest_record(train_real, synth, test_real, kinds, seed=seed),
                    "membership_inference": _mia_or_none(train_real, synth, test_real, kinds, seed)},
        "n_rows": {"train": len(train_real), "test": len(test_real), "synthetic": len(synth)},
    }
    return to_jsonable(result)


def _mia_or_none(train_real, synth, test_real, kinds, seed) -> dict | None:
    if min(len(train_real), len(test_real) // 2) < 2 or len(synth) == 0:
        return None
    return membership_inference(train_real, synth, test_real, kinds, seed=seed)


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.2f}%" if pct else f"{v:.4f}"


def summary_table(result: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(metric name, formatted value)`` rows for printing a result of :func:`evaluate`.

    Sections absent from ``result`` (or ``None``) are skipped.
    """
    rows: list[tuple[str, str]] = []
    get = result.get
    if get("quality_score") is not None or "column_shapes" in result:
        rows.append(("Quality score (shapes+trends)", _fmt(get("quality_score"))))
    if get("column_shapes"):
        rows.append(("Column shapes (KS/TV complement)", _fmt(result["column_shapes"].get("mean"))))
    if get("pair_trends"):
        rows.append(("Column pair trends (corr/contingency)", _fmt(result["pair_trends"].get("mean"))))
    if get("fit"):
        fit = result["fit"]
        rows.append(("Fit overall", _fmt(fit.get("overall"))))
        rows.append(("Correlation matrix RMSE", _fmt(fit.get("correlation_rmse"))))
    if get("detection"):
        det = result["detection"]
        rows.append(("C2ST AUC (0.5 = indistinguishable)", _fmt(det.get("c2st_auc"))))
        rows.append(("Detection score", _fmt(det.get("score"))))
        if det.get("logistic_detection") is not None:
            rows.append(("LogisticDetection (SDMetrics definition, 1 = indistinguishable)",
                         _fmt(det["logistic_detection"])))
    if get("precision_recall"):
        pr_ = result["precision_recall"]
        rows.append(("alpha-precision / beta-recall / authenticity",
                     f"{_fmt(pr_.get('alpha_precision'))} / {_fmt(pr_.get('beta_recall'))} / "
                     f"{_fmt(pr_.get('authenticity'))}"))
    if get("efficacy"):
        eff = result["efficacy"]
        for metric in eff.get("real", {}):
            name = {"f1_macro": "macro F1", "accuracy": "accuracy", "auc": "AUC", "r2": "R^2"}.get(
                metric, metric)
            rows.append((f"ML efficacy {name} (real -> real)", _fmt(eff["real"].get(metric))))
            rows.append((f"ML efficacy {name} (synthetic -> real)", _fmt(eff["synthetic"].get(metric))))
            rows.append((f"ML efficacy {name} ratio", _fmt(eff["ratio"].get(metric))))
    if get("privacy"):
        pr = result["privacy"]
        rows.append(("Median DCR synthetic -> train", _fmt(pr.get("median_dcr_synth"))))
        rows.append(("Median DCR holdout -> train", _fmt(pr.get("median_dcr_holdout"))))
        rows.append(("DCR share closer to train (0.5 ideal)", _fmt(pr.get("dcr_share"))))
        rows.append(("Exact-copy rate", _fmt(pr.get("exact_copy_rate"), pct=True)))
        rows.append(("Exact-copy rate (holdout baseline)", _fmt(pr.get("exact_copy_rate_holdout"), pct=True)))
        mia = pr.get("membership_inference")
        if mia:
            rows.append(("Membership-inference AUC (0.5 = none)", _fmt(mia.get("auc"))))
    from .likelihood import summary_rows

    rows += summary_rows(get("likelihood"))
    for col, m in (get("arrays") or {}).items():
        ref = m.get("reference", {})
        if m.get("kind") == "image":
            rows.append((f"{col}: KID (real train: {_fmt(ref.get('real_train', {}).get('kid'))})", _fmt(m.get("kid"))))
            rows.append((f"{col}: precision / recall", f"{_fmt(m.get('precision'))} / {_fmt(m.get('recall'))}"))
            if "label_accuracy" in m:
                rows.append((f"{col}: {m['label']} accuracy (real held-out: "
                             f"{_fmt(ref.get('real_heldout_label_accuracy'))})", _fmt(m["label_accuracy"])))
        else:
            floor = ref.get("real_train", {})
            rows.append((f"{col}: ACF MAE (real train: {_fmt(floor.get('acf_mae'))})", _fmt(m.get("acf_mae"))))
            rows.append((f"{col}: log-spectral distance dB (real train: {_fmt(floor.get('log_spectral_distance'))})",
                         _fmt(m.get("log_spectral_distance"))))
    return rows
