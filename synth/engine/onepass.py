"""One-pass generators (fingerprint, GAN) under the shared sampling protocol
(`synth.engine.sampling`), so that `synth sample`, bulk synthesis and the endpoint drive them
exactly like diffusion.

A one-pass generator has no solver: `sampler`, `steps` and `guidance` are validated like
diffusion's (so a request is accepted or refused the same way) and otherwise ignored; every row
costs one evaluation.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from synth.engine.sampling import SamplingEngine


class ConditionalOnePassConfig(BaseModel):
    """What the learnt one-pass families (autoregressive, flow, VAE) share in their `model`
    settings: the categorical columns a request may condition on, the condition dropout of
    training, and diffusion's sampling settings, accepted and ignored."""
    model_config = ConfigDict(extra="forbid")
    condition_columns: list[str] | None = Field(
        None, description="categorical columns usable as conditions; null = all categorical columns")
    cond_drop_all: float = Field(0.5, ge=0, le=1, description="share of training rows with no condition revealed")
    cond_drop_each: float = Field(0.5, ge=0, le=1, description="otherwise, chance each condition column is not "
                                                               "revealed")
    sampler: str = "ddim"
    steps: int = Field(1, ge=1)
    guidance: float = Field(1.0, ge=0)
    sample_batch_size: int = Field(16_384, ge=1)


class OnePassEngine(SamplingEngine):
    max_steps = None  # steps are accepted and ignored

    @property
    def sampler_hint(self) -> str:
        return f" (a {self.family} model ignores it: it generates in one pass)"

    def cost(self, sampler: str, steps: int, guidance: float, conditioned: bool = True) -> int:
        return 1

    def fixed_steps(self) -> int:
        return 1

    def describe(self) -> dict:
        return {"sampling": {"sampler": self.config.sampler, "steps": 1, "guidance": 1.0, "one_pass": True}}
