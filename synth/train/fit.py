"""Fit a model from a run config: data -> codec -> encode -> train -> artifact.

`fit(cfg)` trains in this process when `cfg.scaling.num_workers == 0` and on Ray Train
otherwise; both run the same loop (`synth.train.loop.train`) and write the same artifact.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import torch

from synth import storage
from synth.config import RunConfig
from synth.data import fingerprint, load_splits
from synth.engine import REGISTRY, save_engine
from synth.manifest import base_manifest
from synth.privacy import PrivacyPlan, plan_privacy
from synth.table import TableCodec
from synth.train import loop


@dataclass
class Prepared:
    codec: TableCodec
    train: pa.Table
    val: pa.Table
    test: pa.Table
    fingerprint: dict
    split: dict
    privacy: PrivacyPlan | None = None


def prepare(cfg: RunConfig) -> Prepared:
    """Read and split the reference data, fit the codec on the training rows only. A private run
    plans its budget first (refusing what would exceed it) and builds the codec from the declared
    schema, plus noised histograms when preprocessing is dp: never from TableStats."""
    train, val, test = load_splits(cfg.data.uri, cfg.data.split)
    plan = None
    if cfg.privacy.enabled:
        from synth.privacy import preprocess

        plan = plan_privacy(cfg.privacy, cfg.train, train.num_rows)
        fields = preprocess.modelled_fields(train.schema, cfg.data.codec, cfg.privacy)
        counts = preprocess.exact_counts(train, cfg.privacy, fields) if cfg.privacy.preprocessing == "dp" else None
        codec = preprocess.private_codec(train.schema, cfg.data.codec, cfg.privacy, plan, counts)
    else:
        codec = TableCodec.fit([train], cfg.data.codec, schema=train.schema)
    if cfg.data.target is not None and cfg.data.target not in codec.by_name:
        from synth.errors import ConfigError

        raise ConfigError(f"data.target names column {cfg.data.target!r}, which is not modelled; "
                          f"columns are {list(codec.by_name)}")
    split = {"method": "row-content hash", **cfg.data.split.model_dump(),
             "rows": {"train": train.num_rows, "val": val.num_rows, "test": test.num_rows}}
    return Prepared(codec, train, val, test, fingerprint(cfg.data.uri), split, plan)


def encode_tensor(codec: TableCodec, table: pa.Table, seed: int | None, strict: bool = True) -> torch.Tensor:
    rng = np.random.default_rng(seed) if seed is not None else None
    return torch.from_numpy(codec.encode(table, rng, strict).astype(np.float32))


@dataclass
class FitResult:
    artifact_uri: str
    artifact_id: str
    metrics: dict
    prepared: Prepared


def fit(cfg: RunConfig, report: Callable | None = None) -> FitResult:
    """Train per `cfg`; in this process when scaling.num_workers is 0, else on Ray Train."""
    if cfg.scaling.num_workers > 0:
        from synth.train.ray_train import fit_on_ray

        return fit_on_ray(cfg, report)
    if cfg.model.family == "gan":  # the GAN's two-optimizer loop lives with its engine
        from synth.engine.gan import fit_gan

        return fit_gan(cfg, report)
    t0 = time.perf_counter()
    storage.check_writable(cfg.output)
    prep = prepare(cfg)
    t_prep = time.perf_counter() - t0
    torch.manual_seed(cfg.train.seed)
    engine = REGISTRY[cfg.model.family](cfg.model, prep.codec)  # diffusion or array
    x_train = encode_tensor(prep.codec, prep.train, seed=cfg.train.seed)
    x_val = encode_tensor(prep.codec, prep.val, seed=None, strict=False)
    t1 = time.perf_counter()
    history: list[dict] = []

    def on_report(m: dict, opt) -> None:
        history.append(m)
        if report:
            report(m, opt)

    if prep.privacy is not None:
        from synth.privacy.training import DPTraining

        dp = DPTraining(prep.privacy, x_train, cfg.train.batch_size)
        metrics = loop.train(engine, None, cfg.train, x_val=x_val, report=on_report, private=dp)
        privacy = prep.privacy.manifest(dp.steps_accounted(), accountant_epsilon=dp.epsilon())
    else:
        metrics = loop.train(engine, loop.shuffled_batches(x_train, cfg.train.batch_size, cfg.train.seed),
                             cfg.train, x_val=x_val, report=on_report)
        privacy = None
    t_train = time.perf_counter() - t1
    manifest = model_manifest(cfg, prep, metrics, {"prepare_s": t_prep, "train_s": t_train,
                                                   "total_s": time.perf_counter() - t0}, workers=0,
                              privacy=privacy)
    manifest["history"] = public_history(history, privacy)
    artifact_id = save_engine(engine, cfg.artifact_uri, manifest)
    return FitResult(cfg.artifact_uri, artifact_id, metrics, prep)


# what a private run's manifest leaves out: statistics of private rows that no mechanism noised
PRIVATE_METRICS = ("loss", "val_loss", "grad_norm")


def public_history(history: list[dict], privacy: dict | None) -> list[dict]:
    if privacy is None:
        return history
    return [{k: v for k, v in h.items() if k not in PRIVATE_METRICS} for h in history]


def model_manifest(cfg: RunConfig, prep: Prepared, metrics: dict, wall: dict, workers: int,
                   privacy: dict | None = None) -> dict:
    """The model manifest. With `privacy` (a PrivacyPlan.manifest block) the losses measured on
    private rows and the content hash of the data are withheld: they are not differentially private."""
    m = cfg.model
    fp = dict(prep.fingerprint)
    if privacy is not None:
        metrics = {k: v for k, v in metrics.items() if k not in PRIVATE_METRICS}
        fp.update(sha256="withheld (private run: a hash of the data is not differentially private)", bytes=None)
    return base_manifest(
        "model",
        run=cfg.name,
        input=fp,
        split=prep.split,
        columns=prep.codec.kinds(),
        seeds={"train": cfg.train.seed, "split": cfg.data.split.seed},
        **({"process": m.process.model_dump(mode="json"), "objective": m.objective.model_dump(mode="json"),
            "sampling": {"sampler": m.sampler, "steps": m.steps, "guidance": m.guidance}}
           if m.family != "gan" else {"sampling": {"sampler": m.sampler, "steps": 1, "guidance": 1.0, "one_pass": True}}),
        train=cfg.train.model_dump(mode="json"),
        workers=workers,
        metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))},
        wall_s=wall,
        privacy=privacy or {"dp": False},
    )
