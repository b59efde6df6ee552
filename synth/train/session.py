"""What a family's trainer runs against, in this process or on a Ray Train worker.

A trainer is `trainer(engine, cfg, data, session) -> Outcome`: it trains `engine` on `data`
(`TrainingData`: the encoded rows, this worker's rank and the privacy plan) and reports through
`session`: `session.report(metrics, save)` every evaluation (`save(directory)` writes a checkpoint
when the session keeps them: Ray Train's rank 0) and `session.restore(load)` the checkpoint a
restarted run resumes from. The fit driver (`synth.train.fit`) picks the session; the trainer is
the same code for both.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")
Save = Callable[[str], None]


@dataclass
class Outcome:
    """What a trainer hands back: the final metrics and the metric history of the run."""
    metrics: dict
    history: list[dict] = field(default_factory=list)


def shuffled_batches(x: Tensor, batch_size: int, seed: int) -> Iterator[Tensor]:
    """Endless epochs over an in-memory tensor, reshuffled each epoch with a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    batch_size = min(batch_size, n)
    while True:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - batch_size + 1, batch_size):
            yield x[perm[i:i + batch_size]]


@dataclass
class TrainingData:
    """The encoded rows a trainer sees. `x_train` holds every training row (in-process, and Ray's
    memory mode); `stream(per_worker_batch, seed)` streams this worker's own shard instead."""
    x_val: Tensor | None
    x_train: Tensor | None = None
    stream: Callable[[int, int], Iterator[Tensor]] | None = None
    rank: int = 0
    world: int = 1
    privacy: Any = None  # a synth.privacy.PrivacyPlan for private runs

    def batches(self, batch_size: int, seed: int) -> Iterator[Tensor]:
        """This worker's share of every seeded global batch (the same global batches for any
        worker count), or its own streamed shard."""
        if self.x_train is None:
            return self.stream(batch_size // self.world, seed)
        return (xb[self.rank::self.world] for xb in shuffled_batches(self.x_train, batch_size, seed))


class Session(Protocol):
    def report(self, metrics: dict, save: Save | None = None) -> None: ...

    def restore(self, load: Callable[[str], T]) -> T | None: ...


class LocalSession:
    """Training in this process: metrics go to the caller's `report(metrics, None)` (a progress
    bar); no checkpoints are kept, so nothing is restored."""

    def __init__(self, report: Callable | None = None):
        self.callback = report

    def report(self, metrics: dict, save: Save | None = None) -> None:
        if self.callback and not metrics.get("final"):
            self.callback(metrics, None)

    def restore(self, load: Callable[[str], T]) -> T | None:
        return None


class RaySession:
    """Training on a Ray Train worker: every report is `ray.train.report` (a barrier: every worker
    calls it), rank 0 attaching the checkpoint that `save(directory)` writes."""

    def report(self, metrics: dict, save: Save | None = None) -> None:
        import ray.train

        if save is not None and ray.train.get_context().get_world_rank() == 0:
            with tempfile.TemporaryDirectory() as d:
                save(d)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics, checkpoint=None)

    def restore(self, load: Callable[[str], T]) -> T | None:
        """`load(directory)` of the checkpoint this (restarted or resumed) run starts from, if any."""
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            return load(d)
