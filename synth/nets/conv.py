"""Convolutional denoisers for fixed-shape arrays: diffusers' UNet2DModel for images and a small
dilated residual 1-D conv net for series. Both take (x, t, cond) like the row MLP: `t` in [0, 1]
(shape (batch,)), `cond` (batch, k) condition slots where slot `card` means "not given" (the
null class of classifier-free guidance).

Conditioning of the UNet goes through its own class embedding: with one condition column
`num_class_embeds = card + 1` (the last class is the null class); with several, one table per
column (each with its null row) summed and fed through the identity class embedding.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from synth.nets.mlp import timestep_embedding


class ConvNetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channels: list[int] = Field(default_factory=lambda: [32, 64], min_length=1,
                                description="UNet block_out_channels (one down-sampling per extra entry); "
                                            "the 1-D net uses channels[0] as its width")
    layers_per_block: int = Field(1, ge=1, description="UNet resnet layers per block")
    attention: bool = Field(True, description="UNet: self-attention in the lowest-resolution blocks")
    norm_groups: int = Field(8, ge=1, description="GroupNorm groups (must divide every channel count)")
    depth: int = Field(6, ge=1, description="1-D net: residual blocks, dilation doubling each block")
    kernel_size: int = Field(3, ge=1, description="1-D net: convolution kernel (odd)")


class UNetDenoiser(nn.Module):
    """(batch, C, H, W) images through diffusers' UNet2DModel."""

    def __init__(self, shape: tuple[int, int, int], cfg: ConvNetConfig, cond_cards: list[int]):
        super().__init__()
        from diffusers import UNet2DModel

        c, h, w = shape
        levels = len(cfg.channels)
        if any(ch % cfg.norm_groups for ch in cfg.channels):
            raise ValueError(f"net.norm_groups {cfg.norm_groups} must divide every net.channels {cfg.channels}")
        if h % 2 ** (levels - 1) or w % 2 ** (levels - 1):
            raise ValueError(f"images of {h}x{w} cannot be halved {levels - 1} times; use fewer net.channels "
                             f"entries (each extra one halves the resolution)")
        self.cond_cards = list(cond_cards)
        embed = cfg.channels[0] * 4  # UNet2DModel's time embedding width
        down = ["DownBlock2D"] * levels
        up = ["UpBlock2D"] * levels
        if cfg.attention and levels > 1:
            down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
        class_kw: dict = {}
        self.tables = nn.ModuleList()
        if len(self.cond_cards) == 1:
            class_kw = {"num_class_embeds": self.cond_cards[0] + 1}
        elif self.cond_cards:
            class_kw = {"class_embed_type": "identity"}
            self.tables = nn.ModuleList(nn.Embedding(k + 1, embed) for k in self.cond_cards)
        self.unet = UNet2DModel(sample_size=(h, w), in_channels=c, out_channels=c,
                                block_out_channels=tuple(cfg.channels), layers_per_block=cfg.layers_per_block,
                                down_block_types=tuple(down), up_block_types=tuple(up),
                                norm_num_groups=cfg.norm_groups, add_attention=cfg.attention,
                                attention_head_dim=8, **class_kw)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        labels = None
        if len(self.cond_cards) == 1:
            labels = cond[:, 0]
        elif self.cond_cards:
            labels = sum(tab(cond[:, j]) for j, tab in enumerate(self.tables))
        return self.unet(x, t.float() * 1000.0, class_labels=labels).sample


class _Block1d(nn.Module):
    def __init__(self, width: int, embed: int, dilation: int, kernel: int, groups: int):
        super().__init__()
        pad = dilation * (kernel - 1) // 2
        self.norm1 = nn.GroupNorm(groups, width)
        self.film = nn.Linear(embed, 2 * width)
        self.conv1 = nn.Conv1d(width, width, kernel, dilation=dilation, padding=pad)
        self.norm2 = nn.GroupNorm(groups, width)
        self.conv2 = nn.Conv1d(width, width, 1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        scale, shift = self.film(emb)[:, :, None].chunk(2, dim=1)
        y = self.conv1(nn.functional.silu(self.norm1(h) * (1 + scale) + shift))
        return h + self.conv2(nn.functional.silu(self.norm2(y)))


class Conv1dDenoiser(nn.Module):
    """(batch, C, L) series through dilated residual 1-D convolutions with FiLM time/condition."""

    def __init__(self, shape: tuple[int, int], cfg: ConvNetConfig, cond_cards: list[int]):
        super().__init__()
        c, _ = shape
        width, embed = cfg.channels[0], cfg.channels[0] * 4
        if width % cfg.norm_groups:
            raise ValueError(f"net.norm_groups {cfg.norm_groups} must divide net.channels[0] {width}")
        if cfg.kernel_size % 2 == 0:
            raise ValueError(f"net.kernel_size must be odd, got {cfg.kernel_size}")
        self.cond_cards = list(cond_cards)
        self.embed = embed
        self.time_mlp = nn.Sequential(nn.Linear(embed, embed), nn.SiLU(), nn.Linear(embed, embed))
        self.tables = nn.ModuleList(nn.Embedding(k + 1, embed) for k in self.cond_cards)
        self.stem = nn.Conv1d(c, width, cfg.kernel_size, padding=cfg.kernel_size // 2)
        self.blocks = nn.ModuleList(_Block1d(width, embed, 2 ** i, cfg.kernel_size, cfg.norm_groups)
                                    for i in range(cfg.depth))
        self.out = nn.Sequential(nn.GroupNorm(cfg.norm_groups, width), nn.SiLU(), nn.Conv1d(width, c, 1))

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.embed))
        for j, tab in enumerate(self.tables):
            emb = emb + tab(cond[:, j])
        emb = nn.functional.silu(emb)
        h = self.stem(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)


def build_conv_net(layout: Literal["image", "series"], shape: tuple[int, ...], cfg: ConvNetConfig,
                   cond_cards: list[int]) -> nn.Module:
    if layout == "image":
        return UNetDenoiser(shape, cfg, cond_cards)  # type: ignore[arg-type]
    return Conv1dDenoiser(shape, cfg, cond_cards)  # type: ignore[arg-type]


__all__ = ["ConvNetConfig", "Conv1dDenoiser", "UNetDenoiser", "build_conv_net"]
