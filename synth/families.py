"""The generator families, each registered once: what `model.family` may name.

A `Family` is self-describing: its config class (one member of the run config's `model` union),
`build(config, codec)` (a fresh generator: the sampling protocol of `synth.engine.sampling` plus
`cost(sampler, steps, guidance, conditioned)`), `load(artifact)` (the same generator from a saved
artifact), and its trainer (`synth.train.session`: the same function in this process and on Ray
Train workers), or None for a family fitted in closed form: by `synth fit` in the driver (`fit`),
or outside it. A private family without its own `plan` trains with DP-SGD. Everything else
(the run config, config errors, `synth fit`, Ray Train, artifact loading, serving, manifests) reads
this registry; no family name is compared anywhere else.

A new family is one module (config, generator, trainer) and one line in `FAMILIES` below; it is
done when `tests/test_family_contract.py` passes for it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import BaseModel

from synth.io.artifact import CONSTRAINTS, Artifact, read_artifact, write_artifact
from synth.engine.array import ArrayConfig, ArrayEngine
from synth.engine.autoregressive import AutoregressiveConfig, AutoregressiveEngine
from synth.engine.base import Engine
from synth.engine.diffusion import DiffusionConfig, DiffusionEngine
from synth.engine.copula import CopulaConfig, CopulaEngine
from synth.engine.flow import FlowConfig, FlowEngine
from synth.engine.gan import GANConfig, GANEngine
from synth.engine.vae import VAEConfig, VAEEngine
from synth.engine import marginal
from synth.errors import ArtifactError, ConfigError
from synth.table.constraints import Constraints
from synth.train import gan as gan_training
from synth.train.loop import train_denoising
from synth.train.monitored import train_monitored


@dataclass(frozen=True)
class Family:
    name: str
    config: type[BaseModel]  # the model config; its `family` field is the Literal `name`
    build: Callable[[Any, Any], Engine]  # (config, codec) -> an untrained generator
    load: Callable[[Artifact], Engine]  # artifact -> the trained generator
    trainer: Callable | None  # (engine, run config, TrainingData, Session) -> Outcome; None: not fitted by `synth fit`
    streams: bool = True  # trains from a streamed shard (scaling.data_mode stream), not only all rows
    private: bool = False  # fits under privacy.enabled (DP-SGD unless `plan` gives its own mechanism)
    train_defaults: dict = field(default_factory=dict)  # train.* defaults of this family (the config may override)
    why_not_streamed: str = ""  # the user-facing reason when streams is False
    # (engine, run config, training rows, privacy plan or None) -> metrics: fitted in closed form in the
    # driver by `synth fit` (no trainer, no Ray Train; scaling.num_workers does not apply)
    fit: Callable | None = None
    plan: Callable | None = None  # (run config, training rows) -> its privacy plan; None: DP-SGD's


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("diffusion", DiffusionConfig, DiffusionEngine, DiffusionEngine.from_artifact, train_denoising,
           private=True),
    Family("gan", GANConfig, GANEngine, GANEngine.from_artifact, gan_training.train, streams=False,
           why_not_streamed="training-by-sampling draws rows by category from the whole training set, "
                            "which a streamed shard cannot give"),
    Family("array", ArrayConfig, ArrayEngine, ArrayEngine.from_artifact, train_denoising),
    # the same loop trains it (a net, its EMA, a per-row loss: here the exact negative log-likelihood),
    # stopped early on the validation likelihood: it overfits after about ten epochs, and an EMA
    # horizon longer than training would average in the undertrained start (flatter marginals)
    Family("autoregressive", AutoregressiveConfig, AutoregressiveEngine, AutoregressiveEngine.from_artifact,
           train_denoising, train_defaults={"steps": 5000, "eval_every": "epoch", "patience": 6, "ema_decay": 0.99,
                                            "warmup_steps": 50, "lr_schedule": "plateau"}),
    # a neural spline flow (zuko) on dequantised features: exact numeric likelihood, monitored invertibility;
    # fp32 (a spline's bin search and log-Jacobian are not bf16-safe)
    Family("flow", FlowConfig, FlowEngine, FlowEngine.from_artifact, train_monitored,
           train_defaults={"steps": 5000, "eval_every": "epoch", "patience": 6, "ema_decay": 0.99, "warmup_steps": 50,
                           "lr": 1e-3, "precision": "fp32"}),
    # a conditional VAE with per-kind likelihoods: beta-ELBO, KL annealing, free bits; stopped early on the
    # validation ELBO (the loop's val_loss is -ELBO_val) with its reconstruction and posterior collapse monitored
    Family("vae", VAEConfig, VAEEngine, VAEEngine.from_artifact, train_monitored,
           train_defaults={"steps": 8000, "eval_every": "epoch", "patience": 8, "ema_decay": 0.99, "warmup_steps": 50,
                           "lr": 1e-3, "precision": "fp32"}),
    Family("fingerprint", CopulaConfig, CopulaEngine, CopulaEngine.from_artifact, None),
    # measured marginals under zCDP + a graphical model (MST on Private-PGM): the private family for tables
    Family("marginal", marginal.MarginalConfig, marginal.build, marginal.MarginalEngine.from_artifact, None,
           private=True, fit=marginal.fit_marginal, plan=marginal.plan),
)}
DEFAULT = "autoregressive"  # model.family when the config names none: the best held-out C2ST (BENCHMARKS.md)
PRIVATE_DEFAULT = "marginal"  # ... of a private run (privacy.enabled): docs/privacy.md, bench/results/privacy.json


def trainable() -> list[Family]:
    """The families `synth fit` trains or fits (the run config's `model` union)."""
    return [f for f in FAMILIES.values() if f.trainer is not None or f.fit is not None]


def likelihood_families() -> list[str]:
    """Families whose generator scores rows (`log_prob(rows)`: `synth score`, the held-out likelihood)."""
    return sorted(f.name for f in FAMILIES.values() if callable(getattr(f.build, "log_prob", None)))


def require_likelihood(engine: Engine) -> None:
    """Refuse, naming the families that have one, a model without a likelihood."""
    if not callable(getattr(engine, "log_prob", None)):
        if getattr(engine, "no_likelihood", None):  # a model of a family with one that has none (e.g. a student)
            raise ConfigError(f"{engine.no_likelihood}; the families with one are {likelihood_families()}")
        raise ConfigError(f"a {engine.family!r} model has no likelihood to score rows with; the families with one "
                          f"are {likelihood_families()}: fit one of them (model.family) and score with it")


def load_engine(uri: str, *, require_signature: bool = False, public_key: str | None = None) -> Engine:
    art = read_artifact(uri, require_signature=require_signature, public_key=public_key)
    name = art.engine.get("family")
    if name not in FAMILIES:
        raise ArtifactError(f"artifact {uri!r} holds a {name!r} model, which this synth does not know; "
                            f"known families: {sorted(FAMILIES)}")
    engine = FAMILIES[name].load(art)
    if CONSTRAINTS in art.extra:
        engine.constraints = load_constraints(uri, art.extra[CONSTRAINTS])
    engine.manifest = art.manifest
    engine.uri = uri
    return engine


def save_engine(engine: Engine, uri: str, manifest: dict) -> str:
    """Write the engine as an artifact at `uri`; returns the artifact id."""
    extra = None if engine.constraints is None else {CONSTRAINTS: json.dumps(engine.constraints.to_dict()).encode()}
    art = write_artifact(uri, family=engine.family, config=engine.config_dict(), codec=engine.codec.to_dict(),
                         tensors=engine.sampling_state(), manifest=manifest, extra=extra)
    return art.artifact_id


def load_constraints(uri: str, data: bytes) -> Constraints:
    """The constraints stored in an artifact (hash-verified bytes)."""
    try:
        return Constraints.from_dict(json.loads(data))
    except (ValueError, KeyError, TypeError, ConfigError) as e:
        raise ArtifactError(f"{CONSTRAINTS} in artifact {uri!r} cannot be read by this synth "
                            f"({str(e).splitlines()[0][:200]}); retrain the model with this version") from None
