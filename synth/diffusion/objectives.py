"""Training objectives: what the network predicts ("head") and how to turn it into x0.

Heads, for ``x_t = alpha x0 + sigma eps``:

* ``"eps"``: the noise ``eps``.  ``x0 = (x_t - sigma eps) / alpha``.
* ``"x0"``:  the clean data.
* ``"v"``:   for variance-preserving processes (VP, OU) the Salimans & Ho velocity
  ``v = alpha eps - sigma x0`` (so ``x0 = alpha x_t - sigma v``); for the others (VE, flow) the
  time derivative ``v = dx_t/dt = alpha' x0 + sigma' eps`` (flow: ``eps - x0``), inverted with the
  2x2 system ``x0 = (sigma' x_t - sigma v) / (alpha sigma' - sigma alpha')``. The determinant is
  ``-sigma^2 d(alpha/sigma)/dt > 0`` for any process with decreasing log-SNR. Note that for VE this
  target scales like ``sigma log(sigma_max/sigma_min)`` (up to ~850) - prefer ``eps``/``x0`` there.

Numerics: the ``eps`` head cannot identify x0 where ``alpha ~ 0`` (flow at t = 1); ``to_x0`` floors
``alpha`` at ``alpha_floor`` instead of dividing by ~0, which keeps every value finite but is only
exact for ``alpha >= alpha_floor``. Use ``v`` or ``x0`` heads with processes that reach alpha = 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from synth.diffusion.processes import NoiseProcess, _broadcast

__all__ = ["Head", "Objective", "ObjectiveConfig"]

Head = Literal["eps", "v", "x0"]
_HEADS = ("eps", "v", "x0")


@dataclass(frozen=True)
class Objective:
    """Regression target / x0 conversion / per-sample MSE for one network head."""

    head: Head = "eps"
    t_eps: float = 1e-3
    alpha_floor: float = 1e-4

    def __post_init__(self) -> None:
        if self.head not in _HEADS:
            raise ValueError(f"unknown head {self.head!r}; expected one of {_HEADS}")
        if not 0.0 <= self.t_eps < 1.0:
            raise ValueError("t_eps must be in [0, 1)")

    def _coef(self, fn, t: Tensor, like: Tensor) -> Tensor:
        return _broadcast(fn(t.to(torch.float64)), like)

    def target(self, x0: Tensor, noise: Tensor, t: Tensor, process: NoiseProcess) -> Tensor:
        """What the network should output for ``x_t = q_sample(x0, t, noise)``."""
        if self.head == "eps":
            return noise
        if self.head == "x0":
            return x0
        if process.variance_preserving:
            a, s = self._coef(process.alpha, t, x0), self._coef(process.sigma, t, x0)
            return a * noise - s * x0
        da, ds = self._coef(process.d_alpha, t, x0), self._coef(process.d_sigma, t, x0)
        return da * x0 + ds * noise

    def to_x0(self, net_out: Tensor, x_t: Tensor, t: Tensor, process: NoiseProcess) -> Tensor:
        """Denoised estimate from the network output (finite for all t in [0, 1])."""
        if self.head == "x0":
            return net_out
        a, s = self._coef(process.alpha, t, x_t), self._coef(process.sigma, t, x_t)
        if self.head == "eps":
            return (x_t - s * net_out) / a.clamp_min(self.alpha_floor)
        if process.variance_preserving:
            return a * x_t - s * net_out
        da, ds = self._coef(process.d_alpha, t, x_t), self._coef(process.d_sigma, t, x_t)
        det = (a * ds - s * da).clamp_min(1e-12)
        return (ds * x_t - s * net_out) / det

    def loss(self, net_out: Tensor, x0: Tensor, noise: Tensor, t: Tensor, process: NoiseProcess) -> Tensor:
        """Per-sample mean squared error on the head's target, shape (batch,)."""
        err = (net_out - self.target(x0, noise, t, process)) ** 2
        return err.reshape(err.shape[0], -1).mean(dim=1)

    def sample_t(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Training times, uniform on ``[t_eps, 1]``, shape (batch,), float32."""
        u = torch.rand(batch, generator=generator, device=device)
        return self.t_eps + (1.0 - self.t_eps) * u


class ObjectiveConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    head: Head = "eps"
    t_eps: float = Field(1e-3, ge=0.0, lt=1.0)

    def build(self) -> Objective:
        return Objective(head=self.head, t_eps=self.t_eps)
