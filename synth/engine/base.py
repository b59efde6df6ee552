"""The interface every generator implements; `synth.engine.sampling` holds the shared sampling
protocol, the generators live beside it (diffusion, array, gan, fingerprint); `synth.families`
registers each with its config and trainer."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import pyarrow as pa
import torch

from synth.io.artifact import Artifact
from synth.table import TableCodec
from synth.table.constraints import Constraints

Conditions = dict[str, Any]  # column -> one value for every row, or a list with one value per row


class Engine(ABC):
    family: ClassVar[str]
    codec: TableCodec  # the model table's codec (the constraints' transform of the rows, when there are any)
    constraints: Constraints | None = None  # the run's constraints: decode inverts them, model_rows applies them

    def model_rows(self, rows: pa.Table) -> pa.Table:
        """Rows of the output schema as the codec encodes them (scoring, training data)."""
        return rows if self.constraints is None else self.constraints.forward(rows)

    def output_kinds(self) -> dict[str, str]:
        """Kind of every column of sampled rows, in their order."""
        kinds = self.codec.kinds()
        return kinds if self.constraints is None else self.constraints.kinds(kinds)

    def output_schema(self) -> pa.Schema:
        """The schema of sampled rows."""
        return self.codec.schema if self.constraints is None else self.constraints.output_schema(self.codec.schema)

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

