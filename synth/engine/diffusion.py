"""The diffusion engine: a denoiser over codec features, trained with one noise process and
objective, sampled by any sampler of `synth.diffusion.samplers`, with classifier-free guidance
on categorical columns.

Categorical columns use a Gaussian relaxation of their one-hot block decoded by argmax (see
docs/architecture.md for why). Condition indices are read straight off the encoded one-hot
blocks, so a training batch is just the encoded rows.
"""
from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from synth.diffusion.objectives import ObjectiveConfig
from synth.diffusion.processes import ProcessConfig
from synth.diffusion.samplers import SAMPLERS
from synth.engine.sampling import MAX_STEPS, DenoisingEngine
from synth.errors import ConfigError
from synth.nets import MLPConfig, ResidualMLP
from synth.table import TableCodec


class DistilledSpec(BaseModel):
    """What makes an artifact a distilled student (written by `synth distill`)."""
    model_config = ConfigDict(extra="forbid")
    steps: int = Field(ge=1, description="network evaluations per sample (guidance included)")
    grid: list[float] = Field(description="the student's descending time grid, steps + 1 points ending at 0")
    guidance_max: float = Field(ge=0, description="largest guidance weight the student was trained for")
    teacher: dict[str, Any] = Field(default_factory=dict, description="teacher artifact id, uri, sampler, NFE")


class DiffusionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    family: Literal["diffusion"] = "diffusion"
    process: ProcessConfig = Field(default_factory=ProcessConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    net: MLPConfig = Field(default_factory=MLPConfig)
    condition_columns: list[str] | None = Field(
        None, description="categorical columns usable as conditions; null = all categorical columns")
    cond_drop_all: float = Field(0.2, ge=0, le=1, description="share of training rows with no condition")
    cond_drop_each: float = Field(0.5, ge=0, le=1, description="otherwise, chance each condition is hidden")
    sampler: str = "dpmpp_2m"
    steps: int = Field(10, ge=1, le=MAX_STEPS)
    guidance: float = Field(1.0, ge=0)
    sample_batch_size: int = Field(8192, ge=1)
    distilled: DistilledSpec | None = Field(None, description="set on students made by `synth distill`")


class DiffusionEngine(DenoisingEngine):
    family = "diffusion"
    config_class = DiffusionConfig

    def __init__(self, config: DiffusionConfig, codec: TableCodec):
        self.config = config
        self.codec = codec
        self.process = config.process.build()
        self.objective = config.objective.build()
        names = codec.categorical_names() if config.condition_columns is None else config.condition_columns
        self.cond_columns = [codec.categorical(c).name for c in names]
        self.cond_slices = [codec.slice_of(c) for c in self.cond_columns]
        self.cond_cards = [s.stop - s.start for s in self.cond_slices]
        lo, hi = codec.feature_bounds()
        self.x0_lo, self.x0_hi = torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32)
        self.net = ResidualMLP(codec.width, config.net, self.cond_cards)
        self.ema = copy.deepcopy(self.net).requires_grad_(False)

    # -- training -------------------------------------------------------------------------
    def conditions_from_features(self, x0: Tensor) -> Tensor:
        if not self.cond_columns:
            return torch.zeros(x0.shape[0], 0, dtype=torch.long, device=x0.device)
        return torch.stack([x0[:, s].argmax(dim=1) for s in self.cond_slices], dim=1)

    def loss(self, net: nn.Module, x0: Tensor, generator: torch.Generator | None, reduce: bool = True) -> Tensor:
        return self.denoising_loss(net, x0, self.conditions_from_features(x0), generator, reduce)

    # -- sampling -------------------------------------------------------------------------
    def samplers(self) -> list[str]:
        """Sampler names this artifact accepts: a student only the students' sampler."""
        if self.config.distilled is None:
            return super().samplers()
        return sorted(s for s, spec in SAMPLERS.items() if spec.student)

    def fixed_steps(self) -> int | None:
        """A student runs exactly the steps it was distilled for."""
        return None if self.config.distilled is None else self.config.distilled.steps

    def validate_request(self, n: int, sampler: str, steps: int, guidance: float) -> None:
        spec = self.config.distilled
        student_sampler = sampler in SAMPLERS and SAMPLERS[sampler].student
        if spec is None and student_sampler:
            raise ConfigError(f"this model is not distilled, so sampler {sampler!r} is unavailable; make a student "
                              f"with `synth distill MODEL --steps 4`, or choose one of {self.samplers()}")
        if spec is not None:
            if not student_sampler:
                raise ConfigError(f"this model is a distilled student; it samples only with sampler "
                                  f"{self.samplers()[0]!r} (got {sampler!r}); use its teacher for other samplers")
            if steps != spec.steps:
                raise ConfigError(f"this student was distilled for steps={spec.steps}, got steps={steps}; "
                                  f"distill another student for {steps} steps")
            if isinstance(guidance, (int, float)) and guidance > spec.guidance_max:
                raise ConfigError(f"guidance {guidance} is above {spec.guidance_max}, the largest weight this "
                                  "student was distilled for; lower it or distill with a larger guidance_max")
        super().validate_request(n, sampler, steps, guidance)

    def model_fn(self, net: nn.Module, guidance: Tensor | None = None):
        """(x, t, cond) -> denoised estimate, projected into the features' range. Near t = 1 an
        eps head divides by alpha ~ 0 and the raw estimate can be wild; the projection keeps
        deterministic solvers from amplifying it. A distilled student's x0 head is not projected:
        its intermediate estimates are whatever makes a DDIM step land on the teacher's trajectory.
        `guidance` (per row) feeds a student's w input."""
        lo, hi = self.x0_lo, self.x0_hi
        project = self.config.distilled is None

        def fn(x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
            out = net(x, t, cond) if guidance is None else net(x, t, cond, guidance)
            x0 = self.objective.to_x0(out, x, t, self.process)
            return torch.maximum(torch.minimum(x0, hi.to(x0)), lo.to(x0)) if project else x0
        return fn

    def guidance_input(self, cond: Tensor, guidance: float) -> Tensor:
        """A student's per-row guidance input: w where a condition is given, 1 where none is
        (unconditional rows ignore w; training data uses the same convention)."""
        none_given = (cond == self.null_conditions(cond.shape[0], cond.device)).all(dim=1)
        return torch.where(none_given, 1.0, float(guidance)).to(torch.float32)

    def sample_features(self, x: Tensor, cond: Tensor, *, sampler: str, steps: int, guidance: float,
                        generator: torch.Generator | None) -> Tensor:
        """Run the sampler from prior draws `x` (n, width) under condition indices `cond`."""
        if not SAMPLERS[sampler].student:
            return self.solve(self.model_fn(self.ema), x, cond, sampler=sampler, steps=steps, guidance=guidance,
                              generator=generator)
        self.ema.eval()  # a student takes the guidance weight as an input: one evaluation per step
        x, cond, _ = self.on_sampling_device(x, cond, None)
        fn = self.model_fn(self.ema, self.guidance_input(cond, guidance))
        ts = torch.tensor(self.config.distilled.grid, dtype=torch.float64)
        return SAMPLERS[sampler](lambda x_, t_: fn(x_, t_, cond), x, ts, process=self.process).cpu()

    def prior(self, n: int, generator: torch.Generator) -> Tensor:
        return self.process.prior((n, self.codec.width), generator=generator)

