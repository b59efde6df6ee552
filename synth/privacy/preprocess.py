"""Codec statistics for private runs, without reading statistics that are not allowed.

`schema` mode: the codec is a function of the declared schema and the Arrow types alone (it is
identical for any data with those columns). `dp` mode: additionally, every modelled column's
values are counted in cells that the declaration fixes (atoms, equal-width bins over
[min, max], declared categories, null); each count vector gets Laplace noise of scale
k / epsilon_pre (k columns; a row adds 1 to one cell per column, so each histogram has L1
sensitivity 1 and the k of them compose to epsilon_pre). Only the noised counts reach the codec.

The counts are sums, so Ray Data computes them per block and the driver adds them up and noises
them once (`exact_counts` / `merge_counts` / `noised`).
"""
from __future__ import annotations

import secrets
from typing import Iterable

import numpy as np
import pyarrow as pa

from synth.privacy.accounting import PrivacyPlan
from synth.privacy.config import PrivacyConfig
from synth.table import CodecConfig, TableCodec
from synth.table.schema import cell_counts, check_declared, measurement_cells


def exact_counts(batch: pa.Table | pa.RecordBatch, pcfg: PrivacyConfig, fields: list[str]) -> dict[str, np.ndarray]:
    return {name: cell_counts(batch.column(name), pcfg.declared[name], pcfg.bins, name) for name in fields}


def merge_counts(parts: Iterable[dict[str, np.ndarray]], pcfg: PrivacyConfig, fields: list[str]) -> dict[str, np.ndarray]:
    total = {name: np.zeros(measurement_cells(pcfg.declared[name], pcfg.bins)) for name in fields}
    for p in parts:
        for name in fields:
            total[name] += np.asarray(p[name], dtype=np.float64)
    return total


def noised(counts: dict[str, np.ndarray], epsilon: float, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """Laplace mechanism on every column's histogram, epsilon split evenly over the columns.
    The noise comes from OS entropy unless a generator is given (tests only: a known seed voids
    the guarantee)."""
    rng = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
    scale = len(counts) / epsilon
    return {name: c + rng.laplace(0.0, scale, size=c.shape) for name, c in counts.items()}


def private_codec(schema: pa.Schema, codec_cfg: CodecConfig, pcfg: PrivacyConfig, plan: PrivacyPlan,
                  counts: dict[str, np.ndarray] | None = None, rng: np.random.Generator | None = None) -> TableCodec:
    """The codec of a private run. `counts` (exact cell counts, dp mode only) are noised here."""
    masses = None
    if plan.preprocessing == "dp":
        if counts is None:
            raise ValueError("dp preprocessing needs the cell counts")
        masses = noised(counts, plan.epsilon_preprocessing, rng)
    return TableCodec.from_schema(schema, pcfg.declared, codec_cfg, num_rows=plan.train_rows, bins=pcfg.bins,
                                  masses=masses)


def modelled_fields(schema: pa.Schema, codec_cfg: CodecConfig, pcfg: PrivacyConfig) -> list[str]:
    return [f.name for f in check_declared(schema, pcfg.declared, codec_cfg.ignore)]
