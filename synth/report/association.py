"""One association matrix over columns of every kind, for the report's heatmaps.

* numeric/datetime x numeric/datetime: Pearson correlation on the rows where both are present
  (signed, in [-1, 1]);
* categorical/boolean x categorical/boolean: Cramer's V (in [0, 1], null is a category);
* numeric x categorical: the correlation ratio eta (in [0, 1], rows with the numeric value present).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from synth.evaluate.fidelity import _categorical, _is_numeric, _numeric

__all__ = ["association_matrix"]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    ok = ~(np.isnan(a) | np.isnan(b))
    if ok.sum() < 3:
        return np.nan
    x, y = a[ok], b[ok]
    sx, sy = x.std(), y.std()
    if sx == 0 or sy == 0:
        return 0.0
    return float(((x - x.mean()) * (y - y.mean())).mean() / (sx * sy))


def _cramers_v(a: np.ndarray, na: int, b: np.ndarray, nb: int) -> float:
    if na < 2 or nb < 2 or a.size == 0:
        return 0.0
    table = np.bincount(a * nb + b, minlength=na * nb).reshape(na, nb).astype(float)
    table = table[table.sum(1) > 0][:, table.sum(0) > 0]
    if min(table.shape) < 2:
        return 0.0
    n = table.sum()
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / n
    chi2 = float(((table - expected) ** 2 / expected).sum())
    return float(np.sqrt(chi2 / (n * (min(table.shape) - 1))))


def _eta(values: np.ndarray, codes: np.ndarray, n_codes: int) -> float:
    ok = ~np.isnan(values)
    y, c = values[ok], codes[ok]
    if y.size < 3 or y.std() == 0:
        return 0.0
    counts = np.bincount(c, minlength=n_codes)
    sums = np.bincount(c, weights=y, minlength=n_codes)
    present = counts > 0
    means = sums[present] / counts[present]
    between = float((counts[present] * (means - y.mean()) ** 2).sum())
    total = float(((y - y.mean()) ** 2).sum())
    return float(np.sqrt(min(1.0, between / total)))


def association_matrix(frame: pd.DataFrame, kinds: Mapping[str, str]) -> np.ndarray:
    cols = list(kinds)
    num = {c: _numeric(frame[c], kinds[c]) for c in cols if _is_numeric(kinds[c])}
    cat = {}
    for c in cols:
        if c not in num:
            codes, uniques = pd.factorize(_categorical(frame[c]), sort=True)
            cat[c] = (codes.astype(np.int64), len(uniques))
    n = len(cols)
    out = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            a, b = cols[i], cols[j]
            if a in num and b in num:
                v = _pearson(num[a], num[b])
            elif a in cat and b in cat:
                v = _cramers_v(cat[a][0], cat[a][1], cat[b][0], cat[b][1])
            else:
                x, (codes, k) = (num[a], cat[b]) if a in num else (num[b], cat[a])
                v = _eta(x, codes, k)
            out[i, j] = out[j, i] = v
    return out
