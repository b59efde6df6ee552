"""Scoring rows under a generator (`log_prob(rows)`), in one space that every family with a
likelihood shares (`synth.evaluate.likelihood` summarises held-out scores as nats/row and bpd).

The space (what "nats per row" means everywhere in synth):

* a categorical or boolean column is discrete: its one-hot slot, P(slot) (values folded into the
  codec's "other" slot are scored as that slot);
* a numeric, integer or datetime column is a density over its codec CDF value u = F(x) in [0, 1]
  (`synth.table.columns.numeric`), i.e. the column's rank: p(u). A point mass (capital-gain = 0)
  is a flat segment of F; its rows sit at the middle of the segment (the codec's held-out encoding);
* a null in a nullable numeric is discrete: P(null), and its value is not scored.

So log p(row) = log P(categoricals, null flags) + log p(u of the non-null numerics | ...). The
density over the raw value x is log p(u) + log F'(x): F' is the codec's, the same for every
family fitted on the same training rows, so it is left out and families compare on the same
scale. Under the codec alone (independent columns, u uniform) a row scores the sum of the
categorical entropies; a model of the dependence scores lower.

bpd (bits per dimension) is nats per row / (D ln 2) with D the number of modelled columns.

Each family states how its number relates to the exact log-likelihood (`likelihood_kind`):
autoregressive: exact for its tokens, the numeric density within a fine bin uniform (that is how
it samples); flow: exact for numerics, a dequantisation bound for discrete columns; VAE: an
importance-weighted bound.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from synth.errors import DataError
from synth.table import TableCodec
from synth.table.columns import CategoricalColumn

def encode_rows(codec: TableCodec, rows: pa.Table) -> Tensor:
    """Rows to codec features (float64) as the held-out split is encoded: point masses at the
    middle of their segment, categories the codec never saw in their "other" (or most frequent)
    slot, so unusual rows get a score instead of an error (`unseen_values` flags them)."""
    if not isinstance(rows, (pa.Table, pa.RecordBatch)):
        raise DataError(f"rows to score must be an Arrow table, got {type(rows).__name__}")
    missing = [c.name for c in codec.columns if c.name not in rows.schema.names]
    if missing:
        raise DataError(f"the rows to score lack the model's columns {missing}; the model was trained on "
                        f"{[c.name for c in codec.columns]}")
    try:
        return torch.from_numpy(codec.encode(rows, None, strict=False))
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
        raise DataError(f"the rows to score do not match the model's column types ({e}); the model expects "
                        f"{codec.schema}") from None


def unseen_values(codec: TableCodec, rows: pa.Table) -> np.ndarray:
    """Per row, how many categorical values the codec never saw (scored as its fallback slot)."""
    out = np.zeros(rows.num_rows, dtype=np.int64)
    for col in codec.columns:
        if not isinstance(col, CategoricalColumn):
            continue
        arr = rows.column(col.name)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        known = col.index_of()
        values = col.standin(arr.to_pylist())
        out += np.fromiter((v not in known for v in values), dtype=bool, count=len(values))
    return out


def log_prob_rows(engine, rows: pa.Table, fn: Callable[[Tensor, torch.Generator], Tensor], batch_size: int = 4096,
                  seed: int = 0) -> np.ndarray:
    """log p(row) in nats for every row: `fn(features, generator)` on batches of encoded rows.
    The generator (seeded by `seed`, one per call) feeds any estimator's draws (dequantisation,
    importance samples), so a score is reproducible."""
    x = encode_rows(engine.codec, engine.model_rows(rows))
    gen = torch.Generator().manual_seed(int(seed))
    out = [fn(x[i:i + batch_size], gen).double().cpu() for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0)


# ---- helpers for families that model dequantised features in z = Phi^-1(u) -------------------------
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def log_std_normal(z: Tensor) -> Tensor:
    """log phi(z), elementwise: minus the log Jacobian of u = Phi(z)."""
    return -0.5 * z * z - LOG_SQRT_2PI
