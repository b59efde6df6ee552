"""Dynamic batching of sampling requests: group compatible jobs, cap each model batch by cost,
run the sampler once per batch, split the rows back.

Determinism: every job draws its prior and decodes its rows keyed by its seed and row index
(synth.engine.rowstreams, exactly like `engine.sample`), so a seeded job gets the same rows alone or
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

from synth.diffusion.samplers import SAMPLERS
from synth.engine.rowstreams import step_generator


@dataclass
class Job:
    """One validated request, ready for the model (made by `make_job`)."""

    rows: int
    cond: Tensor  # (rows, k) condition slots, plus numeric u-intervals (engine.encode_conditions)
    requested: dict[str, list]  # conditioned columns -> value per row (met exactly on decode)
    sampler: str
    steps: int
    guidance: float
    seed: int
    seeded: bool  # the caller gave the seed
    nfe: int  # network evaluations per row of this request (the engine's `cost`)
    row_cost: int  # rows x network evaluations one of its rows may cost in a shared model batch
    net_factor: int  # network rows per sample row in a model batch (2 with classifier-free guidance)
    fmt: str = "json"
    enforced: dict[str, str] = field(default_factory=dict)  # how each condition is met (engine.enforcement)
    batch_requests: int = 1  # requests in the @serve.batch call that ran this job
    # lifecycle (synth.serving.scheduler, synth.serving.http): the caller went away; a model thread
    # holds the job; the replica's admission counters no longer count it
    cancelled: bool = False
    busy: bool = False
    released: bool = False
    error: BaseException | None = field(default=None, repr=False)  # what failed this job alone
    # filled while running
    generator: torch.Generator | None = field(default=None, repr=False)
    x: Tensor | None = field(default=None, repr=False)
    parts: list[Tensor] = field(default_factory=list, repr=False)

    @property
    def stochastic(self) -> bool:
        return SAMPLERS[self.sampler].stochastic

    @property
    def isolated(self) -> bool:
        """Runs in model batches of its own (seeded stochastic sampler)."""
        return self.seeded and self.stochastic

    def group_key(self) -> tuple:
        return (self.sampler, self.steps, float(self.guidance), id(self) if self.isolated else None)



def make_job(engine: Any, rows: int, cond: Tensor, requested: dict[str, list], sampler: str, steps: int,
             guidance: float, seed: int, seeded: bool, fmt: str = "json") -> Job:
    """A job whose costs come from the engine: NFE of the request itself (guidance doubles it only
    for conditioned rows), and the network rows per row of a model batch it may share."""
    guided = engine.cost(sampler, steps, guidance, conditioned=True)
    plain = engine.cost(sampler, steps, 1.0, conditioned=True)
    return Job(rows, cond, requested, sampler, steps, guidance, seed, seeded,
               nfe=engine.cost(sampler, steps, guidance, conditioned=bool(requested)), row_cost=guided,
               net_factor=guided // plain, fmt=fmt)


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
    net_factor: int
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


def batch_of(job: Job, segments: list[Segment]) -> ModelBatch:
    return ModelBatch(job.sampler, job.steps, job.guidance, job.isolated, job.net_factor, segments)


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
        cap_rows = max(1, max_cost // first.row_cost)
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
                    batches.append(batch_of(first, current))
                    current, filled = [], 0
        if current:
            batches.append(batch_of(first, current))
    return batches


def prepare(engine: Any, job: Job) -> None:
    """Draw the job's prior as engine.sample does (synth.engine.rowstreams: keyed by the job's seed and row)."""
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
    elif SAMPLERS[batch.sampler].stochastic:
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
    return BatchStats(batch.sampler, batch.steps, batch.guidance, rows, rows * batch.net_factor,
                      time.perf_counter() - t0)


def finish(engine: Any, job: Job) -> pa.Table:
    """Decode the job's rows with its own seed; conditioned columns hold exactly the requested values."""
    feats = job.parts[0] if len(job.parts) == 1 else torch.cat(job.parts)
    job.x, job.parts, job.generator = None, [], None
    return engine.decode(feats, job.requested, job.seed)


def run_isolated(engine: Any, jobs: list[Job], batch: ModelBatch, stats: list[BatchStats]) -> None:
    """Run one model batch; when it fails, run each of its jobs alone, so an error fails only the
    job that causes it (recorded in `job.error`)."""
    try:
        stats.append(run_batch(engine, jobs, batch))
        return
    except Exception as e:  # noqa: BLE001 - becomes the failing job's 500
        owners = sorted({s.job for s in batch.segments})
        if len(owners) == 1:
            jobs[owners[0]].error = e
            return
    for j in owners:
        try:
            stats.append(run_batch(engine, jobs, ModelBatch(batch.sampler, batch.steps, batch.guidance,
                                                            batch.isolated, batch.net_factor,
                                                            [s for s in batch.segments if s.job == j])))
        except Exception as e:  # noqa: BLE001
            jobs[j].error = e


class Cancelled(Exception):
    """The job's caller went away; the model stopped working on it."""


def run_jobs(engine: Any, jobs: list[Job], max_cost: int) -> tuple[list[Any], list[BatchStats]]:
    """Everything for one @serve.batch call (what the endpoint's service runs): priors, model
    batches, decoding. Each job's entry is its table, or the exception that failed it alone. A job
    cancelled meanwhile stops at the next model batch."""
    stats: list[BatchStats] = []
    with torch.inference_mode():
        for job in jobs:
            job.batch_requests = len(jobs)
            try:
                prepare(engine, job)
            except Exception as e:  # noqa: BLE001
                job.error = e
        live = [job for job in jobs if job.error is None]
        for b in plan_batches(live, max_cost):
            if all(live[s.job].cancelled or live[s.job].error is not None for s in b.segments):
                continue
            run_isolated(engine, live, b, stats)
    out: list[Any] = []
    for job in jobs:
        if job.error is not None or job.cancelled:
            out.append(job.error or Cancelled("the caller went away"))
            job.x, job.parts, job.generator = None, [], None
            continue
        try:
            out.append(finish(engine, job))
        except Exception as e:  # noqa: BLE001 - reported as that request's 500
            out.append(e)
    return out, stats
