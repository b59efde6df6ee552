"""Issue 21.3: one client cannot knock the endpoint over. Error responses are bounded whatever the
request; a request whose own predicted model time is over the budget is refused; a client that
goes away stops the model at its next batch and stays counted until the model lets go; an error
in one merged job fails only that job. The endpoint's real FastAPI app and sampling service run in
this process (no Ray); the model runs on the scheduler's thread as in a replica."""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from synth.serving.batching import make_job, run_jobs
from synth.serving.config import ServeArgs
from synth.serving.http import create_app
from synth.serving.models import ModelHost
from synth.serving.service import SamplingService


@pytest.fixture(scope="module")
def engine(tiny_artifact):
    from synth.families import load_engine

    return load_engine(tiny_artifact)


def Backend(service: SamplingService) -> ModelHost:
    """What the Serve deployment does around the service: the model on its own thread."""
    host = ModelHost(service.args, executor=ThreadPoolExecutor(1))
    host.add(service)
    return host


def service(tiny_artifact, engine, **args) -> SamplingService:
    svc = SamplingService(ServeArgs(artifact_uri=tiny_artifact, calibrate=False, **args), engine=engine)
    svc.warm_up()
    return svc


def post(app, body: dict):
    import httpx

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await c.post("/v1/sample", json=body)

    return asyncio.run(go())


def test_unknown_condition_keys_get_a_small_bounded_answer(tiny_artifact, engine):
    app = create_app(Backend(service(tiny_artifact, engine)))
    many = {f"no_such_column_{i}": "x" for i in range(20_000)}  # ~600 KB body
    t0 = time.perf_counter()
    r = post(app, {"rows": 1, "conditions": many})
    assert r.status_code == 422 and len(r.content) < 2_000, len(r.content)
    assert "20000 conditions given but this model has" in r.json()["detail"][0]["msg"]
    few = {("k" * 5000) + str(i): "x" for i in range(len(engine.cond_columns))}  # long keys, as many as allowed
    r = post(app, {"rows": 1, "conditions": few})
    assert r.status_code == 422 and len(r.content) < 20 * 400, len(r.content)
    assert all("is not a condition column of this model" in d["msg"] and len(d["loc"][-1]) < 100
               for d in r.json()["detail"])
    assert not any(c in r.text for c in engine.codec.kinds() if c not in engine.cond_columns)  # no column list
    assert time.perf_counter() - t0 < 10


def test_a_request_over_the_time_budget_is_refused_before_it_runs(tiny_artifact, engine):
    svc = service(tiny_artifact, engine, max_request_s=2.0)
    app = create_app(Backend(svc))
    r = post(app, {"rows": 10_000, "steps": 200, "sampler": "heun", "guidance": 3,
                   "conditions": {"sex": "Female"}})
    assert r.status_code == 422, r.text
    (err,) = r.json()["detail"]
    assert err["type"] == "too_costly" and "over this endpoint's limit of 2 s per request" in err["msg"]
    assert svc.inflight_requests == 0 and not svc.pending
    assert post(app, {"rows": 5, "steps": 4}).status_code == 200


def test_a_client_that_goes_away_stops_the_model_and_stays_counted_until_then(tiny_artifact, engine):
    import httpx

    svc = service(tiny_artifact, engine, max_batch_rows=2, max_request_s=600)  # 16 row-NFE per model batch
    backend = Backend(svc)
    app = create_app(backend)
    batches = lambda: sum(e["batches"] for e in svc.latency.report())  # noqa: E731

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            task = asyncio.create_task(c.post("/v1/sample", json={"rows": 2000, "steps": 8, "sampler": "ddim"}))
            await asyncio.sleep(1.0)  # the model thread is now working through its 1000 batches
            task.cancel()
            await asyncio.sleep(0)
            counted_after_cancel = svc.inflight_requests
            while backend.resident(svc.model_id).scheduler._task is not None and svc.inflight_requests:
                await asyncio.sleep(0.05)
            return counted_after_cancel

    t0 = time.perf_counter()
    assert asyncio.run(scenario()) == 1  # the model thread still held the job: still counted
    assert svc.inflight_requests == 0 and svc.inflight_rows == 0 and not svc.pending
    assert 0 < batches() < 1000, batches()  # stopped between model calls
    assert time.perf_counter() - t0 < 30


def test_an_error_in_one_merged_job_fails_only_that_job(engine):
    def job(seed):
        cond, req = engine.encode_conditions(4, {})
        return make_job(engine, 4, cond, req, "ddim", 4, 1.0, seed, True)

    good, bad, other = job(1), job(2), job(3)
    bad.cond = bad.cond + 10**6  # an index no embedding has: the model batch raises
    out, stats = run_jobs(engine, [good, bad, other], max_cost=1 << 20)
    assert out[0].num_rows == 4 and out[2].num_rows == 4
    assert isinstance(out[1], Exception)
    alone, _ = run_jobs(engine, [job(1)], max_cost=1 << 20)
    assert alone[0].equals(out[0])
