"""The interface every generator family implements; `synth.engine.sampling` holds the shared
sampling protocol, the families live beside it (diffusion, array, gan, fingerprint)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import pyarrow as pa
import torch
from torch import nn

from synth.artifact import Artifact
from synth.table import TableCodec

Conditions = dict[str, Any]  # column -> one value for every row, or a list with one value per row


class Engine(ABC):
    family: ClassVar[str]
    codec: TableCodec
    net: nn.Module  # the trained module (what the training loop prepares and optimises)

    @abstractmethod
    def loss(self, net: nn.Module, x0: torch.Tensor, generator: torch.Generator | None,
             reduce: bool = True) -> torch.Tensor:
        """Training loss of one batch of encoded rows: the scalar mean, or one loss per row with
        reduce=False (DP-SGD clips per row). `net` may be a DDP/Accelerate wrapper."""

    @abstractmethod
    def sample(self, n: int, conditions: Conditions | None = None, *, sampler: str | None = None,
               steps: int | None = None, guidance: float | None = None, seed: int = 0) -> pa.Table:
        """n synthetic rows with the reference schema."""

    @abstractmethod
    def sampling_state(self) -> dict[str, torch.Tensor]:
        """The tensors saved in the artifact (EMA weights for diffusion)."""

    @abstractmethod
    def config_dict(self) -> dict[str, Any]: ...

    @classmethod
    @abstractmethod
    def from_artifact(cls, art: Artifact) -> "Engine": ...


REGISTRY: dict[str, type[Engine]] = {}


def register(cls: type[Engine]) -> type[Engine]:
    REGISTRY[cls.family] = cls
    return cls
