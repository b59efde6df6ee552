"""Bulk synthesis with Ray Data: shard ids -> a pool of sampler actors -> committed Parquet
shards and a run manifest.

Row i of a run depends only on the run seed and i (synth.engine.rowstreams), whatever the shard size,
batch size or actor count; file names are deterministic (`part-00000.parquet`), and every shard is written to a temporary name and moved
into place, so no reader sees a partial file. A rerun after a crash skips shards whose file
matches the checksum recorded when it was committed and writes only the missing ones; the
final output is byte-identical to an uninterrupted run. `replay` re-runs a run from its
manifest (which records every setting that affects the bytes) and compares the checksums.
"""
from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from synth.io import storage
from synth.errors import ArtifactError, ConfigError, SynthError
from synth.io.manifest import base_manifest
from synth.engine.rowstreams import RowUniforms

MANIFEST = "_manifest.json"
CONDITION_STREAM = 2**31  # shard_seed(seed, CONDITION_STREAM) keys the reference-drawn conditions
PROTOCOL = "rowstreams-1"  # how rows derive from (seed, row index): synth.engine.rowstreams
COMMITS = "_commits"  # one small JSON per committed shard: rows and sha256
PLAN = ".plan.json"  # the run's settings, created once: a folder holds the shards of one run


class Conditions(BaseModel):
    """What the rows are conditioned on (at most one of the three)."""

    model_config = ConfigDict(extra="forbid")
    fixed: dict[str, Any] = Field(default_factory=dict, description="column -> value for every row (a numeric or "
                                                                    "datetime column: also a range, {min: 30, max: "
                                                                    "40} or '30..40')")
    reference: list[str] = Field(default_factory=list,
                                 description="columns drawn from their reference distribution")
    mix: dict[str, dict[str, int]] = Field(default_factory=dict,
                                           description='explicit counts, e.g. {"income": {">50K": 10000}}')

    @model_validator(mode="after")
    def _one_kind(self):
        if sum(bool(x) for x in (self.fixed, self.reference, self.mix)) > 1:
            raise ValueError("give only one of conditions.fixed, conditions.reference, conditions.mix")
        if len(self.mix) > 1:
            raise ValueError("conditions.mix takes one column")
        return self


class SynthesizeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    artifact: str = Field(..., description="model artifact URI")
    output: str = Field(..., description="folder for the shards (local, s3://, gs://)")
    rows: int = Field(..., description="total rows (exact)")
    shard_rows: int = Field(100_000, ge=1)
    batch_rows: int = Field(8192, ge=1, description="rows per sampler call inside an actor")
    sampler: str | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int = 0
    conditions: Conditions = Field(default_factory=Conditions)
    actors: int = Field(2, ge=1, description="sampler actors in the pool")
    cpus_per_actor: float = Field(1.0, gt=0)
    use_gpu: bool = Field(False, description="one GPU per actor")
    actor_max_restarts: int = Field(
        -1, ge=-1, description="restarts of a sampler actor lost with its node: -1 (Ray Data's default) restarts it "
                               "wherever there is capacity and the run waits for one; 0 fails the run at once, and "
                               "a rerun writes only the shards not yet committed")
    resources_per_actor: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources each sampler actor needs (e.g. {synth_bulk: 1} to "
                                          "place actors on the nodes that advertise it); not part of the output")
    threads_per_actor: int | None = Field(None, ge=1)
    require_signature: bool = Field(False, description="load the artifact only if its signature (`synth sign`) "
                                                       "verifies with public_key")
    public_key: str | None = Field(None, description="Ed25519 public key PEM file or URI; default: SYNTH_PUBLIC_KEY")

    @model_validator(mode="after")
    def _rows(self):
        if self.rows <= 0:
            raise ValueError(f"rows must be a positive integer, got {self.rows}")
        return self


def shard_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def plan_shards(cfg: SynthesizeConfig, engine) -> list[dict]:
    """Shard specs: index, rows, seed and (for mixes) the per-row condition values."""
    n = math.ceil(cfg.rows / cfg.shard_rows)
    sizes = [cfg.shard_rows] * (n - 1) + [cfg.rows - cfg.shard_rows * (n - 1)]
    specs = [{"index": i, "rows": r, "start": i * cfg.shard_rows, "seed": shard_seed(cfg.seed, i)}
             for i, r in enumerate(sizes)]
    c = cfg.conditions
    if c.fixed:
        engine.encode_conditions(1, c.fixed)  # validates names and values now, on the driver
    for col in c.reference:
        if col not in engine.cond_columns:
            engine.codec.categorical(col)
            raise ConfigError(f"conditions.reference names {col!r}, which is not a condition column; "
                              f"condition columns are {engine.cond_columns}")
    if c.mix:
        (col, counts), = c.mix.items()
        total = sum(counts.values())
        if total != cfg.rows:
            raise ConfigError(f"conditions.mix asks for {total} rows of {col!r} but rows is {cfg.rows}; "
                              "make them equal")
        if any(v < 0 for v in counts.values()):
            raise ConfigError("conditions.mix counts must be >= 0")
        # keys are text (YAML/JSON object keys): map "3" to the category 3 of an integer column
        cat = engine.codec.categorical(col)
        by_text = {str(v): v for v in cat.categories if v is not None}
        keys = [k if k in cat.index_of() else by_text.get(k, k) for k in counts]
        engine.encode_conditions(len(keys), {col: keys})  # unknown column / unseen values named here
        # rows are laid out value after value across shards: shard i holds rows [start, start+size)
        start = 0
        bounds = np.cumsum([0, *counts.values()])
        for s in specs:
            lo, hi = start, start + s["rows"]
            parts = []
            for k, key in enumerate(keys):
                a, b = max(lo, bounds[k]), min(hi, bounds[k + 1])
                if b > a:
                    parts.append([key, int(b - a)])
            s["mix"] = {"column": col, "runs": parts}
            start = hi
    return specs


def conditioned_columns(c: Conditions) -> dict:
    """The columns a run conditions on (the keys of its conditions, whichever kind)."""
    return {name: None for name in [*c.fixed, *c.reference, *c.mix]}


def shard_conditions(engine, spec: dict, c: Conditions, seed: int = 0) -> dict | None:
    n = spec["rows"]
    if c.fixed:
        return dict(c.fixed)
    if c.reference:  # per-row draws keyed by (seed, row): independent of the shard layout
        rows = RowUniforms(shard_seed(seed, CONDITION_STREAM), spec["start"], n)
        out = {}
        for col in c.reference:
            cat = engine.codec.categorical(col)
            cdf = np.cumsum(cat.probs)
            slots = np.minimum(np.searchsorted(cdf / cdf[-1], rows.uniforms(f"condition:{col}"), side="right"),
                               len(cat.probs) - 1)
            out[col] = cat.from_slots(slots, rows).to_pylist()  # the last slot is "other" when present
        return out
    if "mix" in spec:
        col = spec["mix"]["column"]
        return {col: [v for v, k in spec["mix"]["runs"] for _ in range(k)]}
    return None


class SamplerActor:
    """Loads the artifact once (and checks it is the one the run planned with); each call samples
    whole shards and commits them."""

    def __init__(self, cfg: dict, artifact_id: str):
        import torch

        from synth.families import load_engine

        self.cfg = SynthesizeConfig.model_validate(cfg)
        if self.cfg.threads_per_actor:
            torch.set_num_threads(self.cfg.threads_per_actor)
        self.engine = load_engine(self.cfg.artifact, require_signature=self.cfg.require_signature,
                                  public_key=self.cfg.public_key)
        if self.engine.manifest["artifact_id"] != artifact_id:
            raise ArtifactError(f"the artifact at {self.cfg.artifact!r} changed while the run was planned "
                                f"(planned {artifact_id}, found {self.engine.manifest['artifact_id']}); rerun")
        if self.cfg.use_gpu and torch.cuda.is_available():
            self.engine.to("cuda")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list] = {"index": [], "rows": [], "sha256": [], "seconds": []}
        for spec_json in batch["spec"]:
            spec = json.loads(spec_json)
            t0 = time.perf_counter()
            sha = write_shard(self.engine, self.cfg, spec)
            out["index"].append(spec["index"])
            out["rows"].append(spec["rows"])
            out["sha256"].append(sha)
            out["seconds"].append(time.perf_counter() - t0)
        return {k: np.asarray(v) for k, v in out.items()}


def sample_shard(engine, cfg: SynthesizeConfig, spec: dict):
    import pyarrow as pa

    conds = shard_conditions(engine, spec, cfg.conditions, cfg.seed)
    parts = []
    n = spec["rows"]
    for start in range(0, n, cfg.batch_rows):  # row i of the run depends on (seed, i) only (synth.engine.rowstreams)
        m = min(cfg.batch_rows, n - start)
        sub = None if conds is None else {c: (v[start:start + m] if isinstance(v, list) else v) for c, v in conds.items()}
        parts.append(engine.sample(m, sub, sampler=cfg.sampler, steps=cfg.steps, guidance=cfg.guidance,
                                   seed=cfg.seed, start=spec["start"] + start))
    return pa.concat_tables(parts)


def write_shard(engine, cfg: SynthesizeConfig, spec: dict) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = sample_shard(engine, cfg, spec)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    data = sink.getvalue().to_pybytes()
    sha = storage.sha256_bytes(data)
    storage.write_bytes(storage.join(cfg.output, shard_name(spec["index"])), data)  # temp name + move
    storage.write_bytes(storage.join(cfg.output, COMMITS, f"{spec['index']:05d}.json"),
                        json.dumps({"rows": spec["rows"], "sha256": sha}).encode())
    return sha


def committed_shards(cfg: SynthesizeConfig, specs: list[dict]) -> dict[int, dict]:
    """Shards whose file matches the checksum recorded at commit time."""
    done = {}
    for s in specs:
        rec_uri = storage.join(cfg.output, COMMITS, f"{s['index']:05d}.json")
        part_uri = storage.join(cfg.output, shard_name(s["index"]))
        if storage.exists(rec_uri) and storage.exists(part_uri):
            rec = json.loads(storage.read_bytes(rec_uri))
            if rec["rows"] == s["rows"] and storage.sha256_bytes(storage.read_bytes(part_uri)) == rec["sha256"]:
                done[s["index"]] = rec
    return done


def check_output(cfg: SynthesizeConfig, plan_key: dict) -> None:
    """Refuse an output folder holding files that are not this run's shards."""
    import pyarrow.fs as pafs

    fs, path = storage.resolve(cfg.output)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        raise ConfigError(f"output {cfg.output!r} is a file; give a folder")
    if info.type == pafs.FileType.NotFound:
        storage.check_writable(cfg.output)
        return
    names = {i.base_name for i in fs.get_file_info(pafs.FileSelector(path))}
    ours = {MANIFEST, COMMITS, PLAN}
    foreign = sorted(n for n in names if n not in ours and not (n.startswith("part-") and n.endswith(".parquet"))
                     and not n.startswith(storage.TMP_PREFIX))
    if foreign:
        raise ConfigError(f"output {cfg.output!r} holds files that are not synth shards ({foreign[:5]}); "
                          "choose an empty or new folder")
    storage.check_writable(cfg.output)


def claim_output(cfg: SynthesizeConfig, plan_key: dict) -> None:
    """Record the run's plan in its output folder (created exclusively: of two runs starting at
    once, one wins), or check that the plan already there is this run's."""
    plan_uri = storage.join(cfg.output, PLAN)
    if not storage.create_exclusive(plan_uri, json.dumps(plan_key).encode()) and \
            json.loads(storage.read_bytes(plan_uri)) != plan_key:
        raise ConfigError(f"output {cfg.output!r} holds shards of a different synthesis run (other artifact, rows, "
                          "seed or settings); choose a new folder or delete it")
    storage.sweep_tmp(cfg.output)  # what writers that died mid-shard left


def generation_settings(engine, cfg: SynthesizeConfig) -> dict:
    """The validated sampler, steps and guidance of a bulk run (the model's defaults where the config
    gives none) and its NFE per row as the engine counts it (the manifest's `nfe`)."""
    c = cfg.conditions
    sampler, steps, guidance = engine.settings(cfg.sampler, cfg.steps, cfg.guidance)
    engine.validate_request(1, sampler, steps, guidance)
    return {"sampler": sampler, "steps": steps, "guidance": guidance,
            "nfe": engine.cost(sampler, steps, guidance, conditioned=bool(c.fixed or c.mix or c.reference))}


def synthesize(cfg: SynthesizeConfig, progress=None) -> dict:
    """Run bulk synthesis on Ray; returns the run manifest (also written to OUTPUT/_manifest.json)."""
    import ray
    import ray.data

    from synth.families import load_engine
    from synth.io.raycluster import ensure_ray

    t0 = time.perf_counter()
    engine = load_engine(cfg.artifact, require_signature=cfg.require_signature,  # missing / tampered /
                         public_key=cfg.public_key)                            # incompatible artifacts fail here
    gen = generation_settings(engine, cfg)
    sampler, steps, guidance = gen["sampler"], gen["steps"], gen["guidance"]
    specs = plan_shards(cfg, engine)
    plan_key = {"protocol": PROTOCOL, "artifact_id": engine.manifest["artifact_id"], "rows": cfg.rows,
                "shard_rows": cfg.shard_rows,
                "batch_rows": cfg.batch_rows, "seed": cfg.seed, "sampler": sampler, "steps": steps,
                "guidance": guidance, "conditions": cfg.conditions.model_dump()}
    check_output(cfg, plan_key)
    claim_output(cfg, plan_key)
    done = committed_shards(cfg, specs)
    todo = [s for s in specs if s["index"] not in done]
    records = {i: {"file": shard_name(i), **r} for i, r in done.items()}

    if todo:
        ensure_ray()
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        run_cfg = cfg.model_copy(update={"sampler": sampler, "steps": steps, "guidance": guidance}).model_dump()
        ds = ray.data.from_items([{"spec": json.dumps(s)} for s in todo], override_num_blocks=len(todo))
        results = ds.map_batches(
            SamplerActor, fn_constructor_kwargs={"cfg": run_cfg, "artifact_id": plan_key["artifact_id"]},
            batch_size=1, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=cfg.actors),
            num_cpus=cfg.cpus_per_actor, num_gpus=1 if cfg.use_gpu else 0,
            max_restarts=cfg.actor_max_restarts,
            **({"resources": dict(cfg.resources_per_actor)} if cfg.resources_per_actor else {}))
        rows_done = sum(r["rows"] for r in records.values())
        for row in results.iter_rows():
            i = int(row["index"])
            records[i] = {"file": shard_name(i), "rows": int(row["rows"]), "sha256": str(row["sha256"])}
            rows_done += int(row["rows"])
            if progress:
                progress(rows_done, cfg.rows)
    wall = time.perf_counter() - t0
    written = sum(s["rows"] for s in todo)
    total = sum(r["rows"] for r in records.values())
    if total != cfg.rows or len(records) != len(specs):
        raise SynthError(f"synthesis produced {total} rows in {len(records)} shards, expected {cfg.rows} in "
                         f"{len(specs)}; rerun to complete the missing shards")
    manifest = base_manifest(
        "synthesis",
        artifact={"uri": cfg.artifact, "artifact_id": engine.manifest["artifact_id"],
                  "files": engine.manifest["files"], "privacy": engine.manifest.get("privacy")},
        **gen, seed=cfg.seed, protocol=PROTOCOL,
        shard_rows=cfg.shard_rows, batch_rows=cfg.batch_rows, cpus_per_actor=cfg.cpus_per_actor,
        threads_per_actor=cfg.threads_per_actor, use_gpu=cfg.use_gpu,
        conditions=cfg.conditions.model_dump(), enforced=engine.enforcement(conditioned_columns(cfg.conditions)),
        rows=total,
        shards=[records[i] for i in sorted(records)],
        resumed_shards=len(done), wall_s=wall, rows_per_s=written / wall if written else None,
        actors=cfg.actors)
    storage.write_bytes(storage.join(cfg.output, MANIFEST), json.dumps(manifest, indent=1).encode())
    return manifest


def replay(manifest_uri: str, output: str | None = None, progress=None) -> dict:
    """Re-run a bulk synthesis from its run manifest into `output` (default: a temporary folder,
    removed afterwards) and compare every shard's sha256 with the one recorded. Returns
    {"shards", "matched", "mismatched": [file...], "versions_differ": {lib: [recorded, now]}}."""
    import shutil
    import tempfile

    from synth.families import load_engine
    from synth.io.manifest import library_versions

    if storage.is_dir(manifest_uri):
        manifest_uri = storage.join(manifest_uri, MANIFEST)
    if not storage.exists(manifest_uri):
        raise ConfigError(f"no synthesis manifest at {manifest_uri!r}; give a `synth synthesize` output folder "
                          f"or its {MANIFEST}")
    try:
        m = json.loads(storage.read_bytes(manifest_uri))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{manifest_uri} is not valid JSON ({e})") from None
    if not isinstance(m, dict) or m.get("kind") != "synthesis":
        raise ConfigError(f"{manifest_uri} is not a bulk synthesis manifest (kind 'synthesis'); "
                          "`synth replay` re-runs `synth synthesize` outputs")
    if m.get("protocol") != PROTOCOL:
        raise ConfigError(f"{manifest_uri} was written with sampling protocol {m.get('protocol')!r}; this synth "
                          f"replays {PROTOCOL!r} runs only (rerun the synthesis with this version)")
    art = m["artifact"]
    engine = load_engine(art["uri"])
    if engine.manifest["artifact_id"] != art["artifact_id"]:
        raise ConfigError(f"the artifact at {art['uri']!r} is {engine.manifest['artifact_id']}, the run used "
                          f"{art['artifact_id']}; point the manifest's artifact.uri at the artifact it was made with")
    tmp = None if output is not None else tempfile.mkdtemp(prefix="synth-replay-")
    try:
        cfg = SynthesizeConfig(
            artifact=art["uri"], output=output or tmp, rows=m["rows"], shard_rows=m["shard_rows"],
            batch_rows=m["batch_rows"], sampler=m["sampler"], steps=m["steps"], guidance=m["guidance"],
            seed=m["seed"], conditions=m["conditions"], actors=m["actors"], cpus_per_actor=m["cpus_per_actor"],
            threads_per_actor=m["threads_per_actor"], use_gpu=m["use_gpu"])
        again = synthesize(cfg, progress=progress)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    recorded = {s["file"]: s["sha256"] for s in m["shards"]}
    now = {s["file"]: s["sha256"] for s in again["shards"]}
    mismatched = sorted(f for f in recorded if now.get(f) != recorded[f])
    versions = library_versions()
    differ = {k: [v, versions.get(k)] for k, v in m.get("versions", {}).items() if versions.get(k) != v}
    return {"shards": len(recorded), "matched": len(recorded) - len(mismatched), "mismatched": mismatched,
            "versions_differ": differ}
