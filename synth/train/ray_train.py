"""The Ray layer for training: Ray Data ingest + Ray Train (V2) workers running the same loop.

    Parquet (URI) -> ray.data.read_parquet -> split by row hash -> codec statistics as a
    distributed map + merge -> encode in map_batches -> TorchTrainer workers (Accelerate:
    device, DDP, mixed precision) -> checkpoints = artifacts under storage_path -> artifact.

Data reach the workers as Ray Data shards. In "memory" mode (default) every worker reads the
whole encoded training set once through `iter_batches` (numpy: see WORKER_RUNTIME_ENV), then takes its rank's slice of
each seeded global batch: the same seed, config and worker count give the same loss curve.
In "stream" mode each worker streams its own split shard every epoch with a local shuffle
buffer, for data larger than a worker's memory (not bit-reproducible).
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import torch

from synth.io import storage
from synth.config import RunConfig, ScalingConfig
from synth.io.data import SplitConfig, input_digest, parquet_files, row_hashes, split_labels
from synth.errors import ConfigError, SynthError
from synth.table import TableCodec, TableStats
from synth.table.constraints import Constraints
from synth.families import FAMILIES, load_engine
from synth.privacy import PrivacyPlan
from synth.train.config import TrainConfig, resolve_eval_every
from synth.train.prepare import Prepared
from synth.train.session import RaySession, TrainingData


# -- Ray Data ingest ------------------------------------------------------------------------
def read_reference(uri: str):
    """A Ray dataset over the reference Parquet, after naming any unreadable file.

    Through Ray Data's V1 Parquet datasource, not the V2 default of Ray 2.60: V2 lists the files of
    *every* execution of the dataset (codec statistics, held-out rows, each worker's ingest) on a
    pool of 32 `FooterReader` actors (RAY_DATA_PARQUET_FOOTER_NUM_ACTORS), spread over the cluster,
    each a new worker process that holds a CPU while it starts, created and killed per listing, even
    for one file. On a cluster with a few CPUs per node that listing waited minutes for actors to be
    placed and started (py-spy: the ListFiles task in FooterFileIndexer.list_files, creating them).
    The footers are read here anyway (open_dataset), on the driver, once.

    Blocks: one per file, more only for files over READ_BLOCK_BYTES (on disk). Ray Data's default
    cuts even a 1 MB file into 8+ blocks, and every block is a task of each map over the data
    (split, statistics, encoding): on a multi-node cluster each new task may be a new worker
    process on some node, which cost far more than reading the rows."""
    import math

    import ray.data

    from synth.io.data import open_dataset

    open_dataset(uri)  # validates every file's footer and schema, naming a bad file
    fs, files = parquet_files(uri)
    total = sum(i.size or 0 for i in fs.get_file_info(files))
    ctx = ray.data.DataContext.get_current()
    v2, ctx.use_datasource_v2 = ctx.use_datasource_v2, False
    try:
        return ray.data.read_parquet(files, filesystem=fs,
                                     override_num_blocks=max(len(files), math.ceil(total / READ_BLOCK_BYTES)))
    finally:
        ctx.use_datasource_v2 = v2


READ_BLOCK_BYTES = 32 << 20  # Parquet bytes per read block (~100-300 MB decoded: Ray Data's 128 MiB target)


def _split_filter(batch: pa.Table, split: dict, part: int) -> pa.Table:
    return batch.filter(pa.array(split_labels(batch, SplitConfig(**split)) == part))


def _partial_stats(batch: pa.Table) -> pa.Table:
    stats = TableStats.empty(batch.schema).add_batch(batch)
    return pa.table({"stats": [json.dumps(stats.to_dict())]})


def distributed_stats(ds, schema: pa.Schema) -> TableStats:
    """Codec statistics as a distributed map; only the small partial summaries reach the driver."""
    total = TableStats.empty(schema)
    partials = ds.map_batches(_partial_stats, batch_format="pyarrow", batch_size=65_536, num_cpus=0.5)
    for row in partials.iter_rows():
        total.merge(TableStats.from_dict(json.loads(row["stats"])))
    return total


def _constrain(batch: pa.Table, state: dict, drop: bool) -> pa.Table:
    """Rows -> the model table of the run's constraints (training rows that break one left out)."""
    cons = Constraints.from_dict(state)
    if drop:
        batch = batch.filter(pa.array(cons.valid(batch)))
    return cons.forward(batch)


def fit_constraints(train_ds, schema: pa.Schema, cfg: RunConfig) -> Constraints:
    """The run's constraints fitted on the training split; only the columns they use reach the driver."""
    import ray

    names = [c for c in dict.fromkeys(c for s in cfg.constraints for c in s.targets() + s.reads())
             if c in schema.names]  # an unknown column is refused by Constraints.fit, naming the constraint
    refs = train_ds.select_columns(names).to_arrow_refs() if names else []
    blocks = [t for t in ray.get(refs) if t.num_rows]
    table = pa.concat_tables(blocks) if blocks else pa.schema([schema.field(c) for c in names]).empty_table()
    return Constraints.fit(cfg.constraints, table, cfg.data.codec, cfg.data.constraint_violations, schema=schema)[0]


def _encode(batch: pa.Table, codec_state: dict, seed: int | None) -> dict[str, np.ndarray]:
    codec = TableCodec.from_dict(codec_state)
    rng = None
    if seed is not None and batch.num_rows:
        # dequantisation noise seeded by the batch content, so any block layout gives the same values
        first = int(row_hashes(batch.slice(0, 1))[0])
        rng = np.random.default_rng([seed, first, batch.num_rows])
    return {"x": codec.encode(batch, rng, strict=seed is not None).astype(np.float32)}


# -- the worker loop ------------------------------------------------------------------------
# Ray Train V2 runs the training function in a thread of the worker process. With libgomp (torch's
# OpenMP backend on Linux) every *other* live thread that has run a multi-threaded OpenMP region
# keeps its own thread team, the process then has more OpenMP threads than CPUs, and libgomp stops
# spinning between regions: the training thread's torch steps ran ~3x slower in a probe (3.7 ms ->
# 11-12 ms; an MLP step) and the Ray loop ~30 % below a plain loop. So no other thread may run
# torch's parallel kernels: workers start with OMP_NUM_THREADS=1 (the actor's main thread stays
# serial), Ray Data hands over numpy batches (its prefetch threads never touch torch), and the
# training thread alone raises its own thread count (`training_threads`).
WORKER_RUNTIME_ENV = {"env_vars": {"OMP_NUM_THREADS": "1"}}


def training_threads(cfg) -> None:
    """The training thread's torch threads: train.threads, else the worker's CPUs (a run config
    or distillation config)."""
    if not torch.cuda.is_available():
        torch.set_num_threads(cfg.train.threads or max(1, int(cfg.scaling.cpus_per_worker)))


def _numpy_batches(shard, **kw):
    for b in shard.iter_batches(batch_format="numpy", **kw):
        yield torch.from_numpy(np.ascontiguousarray(b["x"], dtype=np.float32))


def _materialize(shard, batch_size: int = 65_536) -> torch.Tensor:
    parts = list(_numpy_batches(shard, batch_size=batch_size))
    x = torch.cat(parts) if parts else torch.zeros(0)
    # arrival order of blocks is not deterministic: sort rows so every run sees the same order
    order = np.lexsort(x.numpy().T[::-1])
    return x[torch.from_numpy(order)]


def _stream_batches(shard, per_worker_bs: int, seed: int):
    epoch = 0
    while True:
        got = False
        for b in _numpy_batches(shard, batch_size=per_worker_bs, drop_last=True,
                                local_shuffle_buffer_size=max(4 * per_worker_bs, 10_000),
                                local_shuffle_seed=seed + epoch):
            got = True
            yield b
        if not got:
            raise SynthError("a training worker received no rows; use fewer workers or more data")
        epoch += 1


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """What every Ray Train worker runs: the family's trainer (the same one as in-process
    training) on this worker's data, reporting through a `RaySession` (checkpoints from rank 0)."""
    import ray.train

    cfg = RunConfig.model_validate(config["run"])
    codec = TableCodec.from_dict(config["codec"])
    ctx = ray.train.get_context()
    training_threads(cfg)
    torch.manual_seed(cfg.train.seed)
    family = FAMILIES[cfg.model.family]
    engine = family.build(cfg.model, codec)
    data = TrainingData(x_val=_materialize(ray.train.get_dataset_shard("val")), rank=ctx.get_world_rank(),
                        world=ctx.get_world_size(),
                        privacy=PrivacyPlan.from_dict(config["privacy"]) if config.get("privacy") else None)
    if config["data_mode"] == "memory":
        data.x_train = _materialize(ray.train.get_dataset_shard("train"))
        if data.x_train.shape[0] < cfg.train.batch_size:
            raise SynthError(f"only {data.x_train.shape[0]} training rows for batch_size {cfg.train.batch_size}; "
                             "lower train.batch_size")
    else:
        data.stream = lambda batch, seed: _stream_batches(ray.train.get_dataset_shard("train"), batch, seed)
    family.trainer(engine, cfg, data, RaySession())


def prepare_cluster(sc: ScalingConfig, train: TrainConfig) -> None:
    """Before any data is read: connect to (or start) Ray and refuse what can never run."""
    from synth.io.raycluster import check_resources, ensure_ray

    if train.time_budget_s is not None and sc.num_workers > 1:
        raise ConfigError("train.time_budget_s stops workers at different steps, which deadlocks the gradient "
                          "all-reduce; use train.steps with more than one worker")
    ensure_ray()
    check_resources(sc.num_workers, sc.cpus_per_worker, sc.gpus_per_worker, sc.use_gpu)
    _check_custom_resources(sc.num_workers, getattr(sc, "resources_per_worker", {}))


def _check_custom_resources(workers: int, wanted: dict[str, float]) -> None:
    """Refuse custom worker resources the cluster does not have instead of waiting forever."""
    import os

    import ray

    if not wanted or os.environ.get("SYNTH_ASSUME_AUTOSCALER") == "1":
        return
    total = ray.cluster_resources()
    short = {k: v * workers for k, v in wanted.items() if v * workers > total.get(k, 0)}
    if short:
        have = {k: total.get(k, 0) for k in short}
        raise ConfigError(f"scaling.resources_per_worker needs {short} for {workers} workers but the Ray cluster has "
                          f"{have}; start nodes with `ray start --resources` that advertise them (set "
                          "SYNTH_ASSUME_AUTOSCALER=1 if an autoscaler will add them)")


def run_trainer(loop: Callable[[dict], None], loop_config: dict, sc: ScalingConfig, *, name: str,
                storage_path: str, what: str, datasets: dict | None = None, dataset_config=None):
    """Run `loop` on sc.num_workers Ray Train workers (V2 TorchTrainer, after `prepare_cluster`);
    returns the engine of the final checkpoint and the last reported metrics. A run that fails
    more than sc.max_failures times raises SynthError with the cause."""
    import ray.train
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=sc.num_workers, use_gpu=sc.use_gpu,
            resources_per_worker={"CPU": sc.cpus_per_worker, **({"GPU": sc.gpus_per_worker} if sc.use_gpu else {}),
                                  **getattr(sc, "resources_per_worker", {})}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=sc.max_failures),
            worker_runtime_env=WORKER_RUNTIME_ENV),
        **({"datasets": datasets, "dataset_config": dataset_config} if datasets is not None else {}),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as e:
        raise SynthError(f"{what} failed after {sc.max_failures} restarts: {_root_message(e)}") from None
    if result.checkpoint is None:
        raise SynthError(f"{what} finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        engine = load_engine(d)
    return engine, dict(result.metrics or {})


# -- the Ray half of the fit driver (synth.train.fit) ---------------------------------------
def train_on_ray(cfg: RunConfig) -> tuple[Prepared, Any, dict, list[dict], dict]:
    """Ray Data ingest (split, codec statistics, encoding) and the family's trainer on
    cfg.scaling.num_workers Ray Train workers. Returns (prepared data, the trained engine, final
    metrics, metric history, manifest fields with "prepare_s"). Per-step metrics go to the job logs
    and the checkpoint manifests."""
    import ray
    import ray.train

    t0 = time.perf_counter()
    sc = cfg.scaling
    storage_path = sc.storage_path or storage.join(cfg.output, "ray")
    storage.check_writable(storage_path)
    prepare_cluster(sc, cfg.train)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False

    ds = read_reference(cfg.data.uri)
    schema = ds.schema().base_schema if hasattr(ds.schema(), "base_schema") else ds.schema()
    split = cfg.data.split.model_dump()
    parts = [ds.map_batches(_split_filter, fn_kwargs={"split": split, "part": k}, batch_format="pyarrow",
                            num_cpus=0.5) for k in range(3)]
    plan, constraints, codec_cfg, model_schema = None, None, cfg.data.codec, schema
    if cfg.constraints:  # train and val rows become the model table (docs/constraints.md); test rows stay
        constraints = fit_constraints(parts[0], schema, cfg)
        parts[:2] = [p.map_batches(_constrain, fn_kwargs={"state": constraints.to_dict(), "drop": k == 0},
                                   batch_format="pyarrow", num_cpus=0.5) for k, p in enumerate(parts[:2])]
        codec_cfg = codec_cfg.model_copy(update={"overrides": {**codec_cfg.overrides, **constraints.model_kinds()}})
        model_schema = constraints.forward(schema.empty_table()).schema
    if cfg.privacy.enabled:
        codec, plan, train_rows = _private_codec(parts[0], schema, cfg, storage_path)
    else:
        stats = distributed_stats(parts[0], model_schema)
        codec = TableCodec.from_stats(stats, codec_cfg)
        train_rows = int(stats.num_rows)
    if cfg.data.target is not None and cfg.data.target not in codec.by_name and not (
            constraints is not None and cfg.data.target in constraints.owner):
        raise ConfigError(f"data.target names column {cfg.data.target!r}, which is not modelled")
    enc = lambda d, seed: d.map_batches(_encode, fn_kwargs={"codec_state": codec.to_dict(), "seed": seed},  # noqa: E731
                                        batch_format="pyarrow", num_cpus=0.5)
    train_ds, val_ds = enc(parts[0], cfg.train.seed), enc(parts[1], None)
    _check_resume_compatible(storage_path, cfg, codec)
    held_out = None  # a few thousand test rows for the fit check (synth.evaluate.fit_check), never all of them
    if cfg.evaluate.check != "off" and not cfg.privacy.enabled:
        refs = parts[2].limit(4000).to_arrow_refs()
        held_out = pa.concat_tables([t for t in ray.get(refs) if t.num_rows]) if refs else None
    cfg = cfg.model_copy(update={"train": resolve_eval_every(cfg.train, train_rows)})
    prep = Prepared(codec, None, None, held_out, input_digest(cfg.data.uri),
                    {"method": "row-content hash", **split, "rows": {"train": train_rows}}, plan, constraints)
    prepare_s = time.perf_counter() - t0
    engine, metrics = run_trainer(
        train_loop_per_worker,
        {"run": cfg.model_dump(mode="json"), "codec": codec.to_dict(), "data_mode": sc.data_mode,
         "privacy": plan and plan.to_dict()},
        sc, name=cfg.name, storage_path=storage_path, what="training",
        datasets={"train": train_ds, "val": val_ds},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"] if sc.data_mode == "stream" else []))
    extra = {"prepare_s": prepare_s, "ray": {"storage_path": storage_path, "run": cfg.name, "data_mode": sc.data_mode,
                                             "resumed_from": engine.manifest.get("resumed_from", [])}}
    return prep, engine, metrics, engine.manifest.get("history", []), extra


def _partial_counts(batch: pa.Table, privacy: dict, fields: list[str]) -> pa.Table:
    from synth.privacy.config import PrivacyConfig
    from synth.privacy.preprocess import exact_counts

    counts = exact_counts(batch, PrivacyConfig.model_validate(privacy), fields)
    return pa.table({"counts": [json.dumps({k: v.tolist() for k, v in counts.items()})]})


def _private_codec(train_ds, schema: pa.Schema, cfg: RunConfig, storage_path: str):
    """(codec, privacy plan, training rows) of a private run, planned before any training.

    The codec comes from the declared schema; in dp preprocessing mode exact cell counts are
    summed over blocks (map_batches) and noised once here. A rerun that resumes from checkpoints
    reuses their codec, so the preprocessing budget is not spent twice, and must keep the plan."""
    from synth.privacy import plan_privacy
    from synth.privacy.preprocess import merge_counts, modelled_fields, private_codec

    pcfg, sc = cfg.privacy, cfg.scaling
    rows = train_ds.count()
    plan = plan_privacy(pcfg, cfg.train, rows)
    if plan.expected_batch_size / sc.num_workers < 32:
        raise ConfigError(f"each of the {sc.num_workers} workers would draw about "
                          f"{plan.expected_batch_size / sc.num_workers:.0f} rows per step; raise train.batch_size "
                          "or use fewer workers (Poisson batches that small can come out empty and stall DDP)")
    previous = _latest_checkpoint(storage_path, cfg.name)
    if previous is not None:
        manifest, codec_json = previous["manifest"], previous["codec"]
        before = manifest.get("privacy_plan")
        if before is None or PrivacyPlan.from_dict(before) != plan:
            raise ConfigError(f"run {cfg.name!r} under {storage_path} has checkpoints made with other privacy "
                              "settings; a private run resumes only with the same privacy block, steps, batch size "
                              "and data. Use a new `name` or another scaling.storage_path")
        return TableCodec.from_dict(codec_json), plan, rows
    fields = modelled_fields(schema, cfg.data.codec, pcfg)
    counts = None
    if pcfg.preprocessing == "dp":
        partials = train_ds.map_batches(_partial_counts, fn_kwargs={"privacy": pcfg.model_dump(mode="json"),
                                                                    "fields": fields},
                                        batch_format="pyarrow", batch_size=65_536, num_cpus=0.5)
        counts = merge_counts(({k: np.asarray(v) for k, v in json.loads(r["counts"]).items()}
                               for r in partials.iter_rows()), pcfg, fields)
    return private_codec(schema, cfg.data.codec, pcfg, plan, counts), plan, rows


def _latest_checkpoint(storage_path: str, name: str) -> dict | None:
    """The newest readable checkpoint of run `name`: its "path" and its "manifest", "engine" and
    "codec" JSON, or None when the run has none. A newer checkpoint cut short (a crash while it was
    written) is skipped for an older one; when none can be read the run is refused: starting over
    would silently spend a private run's preprocessing budget a second time."""
    import pyarrow.fs as pafs

    from synth.io.artifact import CODEC, ENGINE, MANIFEST

    fs, path = storage.resolve(storage.join(storage_path, name))
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return None
    ckpts = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(path))
                   if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_"))
    problems = []
    for ckpt in reversed(ckpts):
        out = {"path": ckpt}
        try:
            for key, file in (("manifest", MANIFEST), ("engine", ENGINE), ("codec", CODEC)):
                with fs.open_input_stream(f"{ckpt}/{file}") as f:
                    out[key] = json.loads(f.read())
            return out
        except (OSError, json.JSONDecodeError) as e:
            problems.append(f"{ckpt}: {type(e).__name__}")
    if problems:
        raise ConfigError(f"run {name!r} under {storage_path} has checkpoints but none can be read ({'; '.join(problems)}"
                          "); restore them, or use a new `name` or another scaling.storage_path to start over (a "
                          "private run then spends its preprocessing budget again: count both in the total epsilon)")
    return None


def _root_message(e: BaseException) -> str:
    seen = e
    while seen.__cause__ is not None:
        seen = seen.__cause__
    text = str(seen).strip().splitlines()
    return text[-1] if text else repr(seen)


def _check_resume_compatible(storage_path: str, cfg: RunConfig, codec: TableCodec) -> None:
    """A rerun with the same name resumes; refuse when the stored checkpoints are of another model."""
    latest = _latest_checkpoint(storage_path, cfg.name)
    if latest is None:
        return
    if latest["engine"].get("config") != type(cfg.model).model_validate(cfg.model.model_dump()).model_dump(mode="json") \
            or latest["codec"] != codec.to_dict():
        raise ConfigError(f"run {cfg.name!r} under {storage_path} already has checkpoints of a different model or "
                          f"data ({latest['path']}); resuming from them is impossible. Use a new `name`, another "
                          "scaling.storage_path, or delete that folder")
