"""Log-density of a diffusion model through its probability-flow ODE (Song et al. 2021, "Score-based
generative modeling through SDEs", section 4.3 and appendix D).

For ``x_t = alpha(t) x0 + sigma(t) eps`` and a denoiser ``D(x, t) ~ E[x0 | x_t]`` the probability-flow
ODE (the one the deterministic samplers solve) is

    dx/dt = v(x, t) = (sigma'/sigma) x + (alpha' - alpha sigma'/sigma) D(x, t),

and the instantaneous change of variables gives the density it transports: d log p_t(x_t)/dt =
-div v(x_t, t), so for a point x at t_min

    log p_{t_min}(x) = log N(x(t_max); 0, sigma(t_max)^2 I) + int_{t_min}^{t_max} div v(x(t), t) dt,

with x(t) the ODE solution started from x at t_min and the sampler's prior at t_max (a zero-mean
Gaussian of standard deviation sigma(t_max): what `NoiseProcess.prior` draws). The integral runs a
fixed-step classical Runge-Kutta (RK4) on the augmented state (x, log-det) over a grid uniform in
log-SNR (`timesteps(..., "logsnr")`, dense where the dynamics are fast, near t_min), four network
evaluations per step; the state is float64, the network sees float32.

div v = (sigma'/sigma) W + (alpha' - alpha sigma'/sigma) div D, with div D the trace of the
denoiser's Jacobian: exact (one backward pass per feature) or Hutchinson's estimator
E_e[e^T (dD/dx) e] with `probes` Rademacher probes per row held fixed along the path (Grathwohl
et al. 2019, FFJORD): one backward pass per probe and evaluation, unbiased, its draws from a seeded
generator.

This is the density at t_min of the model's ODE; how a family turns it into a likelihood of rows
(the t_min truncation and the discrete columns) is its own business (`synth.engine.diffusion`).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from synth.diffusion.processes import NoiseProcess, timesteps

__all__ = ["ODELikelihoodConfig", "ode_grid", "ode_log_prob", "rademacher"]

Denoiser = Callable[[Tensor, Tensor], Tensor]  # (x float32 (n, W), t (n,)) -> x0_hat (n, W)
LOG_2PI = math.log(2 * math.pi)


class ODELikelihoodConfig(BaseModel):
    """How `log_prob` of a diffusion model integrates its probability-flow ODE."""
    model_config = ConfigDict(extra="forbid")
    steps: int = Field(32, ge=1, le=1000, description="RK4 steps from t_min to t_max: 4 network evaluations each, "
                                                      "each with a backward pass per probe (per feature: exact trace)")
    t_min: float = Field(1e-3, gt=0, le=0.5, description="where the ODE starts: the rows are scored through the "
                                                          "model's density at t_min (the samplers' t_min)")
    exact_trace_features: int = Field(16, ge=0, description="codec features up to which the divergence is the exact "
                                                            "Jacobian trace; wider models use Hutchinson's estimator")
    probes: int = Field(1, ge=1, description="Hutchinson probes per row (backward passes per evaluation): the "
                                             "per-row noise falls as 1/sqrt(probes)")
    held_out_rows: int = Field(2000, ge=1, description="at most this many held-out rows are scored by `synth "
                                                       "evaluate`, reports and bench/compare.py (the ODE is costly)")


def ode_grid(process: NoiseProcess, steps: int, t_min: float) -> Tensor:
    """Ascending float64 times t_min = t_0 < ... < t_steps = t_max, uniform in log-SNR."""
    return timesteps(process, steps + 1, "logsnr", t_min=t_min)[:-1].flip(0).contiguous()


def rademacher(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """+-1 entries with equal chance (Hutchinson probes), float64, drawn on the CPU from `generator`."""
    return torch.randint(0, 2, shape, generator=generator).double() * 2.0 - 1.0


def _coefficients(process: NoiseProcess, t: float) -> tuple[float, float]:
    """(a, b) of v = a x + b D at time t: a = sigma'/sigma, b = alpha' - alpha sigma'/sigma."""
    tt = torch.tensor(t, dtype=torch.float64)
    a = float(process.d_sigma(tt) / process.sigma(tt))
    return a, float(process.d_alpha(tt)) - float(process.alpha(tt)) * a


def _field(denoiser: Denoiser, process: NoiseProcess, x: Tensor, t: float,
           probe: Tensor | None) -> tuple[Tensor, Tensor]:
    """(v(x, t), div v(x, t)) per row, float64. `probe` None: the exact trace."""
    a, b = _coefficients(process, t)
    n, w = x.shape
    with torch.enable_grad():
        xi = x.detach().float().requires_grad_(True)
        d = denoiser(xi, torch.full((n,), t, dtype=torch.float32, device=x.device))
        if probe is None:
            tr = torch.zeros(n, dtype=torch.float64, device=x.device)
            for i in range(w):
                g, = torch.autograd.grad(d[:, i].sum(), xi, retain_graph=i < w - 1)
                tr += g[:, i].double()
        else:  # probe (k, n, W): the mean of k probes' estimates
            tr = torch.zeros(n, dtype=torch.float64, device=x.device)
            for j, p in enumerate(probe.to(x.device)):
                g, = torch.autograd.grad((d * p.to(d.dtype)).sum(), xi, retain_graph=j < len(probe) - 1)
                tr += (g.double() * p).sum(dim=1) / len(probe)
    return a * x + b * d.detach().double(), a * w + b * tr


def ode_log_prob(denoiser: Denoiser, x: Tensor, *, process: NoiseProcess, steps: int, t_min: float,
                 probe: Tensor | None = None) -> Tensor:
    """log p_{t_min}(x) in nats per row (float64) under the probability-flow ODE of `denoiser`:
    RK4 over `ode_grid(process, steps, t_min)` from x at t_min to t_max, where the state is scored
    under the prior N(0, sigma(t_max)^2 I). `probe` (k, n, W): Hutchinson's trace estimator with
    those k probes per row (k backward passes per evaluation); None: the exact trace (W backward
    passes per evaluation)."""
    grid = ode_grid(process, steps, t_min).tolist()
    x = x.detach().double()
    n, w = x.shape
    div_int = torch.zeros(n, dtype=torch.float64, device=x.device)

    def f(y: Tensor, t: float) -> tuple[Tensor, Tensor]:
        return _field(denoiser, process, y, t, probe)

    for t0, t1 in zip(grid[:-1], grid[1:]):
        h = t1 - t0
        v1, d1 = f(x, t0)
        v2, d2 = f(x + 0.5 * h * v1, t0 + 0.5 * h)
        v3, d3 = f(x + 0.5 * h * v2, t0 + 0.5 * h)
        v4, d4 = f(x + h * v3, t1)
        x = x + h / 6.0 * (v1 + 2 * v2 + 2 * v3 + v4)
        div_int = div_int + h / 6.0 * (d1 + 2 * d2 + 2 * d3 + d4)
    s = float(process.sigma(torch.tensor(process.t_max, dtype=torch.float64)))
    prior = -0.5 * (x * x).sum(dim=1) / s ** 2 - w * (math.log(s) + 0.5 * LOG_2PI)
    return prior + div_int
