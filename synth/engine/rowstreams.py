"""Random draws keyed by (seed, row index), so row i of a seed is the same row whatever the batch
size, the number of rows asked for, the shard layout, worker or actor count, or endpoint batching.

- The prior (every family's per-row noise) is drawn in blocks of ROW_BLOCK rows, each block from
  its own torch generator seeded by (seed, block index). A block is always drawn whole and sliced,
  so row i's prior is element i % ROW_BLOCK of block i // ROW_BLOCK.
- Per-row uniforms (the decode's draws of rare "other" categories, reference-drawn conditions) are
  counter-based: SplitMix64 of (seed, stream, row), vectorised in numpy.
- The stochastic sampler (ddpm) draws its step noise from one generator per call seeded by
  (seed, STEP_STREAM): its rows depend on how the call is split into model batches.
"""
from __future__ import annotations

import zlib

import numpy as np
import torch

ROW_BLOCK = 64
STEP_STREAM = 2**32 - 1
_MASK = 0xFFFFFFFFFFFFFFFF


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _key(seed: int, stream: int) -> int:
    return int(np.random.SeedSequence([int(seed) & _MASK, int(stream) & _MASK]).generate_state(1, np.uint64)[0])


def block_generator(seed: int, block: int) -> torch.Generator:
    return torch.Generator().manual_seed(_key(seed, block) >> 1)


def step_generator(seed: int) -> torch.Generator:
    """The generator of a stochastic sampler's step noise for one sampling call."""
    return block_generator(seed, STEP_STREAM)


def row_prior(prior_fn, seed: int, start: int, n: int) -> torch.Tensor:
    """Rows start..start+n-1 of `prior_fn(rows, generator)` under the block scheme above."""
    first, last = start // ROW_BLOCK, (start + n - 1) // ROW_BLOCK
    x = torch.cat([prior_fn(ROW_BLOCK, block_generator(seed, b)) for b in range(first, last + 1)])
    off = start - first * ROW_BLOCK
    return x[off:off + n]


class RowUniforms:
    """One uniform in [0, 1) per row and stream, for rows start..start+n-1 of a seed. Passed where a
    numpy Generator was (`codec.decode(feats, rng)`): columns that draw per row ask it by name."""

    def __init__(self, seed: int, start: int, n: int):
        self.seed, self.start, self.n = int(seed), int(start), int(n)

    def uniforms(self, stream: str | int) -> np.ndarray:
        s = zlib.crc32(stream.encode()) if isinstance(stream, str) else int(stream)
        rows = np.arange(self.start, self.start + self.n, dtype=np.uint64)
        bits = _splitmix64(_splitmix64(rows ^ np.uint64(_key(self.seed, s))))
        return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)

    def slice(self, lo: int, hi: int) -> "RowUniforms":
        return RowUniforms(self.seed, self.start + lo, hi - lo)
