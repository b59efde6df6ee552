"""Samplers for ``x_t = alpha(t) x0 + sigma(t) eps`` driven by a denoiser ``D(x, t) ~ E[x0 | x_t]``.

Every sampler has the signature::

    sample_xxx(denoiser, x, timesteps, *, process, generator=None, callback=None) -> Tensor

``x`` is the sample at ``timesteps[0]`` (e.g. ``process.prior(...)``), ``timesteps`` is a strictly
decreasing grid (see :func:`synth.diffusion.processes.timesteps`) and the result is the sample at
``timesteps[-1]``; when that is 0 the last step returns the clean estimate. Samplers are pure
functions: no state survives a call, they run under ``torch.no_grad`` and keep ``x``'s dtype and
device. Only ``ddpm`` draws random numbers (from ``generator``).

The denoiser receives ``t`` as a (batch,) tensor in ``x.dtype``. Schedule quantities
(alpha, sigma, lambda = log(alpha/sigma)) are computed in float64 on the grid; ``lambda = +-inf``
at the endpoints is handled in closed form (``expm1(-inf) = -1``), never by subtracting infinities.
``callback``, if given, is called after every step with
``{"i", "t", "t_next", "x" (the new sample at t_next), "denoised"}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from synth.diffusion.processes import NoiseProcess

__all__ = [
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
    "sample_distilled",
]

Denoiser = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class _Grid:
    """alpha, sigma, lambda (and ODE coefficients) on the time grid, as float64 Python floats."""

    t: list[float]
    alpha: list[float]
    sigma: list[float]
    lam: list[float]
    d_alpha: list[float]
    d_sigma: list[float]

    @classmethod
    def of(cls, process: NoiseProcess, timesteps: Tensor) -> "_Grid":
        t = torch.as_tensor(timesteps).detach().to("cpu", torch.float64).flatten()
        if t.numel() < 2:
            raise ValueError("timesteps needs at least 2 entries (start and end)")
        t = t.clamp(0.0, process.t_max)
        if not bool(torch.all(t[1:] < t[:-1])) or not bool(torch.all(torch.isfinite(t))):
            raise ValueError("timesteps must be finite and strictly decreasing within [0, process.t_max]")
        return cls(
            t=t.tolist(),
            alpha=process.alpha(t).tolist(),
            sigma=process.sigma(t).tolist(),
            lam=process.log_snr(t).tolist(),
            d_alpha=process.d_alpha(t).tolist(),
            d_sigma=process.d_sigma(t).tolist(),
        )

    @property
    def steps(self) -> int:
        return len(self.t) - 1

    def is_final_denoise(self, i: int) -> bool:
        """Step i lands on t = 0 (lambda = +inf): return the clean estimate."""
        return self.sigma[i + 1] == 0.0


def _denoise(denoiser: Denoiser, x: Tensor, t: float) -> Tensor:
    tt = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
    return denoiser(x, tt).to(x.dtype)


def _report(callback: Callback | None, g: _Grid, i: int, x: Tensor, denoised: Tensor) -> None:
    if callback is not None:
        callback({"i": i, "t": g.t[i], "t_next": g.t[i + 1], "x": x, "denoised": denoised})


# ------------------------------------------------------------------------------------------------
# First-order solvers
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def sample_ddim(
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor,
    *,
    process: NoiseProcess,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """DDIM, eta = 0 (Song et al. 2021): keep the implied noise, move x0_hat to the next level.

    x_s = alpha_s D + sigma_s (x_t - alpha_t D) / sigma_t.
    """
    g = _Grid.of(process, timesteps)
    for i in range(g.steps):
        d = _denoise(denoiser, x, g.t[i])
        ratio = g.sigma[i + 1] / g.sigma[i]
        x = ratio * x + (g.alpha[i + 1] - g.alpha[i] * ratio) * d
        _report(callback, g, i, x, d)
    return x


@torch.no_grad()
def sample_ddpm(
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor,
    *,
    process: NoiseProcess,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Ancestral sampling from the posterior q(x_s | x_t, x0 = D) (Ho et al. 2020), any alpha/sigma.

    With c = exp(lambda_t - lambda_s) = alpha_t sigma_s / (alpha_s sigma_t):
    mean = c (sigma_s/sigma_t) x_t + alpha_s (1 - c^2) D,  std = sigma_s sqrt(1 - c^2).
    """
    g = _Grid.of(process, timesteps)
    for i in range(g.steps):
        d = _denoise(denoiser, x, g.t[i])
        two_dl = 2.0 * (g.lam[i] - g.lam[i + 1])  # <= 0; -inf at either endpoint
        c = math.exp(0.5 * two_dl)
        one_m_c2 = -math.expm1(two_dl)
        x = c * (g.sigma[i + 1] / g.sigma[i]) * x + g.alpha[i + 1] * one_m_c2 * d
        std = g.sigma[i + 1] * math.sqrt(one_m_c2)
        if std > 0.0:
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            x = x + std * noise
        _report(callback, g, i, x, d)
    return x


def _ode_drift(g: _Grid, j: int, x: Tensor, d: Tensor) -> Tensor:
    """Probability-flow ODE with x0_hat = d: from x = alpha x0 + sigma eps,
    dx/dt = alpha' x0 + sigma' eps = (sigma'/sigma) x + (alpha' - alpha sigma'/sigma) d."""
    k = g.d_sigma[j] / g.sigma[j]
    return k * x + (g.d_alpha[j] - g.alpha[j] * k) * d


@torch.no_grad()
def sample_euler(
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor,
    *,
    process: NoiseProcess,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Euler on the probability-flow ODE in t (EDM Alg. 1 without the correction); the step to
    t = 0 returns the denoised estimate."""
    g = _Grid.of(process, timesteps)
    for i in range(g.steps):
        d = _denoise(denoiser, x, g.t[i])
        if g.is_final_denoise(i):
            x = d
        else:
            x = x + (g.t[i + 1] - g.t[i]) * _ode_drift(g, i, x, d)
        _report(callback, g, i, x, d)
    return x


@torch.no_grad()
def sample_heun(
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor,
    *,
    process: NoiseProcess,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Heun's 2nd-order method on the probability-flow ODE in t (Karras et al. 2022, Alg. 1);
    the step to t = 0 returns the denoised estimate. NFE = 2 * steps - 1."""
    g = _Grid.of(process, timesteps)
    for i in range(g.steps):
        d = _denoise(denoiser, x, g.t[i])
        if g.is_final_denoise(i):
            x = d
        else:
            dt = g.t[i + 1] - g.t[i]
            v = _ode_drift(g, i, x, d)
            x_euler = x + dt * v
            v_next = _ode_drift(g, i + 1, x_euler, _denoise(denoiser, x_euler, g.t[i + 1]))
            x = x + dt * 0.5 * (v + v_next)
        _report(callback, g, i, x, d)
    return x


# ------------------------------------------------------------------------------------------------
# Multistep exponential integrators (data prediction, in lambda = log(alpha/sigma))
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor,
    *,
    process: NoiseProcess,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), h_i = lambda_{i+1} - lambda_i:

    x_{i+1} = (sigma_{i+1}/sigma_i) x_i - alpha_{i+1} expm1(-h_i) D,
    D = (1 + 1/(2 r)) D_i - 1/(2 r) D_{i-1},  r = h_{i-1} / h_i.

    First-order (D = D_i) on the first step, after a step from lambda = -inf, and on the final
    step to t = 0 (h = inf; "lower_order_final").
    """
    g = _Grid.of(process, timesteps)
    d_prev: Tensor | None = None
    for i in range(g.steps):
        d = _denoise(denoiser, x, g.t[i])
        h = g.lam[i + 1] - g.lam[i]
        d_eff = d
        if d_prev is not None and math.isfinite(h) and math.isfinite(g.lam[i - 1]):
            r = (g.lam[i] - g.lam[i - 1]) / h
            d_eff = (1.0 + 0.5 / r) * d - (0.5 / r) * d_prev
        x = (g.sigma[i + 1] / g.sigma[i]) * x - g.alpha[i + 1] * math.expm1(-h) * d_eff
        d_prev = d
        _report(callback, g, i, x, d)
    return x


def _unic_coefficients(h: float, r: float | None) -> tuple[float, float]:
    """UniC-bh2 weights ``(rho_hist, rho_t)`` for a step of size ``h`` in lambda.

    Order 2 (``r = (lambda_{s-1} - lambda_s) / h < 0``): with ``hh = -h``, ``B = expm1(hh)``,
    ``phi_1 = B / hh - 1``, ``phi_2 = phi_1 / hh - 1/2``, ``b = (phi_1 / B, 2 phi_2 / B)``, solve
    ``[[1, 1], [r, 1]] rho = b``. Order 1 (``r is None``): ``rho_t = 0.5`` (as diffusers).
    """
    if r is None:
        return 0.0, 0.5
    hh = -h
    b_h = math.expm1(hh)
    phi = b_h / hh - 1.0
    b1 = phi / b_h
    phi = phi / hh - 0.5
    b2 = 2.0 * phi / b_h
    # solve [[1, 1], [r, 1]] @ (rho0, rho1) = (b1, b2)
    rho0 = (b1 - b2) / (1.0 - r)
    return rho0, b1 - rho0


@torch.no_grad()
def sample_unipc(
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor,
    *,
    process: NoiseProcess,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """UniPC (Zhao et al. 2023), bh2, order 2, data prediction; mirrors diffusers'
    ``multistep_uni_p_bh_update`` / ``multistep_uni_c_bh_update``.

    Predictor UniP-2 (= DPM-Solver++(2M) for bh2) from t_i to t_{i+1}; once D_{i+1} is evaluated at
    the predicted sample, the corrector UniC re-integrates t_i -> t_{i+1} with D_{i+1} included and
    the next predictor starts from the corrected sample. D is never re-evaluated, so NFE = steps.
    Order 1 on the first step, after lambda = -inf, and on the final step (no correction after it).
    With the corrector the global error is third order.
    """
    g = _Grid.of(process, timesteps)
    ds: list[Tensor] = []  # D_0 .. D_i, evaluated at predicted (uncorrected) samples
    x_last: Tensor | None = None  # corrected sample the previous predictor started from
    last_order = 1
    for i in range(g.steps):
        d = _denoise(denoiser, x, g.t[i])
        if x_last is not None:  # UniC: correct x_i using D_{i-1} -> D_i (and D_{i-2})
            h = g.lam[i] - g.lam[i - 1]
            r = (g.lam[i - 2] - g.lam[i - 1]) / h if last_order == 2 else None
            rho_hist, rho_t = _unic_coefficients(h, r)
            b_h = math.expm1(-h)
            x = (g.sigma[i] / g.sigma[i - 1]) * x_last - g.alpha[i] * b_h * ds[-1]
            corr = rho_t * (d - ds[-1])
            if r is not None:
                corr = corr + rho_hist * (ds[-2] - ds[-1]) / r
            x = x - g.alpha[i] * b_h * corr
        ds.append(d)
        if len(ds) > 3:
            del ds[0]
        # UniP: predictor from t_i to t_{i+1}
        h = g.lam[i + 1] - g.lam[i]
        order = 2 if (i > 0 and math.isfinite(h) and math.isfinite(g.lam[i - 1])) else 1
        x_last = x
        b_h = math.expm1(-h)
        x = (g.sigma[i + 1] / g.sigma[i]) * x - g.alpha[i + 1] * b_h * d
        if order == 2:
            r = (g.lam[i - 1] - g.lam[i]) / h
            x = x - g.alpha[i + 1] * b_h * 0.5 * (ds[-2] - d) / r
        last_order = order
        _report(callback, g, i, x, d)
    return x


# ------------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def sample_distilled(
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor,
    *,
    process: NoiseProcess,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """The few-step sampler of a distilled student (``synth distill``): DDIM steps on the
    student's own grid (stored in its artifact), whose denoiser was trained so that each step
    lands where many teacher solver steps land. Only student artifacts accept it."""
    return sample_ddim(denoiser, x, timesteps, process=process, generator=generator, callback=callback)


class UnknownSamplerError(ValueError, KeyError):
    """Unknown sampler name (a ValueError; also a KeyError for dict-style lookups)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class SamplerSpec:
    """Everything the platform knows about one sampler: the function, its network evaluations
    for a grid of ``steps`` steps, whether it draws noise while sampling, its default grid spacing,
    and whether it is a distilled student's sampler (its own stored grid, the guidance weight an
    input of the network: one evaluation per step whatever the guidance)."""

    name: str
    fn: Callable[..., Tensor]
    stochastic: bool = False
    spacing: str = "uniform"
    evals_per_step: int = 1
    student: bool = False

    def nfe(self, steps: int) -> int:
        """Denoiser evaluations for a grid from :func:`timesteps` with ``steps`` steps (ends at t = 0):
        a two-evaluation step (Heun) evaluates once at its last step, which lands on t = 0."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        return self.evals_per_step * steps - (self.evals_per_step - 1)

    def __call__(self, *args, **kwargs) -> Tensor:
        return self.fn(*args, **kwargs)


class _SamplerRegistry(dict):
    def __missing__(self, name: str) -> SamplerSpec:
        raise UnknownSamplerError(f"unknown sampler {name!r}; valid samplers: {sorted(self)}")


# Default spacing, measured on the Gaussian contract problem (tests/test_sampler_contract.py), path
# error to the exact ODE at 8 and 50 steps: DDIM/DDPM are better on the uniform-t grid; the
# lambda-based solvers are 2-10x better on the log-SNR grid; Euler/Heun in t fail on the uniform grid
# for OU and VP-sigmoid (alpha ~ sqrt(t_max - t) near t_max makes d_alpha blow up) and are safe on the
# log-SNR grid. For VE both grids coincide (uniform in t = uniform in log sigma).
SAMPLERS: dict[str, SamplerSpec] = _SamplerRegistry((s.name, s) for s in (
    SamplerSpec("ddpm", sample_ddpm, stochastic=True, spacing="uniform"),
    SamplerSpec("ddim", sample_ddim, spacing="uniform"),
    SamplerSpec("dpmpp_2m", sample_dpmpp_2m, spacing="logsnr"),
    SamplerSpec("unipc", sample_unipc, spacing="logsnr"),
    SamplerSpec("euler", sample_euler, spacing="logsnr"),
    SamplerSpec("heun", sample_heun, spacing="logsnr", evals_per_step=2),
    SamplerSpec("distilled", sample_distilled, student=True),  # a student samples on the grid it was distilled for
))
