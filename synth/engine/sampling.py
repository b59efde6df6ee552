"""The sampling protocol every family implements, and what the families share of it.

`synth sample`, bulk synthesis and the endpoint drive any engine the same way:

    engine.validate_request(n, sampler, steps, guidance)   # refused with a message, or accepted
    cond, requested = engine.encode_conditions(n, conditions)
    x = engine.prior(n, generator)                          # seeded draws, on the CPU
    feats = engine.sample_features(x, cond, sampler=..., steps=..., guidance=..., generator=...)
    table = engine.decode(feats, requested, seed)           # requested values are met exactly

Conditions are categorical slots for every family; a family that also conditions on numeric columns
(`range_columns`) gets each row's u-interval of them in the same tensor and says how it meets them
(`range_enforcement`); the others refuse numeric conditions by name (docs/conditions.md).

`SamplingEngine` implements everything but `prior` and `sample_features` (the family's own
generation); `DenoisingEngine` adds what the denoising families (tabular and array diffusion)
share: the classifier-free-guidance training loss, EMA, sampling with a solver on any device.
"""
from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from pydantic import BaseModel
from torch import Tensor, nn

from synth.io.artifact import Artifact
from synth.diffusion.guidance import guided_denoiser
from synth.diffusion.processes import timesteps
from synth.diffusion.samplers import SAMPLERS
from synth.engine.base import Conditions, Engine
from synth.errors import ArtifactError, ConfigError
from synth.engine.rowstreams import RowUniforms, row_prior, step_generator
from synth.table import TableCodec
from synth.table.columns import NumericColumn

MAX_STEPS = 1000


class SamplingEngine(Engine):
    cond_columns: list[str]  # categorical columns a request may condition on
    cond_cards: list[int]  # their category counts (slot == card means "not given")
    range_columns: list[str] = []  # numeric columns a request may condition on (values and ranges)
    range_enforcement: ClassVar[str] = ""  # how the family meets them ("truncation", "conditional-gaussian")
    range_refusal: str | None = None  # why this model refuses numeric conditions, when its family takes them
    max_steps: ClassVar[int | None] = MAX_STEPS  # None: steps are accepted and ignored (one-pass families)
    sampler_hint: ClassVar[str] = ""  # appended to the unknown-sampler message

    def samplers(self) -> list[str]:
        """Sampler names a request may give (a distilled student's sampler only for students)."""
        return sorted(s for s, spec in SAMPLERS.items() if not spec.student)

    def cost(self, sampler: str, steps: int, guidance: float, conditioned: bool = True) -> int:
        """Network evaluations per row (NFE): the one definition that manifests, contracts and the
        endpoint report. Guidance other than 0 or 1 doubles them for conditioned rows, unless the
        sampler is a student's, which takes the weight as an input."""
        spec = SAMPLERS[sampler]
        guided = conditioned and guidance not in (0.0, 1.0) and not spec.student
        return spec.nfe(steps) * (2 if guided else 1)

    def fixed_steps(self) -> int | None:
        """The steps this model always runs, whatever a caller would choose (None: the caller's choice)."""
        return None

    def describe(self) -> dict:
        """What the model manifest records of how this generator samples."""
        c = self.config
        return {"sampling": {"sampler": c.sampler, "steps": c.steps, "guidance": c.guidance}}

    def validate_request(self, n: int, sampler: str, steps: int, guidance: float) -> None:
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ConfigError(f"rows must be a positive integer, got {n!r}")
        if sampler not in self.samplers():
            raise ConfigError(f"unknown sampler {sampler!r}; choose one of {self.samplers()}{self.sampler_hint}")
        top = self.max_steps
        if not isinstance(steps, (int, np.integer)) or steps < 1 or (top is not None and steps > top):
            raise ConfigError(f"steps must be an integer in 1..{top}, got {steps!r}" if top is not None
                              else f"steps must be a positive integer, got {steps!r}")
        if not (isinstance(guidance, (int, float)) and math.isfinite(guidance) and guidance >= 0):
            raise ConfigError(f"guidance must be a finite number >= 0, got {guidance!r}")

    def null_conditions(self, n: int, device: torch.device | str = "cpu") -> Tensor:
        """Condition slots of n rows that condition on nothing (see `encode_conditions`)."""
        slots = torch.tensor(self.cond_cards, dtype=torch.long, device=device).expand(n, -1).clone()
        if not self.range_columns:
            return slots
        ranges = torch.tensor([0.0, 1.0], dtype=torch.float64, device=device).repeat(n, len(self.range_columns))
        return torch.cat([slots.double(), ranges], dim=1)

    def split_conditions(self, cond: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(slots (n, k) long, low (n, m), high (n, m)) of a condition tensor of a family with range columns."""
        k, m = len(self.cond_columns), len(self.range_columns)
        return cond[:, :k].long(), cond[:, k:k + 2 * m:2], cond[:, k + 1:k + 2 * m:2]

    def encode_conditions(self, n: int, conditions: Conditions | None, seed: int = 0,
                          start: int = 0) -> tuple[Tensor, dict[str, list]]:
        """Condition tensor (n, k) and the requested value of each conditioned column per row (of the
        model table: conditions on a constraint's columns are mapped by it, drawn per (seed, row)).

        Column c < k holds the slot of categorical condition column c (its card: not given). A family
        that conditions on numeric columns (`range_columns`, m of them) gets 2m more float64 columns:
        per row and numeric column the interval of its CDF value u the row must fall in ([0, 1]: not
        given; `NumericColumn.u_interval`). A requested value (a category, an exact number; None for a
        range) is written into the output exactly by `decode`."""
        if self.constraints is not None:
            conditions = self.constraints.conditions(n, conditions, RowUniforms(seed, start, n))
        cond = self.null_conditions(n)
        requested: dict[str, list] = {}
        for name, value in (conditions or {}).items():
            values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value] * n
            if len(values) != n:
                raise ConfigError(f"condition {name!r} has {len(values)} values for {n} rows; "
                                  "give one value or one per row")
            if name in self.cond_columns:
                cond[:, self.cond_columns.index(name)] = torch.from_numpy(self.condition_slots(name, values))
                requested[name] = values
            elif name in self.range_columns:
                low, high, exact = self.condition_intervals(name, values)
                j = len(self.cond_columns) + 2 * self.range_columns.index(name)
                cond[:, j], cond[:, j + 1] = torch.from_numpy(low), torch.from_numpy(high)
                if any(exact):
                    requested[name] = exact
            else:
                self.refuse_condition(name)
        return cond, requested

    def refuse_condition(self, name: str) -> None:
        """The error for a condition on a column this model cannot condition on."""
        col = self.codec.by_name.get(name)
        if col is None:
            raise ConfigError(f"unknown column {str(name)[:64]!r}: this model has no such column (names are compared "
                              "exactly, by case; `synth inspect MODEL` lists them)")
        if isinstance(col, NumericColumn):
            raise ConfigError(f"column {name!r} is {col.kind}; " + (self.range_refusal or (
                f"the {self.family} family conditions on categorical columns only: fit the autoregressive "
                "(default) family for numeric conditions")))
        self.codec.categorical(name)  # a kind no family conditions on is named as such
        raise ConfigError(f"column {name!r} is not a condition column of this model; condition columns are "
                          f"{self.cond_columns}")

    def condition_slots(self, name: str, values: list) -> np.ndarray:
        """The condition slot of each requested value of a condition column (the codec's category slot)."""
        return self.codec.categorical(name).codes(values)

    def condition_intervals(self, name: str, values: list) -> tuple[np.ndarray, np.ndarray, list]:
        """Per row: the low and high ends of the u-interval of a numeric condition, and the exact value
        (in the column's float space) or None for a range. Refused, naming the column, when a value
        cannot be parsed or no value it allows is ever generated."""
        col = self.codec.by_name[name]
        low, high, exact = np.empty(len(values)), np.empty(len(values)), []
        seen: dict[str, tuple[float, float, float | None]] = {}
        for i, v in enumerate(values):
            key = repr(v)
            if key not in seen:
                lo, hi, is_value = col.condition(v)
                interval = col.u_interval(lo, hi)
                if interval is None:
                    what = "value" if is_value else "range"
                    raise ConfigError(f"condition on {name!r}: this model never generates a {col.kind} {what} like "
                                      f"{_shown(v)} (it lies outside the values the model learnt for the column, or "
                                      "between them); choose one inside the column's range")
                seen[key] = (*interval, lo if is_value else None)
            low[i], high[i], e = seen[key]
            exact.append(e)
        return low, high, exact

    def enforcement(self, conditions: Conditions | None) -> dict[str, str]:
        """How each condition is met: "exact-slot" (a category's slot, the value written into the
        row), or the family's mechanism for numeric conditions (`range_enforcement`)."""
        mapped = self.constraints.owner if self.constraints is not None else {}  # a fixed combination's slot
        return {name: "exact-slot" if name in self.cond_columns or name in mapped else self.range_enforcement
                for name in (conditions or {})}

    def impute(self, table: pa.Table, seed: int = 0) -> pa.Table:
        """`table` with its null cells filled by draws given each row's known cells (`synth impute`);
        families that can override this."""
        raise ConfigError(f"the {self.family} family cannot impute missing cells; fit the autoregressive (default) "
                          "family, which draws them given the row's known cells")

    def row_prior(self, seed: int, start: int, n: int) -> Tensor:
        """The prior of rows start..start+n-1 of a seed: row i's draws depend on (seed, i) only."""
        return row_prior(self.prior, seed, start, n)

    def decode(self, feats: Tensor | np.ndarray, requested: dict[str, list], seed: int, start: int = 0) -> pa.Table:
        """Rows start..start+n-1 of a seed; per-row draws (rare categories) are keyed by (seed, row).
        Requested values are written exactly: categories, and exact numeric values (rows with None, a
        range, keep the decoded value, which the family's sampling put inside the range)."""
        feats = feats.numpy() if isinstance(feats, Tensor) else feats
        uniforms = RowUniforms(seed, start, feats.shape[0])
        table = self.codec.decode(feats, uniforms)
        for name, values in requested.items():
            i = table.schema.get_field_index(name)
            col = self.codec.by_name[name]
            if isinstance(col, NumericColumn):
                given = np.array([v is not None for v in values])
                exact = col.to_arrow(np.array([v if v is not None else 0.0 for v in values], dtype=np.float64))
                arr = pc.if_else(pa.array(given), exact, table.column(i).combine_chunks())
            else:
                arr = col.to_arrow(values)
            table = table.set_column(i, table.schema.field(i), arr)
        return table if self.constraints is None else self.constraints.inverse(table, uniforms)

    def settings(self, sampler: str | None = None, steps: int | None = None,
                 guidance: float | None = None) -> tuple[str, int, float]:
        """(sampler, steps, guidance) of a request: what is given, else the model's fixed steps and
        its config's defaults."""
        if steps is None:
            steps = self.fixed_steps() or self.config.steps
        return (sampler or self.config.sampler, steps,
                float(self.config.guidance if guidance is None else guidance))

    def sample(self, n: int, conditions: Conditions | None = None, *, sampler: str | None = None,
               steps: int | None = None, guidance: float | None = None, seed: int = 0, start: int = 0) -> pa.Table:
        """Rows start..start+n-1 of `seed` (synth.engine.rowstreams): the same rows for any n, batch size
        or split into calls (up to float rounding of differently shaped batches), ddpm excepted."""
        sampler, steps, guidance = self.settings(sampler, steps, guidance)
        self.validate_request(n, sampler, steps, guidance)
        cond, requested = self.encode_conditions(n, conditions, seed, start)
        x = self.row_prior(seed, start, n)
        gen = step_generator(seed)  # only the stochastic sampler draws from it
        bs = self.config.sample_batch_size
        parts = []
        for lo in range(0, n, bs):
            parts.append(self.sample_features(x[lo:lo + bs], cond[lo:lo + bs], sampler=sampler, steps=steps,
                                              guidance=guidance, generator=gen))
        return self.decode(torch.cat(parts), requested, seed, start)


def _shown(value) -> str:
    """A user's condition value as echoed in an error (bounded)."""
    text = repr(value)
    return text if len(text) <= 64 else text[:64] + "..."


class EMAWeights:
    """What a generator trained by `synth.train.loop.train` shares: the online `net` it optimises,
    its EMA `ema` (the artifact's weights, used for sampling) and loading from an artifact."""
    net: nn.Module  # the trained module (what the training loop prepares and optimises)
    ema: nn.Module
    config_class: ClassVar[type[BaseModel]]

    @torch.no_grad()
    def update_ema(self, net: nn.Module, decay: float) -> None:
        for e, p in zip(self.ema.parameters(), net.parameters()):
            e.lerp_(p.detach().to(e.device), 1.0 - decay)

    def to(self, device: torch.device | str):
        """Sample on `device` (e.g. a GPU per bulk-synthesis actor or Serve replica)."""
        self.ema.to(device)
        return self

    def sampling_state(self) -> dict[str, Tensor]:
        return {k: v.float() for k, v in self.ema.state_dict().items()}

    def load_sampling_state(self, tensors: dict[str, Tensor]) -> None:
        """The inverse of `sampling_state`: the saved EMA weights, for sampling and as the online
        weights (a checkpoint then restores the online ones)."""
        self.ema.load_state_dict(tensors)
        self.net.load_state_dict(tensors)

    @classmethod
    def from_artifact(cls, art: Artifact):
        from pydantic import ValidationError

        try:
            engine = cls(cls.config_class.model_validate(art.engine["config"]), TableCodec.from_dict(art.codec))
            engine.load_sampling_state(art.tensors)
        except (ValidationError, RuntimeError) as e:  # an older synth's settings or weight shapes
            raise ArtifactError(f"this {cls.family} model was written by a synth whose {cls.family} family had other "
                                f"settings or weights ({str(e).splitlines()[0][:200]}); retrain it with this "
                                "version") from None
        return engine

    def config_dict(self) -> dict:
        return self.config.model_dump(mode="json")


class DenoisingEngine(EMAWeights, SamplingEngine):
    """A denoiser `net` (and its EMA) trained under one noise process and objective, with
    condition dropout for classifier-free guidance."""

    def loss(self, net: nn.Module, rows: Tensor, generator: torch.Generator | None, reduce: bool = True) -> Tensor:
        """Training loss of one batch of encoded rows: the scalar mean, or one loss per row with
        reduce=False (DP-SGD clips per row). `net` may be a DDP/Accelerate wrapper."""
        raise NotImplementedError

    def denoising_loss(self, net: nn.Module, x0: Tensor, cond: Tensor, generator: torch.Generator | None,
                       reduce: bool = True) -> Tensor:
        """Loss of clean samples `x0` under condition slots `cond`: conditions dropped (all, or
        each) for CFG, a time and noise drawn per row; the batch mean, or one loss per row."""
        n, dev = x0.shape[0], x0.device
        if self.cond_columns:
            drop_all = torch.rand(n, 1, generator=generator, device=dev) < self.config.cond_drop_all
            drop_each = torch.rand(cond.shape, generator=generator, device=dev) < self.config.cond_drop_each
            cond = torch.where(drop_all | drop_each, self.null_conditions(n, dev), cond)
        t = self.objective.sample_t(n, generator, dev)
        noise = torch.randn(x0.shape, generator=generator, device=dev, dtype=x0.dtype)
        out = net(self.process.q_sample(x0, t, noise), t, cond)
        per_row = self.objective.loss(out.float(), x0, noise, t, self.process)
        return per_row.mean() if reduce else per_row

    @torch.no_grad()
    def solve(self, model_fn, x: Tensor, cond: Tensor, *, sampler: str, steps: int, guidance: float,
              generator: torch.Generator | None) -> Tensor:
        """Run `sampler` with classifier-free guidance from prior draws `x` under condition slots
        `cond`. Draws and seeds stay on the CPU (same rows on any device); the result is on the CPU."""
        self.ema.eval()
        x, cond, generator = self.on_sampling_device(x, cond, generator)
        den = guided_denoiser(model_fn, cond, self.null_conditions(x.shape[0], x.device), guidance)
        ts = timesteps(self.process, steps, SAMPLERS[sampler].spacing)
        return SAMPLERS[sampler](den, x, ts, process=self.process, generator=generator).cpu()

    def on_sampling_device(self, x: Tensor, cond: Tensor, generator: torch.Generator | None):
        dev = next(self.ema.parameters()).device
        if dev.type == "cpu":
            return x, cond, generator
        if generator is not None:  # the sampler's own noise (ddpm) comes from a seeded device generator
            generator = torch.Generator(device=dev).manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        return x.to(dev), cond.to(dev), generator

    def describe(self) -> dict:
        return {"process": self.config.process.model_dump(mode="json"),
                "objective": self.config.objective.model_dump(mode="json"), **super().describe()}


