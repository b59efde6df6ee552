"""The closed loop of the endpoint: measured latency -> steps and admission.

The latency model (synth.serving.slo) predicts a request's time from an idle-time calibration
and an EWMA of model-batch times; it never sees the time a request spends outside the model (the
event loop, HTTP, decoding) nor a queue that builds in the replica. Two controllers close the
loop on the replica's *measured* in-replica p99 instead:

- `StepController`: a cap on the steps the replica picks when a request gives none (one of
  `steps_candidates`). The choice is min(cap, what the prediction allows). A p99 over the target
  lowers the cap one level; a p99 under `calm_share` x target, held for `raise_after_s`, raises it
  one level. Each decision reads only the requests answered since the previous decision (a level is
  judged on its own latencies, so one violation is not counted twice; a decision waits for
  `min_samples` of them, at most `window_s`), and a raise that is undone
  soon after doubles the wait before the next raise (at most `max_backoff` x): bounded oscillation.
- `AdmissionLimiter`: the number of requests the replica admits at once. Under a p99 over the
  target it shrinks to x `decrease`, or at once to what Little's law says carries the measured
  answer rate at the target latency (answers per second x target seconds) when that is lower; while
  the limit was reached it grows, x `increase` under a calm p99 and by one request under a p99 within
  the target (a probe: the additive increase of AIMD); between `min_concurrency` and Serve's
  `max_ongoing_requests`. Requests past it are answered 429 at once (reason `slo`), so overload
  becomes refusals instead of a queue whose latency grows without bound.

Both controllers take `now` (time.monotonic seconds) so their logic is plain and testable; the
service feeds them the latencies it records.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class ControlArgs(BaseModel):
    """`control:` block of the serve args (synth.serving.ServeArgs)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="close the loop on the measured p99 (steps cap and admission limit)")
    replica_share: float = Field(
        0.5, gt=0, le=1, description="share of slo_p99_ms the replica's measured p99 may use; the rest is left to "
                                     "the ingress, the replica's HTTP server and event loop and the network, which "
                                     "the replica cannot measure (at 64 clients on 1-row requests the clients' p99 "
                                     "was 1.65x the replica's; docs/serving.md). Models whose own time is most of "
                                     "a request's may take 0.7-0.8 and keep more steps under load")
    interval_s: float = Field(1.0, gt=0, description="at most one decision per controller per interval")
    window_s: float = Field(10.0, gt=0, description="latencies older than this are not used for a decision")
    min_samples: int = Field(20, ge=1, description="requests needed since the last change before a decision")
    min_violations: int = Field(3, ge=1, description="with fewer than min_samples requests, this many over the "
                                                     "target already decide (slow replicas answer few requests)")
    calm_share: float = Field(0.6, gt=0, lt=1, description="raise only while the p99 is under this share of the "
                                                           "target (hysteresis band: calm_share..1 x target holds)")
    raise_after_s: float = Field(3.0, ge=0, description="calm time before one step level up")
    max_backoff: int = Field(8, ge=1, description="a raise undone within 2 x raise_after_s doubles the wait before "
                                                  "the next one, up to this factor")
    idle_raise_s: float = Field(30.0, gt=0, description="with no requests for this long the cap rises one level "
                                                        "(per idle_raise_s): an idle replica drifts back to full steps")
    shed: bool = Field(True, description="adaptive admission limit: answer 429 past it")
    min_concurrency: int = Field(4, ge=1, description="the admission limit never goes below this")
    decrease: float = Field(0.7, gt=0, lt=1, description="admission limit x this on a p99 over the target")
    increase: float = Field(1.25, gt=1, description="admission limit x this on a calm p99 while the limit was hit")


class LatencyWindow:
    """(time, ms) of recent answered requests; thread-safe appends, reads newest first."""

    def __init__(self, max_samples: int = 10_000):
        self.samples: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self._lock = threading.Lock()

    def add(self, now: float, ms: float) -> None:
        with self._lock:
            self.samples.append((now, ms))

    def first_time(self) -> float | None:
        with self._lock:
            return self.samples[0][0] if self.samples else None

    def since(self, t0: float) -> np.ndarray:
        out = []
        with self._lock:
            for t, ms in reversed(self.samples):
                if t < t0:
                    break
                out.append(ms)
        return np.asarray(out, dtype=float)

    def last_time(self) -> float | None:
        with self._lock:
            return self.samples[-1][0] if self.samples else None


def p99(values: np.ndarray) -> float:
    return float(np.percentile(values, 99)) if values.size else math.nan


def enough(lat: np.ndarray, target_ms: float, a: "ControlArgs") -> bool:
    """Whether `lat` supports a decision: `min_samples` requests, or (slow traffic) `min_violations`
    over the target, which is more than 1 % of anything under `min_samples`."""
    return lat.size >= a.min_samples or int((lat > target_ms).sum()) >= a.min_violations


def due(ctrl: "StepController | AdmissionLimiter", window: "LatencyWindow", now: float) -> np.ndarray | None:
    """The latencies a controller's next decision reads (answered since its previous decision,
    within the window), or None while its interval has not passed."""
    if now - ctrl.last_eval < ctrl.args.interval_s:
        return None
    ctrl.last_eval = now
    return window.since(max(ctrl.consumed, now - ctrl.args.window_s))


@dataclass
class Decision:
    at: float
    what: str  # "down", "up", "idle_up", "shrink", "grow", "probe"
    p99_ms: float | None
    value: float


@dataclass
class StepController:
    levels: list[int]  # sorted step candidates
    target_ms: float
    args: ControlArgs
    cap: int = -1  # index into levels; -1 -> the top
    since: float = 0.0  # when the current level started
    consumed: float = 0.0  # requests answered before this were read by an earlier decision
    last_eval: float = 0.0
    backoff: int = 1
    last_up: float | None = None
    calm_since: float | None = None
    changes: int = 0
    last: Decision | None = None
    last_p99_ms: float | None = None

    def __post_init__(self) -> None:
        self.levels = sorted(set(self.levels))
        if self.cap < 0:
            self.cap = len(self.levels) - 1

    @property
    def steps_cap(self) -> int:
        return self.levels[self.cap]

    def _set(self, now: float, cap: int, what: str, p: float | None) -> None:
        self.cap = cap
        self.since = now
        self.calm_since = None
        self.changes += 1
        self.last = Decision(now, what, p, self.steps_cap)

    def update(self, window: LatencyWindow, now: float) -> Decision | None:
        """One decision at most per interval; returns it when the cap changed."""
        a = self.args
        lat = due(self, window, now)
        if lat is None:
            return None
        if not enough(lat, self.target_ms, a):
            last = window.last_time()
            idle = last is None or now - last >= a.idle_raise_s
            if idle and lat.size == 0 and self.cap < len(self.levels) - 1 and now - self.since >= a.idle_raise_s:
                self._set(now, self.cap + 1, "idle_up", None)
                return self.last
            return None
        p = p99(lat)
        self.last_p99_ms = p
        self.consumed = now  # each decision reads the requests answered since the previous one
        if p > self.target_ms:
            self.calm_since = None
            if self.last_up is not None and now - self.last_up < 2 * a.raise_after_s * self.backoff:
                self.backoff = min(2 * self.backoff, a.max_backoff)  # the last raise was too much
            self.last_up = None
            if self.cap > 0:
                self._set(now, self.cap - 1, "down", p)
                return self.last
            return None
        if p < a.calm_share * self.target_ms:
            self.calm_since = self.calm_since if self.calm_since is not None else now
            if self.cap < len(self.levels) - 1 and now - self.calm_since >= a.raise_after_s * self.backoff:
                self.last_up = now
                self._set(now, self.cap + 1, "up", p)
                return self.last
        else:
            self.calm_since = None
        if self.last_up is not None and now - self.last_up > 10 * a.raise_after_s * self.backoff:
            self.backoff, self.last_up = max(1, self.backoff // 2), None  # stable for long: forgive
        return None

    def state(self, now: float) -> dict:
        return {"steps_levels": self.levels, "steps_cap": self.steps_cap, "level": self.cap,
                "raise_wait_s": self.args.raise_after_s * self.backoff, "backoff": self.backoff,
                "changes": self.changes, "level_age_s": round(now - self.since, 3),
                "last_decision": None if self.last is None else
                {"what": self.last.what, "ago_s": round(now - self.last.at, 3), "p99_ms": self.last.p99_ms,
                 "steps_cap": int(self.last.value)}}


@dataclass
class AdmissionLimiter:
    target_ms: float
    args: ControlArgs
    max_limit: int
    limit: float = 0.0
    consumed: float = 0.0
    last_eval: float = 0.0
    hit: bool = False  # the limit refused or was reached since the last decision
    changes: int = 0
    shed_total: int = 0
    last: Decision | None = None

    def __post_init__(self) -> None:
        self.min_limit = min(self.args.min_concurrency, self.max_limit)
        self.limit = float(self.max_limit) if not self.limit else self.limit

    @property
    def current(self) -> int:
        return max(self.min_limit, int(self.limit))

    def admits(self, inflight: int) -> bool:
        """Whether one more request may enter next to `inflight` admitted ones."""
        if inflight + 1 >= self.current:
            self.hit = True
        if inflight >= self.current:
            self.shed_total += 1
            return False
        return True

    def update(self, window: LatencyWindow, now: float) -> Decision | None:
        a = self.args
        lat = due(self, window, now)
        if lat is None:
            return None
        if not enough(lat, self.target_ms, a):
            return None
        p = p99(lat)
        first = window.first_time()
        start = max(self.consumed, now - a.window_s, now if first is None else first)
        rate = lat.size / max(now - start, a.interval_s)  # answers per second over what this decision read
        self.consumed = now
        new, what = self.limit, None
        if p > self.target_ms and self.limit > self.min_limit:
            little = rate * self.target_ms / 1000.0  # requests in the replica at this rate and the target latency
            new, what = max(float(self.min_limit), min(self.limit * a.decrease, little)), "shrink"
        elif p < a.calm_share * self.target_ms and self.hit and self.limit < self.max_limit:
            new, what = min(float(self.max_limit), max(self.limit * a.increase, self.limit + 1)), "grow"
        elif p <= self.target_ms and self.hit and self.limit < self.max_limit:
            new, what = min(float(self.max_limit), self.limit + 1), "probe"
        self.hit = False
        if what is None:
            return None
        self.limit = new
        self.changes += 1
        self.last = Decision(now, what, p, self.current)
        return self.last

    def state(self, now: float) -> dict:
        return {"admission_limit": self.current, "admission_max": self.max_limit, "shed_total": self.shed_total,
                "admission_changes": self.changes,
                "admission_last_decision": None if self.last is None else
                {"what": self.last.what, "ago_s": round(now - self.last.at, 3), "p99_ms": self.last.p99_ms,
                 "limit": int(self.last.value)}}


class SLOController:
    """Both loops over one window of measured in-replica latencies."""

    def __init__(self, args: ControlArgs, slo_ms: float, steps_candidates: list[int], max_ongoing: int):
        self.args = args
        self.target_ms = args.replica_share * slo_ms
        self.window = LatencyWindow()
        self.steps = StepController(list(steps_candidates), self.target_ms, args)
        self.admission = AdmissionLimiter(self.target_ms, args, max_ongoing)
        self._lock = threading.Lock()

    def record(self, latency_ms: float, now: float | None = None) -> list[Decision]:
        now = time.monotonic() if now is None else now
        self.window.add(now, latency_ms)
        return self.tick(now)

    def tick(self, now: float | None = None) -> list[Decision]:
        now = time.monotonic() if now is None else now
        if not self.args.enabled:
            return []
        with self._lock:
            out = [d for d in (self.steps.update(self.window, now),
                               self.admission.update(self.window, now) if self.args.shed else None) if d]
        return out

    def steps_cap(self) -> int | None:
        return self.steps.steps_cap if self.args.enabled else None

    def admits(self, inflight: int) -> bool:
        return not (self.args.enabled and self.args.shed) or self.admission.admits(inflight)

    def state(self, now: float | None = None) -> dict:
        now = time.monotonic() if now is None else now
        recent = self.window.since(now - self.args.window_s)
        return {"enabled": self.args.enabled, "target_ms": self.target_ms,
                "measured_p99_ms": None if not recent.size else round(p99(recent), 3),
                "measured_requests": int(recent.size), "window_s": self.args.window_s,
                **self.steps.state(now), **self.admission.state(now)}
