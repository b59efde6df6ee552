"""Denoiser backbones. `mlp.ResidualMLP` for rows."""
from synth.nets.mlp import MLPConfig, ResidualMLP

__all__ = ["MLPConfig", "ResidualMLP"]
