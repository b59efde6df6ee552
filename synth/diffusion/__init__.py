"""Continuous-time diffusion: noise processes, training objectives and samplers."""

from synth.diffusion.objectives import Head, Objective, ObjectiveConfig
from synth.diffusion.processes import (
    LOG_SNR_MIN,
    FlowProcess,
    NoiseProcess,
    OUProcess,
    ProcessConfig,
    VEProcess,
    VPProcess,
    timesteps,
)
from synth.diffusion.samplers import (
    SAMPLERS,
    Callback,
    Denoiser,
    SamplerSpec,
    UnknownSamplerError,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
    sample_unipc,
)

__all__ = [
    "LOG_SNR_MIN",
    "NoiseProcess",
    "VPProcess",
    "VEProcess",
    "FlowProcess",
    "OUProcess",
    "ProcessConfig",
    "timesteps",
    "Head",
    "Objective",
    "ObjectiveConfig",
    "Denoiser",
    "Callback",
    "SAMPLERS",
    "SamplerSpec",
    "UnknownSamplerError",
    "sample_ddpm",
    "sample_ddim",
    "sample_dpmpp_2m",
    "sample_unipc",
    "sample_euler",
    "sample_heun",
]
