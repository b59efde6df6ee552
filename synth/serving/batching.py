"""Dynamic batching of sampling requests: group compatible jobs, cap each model batch by cost,
run the sampler once per batch, split the rows back.

Determinism: every job draws its prior and decodes its rows keyed by its seed and row index
(synth.rowstreams, exactly like `engine.sample`), so a seeded job gets the same rows alone or
merged with others (the network is row-wise, so only batch-size-dependent float rounding can
differ). The stochastic sampler (`ddpm`) also draws noise during sampling; seeded `ddpm` jobs
therefore run alone with their own step generator (like `engine.sample`), and only unseeded
`ddpm` jobs are merged, with a batch generator.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import torch
from torch import Tensor

from synth.diffusion.samplers import nfe as sampler_nfe
from synth.rowstreams import step_generator

STOCHASTIC_SAMPLERS = frozenset({"ddpm"})


def cfg_factor(guidance: float, sampler: str) -> int:
    """Network rows per sample row: guidance other than 0 or 1 evaluates both halves, except for a
    guidance-distilled student, which takes the weight as an input."""
    return 1 if guidance in (0.0, 1.0) or sampler == "distilled" else 2


@dataclass
class Job:
    """One validated request, ready for the model."""

    rows: int
    cond: Tensor  # (rows, k) condition indices
    requested: dict[str, list]  # conditioned columns -> value per row (met exactly on decode)
    sampler: str
    steps: int
    guidance: float
    seed: int
    seeded: bool  # the caller gave the seed
    fmt: str = "json"
    batch_requests: int = 1  # requests in the @serve.batch call that ran this job
    # filled while running
    generator: torch.Generator | None = field(default=None, repr=False)
    x: Tensor | None = field(default=None, repr=False)
    parts: list[Tensor] = field(default_factory=list, repr=False)

    @property
    def nfe(self) -> int:
        return sampler_nfe(self.sampler, self.steps)

    @property
    def isolated(self) -> bool:
        """Runs in model batches of its own (seeded stochastic sampler)."""
        return self.seeded and self.sampler in STOCHASTIC_SAMPLERS

    def group_key(self) -> tuple:
        return (self.sampler, self.steps, float(self.guidance), id(self) if self.isolated else None)

    def cost_per_row(self) -> int:
        return self.nfe * cfg_factor(self.guidance, self.sampler)


@dataclass
class Segment:
    job: int  # index into the job list
    start: int
    stop: int


@dataclass
class ModelBatch:
    sampler: str
    steps: int
    guidance: float
    isolated: bool
    segments: list[Segment]

    @property
    def rows(self) -> int:
        return sum(s.stop - s.start for s in self.segments)


@dataclass
class BatchStats:
    sampler: str
    steps: int
    guidance: float
    rows: int  # sample rows in the model batch
    net_rows: int  # rows through the network per evaluation (x2 with guidance)
    seconds: float


def plan_batches(jobs: list[Job], max_cost: int) -> list[ModelBatch]:
    """Model batches for `jobs`: same (sampler, steps, guidance) share a batch, each batch holds
    at most `max_cost` rows x network evaluations (at least one row), jobs keep arrival order and
    a job larger than the cap spans several batches."""
    groups: dict[tuple, list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(job.group_key(), []).append(i)
    batches: list[ModelBatch] = []
    for idx in groups.values():
        first = jobs[idx[0]]
        cap_rows = max(1, max_cost // first.cost_per_row())
        current: list[Segment] = []
        filled = 0
        for i in idx:
            start = 0
            while start < jobs[i].rows:
                take = min(jobs[i].rows - start, cap_rows - filled)
                current.append(Segment(i, start, start + take))
                filled += take
                start += take
                if filled == cap_rows:
                    batches.append(ModelBatch(first.sampler, first.steps, first.guidance, first.isolated, current))
                    current, filled = [], 0
        if current:
            batches.append(ModelBatch(first.sampler, first.steps, first.guidance, first.isolated, current))
    return batches


def prepare(engine: Any, job: Job) -> None:
    """Draw the job's prior as engine.sample does (synth.rowstreams: keyed by the job's seed and row)."""
    job.generator = step_generator(job.seed)  # a seeded ddpm job's step noise, like engine.sample
    job.x = engine.row_prior(job.seed, 0, job.rows)  # row i depends on (seed, i) only
    job.parts = []


def run_batch(engine: Any, jobs: list[Job], batch: ModelBatch) -> BatchStats:
    """Run one model batch and append each segment's features to its job."""
    t0 = time.perf_counter()
    x = torch.cat([jobs[s.job].x[s.start:s.stop] for s in batch.segments])
    cond = torch.cat([jobs[s.job].cond[s.start:s.stop] for s in batch.segments])
    if batch.isolated:
        gen = jobs[batch.segments[0].job].generator  # continues after the prior, like engine.sample
    elif batch.sampler in STOCHASTIC_SAMPLERS:
        gen = torch.Generator().manual_seed(secrets.randbits(63))
    else:
        gen = None  # deterministic samplers draw nothing
    feats = engine.sample_features(x, cond, sampler=batch.sampler, steps=batch.steps,
                                   guidance=batch.guidance, generator=gen)
    offset = 0
    for s in batch.segments:
        n = s.stop - s.start
        jobs[s.job].parts.append(feats[offset:offset + n])
        offset += n
    rows = batch.rows
    return BatchStats(batch.sampler, batch.steps, batch.guidance, rows, rows * cfg_factor(batch.guidance, batch.sampler),
                      time.perf_counter() - t0)


def finish(engine: Any, job: Job) -> pa.Table:
    """Decode the job's rows with its own seed; conditioned columns hold exactly the requested values."""
    feats = job.parts[0] if len(job.parts) == 1 else torch.cat(job.parts)
    job.x, job.parts, job.generator = None, [], None
    return engine.decode(feats, job.requested, job.seed)


def run_jobs(engine: Any, jobs: list[Job], max_cost: int) -> tuple[list[pa.Table], list[BatchStats]]:
    """Everything for one @serve.batch call: priors, model batches, decoding. Pure torch, no Ray."""
    for job in jobs:
        prepare(engine, job)
    stats = [run_batch(engine, jobs, b) for b in plan_batches(jobs, max_cost)]
    return [finish(engine, job) for job in jobs], stats
