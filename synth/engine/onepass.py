"""One-pass generators (fingerprint, GAN) under the shared sampling protocol
(`synth.engine.sampling`), so that `synth sample`, bulk synthesis and the endpoint drive them
exactly like diffusion.

A one-pass generator has no solver: `sampler`, `steps` and `guidance` are validated like
diffusion's (so a request is accepted or refused the same way) and otherwise ignored; every row
costs one evaluation.
"""
from __future__ import annotations

from synth.engine.sampling import SamplingEngine


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
