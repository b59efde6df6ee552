"""The held-out check every fit ends with: did the model learn the table?

A few thousand rows sampled from the fresh model are compared with real rows the model never saw
(the test split): column shapes, column pair trends and a classifier two-sample test. Real rows
against other real rows score about 0.99 / 0.98 / 0.50; a fit that collapsed (categories near
uniform, numerics spread over their range) scores far below on shapes and pair trends, and such a
fit is reported as failed (the CLI and jobs exit non-zero, the manifest records the verdict)
instead of being published silently.
"""
from __future__ import annotations

import pyarrow as pa

from synth.evaluate.detection import c2st_auc
from synth.evaluate.fidelity import KINDS as TABULAR_KINDS, column_shapes, pair_trends

# below these a model did not learn the table (collapsed): the fit is refused
FAILED = {"column_shapes": 0.85, "pair_trends": 0.70}
# below/above these it learnt something but is weak: said loudly, the model is kept
WEAK = {"column_shapes": 0.95, "pair_trends": 0.90, "c2st_auc": 0.90}


def held_out_check(engine, reference: pa.Table | None, *, rows: int = 4000, seed: int = 0) -> dict:
    """Scores of `rows` sampled rows against at most `rows` real held-out rows, with a verdict:
    "ok", "weak" (learnt, but far from real-vs-real) or "failed" (did not learn)."""
    kinds = {c: k for c, k in engine.output_kinds().items() if k in TABULAR_KINDS}  # not arrays, not ids
    held = 0 if reference is None else reference.num_rows
    if held < 50 or not kinds:
        return {"verdict": "not checked", "reasons": [f"only {held} held-out rows" if kinds else "no tabular columns"]}
    n = min(rows, reference.num_rows)
    real = reference.select(list(kinds)).slice(0, n).to_pandas()
    syn = engine.sample(n, seed=seed).select(list(kinds)).to_pandas()
    scores = {"column_shapes": column_shapes(real, syn, kinds)["mean"],
              "pair_trends": pair_trends(real, syn, kinds)["mean"],
              "c2st_auc": c2st_auc(real, syn, kinds, seed=seed, n_splits=3)}
    reasons = [f"{k} {scores[k]:.3f} < {v}" for k, v in FAILED.items() if scores[k] is not None and scores[k] < v]
    verdict = "failed" if reasons else "ok"
    if not reasons:
        reasons = [f"{k} {scores[k]:.3f} {'>' if k == 'c2st_auc' else '<'} {v}" for k, v in WEAK.items()
                   if scores[k] is not None and (scores[k] > v if k == "c2st_auc" else scores[k] < v)]
        verdict = "weak" if reasons else "ok"
    return {"rows": n, "reference": "test split (rows the model never saw)",
            **{k: (None if v is None else round(float(v), 4)) for k, v in scores.items()},
            "real_vs_real": {"column_shapes": 0.99, "pair_trends": 0.98, "c2st_auc": 0.50},
            "verdict": verdict, "reasons": reasons}


FAILED_EXIT = 3  # exit status of `synth fit` and `jobs.train` when the fit did not learn the table


def summary(check: dict) -> str:
    """One line for the CLI and job logs."""
    if check.get("verdict") == "not checked":
        return f"held-out check: not run ({'; '.join(check.get('reasons', []))})"
    line = (f"held-out check on {check['rows']} unseen rows: shapes {check['column_shapes']:.3f}, pair trends "
            f"{check['pair_trends']:.3f}, C2ST AUC {check['c2st_auc']:.3f} (real vs real about 0.99 / 0.98 / 0.50)")
    if check["verdict"] == "failed":
        return (f"{line}. FIT FAILED: the model did not learn the table ({'; '.join(check['reasons'])}); "
                "the artifact is kept for inspection but must not be used: try more training steps, or another "
                "model.family" + (" (reported only: evaluate.check is warn)" if check.get("on_failure") == "warn"
                                  else ""))
    if check["verdict"] == "weak":
        return f"{line}. WEAK FIT ({'; '.join(check['reasons'])}): far from real-vs-real; consider more steps"
    return line
