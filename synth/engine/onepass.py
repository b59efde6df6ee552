"""The sampling protocol of one-pass generators (fingerprint, GAN), shared so that `synth sample`,
bulk synthesis and the endpoint drive them exactly like diffusion:

    x = engine.prior(n, generator)                         # seeded draws, on the CPU
    cond, requested = engine.encode_conditions(n, conditions)
    feats = engine.sample_features(x, cond, sampler=..., steps=..., guidance=..., generator=...)
    table = engine.decode(feats, requested, seed)          # requested values are met exactly

A one-pass generator has no solver: `sampler`, `steps` and `guidance` are validated like
diffusion's (so a request is accepted or refused the same way) and otherwise ignored; every row
costs one evaluation.
"""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from synth.diffusion.samplers import SAMPLERS
from synth.engine.base import Conditions, Engine
from synth.errors import ConfigError


class OnePassEngine(Engine):
    cond_columns: list[str]
    cond_cards: list[int]

    def samplers(self) -> list[str]:
        return sorted(s for s in SAMPLERS if s != "distilled")

    def nfe(self, sampler: str, steps: int, guidance: float, conditioned: bool = True) -> int:
        return 1

    def validate_request(self, n: int, sampler: str, steps: int, guidance: float) -> None:
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ConfigError(f"rows must be a positive integer, got {n!r}")
        if sampler not in self.samplers():
            raise ConfigError(f"unknown sampler {sampler!r}; choose one of {self.samplers()} "
                              f"(a {self.family} model ignores it: it generates in one pass)")
        if not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ConfigError(f"steps must be a positive integer, got {steps!r}")
        if not (isinstance(guidance, (int, float)) and math.isfinite(guidance) and guidance >= 0):
            raise ConfigError(f"guidance must be a finite number >= 0, got {guidance!r}")

    def null_conditions(self, n: int, device: torch.device | str = "cpu") -> Tensor:
        return torch.tensor(self.cond_cards, dtype=torch.long, device=device).expand(n, -1).clone()

    def encode_conditions(self, n: int, conditions: Conditions | None) -> tuple[Tensor, dict[str, list]]:
        """Condition slot tensor (n, k) (slot = card: not given) and the requested values per row."""
        cond = self.null_conditions(n)
        requested: dict[str, list] = {}
        for name, value in (conditions or {}).items():
            col = self.codec.categorical(name)
            if name not in self.cond_columns:
                raise ConfigError(f"column {name!r} is not a condition column of this model; "
                                  f"condition columns are {self.cond_columns}")
            values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value] * n
            if len(values) != n:
                raise ConfigError(f"condition {name!r} has {len(values)} values for {n} rows; "
                                  "give one value or one per row")
            cond[:, self.cond_columns.index(name)] = torch.from_numpy(col.codes(values))
            requested[name] = values
        return cond, requested

    def decode(self, feats: Tensor | np.ndarray, requested: dict[str, list], seed: int) -> pa.Table:
        feats = feats.numpy() if isinstance(feats, Tensor) else feats
        table = self.codec.decode(feats, np.random.default_rng(seed))
        for name, values in requested.items():  # requested values are met exactly
            i = table.schema.get_field_index(name)
            table = table.set_column(i, table.schema.field(i), self.codec.categorical(name).to_arrow(values))
        return table

    def sample(self, n: int, conditions: Conditions | None = None, *, sampler: str | None = None,
               steps: int | None = None, guidance: float | None = None, seed: int = 0) -> pa.Table:
        sampler = sampler or self.config.sampler
        steps = self.config.steps if steps is None else steps
        guidance = self.config.guidance if guidance is None else guidance
        self.validate_request(n, sampler, steps, guidance)
        cond, requested = self.encode_conditions(n, conditions)
        gen = torch.Generator().manual_seed(int(seed))
        bs = self.config.sample_batch_size
        parts = [self.sample_features(self.prior(min(bs, n - s), gen), cond[s:s + bs], sampler=sampler, steps=steps,
                                      guidance=guidance, generator=gen) for s in range(0, n, bs)]
        return self.decode(torch.cat(parts), requested, seed)
