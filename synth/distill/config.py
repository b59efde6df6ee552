"""Typed settings of a distillation run (`synth distill`, `python -m jobs.distill`)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from synth.io import storage
from synth.config import EvalConfig, ScalingConfig
from synth.errors import ConfigError, validated
from synth.train.config import TrainConfig


def _student_train_defaults() -> TrainConfig:
    return TrainConfig(steps=4000, batch_size=1024, lr=5e-4, warmup_steps=100, ema_decay=0.999, eval_every=500)


class DistillConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "distill"
    teacher: str = Field(description="teacher model artifact URI")
    output: str = Field(description="student artifact URI")
    steps: int = Field(4, ge=1, le=16, description="student network evaluations per sample (1, 2, 4, ...)")
    teacher_sampler: str = Field("dpmpp_2m", description="deterministic teacher solver whose trajectories are distilled")
    teacher_steps: int = Field(48, ge=1, le=1000, description="teacher solver steps per trajectory; a multiple of `steps`")
    trajectories: int = Field(100_000, ge=64, description="teacher trajectories to distil from (split over workers)")
    guidance_max: float = Field(3.0, ge=0, description="the student takes any guidance weight in [0, guidance_max]")
    uncond_share: float = Field(0.2, ge=0, le=1, description="share of trajectories without conditions")
    cond_drop_each: float = Field(0.5, ge=0, lt=1, description="chance each condition column is left out")
    val_share: float = Field(0.02, ge=0, lt=0.5, description="trajectories held out for the validation loss")
    train: TrainConfig = Field(default_factory=_student_train_defaults)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    evaluate: EvalConfig | None = Field(default_factory=EvalConfig,
                                        description="evaluate the student against the teacher's held-out rows; "
                                                    "null skips it")
    target: str | None = Field(None, description="column for ML efficacy in the student's evaluation")
    seed: int = 0

    @field_validator("teacher_sampler")
    @classmethod
    def _deterministic(cls, v: str) -> str:
        from synth.diffusion.samplers import SAMPLERS

        # ddpm is stochastic; heun evaluates between grid points, so its states are not on the grid
        allowed = sorted(s for s, spec in SAMPLERS.items()
                         if not spec.stochastic and spec.evals_per_step == 1 and not spec.student)
        if v not in allowed:
            raise ValueError(f"teacher_sampler must be a deterministic single-step-per-point solver, one of "
                             f"{allowed}; got {v!r}")
        return v

    def check(self) -> "DistillConfig":
        if self.teacher_steps % self.steps:
            raise ConfigError(f"teacher_steps ({self.teacher_steps}) must be a multiple of steps ({self.steps}) "
                              "so the student's grid lies on the teacher's")
        return self

    @property
    def storage_path(self) -> str:
        return self.scaling.storage_path or storage.join(self.output + ".ray")

    @classmethod
    def parse(cls, raw: dict, source: str = "distill config") -> "DistillConfig":
        return validated(cls, raw, source).check()
