"""The nightly pipeline: (optionally) retrain on the newest reference partition, synthesize,
check the release contract (contracts/*.yaml, synth.evaluate.contract) against held-out reference
rows, write the report (JSON, optionally HTML), and fail when a threshold is violated."""
from __future__ import annotations

import json
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from synth.io import storage
from synth.errors import ConfigError
from synth.io.manifest import base_manifest


class Retrain(BaseModel):
    model_config = ConfigDict(extra="forbid")
    config: str = Field(..., description="run config YAML for training")
    newest_partition_of: str | None = Field(None, description="folder of partitions; train on the newest")


class NightlyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    retrain: Retrain | None = None
    synthesize: dict[str, Any]
    contract: str = Field(..., description="release contract YAML (synth/evaluate/contract.py): the thresholds "
                                           "the run must meet, and how many rows are evaluated")
    report: str = Field(..., description="where the nightly report JSON goes")
    html_report: str | None = Field(None, description="also write the HTML evaluation report here")


def newest_partition(uri: str) -> str:
    import pyarrow.fs as pafs

    fs, path = storage.resolve(uri)
    subdirs = sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(path))
                     if i.type == pafs.FileType.Directory and not i.base_name.startswith((".", "_")))
    if not subdirs:
        raise ConfigError(f"{uri!r} has no partition folders to retrain on")
    return storage.join(uri, subdirs[-1])


def run_nightly(cfg: NightlyConfig) -> dict:
    """Retrain (optional), synthesize, check the release contract on the first
    `contract.evaluation.rows` synthetic rows, and write the report. The contract is read first,
    so a bad contract fails before any compute is spent."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from synth.config import RunConfig
    from synth.families import load_engine
    from synth.evaluate.contract import Generation, evaluate_contract, load_contract
    from synth.pipelines.synthesize import SynthesizeConfig, synthesize

    t0 = time.perf_counter()
    contract = load_contract(cfg.contract)
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
    want = contract.evaluation.rows
    tables, rows = [], 0
    for shard in syn_manifest["shards"]:
        fs, path = storage.resolve(storage.join(syn_cfg.output, shard["file"]))
        with fs.open_input_file(path) as f:
            tables.append(pq.read_table(f))
        rows += tables[-1].num_rows
        if rows >= want:
            break
    sample = pa.concat_tables(tables).slice(0, want)
    gen = Generation(syn_manifest["sampler"], syn_manifest["steps"], syn_manifest["guidance"],
                     "synthesis manifest", syn_manifest["nfe"])
    ev, verdict = evaluate_contract(contract, sample, engine, gen, source=cfg.contract)
    report = base_manifest("nightly", retrained=trained is not None,
                           artifact=syn_manifest["artifact"], synthesis={k: syn_manifest[k] for k in (
                               "rows", "sampler", "steps", "nfe", "guidance", "seed", "wall_s", "rows_per_s")},
                           output=syn_cfg.output, contract=verdict.to_dict(), metrics=verdict.to_dict()["metrics"],
                           violations=verdict.violations, passed=verdict.passed, evaluation=ev,
                           wall_s=time.perf_counter() - t0)
    if cfg.html_report:
        from synth.report import build_report

        build_report(sample, engine.manifest, evaluation=ev, contract=verdict, output=cfg.html_report,
                     extra_manifests={"nightly": {k: v for k, v in report.items() if k != "evaluation"},
                                      "synthesis": syn_manifest})
        report["html_report"] = cfg.html_report
    storage.write_bytes(cfg.report, json.dumps(report, indent=1).encode())
    return report
