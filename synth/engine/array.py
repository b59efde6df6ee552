"""The array family: diffusion over one fixed-shape array column (images, series windows) with a
convolutional denoiser, class-conditional on the table's categorical columns (e.g. a label).

The table codec encodes the array column as one block of features in [-1, 1] (row-major) and
each label as a one-hot block, so a training batch is the encoded rows, exactly as for the
tabular diffusion family (same training loop, Ray Train path and artifact). The engine reshapes
the array block to (C, H, W) or (C, L), reads condition slots off the one-hot blocks, and trains
with the configured noise process and objective; it samples with any sampler of
`synth.diffusion.samplers` and classifier-free guidance (`synth.diffusion.guidance`).

Rows whose label is not requested get one drawn from the reference label frequencies (from the
request's seed) and are then generated conditionally, so every row's label matches its array;
guidance 0 ignores the label (the unconditional model), 1 is the plain conditional model.
"""
from __future__ import annotations

import copy
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from synth.diffusion.objectives import ObjectiveConfig
from synth.diffusion.processes import ProcessConfig
from synth.engine.sampling import MAX_STEPS, DenoisingEngine
from synth.errors import ConfigError
from synth.nets.conv import ConvNetConfig, build_conv_net
from synth.table import TableCodec
from synth.table.columns import ArrayColumn, CategoricalColumn


class ArrayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    family: Literal["array"] = "array"
    array_column: str | None = Field(None, description="the array column to generate; null = the only one")
    layout: Literal["auto", "image", "series"] = Field(
        "auto", description="auto: 1-D arrays are series (1, L), 2-D images (1, H, W), 3-D images (C, H, W); "
                            "series: 2-D arrays are (channels, length)")
    process: ProcessConfig = Field(default_factory=ProcessConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    net: ConvNetConfig = Field(default_factory=ConvNetConfig)
    cond_drop_all: float = Field(0.15, ge=0, le=1, description="share of training rows with the null class")
    cond_drop_each: float = Field(0.0, ge=0, le=1, description="otherwise, chance each condition is hidden")
    sampler: str = "ddim"
    steps: int = Field(20, ge=1, le=MAX_STEPS)
    guidance: float = Field(2.0, ge=0)
    sample_batch_size: int = Field(1024, ge=1)


def array_layout(cfg: ArrayConfig, shape: list[int]) -> tuple[str, tuple[int, ...]]:
    """('image' | 'series', the network's per-row input shape with channels first)."""
    layout = cfg.layout
    if layout == "auto":
        layout = "series" if len(shape) == 1 else "image"
    if layout == "series":
        if len(shape) == 1:
            return "series", (1, shape[0])
        if len(shape) == 2:
            return "series", (shape[0], shape[1])
    elif len(shape) == 2:
        return "image", (1, shape[0], shape[1])
    elif len(shape) == 3:
        return "image", tuple(shape)
    raise ConfigError(f"arrays of shape {tuple(shape)} cannot be modelled as {layout}: series take (length) or "
                      "(channels, length), images (height, width) or (channels, height, width)")


class ArrayEngine(DenoisingEngine):
    family = "array"
    config_class = ArrayConfig

    def __init__(self, config: ArrayConfig, codec: TableCodec):
        self.config = config
        self.codec = codec
        arrays = [c for c in codec.columns if isinstance(c, ArrayColumn)]
        if not arrays:
            raise ConfigError(f"model.family array needs an array column (fixed-size lists or fixed_shape_tensor); "
                              f"the data's columns are {codec.kinds()}")
        name = config.array_column or arrays[0].name
        if config.array_column is None and len(arrays) > 1:
            raise ConfigError(f"the data has several array columns {[c.name for c in arrays]}; pick one with "
                              "model.array_column and list the others under data.codec.ignore")
        others = [c for c in codec.columns if c.name != name and not isinstance(c, CategoricalColumn)]
        if name not in codec.by_name or not isinstance(codec.by_name[name], ArrayColumn):
            raise ConfigError(f"model.array_column {name!r} is not an array column; array columns are "
                              f"{[c.name for c in arrays]}")
        if others:
            raise ConfigError(f"model.family array generates one array column conditioned on categorical columns; "
                              f"{ {c.name: c.kind for c in others} } cannot be modelled with it: list them under "
                              "data.codec.ignore (or declare integer labels categorical in data.codec.overrides)")
        self.array = codec.by_name[name]
        self.array_slice = codec.slice_of(name)
        self.layout, self.shape = array_layout(config, self.array.shape)
        self.cond_columns = codec.categorical_names()
        self.cond_slices = [codec.slice_of(c) for c in self.cond_columns]
        self.cond_cards = [s.stop - s.start for s in self.cond_slices]
        self.cond_probs = [torch.tensor(codec.categorical(c).probs, dtype=torch.float64) for c in self.cond_columns]
        try:
            self.net = build_conv_net(self.layout, self.shape, config.net, self.cond_cards)
        except ValueError as e:
            raise ConfigError(f"model.net: {e}") from None
        self.ema = copy.deepcopy(self.net).requires_grad_(False)
        self.process = config.process.build()
        self.objective = config.objective.build()

    # -- training -------------------------------------------------------------------------
    def split_rows(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Encoded rows (n, width) -> arrays (n, *shape) and condition slots (n, k)."""
        x0 = rows[:, self.array_slice].reshape(rows.shape[0], *self.shape)
        if not self.cond_columns:
            return x0, torch.zeros(rows.shape[0], 0, dtype=torch.long, device=rows.device)
        return x0, torch.stack([rows[:, s].argmax(dim=1) for s in self.cond_slices], dim=1)

    def loss(self, net: nn.Module, rows: Tensor, generator: torch.Generator | None, reduce: bool = True) -> Tensor:
        x0, cond = self.split_rows(rows)
        return self.denoising_loss(net, x0, cond, generator, reduce)

    # -- the sampling protocol (see synth.engine.sampling) --------------------------------
    def cost(self, sampler: str, steps: int, guidance: float, conditioned: bool = True) -> int:
        """Every row carries a label (drawn when not requested), so guidance always applies."""
        return super().cost(sampler, steps, guidance, conditioned=bool(self.cond_columns))

    def prior(self, n: int, generator: torch.Generator) -> Tensor:
        """(n, prod(shape) + k): the noise of each row's array, then one uniform per condition column
        (the label drawn when none is requested), all from the request's own generator, so a row's
        result does not depend on the other rows it is batched with."""
        z = self.process.prior((n, *self.shape), generator=generator).reshape(n, -1)
        u = torch.rand(n, len(self.cond_columns), generator=generator, dtype=z.dtype)
        return torch.cat([z, u], dim=1)

    def model_fn(self, net: nn.Module):
        def fn(x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
            return self.objective.to_x0(net(x, t, cond), x, t, self.process).clamp(-1.0, 1.0)
        return fn

    def draw_labels(self, cond: Tensor, u: Tensor) -> Tensor:
        """Fill "not given" slots with labels drawn from the reference frequencies (inverse CDF of
        the prior's uniforms `u`)."""
        cond = cond.clone()
        for j, (card, probs) in enumerate(zip(self.cond_cards, self.cond_probs)):
            cdf = torch.cumsum(probs, 0)
            drawn = torch.searchsorted(cdf / cdf[-1], u[:, j].double().contiguous(), right=True).clamp_max(card - 1)
            cond[:, j] = torch.where(cond[:, j] == card, drawn.to(cond), cond[:, j])
        return cond

    @torch.no_grad()
    def sample_features(self, x: Tensor, cond: Tensor, *, sampler: str, steps: int, guidance: float,
                        generator: torch.Generator | None) -> Tensor:
        """Prior draws `x` (see `prior`) -> codec features (n, width) on the CPU: the generated array
        block plus each label's one-hot block."""
        n, d = x.shape[0], self.array.width
        cond = self.draw_labels(cond.cpu(), x[:, d:].cpu())
        x = x[:, :d].reshape(n, *self.shape)
        arr = self.solve(self.model_fn(self.ema), x, cond, sampler=sampler, steps=steps, guidance=guidance,
                         generator=generator)
        feats = torch.full((x.shape[0], self.codec.width), -1.0)
        feats[:, self.array_slice] = arr.reshape(x.shape[0], -1).float()
        for j, s in enumerate(self.cond_slices):
            feats[torch.arange(x.shape[0]), s.start + cond[:, j]] = 1.0
        return feats


__all__ = ["ArrayConfig", "ArrayEngine", "array_layout"]
