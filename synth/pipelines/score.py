"""`synth score MODEL DATA -o OUT`: per-row log-likelihood under a model (outlier detection).

Every row of DATA gets `log_prob` (nats, in the space of `synth.engine.likelihood`), `bpd`
(-log_prob / (D ln 2)) and `unseen_values` (categorical values the model never saw, scored as its
"other" or most frequent slot: a strong outlier signal of their own). Rows with the lowest
log_prob are the ones the model finds least likely.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from synth.engine.likelihood import unseen_values
from synth.errors import ConfigError
from synth.evaluate.likelihood import LN2, dimensions, summarise
from synth.families import load_engine, require_likelihood
from synth.io import storage
from synth.io.data import open_dataset

SCORE_COLUMNS = ("log_prob", "bpd", "unseen_values")


def score_table(engine, rows: pa.Table, seed: int = 0) -> pa.Table:
    """The three score columns for `rows` (same order)."""
    require_likelihood(engine)
    lp = engine.log_prob(rows, seed=seed)
    d = dimensions(engine.codec)
    return pa.table({"log_prob": pa.array(lp, pa.float64()), "bpd": pa.array(-lp / (d * LN2), pa.float64()),
                     "unseen_values": pa.array(unseen_values(engine.codec, engine.model_rows(rows)), pa.int64())})


def score_file(artifact: str, data: str, output: str, *, seed: int = 0, scores_only: bool = False,
               top: int = 10) -> dict:
    """Score every row of `data` (Parquet file or folder) and write `output` (one Parquet file):
    the rows with the score columns appended, or only the scores (same row order) with scores_only.
    Returns a summary (rows, mean nats/row, bpd, the `top` least likely rows' indices)."""
    if not output.endswith(".parquet"):
        raise ConfigError(f"--output {output!r} must be a .parquet file")
    engine = load_engine(artifact)
    require_likelihood(engine)
    rows = open_dataset(data).to_table()
    if rows.num_rows == 0:
        raise ConfigError(f"{data!r} has no rows to score")
    clash = [c for c in SCORE_COLUMNS if c in rows.schema.names]
    if clash and not scores_only:
        raise ConfigError(f"{data!r} already has columns {clash}; rename them or pass --scores-only")
    scores = score_table(engine, rows, seed)
    out = scores if scores_only else rows
    if not scores_only:
        for name in SCORE_COLUMNS:
            out = out.append_column(name, scores.column(name))
    meta = {b"synth.score": json.dumps({"artifact_id": engine.manifest.get("artifact_id"), "seed": seed,
                                        "estimate": engine.likelihood_kind}).encode()}
    out = out.replace_schema_metadata({**(out.schema.metadata or {}), **meta})
    storage.write_bytes(output, _parquet_bytes(out))
    lp = scores.column("log_prob").to_numpy()
    order = np.argsort(lp, kind="stable")[:top]
    return {**summarise(lp, engine.codec, engine.likelihood_kind), "output": output,
            "least_likely": [{"row": int(i), "log_prob": float(lp[i])} for i in order],
            "rows_with_unseen_values": int((scores.column("unseen_values").to_numpy() > 0).sum())}


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()
