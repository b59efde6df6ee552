"""Request and response models of the HTTP API (they generate its OpenAPI schema)."""
from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from synth.diffusion.samplers import SAMPLERS

SamplerName = Literal[tuple(sorted(SAMPLERS))]  # type: ignore[valid-type]
Format = Literal["json", "arrow", "parquet", "png"]
Scalar = Union[StrictStr, StrictInt, StrictFloat, StrictBool, None]

MAX_SEED = 2**63 - 1

MEDIA_TYPES = {
    "json": "application/json",
    "arrow": "application/vnd.apache.arrow.stream",
    "parquet": "application/vnd.apache.parquet",
    "png": "image/png",  # image models (family array): the rows' images side by side
}


class Range(BaseModel):
    """A numeric or datetime condition's range; either end may be left out (open)."""

    model_config = ConfigDict(extra="forbid")
    min: Union[StrictInt, StrictFloat, StrictStr, None] = Field(None, description="lowest value (a datetime: ISO text)")
    max: Union[StrictInt, StrictFloat, StrictStr, None] = Field(None, description="highest value")


Condition = Union[Scalar, Range]


class SampleRequest(BaseModel):
    """POST /v1/sample. Everything but `rows` is optional."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"rows": 5, "conditions": {"sex": "Female", "income": ">50K"}, "seed": 7, "format": "json"},
                     {"rows": 5, "conditions": {"age": {"min": 30, "max": 40}, "hours-per-week": 40}}]})

    rows: StrictInt = Field(1, ge=1, description="rows to generate (1..max_rows, see GET /v1/model)")
    conditions: dict[str, Union[Condition, list[Condition]]] = Field(
        default_factory=dict,
        description="condition column -> one value for every row, or a list with one value per row; a numeric "
                    "or datetime column (families that support it, GET /v1/model) also takes a range "
                    "{\"min\": 30, \"max\": 40} or \"30..40\"; every generated row meets its conditions exactly")

    def plain_conditions(self) -> dict[str, Any]:
        """The conditions as the engine takes them (a range as {"min": ..., "max": ...} without open ends)."""
        def plain(v):
            return v.model_dump(exclude_none=True) if isinstance(v, Range) else v
        return {k: [plain(x) for x in v] if isinstance(v, list) else plain(v) for k, v in self.conditions.items()}
    guidance: float | None = Field(
        None, ge=0, allow_inf_nan=False,
        description="classifier-free guidance scale (1 = plain conditional model); default: the model's")
    sampler: SamplerName | None = Field(None, description="sampler; default: the model's")
    steps: StrictInt | None = Field(
        None, ge=1, description="sampler steps; default: the largest candidate that fits the p99 SLO "
                                "(reported in the X-Synth-Steps header)")
    seed: StrictInt | None = Field(
        None, ge=0, le=MAX_SEED,
        description="same seed and settings -> same rows, alone or batched with other requests; "
                    "default: random (reported in X-Synth-Seed)")
    format: Format = Field("json", description="json records, an Arrow IPC stream, Parquet bytes, or (image models) a PNG strip")


class SampleResponse(BaseModel):
    """The JSON body of POST /v1/sample with format=json."""

    records: list[dict[str, Any]]
    sampler: str
    steps: int
    nfe: int
    guidance: float
    seed: int | None
    enforced: dict[str, str] = Field(default_factory=dict, description="how each condition was met: exact-slot (a "
                                     "category), truncation or conditional-gaussian (a numeric value or range)")


class FieldInfo(BaseModel):
    name: str
    arrow_type: str
    kind: str
    nullable: bool


class ConditionColumn(BaseModel):
    name: str
    kind: str = Field("categorical", description="categorical/boolean: one of `values`; continuous, integer, "
                                                 "datetime: a value or a range")
    values: list[Any] = Field(description="values a categorical condition may take (the most frequent first)")
    truncated: bool = Field(False, description="true when only the first values are listed")


class SamplerInfo(BaseModel):
    name: str
    nfe_per_step: float
    stochastic: bool


class Limits(BaseModel):
    max_rows: int
    max_steps: int
    max_guidance: float
    max_body_bytes: int
    max_batch_size: int
    max_batch_cost: int = Field(description="rows x network evaluations per model batch")


class ModelCost(BaseModel):
    """One row's cost by the model's family (engine.cost), at the model's default settings."""

    family: str
    sampler: str
    steps: int
    guidance: float
    nfe_per_row: int = Field(description="network evaluations per row at these settings")
    fixed_steps: bool = Field(description="true when the model always runs these steps (one-pass, distilled)")


class ModelInfo(BaseModel):
    model_id: str = Field(description="the id requests name this model by (GET /v1/models lists them)")
    artifact_uri: str
    artifact_id: str | None
    cost: ModelCost
    family: str
    schema_: list[FieldInfo] = Field(alias="schema")
    condition_columns: list[ConditionColumn]
    samplers: list[SamplerInfo]
    defaults: dict[str, Any]
    steps_candidates: list[int]
    slo_p99_ms: float
    formats: list[str]
    limits: Limits

    model_config = ConfigDict(populate_by_name=True)


class LatencyModelEntry(BaseModel):
    sampler: str
    steps: int
    factor: float = Field(description="EWMA of measured / calibrated model time")
    seconds_per_row_step: float | None = Field(description="EWMA of measured model seconds per row x NFE")
    batches: int


class ControllerState(BaseModel):
    """The closed loop on the measured p99 (synth.serving.control)."""

    model_config = ConfigDict(extra="allow")
    enabled: bool
    target_ms: float = Field(description="p99 the replica aims at: control.replica_share x slo_p99_ms")
    measured_p99_ms: float | None = Field(description="in-replica p99 over the controller's window")
    measured_requests: int
    window_s: float
    steps_levels: list[int]
    steps_cap: int = Field(description="largest steps the replica picks now when a request gives none")
    level: int
    raise_wait_s: float = Field(description="calm time needed before the next level up (grows after a raise "
                                            "that had to be undone)")
    backoff: int
    changes: int
    level_age_s: float
    last_decision: dict[str, Any] | None
    admission_limit: int = Field(description="requests admitted at once; beyond: 429 (reason slo)")
    admission_max: int
    shed_total: int = Field(description="requests refused by the admission limit")
    admission_changes: int
    admission_last_decision: dict[str, Any] | None


class SLOReport(BaseModel):
    model_id: str = Field(description="the model this report is about (each has its own window and controller)")
    target_p99_ms: float
    window_s: float
    requests: int = Field(description="requests in the window (this replica)")
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    violations: int = Field(description="requests over the target in the window")
    violations_total: int = Field(description="requests over the target since the replica started")
    adherence: float | None = Field(description="share of requests in the window within the target")
    meets_target: bool | None
    rejected_total: int = Field(description="requests answered 429 by this replica")
    backlog_ms: float = Field(description="predicted model time queued on this replica now")
    auto_steps: dict[str, int] = Field(description="steps an idle replica picks now per sampler (1 row)")
    latency_model: list[LatencyModelEntry]
    replica: str | None
    controller: ControllerState


class ModelEntry(BaseModel):
    """One model of GET /v1/models."""

    id: str
    default: bool = Field(description="the model of POST /v1/sample without a model id")
    loaded: bool = Field(description="loaded in the replica that answered")
    artifact_uri: str = Field(description="as configured (a release root resolved to the artifact it named at "
                                          "deployment)")
    cost: ModelCost | None = Field(description="known once the answering replica has loaded the model")
    load_error: str | None = Field(None, description="why the last load on this replica failed, while it is "
                                                     "refused (model_retry_s)")


class ModelList(BaseModel):
    models: list[ModelEntry]
    default_model: str
    max_models_per_replica: int
    replica: str | None
    header: str = Field(description="request header that picks a model and routes to a replica holding it")
