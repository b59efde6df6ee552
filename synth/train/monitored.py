"""A trainer that adds a family's own monitoring to every evaluation report.

`train_monitored(measure)` is `train_denoising` (the loop, EMA, early stopping on the validation
loss, checkpoints, Ray Train) whose every report also carries `engine.monitor(x_val, seed)`: the
flow's invertibility error and bpd, the VAE's ELBO, reconstruction and posterior-collapse rate.
They are computed on the weights the report checkpoints (the EMA; after early stopping, the best),
so the last report, the run's metrics and the manifest hold the measures of the published model,
in this process and on Ray Train alike.
"""
from __future__ import annotations

from typing import Callable, TypeVar

from synth.train.config import TrainConfig
from synth.train.loop import train_denoising
from synth.train.session import Outcome, Save, Session, TrainingData

T = TypeVar("T")


class MonitoredSession:
    def __init__(self, inner: Session, measure: Callable[[], dict]):
        self.inner, self.measure = inner, measure

    def report(self, metrics: dict, save: Save | None = None) -> None:
        metrics.update(self.measure())  # in place: the loop's history and final metrics hold them too
        self.inner.report(metrics, save)

    def restore(self, load: Callable[[str], T]) -> T | None:
        return self.inner.restore(load)


def waiting_out_warmup(engine, train: TrainConfig) -> TrainConfig:
    """train.patience plus the evaluations inside the generator's warm-up (`warmup_batches()`,
    counted in micro-batches; none for a generator without one or a run without early stopping)."""
    warmup = getattr(engine, "warmup_batches", None)
    if warmup is None or not train.patience or not warmup():
        return train
    held = -(-warmup() // (train.grad_accum * train.eval_every))  # evaluations inside the warm-up, rounded up
    return train.model_copy(update={"patience": train.patience + held})


def train_monitored(engine, cfg, data: TrainingData, session: Session) -> Outcome:
    """The trainer of families whose generator has `monitor(x_val, seed) -> dict`. A generator with
    `warmup_batches()` (the VAE's KL annealing, during which ELBO_val first gets worse as the latent
    comes into use) gets train.patience plus the evaluations inside its warm-up, so early stopping
    always waits `patience` evaluations after the objective is the final one."""
    cfg = cfg.model_copy(update={"train": waiting_out_warmup(engine, cfg.train)})

    def measure() -> dict:
        return engine.monitor(data.x_val, cfg.train.seed) if data.x_val is not None and len(data.x_val) else {}
    return train_denoising(engine, cfg, data, MonitoredSession(session, measure))
