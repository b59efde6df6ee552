"""Privacy proxies: distance to closest record (DCR), exact copies of training rows, and
membership-inference attacks on the synthetic data."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from .fidelity import _categorical, _columns, _is_numeric, _numeric

__all__ = ["distance_to_closest_record", "membership_inference"]

#: elements of the (query chunk x reference) distance block held at once
_BLOCK_ELEMENTS = 2_000_000


def _robust_scale(train_values: np.ndarray) -> float:
    """Scale of a numeric column: the 1st-99th percentile range of the training values,
    falling back to the full range, then to 1."""
    v = train_values[~np.isnan(train_values)]
    if v.size == 0:
        return 1.0
    lo, hi = np.quantile(v, [0.01, 0.99])
    scale = float(hi - lo)
    if not scale > 0:
        scale = float(v.max() - v.min())
    return scale if scale > 0 else 1.0


class _Encoded:
    """Numeric block (scaled float32, NaN = null) and categorical block (int codes)."""

    def __init__(self, num: np.ndarray, cat: np.ndarray):
        self.num, self.cat = num, cat

    def __len__(self) -> int:
        return len(self.num)

    def take(self, idx: np.ndarray) -> "_Encoded":
        return _Encoded(self.num[idx], self.cat[idx])


def _encode(frames: list[pd.DataFrame], kinds: Mapping[str, str], cols: list[str],
            train_pos: int = 0) -> list[_Encoded]:
    sizes = [len(f) for f in frames]
    bounds = np.cumsum([0] + sizes)
    num_blocks, cat_blocks = [], []
    for col in cols:
        kind = kinds[col]
        if _is_numeric(kind):
            vals = [_numeric(f[col], kind) for f in frames]
            scale = _robust_scale(vals[train_pos])
            # centre on the training median first so float32 keeps precision (epoch ns!)
            tv = vals[train_pos][~np.isnan(vals[train_pos])]
            centre = float(np.median(tv)) if tv.size else 0.0
            num_blocks.append(((np.concatenate(vals) - centre) / scale).astype(np.float32))
        else:
            pooled = pd.concat([_categorical(f[col]) for f in frames], ignore_index=True)
            cat_blocks.append(pd.factorize(pooled, sort=False)[0].astype(np.int32))
    n = int(bounds[-1])
    num = np.column_stack(num_blocks) if num_blocks else np.zeros((n, 0), np.float32)
    cat = np.column_stack(cat_blocks) if cat_blocks else np.zeros((n, 0), np.int32)
    return [_Encoded(num[bounds[i]: bounds[i + 1]], cat[bounds[i]: bounds[i + 1]])
            for i in range(len(frames))]


def _nearest_distance(query: _Encoded, ref: _Encoded) -> np.ndarray:
    """Gower-like distance from each query row to its nearest reference row.

    Per feature: numeric ``min(|a - b| / scale, 1)`` (both null 0, one null 1); categorical
    0/1 mismatch (null is a category).  The row distance is the mean over features, in
    [0, 1].  Computed in query chunks so memory is ``O(chunk * len(ref))``.
    """
    n_features = query.num.shape[1] + query.cat.shape[1]
    out = np.empty(len(query), dtype=np.float64)
    if len(query) == 0:
        return out
    if len(ref) == 0 or n_features == 0:
        out[:] = 1.0 if len(ref) == 0 else 0.0
        return out
    chunk = max(1, _BLOCK_ELEMENTS // len(ref))
    ref_nan = np.isnan(ref.num)
    ref_has_nan = ref_nan.any(axis=0)
    for start in range(0, len(query), chunk):
        q = query.take(np.arange(start, min(start + chunk, len(query))))
        acc = np.zeros((len(q), len(ref)), dtype=np.float32)
        q_nan = np.isnan(q.num)
        for j in range(q.num.shape[1]):
            d = np.abs(q.num[:, j, None] - ref.num[None, :, j])
            np.minimum(d, 1.0, out=d)
            if ref_has_nan[j] or q_nan[:, j].any():
                d[np.isnan(d)] = 1.0
                d[q_nan[:, j, None] & ref_nan[None, :, j]] = 0.0
            acc += d
        for j in range(q.cat.shape[1]):
            acc += q.cat[:, j, None] != ref.cat[None, :, j]
        out[start: start + len(q)] = acc.min(axis=1) / n_features
    return out


def _row_hashes(frames: list[pd.DataFrame], kinds: Mapping[str, str], cols: list[str]) -> list[np.ndarray]:
    """64-bit hash per row of exact (normalised) values, comparable across frames."""
    sizes = [len(f) for f in frames]
    bounds = np.cumsum([0] + sizes)
    codes = {}
    for col in cols:
        kind = kinds[col]
        if _is_numeric(kind):
            pooled = pd.Series(np.concatenate([_numeric(f[col], kind) for f in frames]))
        else:
            pooled = pd.concat([_categorical(f[col]) for f in frames], ignore_index=True)
        codes[col] = pd.factorize(pooled, sort=False, use_na_sentinel=True)[0]
    table = pd.DataFrame(codes) if codes else pd.DataFrame(index=range(int(bounds[-1])))
    h = pd.util.hash_pandas_object(table, index=False).to_numpy()
    return [h[bounds[i]: bounds[i + 1]] for i in range(len(frames))]


def distance_to_closest_record(
    train_real: pd.DataFrame,
    synth: pd.DataFrame,
    holdout_real: pd.DataFrame,
    kinds: Mapping[str, str],
    *,
    seed: int,
    max_rows: int = 5000,
) -> dict:
    """Distance to closest record (DCR) of synthetic rows, with a holdout baseline.

    Distance: Gower-like mean over columns of per-column distances in [0, 1] -- numeric and
    datetime ``min(|a - b| / scale, 1)`` with ``scale`` the 1st-99th percentile range of the
    training column (robust range; falls back to the full range, then 1), both-null 0 and
    one-null 1; categorical/boolean 0/1 mismatch with null as a category.

    Sampling (seeded): ``m = min(len(train), len(holdout), max_rows)`` rows of train and of
    holdout (equal sizes, so that 0.5 is the no-memorisation reference for the share), and
    up to ``max_rows`` synthetic rows.  Distances are computed in chunks (bounded memory).

    Returns:

    * ``median_dcr_synth`` / ``p05_dcr_synth``: median / 5th percentile over synthetic rows
      of the distance to the nearest (sampled) train row;
    * ``median_dcr_holdout`` / ``p05_dcr_holdout``: the same for holdout rows -- what
      "fresh data from the same population" looks like;
    * ``dcr_share``: share of synthetic rows strictly closer to the nearest train row than
      to the nearest holdout row (ties count one half).  About 0.5 is ideal, near 1 means
      the generator reproduces its training rows;
    * ``exact_copy_rate``: share of (all) synthetic rows identical, on every column, to some
      (any) training row; ``exact_copy_rate_holdout`` is the same for holdout rows (the
      baseline rate of naturally duplicated records);
    * ``n_synthetic``, ``n_reference``: rows used for the distance statistics.
    """
    cols = _columns(kinds, train_real, synth, holdout_real)
    rng = np.random.default_rng(seed)
    m = min(len(train_real), len(holdout_real), max_rows)
    n_syn = min(len(synth), max_rows)
    if m == 0 or n_syn == 0:
        raise ValueError("train, holdout and synthetic data must all have rows")
    ti = np.sort(rng.choice(len(train_real), size=m, replace=False))
    hi = np.sort(rng.choice(len(holdout_real), size=m, replace=False))
    si = np.sort(rng.choice(len(synth), size=n_syn, replace=False))
    train_s, hold_s, syn_s = _encode(
        [train_real.iloc[ti], holdout_real.iloc[hi], synth.iloc[si]], kinds, cols, train_pos=0)

    d_syn_train = _nearest_distance(syn_s, train_s)
    d_syn_hold = _nearest_distance(syn_s, hold_s)
    d_hold_train = _nearest_distance(hold_s, train_s)
    share = np.where(d_syn_train < d_syn_hold, 1.0, np.where(d_syn_train == d_syn_hold, 0.5, 0.0))

    h_train, h_syn, h_hold = _row_hashes([train_real, synth, holdout_real], kinds, cols)
    return {
        "median_dcr_synth": float(np.median(d_syn_train)),
        "median_dcr_holdout": float(np.median(d_hold_train)),
        "p05_dcr_synth": float(np.quantile(d_syn_train, 0.05)),
        "p05_dcr_holdout": float(np.quantile(d_hold_train, 0.05)),
        "dcr_share": float(share.mean()),
        "exact_copy_rate": float(np.isin(h_syn, h_train).mean()),
        "exact_copy_rate_holdout": float(np.isin(h_hold, h_train).mean()) if len(h_hold) else 0.0,
        "n_synthetic": int(n_syn),
        "n_reference": int(m),
    }


def membership_inference(
    train_real: pd.DataFrame,
    synth: pd.DataFrame,
    holdout_real: pd.DataFrame,
    kinds: Mapping[str, str],
    *,
    seed: int,
    max_rows: int = 2000,
    max_synth: int = 5000,
) -> dict:
    """Black-box membership-inference attacks that see only the synthetic rows.

    Candidates: ``m`` training rows (members) and ``m`` holdout rows (non-members), with
    ``m = min(len(train), len(holdout) // 2, max_rows)``; the other half of the holdout is the
    attacker's reference sample of the population. Distances are the Gower-like distance of
    :func:`distance_to_closest_record`, scaled by the synthetic data (what the attacker has).
    Two scores per candidate, higher meaning "member":

    * ``distance``: minus the distance to the closest synthetic row (a generator that
      memorises puts synthetic rows on top of its training rows);
    * ``density_ratio``: distance to the closest reference row over distance to the closest
      synthetic row, a nearest-neighbour estimate of p_synth(x) / p_population(x) (the idea of
      DOMIAS: a candidate where the synthetic density is high *relative to the population*
      is likely a member, which corrects for candidates that are just typical).

    Returns ``auc_distance``, ``auc_density_ratio``, ``auc`` (the stronger of the two; 0.5 =
    no better than guessing), ``advantage`` (``2 * auc - 1``, clipped at 0), ``n_members``,
    ``n_nonmembers``, ``n_reference``, ``n_synthetic``.
    """
    from sklearn.metrics import roc_auc_score

    cols = _columns(kinds, train_real, synth, holdout_real)
    rng = np.random.default_rng(seed)
    m = min(len(train_real), len(holdout_real) // 2, max_rows)
    n_syn = min(len(synth), max_synth)
    if m < 2 or n_syn == 0:
        raise ValueError("membership inference needs at least 2 training rows, 4 holdout rows and synthetic rows")
    mi = rng.choice(len(train_real), size=m, replace=False)
    hperm = rng.permutation(len(holdout_real))
    ni, ri = hperm[:m], hperm[m: m + min(len(holdout_real) - m, max_rows * 2)]
    si = rng.choice(len(synth), size=n_syn, replace=False)
    syn_e, mem_e, non_e, ref_e = _encode(
        [synth.iloc[si], train_real.iloc[mi], holdout_real.iloc[ni], holdout_real.iloc[ri]], kinds, cols, train_pos=0)
    cand = _Encoded(np.concatenate([mem_e.num, non_e.num]), np.concatenate([mem_e.cat, non_e.cat]))
    label = np.concatenate([np.ones(m), np.zeros(m)])
    d_syn = _nearest_distance(cand, syn_e)
    d_ref = _nearest_distance(cand, ref_e)
    eps = 1e-6
    auc_d = float(roc_auc_score(label, -d_syn))
    auc_r = float(roc_auc_score(label, (d_ref + eps) / (d_syn + eps)))
    auc = max(auc_d, auc_r)
    return {
        "auc_distance": auc_d,
        "auc_density_ratio": auc_r,
        "auc": auc,
        "advantage": max(0.0, 2.0 * auc - 1.0),
        "n_members": int(m),
        "n_nonmembers": int(m),
        "n_reference": int(len(ri)),
        "n_synthetic": int(n_syn),
    }
