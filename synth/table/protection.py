"""Value protection: what the codec may keep of the reference data (non-private runs).

A codec fitted on data stores statistics in the model artifact (`codec.json`), and generators
sample from them. With `data.codec.value_protection` on (the default) no value seen fewer than
`rare_min_count` (k) times is stored or sampled back:
- identifier columns (mostly distinct strings, or a name/pattern that says so) are not modelled:
  they come out as fresh synthetic identifiers of the same format (`columns/identifier.py`);
- a category seen fewer than k times becomes the token `_RARE_` (numeric categories: the
  nearest value seen at least k times);
- a numeric column keeps exact support points (point masses such as age 90 or capital-gain 0)
  only for values seen at least k times; the other values become centroids of at least k rows,
  and its range ends at the k-th smallest and k-th largest values, never at the real extremes.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from synth.table.stats import ColumnStats

RARE = "_RARE_"
ID_SHARE = 0.5  # a string column this distinct (distinct non-null values / non-null rows) is an identifier
HINT_SHARE = 0.2  # ... or this distinct, when its name or values look like an identifier
INT_ID_SHARE = 0.9  # an integer column with an identifier-like name and this distinct is an identifier
HINT_NAMES = {"id", "uuid", "guid", "email", "mail", "phone", "ssn", "name", "firstname", "lastname", "surname",
              "fullname", "username", "passport", "iban"}
PATTERNS = {"email": re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$"),
            "uuid": re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"),
            "digits": re.compile(r"^[0-9]{4,18}$")}
PATTERN_SHARE = 0.9  # share of sampled values a pattern must match
SAMPLED_VALUES = 2000


def name_hint(name: str) -> bool:
    """`customer_id`, `CustomerID`, `e-mail`, `first name` ... look like identifiers."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    tokens = [t for t in re.split(r"[^a-z0-9]+", spaced.lower()) if t]
    joined = "".join(tokens)
    return any(t in HINT_NAMES for t in tokens) or joined in HINT_NAMES


def value_format(values: list[Any]) -> str:
    """The format of sampled string values: email, uuid, digits (with their length) or text."""
    strs = [v for v in values[:SAMPLED_VALUES] if isinstance(v, str)]
    for fmt, pattern in PATTERNS.items():
        if strs and sum(bool(pattern.match(s)) for s in strs) >= PATTERN_SHARE * len(strs):
            return fmt
    return "text"


def identifier_format(stats: ColumnStats, k: int) -> str | None:
    """The id format of a column that looks like an identifier, else None. Strings: distinct share
    >= ID_SHARE, or >= HINT_SHARE with an identifier-like name or value pattern. Integers: an
    identifier-like name and nearly unique values (or too many or too large to count exactly)."""
    nonnull = stats.count - stats.nulls
    if nonnull == 0:
        return None
    hint = name_hint(stats.name)
    if stats.family == "string" and stats.counts is not None:
        share = len(stats.counts) / nonnull
        fmt = value_format(list(stats.counts))
        if share >= ID_SHARE or share >= HINT_SHARE and (hint or fmt != "text"):
            return fmt
        return None
    if stats.family == "numeric" and stats.integral and hint and stats.sketch is not None:
        distinct = stats.distinct_exact
        if distinct is None or stats.inexact is not None or distinct >= max(INT_ID_SHARE * nonnull, k):
            return "integer"
    return None


def protected_counts(counts: dict[Any, int], k: int, numeric: bool) -> dict[Any, int]:
    """Category counts with every value seen fewer than k times folded away: strings into RARE,
    numbers into the nearest value seen at least k times. Null stays a category of its own."""
    keep = {v: c for v, c in counts.items() if c >= k or v is None}
    rare = {v: c for v, c in counts.items() if v not in keep}
    if not rare:
        return keep
    if not numeric:
        keep[RARE] = keep.get(RARE, 0) + sum(rare.values())
        return keep
    frequent = np.asarray(sorted(v for v in keep if v is not None), dtype=np.float64)
    if frequent.size == 0:
        return {}
    for v, c in rare.items():
        near = nearest(frequent, float(v))
        key = next(x for x in keep if x is not None and float(x) == near)
        keep[key] += c
    return keep


def nearest(sorted_values: np.ndarray, v: float) -> float:
    i = int(np.clip(np.searchsorted(sorted_values, v), 1, max(1, sorted_values.size - 1)))
    lo, hi = sorted_values[i - 1], sorted_values[min(i, sorted_values.size - 1)]
    return float(lo if abs(v - lo) <= abs(hi - v) else hi)


def protected_support(values: np.ndarray, weights: np.ndarray, heavy: np.ndarray,
                      k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """Support of a numeric column that keeps no value seen fewer than k times.

    Returns (points, weights, heavy, lo, hi): heavy points are kept only when seen >= k times;
    the light values between two heavy points are grouped in sorted order into runs of >= k rows,
    each stored as its weighted mean; a remainder of < k rows joins the last group or, with no
    group in its run, the heavy point beside it. lo/hi are the k-th smallest/largest values, and
    light values are clipped to them before averaging, so an outlier shapes no stored number."""
    total = float(weights.sum())
    need = min(float(k), total)
    cum, rcum = np.cumsum(weights), np.cumsum(weights[::-1])
    lo = float(values[np.searchsorted(cum, need - 1e-9)])
    hi = float(values[::-1][np.searchsorted(rcum, need - 1e-9)])
    if lo > hi:  # fewer than 2k rows: one point, the weighted median
        lo = hi = float(values[np.searchsorted(cum, total / 2 - 1e-9)])
    heavy = heavy & (weights >= k)
    clipped = np.clip(values, lo, hi)
    out_x: list[float] = []  # per entry: weighted sum (light) or value (heavy)
    out_w: list[float] = []
    out_h: list[bool] = []
    run_groups = 0  # light groups emitted in the current run (since the last heavy point)
    carry_w = carry_s = 0.0  # light rows not yet in a group
    for v, c, w, h in zip(values, clipped, weights, heavy):
        if h:
            if carry_w:  # remainder of the run before this heavy point
                if run_groups:
                    out_x[-1] += carry_s
                    out_w[-1] += carry_w
                elif out_h and out_h[-1]:
                    out_w[-1] += carry_w
                else:
                    w += carry_w
                carry_w = carry_s = 0.0
            out_x.append(float(v))
            out_w.append(float(w))
            out_h.append(True)
            run_groups = 0
            continue
        carry_w += w
        carry_s += c * w
        if carry_w >= k:
            out_x.append(carry_s)
            out_w.append(carry_w)
            out_h.append(False)
            run_groups += 1
            carry_w = carry_s = 0.0
    if carry_w:
        if run_groups:
            out_x[-1] += carry_s
            out_w[-1] += carry_w
        elif out_h:
            out_w[-1] += carry_w
        else:
            out_x.append(carry_s)
            out_w.append(carry_w)
            out_h.append(False)
    w = np.asarray(out_w)
    h = np.asarray(out_h, dtype=bool)
    x = np.where(h, np.asarray(out_x), np.asarray(out_x) / w)
    return x, w, h, lo, hi
