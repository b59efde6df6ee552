"""Statistical fidelity of a synthetic table against the real one.

Three entry points, all taking two pandas DataFrames with the same columns plus
``kinds`` (column -> one of ``continuous``, ``integer``, ``categorical``,
``boolean``, ``datetime``):

* :func:`column_shapes` -- per-column marginal similarity (SDMetrics' "Column
  Shapes": KSComplement / TVComplement).
* :func:`pair_trends` -- per-pair dependence similarity (SDMetrics' "Column
  Pair Trends": CorrelationSimilarity / ContingencySimilarity).
* :func:`fit_report` -- moments, null shares, correlation-matrix RMSE and an
  ``overall`` score in [0, 1].

Missingness is treated as information throughout: numeric and datetime columns
compare their non-null values (and the null share is compared separately in
:func:`fit_report`), categorical and boolean columns treat null as a category of
its own, and datetimes are compared as int64 epoch nanoseconds (as float64).

The small ``_``-prefixed helpers in this module (kind validation, numeric and
categorical normalisation, shared category coding, quantile binning) are also
used by the other ``synth.evaluate`` modules.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

__all__ = ["column_shapes", "pair_trends", "fit_report"]

NUMERIC_KINDS = frozenset({"continuous", "integer", "datetime"})
CATEGORICAL_KINDS = frozenset({"categorical", "boolean"})
KINDS = NUMERIC_KINDS | CATEGORICAL_KINDS

#: label used for a missing value when a categorical column is turned into categories
NULL_LABEL = "__synth_null__"
#: label of the bucket that collects rare categories when cardinality is capped
OTHER_LABEL = "__synth_other__"


# --------------------------------------------------------------------------- helpers
def _columns(kinds: Mapping[str, str], *frames: pd.DataFrame) -> list[str]:
    """Columns to evaluate (the keys of ``kinds``, in order), validated against frames."""
    cols = list(kinds)
    for col, kind in kinds.items():
        if kind not in KINDS:
            raise ValueError(f"column {col!r}: unknown kind {kind!r}; expected one of {sorted(KINDS)}")
    for i, frame in enumerate(frames):
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise KeyError(f"frame #{i} lacks columns {missing}")
    return cols


def _is_numeric(kind: str) -> bool:
    return kind in NUMERIC_KINDS


def _numeric(series: pd.Series, kind: str) -> np.ndarray:
    """float64 array with NaN for missing; datetimes become epoch nanoseconds."""
    if kind == "datetime":
        s = series
        if not pd.api.types.is_datetime64_any_dtype(s):
            s = pd.to_datetime(s, errors="coerce", utc=True)
        if isinstance(s.dtype, pd.DatetimeTZDtype):
            s = s.dt.tz_convert("UTC").dt.tz_localize(None)
        s = s.astype("datetime64[ns]")
        mask = s.isna().to_numpy()
        out = s.to_numpy(dtype="datetime64[ns]").view("i8").astype(np.float64)
        out[mask] = np.nan
        return out
    if pd.api.types.is_bool_dtype(series):
        return series.astype("float64").to_numpy()
    out = pd.to_numeric(series, errors="coerce")
    return out.astype("float64").to_numpy(na_value=np.nan)


def _categorical(series: pd.Series) -> pd.Series:
    """object Series in which every missing value is :data:`NULL_LABEL`."""
    s = series.astype(object)
    mask = s.isna()
    if mask.any():
        s = s.where(~mask, NULL_LABEL)
    return s.reset_index(drop=True)


def _shared_codes(a: pd.Series, b: pd.Series) -> tuple[np.ndarray, np.ndarray, pd.Index]:
    """Integer codes over the union of categories of two categorical Series (nulls included)."""
    a_cat, b_cat = _categorical(a), _categorical(b)
    codes, uniques = pd.factorize(pd.concat([a_cat, b_cat], ignore_index=True), sort=False)
    return codes[: len(a_cat)].astype(np.int64), codes[len(a_cat):].astype(np.int64), pd.Index(uniques)


def _capped_codes(
    real: pd.Series, synth: pd.Series, max_categories: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Codes in ``[0, n)`` keeping the ``max_categories`` most frequent real (non-null) values.

    The remaining real categories share one "other" code, the categories seen only in the
    synthetic data share one "unseen" code, and null keeps a code of its own.  Lumping the
    synthetic-only categories together is exact for total-variation distances (their real
    mass is zero); lumping rare real categories only makes the TV a lower bound, which is
    the price of bounded memory.
    """
    rc, sc, uniques = _shared_codes(real, synth)
    n_unique = len(uniques)
    counts = np.bincount(rc, minlength=n_unique)
    null_pos = uniques.get_indexer([NULL_LABEL])[0]
    order = np.argsort(-counts, kind="stable")  # most frequent first, ties by first appearance
    keep = [c for c in order if counts[c] > 0 and c != null_pos][:max_categories]
    mapping = np.full(n_unique, len(keep), dtype=np.int64)  # "other" (rare real values)
    mapping[counts == 0] = len(keep) + 1  # "unseen" (synthetic-only values)
    mapping[np.asarray(keep, dtype=np.int64)] = np.arange(len(keep))
    n = len(keep) + 2
    if null_pos >= 0:
        mapping[null_pos] = n
        n += 1
    return mapping[rc], mapping[sc], n


def _quantile_edges(real_values: np.ndarray, bins: int) -> np.ndarray:
    """Interior bin edges of ``bins`` quantile bins of the non-null real values."""
    v = real_values[~np.isnan(real_values)]
    if v.size == 0:
        return np.empty(0)
    edges = np.unique(np.quantile(v, np.linspace(0.0, 1.0, bins + 1)))
    return edges[1:-1]


def _uniform_edges(real_values: np.ndarray, bins: int) -> np.ndarray:
    v = real_values[~np.isnan(real_values)]
    if v.size == 0:
        return np.empty(0)
    return np.unique(np.histogram_bin_edges(v, bins=bins))[1:-1]


def _bin(values: np.ndarray, interior_edges: np.ndarray) -> np.ndarray:
    """Bin codes ``0..len(edges)``; values outside the real range go to the end bins, null gets
    the code ``len(edges) + 1``."""
    codes = np.searchsorted(interior_edges, values, side="right").astype(np.int64)
    codes[np.isnan(values)] = len(interior_edges) + 1
    return codes


def _tv_from_codes(a: np.ndarray, b: np.ndarray, n: int) -> float:
    """Total variation distance between the empirical distributions of two code arrays."""
    if len(a) == 0 or len(b) == 0:
        return 0.0 if len(a) == len(b) else 1.0
    pa = np.bincount(a, minlength=n) / len(a)
    pb = np.bincount(b, minlength=n) / len(b)
    return float(0.5 * np.abs(pa - pb).sum())


def _tv_value_counts(real: pd.Series, synth: pd.Series) -> float:
    """TV distance of two categorical Series via value counts (null is a category)."""
    if len(real) == 0 or len(synth) == 0:
        return 0.0 if len(real) == len(synth) else 1.0
    pr = _categorical(real).value_counts(normalize=True, sort=False)
    ps = _categorical(synth).value_counts(normalize=True, sort=False)
    diff = pr.sub(ps, fill_value=0.0)
    return float(0.5 * np.abs(diff.to_numpy(dtype=np.float64)).sum())


def _ks(real: np.ndarray, synth: np.ndarray) -> float:
    r, s = real[~np.isnan(real)], synth[~np.isnan(synth)]
    if r.size == 0 or s.size == 0:
        return 0.0 if r.size == s.size else 1.0
    return float(ks_2samp(r, s, method="asymp").statistic)


def _corr_matrix(values: np.ndarray) -> np.ndarray:
    """Pairwise-complete Pearson correlation matrix; undefined entries (constant column,
    fewer than two complete pairs) are 0 -- "no linear association"."""
    if values.shape[1] == 0:
        return np.zeros((0, 0))
    corr = pd.DataFrame(values).corr(method="pearson", min_periods=2).to_numpy()
    corr = np.nan_to_num(corr, nan=0.0)
    np.fill_diagonal(corr, 1.0)
    return np.clip(corr, -1.0, 1.0)


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


# --------------------------------------------------------------------------- column shapes
def column_shapes(real: pd.DataFrame, synth: pd.DataFrame, kinds: Mapping[str, str]) -> dict:
    """Per-column marginal similarity, mirroring SDMetrics' *Column Shapes* property.

    * numeric (``continuous``/``integer``) and ``datetime``: **KSComplement** =
      ``1 - KS statistic`` (two-sample Kolmogorov-Smirnov, ``scipy.stats.ks_2samp``) on
      the non-null values (datetimes as epoch ns), exactly as SDMetrics.
    * ``categorical``/``boolean``: **TVComplement** = ``1 - TV`` with
      ``TV = 1/2 * sum_c |p_real(c) - p_synth(c)|`` over the union of categories, computed
      from value counts (so 50k categories cost O(rows)).  Unlike SDMetrics (which drops
      nulls) null is a category of its own here.

    Returns ``{"columns": {col: {"kind", "metric", "score"}}, "mean": float | None}``; the
    mean is over columns (``None`` when there are no columns).
    """
    cols = _columns(kinds, real, synth)
    out: dict[str, dict] = {}
    for col in cols:
        kind = kinds[col]
        if _is_numeric(kind):
            score = 1.0 - _ks(_numeric(real[col], kind), _numeric(synth[col], kind))
            metric = "KSComplement"
        else:
            score = 1.0 - _tv_value_counts(real[col], synth[col])
            metric = "TVComplement"
        out[col] = {"kind": kind, "metric": metric, "score": float(min(max(score, 0.0), 1.0))}
    return {"columns": out, "mean": _mean(v["score"] for v in out.values())}


# --------------------------------------------------------------------------- pair trends
def pair_trends(
    real: pd.DataFrame,
    synth: pd.DataFrame,
    kinds: Mapping[str, str],
    *,
    bins: int = 10,
    binning: str = "quantile",
    max_categories: int = 100,
) -> dict:
    """Per-pair dependence similarity, mirroring SDMetrics' *Column Pair Trends* property.

    For every unordered column pair:

    * numeric-numeric (``continuous``/``integer``/``datetime``): **CorrelationSimilarity**
      ``1 - |r_real - r_synth| / 2`` with Pearson ``r`` on the rows where both values are
      non-null (as SDMetrics).  An undefined correlation (constant column, < 2 complete
      rows) counts as ``r = 0``, so a collapsed synthetic column is penalised rather than
      skipped.
    * every other pair (categorical-categorical and mixed): **ContingencySimilarity**
      ``1 - TV`` of the two joint distributions, ``TV = 1/2 * sum |p_real - p_synth|`` over
      the cells.  Numeric columns are binned into ``bins`` bins whose edges are fixed from
      the real non-null values (``binning="quantile"``, the default, as asked for this
      project; ``binning="uniform"`` uses equal-width ``np.histogram_bin_edges`` like
      SDMetrics' ContingencySimilarity); synthetic values outside the real range fall in the
      end bins and null is a bin of its own.  Null is a category of its own for categoricals.
      Categoricals with more than ``max_categories`` distinct real values keep their
      ``max_categories`` most frequent real values plus one "other" bucket for the rest
      (and one "unseen" bucket for synthetic-only values), so memory stays bounded
      whatever the cardinality; the score is then an upper bound of the uncapped one.

    Returns ``{"pairs": [{"columns": [a, b], "metric", "score", "real", "synthetic"}],
    "mean": float | None}``; ``real``/``synthetic`` are the two correlations for
    CorrelationSimilarity and ``None`` for ContingencySimilarity.
    """
    if binning not in ("quantile", "uniform"):
        raise ValueError("binning must be 'quantile' or 'uniform'")
    cols = _columns(kinds, real, synth)
    num_cols = [c for c in cols if _is_numeric(kinds[c])]

    # Discrete codes for every column (numeric: binned with real edges), computed once.
    edges_fn = _quantile_edges if binning == "quantile" else _uniform_edges
    discrete: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}
    numeric_values: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for col in cols:
        kind = kinds[col]
        if _is_numeric(kind):
            rv, sv = _numeric(real[col], kind), _numeric(synth[col], kind)
            numeric_values[col] = (rv, sv)
            edges = edges_fn(rv, bins)
            discrete[col] = (_bin(rv, edges), _bin(sv, edges), len(edges) + 2)
        else:
            discrete[col] = _capped_codes(real[col], synth[col], max_categories)

    if num_cols:
        corr_r = _corr_matrix(np.column_stack([numeric_values[c][0] for c in num_cols]))
        corr_s = _corr_matrix(np.column_stack([numeric_values[c][1] for c in num_cols]))
    num_index = {c: i for i, c in enumerate(num_cols)}

    pairs: list[dict] = []
    for i, a in enumerate(cols):
        for b in cols[i + 1:]:
            if a in num_index and b in num_index:
                r_real = float(corr_r[num_index[a], num_index[b]])
                r_syn = float(corr_s[num_index[a], num_index[b]])
                score = 1.0 - abs(r_real - r_syn) / 2.0
                pairs.append({"columns": [a, b], "metric": "CorrelationSimilarity",
                              "score": float(score), "real": r_real, "synthetic": r_syn})
            else:
                ra, sa, na = discrete[a]
                rb, sb, nb = discrete[b]
                tv = _tv_from_codes(ra * nb + rb, sa * nb + sb, na * nb)
                pairs.append({"columns": [a, b], "metric": "ContingencySimilarity",
                              "score": float(1.0 - tv), "real": None, "synthetic": None})
    return {"pairs": pairs, "mean": _mean(p["score"] for p in pairs)}


# --------------------------------------------------------------------------- fit report
def fit_report(real: pd.DataFrame, synth: pd.DataFrame, kinds: Mapping[str, str]) -> dict:
    """Moments, null shares and correlation structure, with an ``overall`` score in [0, 1].

    Per column: ``null_share_real``, ``null_share_synth`` and ``null_share_error`` (absolute
    difference).  Per numeric/datetime column additionally (non-null values, datetimes as
    epoch ns): ``mean_error = |mean_s - mean_r| / std_r`` and ``std_error = |std_s - std_r| /
    std_r`` (``std_r`` replaced by ``max(|mean_r|, 1)`` when the real column is constant;
    ``None`` when either side has no non-null value).

    ``correlation_rmse``: RMSE between the real and synthetic Pearson matrices (pairwise
    complete, undefined correlations as 0) over the off-diagonal upper triangle of the
    numeric/datetime columns; ``None`` with fewer than two such columns.

    ``overall`` is the unweighted mean of the available components (each in [0, 1]):

    * ``moments``: mean over numeric columns of ``max(0, 1 - (mean_error + std_error) / 2)``
      (0 for a column whose errors are undefined);
    * ``nulls``: ``1 - mean(null_share_error)`` over all columns;
    * ``correlation``: ``1 - correlation_rmse / 2`` (correlation differences lie in [0, 2]);
    * ``shapes``: the mean of :func:`column_shapes` (the only component that sees
      categorical distributions).
    """
    cols = _columns(kinds, real, synth)
    per_col: dict[str, dict] = {}
    moment_scores: list[float] = []
    num_cols: list[str] = []
    real_num, synth_num = [], []
    for col in cols:
        kind = kinds[col]
        null_r = float(real[col].isna().mean()) if len(real) else 0.0
        null_s = float(synth[col].isna().mean()) if len(synth) else 0.0
        entry: dict = {"kind": kind, "null_share_real": null_r, "null_share_synth": null_s,
                       "null_share_error": abs(null_r - null_s)}
        if _is_numeric(kind):
            rv, sv = _numeric(real[col], kind), _numeric(synth[col], kind)
            num_cols.append(col)
            real_num.append(rv)
            synth_num.append(sv)
            r, s = rv[~np.isnan(rv)], sv[~np.isnan(sv)]
            if r.size and s.size:
                mean_r, mean_s = float(r.mean()), float(s.mean())
                std_r, std_s = float(r.std()), float(s.std())
                scale = std_r if std_r > 0 else max(abs(mean_r), 1.0)
                mean_err = abs(mean_s - mean_r) / scale
                std_err = abs(std_s - std_r) / scale
                entry.update(mean_real=mean_r, mean_synth=mean_s, std_real=std_r, std_synth=std_s,
                             mean_error=float(mean_err), std_error=float(std_err))
                moment_scores.append(max(0.0, 1.0 - (mean_err + std_err) / 2.0))
            else:
                entry.update(mean_error=None, std_error=None)
                moment_scores.append(0.0)
        per_col[col] = entry

    corr_rmse = None
    if len(num_cols) >= 2:
        cr = _corr_matrix(np.column_stack(real_num))
        cs = _corr_matrix(np.column_stack(synth_num))
        iu = np.triu_indices(len(num_cols), k=1)
        corr_rmse = float(np.sqrt(np.mean((cr[iu] - cs[iu]) ** 2)))

    shapes = column_shapes(real, synth, kinds)
    null_mean = _mean(e["null_share_error"] for e in per_col.values())
    components = {
        "moments": _mean(moment_scores),
        "nulls": None if null_mean is None else 1.0 - null_mean,
        "correlation": None if corr_rmse is None else 1.0 - corr_rmse / 2.0,
        "shapes": shapes["mean"],
    }
    overall = _mean(components.values())
    return {
        "columns": per_col,
        "correlation_rmse": corr_rmse,
        "components": components,
        "overall": float(min(max(overall, 0.0), 1.0)) if overall is not None else None,
    }
