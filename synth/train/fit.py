"""The one fit driver: prepare (data -> codec -> encode) -> the family's trainer, in this process
or on Ray Train workers -> manifest -> artifact, for every family of `synth.families`.

`fit(cfg)` trains in this process when `cfg.scaling.num_workers == 0` and on Ray Train otherwise
(`synth.train.ray_train`: Ray Data ingest, the same trainer on every worker); both write the same
artifact. `fit_fingerprint` is the closed-form path of the fingerprint family (statistics only).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Literal

import torch

from synth.io import storage
from synth.config import RunConfig
from synth.engine.copula import CopulaEngine
from synth.evaluate.fit_check import held_out_check
from synth.families import FAMILIES, save_engine
from synth.table.fingerprint import read_fingerprint
from synth.io.manifest import base_manifest
from synth.train import ray_train
from synth.train.config import resolve_eval_every
from synth.train.prepare import Prepared, encode_tensor, prepare
from synth.train.session import LocalSession, TrainingData


@dataclass
class FitResult:
    artifact_uri: str
    artifact_id: str
    metrics: dict
    prepared: Prepared
    check: dict  # the held-out fit check (synth.evaluate.fit_check): did the model learn the table?


def fit(cfg: RunConfig, report: Callable | None = None) -> FitResult:
    """Train per `cfg`; in this process when scaling.num_workers is 0, else on Ray Train.
    `report(metrics, None)` gets every in-process evaluation (a progress bar)."""
    family = FAMILIES[cfg.model.family]
    t0 = time.perf_counter()
    storage.check_writable(cfg.output)
    workers = 0 if family.fit is not None else cfg.scaling.num_workers  # a closed-form fit runs here
    if family.fit is not None:
        prep = prepare(cfg)
        t1 = time.perf_counter()
        engine = family.build(cfg.model, prep.codec)
        metrics, history, extra = family.fit(engine, cfg, prep.train, prep.privacy), [], {}
    elif workers > 0:
        prep, engine, metrics, history, extra = ray_train.train_on_ray(cfg)
        t1 = t0 + extra.pop("prepare_s")
    else:
        prep = prepare(cfg)
        t1 = time.perf_counter()
        cfg = cfg.model_copy(update={"train": resolve_eval_every(cfg.train, prep.train.num_rows)})
        torch.manual_seed(cfg.train.seed)
        engine = family.build(cfg.model, prep.codec)
        data = TrainingData(x_val=encode_tensor(prep.codec, prep.val, seed=None, strict=False),
                            x_train=encode_tensor(prep.codec, prep.train, seed=cfg.train.seed),
                            privacy=prep.privacy)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        outcome = family.trainer(engine, cfg, data, LocalSession(report))
        metrics, history, extra = outcome.metrics, outcome.history, {}
    t_train = time.perf_counter() - t1
    engine.constraints = prep.constraints  # every sample path applies them (SamplingEngine.decode)
    privacy = None
    if prep.privacy is not None:  # the steps the accountant counted, re-derived and cross-checked
        privacy = prep.privacy.manifest(int(metrics["step"]), accountant_epsilon=metrics.get("epsilon"))
        if workers > 0:
            privacy["workers"] = workers
    manifest = model_manifest(cfg, prep, engine, metrics, {"prepare_s": t1 - t0, "train_s": t_train,
                                                           "total_s": time.perf_counter() - t0},
                              workers=workers, privacy=privacy)
    manifest.update(extra)
    manifest["history"] = public_history(history, privacy)
    if cfg.evaluate.check == "off":
        manifest["fit_check"] = {"verdict": "not checked", "reasons": ["evaluate.check is off"]}
    elif privacy is not None:  # held-out rows are private data too: a private run publishes no score of them
        manifest["fit_check"] = {"verdict": "not checked", "reasons": ["private run: held-out rows are private"]}
    else:
        manifest["fit_check"] = held_out_check(engine, prep.test, seed=cfg.evaluate.seed)
    manifest["fit_check"]["on_failure"] = cfg.evaluate.check
    artifact_id = save_engine(engine, cfg.artifact_uri, manifest)
    return FitResult(cfg.artifact_uri, artifact_id, metrics, prep, manifest["fit_check"])


# what a private run's manifest leaves out: statistics of private rows that no mechanism noised
PRIVATE_METRICS = ("loss", "val_loss", "grad_norm")


def public_history(history: list[dict], privacy: dict | None) -> list[dict]:
    if privacy is None:
        return history
    return [{k: v for k, v in h.items() if k not in PRIVATE_METRICS} for h in history]


def model_manifest(cfg: RunConfig, prep: Prepared, engine, metrics: dict, wall: dict, workers: int,
                   privacy: dict | None = None) -> dict:
    """The model manifest. With `privacy` (a PrivacyPlan.manifest block) the losses measured on
    private rows and the content hash of the data are withheld: they are not differentially private."""
    fp = dict(prep.input)
    if privacy is not None:
        metrics = {k: v for k, v in metrics.items() if k not in PRIVATE_METRICS}
        fp.update(sha256="withheld (private run: a hash of the data is not differentially private)", bytes=None)
    return base_manifest(
        "model",
        run=cfg.name,
        input=fp,
        split=prep.split,
        columns=engine.output_kinds(),
        seeds={"train": cfg.train.seed, "split": cfg.data.split.seed},
        **engine.describe(),
        train=cfg.train.model_dump(mode="json"),
        workers=workers,
        metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))},
        wall_s=wall,
        privacy=privacy or {"dp": False},
        **({"constraints": prep.constraints.describe()} if prep.constraints is not None else {}),
    )


def fit_fingerprint(fp_uri: str, output: str, on_invalid: Literal["repair", "refuse"] = "repair",
                    name: str | None = None) -> tuple[str, dict]:
    """Fit the copula engine (family "fingerprint") from the fingerprint file at `fp_uri` and write the model
    artifact to `output`. Returns (artifact id, correlation report)."""
    t0 = time.perf_counter()
    fp = read_fingerprint(fp_uri)  # bad input fails here, before anything is written
    raw = storage.read_bytes(fp_uri)
    engine, report = CopulaEngine.from_fingerprint(fp, on_invalid, repr(fp_uri))
    storage.check_writable(output)
    manifest = base_manifest(
        "model", run=name or "fingerprint",
        input={"kind": "fingerprint", "uri": fp_uri, "sha256": storage.sha256_bytes(raw), "bytes": len(raw),
               "rows": fp.rows, "source": fp.source},
        columns=engine.codec.kinds(), seeds={}, **engine.describe(),
        correlation=report, metrics={}, wall_s={"total_s": time.perf_counter() - t0},
        privacy={**fp.privacy, "raw_rows": False, "note": "fitted from a private fingerprint (post-processing)"}
        if fp.privacy else {"dp": False, "raw_rows": False, "note": "fitted from aggregate statistics only"})
    return save_engine(engine, output, manifest), report
