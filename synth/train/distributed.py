"""Gradient averaging for loops that Accelerate's DDP wrapper cannot drive.

The GAN's critic step runs the critic three times (real, fake, interpolates) and differentiates
the gradient penalty twice before one backward; DDP's reducer expects one forward per backward.
Such loops train their modules unwrapped and call `average_gradients` after each backward: one
flat all-reduce over the process group that Ray Train sets up (gloo on CPU, NCCL on GPU).
With world size 1 (in-process training) every method is a no-op.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ProcessGroup:
    rank: int = 0
    world: int = 1

    def average_gradients(self, module: nn.Module) -> None:
        if self.world == 1:
            return
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def broadcast_module(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers everywhere (same start on every worker)."""
        if self.world == 1:
            return
        for t in list(module.parameters()) + list(module.buffers()):
            torch.distributed.broadcast(t.data, src=0)

    def agree(self, value: float) -> float:
        """Rank 0's value on every worker, so decisions taken on it (early stopping) agree."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        torch.distributed.broadcast(t, src=0)
        return float(t.item())
