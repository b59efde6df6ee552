"""The held-out likelihood of a model: an explicit measure beside the sample-based ones.

`held_out_likelihood(engine, rows)` scores real rows the model never saw with the generator's
`log_prob(rows)` (families that have one: `synth.families.likelihood_families()`) and reports
the mean negative log-likelihood in nats per row and in bits per dimension. Lower is better.

The space every family scores in (`synth.engine.likelihood`): categoricals and null flags are
discrete, numerics a density over their codec CDF value u in [0, 1] (the column's rank). The
density over raw values adds the codec's log F'(x), identical for every model fitted on the same
training rows, so it is left out. Under the codec alone (independent columns, each u uniform) a
row costs the sum of the categorical entropies; a model that learns the dependence costs less.
bpd = nats per row / (D ln 2), D the number of modelled columns.
"""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

LN2 = math.log(2.0)
SPACE = ("categoricals and null flags discrete; numerics a density over their codec CDF value u in [0, 1] "
         "(the column's rank); a raw-value density adds the codec's log F'(x), the same for every family")


def dimensions(codec) -> int:
    """D of bits per dimension: the modelled columns."""
    return len(codec.columns)


def summarise(log_prob: np.ndarray, codec, estimate: str) -> dict:
    """Mean negative log-likelihood (nats per row), bpd, and what kind of estimate it is."""
    lp = np.asarray(log_prob, dtype=np.float64)
    d = dimensions(codec)
    nll = float(-lp.mean()) if len(lp) else float("nan")
    finite = np.isfinite(lp)
    return {"nats_per_row": nll, "bpd": nll / (d * LN2), "rows": int(len(lp)), "dimensions": d,
            "median_nats": float(-np.median(lp)) if len(lp) else float("nan"),
            "impossible_rows": int((~finite).sum()), "estimate": estimate, "space": SPACE}


def held_out_likelihood(engine, rows: pa.Table | None, *, max_rows: int = 10_000, seed: int = 0) -> dict | None:
    """The likelihood summary of at most `max_rows` held-out rows (and at most the engine's
    `likelihood_rows`, where its estimator is costly: a diffusion model's ODE), or None for a model
    without a likelihood (or no rows)."""
    if not callable(getattr(engine, "log_prob", None)) or rows is None or rows.num_rows == 0:
        return None
    max_rows = min(max_rows, getattr(engine, "likelihood_rows", max_rows))
    if rows.num_rows > max_rows:
        rows = rows.take(np.random.default_rng(seed).choice(rows.num_rows, max_rows, replace=False))
    lp = engine.log_prob(rows, seed=seed)
    return summarise(lp, engine.codec, engine.likelihood_kind)


def summary_rows(lik: dict | None) -> list[tuple[str, str]]:
    """The rows `synth evaluate` and the HTML report print."""
    if not lik:
        return []
    return [("Held-out NLL (nats/row, lower is better)", f"{lik['nats_per_row']:.4f}"),
            ("Held-out bits per dimension", f"{lik['bpd']:.4f}"),
            ("Likelihood estimate",
             f"{lik['estimate'].split(':')[0]} ({lik['rows']} rows, {lik['dimensions']} columns)")]
