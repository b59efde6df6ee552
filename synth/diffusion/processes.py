"""Continuous-time Gaussian noise processes.

    x_t = alpha(t) * x0 + sigma(t) * eps,    t in [0, 1],    alpha(0) = 1, sigma(0) = 0.

Conventions (DPM-Solver / k-diffusion):

* ``log_snr(t)`` is ``lambda(t) = log(alpha / sigma)``, i.e. *half* the log signal-to-noise ratio
  ``log(alpha^2 / sigma^2)``. It is ``+inf`` at ``t = 0`` and strictly decreasing.
* Schedules are evaluated in float64 and cast back to the dtype of ``t`` (float32 by default for
  integer/Python inputs). ``t`` is clamped to ``[0, 1]``. No method returns NaN on ``[0, 1]``;
  ``+-inf`` only appears where it is mathematically correct (``log_snr`` at the endpoints,
  ``d_sigma`` of VP schedules at ``t = 0``, ``d_alpha`` of OU at ``t = 1``).
* ``t_max`` is where sampling starts. It is 1.0 except for OU, whose ``d_alpha`` is infinite at
  ``t = 1`` (see :class:`OUProcess`).

Endpoint trap: the cosine schedule (Nichol & Dhariwal) and the sigmoid schedule reach
``alpha_bar = 0`` (``lambda = -inf``) at their nominal end, which makes log-SNR based solvers blow
up and leaves ``d alpha/dt`` badly scaled. Instead of clipping betas we *truncate time*: ``t`` is
rescaled so that ``lambda(1) = LOG_SNR_MIN = -5`` (``alpha(1) ~= 6.7e-3``, log SNR = -10), the same
end point as the linear schedule of Song et al. (``lambda(1) ~= -5.03``). This is the continuous
analogue of DPM-Solver's ``T = 0.9946`` for the cosine schedule.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor
from torch.nn.functional import logsigmoid, softplus

__all__ = [
    "LOG_SNR_MIN",
    "NoiseProcess",
    "VPProcess",
    "VEProcess",
    "FlowProcess",
    "OUProcess",
    "ProcessConfig",
    "timesteps",
]

LOG_SNR_MIN = -5.0
"""Smallest ``lambda = log(alpha/sigma)`` used at ``t_max`` (truncated schedules, log-SNR spacing)."""

_F64 = torch.float64


def _broadcast(c: Tensor, like: Tensor) -> Tensor:
    """Per-sample coefficient of shape (batch,) or () -> broadcastable against ``like``."""
    c = c.to(device=like.device, dtype=like.dtype)
    return c if c.dim() == 0 else c.reshape(-1, *([1] * (like.dim() - 1)))


class NoiseProcess(ABC):
    """``x_t = alpha(t) x0 + sigma(t) eps``. Subclasses implement the float64 kernels ``_alpha`` etc."""

    name: str
    t_max: float = 1.0
    variance_preserving: bool = False  # alpha^2 + sigma^2 = 1 (selects the VP "v" target)

    # -- float64 kernels on t in [0, 1] ---------------------------------------------------------
    @abstractmethod
    def _alpha(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def _sigma(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def _d_alpha(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def _d_sigma(self, t: Tensor) -> Tensor: ...

    def _log_snr(self, t: Tensor) -> Tensor:
        return torch.log(self._alpha(t)) - torch.log(self._sigma(t))

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        """Bisection fallback (lambda is decreasing in t)."""
        lo, hi = torch.zeros_like(lam), torch.ones_like(lam)
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            early = self._log_snr(mid) > lam  # still too clean -> answer is later
            lo, hi = torch.where(early, mid, lo), torch.where(early, hi, mid)
        return torch.where(torch.isposinf(lam), torch.zeros_like(lam), 0.5 * (lo + hi))

    # -- public API ------------------------------------------------------------------------------
    def _apply(self, fn: Callable[[Tensor], Tensor], t: Tensor | float) -> Tensor:
        t = torch.as_tensor(t)
        dtype = t.dtype if t.is_floating_point() else torch.get_default_dtype()
        return fn(t.to(_F64).clamp(0.0, 1.0)).to(dtype)

    def alpha(self, t: Tensor | float) -> Tensor:
        return self._apply(self._alpha, t)

    def sigma(self, t: Tensor | float) -> Tensor:
        return self._apply(self._sigma, t)

    def d_alpha(self, t: Tensor | float) -> Tensor:
        """d alpha / dt."""
        return self._apply(self._d_alpha, t)

    def d_sigma(self, t: Tensor | float) -> Tensor:
        """d sigma / dt."""
        return self._apply(self._d_sigma, t)

    def log_snr(self, t: Tensor | float) -> Tensor:
        """lambda(t) = log(alpha/sigma); +inf at t=0, never NaN."""
        return self._apply(self._log_snr, t)

    def t_from_log_snr(self, lam: Tensor | float) -> Tensor:
        """Inverse of :meth:`log_snr`, clamped to [0, 1]. ``+inf -> 0``."""
        lam = torch.as_tensor(lam)
        dtype = lam.dtype if lam.is_floating_point() else torch.get_default_dtype()
        lam64 = lam.to(_F64)
        t = self._t_from_log_snr(lam64).clamp(0.0, 1.0)
        return t.to(dtype)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Closed-form forward marginal; ``t`` has shape (batch,) or ()."""
        return _broadcast(self.alpha(t), x0) * x0 + _broadcast(self.sigma(t), x0) * noise

    def prior(
        self,
        shape: tuple[int, ...] | torch.Size,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """A draw of x at ``t_max`` assuming E[x0] = 0: ``sigma(t_max) * randn``."""
        z = torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)
        return float(self.sigma(torch.tensor(self.t_max, dtype=_F64))) * z

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


# --------------------------------------------------------------------------------------------
# Variance preserving: alpha^2 = alpha_bar(tau), sigma^2 = 1 - alpha_bar(tau), tau = t * tau_end.
# Each schedule gives log(alpha_bar), log(1 - alpha_bar) (both without cancellation),
# d log(alpha_bar) / d tau, and tau as a function of lambda.
# --------------------------------------------------------------------------------------------


class _LinearBeta:
    """Song et al. (2021): beta(tau) = beta_min + tau (beta_max - beta_min)."""

    def __init__(self, beta_min: float, beta_max: float) -> None:
        self.b0, self.db = beta_min, beta_max - beta_min

    def log_ab(self, tau: Tensor) -> Tensor:
        return -(0.5 * self.db * tau**2 + self.b0 * tau)

    def log_1m_ab(self, tau: Tensor) -> Tensor:
        return torch.log(-torch.expm1(self.log_ab(tau)))

    def dlog_ab(self, tau: Tensor) -> Tensor:
        return -(self.b0 + self.db * tau)

    def tau_from_log_snr(self, lam: Tensor) -> Tensor:
        c = softplus(-2.0 * lam)  # = -log alpha_bar >= 0
        tau = 2.0 * c / (self.b0 + torch.sqrt(self.b0**2 + 2.0 * self.db * c))
        return torch.where(torch.isinf(c), torch.full_like(c, math.inf), tau)


class _Cosine:
    """Nichol & Dhariwal (2021): alpha_bar = cos^2(u) / cos^2(u0), u = pi/2 (tau + s)/(1 + s)."""

    def __init__(self, s: float = 0.008) -> None:
        self.s = s
        self.k = 0.5 * math.pi / (1.0 + s)
        self.u0 = self.k * s
        self.log_cos_u0 = math.log(math.cos(self.u0))

    def log_ab(self, tau: Tensor) -> Tensor:
        u = self.k * (tau + self.s)
        return 2.0 * (torch.log(torch.cos(u)) - self.log_cos_u0)

    def log_1m_ab(self, tau: Tensor) -> Tensor:
        # cos^2(u0) - cos^2(u) = sin(u + u0) sin(u - u0)
        u = self.k * (tau + self.s)
        return torch.log(torch.sin(u + self.u0)) + torch.log(torch.sin(u - self.u0)) - 2.0 * self.log_cos_u0

    def dlog_ab(self, tau: Tensor) -> Tensor:
        return -2.0 * self.k * torch.tan(self.k * (tau + self.s))

    def tau_from_log_snr(self, lam: Tensor) -> Tensor:
        cos_u = math.cos(self.u0) * torch.exp(0.5 * logsigmoid(2.0 * lam))
        return torch.arccos(cos_u) / self.k - self.s


class _Sigmoid:
    """Jabri et al. (2023) / Chen (2023): alpha_bar = (S(z1) - S(z)) / (S(z1) - S(z0)),
    z = (start + tau (end - start)) / temp, S = logistic sigmoid."""

    def __init__(self, start: float = -3.0, end: float = 3.0, temp: float = 1.0) -> None:
        self.start, self.end, self.temp = start, end, temp
        self.z0, self.z1 = start / temp, end / temp
        self.dz = (end - start) / temp
        s = lambda v: 1.0 / (1.0 + math.exp(-v))  # noqa: E731
        self.log_norm = math.log(s(self.z1) - s(self.z0))
        self.s_z0, self.s_z1, self.s_mz0, self.s_mz1 = s(self.z0), s(self.z1), s(-self.z0), s(-self.z1)

    def _z(self, tau: Tensor) -> Tensor:
        return self.z0 + tau * self.dz

    def log_ab(self, tau: Tensor) -> Tensor:
        # S(z1) - S(z) = S(z1) S(-z) (1 - e^{z - z1})
        z = self._z(tau)
        return math.log(self.s_z1) + logsigmoid(-z) + torch.log(-torch.expm1(z - self.z1)) - self.log_norm

    def log_1m_ab(self, tau: Tensor) -> Tensor:
        # S(z) - S(z0) = S(z) S(-z0) (1 - e^{z0 - z})
        z = self._z(tau)
        return logsigmoid(z) + math.log(self.s_mz0) + torch.log(-torch.expm1(self.z0 - z)) - self.log_norm

    def dlog_ab(self, tau: Tensor) -> Tensor:
        z = self._z(tau)
        return self.dz * (-torch.sigmoid(z) - 1.0 / torch.expm1(self.z1 - z))

    def tau_from_log_snr(self, lam: Tensor) -> Tensor:
        ab, one_m_ab = torch.sigmoid(2.0 * lam), torch.sigmoid(-2.0 * lam)
        s_z = self.s_z1 * one_m_ab + self.s_z0 * ab
        one_m_s_z = self.s_mz1 * one_m_ab + self.s_mz0 * ab
        z = torch.log(s_z) - torch.log(one_m_s_z)
        return (z - self.z0) / self.dz


class VPProcess(NoiseProcess):
    """Variance preserving: ``alpha^2 + sigma^2 = 1``.

    ``schedule``: ``"linear"`` (beta_min=0.1, beta_max=20, lambda(1) ~= -5.03), ``"cosine"`` (s=0.008)
    or ``"sigmoid"`` (start=-3, end=3, temp=1). Cosine/sigmoid run on the truncated interval
    ``tau in [0, tau_end]`` with ``lambda(tau_end) = log_snr_min`` (see module docstring).
    """

    variance_preserving = True

    def __init__(
        self,
        schedule: Literal["linear", "cosine", "sigmoid"] = "cosine",
        *,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        log_snr_min: float = LOG_SNR_MIN,
    ) -> None:
        if schedule == "linear":
            self._s: _LinearBeta | _Cosine | _Sigmoid = _LinearBeta(beta_min, beta_max)
            self.tau_end = 1.0
        elif schedule == "cosine":
            self._s = _Cosine()
        elif schedule == "sigmoid":
            self._s = _Sigmoid()
        else:
            raise ValueError(f"unknown VP schedule {schedule!r}; expected linear, cosine or sigmoid")
        if schedule != "linear":
            self.tau_end = float(self._s.tau_from_log_snr(torch.tensor(log_snr_min, dtype=_F64)))
        self.schedule = schedule
        self.name = f"vp-{schedule}"

    def _alpha(self, t: Tensor) -> Tensor:
        return torch.exp(0.5 * self._s.log_ab(t * self.tau_end))

    def _sigma(self, t: Tensor) -> Tensor:
        return torch.exp(0.5 * self._s.log_1m_ab(t * self.tau_end))

    def _log_snr(self, t: Tensor) -> Tensor:
        tau = t * self.tau_end
        return 0.5 * (self._s.log_ab(tau) - self._s.log_1m_ab(tau))

    def _d_alpha(self, t: Tensor) -> Tensor:
        return self._alpha(t) * 0.5 * self.tau_end * self._s.dlog_ab(t * self.tau_end)

    def _d_sigma(self, t: Tensor) -> Tensor:
        # sigma sigma' = -alpha alpha'; +inf at t = 0 where sigma ~ sqrt(t)
        a, s = self._alpha(t), self._sigma(t)
        return torch.where(s > 0, -a * self._d_alpha(t) / s, torch.full_like(t, math.inf))

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        return self._s.tau_from_log_snr(lam) / self.tau_end


class VEProcess(NoiseProcess):
    """Variance exploding (Song et al., EDM ranges): ``alpha = 1``,
    ``sigma = sigma_min (sigma_max/sigma_min)^t`` for ``t > 0`` and ``sigma(0) = 0``.

    ``d_sigma`` is the derivative of the geometric part (also at ``t = 0``); the jump at ``t = 0``
    is the final "denoise" step of every sampler. ``t_from_log_snr`` maps ``lambda >= -log sigma_min``
    to 0.
    """

    name = "ve"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError("need 0 < sigma_min < sigma_max")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.log_ratio = math.log(sigma_max / sigma_min)

    def _geometric(self, t: Tensor) -> Tensor:
        return self.sigma_min * torch.exp(t * self.log_ratio)

    def _alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def _sigma(self, t: Tensor) -> Tensor:
        return torch.where(t > 0, self._geometric(t), torch.zeros_like(t))

    def _d_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def _d_sigma(self, t: Tensor) -> Tensor:
        return self._geometric(t) * self.log_ratio

    def _log_snr(self, t: Tensor) -> Tensor:
        lam = -(math.log(self.sigma_min) + t * self.log_ratio)
        return torch.where(t > 0, lam, torch.full_like(t, math.inf))

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        return (-lam - math.log(self.sigma_min)) / self.log_ratio


class FlowProcess(NoiseProcess):
    """Flow matching / rectified flow: ``alpha = 1 - t``, ``sigma = t``."""

    name = "flow"

    def _alpha(self, t: Tensor) -> Tensor:
        return 1.0 - t

    def _sigma(self, t: Tensor) -> Tensor:
        return t.clone()

    def _d_alpha(self, t: Tensor) -> Tensor:
        return torch.full_like(t, -1.0)

    def _d_sigma(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def _log_snr(self, t: Tensor) -> Tensor:
        return torch.log1p(-t) - torch.log(t)

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        return torch.sigmoid(-lam)


class OUProcess(NoiseProcess):
    """``alpha = sqrt(1 - t^2)``, ``sigma = t`` (variance preserving, linear in sigma).

    ``d_alpha = -t / alpha`` is infinite at ``t = 1``, so sampling starts at
    ``t_max = sqrt(sigmoid(-2 log_snr_min)) ~= 1 - 2.3e-5`` where ``lambda = log_snr_min`` like the
    VP schedules (``alpha(t_max) ~= 6.7e-3``).
    """

    name = "ou"
    variance_preserving = True

    def __init__(self, log_snr_min: float = LOG_SNR_MIN) -> None:
        self.t_max = math.sqrt(1.0 / (1.0 + math.exp(2.0 * log_snr_min)))

    def _alpha(self, t: Tensor) -> Tensor:
        return torch.sqrt((1.0 - t) * (1.0 + t))

    def _sigma(self, t: Tensor) -> Tensor:
        return t.clone()

    def _d_alpha(self, t: Tensor) -> Tensor:
        return -t / self._alpha(t)

    def _d_sigma(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def _log_snr(self, t: Tensor) -> Tensor:
        return 0.5 * (torch.log1p(-t) + torch.log1p(t)) - torch.log(t)

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        return torch.sqrt(torch.sigmoid(-2.0 * lam))


class ProcessConfig(BaseModel):
    """Serializable process choice. ``schedule`` and ``beta_*`` apply to ``kind="vp"`` only,
    ``sigma_*`` to ``kind="ve"`` only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["vp", "ve", "flow", "ou"] = "vp"
    schedule: Literal["linear", "cosine", "sigmoid"] = "cosine"
    beta_min: float = Field(0.1, gt=0)
    beta_max: float = Field(20.0, gt=0)
    sigma_min: float = Field(0.002, gt=0)
    sigma_max: float = Field(80.0, gt=0)

    @model_validator(mode="after")
    def _check_ranges(self) -> "ProcessConfig":
        if self.beta_max < self.beta_min:
            raise ValueError("beta_max must be >= beta_min")
        if self.sigma_max <= self.sigma_min:
            raise ValueError("sigma_max must be > sigma_min")
        return self

    def build(self) -> NoiseProcess:
        if self.kind == "vp":
            return VPProcess(self.schedule, beta_min=self.beta_min, beta_max=self.beta_max)
        if self.kind == "ve":
            return VEProcess(self.sigma_min, self.sigma_max)
        if self.kind == "flow":
            return FlowProcess()
        return OUProcess()


def timesteps(
    process: NoiseProcess,
    steps: int,
    spacing: Literal["uniform", "logsnr"] = "uniform",
    t_min: float = 1e-3,
) -> Tensor:
    """Descending float64 grid of length ``steps + 1``: ``t_max, ..., t_min, 0.0``.

    The final 0.0 means "return the clean estimate", so first-order samplers use ``steps`` model
    evaluations. ``"uniform"`` is uniform in ``t``; ``"logsnr"`` is uniform in ``lambda`` between
    ``lambda(t_max)`` (or ``LOG_SNR_MIN`` when that is ``-inf``, e.g. flow) and ``lambda(t_min)``,
    with the first point pinned to ``t_max``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t_max = float(process.t_max)
    if not 0.0 < t_min < t_max:
        raise ValueError(f"need 0 < t_min < t_max={t_max}, got t_min={t_min}")
    if spacing == "uniform":
        t = torch.linspace(t_max, t_min, steps, dtype=_F64)
    elif spacing == "logsnr":
        lam_hi = float(process.log_snr(torch.tensor(t_min, dtype=_F64)))
        lam_lo = float(process.log_snr(torch.tensor(t_max, dtype=_F64)))
        if not math.isfinite(lam_lo):
            lam_lo = min(LOG_SNR_MIN, lam_hi - 1.0)
        t = process.t_from_log_snr(torch.linspace(lam_lo, lam_hi, steps, dtype=_F64))
        t[0] = t_max
        if steps > 1:
            t[-1] = t_min
    else:
        raise ValueError(f"unknown spacing {spacing!r}; expected 'uniform' or 'logsnr'")
    t = torch.cat([t, torch.zeros(1, dtype=_F64)])
    if not bool(torch.all(t[1:] < t[:-1])):
        raise ValueError("time grid is not strictly decreasing; use fewer steps or a larger t_min")
    return t
