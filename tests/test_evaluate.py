"""Tests for synth.evaluate: real computations on small synthetic frames."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from synth.evaluate import (
    c2st_auc,
    column_shapes,
    distance_to_closest_record,
    evaluate,
    fit_report,
    ml_efficacy,
    pair_trends,
    summary_table,
)

KINDS = {
    "x": "continuous",
    "y": "continuous",
    "k": "integer",
    "cat": "categorical",
    "flag": "boolean",
    "when": "datetime",
}


def make_frame(n: int, seed: int, shift: float = 0.0, null_rate: float = 0.05) -> pd.DataFrame:
    """Correlated mixed-type table with nulls in x, cat and when."""
    rng = np.random.default_rng(seed)
    x = rng.normal(shift, 1.0, n)
    y = 0.8 * x + 0.6 * rng.normal(size=n)
    k = rng.poisson(3 + (x > 0) * 3)
    cat = np.where(x + 0.3 * rng.normal(size=n) > 0.5, "high",
                   np.where(rng.random(n) < 0.5, "low", "mid")).astype(object)
    flag = (y + rng.normal(size=n)) > 0
    when = pd.Timestamp("2020-01-01") + pd.to_timedelta(np.round(100 * x + 30 * rng.normal(size=n)), unit="D")
    df = pd.DataFrame({"x": x, "y": y, "k": k, "cat": cat, "flag": flag, "when": when})
    if null_rate:
        for col in ("x", "cat", "when"):
            mask = rng.random(n) < null_rate
            df[col] = df[col].mask(mask)
    return df


def permute_columns(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({c: rng.permutation(df[c].to_numpy()) for c in df.columns})


@pytest.fixture(scope="module")
def real():
    return make_frame(3000, seed=1)


@pytest.fixture(scope="module")
def fresh():
    return make_frame(3000, seed=2)


@pytest.fixture(scope="module")
def holdout():
    return make_frame(3000, seed=3)


def _pair(result: dict, a: str, b: str) -> dict:
    for p in result["pairs"]:
        if set(p["columns"]) == {a, b}:
            return p
    raise KeyError((a, b))


# ----------------------------------------------------------------------------- fidelity
def test_exact_small_values():
    real = pd.DataFrame({"c": ["a", "a", "b", "b"], "n": [1.0, 2.0, 3.0, 4.0]})
    syn = pd.DataFrame({"c": ["a", "b", "b", "b"], "n": [1.0, 2.0, 3.0, 4.0]})
    kinds = {"c": "categorical", "n": "continuous"}
    shapes = column_shapes(real, syn, kinds)
    assert shapes["columns"]["c"] == {"kind": "categorical", "metric": "TVComplement", "score": 0.75}
    assert shapes["columns"]["n"]["metric"] == "KSComplement"
    assert shapes["columns"]["n"]["score"] == 1.0
    assert shapes["mean"] == pytest.approx(0.875)
    # null is a category of its own for categoricals
    s = column_shapes(pd.DataFrame({"c": ["a", None]}), pd.DataFrame({"c": ["a", "a"]}), {"c": "categorical"})
    assert s["columns"]["c"]["score"] == pytest.approx(0.5)
    # numerics compare non-null values only (the null share is a fit_report matter)
    s = column_shapes(pd.DataFrame({"n": [1.0, 2.0, np.nan]}), pd.DataFrame({"n": [1.0, 2.0, 2.0]}),
                      {"n": "continuous"})
    assert s["columns"]["n"]["score"] == pytest.approx(1 - 1 / 6)


def test_correlation_similarity_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(size=2000)
    real = pd.DataFrame({"a": a, "b": a + 0.1 * rng.normal(size=2000)})
    syn = pd.DataFrame({"a": a, "b": -real["b"]})
    kinds = {"a": "continuous", "b": "continuous"}
    p = pair_trends(real, syn, kinds)["pairs"][0]
    assert p["metric"] == "CorrelationSimilarity"
    assert p["real"] == pytest.approx(np.corrcoef(real["a"], real["b"])[0, 1])
    assert p["score"] == pytest.approx(1 - abs(p["real"] - p["synthetic"]) / 2)
    assert p["score"] < 0.05  # r flipped from ~+1 to ~-1
    # a collapsed (constant) synthetic column counts as r = 0 rather than being skipped
    p = pair_trends(real, syn.assign(b=1.0), kinds)["pairs"][0]
    assert p["synthetic"] == 0.0 and p["score"] == pytest.approx(1 - p["real"] / 2)


def test_contingency_similarity_exact():
    real = pd.DataFrame({"c": ["a", "a", "b", "b"], "d": ["u", "v", "u", "v"]})
    syn = pd.DataFrame({"c": ["a", "a", "b", "b"], "d": ["u", "u", "v", "v"]})
    p = pair_trends(real, syn, {"c": "categorical", "d": "categorical"})["pairs"][0]
    # real joint: 1/4 each cell; synth: (a,u)=1/2, (b,v)=1/2 -> TV = 1/2
    assert p["metric"] == "ContingencySimilarity"
    assert p["score"] == pytest.approx(0.5)


def test_identical_distribution_scores_high(real, fresh):
    shapes = column_shapes(real, fresh, KINDS)
    assert shapes["mean"] > 0.95
    assert all(v["score"] > 0.9 for v in shapes["columns"].values())
    assert {c: v["metric"] for c, v in shapes["columns"].items()} == {
        "x": "KSComplement", "y": "KSComplement", "k": "KSComplement",
        "cat": "TVComplement", "flag": "TVComplement", "when": "KSComplement"}
    trends = pair_trends(real, fresh, KINDS)
    assert len(trends["pairs"]) == 15
    assert trends["mean"] > 0.95
    assert _pair(trends, "x", "when")["metric"] == "CorrelationSimilarity"  # datetime is numeric
    assert _pair(trends, "x", "cat")["metric"] == "ContingencySimilarity"
    fit = fit_report(real, fresh, KINDS)
    assert fit["overall"] > 0.95
    assert fit["correlation_rmse"] < 0.05
    assert set(fit["components"]) == {"moments", "nulls", "correlation", "shapes"}
    assert fit["columns"]["x"]["mean_error"] < 0.1
    assert "mean_error" not in fit["columns"]["cat"]


def test_permuted_columns_drop_pair_trends(real, fresh):
    shuffled = permute_columns(real, seed=5)
    assert column_shapes(real, shuffled, KINDS)["mean"] == pytest.approx(1.0)
    good = pair_trends(real, fresh, KINDS)
    bad = pair_trends(real, shuffled, KINDS)
    assert bad["mean"] < good["mean"] - 0.05
    assert _pair(bad, "x", "y")["score"] < 0.7 < _pair(good, "x", "y")["score"]
    assert _pair(bad, "x", "cat")["score"] < _pair(good, "x", "cat")["score"] - 0.1
    fit_good, fit_bad = fit_report(real, fresh, KINDS), fit_report(real, shuffled, KINDS)
    assert fit_bad["correlation_rmse"] > 0.2
    assert fit_bad["overall"] < fit_good["overall"]


def test_nulls_are_information(real):
    no_nulls = real.copy()
    no_nulls["x"] = no_nulls["x"].fillna(0.0)
    no_nulls["cat"] = no_nulls["cat"].fillna("low")
    fit = fit_report(real, no_nulls, KINDS)
    null_r = real["cat"].isna().mean()
    assert fit["columns"]["cat"]["null_share_real"] == pytest.approx(null_r)
    assert fit["columns"]["cat"]["null_share_synth"] == 0.0
    assert fit["columns"]["cat"]["null_share_error"] == pytest.approx(null_r)
    assert fit["components"]["nulls"] < 1.0
    shapes = column_shapes(real, no_nulls, KINDS)
    assert shapes["columns"]["cat"]["score"] == pytest.approx(1 - null_r)
    # all-null synthetic numeric column: defined, worst-case scores, no crash
    empty = real.assign(x=np.nan)
    fit = fit_report(real, empty, KINDS)
    assert fit["columns"]["x"]["mean_error"] is None and fit["components"]["moments"] < 1
    assert column_shapes(real, empty, KINDS)["columns"]["x"]["score"] == 0.0


def test_datetime_shift_detected(real):
    shifted = real.assign(when=real["when"] + pd.Timedelta(days=150))
    shapes = column_shapes(real, shifted, KINDS)
    assert shapes["columns"]["when"]["score"] < 0.6
    assert fit_report(real, shifted, KINDS)["columns"]["when"]["mean_error"] > 1.0
    # tz-aware datetimes are compared in UTC epoch values
    tz = real.assign(when=real["when"].dt.tz_localize("UTC"))
    assert column_shapes(real, tz, KINDS)["columns"]["when"]["score"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- high cardinality
def test_high_cardinality_50k():
    n = 50_000
    rng = np.random.default_rng(0)
    ids = np.array([f"id{i}" for i in range(n)], dtype=object)
    num = rng.normal(size=n)
    kinds = {"id": "categorical", "num": "continuous", "g": "categorical"}
    real = pd.DataFrame({"id": ids, "num": num, "g": rng.choice(["a", "b"], n)})
    same = real.sample(frac=1.0, random_state=1).reset_index(drop=True)
    other = real.assign(id=np.array([f"new{i}" for i in range(n)], dtype=object))

    assert column_shapes(real, same, kinds)["columns"]["id"]["score"] == pytest.approx(1.0)
    assert column_shapes(real, other, kinds)["columns"]["id"]["score"] == pytest.approx(0.0)
    t_same = pair_trends(real, same, kinds, max_categories=100)
    t_other = pair_trends(real, other, kinds, max_categories=100)
    assert _pair(t_same, "id", "num")["score"] == pytest.approx(1.0)
    assert _pair(t_other, "id", "g")["score"] < 0.1  # all synthetic ids fall in "other"
    # detection copes with the cardinality: fresh unique ids look like real unique ids ...
    assert abs(c2st_auc(real, other, kinds, seed=0, max_rows=4000) - 0.5) < 0.1
    # ... while a generator that collapses onto a few ids is caught (capped codes + counts)
    collapsed = real.assign(id=rng.choice(ids[:100], n))
    assert c2st_auc(real, collapsed, kinds, seed=0, max_rows=4000) > 0.8
    assert _pair(pair_trends(real, collapsed, kinds), "id", "g")["score"] < 0.1
    # privacy and efficacy run on the same frames without materialising category matrices
    dcr = distance_to_closest_record(real, same, other, kinds, seed=0, max_rows=2000)
    assert dcr["exact_copy_rate"] == 1.0
    eff = ml_efficacy(real, other, same, kinds, "g", seed=0, max_train_rows=5000)
    assert set(eff["ratio"]) == {"f1_macro", "accuracy", "auc"}


# ----------------------------------------------------------------------------- detection
def test_c2st_indistinguishable_and_shifted(real, fresh):
    auc = c2st_auc(real, fresh, KINDS, seed=0, max_rows=4000)
    assert abs(auc - 0.5) < 0.1
    shifted = make_frame(3000, seed=2, shift=2.0)  # optimal AUC ~ Phi(sqrt 2) = 0.92
    assert c2st_auc(real, shifted, KINDS, seed=0, max_rows=4000) > 0.8
    # numeric shift of one column only
    one = fresh.assign(y=fresh["y"] + 1.0)
    assert c2st_auc(real, one, KINDS, seed=0, max_rows=4000) > 0.8


def test_c2st_deterministic(real, fresh):
    a = c2st_auc(real, permute_columns(fresh, 1), KINDS, seed=3, max_rows=3000)
    b = c2st_auc(real, permute_columns(fresh, 1), KINDS, seed=3, max_rows=3000)
    assert a == b
    assert a > 0.6  # broken dependencies are detectable


# ----------------------------------------------------------------------------- efficacy
def test_efficacy_real_as_synthetic(real, fresh, holdout):
    same = ml_efficacy(real, real, holdout, KINDS, "cat", seed=0)
    assert same["task"] == "classification"
    assert set(same["real"]) == {"f1_macro", "accuracy"}  # 3 classes: no AUC
    assert same["ratio"] == {"f1_macro": 1.0, "accuracy": 1.0}
    res = ml_efficacy(real, fresh, holdout, KINDS, "flag", seed=0)
    assert set(res["real"]) == {"f1_macro", "accuracy", "auc"}
    assert res["real"]["auc"] > 0.7
    for v in res["ratio"].values():
        assert 0.9 < v < 1.1
    assert res["n_train_real"] == 3000 and res["n_test"] == 3000

    reg = ml_efficacy(real, fresh, holdout, KINDS, "y", seed=0)
    assert reg["task"] == "regression" and reg["real"]["r2"] > 0.4
    assert 0.9 < reg["ratio"]["r2"] < 1.1
    bad = ml_efficacy(real, permute_columns(real, 7), holdout, KINDS, "y", seed=0)
    assert bad["synthetic"]["r2"] < 0.1 and bad["ratio"]["r2"] < 0.2


def test_efficacy_null_target_and_single_class(real, holdout):
    res = ml_efficacy(real, real.assign(cat="low"), holdout, KINDS, "cat", seed=0)
    assert res["n_test"] == int(holdout["cat"].notna().sum())
    assert res["synthetic"]["f1_macro"] < res["real"]["f1_macro"]


# ----------------------------------------------------------------------------- privacy
def test_dcr_copies_of_train(real, holdout):
    copies = real.sample(n=2000, replace=True, random_state=0).reset_index(drop=True)
    res = distance_to_closest_record(real, copies, holdout, KINDS, seed=0)
    assert res["exact_copy_rate"] == 1.0
    assert res["median_dcr_synth"] == 0.0
    assert res["dcr_share"] > 0.95
    assert res["median_dcr_holdout"] > 0.0


def test_dcr_fresh_data(real, fresh, holdout):
    res = distance_to_closest_record(real, fresh, holdout, KINDS, seed=0)
    assert res["exact_copy_rate"] == 0.0
    assert 0.4 < res["dcr_share"] < 0.6
    assert res["median_dcr_synth"] == pytest.approx(res["median_dcr_holdout"], rel=0.25)
    assert res["n_reference"] == 3000 and res["n_synthetic"] == 3000
    # subsampling and chunking give bounded, deterministic work
    small = distance_to_closest_record(real, fresh, holdout, KINDS, seed=1, max_rows=500)
    assert small["n_reference"] == 500 and small["n_synthetic"] == 500
    assert small == distance_to_closest_record(real, fresh, holdout, KINDS, seed=1, max_rows=500)


def test_dcr_chunked_matches_bruteforce(monkeypatch):
    from synth.evaluate import privacy

    rng = np.random.default_rng(0)
    kinds = {"a": "continuous", "c": "categorical"}
    make = lambda n: pd.DataFrame({"a": np.where(rng.random(n) < 0.2, np.nan, rng.normal(size=n)),
                                   "c": rng.choice(["p", "q", None], n)})
    train, syn, hold = make(60), make(40), make(60)
    full = distance_to_closest_record(train, syn, hold, kinds, seed=0)
    monkeypatch.setattr(privacy, "_BLOCK_ELEMENTS", 7)  # one query row per chunk
    assert distance_to_closest_record(train, syn, hold, kinds, seed=0) == full
    # brute force Gower-like distance for the synthetic -> train median
    a_tr = train["a"].to_numpy()
    lo, hi = np.nanquantile(a_tr, [0.01, 0.99])
    d = []
    for _, s in syn.iterrows():
        best = 1.0
        for _, t in train.iterrows():
            if pd.isna(s["a"]) and pd.isna(t["a"]):
                da = 0.0
            elif pd.isna(s["a"]) or pd.isna(t["a"]):
                da = 1.0
            else:
                da = min(abs(s["a"] - t["a"]) / (hi - lo), 1.0)
            dc = 0.0 if (s["c"] == t["c"] or (s["c"] is None and t["c"] is None)) else 1.0
            best = min(best, (da + dc) / 2)
        d.append(best)
    assert full["median_dcr_synth"] == pytest.approx(np.median(d), abs=1e-5)


# ----------------------------------------------------------------------------- suite
def test_evaluate_json_and_deterministic(real, fresh, holdout):
    r1 = evaluate(real, holdout, fresh, KINDS, target="flag", seed=0)
    r2 = evaluate(real, holdout, fresh, KINDS, target="flag", seed=0)
    assert r1 == r2
    text = json.dumps(r1, allow_nan=False)
    assert json.loads(text) == r1
    assert set(r1) == {"column_shapes", "pair_trends", "fit", "quality_score", "detection",
                       "precision_recall", "efficacy", "privacy", "n_rows"}
    assert r1["quality_score"] > 0.95
    assert 0.8 < r1["detection"]["score"] <= 1.0
    # a good fresh sample: the linear detector and the typicality ball cannot tell it apart either
    assert r1["detection"]["logistic_detection"] > 0.8
    assert r1["precision_recall"]["alpha_precision"] > 0.8
    rows = summary_table(r1)
    assert rows and all(isinstance(k, str) and isinstance(v, str) for k, v in rows)
    names = [k for k, _ in rows]
    assert "Exact-copy rate" in names and any(n.startswith("C2ST AUC") for n in names)

    no_target = evaluate(real, holdout, fresh, KINDS, seed=0)
    assert no_target["efficacy"] is None
    assert summary_table(no_target)


def test_input_validation(real, fresh):
    with pytest.raises(ValueError):
        column_shapes(real, fresh, {**KINDS, "x": "text"})
    with pytest.raises(KeyError):
        pair_trends(real, fresh.drop(columns="k"), KINDS)


def test_linear_detection_and_alpha_precision_catch_a_shifted_sample(real, fresh):
    from synth.evaluate.detection import alpha_precision_beta_recall, logistic_detection

    shifted = fresh.copy()
    num = [c for c, k in KINDS.items() if k in ("continuous", "integer")][0]
    shifted[num] = shifted[num] * 3 + 5 * shifted[num].std()
    assert logistic_detection(real, shifted, KINDS, seed=0) < logistic_detection(real, fresh, KINDS, seed=0) - 0.3
    good = alpha_precision_beta_recall(real, fresh, KINDS, seed=0)
    bad = alpha_precision_beta_recall(real, shifted, KINDS, seed=0)
    assert bad["alpha_precision"] < good["alpha_precision"] - 0.3
