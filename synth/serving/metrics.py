"""Prometheus metrics of the sampling endpoint, through Ray's metrics agent (`ray.serve.metrics`).

Create `ServingMetrics(model_id)` inside the replica, one per loaded model (synth.serving.models):
Ray exports them with a `ray_` prefix on each node's metrics port, tagged with the application,
deployment and replica, and every series here carries a `model` tag (the model id of the request,
see "Serving several models" in docs/serving.md). The Ray metric objects are created once per
process (`_instruments`) and shared by the models' views. Never use module-level prometheus_client
objects in a deployment: they are pickled by value into the replica and never increase.

Names (exported as `ray_<name>`, with the usual `_bucket/_sum/_count` and `_total` suffixes), each
with the tag `model` as well as those listed:

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
- synth_slo_adjustments     counter, tag action (down, up, idle_up, shrink, grow, probe): controller decisions
- synth_model_loaded        gauge: 1 while the model is loaded in the replica, 0 after its eviction
- synth_model_loads         counter, tag outcome (loaded, failed, evicted): model loads and LRU evictions
- synth_model_load_ms       gauge: how long the model's last load took (read, verify, calibrate)
"""
from __future__ import annotations

LATENCY_BUCKETS_MS = [2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2000, 5000, 10000, 30000]
BATCH_BUCKETS_ROWS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]

METRIC_NAMES = ("synth_request_latency_ms", "synth_rows_generated", "synth_nfe", "synth_batch_size",
                "synth_inflight_requests", "synth_slo_violations", "synth_requests_rejected", "synth_slo_steps_cap",
                "synth_slo_admission_limit", "synth_slo_measured_p99_ms", "synth_slo_adjustments", "synth_model_loaded",
                "synth_model_loads", "synth_model_load_ms")


_INSTRUMENTS: dict | None = None


def _instruments() -> dict:
    """The Ray metric objects of this process, created once (a second object of the same name would
    export a second series)."""
    global _INSTRUMENTS
    if _INSTRUMENTS is None:
        from ray.serve import metrics as m

        _INSTRUMENTS = {
            "latency": m.Histogram("synth_request_latency_ms", description="POST /v1/sample latency in the replica (ms)",
                                   boundaries=LATENCY_BUCKETS_MS, tag_keys=("model", "sampler", "steps")),
            "rows": m.Counter("synth_rows_generated", description="synthetic rows returned",
                              tag_keys=("model", "sampler")),
            "nfe": m.Counter("synth_nfe", description="network evaluations used by answered requests",
                             tag_keys=("model", "sampler")),
            "batch_size": m.Histogram("synth_batch_size", description="rows per model batch",
                                      boundaries=BATCH_BUCKETS_ROWS, tag_keys=("model", "sampler")),
            "inflight": m.Gauge("synth_inflight_requests", description="requests inside the replica",
                                tag_keys=("model",)),
            "slo_violations": m.Counter("synth_slo_violations", description="requests slower than the p99 target",
                                        tag_keys=("model", "sampler", "steps")),
            "rejected": m.Counter("synth_requests_rejected", description="requests refused with 429",
                                  tag_keys=("model", "reason")),
            "steps_cap": m.Gauge("synth_slo_steps_cap", description="closed-loop cap on the steps chosen",
                                 tag_keys=("model",)),
            "admission_limit": m.Gauge("synth_slo_admission_limit",
                                       description="requests the replica admits at once (closed loop)",
                                       tag_keys=("model",)),
            "measured_p99": m.Gauge("synth_slo_measured_p99_ms",
                                    description="in-replica p99 the last step decision read (ms)", tag_keys=("model",)),
            "adjustments": m.Counter("synth_slo_adjustments", description="closed-loop decisions",
                                     tag_keys=("model", "action")),
            "loaded": m.Gauge("synth_model_loaded", description="1 while the model is loaded in this replica",
                              tag_keys=("model",)),
            "loads": m.Counter("synth_model_loads", description="model loads (loaded, failed) and LRU evictions",
                               tag_keys=("model", "outcome")),
            "load_ms": m.Gauge("synth_model_load_ms", description="duration of the model's last load (ms)",
                               tag_keys=("model",)),
        }
    return _INSTRUMENTS


class ServingMetrics:
    """The metrics of one model on this replica (every series tagged `model`)."""

    def __init__(self, model: str) -> None:
        self.m = _instruments()
        self.model = model

    def _tags(self, **tags: str) -> dict[str, str]:
        return {"model": self.model, **tags}

    def request(self, sampler: str, steps: int, rows: int, nfe: int, latency_ms: float, violated: bool) -> None:
        tags = self._tags(sampler=sampler, steps=str(steps))
        self.m["latency"].observe(latency_ms, tags=tags)
        self.m["rows"].inc(rows, tags=self._tags(sampler=sampler))
        self.m["nfe"].inc(nfe, tags=self._tags(sampler=sampler))
        if violated:
            self.m["slo_violations"].inc(1, tags=tags)

    def batch(self, sampler: str, rows: int) -> None:
        self.m["batch_size"].observe(rows, tags=self._tags(sampler=sampler))

    def set_inflight(self, n: int) -> None:
        self.m["inflight"].set(n, tags=self._tags())

    def reject(self, reason: str) -> None:
        self.m["rejected"].inc(1, tags=self._tags(reason=reason))

    def control(self, action: str) -> None:
        self.m["adjustments"].inc(1, tags=self._tags(action=action))

    def control_state(self, steps_cap: int, admission_limit: int, p99_ms: float | None) -> None:
        self.m["steps_cap"].set(steps_cap, tags=self._tags())
        self.m["admission_limit"].set(admission_limit, tags=self._tags())
        if p99_ms is not None:
            self.m["measured_p99"].set(p99_ms, tags=self._tags())

    def model_load(self, outcome: str, ms: float | None = None) -> None:
        """outcome: loaded, failed or evicted."""
        self.m["loads"].inc(1, tags=self._tags(outcome=outcome))
        if outcome == "loaded":
            self.m["loaded"].set(1, tags=self._tags())
            self.m["load_ms"].set(ms or 0.0, tags=self._tags())
        elif outcome == "evicted":
            self.m["loaded"].set(0, tags=self._tags())


class NullMetrics:
    """Same interface, records nothing (unit tests without Ray)."""

    def request(self, *args, **kwargs) -> None: ...
    def batch(self, *args, **kwargs) -> None: ...
    def set_inflight(self, *args, **kwargs) -> None: ...
    def reject(self, *args, **kwargs) -> None: ...
    def control(self, *args, **kwargs) -> None: ...
    def control_state(self, *args, **kwargs) -> None: ...
    def model_load(self, *args, **kwargs) -> None: ...
