"""Release contracts: one YAML file of thresholds on fidelity, privacy, latency, NFE, guidance and likelihood.

    synth evaluate SYNTH.parquet --artifact MODEL --contract contracts/adult.yaml   # exit 1 on a violation
    python -m jobs.nightly --config configs/nightly.yaml                           # `contract:` in the config

Every threshold is named ``SECTION.METRIC_min`` or ``SECTION.METRIC_max`` (``nfe.max``,
``guidance.min``/``guidance.max`` for the two one-metric sections). A threshold left out is not
checked; a threshold whose metric could not be measured fails (a release gate fails closed).

Where each measured value comes from:

* fidelity and privacy: :func:`synth.evaluate.reference.evaluate_against_reference` (the split
  recorded in the artifact's manifest), plus the DP epsilon recorded in the manifest (``inf``
  for a model trained without differential privacy);
* nfe and guidance: how the rows were generated (:class:`Generation`): the bulk-synthesis
  manifest when the synthetic data is a `synth synthesize` folder, else the Parquet metadata
  `synth sample` writes, else the settings given on the command line, else the artifact's
  default sampling settings;
* latency: a probe that times ``engine.sample`` with those settings in this process;
* likelihood: ``bpd`` and ``nats_per_row`` of the held-out test rows under the model
  (:mod:`synth.evaluate.likelihood`), ``inv_error`` (flow), ``posterior_collapse_rate``,
  ``reconstruction`` and ``elbo_val_gain`` (VAE) from the manifest's metrics.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from synth.errors import ConfigError, validated

__all__ = ["Contract", "ContractResult", "Generation", "Verdict", "check_contract", "collect_metrics",
           "evaluate_contract", "generation_info", "load_contract", "measure_latency", "parse_contract"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")
    field_noun: ClassVar[str] = "metric"  # how an unknown field is named in messages


class Fidelity(_Section):
    """Scores of the synthetic rows against the reference data (synth.evaluate)."""

    quality_score_min: float | None = Field(None, ge=0, le=1, description="mean of column shapes and pair trends")
    column_shapes_min: float | None = Field(None, ge=0, le=1, description="KS / TV complement per column, mean")
    pair_trends_min: float | None = Field(None, ge=0, le=1, description="correlation / contingency similarity, mean")
    fit_overall_min: float | None = Field(None, ge=0, le=1, description="moments, nulls, correlation and shapes")
    c2st_auc_max: float | None = Field(None, ge=0, le=1, description="classifier two-sample test AUC (0.5 ideal)")
    efficacy_ratio_min: float | None = Field(
        None, ge=0, description="train-on-synthetic / train-on-real score on real test rows (macro F1 or R^2); "
                                "needs evaluation.target")


class Privacy(_Section):
    dcr_share_max: float | None = Field(None, ge=0, le=1, description="share of synthetic rows closer to train "
                                                                      "than to holdout (0.5 ideal)")
    exact_copy_rate_max: float | None = Field(None, ge=0, le=1, description="share of synthetic rows that copy a "
                                                                            "training row")
    median_dcr_ratio_min: float | None = Field(None, ge=0, description="median DCR synthetic->train over "
                                                                       "holdout->train (1 = as far as fresh data)")
    epsilon_max: float | None = Field(None, gt=0, description="DP epsilon of the model (inf without DP)")


class Latency(_Section):
    """Measured by timing `engine.sample` in this process with the generation settings."""

    p50_ms_max: float | None = Field(None, gt=0, description="median latency of one request of request_rows rows")
    p99_ms_max: float | None = Field(None, gt=0, description="99th percentile latency of such a request")
    rows_per_s_min: float | None = Field(None, gt=0, description="rows per second sampling throughput_rows rows")
    request_rows: int = Field(16, ge=1, le=100_000, description="probe: rows per timed request")
    probes: int = Field(30, ge=3, le=10_000, description="probe: timed requests (after one warm-up)")
    throughput_rows: int = Field(10_000, ge=1, le=10_000_000, description="probe: rows for the throughput run")


class Likelihood(_Section):
    """The model's held-out likelihood (synth.evaluate.likelihood; families with one only: a model
    without a likelihood fails a threshold set here) and the training measures its manifest records."""

    bpd_max: float | None = Field(None, description="bits per dimension of the held-out test rows")
    nats_per_row_max: float | None = Field(None, description="negative log-likelihood of the held-out test rows")
    inv_error_max: float | None = Field(None, ge=0, description="flow: max |f^-1(f(x)) - x| on validation rows")
    posterior_collapse_rate_max: float | None = Field(None, ge=0, le=1, description="VAE: share of latent "
                                                      "dimensions whose mean KL is below the collapse threshold")
    reconstruction_min: float | None = Field(None, ge=0, le=1, description="VAE: reconstruction accuracy of "
                                             "validation rows (categorical match and numeric rank within 0.05)")
    elbo_val_gain_min: float | None = Field(None, description="VAE: ELBO_val improvement (nats/row) from the "
                                            "first evaluation to the best")


class NFE(_Section):
    max: int | None = Field(None, ge=1, description="network evaluations per row of the sampler used")


class Guidance(_Section):
    min: float | None = Field(None, ge=0, description="lowest classifier-free guidance scale allowed")
    max: float | None = Field(None, ge=0, description="highest classifier-free guidance scale allowed")


class EvaluationSettings(_Section):
    target: str | None = Field(None, description="column for ML efficacy (needed by fidelity.efficacy_ratio_min)")
    rows: int = Field(10_000, ge=100, description="at most this many synthetic and training rows are scored")
    seed: int = 0


class Contract(_Section):
    """The release gate. Sections: fidelity, privacy, latency, nfe, guidance, likelihood (+ evaluation settings)."""
    field_noun: ClassVar[str] = "section or field"

    name: str = Field("contract", description="shown in reports and messages")
    description: str | None = None
    fidelity: Fidelity = Field(default_factory=Fidelity)
    privacy: Privacy = Field(default_factory=Privacy)
    latency: Latency = Field(default_factory=Latency)
    nfe: NFE = Field(default_factory=NFE)
    likelihood: Likelihood = Field(default_factory=Likelihood)
    guidance: Guidance = Field(default_factory=Guidance)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)

    @model_validator(mode="after")
    def _consistent(self):
        if self.fidelity.efficacy_ratio_min is not None and not self.evaluation.target:
            raise ValueError("fidelity.efficacy_ratio_min needs evaluation.target (the column to predict)")
        g = self.guidance
        if g.min is not None and g.max is not None and g.min > g.max:
            raise ValueError(f"guidance.min ({g.min}) is above guidance.max ({g.max})")
        if not self.thresholds():
            raise ValueError(f"the contract sets no threshold; set at least one of {', '.join(threshold_names())}")
        return self

    def thresholds(self) -> list[tuple[str, str, str, float]]:
        """(threshold name, metric, operator, limit) for every threshold that is set."""
        out = []
        for section in THRESHOLD_SECTIONS:
            model = getattr(self, section)
            for name in threshold_fields(section):
                limit = getattr(model, name)
                if limit is not None:
                    metric, op = _metric_of(section, name)
                    out.append((f"{section}.{name}", metric, op, float(limit)))
        return out

    @property
    def needs_latency(self) -> bool:
        lat = self.latency
        return any(v is not None for v in (lat.p50_ms_max, lat.p99_ms_max, lat.rows_per_s_min))


THRESHOLD_SECTIONS: dict[str, type[_Section]] = {
    "fidelity": Fidelity, "privacy": Privacy, "latency": Latency, "nfe": NFE, "guidance": Guidance,
    "likelihood": Likelihood}
SECTIONS: dict[str, type[_Section]] = {**THRESHOLD_SECTIONS, "evaluation": EvaluationSettings}


def threshold_fields(section: str) -> list[str]:
    return [n for n in SECTIONS[section].model_fields if n in ("min", "max") or n.endswith(("_min", "_max"))]


def threshold_names() -> list[str]:
    return [f"{s}.{n}" for s in THRESHOLD_SECTIONS for n in threshold_fields(s)]


def _metric_of(section: str, name: str) -> tuple[str, str]:
    if name in ("min", "max"):
        return section, ">=" if name == "min" else "<="
    base, bound = name.rsplit("_", 1)
    metric = {"p50_ms": "latency_p50_ms", "p99_ms": "latency_p99_ms"}.get(base, base)
    return metric, ">=" if bound == "min" else "<="


# --------------------------------------------------------------------------- loading
def parse_contract(raw: Any, source: str = "contract") -> Contract:
    if not isinstance(raw, dict):
        raise ConfigError(f"contract {source} must be a mapping of sections (fidelity, privacy, latency, nfe, "
                          f"guidance), got {type(raw).__name__}")
    return validated(Contract, raw, f"contract {source}")


def load_contract(uri: str) -> Contract:
    """Read and validate a contract YAML (local path, s3://, gs://)."""
    from synth.io import storage

    return parse_contract(storage.read_yaml(uri, "contract"), source=uri)


# --------------------------------------------------------------------------- measuring
@dataclass
class Generation:
    """How the synthetic rows were generated."""

    sampler: str
    steps: int
    guidance: float
    source: str
    nfe: int  # network evaluations per row, as the engine's `cost` counts them

    def __post_init__(self):
        from synth.diffusion.samplers import SAMPLERS

        if self.sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.sampler!r} (from {self.source}); choose one of {sorted(SAMPLERS)}")


def generation_info(synthetic_uri: str | None, engine, *, sampler: str | None = None,
                    steps: int | None = None, guidance: float | None = None) -> Generation:
    """The generation settings of `synthetic_uri`: the bulk-synthesis manifest in its folder when
    there is one, else the Parquet metadata `synth sample` writes (both must name the same
    artifact), else the given settings over the artifact's defaults (rows drawn unconditioned)."""
    import json

    from synth.io import storage

    manifest = engine.manifest
    if synthetic_uri is not None:
        syn_manifest = storage.join(synthetic_uri, "_manifest.json")
        if storage.exists(syn_manifest):
            m = json.loads(storage.read_bytes(syn_manifest))
            got = (m.get("artifact") or {}).get("artifact_id")
            if got and got != manifest.get("artifact_id"):
                raise ConfigError(f"{synthetic_uri!r} was synthesized from artifact {got}, not from the given "
                                  f"artifact {manifest.get('artifact_id')}; pass the artifact it came from")
            given = {k: v for k, v in (("sampler", sampler), ("steps", steps), ("guidance", guidance)) if v is not None}
            clash = {k: v for k, v in given.items() if v != m.get(k)}
            if clash:
                raise ConfigError(f"{synthetic_uri!r} records {', '.join(f'{k}={m.get(k)}' for k in clash)} in "
                                  f"its manifest; drop the conflicting option(s) {sorted(clash)}")
            return Generation(m["sampler"], int(m["steps"]), float(m["guidance"]), "synthesis manifest",
                              int(m["nfe"]))
        recorded = _recorded_generation(synthetic_uri)
        if recorded is not None and all(v is None for v in (sampler, steps, guidance)):
            got = recorded.get("artifact_id")
            if got and got != manifest.get("artifact_id"):
                raise ConfigError(f"{synthetic_uri!r} was sampled from artifact {got}, not from the given "
                                  f"artifact {manifest.get('artifact_id')}; pass the artifact it came from")
            return Generation(recorded["sampler"], int(recorded["steps"]), float(recorded["guidance"]),
                              "Parquet metadata", int(recorded["nfe"]))
    source = "command line" if any(v is not None for v in (sampler, steps, guidance)) else "artifact defaults"
    s, k, g = engine.settings(sampler, steps, guidance)
    engine.validate_request(1, s, k, g)
    return Generation(s, int(k), g, source, engine.cost(s, k, g, conditioned=False))


GENERATION_KEY = b"synth.generation"


def generation_metadata(engine, sampler: str | None, steps: int | None, guidance: float | None,
                        seed: int, conditioned: bool) -> dict[bytes, bytes]:
    """Parquet schema metadata recording how rows were sampled (read back by `generation_info`)."""
    import json

    s, k, g = engine.settings(sampler, steps, guidance)
    return {GENERATION_KEY: json.dumps({
        "artifact_id": engine.manifest.get("artifact_id"), "sampler": s, "steps": k,
        "nfe": engine.cost(s, k, g, conditioned=conditioned), "guidance": g, "seed": seed}).encode()}


def _recorded_generation(uri: str) -> dict | None:
    import json

    from synth.io.data import open_dataset

    meta = open_dataset(uri).schema.metadata or {}
    if GENERATION_KEY not in meta:
        return None
    try:
        return json.loads(meta[GENERATION_KEY])
    except ValueError:
        return None


def measure_latency(engine, gen: Generation, lat: Latency) -> dict:
    """Time `engine.sample` with the generation settings: `probes` requests of `request_rows` rows
    (after one warm-up) for p50/p99, and one run of `throughput_rows` rows for rows/s."""
    engine.sample(lat.request_rows, sampler=gen.sampler, steps=gen.steps, guidance=gen.guidance, seed=0)
    times = []
    for i in range(lat.probes):
        t0 = time.perf_counter()
        engine.sample(lat.request_rows, sampler=gen.sampler, steps=gen.steps, guidance=gen.guidance, seed=i + 1)
        times.append((time.perf_counter() - t0) * 1000.0)
    times.sort()
    q = statistics.quantiles(times, n=100, method="inclusive")
    out = {"latency_p50_ms": statistics.median(times), "latency_p99_ms": q[98],
           "request_rows": lat.request_rows, "probes": lat.probes}
    if lat.rows_per_s_min is not None:
        t0 = time.perf_counter()
        engine.sample(lat.throughput_rows, sampler=gen.sampler, steps=gen.steps, guidance=gen.guidance, seed=10**6)
        out["rows_per_s"] = lat.throughput_rows / (time.perf_counter() - t0)
        out["throughput_rows"] = lat.throughput_rows
    return out


def collect_metrics(evaluation: dict, manifest: dict, gen: Generation, latency: dict | None = None) -> dict:
    """Flatten an evaluation result (synth.evaluate.suite.evaluate), the manifest's privacy record,
    the generation settings and the latency probe into the metric names thresholds refer to."""
    eff = evaluation.get("efficacy") or {}
    ratio = None
    if eff:
        key = "f1_macro" if eff.get("task") == "classification" else "r2"
        ratio = (eff.get("ratio") or {}).get(key)
    pr = evaluation.get("privacy") or {}
    dcr_ratio = None
    if pr.get("median_dcr_synth") is not None and pr.get("median_dcr_holdout"):
        dcr_ratio = pr["median_dcr_synth"] / pr["median_dcr_holdout"]
    priv = manifest.get("privacy") or {}
    epsilon = float(priv["epsilon"]) if priv.get("dp") and priv.get("epsilon") is not None else math.inf
    metrics = {
        "quality_score": evaluation.get("quality_score"),
        "column_shapes": (evaluation.get("column_shapes") or {}).get("mean"),
        "pair_trends": (evaluation.get("pair_trends") or {}).get("mean"),
        "fit_overall": (evaluation.get("fit") or {}).get("overall"),
        "c2st_auc": (evaluation.get("detection") or {}).get("c2st_auc"),
        "efficacy_ratio": ratio,
        "dcr_share": pr.get("dcr_share"),
        "exact_copy_rate": pr.get("exact_copy_rate"),
        "median_dcr_ratio": dcr_ratio,
        "epsilon": epsilon,
        "nfe": gen.nfe,
        "guidance": gen.guidance,
    }
    for k in ("latency_p50_ms", "latency_p99_ms", "rows_per_s"):
        metrics[k] = (latency or {}).get(k)
    lik = evaluation.get("likelihood") or {}
    recorded = manifest.get("metrics") or {}
    metrics.update(bpd=lik.get("bpd"), nats_per_row=lik.get("nats_per_row"),
                   **{k: recorded.get(k) for k in ("inv_error", "posterior_collapse_rate", "reconstruction",
                                                   "elbo_val_gain")})
    return metrics


# --------------------------------------------------------------------------- checking
@dataclass
class Verdict:
    threshold: str
    metric: str
    op: str
    limit: float
    value: float | None
    passed: bool

    def describe(self) -> str:
        if self.value is None:
            return f"{self.threshold}: {self.metric} was not measured (required {self.op} {_num(self.limit)})"
        state = "ok" if self.passed else "VIOLATED"
        return f"{self.threshold}: {self.metric} = {_num(self.value)}, required {self.op} {_num(self.limit)} ({state})"


def _num(v: float) -> str:
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    if isinstance(v, int) or float(v).is_integer() and abs(v) >= 1:
        return f"{v:g}"
    return f"{v:.4g}" if abs(v) >= 1 else f"{v:.4f}"


@dataclass
class ContractResult:
    name: str
    source: str
    verdicts: list[Verdict]
    metrics: dict
    generation: dict | None = None
    latency_probe: dict | None = None

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.verdicts)

    @property
    def violations(self) -> list[str]:
        return [v.describe() for v in self.verdicts if not v.passed]

    def to_dict(self) -> dict:
        from synth.evaluate.suite import to_jsonable

        return to_jsonable({"name": self.name, "source": self.source, "passed": self.passed,
                            "violations": self.violations, "verdicts": [asdict(v) for v in self.verdicts],
                            "metrics": self.metrics, "generation": self.generation,
                            "latency_probe": self.latency_probe})


def check_contract(contract: Contract, metrics: dict, source: str = "contract") -> ContractResult:
    """A verdict for every threshold the contract sets; an unmeasured metric fails its threshold."""
    verdicts = []
    for name, metric, op, limit in contract.thresholds():
        value = metrics.get(metric)
        ok = value is not None and (value >= limit if op == ">=" else value <= limit)
        verdicts.append(Verdict(name, metric, op, limit, None if value is None else float(value), bool(ok)))
    return ContractResult(contract.name, source, verdicts, dict(metrics))


def evaluate_contract(contract: Contract, synthetic, engine, gen: Generation, *, data_uri: str | None = None,
                      source: str = "contract", evaluation: dict | None = None) -> tuple[dict, ContractResult]:
    """Score `synthetic` (a pyarrow Table) against the reference data recorded in `engine.manifest`
    with the contract's evaluation settings (or reuse `evaluation`), probe latency when the
    contract asks, and check every threshold. Returns (evaluation, result)."""
    from synth.evaluate.reference import evaluate_against_reference

    ev = evaluation
    if ev is None:
        s = contract.evaluation
        ev = evaluate_against_reference(synthetic, engine.manifest, data_uri=data_uri, target=s.target, seed=s.seed,
                                        max_rows=s.rows, engine=engine)
    latency = measure_latency(engine, gen, contract.latency) if contract.needs_latency else None
    result = check_contract(contract, collect_metrics(ev, engine.manifest, gen, latency), source)
    result.generation = asdict(gen)
    result.latency_probe = latency
    return ev, result
