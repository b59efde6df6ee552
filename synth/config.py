"""The run config: one typed, validated document per job (YAML in `configs/`)."""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from synth.io import storage
from synth.io.data import SplitConfig
from synth.errors import validated, with_overrides
from synth.families import DEFAULT, FAMILIES, PRIVATE_DEFAULT, trainable
from synth.privacy.config import PrivacyConfig
from synth.table import CodecConfig
from synth.table.constraints import Constraint, check_specs
from synth.train.config import TrainConfig


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Strict):
    uri: str = Field("bundled:adult", description="Parquet file or folder: local path, s3://, gs://, or bundled:NAME")
    codec: CodecConfig = Field(default_factory=CodecConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    target: str | None = Field(None, description="column used for ML-efficacy evaluation")
    constraint_violations: Literal["refuse", "drop"] = Field(
        "refuse", description="rows of the data that break a declared constraint: refuse the run (the error counts "
                              "them per constraint) or drop those rows only (docs/constraints.md)")


class ScalingConfig(Strict):
    """Where training runs: in this process (num_workers 0) or on Ray Train workers."""

    num_workers: int = Field(0, ge=0, description="Ray Train workers; 0 trains in this process")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, ge=0)
    storage_path: str | None = Field(None, description="Ray Train checkpoints (shared storage on multi-node "
                                                       "clusters: s3://, gs://, NFS); default OUTPUT/ray")
    max_failures: int = Field(2, ge=0, description="worker failures to recover from (restart from checkpoint)")
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources each worker needs besides CPU/GPU, e.g. "
                                          "{train_slot: 1} to place workers on nodes that advertise it")
    data_mode: Literal["memory", "stream"] = Field(
        "memory", description="memory: each worker holds the encoded training set (bit-reproducible); "
                              "stream: workers stream their own shard each epoch (bounded memory)")


class EvalConfig(Strict):
    rows: int = Field(10_000, ge=1, description="synthetic rows drawn for evaluation")
    seed: int = 0
    check: Literal["refuse", "warn", "off"] = Field(
        "refuse", description="held-out check at the end of every fit (synth.evaluate.fit_check): refuse = a fit "
                              "that did not learn exits with status 3, warn = it is only reported, off = not run")


def _family(v) -> str:
    return v.get("family", DEFAULT) if isinstance(v, dict) else getattr(v, "family", DEFAULT)


# model.family picks the family's config (synth.families; DEFAULT when not given)
ModelConfig = Annotated[Union[tuple(Annotated[f.config, Tag(f.name)] for f in trainable())],  # type: ignore[misc]
                        Discriminator(_family)]


class RunConfig(Strict):
    name: str = "adult"
    output: str = Field("runs/adult", description="run folder: model/, synthetic/, evaluation.json")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=FAMILIES[DEFAULT].config)
    train: TrainConfig = Field(default_factory=TrainConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    evaluate: EvalConfig = Field(default_factory=EvalConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig, description="differential privacy (docs/privacy.md)")
    constraints: list[Constraint] = Field(default_factory=list, description="business rules every sampled row meets "
                                                                           "(docs/constraints.md)")

    @model_validator(mode="before")
    @classmethod
    def _family_train_defaults(cls, raw):
        """A family's own train.* defaults (synth.families) under what the config sets; a private run
        that names no family gets the private default."""
        if isinstance(raw, dict) and isinstance(raw.get("privacy"), dict) and raw["privacy"].get("enabled") \
                and isinstance(raw.get("model", {}), dict) and "family" not in (raw.get("model") or {}):
            raw = {**raw, "model": {**(raw.get("model") or {}), "family": PRIVATE_DEFAULT}}
        if isinstance(raw, dict) and isinstance(raw.get("model", {}), dict) \
                and isinstance(raw.get("train", {}), dict):
            family = FAMILIES.get(_family(raw.get("model") or {}))
            if family is not None and family.train_defaults:
                raw = {**raw, "train": {**family.train_defaults, **(raw.get("train") or {})}}
        return raw

    @model_validator(mode="after")
    def _family_limits(self):
        family = FAMILIES[self.model.family]
        if not family.streams and self.scaling.num_workers > 0 and self.scaling.data_mode != "memory":
            raise ValueError(f"model.family {family.name} needs scaling.data_mode memory: {family.why_not_streamed}")
        return self

    @model_validator(mode="after")
    def _private_runs(self):
        if self.privacy.enabled:
            private = [f.name for f in trainable() if f.private]
            if not FAMILIES[self.model.family].private:
                raise ValueError(f"privacy is implemented for the {', '.join(private)} family, not "
                                 f"{self.model.family!r}: set model.family to {' or '.join(private)} or turn "
                                 "privacy.enabled off")
            if self.scaling.num_workers > 0 and self.scaling.data_mode != "memory":
                raise ValueError("private runs need scaling.data_mode memory: Poisson sampling draws every step "
                                 "from all training rows, which a streamed shard cannot give")
        return self

    @model_validator(mode="after")
    def _constraints(self):
        if not self.constraints:
            return self
        if self.privacy.enabled:
            raise ValueError("constraints are not implemented for private runs yet (their transforms read the data "
                             "outside the privacy budget); drop `constraints` or turn privacy.enabled off")
        if FAMILIES[self.model.family].fit is not None:
            raise ValueError(f"model.family {self.model.family} does not take constraints")
        from synth.errors import ConfigError

        try:
            check_specs(self.constraints, self.data.codec)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return self

    @property
    def artifact_uri(self) -> str:
        return storage.join(self.output, "model")

    @classmethod
    def from_yaml(cls, uri: str, overrides: dict | None = None) -> "RunConfig":
        """The run config at `uri` (local path, s3://, gs://) with dotted `overrides` written in."""
        return cls.parse(with_overrides(storage.read_yaml(uri), overrides or {}), source=uri)

    @classmethod
    def parse(cls, raw: dict, source: str = "config") -> "RunConfig":
        return validated(cls, raw, source)
