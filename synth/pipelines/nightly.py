"""The nightly pipeline: (optionally) retrain on the newest reference partition, synthesize,
check the release contract (contracts/*.yaml, synth.evaluate.contract) against held-out reference
rows, write the report (JSON, optionally HTML), and release the run only when it passed.

Every run stages under its own prefix, ROOT/runs/RUN_ID/ (model/, synthetic/, report.json), so a
night never rewrites what an earlier one wrote; the gate runs on the staged output, and only a
passing run moves ROOT/latest.json (synth.io.release), which serving and consumers read. A failing
run stays staged with its report."""
from __future__ import annotations

import datetime as _dt
import json
import re
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from synth.errors import ConfigError
from synth.io import release, storage
from synth.io.manifest import base_manifest, now_utc


class Retrain(BaseModel):
    model_config = ConfigDict(extra="forbid")
    config: str = Field(..., description="run config YAML for training (its output is the run's prefix)")
    newest_partition_of: str | None = Field(None, description="folder of partitions; train on the newest")


class NightlyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: str = Field(..., description="release root: each run stages under ROOT/runs/RUN_ID/ and a passing run "
                                       "moves ROOT/latest.json (local, s3://, gs://)")
    run_id: str | None = Field(None, description="the run's folder name; default: its UTC start time "
                                                 "(YYYYMMDDTHHMMSSZ). Give an unfinished run's id to resume it")
    retrain: Retrain | None = None
    synthesize: dict[str, Any] = Field(..., description="bulk synthesis settings (synth.pipelines.synthesize) "
                                                        "without output; artifact only without retrain")
    contract: str = Field(..., description="release contract YAML (synth/evaluate/contract.py): the thresholds "
                                           "the run must meet, and how many rows are evaluated")
    html_report: bool = Field(False, description="also write ROOT/runs/RUN_ID/report.html")
    require_signature: bool = Field(False, description="synthesize only from a signed artifact (`synth sign`); "
                                                       "without retrain")
    public_key: str | None = Field(None, description="Ed25519 public key PEM file or URI; default: SYNTH_PUBLIC_KEY")
    sign: bool = Field(False, description="sign a retrained model that passed its gate with SYNTH_SIGNING_KEY "
                                          "before releasing it")

    @field_validator("run_id")
    @classmethod
    def _run_id(cls, v):
        if v is not None and (not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", v) or ".." in v):
            raise ValueError("run_id is a folder name: letters, digits, '.', '_' and '-', no '..'")
        return v


def newest_partition(uri: str) -> str:
    import pyarrow.fs as pafs

    fs, path = storage.resolve(uri)
    subdirs = sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(path))
                     if i.type == pafs.FileType.Directory and not i.base_name.startswith((".", "_")))
    if not subdirs:
        raise ConfigError(f"{uri!r} has no partition folders to retrain on")
    return storage.join(uri, subdirs[-1])


def _check(cfg: NightlyConfig) -> None:
    """Refuse a config that cannot work before any compute is spent."""
    if "output" in cfg.synthesize:
        raise ConfigError("synthesize.output is set by the nightly job (ROOT/runs/RUN_ID/synthetic); remove it")
    if cfg.retrain is not None and "artifact" in cfg.synthesize:
        raise ConfigError("synthesize.artifact is the retrained model when retrain is set; remove it")
    if cfg.retrain is None and "artifact" not in cfg.synthesize:
        raise ConfigError("synthesize.artifact is required without retrain")
    if cfg.retrain is not None and cfg.require_signature:
        raise ConfigError("require_signature checks the artifact a run starts from; a retrained model is new: "
                          "use `sign: true` to sign it once it passed its gate")
    if cfg.sign:
        if cfg.retrain is None:
            raise ConfigError("sign signs a retrained model; without retrain, sign the artifact with `synth sign`")
        from synth.io.signing import load_private_key

        load_private_key()  # a missing key fails now, not after the night's compute


def run_nightly(cfg: NightlyConfig) -> dict:
    """Retrain (optional), synthesize and check the release contract, all under the run's own prefix;
    write its report; move ROOT/latest.json to the run when it passed. The contract and the config
    are checked first, so a bad one fails before any compute is spent."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from synth.config import RunConfig
    from synth.families import load_engine
    from synth.evaluate.contract import Generation, evaluate_contract, load_contract
    from synth.pipelines.synthesize import SynthesizeConfig, synthesize

    t0 = time.perf_counter()
    contract = load_contract(cfg.contract)
    _check(cfg)
    run_id = cfg.run_id or _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    prefix = release.run_prefix(cfg.root, run_id)
    report_uri = storage.join(prefix, "report.json")
    if storage.exists(report_uri):
        raise ConfigError(f"run {run_id!r} already finished (its report is {report_uri}); a run is never rewritten: "
                          "start a new one (leave run_id out)")
    syn_raw = {**cfg.synthesize, "output": storage.join(prefix, "synthetic"),
               "require_signature": cfg.require_signature, "public_key": cfg.public_key}
    trained = None
    if cfg.retrain is not None:
        from synth.train.fit import fit

        run = RunConfig.from_yaml(cfg.retrain.config)
        run.output = prefix
        if cfg.retrain.newest_partition_of:
            run.data.uri = newest_partition(cfg.retrain.newest_partition_of)
        trained = fit(run)
        syn_raw["artifact"] = trained.artifact_uri
    else:
        syn_raw["artifact"] = release.resolve_artifact(syn_raw["artifact"])
    syn_cfg = SynthesizeConfig.model_validate(syn_raw)
    syn_manifest = synthesize(syn_cfg)
    engine = load_engine(syn_cfg.artifact, require_signature=cfg.require_signature, public_key=cfg.public_key)
    if engine.manifest["artifact_id"] != syn_manifest["artifact"]["artifact_id"]:
        raise ConfigError(f"the artifact at {syn_cfg.artifact!r} changed during the run; rerun")
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
    report = base_manifest("nightly", run=run_id, prefix=prefix, retrained=trained is not None,
                           artifact=syn_manifest["artifact"], synthesis={k: syn_manifest[k] for k in (
                               "rows", "sampler", "steps", "nfe", "guidance", "seed", "wall_s", "rows_per_s")},
                           output=syn_cfg.output, contract=verdict.to_dict(), metrics=verdict.to_dict()["metrics"],
                           violations=verdict.violations, passed=verdict.passed, evaluation=ev,
                           wall_s=time.perf_counter() - t0)
    if cfg.html_report:
        from synth.report import build_report

        report["html_report"] = storage.join(prefix, "report.html")
        build_report(sample, engine.manifest, evaluation=ev, contract=verdict, output=report["html_report"],
                     extra_manifests={"nightly": {k: v for k, v in report.items() if k != "evaluation"},
                                      "synthesis": syn_manifest})
    storage.write_bytes(report_uri, json.dumps(report, indent=1).encode())
    if verdict.passed:
        if cfg.sign:
            from synth.io.artifact import sign_artifact

            sign_artifact(syn_cfg.artifact)
        report["latest"] = release.promote(cfg.root, {
            "run": run_id, "artifact": syn_cfg.artifact, "artifact_id": syn_manifest["artifact"]["artifact_id"],
            "synthetic": syn_cfg.output, "report": report_uri, "promoted_at": now_utc()})
    report["report"] = report_uri
    return report
