"""The `privacy:` block of a run config."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from synth.table.schema import ColumnSchema


class PrivacyConfig(BaseModel):
    """Differentially private training (DP-SGD through Opacus) and preprocessing.

    Give a total budget `epsilon` (with `delta`): the noise multiplier is chosen so that the
    planned steps spend what the preprocessing leaves. Or give `noise_multiplier`: epsilon is
    computed, and refused when `epsilon` is also given and would be exceeded."""
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    enabled: bool = Field(False, description="train with differential privacy")
    epsilon: float | None = Field(None, gt=0, description="total budget: preprocessing + training")
    delta: float | None = Field(None, gt=0, lt=1, description="at most 1 / (n ln n) for n training rows; null: "
                                                               "that bound rounded down to a power of ten")
    noise_multiplier: float | None = Field(None, gt=0, description="fix sigma instead of deriving it from epsilon")
    max_grad_norm: float = Field(1.0, gt=0, description="per-sample gradient clipping bound C")
    grad_sample_mode: Literal["ghost", "hooks"] = Field(
        "ghost", description="Opacus per-sample clipping: ghost (norms without per-sample gradients, fast) or hooks")
    accountant: Literal["rdp", "prv"] = Field("rdp", description="Opacus accountant for the training epsilon")
    preprocessing: Literal["schema", "dp"] = Field(
        "schema", description="schema: the codec comes from privacy.schema alone (epsilon 0); dp: plus Laplace-"
                              "noised histograms on the declared grid, spending preprocessing_share of epsilon")
    preprocessing_share: float = Field(0.1, gt=0, lt=1, description="share of epsilon spent on the codec (dp mode)")
    bins: int = Field(32, ge=2, le=10_000, description="histogram bins per numeric column (dp mode)")
    declared: dict[str, ColumnSchema] = Field(
        default_factory=dict, alias="schema", description="declared kind and bounds/categories of every modelled column")

    @model_validator(mode="after")
    def _check(self):
        if not self.enabled:
            return self
        if self.epsilon is None and self.noise_multiplier is None:
            raise ValueError("a private run needs a budget: set privacy.epsilon (and delta), "
                             "or privacy.noise_multiplier")
        if self.preprocessing == "dp" and self.epsilon is None:
            raise ValueError("preprocessing: dp spends a share of privacy.epsilon; set privacy.epsilon")
        return self
