"""An empirical privacy audit: membership inference on inserted canaries, turned into a lower
bound on epsilon to set beside the claimed one.

Each run fits the generator once, on the base table with k copies of a canary row ("in") or
without them ("out"), and scores the released model with an attack: `match_share`, the share of
synthetic rows equal to the canary on its columns (black box: what a reader of the synthetic data
can do), or the model's own log-probability of the canary row (white box: what a holder of the
artifact can do; far stronger, because it sees a changed count even when no sampled row shows it;
the marginal family's `cell_log_prob`). DP bounds every attack on the released model, so the
strongest one gives the tightest audit. A threshold chosen on the first half of the runs separates "in" from "out" on
the second half; with true and false positive rates bounded by Clopper-Pearson intervals (95 %
overall), (epsilon, delta)-DP for a group of k rows implies TPR <= e^eps FPR + delta and
(1 - FPR) <= e^eps (1 - TPR) + delta, so

    epsilon_lower = max(0, log((TPR_lo - delta) / FPR_hi), log((1 - FPR_hi - delta) / (1 - TPR_lo)))

is a bound the mechanism provably cannot beat; the claimed group guarantee under rho-zCDP is
k^2 rho-zCDP (Bun and Steinke 2016), converted at the same delta. An audit whose lower bound
exceeds the claim has found a bug. Few runs give loose (small) lower bounds: the audit can
refute a claim, never prove it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.stats import beta


@dataclass
class AuditResult:
    runs: int
    canaries: int
    threshold: float
    tp: int
    fp: int
    fn: int
    tn: int
    epsilon_lower: float
    scores_in: list[float]
    scores_out: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


def epsilon_lower_bound(tp: int, fn: int, fp: int, tn: int, delta: float, alpha: float = 0.05) -> float:
    """The largest epsilon the counts prove at confidence 1 - alpha (Clopper-Pearson, one-sided each)."""
    tpr_lo = beta.ppf(alpha / 2, tp, fn + 1) if tp > 0 else 0.0
    fpr_hi = beta.ppf(1 - alpha / 2, fp + 1, tn) if tn > 0 else 1.0
    tnr_lo, fnr_hi = (1 - fpr_hi), (1 - tpr_lo)
    bounds = [0.0]
    if tpr_lo - delta > 0 and fpr_hi > 0:
        bounds.append(math.log((tpr_lo - delta) / fpr_hi))
    if tnr_lo - delta > 0 and fnr_hi > 0:
        bounds.append(math.log((tnr_lo - delta) / fnr_hi))
    return max(bounds)


def match_share(synthetic: pa.Table, canary: dict) -> float:
    """Share of synthetic rows equal to the canary on its columns."""
    mask = None
    for name, value in canary.items():
        m = pc.equal(synthetic.column(name), pa.scalar(value, synthetic.schema.field(name).type))
        mask = m if mask is None else pc.and_(mask, m)
    return float(pc.sum(pc.cast(pc.fill_null(mask, False), pa.int64())).as_py() or 0) / max(synthetic.num_rows, 1)


def canary_audit(base: pa.Table, canary_row: pa.Table, k: int, runs: int, delta: float,
                 fit_score: Callable[[pa.Table, int], float], seed: int = 0) -> AuditResult:
    """`runs` fits (half with k copies of `canary_row` appended); `fit_score(table, run)` fits on
    `table` and returns the attack's score of the canary (higher: more likely a member)."""
    rng = np.random.default_rng(seed)
    member = rng.permutation(np.arange(runs) % 2 == 0)
    with_canaries = pa.concat_tables([base] + [canary_row.cast(base.schema)] * k)
    scores = np.asarray([float(fit_score(with_canaries if m else base, i)) for i, m in enumerate(member)])
    half = runs // 2
    cal_in, cal_out = scores[:half][member[:half]], scores[:half][~member[:half]]
    threshold = (float(np.mean(cal_in)) + float(np.mean(cal_out))) / 2 if len(cal_in) and len(cal_out) else 0.0
    guess, truth = scores[half:] > threshold, member[half:]
    tp, fp = int((guess & truth).sum()), int((guess & ~truth).sum())
    fn, tn = int((~guess & truth).sum()), int((~guess & ~truth).sum())
    return AuditResult(runs, k, threshold, tp, fp, fn, tn, epsilon_lower_bound(tp, fn, fp, tn, delta),
                       scores[member].tolist(), scores[~member].tolist())
