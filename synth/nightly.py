"""The nightly pipeline: (optionally) retrain on the newest reference partition, synthesize,
evaluate against held-out reference rows, write the report, and fail when thresholds are missed."""
from __future__ import annotations

import json
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from synth import storage
from synth.errors import ConfigError
from synth.manifest import base_manifest


class Retrain(BaseModel):
    model_config = ConfigDict(extra="forbid")
    config: str = Field(..., description="run config YAML for training")
    newest_partition_of: str | None = Field(None, description="folder of partitions; train on the newest")


class Thresholds(BaseModel):
    """The release gate: each present threshold must hold or the job exits non-zero."""

    model_config = ConfigDict(extra="forbid")
    quality_score_min: float | None = 0.8
    column_shapes_min: float | None = None
    pair_trends_min: float | None = None
    c2st_auc_max: float | None = None
    dcr_share_max: float | None = None
    exact_copy_rate_max: float | None = None


class NightlyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    retrain: Retrain | None = None
    synthesize: dict[str, Any]
    evaluate_rows: int = Field(10_000, ge=100)
    thresholds: Thresholds = Field(default_factory=Thresholds)
    report: str = Field(..., description="where the nightly report JSON goes")


def newest_partition(uri: str) -> str:
    import pyarrow.fs as pafs

    fs, path = storage.resolve(uri)
    subdirs = sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(path))
                     if i.type == pafs.FileType.Directory and not i.base_name.startswith((".", "_")))
    if not subdirs:
        raise ConfigError(f"{uri!r} has no partition folders to retrain on")
    return storage.join(uri, subdirs[-1])


def check_thresholds(metrics: dict, th: Thresholds) -> list[str]:
    checks = [("quality_score_min", metrics["quality_score"], ">="),
              ("column_shapes_min", metrics["column_shapes"], ">="),
              ("pair_trends_min", metrics["pair_trends"], ">="),
              ("c2st_auc_max", metrics["c2st_auc"], "<="),
              ("dcr_share_max", metrics["dcr_share"], "<="),
              ("exact_copy_rate_max", metrics["exact_copy_rate"], "<=")]
    violations = []
    for name, value, op in checks:
        limit = getattr(th, name)
        if limit is None or value is None:
            continue
        ok = value >= limit if op == ">=" else value <= limit
        if not ok:
            violations.append(f"{name}: {value:.4f} is not {op} {limit}")
    return violations


def run_nightly(cfg: NightlyConfig) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from synth.config import RunConfig
    from synth.engine import load_engine
    from synth.evaluate.reference import evaluate_against_reference
    from synth.synthesize import SynthesizeConfig, synthesize

    t0 = time.perf_counter()
    syn_raw = dict(cfg.synthesize)
    trained = None
    if cfg.retrain is not None:
        from synth.train.fit import fit

        run = RunConfig.from_yaml(cfg.retrain.config)
        if cfg.retrain.newest_partition_of:
            run.data.uri = newest_partition(cfg.retrain.newest_partition_of)
        trained = fit(run)
        syn_raw["artifact"] = trained.artifact_uri
    syn_cfg = SynthesizeConfig.model_validate(syn_raw)
    syn_manifest = synthesize(syn_cfg)
    engine = load_engine(syn_cfg.artifact)
    tables, rows = [], 0
    for shard in syn_manifest["shards"]:
        fs, path = storage.resolve(storage.join(syn_cfg.output, shard["file"]))
        with fs.open_input_file(path) as f:
            tables.append(pq.read_table(f))
        rows += tables[-1].num_rows
        if rows >= cfg.evaluate_rows:
            break
    sample = pa.concat_tables(tables).slice(0, cfg.evaluate_rows)
    ev = evaluate_against_reference(sample, engine.manifest, max_rows=cfg.evaluate_rows)
    metrics = {"quality_score": ev["quality_score"], "column_shapes": ev["column_shapes"]["mean"],
               "pair_trends": ev["pair_trends"]["mean"], "c2st_auc": ev["detection"]["c2st_auc"],
               "dcr_share": ev["privacy"]["dcr_share"], "exact_copy_rate": ev["privacy"]["exact_copy_rate"]}
    violations = check_thresholds(metrics, cfg.thresholds)
    report = base_manifest("nightly", retrained=trained is not None,
                           artifact=syn_manifest["artifact"], synthesis={k: syn_manifest[k] for k in (
                               "rows", "sampler", "steps", "nfe", "guidance", "seed", "wall_s", "rows_per_s")},
                           output=syn_cfg.output, metrics=metrics, thresholds=cfg.thresholds.model_dump(),
                           violations=violations, passed=not violations, evaluation=ev,
                           wall_s=time.perf_counter() - t0)
    storage.write_bytes(cfg.report, json.dumps(report, indent=1).encode())
    return report
