"""Latency bookkeeping: the SLO tracker behind GET /v1/slo and the latency model that picks
sampler steps when a request gives none.

Latency model. One network evaluation of a model batch costs about `a + b * net_rows` seconds
(a: per-call overhead, b: per row), so a batch costs `nfe * (a + b * net_rows)`. `a` and `b` are
measured at replica start-up (`calibrate`). Online, every model batch updates an EWMA per
(sampler, steps) of measured / predicted time (`factor`, which absorbs sampler overhead and CPU
contention) and of measured seconds per row x NFE (reported only). The predicted in-replica
latency of a new request is batch wait + queued model time (backlog) + its own batch's time; the
endpoint picks the largest candidate step count whose prediction fits `headroom * SLO`.
"""
from __future__ import annotations

import math
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from synth.diffusion.samplers import SAMPLERS


@dataclass
class _Entry:
    factor: float = 1.0
    sec_per_row_step: float | None = None
    batches: int = 0


class LatencyModel:
    def __init__(self, per_call_s: float = 5e-4, per_row_s: float = 2e-5, alpha: float = 0.2,
                 max_cost: int = 32768, evals: Callable[[str, int], int] | None = None):
        """`evals(sampler, steps)`: network evaluations of one model batch (the engine's cost;
        default the sampler's own count)."""
        self.evals = evals or (lambda sampler, steps: SAMPLERS[sampler].nfe(steps))
        self.a = per_call_s
        self.b = per_row_s
        self.alpha = alpha
        self.max_cost = max_cost
        self.entries: dict[tuple[str, int], _Entry] = {}
        self._lock = threading.Lock()

    def base(self, sampler: str, steps: int, net_rows: int) -> float:
        n = self.evals(sampler, steps)
        calls = max(1, math.ceil(net_rows * n / self.max_cost))  # batches the cost cap splits it into
        return n * (calls * self.a + self.b * net_rows)

    def predict(self, sampler: str, steps: int, net_rows: int) -> float:
        e = self.entries.get((sampler, steps))
        return (e.factor if e else self._prior_factor(sampler)) * self.base(sampler, steps, net_rows)

    def _prior_factor(self, sampler: str) -> float:
        """Factor for a (sampler, steps) never seen: the median over this sampler's, else all, else 1."""
        same = [e.factor for (s, _), e in self.entries.items() if s == sampler and e.batches]
        pool = same or [e.factor for e in self.entries.values() if e.batches]
        return statistics.median(pool) if pool else 1.0

    def observe(self, sampler: str, steps: int, net_rows: int, seconds: float) -> None:
        ratio = min(max(seconds / max(self.base(sampler, steps, net_rows), 1e-9), 0.05), 50.0)
        per = seconds / max(1, net_rows * self.evals(sampler, steps))
        with self._lock:
            e = self.entries.get((sampler, steps))
            if e is None:
                e = self.entries[(sampler, steps)] = _Entry(factor=ratio, sec_per_row_step=per)
            else:
                e.factor += self.alpha * (ratio - e.factor)
                e.sec_per_row_step = per if e.sec_per_row_step is None else \
                    e.sec_per_row_step + self.alpha * (per - e.sec_per_row_step)
            e.batches += 1

    def choose_steps(self, sampler: str, net_rows: int, candidates: list[int], budget_s: float,
                     wait_s: float, backlog_s: float) -> int:
        """Largest candidate whose predicted latency fits the budget; the smallest if none does."""
        ok = [s for s in sorted(candidates) if wait_s + backlog_s + self.predict(sampler, s, net_rows) <= budget_s]
        return ok[-1] if ok else min(candidates)

    def report(self) -> list[dict]:
        with self._lock:
            return [{"sampler": s, "steps": k, "factor": round(e.factor, 4),
                     "seconds_per_row_step": e.sec_per_row_step, "batches": e.batches}
                    for (s, k), e in sorted(self.entries.items())]


def calibrate(engine, sampler: str, steps: int = 8, rows: int = 128, repeats: int = 5) -> tuple[float, float]:
    """(per-call seconds, per-row seconds) of one network evaluation, measured on this replica.

    Takes the fastest of `repeats` runs (robust to other work on the machine; the online EWMA
    factor then absorbs sustained contention)."""
    def timed(n: int) -> float:
        cond = engine.null_conditions(n)
        x = engine.prior(n, torch.Generator().manual_seed(0))
        t0 = time.perf_counter()
        engine.sample_features(x, cond, sampler=sampler, steps=steps, guidance=1.0, generator=torch.Generator())
        return time.perf_counter() - t0

    timed(1), timed(rows)  # warm-up (allocations, lazy init)
    n = engine.cost(sampler, steps, 1.0, conditioned=False)
    t1 = min(timed(1) for _ in range(repeats)) / n
    tr = min(timed(rows) for _ in range(repeats)) / n
    per_row = max((tr - t1) / (rows - 1), 1e-7)
    return max(t1 - per_row, 1e-6), per_row


class SLOTracker:
    """Recent end-to-end latencies of successful sampling requests on this replica."""

    def __init__(self, target_ms: float, window_s: float = 300.0, max_samples: int = 10_000):
        self.target_ms = target_ms
        self.window_s = window_s
        self.samples: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self.violations_total = 0
        self.rejected_total = 0
        self.requests_total = 0  # answered

    def record(self, latency_ms: float, now: float | None = None) -> bool:
        """Record one request; True when it violated the target."""
        self.samples.append((time.monotonic() if now is None else now, latency_ms))
        self.requests_total += 1
        violated = latency_ms > self.target_ms
        self.violations_total += violated
        return violated

    def window(self, now: float | None = None, window_s: float | None = None) -> np.ndarray:
        now = time.monotonic() if now is None else now
        span = self.window_s if window_s is None else window_s
        return np.array([ms for t, ms in self.samples if now - t <= span], dtype=float)

    def report(self, now: float | None = None, window_s: float | None = None) -> dict:
        lat = self.window(now, window_s)
        if lat.size:
            p50, p95, p99 = (float(v) for v in np.percentile(lat, [50, 95, 99]))
            violations = int((lat > self.target_ms).sum())
            adherence = 1.0 - violations / lat.size
        else:
            p50 = p95 = p99 = adherence = None
            violations = 0
        return {"target_p99_ms": self.target_ms, "window_s": self.window_s if window_s is None else window_s,
                "requests": int(lat.size),
                "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "violations": violations,
                "violations_total": self.violations_total, "adherence": adherence,
                "meets_target": None if p99 is None else p99 <= self.target_ms,
                "rejected_total": self.rejected_total}
