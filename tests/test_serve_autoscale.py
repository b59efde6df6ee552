"""Issue 22: autoscaling on the SLO (synth.serving.autoscale, Ray 2.60's custom autoscaling policy).

The decision rule on explicit reports; the same rule on what a real replica measured (real requests
through the endpoint's app and model thread, in this process); and the policy wired into a real Serve
deployment on the session Ray: load over its SLO adds a replica, and the replica goes again once the
load stops."""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from synth.serving.autoscale import (ANSWERED, BACKLOG_RATIO, P99_RATIO, POLICY_FUNCTION, SHED_SHARE, Capacity,
                                     SLOPolicy, decide)


def rep(p99=0.0, backlog=0.0, shed=0.0) -> dict:
    return {P99_RATIO: p99, BACKLOG_RATIO: backlog, SHED_SHARE: shed}


def test_decision_rule():
    assert decide(2, [rep(1.5), rep(1.3)]).replicas == 3 and decide(2, [rep(1.5), rep(1.3)]).why == "slo"
    assert decide(1, [rep(1.05)]).replicas == 2  # over the target: at least one more
    assert decide(2, [rep(9.0), rep(9.0)]).replicas == 4  # at most max_factor x current per decision
    assert decide(2, [rep(0.2, backlog=1.8), rep(0.2, backlog=1.6)]).why == "backlog"
    d = decide(2, [rep(0.6, shed=0.5), rep(0.6, shed=0.3)])  # admitted p99 fine, 40 % refused
    assert d.why == "shed" and d.replicas == 4  # ceil(2 / 0.6)
    assert decide(3, [rep(0.7), rep(0.8), rep(0.9)]).replicas == 3  # in the band: hold
    assert decide(3, [rep(0.1), rep(0.2), rep(0.3)]).replicas == 2  # calm: one down
    assert decide(3, [rep(0.1, shed=0.01)] * 3).replicas == 3  # still refusing some: no scale-down
    assert decide(2, [rep(0.1)] * 2, queue_replicas=3.5).replicas == 3.5  # Serve's own rule wants more
    assert decide(2, [rep(0.1)] * 2, queue_replicas=2.0).replicas == 2  # ... and must agree to go down
    assert decide(2, [rep(0.1)] * 2, queue_replicas=1.0).replicas == 1
    assert decide(2, []).replicas == 2  # no reports yet: hold
    with pytest.raises(ValueError, match="downscale_below"):
        SLOPolicy(upscale_at=0.5, downscale_below=0.8)


def test_a_step_up_that_adds_no_capacity_is_undone():
    cap, state = Capacity(min_gain=0.15, settle_s=10.0, retry_after_s=300.0), {}
    # 1 replica answering 100/s asks for 2: a trial; while it is judged, no more than its 2 replicas
    assert cap.apply(state, 1, 2.0, 100.0, now=0.0) == (2.0, None) and state["trial"]["from"] == 1
    assert cap.apply(state, 1, 4.0, 100.0, now=3.0) == (2.0, "judging")  # the new replica still starting
    assert cap.apply(state, 2, 2.0, 104.0, now=5.0) == (2.0, None)  # running: settles for 10 s
    assert cap.apply(state, 2, 3.0, 104.0, now=14.0) == (2.0, "judging")
    # settled: 4 % more answers for 100 % more replicas, and the pressure still asks for more -> back to 1
    assert cap.apply(state, 2, 3.0, 104.0, now=15.5) == (1.0, "capacity")
    assert state["last_verdict"]["gain"] == pytest.approx(0.04) and "trial" not in state
    assert cap.apply(state, 1, 2.0, 100.0, now=100.0) == (1.0, "capacity")  # held at 1 ...
    assert cap.apply(state, 1, 1.0, 40.0, now=120.0) == (1.0, None)  # (going down is never held)
    assert cap.apply(state, 1, 2.0, 100.0, now=316.0) == (2.0, None)  # ... until retry_after_s: a new trial
    assert state["trial"]["at"] == 316.0 and "ceiling" not in state


def test_a_step_up_that_adds_capacity_stays():
    cap, state = Capacity(min_gain=0.15, settle_s=10.0), {}
    cap.apply(state, 1, 2.0, 100.0, now=0.0)
    cap.apply(state, 2, 2.0, 150.0, now=4.0)
    assert cap.apply(state, 2, 3.0, 185.0, now=14.5) == (3.0, None)  # +85 %: kept, and the next step is a trial
    assert state["last_verdict"]["gain"] == pytest.approx(0.85) and state["trial"]["from"] == 2
    # a step that did not help but relieved the pressure (the rule wants no more): no ceiling
    state = {}
    cap.apply(state, 2, 3.0, 100.0, now=0.0)
    cap.apply(state, 3, 3.0, 100.0, now=1.0)
    assert cap.apply(state, 3, 3.0, 100.0, now=11.5) == (3.0, None) and "ceiling" not in state


def test_a_trial_ends_without_verdict_when_replicas_are_lost_or_never_run():
    cap, state = Capacity(settle_s=10.0), {}
    cap.apply(state, 2, 3.0, 100.0, now=0.0)
    assert cap.apply(state, 1, 3.0, 60.0, now=5.0) == (3.0, None)  # a node lost: a new trial from 1
    assert state["trial"]["from"] == 1 and "ceiling" not in state
    state = {}
    cap.apply(state, 1, 2.0, 100.0, now=0.0)
    assert cap.apply(state, 1, 3.0, 100.0, now=50.0) == (2.0, "judging")
    assert cap.apply(state, 1, 2.0, 100.0, now=101.0) == (2.0, None) and state["trial"]["at"] == 101.0
    with pytest.raises(ValueError, match="min_gain"):
        SLOPolicy(min_gain=-0.1)


@pytest.fixture(scope="module")
def engine(tiny_artifact):
    from synth.families import load_engine

    return load_engine(tiny_artifact)


def measured(tiny_artifact, engine, clients: int, requests: int, body: dict, **args):
    """Real requests through the endpoint's app and model thread (in this process); returns the
    replica's autoscaling report, the status codes and the in-replica latencies of the 200s."""
    import httpx

    from synth.serving.config import ServeArgs
    from synth.serving.http import create_app
    from synth.serving.models import ModelHost
    from synth.serving.service import SamplingService

    svc = SamplingService(ServeArgs(artifact_uri=tiny_artifact, calibrate=False, **args), engine=engine)
    svc.warm_up()
    host = ModelHost(svc.args, executor=ThreadPoolExecutor(1))
    host.add(svc)
    app = create_app(host)
    out: list[tuple[int, float]] = []

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            async def client():
                for _ in range(requests):
                    r = await c.post("/v1/sample", json=body)
                    out.append((r.status_code, float(r.headers.get("x-synth-latency-ms", "nan"))))
            await asyncio.gather(*[client() for _ in range(clients)])

    asyncio.run(go())
    return host.autoscaling_stats(), [c for c, _ in out], [ms for c, ms in out if c == 200], svc


def test_the_rule_on_what_a_replica_measured(tiny_artifact, engine):
    body = {"rows": 16, "steps": 4}
    # a target this machine cannot meet: the measured p99 is far over it, the policy adds replicas
    stats, codes, lat, svc = measured(tiny_artifact, engine, 4, 8, body, slo_p99_ms=1.0, max_backlog_s=600,
                                      control={"enabled": False})  # (no refusals here: see below)
    assert set(codes) == {200} and len(lat) == 32
    target = svc.control.target_ms
    assert stats[P99_RATIO] == pytest.approx(np.percentile(lat, 99) / target, rel=0.05)
    assert stats[P99_RATIO] > 1 and stats[SHED_SHARE] == 0.0
    assert decide(1, [stats]).why == "slo" and decide(1, [stats]).replicas >= 2
    # a target far above what it measured: calm, one replica fewer
    stats, codes, lat, _ = measured(tiny_artifact, engine, 2, 12, body, slo_p99_ms=60_000.0)
    assert set(codes) == {200} and stats[P99_RATIO] < 0.01
    assert decide(2, [stats]).why == "calm" and decide(2, [stats]).replicas == 1
    # admitted requests are fast but many are refused (429): the refusals scale it up
    stats, codes, lat, _ = measured(tiny_artifact, engine, 8, 4, {"rows": 400, "steps": 8}, slo_p99_ms=60_000.0,
                                    max_inflight_rows=400, max_request_s=600)
    refused = codes.count(429) / len(codes)
    assert 0 < refused < 1 and stats[SHED_SHARE] == pytest.approx(refused)
    assert stats[P99_RATIO] < 0.01 and decide(1, [stats]).why == "shed"
    assert decide(1, [stats]).replicas == min(int(np.ceil(1 / (1 - refused))), 2)


# ---------------------------------------------------------------------------------------------
# the policy in a real deployment
# ---------------------------------------------------------------------------------------------
def _replicas(app: str, deployment: str) -> int:
    """Replicas the controller wants now: running or starting (a replica process can take a minute
    to be scheduled on a loaded 2-core machine; the policy's decision is what is checked here)."""
    from ray import serve

    states = serve.status().applications[app].deployments[deployment].replica_states
    return sum(n for state, n in states.items() if state not in ("STOPPING",))


def test_slo_policy_scales_a_real_deployment_up_and_back_down(serve_http, tiny_artifact):
    import httpx
    from ray import serve

    from serve.app import build_app

    base = f"{serve_http['base']}/auto"
    serve.run(build_app({
        "artifact_uri": tiny_artifact, "calibrate": False, "num_cpus": 0.5, "deployment_name": "Auto",
        "slo_p99_ms": 1.0, "max_backlog_s": 600,  # unmeetable: any load is over the target (and nothing refused)
        "control": {"window_s": 2.0, "min_samples": 5, "shed": False},
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 2, "initial_replicas": 1, "target_ongoing_requests": 8,
                               "metrics_interval_s": 0.5, "look_back_period_s": 2.0, "upscale_delay_s": 0.0,
                               "downscale_delay_s": 2.0,
                               "policy": {"policy_function": POLICY_FUNCTION,
                                          "policy_kwargs": {"upscale_at": 1.0, "downscale_below": 0.5}}}}),
        name="auto", route_prefix="/auto")
    try:
        assert _replicas("auto", "Auto") == 1
        stop, codes = threading.Event(), []

        def load():
            with httpx.Client(base_url=base, timeout=60) as c:
                while not stop.is_set():
                    codes.append(c.post("/v1/sample", json={"rows": 8, "steps": 4}).status_code)

        threads = [threading.Thread(target=load, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        t0, up_after = time.monotonic(), None
        try:
            while time.monotonic() - t0 < 60:
                if _replicas("auto", "Auto") == 2:
                    up_after = time.monotonic() - t0
                    break
                time.sleep(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
        assert up_after is not None, f"no second replica under load over the SLO ({len(codes)} requests)"
        assert codes and set(codes) == {200}
        # 2 clients against target_ongoing_requests 8: Serve's own rule never asks for a second replica, the SLO did
        t1, down_after = time.monotonic(), None
        while time.monotonic() - t1 < 60:
            if _replicas("auto", "Auto") == 1:
                down_after = time.monotonic() - t1
                break
            time.sleep(0.5)
        assert down_after is not None, "the second replica stayed after the load stopped"
        print(f"second replica asked for after {up_after:.1f} s of load over the SLO; back to one "
              f"{down_after:.1f} s after the load stopped")
    finally:
        serve.delete("auto")
