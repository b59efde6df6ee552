"""Prometheus metrics of the sampling endpoint, through Ray's metrics agent (`ray.serve.metrics`).

Create `ServingMetrics()` inside the replica (the deployment's `__init__`): Ray exports them with
a `ray_` prefix on each node's metrics port, tagged with the application, deployment and replica.
Never use module-level prometheus_client objects in a deployment: they are pickled by value into
the replica and never increase.

Names (exported as `ray_<name>`, with the usual `_bucket/_sum/_count` and `_total` suffixes):

- synth_request_latency_ms  histogram, tags sampler, steps: in-replica latency of POST /v1/sample
- synth_rows_generated      counter, tag sampler: rows returned
- synth_nfe                 counter, tag sampler: network evaluations used by answered requests
                            (the X-Synth-NFE of each response; batching shares them across rows)
- synth_batch_size          histogram, tag sampler: rows per model batch
- synth_inflight_requests   gauge: requests inside the replica (admitted, not yet answered)
- synth_slo_violations      counter, tags sampler, steps: requests slower than the p99 target
- synth_requests_rejected   counter, tag reason: requests refused with 429 (backpressure; `slo` = the
                            closed loop's admission limit)
- synth_slo_steps_cap       gauge: the closed loop's cap on chosen steps (synth.serving.control)
- synth_slo_admission_limit gauge: requests the replica admits at once now
- synth_slo_measured_p99_ms gauge: the p99 the last step decision read (ms, in the replica)
- synth_slo_adjustments     counter, tag action (down, up, idle_up, shrink, grow): controller decisions
"""
from __future__ import annotations

LATENCY_BUCKETS_MS = [2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2000, 5000, 10000, 30000]
BATCH_BUCKETS_ROWS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]

METRIC_NAMES = ("synth_request_latency_ms", "synth_rows_generated", "synth_nfe", "synth_batch_size",
                "synth_inflight_requests", "synth_slo_violations", "synth_requests_rejected", "synth_slo_steps_cap",
                "synth_slo_admission_limit", "synth_slo_measured_p99_ms", "synth_slo_adjustments")


class ServingMetrics:
    def __init__(self) -> None:
        from ray.serve import metrics as m

        self.latency = m.Histogram("synth_request_latency_ms", description="POST /v1/sample latency in the replica (ms)",
                                   boundaries=LATENCY_BUCKETS_MS, tag_keys=("sampler", "steps"))
        self.rows = m.Counter("synth_rows_generated", description="synthetic rows returned",
                              tag_keys=("sampler",))
        self.nfe = m.Counter("synth_nfe", description="network evaluations used by answered requests",
                             tag_keys=("sampler",))
        self.batch_size = m.Histogram("synth_batch_size", description="rows per model batch",
                                      boundaries=BATCH_BUCKETS_ROWS, tag_keys=("sampler",))
        self.inflight = m.Gauge("synth_inflight_requests", description="requests inside the replica")
        self.slo_violations = m.Counter("synth_slo_violations", description="requests slower than the p99 target",
                                        tag_keys=("sampler", "steps"))
        self.rejected = m.Counter("synth_requests_rejected", description="requests refused with 429",
                                  tag_keys=("reason",))
        self.steps_cap = m.Gauge("synth_slo_steps_cap", description="closed-loop cap on the steps chosen")
        self.admission_limit = m.Gauge("synth_slo_admission_limit",
                                       description="requests the replica admits at once (closed loop)")
        self.measured_p99 = m.Gauge("synth_slo_measured_p99_ms",
                                    description="in-replica p99 the last step decision read (ms)")
        self.adjustments = m.Counter("synth_slo_adjustments", description="closed-loop decisions",
                                     tag_keys=("action",))

    def request(self, sampler: str, steps: int, rows: int, nfe: int, latency_ms: float, violated: bool) -> None:
        tags = {"sampler": sampler, "steps": str(steps)}
        self.latency.observe(latency_ms, tags=tags)
        self.rows.inc(rows, tags={"sampler": sampler})
        self.nfe.inc(nfe, tags={"sampler": sampler})
        if violated:
            self.slo_violations.inc(1, tags=tags)

    def batch(self, sampler: str, rows: int) -> None:
        self.batch_size.observe(rows, tags={"sampler": sampler})

    def set_inflight(self, n: int) -> None:
        self.inflight.set(n)

    def reject(self, reason: str) -> None:
        self.rejected.inc(1, tags={"reason": reason})

    def control(self, action: str) -> None:
        self.adjustments.inc(1, tags={"action": action})

    def control_state(self, steps_cap: int, admission_limit: int, p99_ms: float | None) -> None:
        self.steps_cap.set(steps_cap)
        self.admission_limit.set(admission_limit)
        if p99_ms is not None:
            self.measured_p99.set(p99_ms)


class NullMetrics:
    """Same interface, records nothing (unit tests without Ray)."""

    def request(self, *args, **kwargs) -> None: ...
    def batch(self, *args, **kwargs) -> None: ...
    def set_inflight(self, *args, **kwargs) -> None: ...
    def reject(self, *args, **kwargs) -> None: ...
    def control(self, *args, **kwargs) -> None: ...
    def control_state(self, *args, **kwargs) -> None: ...
