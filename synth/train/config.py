"""Typed training settings."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int = Field(10_000, ge=1, description="optimizer steps (deterministic stopping point)")
    time_budget_s: float | None = Field(None, gt=0, description="stop earlier when this wall time is spent")
    batch_size: int = Field(512, ge=1, description="rows per optimizer step, summed over workers")
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(100, ge=0)
    lr_schedule: Literal["cosine", "constant", "plateau"] = Field(
        "cosine", description="after warm-up: cosine to 5 % over `steps`, constant, or plateau: halve the rate "
                              "after every 2 evaluations without a lower validation loss (down to 10 %; needs "
                              "`patience`)")
    ema_decay: float = Field(0.999, ge=0, lt=1)
    grad_clip: float | None = Field(1.0, gt=0)
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on GPUs and CPUs with native bf16 (AMX/AVX512-BF16), else fp32")
    seed: int = 0
    eval_every: Annotated[int, Field(ge=1)] | Literal["epoch"] = Field(500, description="steps between validation-loss reports, or "
                                                                 "'epoch': one pass over the training rows")
    patience: int | None = Field(None, ge=1, description="stop after this many evaluations without a lower "
                                                        "validation loss and keep the best weights (null: off)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads per worker (default: all cores)")


def resolve_eval_every(train: TrainConfig, rows: int) -> TrainConfig:
    """`eval_every: epoch` as steps: one pass of `rows` training rows (at least one step)."""
    if train.eval_every != "epoch":
        return train
    return train.model_copy(update={"eval_every": max(1, -(-rows // train.batch_size))})
