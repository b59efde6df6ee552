"""Typed arguments of the online sampling application (the `args:` block of serve/config.yaml)."""
from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from synth.errors import validated
from synth.serving.control import ControlArgs

# Rows x NFE that `max_batch_rows` is counted at: 4096 rows at 8 network evaluations.
COST_REFERENCE_NFE = 8
# A model id: safe in a URL path segment and an HTTP header (serve_multiplexed_model_id).
MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_MODEL_ID = "default"  # the id of `artifact_uri`


class ServeArgs(BaseModel):
    """Everything the application builder accepts. Defaults work for a laptop."""

    model_config = ConfigDict(extra="forbid")

    artifact_uri: str | None = Field(
        None, description="model artifact, or a release root whose latest.json names one (the nightly job's root): "
                          f"local path, s3://, gs://. It is the model {DEFAULT_MODEL_ID!r} of `models`")
    models: dict[str, str] = Field(
        default_factory=dict,
        description="several models from one deployment: model id -> artifact or release root, as artifact_uri. "
                    "A request picks one by POST /v1/models/{id}/sample or the serve_multiplexed_model_id header")
    default_model: str | None = Field(
        None, description=f"the model of POST /v1/sample without a model id; default {DEFAULT_MODEL_ID!r} with "
                          "artifact_uri, else the first of `models`")
    max_models_per_replica: int = Field(
        3, ge=1, description="models a replica keeps loaded (LRU); a request for another loads it and evicts the "
                             "least recently used")
    model_retry_s: float = Field(
        30.0, ge=0, description="after a model failed to load, requests for it are refused (503) for this long "
                                "before a replica tries again")
    # SLO and step selection
    slo_p99_ms: float = Field(150.0, gt=0, description="p99 latency target of POST /v1/sample, in ms")
    steps_candidates: list[int] = Field(
        [4, 6, 8, 12, 16, 20], min_length=1,
        description="step counts the endpoint picks from when a request gives none (largest that fits the SLO)")
    steps_headroom: float = Field(
        0.6, gt=0, le=1, description="share of the SLO the predicted in-replica time may use when picking steps")
    calibrate: bool = Field(True, description="time the model at replica start-up to seed the latency model")
    control: ControlArgs = Field(default_factory=ControlArgs,
                                 description="closed loop on the measured p99: steps cap and admission limit "
                                             "(synth.serving.control)")
    # request limits
    max_rows: int = Field(10_000, ge=1, description="rows per request")
    max_steps: int = Field(200, ge=1, le=1000, description="steps a request may ask for")
    max_guidance: float = Field(20.0, ge=0)
    max_body_bytes: int = Field(1 << 20, ge=1024, description="request body limit (413 beyond)")
    # batching
    max_batch_size: int = Field(32, ge=1, description="requests merged by @serve.batch")
    batch_wait_timeout_s: float = Field(0.005, ge=0, description="how long a batch waits to fill")
    max_batch_rows: int = Field(
        4096, ge=1,
        description=f"cost cap of one model batch, in rows at {COST_REFERENCE_NFE} network evaluations "
                    f"(rows x NFE <= max_batch_rows x {COST_REFERENCE_NFE}); larger requests are split")
    # backpressure
    max_ongoing_requests: int | None = Field(
        None, ge=1, description="Serve's per-replica concurrency; default 2 x max_batch_size")
    max_queued_requests: int = Field(
        256, ge=-1, description="Serve's queue per caller beyond which it answers 503 (-1 = unbounded)")
    retry_after_s: float = Field(1.0, ge=0, description="Retry-After on Serve's 503s")
    max_inflight_rows: int = Field(50_000, ge=1, description="rows admitted per replica before 429")
    max_request_s: float = Field(
        10.0, gt=0, description="predicted model time of one request (rows x steps x sampler x guidance, by the "
                                "replica's latency model) beyond which it is refused with 422")
    max_backlog_s: float | None = Field(
        None, gt=0, description="predicted queued model time per replica before 429; default 4 x SLO")
    # auth
    auth_token_env: str | None = Field(
        None, description="name of an environment variable (in the replica) holding a bearer token; "
                          "unset = no auth. Set but empty in the replica = the replica refuses to start")
    # resources and scaling
    num_replicas: int | None = Field(None, ge=1, description="fixed replica count (exclusive with autoscaling)")
    autoscaling_config: dict[str, Any] | None = Field(None, description="Serve autoscaling_config")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per replica")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica (the engine runs on CPU in this version)")
    torch_threads: int | None = Field(None, ge=1, description="torch threads per replica; default num_cpus")
    ray_actor_options: dict[str, Any] = Field(
        default_factory=dict, description="extra Serve ray_actor_options (runtime_env, memory, resources); "
                                          "num_cpus/num_gpus come from the fields above")
    # trust
    require_signature: bool = Field(
        False, description="load the artifact only if its signature.json (`synth sign`) verifies with public_key")
    public_key: str | None = Field(
        None, description="Ed25519 public key PEM file or URI; default: SYNTH_PUBLIC_KEY in the replica (PEM text "
                          "or a path)")
    access_log: bool = Field(False, description="Serve's access log line per request in the replica (off: it costs "
                                                "CPU on the request path; the metrics count and time requests)")
    deployment_name: str = "SynthSampler"

    @model_validator(mode="after")
    def _check(self) -> "ServeArgs":
        if self.artifact_uri is None and not self.models:
            raise ValueError("give artifact_uri (one model) or models (id -> artifact), or both")
        if self.artifact_uri is not None and self.models.get(DEFAULT_MODEL_ID, self.artifact_uri) != self.artifact_uri:
            raise ValueError(f"artifact_uri is the model {DEFAULT_MODEL_ID!r}; models names another artifact under "
                             "that id: rename one of them")
        bad = [m for m in self.models if not MODEL_ID.match(m)]
        if bad:
            raise ValueError(f"model ids must match {MODEL_ID.pattern} (letters, digits, '_', '.', '-'; at most 64 "
                             f"characters), got {bad}")
        if self.default_model is not None and self.default_model not in self.catalogue:
            raise ValueError(f"default_model {self.default_model!r} is not one of the models {list(self.catalogue)}")
        if self.num_replicas is not None and self.autoscaling_config is not None:
            raise ValueError("give num_replicas or autoscaling_config, not both")
        if any(s < 1 or s > self.max_steps for s in self.steps_candidates):
            raise ValueError(f"steps_candidates must lie in 1..max_steps ({self.max_steps})")
        return self

    @property
    def catalogue(self) -> dict[str, str]:
        """Every model this deployment serves: id -> artifact URI (artifact_uri as the model 'default')."""
        out = {DEFAULT_MODEL_ID: self.artifact_uri} if self.artifact_uri is not None else {}
        return {**out, **self.models}

    @property
    def default_id(self) -> str:
        """The model of POST /v1/sample when a request names none."""
        return self.default_model or next(iter(self.catalogue))

    @property
    def max_batch_cost(self) -> int:
        """Cap of one model batch in rows x network evaluations."""
        return self.max_batch_rows * COST_REFERENCE_NFE

    @property
    def ongoing(self) -> int:
        return self.max_ongoing_requests or max(2 * self.max_batch_size, 8)

    @property
    def backlog_limit_s(self) -> float:
        return self.max_backlog_s if self.max_backlog_s is not None else 4 * self.slo_p99_ms / 1000.0

    @classmethod
    def parse(cls, raw: dict[str, Any] | None) -> "ServeArgs":
        return validated(cls, raw or {}, "serve args")
