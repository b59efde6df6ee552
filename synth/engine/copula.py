"""The copula engine (family "fingerprint", the name its artifacts carry): a Gaussian copula
fitted from a statistical fingerprint alone (`synth.table.fingerprint`, `synth fingerprint`), no raw rows.

Each column's marginal comes from the fingerprint (quantiles, or a normal truncated to
[min, max] from mean/std; category frequencies; null shares) and the dependence from its
correlation matrix on normal scores. Sampling draws latent normals with that correlation and
maps each dimension through its marginal; the result is written as ordinary codec features
(quantile-normal numerics, +/-1 one-hot categoricals, null flags) and decoded by the table
codec, so the engine plugs into `synth sample`, bulk synthesis and the Serve endpoint through
the same `prior -> sample_features -> decode` path as diffusion. There is one pass and no
sampler: `sampler`, `steps` and `guidance` are accepted and ignored.

Conditions constrain latent dimensions to an interval: a category's interval of its column's
dimension, a numeric value or range the interval of normal scores that decodes into it (and a
nullable numeric's null dimension to "not null"). Conditioned dimensions are drawn one after the
other from their conditional normal truncated to the interval (the GHK construction; exact for one
condition column, an approximation for several), the rest from the conditional normal given them,
so every row meets its conditions with no rejection.
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import BaseModel, ConfigDict, Field
from scipy.special import ndtr, ndtri
from torch import Tensor

from synth.io.artifact import Artifact
from synth.engine.onepass import OnePassEngine
from synth.errors import ConfigError, SynthError
from synth.table.fingerprint import Fingerprint, arrow_type_from_string, category_order, check_correlation
from synth.table import TableCodec
from synth.table.columns import CategoricalColumn, NumericColumn

GRID = 1024  # support points of each numeric marginal
U_CLIP = 1e-12


class CopulaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    family: Literal["fingerprint"] = "fingerprint"
    dims: list[tuple[str, Literal["value", "null"]]] = Field(default_factory=list)
    null_share: dict[str, float] = Field(default_factory=dict, description="nullable numeric columns")
    # the request settings of the shared sampling protocol (one-pass: validated, then ignored)
    sampler: str = "ddim"
    steps: int = Field(1, ge=1)
    guidance: float = Field(1.0, ge=0)
    sample_batch_size: int = Field(65_536, ge=1)


def _numeric_column(c, nullable: bool) -> NumericColumn:
    p = (np.arange(GRID) + 0.5) / GRID
    if c.quantiles is not None:
        q = np.asarray(c.quantiles, dtype=np.float64)
        x = np.interp(p, q[:, 0], q[:, 1])
        lo, hi = float(q[0, 1]), float(q[-1, 1])
    else:  # a normal truncated to [min, max]
        lo, hi = float(c.min), float(c.max)
        if c.std == 0 or lo == hi:
            x = np.full(GRID, min(max(c.mean, lo), hi))
        else:
            a, b = ndtr((lo - c.mean) / c.std), ndtr((hi - c.mean) / c.std)
            x = np.clip(c.mean + c.std * ndtri(np.clip(a + p * (b - a), U_CLIP, 1 - U_CLIP)), lo, hi)
    res = {"integer": 1.0, "datetime": c.resolution_s or 0.0}.get(c.kind, 0.0)
    return NumericColumn(c.name, c.kind, c.arrow_type, nullable, x, np.arange(GRID + 1) / GRID,
                         np.zeros(GRID, bool), lo, hi, res, int(c.origin or 0))


def codec_from_fingerprint(fp: Fingerprint) -> TableCodec:
    """A table codec whose marginals are the fingerprint's (no rows needed)."""
    fields, columns = [], []
    for c in fp.columns:
        t = arrow_type_from_string(c.arrow_type)
        nullable = c.null_share > 0
        if c.numeric:
            columns.append(_numeric_column(c, nullable))
        else:
            cats, probs = category_order(c.frequencies, c.null_share)
            vtype = t.value_type if pa.types.is_dictionary(t) else t
            if c.kind == "boolean" and not pa.types.is_boolean(vtype):
                raise ConfigError(f"fingerprint column {c.name!r} is boolean but its arrow_type is {c.arrow_type}")
            try:  # the values must fit the column's Arrow type
                pa.array([v for v in cats if v is not None], type=vtype)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as e:
                raise ConfigError(f"fingerprint column {c.name!r}: frequencies hold values that are not "
                                  f"{vtype} ({e})") from None
            columns.append(CategoricalColumn(c.name, c.kind, c.arrow_type, nullable, cats, probs.tolist(),
                                             [], [], str(vtype)))
        fields.append(pa.field(c.name, t, nullable=True))
    return TableCodec(pa.schema(fields), columns, int(fp.rows or 0))


class CopulaEngine(OnePassEngine):
    family = "fingerprint"
    range_enforcement = "conditional-gaussian"

    def __init__(self, config: CopulaConfig, codec: TableCodec, correlation: np.ndarray):
        self.config = config
        self.codec = codec
        self.corr = np.asarray(correlation, dtype=np.float64)
        self.dims = [tuple(d) for d in config.dims]
        if self.corr.shape != (len(self.dims), len(self.dims)):
            raise SynthError(f"fingerprint model: correlation is {self.corr.shape}, expected {len(self.dims)} dims")
        self.chol = np.linalg.cholesky(self.corr)
        self.dim_of = {d: i for i, d in enumerate(self.dims)}
        self.cond_columns = codec.categorical_names()
        self.cond_cards = [codec.categorical(c).width for c in self.cond_columns]
        self.range_columns = [c.name for c in codec.columns if isinstance(c, NumericColumn)]
        self.cuts = {c.name: np.concatenate([[0.0], np.cumsum(c.probs)])
                     for c in codec.columns if isinstance(c, CategoricalColumn)}
        for cut in self.cuts.values():
            cut /= cut[-1]

    @classmethod
    def from_fingerprint(cls, fp: Fingerprint, on_invalid: Literal["repair", "refuse"] = "repair",
                         source: str = "") -> tuple["CopulaEngine", dict]:
        corr, report = check_correlation(fp, on_invalid, source)
        config = CopulaConfig(dims=fp.dims(),
                                   null_share={c.name: c.null_share for c in fp.columns if c.numeric and c.null_share})
        return cls(config, codec_from_fingerprint(fp), corr), report

    # -- the sampling protocol (synth.engine.onepass) ------------------------------------------
    def prior(self, n: int, generator: torch.Generator) -> Tensor:
        return torch.randn((n, len(self.dims)), generator=generator, dtype=torch.float64)

    def to(self, device: torch.device | str) -> "CopulaEngine":
        return self  # numpy on the CPU; nothing to move

    def latent(self, e: np.ndarray, slots: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        """Correlated latent normals from iid normals `e` (n, d), honouring condition slots and the
        u-intervals of numeric conditions (a conditioned numeric is never null)."""
        cards = np.asarray(self.cond_cards)
        given = np.concatenate([slots < cards[None, :], (low > 0.0) | (high < 1.0)], axis=1)
        z = np.empty_like(e)
        patterns, inverse = np.unique(given, axis=0, return_inverse=True)
        k = len(self.cond_columns)
        for p, pattern in enumerate(patterns):
            rows = np.flatnonzero(inverse.reshape(-1) == p)
            if not pattern.any():
                z[rows] = e[rows] @ self.chol.T
                continue
            limits = []  # (latent dim, low u, high u) of each conditioned dimension, per row
            for j in np.flatnonzero(pattern):
                if j < k:
                    name = self.cond_columns[j]
                    cut, slot = self.cuts[name], slots[rows, j]
                    limits.append((self.dim_of[(name, "value")], cut[slot], cut[slot + 1]))
                    continue
                name = self.range_columns[j - k]
                limits.append((self.dim_of[(name, "value")], low[rows, j - k], high[rows, j - k]))
                if (name, "null") in self.dim_of:
                    share = self.config.null_share.get(name, 0.0)
                    limits.append((self.dim_of[(name, "null")], np.full(len(rows), share), np.ones(len(rows))))
            cdims = [d for d, _, _ in limits]
            order = cdims + [i for i in range(len(self.dims)) if i not in cdims]
            L = np.linalg.cholesky(self.corr[np.ix_(order, order)])
            eo = e[np.ix_(rows, order)].copy()
            for i, (_, a, b) in enumerate(limits):  # truncate each conditioned dimension to its interval
                m = eo[:, :i] @ L[i, :i]
                a = ndtr((ndtri(np.clip(a, 0, 1)) - m) / L[i, i])
                b = ndtr((ndtri(np.clip(b, 0, 1)) - m) / L[i, i])
                u = a + ndtr(eo[:, i]) * (b - a)
                eo[:, i] = ndtri(np.clip(u, U_CLIP, 1 - U_CLIP))
            zo = eo @ L.T
            z[np.ix_(rows, order)] = zo
        return z

    def features(self, z: np.ndarray) -> np.ndarray:
        """Latent normals -> codec features."""
        out = np.empty((len(z), self.codec.width))
        for col, sl in zip(self.codec.columns, self.codec.slices):
            v = z[:, self.dim_of[(col.name, "value")]]
            if isinstance(col, CategoricalColumn):
                slot = np.clip(np.searchsorted(self.cuts[col.name], ndtr(v), side="right") - 1, 0, col.width - 1)
                block = np.full((len(z), col.width), -1.0)
                block[np.arange(len(z)), slot] = 1.0
                out[:, sl] = block
            else:
                out[:, sl.start] = v
                if col.nullable:
                    u = ndtr(z[:, self.dim_of[(col.name, "null")]])
                    out[:, sl.start + 1] = np.where(u < self.config.null_share.get(col.name, 0.0), 1.0, -1.0)
        return out

    @torch.no_grad()
    def sample_features(self, x: Tensor, cond: Tensor, *, sampler: str, steps: int, guidance: float,
                        generator: torch.Generator | None) -> Tensor:
        slots, low, high = (t.cpu().numpy() for t in self.split_conditions(cond))
        z = self.latent(x.double().cpu().numpy(), slots, low, high)
        return torch.from_numpy(self.features(z))

    # -- artifact -------------------------------------------------------------------------------
    def sampling_state(self) -> dict[str, Tensor]:
        return {"correlation": torch.from_numpy(self.corr.copy())}

    def config_dict(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json")

    @classmethod
    def from_artifact(cls, art: Artifact) -> "CopulaEngine":
        return cls(CopulaConfig.model_validate(art.engine["config"]), TableCodec.from_dict(art.codec),
                   art.tensors["correlation"].double().numpy())
