"""Distillation: few-step (1, 2, 4 NFE), guidance-as-input students from a teacher artifact."""
from synth.distill.config import DistillConfig
from synth.distill.run import DistillResult, distill

__all__ = ["DistillConfig", "DistillResult", "distill"]
