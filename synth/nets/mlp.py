"""Residual MLP denoiser for rows, with sinusoidal time embedding and condition embeddings.

Each condition column has its own embedding table with one extra "absent" row, so the same
network serves unconditional sampling, any subset of condition columns, and classifier-free
guidance. Time and conditions modulate every block through a scale and shift (FiLM). A
guidance-distilled student also embeds the guidance weight w (Meng et al. 2023) the same way.
"""
from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn


class MLPConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = Field(256, ge=8)
    depth: int = Field(3, ge=1, description="residual blocks")
    embed_dim: int = Field(128, ge=8)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    guidance_input: bool = Field(False, description="take the guidance weight as an input (guidance-distilled "
                                                    "students: one evaluation per step instead of two)")


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding of t in [0, 1] (scaled to [0, 1000] like discrete-time models)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Block(nn.Module):
    def __init__(self, width: int, embed_dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.film = nn.Linear(embed_dim, 2 * width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)
        self.drop = nn.Dropout(dropout)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        scale, shift = self.film(emb).chunk(2, dim=-1)
        y = self.norm(h) * (1 + scale) + shift
        y = self.fc2(self.drop(nn.functional.silu(self.fc1(y))))
        return h + y


class ResidualMLP(nn.Module):
    def __init__(self, d_in: int, cfg: MLPConfig, cond_cardinalities: list[int] | None = None):
        super().__init__()
        self.cfg = cfg
        self.cond_cardinalities = list(cond_cardinalities or [])
        e = cfg.embed_dim
        self.time_mlp = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
        # one table per condition column; index `card` means "not given"
        self.cond_embed = nn.ModuleList(nn.Embedding(card + 1, e) for card in self.cond_cardinalities)
        if cfg.guidance_input:  # zero-initialised: a fresh student starts as the plain conditional model
            self.guidance_mlp = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
            nn.init.zeros_(self.guidance_mlp[2].weight)
            nn.init.zeros_(self.guidance_mlp[2].bias)
        self.inp = nn.Linear(d_in, cfg.width)
        self.blocks = nn.ModuleList(Block(cfg.width, e, cfg.dropout) for _ in range(cfg.depth))
        self.out_norm = nn.LayerNorm(cfg.width)
        self.out = nn.Linear(cfg.width, d_in)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None, guidance: Tensor | None = None) -> Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.cfg.embed_dim).to(x.dtype))
        if self.cond_embed and cond is not None:
            for j, table in enumerate(self.cond_embed):
                emb = emb + table(cond[:, j])
        if self.cfg.guidance_input:
            if guidance is None:
                raise ValueError("this network takes the guidance weight as an input; pass guidance=")
            # w in [0, ~10] spread over the sinusoid's range like t in [0, 1]
            emb = emb + self.guidance_mlp(timestep_embedding(guidance / 10.0, self.cfg.embed_dim).to(x.dtype))
        emb = nn.functional.silu(emb)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(nn.functional.silu(self.out_norm(h)))
