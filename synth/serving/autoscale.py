"""Autoscaling on the SLO: a custom Ray Serve autoscaling policy (Ray 2.60 `autoscaling_config.policy`).

Serve's default policy scales on ongoing requests per replica only. Here each replica reports what
its closed loop measures (Serve calls the deployment's `record_autoscaling_stats` every
`metrics_interval_s`; `replica_stats` computes it over the replica's loaded models):

- `synth_p99_ratio`: the worst loaded model's measured in-replica p99 over its controller window,
  divided by its target (`control.replica_share` x `slo_p99_ms`); 0 while a model has too few requests
  for a decision (`control.min_samples`).
- `synth_backlog_ratio`: predicted model time admitted and queued on the replica (all its models:
  they share one model thread) over the same target: above 1, a new request waits longer than the
  SLO before its own model time starts.
- `synth_shed_share`: the share of requests the replica refused with 429 (its admission limits)
  since its previous report. The adaptive admission keeps the admitted p99 near the target by
  refusing work, so under overload the p99 alone can look healthy: the refusals are the signal.

Serve aggregates each over `look_back_period_s` (`aggregation_function`, mean by default) and hands
them to `SLOPolicy` as `ctx.aggregated_metrics[name][replica_id]`. `decide` is the rule:

- up when the replicas' mean pressure (max of p99 ratio and backlog ratio) is over `upscale_at`,
  or when they refuse more than `shed_at` of requests: to ceil(current x need), where need is the
  pressure over `upscale_at`, or 1 / (1 - shed share), whichever is larger, at least one more replica
  and at most `max_factor` x current;
- also up when Serve's own rule (ongoing requests over `target_ongoing_requests`) asks for more: a
  queue at the proxies is load the replicas cannot measure;
- down by one replica when the pressure is under `downscale_below`, nothing is refused and Serve's
  rule agrees;
- else hold.

Capacity check (`Capacity`, on by default: `min_gain` > 0). Each replica also reports
`synth_answered_per_s`, the requests it answered per second since its previous report. A scale-up
is a trial: once the new replicas run and `settle_s` has passed, the policy compares the answered
rate of all replicas with the rate when it decided. If the rate rose by less than `min_gain` per
added replica (relative to the replicas before) while the pressure still asks for more, the
replicas did not add capacity: the bottleneck is elsewhere (cores the replicas share with each
other or with the proxy, a downstream store). The policy then returns to the replicas before the
trial and does not go above them for `retry_after_s` (why "capacity"); a replica that cannot
help only adds start-up work and contention (docs/serving.md, "Autoscaling on the SLO"). While a
trial is judged the policy asks for no more than its replicas. A trial whose replicas never all
run within `10 x settle_s`, or that loses replicas (a node lost), ends without a verdict.

Serve then applies `min_replicas`/`max_replicas`, `upscale_delay_s`/`downscale_delay_s` and the
scaling factors around the policy (its `_apply_autoscaling_config`), so the hysteresis in time comes
from those settings. Use it with:

    autoscaling_config:
      min_replicas: 1
      max_replicas: 4
      upscale_delay_s: 5
      downscale_delay_s: 60
      policy:
        policy_function: synth.serving.autoscale:SLOPolicy
        policy_kwargs: {upscale_at: 1.0, downscale_below: 0.5, shed_at: 0.02, min_gain: 0.15}
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Iterable

P99_RATIO, BACKLOG_RATIO, SHED_SHARE = "synth_p99_ratio", "synth_backlog_ratio", "synth_shed_share"
ANSWERED = "synth_answered_per_s"
REPORTED = (P99_RATIO, BACKLOG_RATIO, SHED_SHARE, ANSWERED)
POLICY_FUNCTION = "synth.serving.autoscale:SLOPolicy"


def replica_stats(services: Iterable[Any], last: dict[str, Any]) -> dict[str, float]:
    """The replica's report (see the module docstring) over its loaded models' SamplingServices;
    `last` keeps (refused, answered) per model between calls, for the shed share and the answered
    rate, and the time of the previous report under "_at" (no model id starts with "_")."""
    from synth.serving.control import enough, p99

    now = time.monotonic()
    since = last.get("_at")
    last["_at"] = now
    p99_ratio, backlog_s, target_s, refused, answered = 0.0, 0.0, math.inf, 0, 0
    for svc in services:
        ctl = svc.control
        target_s = min(target_s, ctl.target_ms / 1000.0)
        lat = ctl.window.since(now - ctl.args.window_s)
        if enough(lat, ctl.target_ms, ctl.args):
            p99_ratio = max(p99_ratio, p99(lat) / ctl.target_ms)
        backlog_s += svc.backlog_s()
        counts = (svc.tracker.rejected_total, svc.tracker.requests_total)
        before = last.get(svc.model_id, (0, 0))
        if counts[0] < before[0] or counts[1] < before[1]:  # the model was loaded again: counts restarted
            before = (0, 0)
        refused += counts[0] - before[0]
        answered += counts[1] - before[1]
        last[svc.model_id] = counts
    return {P99_RATIO: p99_ratio, BACKLOG_RATIO: backlog_s / target_s if math.isfinite(target_s) else 0.0,
            SHED_SHARE: refused / (refused + answered) if refused + answered else 0.0,
            ANSWERED: answered / (now - since) if since is not None and now > since else 0.0}


@dataclass
class Decision:
    replicas: float
    why: str  # "slo", "backlog", "shed", "queue", "calm", "hold" (SLOPolicy adds "judging", "capacity")
    pressure: float
    shed_share: float


def decide(current: int, stats: list[dict[str, float]], queue_replicas: float | None = None, *,
           upscale_at: float = 1.0, downscale_below: float = 0.5, shed_at: float = 0.02,
           max_factor: float = 2.0) -> Decision:
    """Desired replicas from the replicas' reports (`replica_stats`, one dict per replica) and what
    Serve's ongoing-requests rule wants (`queue_replicas`, None: not considered)."""
    if current <= 0 or not stats:
        return Decision(max(current, 1) if queue_replicas is None else max(queue_replicas, 1), "hold", 0.0, 0.0)
    p99s = [s.get(P99_RATIO, 0.0) for s in stats]
    backlogs = [s.get(BACKLOG_RATIO, 0.0) for s in stats]
    shed = sum(s.get(SHED_SHARE, 0.0) for s in stats) / len(stats)
    p99_mean, backlog_mean = sum(p99s) / len(p99s), sum(backlogs) / len(backlogs)
    pressure = max(p99_mean, backlog_mean)
    need, why = 1.0, "hold"
    if pressure > upscale_at:
        need, why = pressure / upscale_at, "slo" if p99_mean >= backlog_mean else "backlog"
    if shed > shed_at and 1.0 / max(1.0 - shed, 1e-3) > need:
        need, why = 1.0 / max(1.0 - shed, 1e-3), "shed"
    if why != "hold":
        want = min(max(math.ceil(current * need), current + 1), math.ceil(current * max_factor))
        if queue_replicas is not None and queue_replicas > want:
            return Decision(queue_replicas, "queue", pressure, shed)
        return Decision(want, why, pressure, shed)
    if queue_replicas is not None and queue_replicas > current:
        return Decision(queue_replicas, "queue", pressure, shed)
    if pressure < downscale_below and shed == 0.0 and (queue_replicas is None or queue_replicas < current):
        return Decision(current - 1, "calm", pressure, shed)
    return Decision(current, "hold", pressure, shed)


@dataclass
class Capacity:
    """The capacity check of scale-ups (module docstring). `state` is a plain dict (it lives in
    Serve's policy_state between calls): "trial" {from, to, rate, at, running_at}, "ceiling"
    {replicas, until}, "last_verdict"."""

    min_gain: float = 0.15
    settle_s: float = 10.0
    retry_after_s: float = 300.0

    def apply(self, state: dict, current: int, want: float, rate: float, now: float) -> tuple[float, str | None]:
        """The replicas to ask for instead of `want` (what the rule asks), and why they differ (None:
        they do not; "judging": a step up is being judged; "capacity": a step up did not add capacity).
        `rate`: answered requests per second over all replicas."""
        ceiling = state.get("ceiling")
        if ceiling is not None and now >= ceiling["until"]:
            state.pop("ceiling")
            ceiling = None
        trial = state.get("trial")
        if trial is not None:
            if current < trial["from"] or (trial["running_at"] is None and now - trial["at"] > 10 * self.settle_s):
                state.pop("trial")  # replicas lost, or the new ones never ran: no verdict
                trial = None
            elif trial["running_at"] is None and current >= trial["to"]:
                trial["running_at"] = now
        if trial is not None:
            if trial["running_at"] is None or now - trial["running_at"] < self.settle_s:
                return min(want, trial["to"]), "judging" if want > trial["to"] else None  # one step at a time
            state.pop("trial")
            added = (trial["to"] - trial["from"]) / trial["from"]
            gain = rate / trial["rate"] - 1.0 if trial["rate"] > 0 else math.inf
            state["last_verdict"] = {"from": trial["from"], "to": trial["to"], "rate_before": round(trial["rate"], 2),
                                     "rate_after": round(rate, 2), "gain": round(gain, 3)}
            if gain < self.min_gain * added and want > current:  # still short, and the step did not help
                ceiling = state["ceiling"] = {"replicas": trial["from"], "until": now + self.retry_after_s}
        if ceiling is not None and want > ceiling["replicas"]:
            return float(ceiling["replicas"]), "capacity"
        if want > current and rate > 0:  # a new step up: judge it
            state["trial"] = {"from": current, "to": math.ceil(want), "rate": rate, "at": now, "running_at": None}
        return want, None


class SLOPolicy:
    """Serve's custom autoscaling policy (a class: Serve builds it once with `policy_kwargs` and
    calls it every control-loop tick with an AutoscalingContext)."""

    def __init__(self, upscale_at: float = 1.0, downscale_below: float = 0.5, shed_at: float = 0.02,
                 max_factor: float = 2.0, use_queue: bool = True, min_gain: float = 0.15, settle_s: float = 10.0,
                 capacity_retry_s: float = 300.0):
        if not 0 < downscale_below < upscale_at:
            raise ValueError(f"need 0 < downscale_below < upscale_at, got {downscale_below} and {upscale_at}")
        if min_gain < 0:
            raise ValueError(f"min_gain must be >= 0 (0 turns the capacity check off), got {min_gain}")
        self.kwargs = {"upscale_at": upscale_at, "downscale_below": downscale_below, "shed_at": shed_at,
                       "max_factor": max_factor}
        self.use_queue = use_queue
        self.capacity = Capacity(min_gain, settle_s, capacity_retry_s) if min_gain > 0 else None

    def __call__(self, ctx) -> tuple[float, dict[str, Any]]:
        metrics = ctx.aggregated_metrics or {}
        replicas = set().union(*(metrics.get(k, {}).keys() for k in REPORTED))
        stats = [{k: float(metrics.get(k, {}).get(r, 0.0)) for k in REPORTED} for r in replicas]
        queue = None
        if self.use_queue and ctx.current_num_replicas > 0:
            target = ctx.config.get_target_ongoing_requests() * ctx.current_num_replicas
            queue = ctx.current_num_replicas * ctx.total_num_requests / target if target else None
        d = decide(ctx.current_num_replicas, stats, queue, **self.kwargs)
        state = dict(ctx.policy_state or {})
        replicas, why = d.replicas, d.why
        if self.capacity is not None:
            cap = dict(state.get("synth_capacity") or {})
            rate = sum(s[ANSWERED] for s in stats)
            replicas, note = self.capacity.apply(cap, ctx.current_num_replicas, d.replicas, rate, time.monotonic())
            state["synth_capacity"] = cap
            why = note or why
        state["synth_last_decision"] = {"replicas": replicas, "why": why, "pressure": round(d.pressure, 3),
                                        "shed_share": round(d.shed_share, 3), "reports": len(stats)}
        return replicas, state
