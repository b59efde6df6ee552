"""Classifier-free guidance as a wrapper around a conditional network.

`guided_denoiser(model_fn, cond, null_cond, scale)` returns a denoiser (x, t) -> x0_hat:
scale 1 is the plain conditional model (one evaluation), scale 0 the unconditional one, and
any other scale x0_u + scale * (x0_c - x0_u) with both halves in one batched evaluation.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

ModelFn = Callable[[Tensor, Tensor, Tensor], Tensor]  # (x, t, cond) -> x0_hat


def guided_denoiser(model_fn: ModelFn, cond: Tensor, null_cond: Tensor, scale: float) -> Callable[[Tensor, Tensor], Tensor]:
    if scale == 1.0 or torch.equal(cond, null_cond):
        return lambda x, t: model_fn(x, t, cond)
    if scale == 0.0:
        return lambda x, t: model_fn(x, t, null_cond)

    def denoise(x: Tensor, t: Tensor) -> Tensor:
        both = model_fn(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, null_cond]))
        x0_c, x0_u = both.chunk(2)
        return x0_u + scale * (x0_c - x0_u)

    return denoise
