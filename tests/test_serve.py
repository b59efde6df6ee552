"""Online sampling endpoint (synth.serving, serve/): unit tests without Ray, then real HTTP
against a local Ray Serve (one Ray and two applications for the whole module)."""
from __future__ import annotations

import asyncio
import io
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from synth.diffusion.samplers import SAMPLERS
from synth.errors import ConfigError
from synth.serving import ServeArgs
from synth.serving.batching import make_job, plan_batches, run_jobs
from synth.serving.slo import LatencyModel, SLOTracker
from tests.conftest import scrape_until

REPO = Path(__file__).resolve().parents[1]
TOKEN_ENV = "SYNTH_TEST_SERVE_TOKEN"
TOKEN = "test-token-123"
NUMERIC_RTOL = 1e-4


# ---------------------------------------------------------------------------------------------
# fixtures (tiny_artifact and ray_session come from conftest.py)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine(tiny_artifact):
    from synth.families import load_engine

    return load_engine(tiny_artifact)


def assert_same_rows(a: pa.Table, b: pa.Table) -> None:
    """Categorical columns identical; numeric columns equal up to batch-size-dependent float rounding."""
    assert a.schema == b.schema
    for name in a.column_names:
        x, y = a[name].to_pylist(), b[name].to_pylist()
        if pa.types.is_integer(a.schema.field(name).type) or pa.types.is_floating(a.schema.field(name).type):
            np.testing.assert_allclose(np.array(x, dtype=float), np.array(y, dtype=float), rtol=NUMERIC_RTOL,
                                       atol=1.0 if pa.types.is_integer(a.schema.field(name).type) else 1e-6,
                                       err_msg=name)
        else:
            assert x == y, name


# ---------------------------------------------------------------------------------------------
# unit tests (no Ray)
# ---------------------------------------------------------------------------------------------
def _job(engine, rows, seed, sampler="dpmpp_2m", steps=4, guidance=1.0, cond=None, seeded=True):
    c, req = engine.encode_conditions(rows, cond or {})
    return make_job(engine, rows, c, req, sampler, steps, guidance, seed, seeded)


@pytest.mark.parametrize("sampler,guidance", [("dpmpp_2m", 1.0), ("ddim", 2.0), ("ddpm", 1.0)])
def test_batched_rows_match_alone_and_engine_sample(engine, sampler, guidance):
    cond = {"sex": "Female"}
    alone, _ = run_jobs(engine, [_job(engine, 6, 42, sampler, 4, guidance, cond)], max_cost=32768)
    ref = engine.sample(6, cond, sampler=sampler, steps=4, guidance=guidance, seed=42)
    assert alone[0].equals(ref)  # the endpoint's path is engine.sample's path
    jobs = [_job(engine, 30, 1, sampler, 4, guidance), _job(engine, 6, 42, sampler, 4, guidance, cond),
            _job(engine, 200, 3, sampler, 4, guidance, {"race": "White"})]
    merged, stats = run_jobs(engine, jobs, max_cost=32768)
    assert_same_rows(alone[0], merged[1])
    assert len(stats) == (3 if sampler == "ddpm" else 1)  # seeded ddpm jobs run alone
    assert merged[2]["race"].to_pylist() == ["White"] * 200


def test_plan_caps_cost_and_splits_large_jobs(engine):
    jobs = [_job(engine, 100, 1, steps=8), _job(engine, 50, 2, steps=8), _job(engine, 10, 3, steps=4),
            _job(engine, 10, 4, steps=8, guidance=2.0)]
    batches = plan_batches(jobs, max_cost=64 * 8)  # 64 rows at 8 NFE
    for b in batches:
        per_row = SAMPLERS[b.sampler].nfe(b.steps) * (1 if b.guidance in (0.0, 1.0) else 2)
        assert b.rows * per_row <= 64 * 8
        assert len({(jobs[s.job].steps, jobs[s.job].guidance) for s in b.segments}) == 1
    covered = {}
    for b in batches:
        for s in b.segments:
            covered.setdefault(s.job, []).append((s.start, s.stop))
    for i, job in enumerate(jobs):
        spans = sorted(covered[i])
        assert spans[0][0] == 0 and spans[-1][1] == job.rows
        assert all(p[1] == q[0] for p, q in zip(spans, spans[1:]))
    assert [b.rows for b in batches][:3] == [64, 64, 22]  # 150 rows at 8 steps -> 64 + 64 + 22


def test_latency_model_picks_largest_steps_that_fit():
    m = LatencyModel(per_call_s=1e-3, per_row_s=1e-5)
    cands = [4, 6, 8, 12, 16, 20]
    assert m.choose_steps("ddim", 1, cands, budget_s=0.1, wait_s=0.005, backlog_s=0.0) == 20
    assert m.choose_steps("ddim", 1, cands, budget_s=0.015, wait_s=0.005, backlog_s=0.0) == 8
    assert m.choose_steps("ddim", 1, cands, budget_s=0.1, wait_s=0.005, backlog_s=1.0) == 4  # none fits
    for _ in range(20):  # measured 3x slower than calibrated: the EWMA factor follows
        m.observe("ddim", 8, 1, 3 * m.base("ddim", 8, 1))
    assert m.predict("ddim", 8, 1) == pytest.approx(3 * m.base("ddim", 8, 1), rel=0.05)
    assert m.predict("ddim", 12, 1) == pytest.approx(3 * m.base("ddim", 12, 1), rel=0.05)  # unseen: median


def test_slo_tracker_percentiles_and_violations():
    t = SLOTracker(target_ms=100, window_s=10)
    for i in range(100):
        t.record(float(i + 1), now=1000.0)
    t.record(500.0, now=1000.0)
    rep = t.report(now=1005.0)
    assert rep["requests"] == 101 and rep["violations"] == 1 and rep["violations_total"] == 1
    assert rep["p50_ms"] == pytest.approx(51, abs=1)
    assert rep["p99_ms"] <= 101 and rep["meets_target"]
    assert t.report(now=2000.0)["requests"] == 0  # out of the window


def test_serve_args_validation():
    assert ServeArgs.parse({"artifact_uri": "x"}).max_batch_cost == 4096 * 8
    with pytest.raises(ConfigError, match="slo_p99_ms"):
        ServeArgs.parse({"artifact_uri": "x", "slo_p99_ms": -1})
    with pytest.raises(ConfigError, match="not both"):
        ServeArgs.parse({"artifact_uri": "x", "num_replicas": 2, "autoscaling_config": {"max_replicas": 3}})
    with pytest.raises(ConfigError, match="bogus"):
        ServeArgs.parse({"artifact_uri": "x", "bogus": 1})


def test_serve_config_yaml_is_valid():
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(raw)
    app = schema.applications[0]
    assert app.import_path == "serve.app:build_app"
    args = ServeArgs.parse(app.args)
    dep = app.deployments[0]
    assert dep.name == args.deployment_name
    assert dep.max_ongoing_requests >= args.max_batch_size  # or batches never fill
    assert dep.autoscaling_config["max_replicas"] >= dep.autoscaling_config["min_replicas"]
    from serve.app import build_app  # the import path resolves

    with pytest.raises(Exception, match="no model artifact"):
        build_app({"artifact_uri": "/nonexistent/model"})


# ---------------------------------------------------------------------------------------------
# Ray Serve over real HTTP
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster(serve_http, tiny_artifact):
    from ray import serve

    from serve.app import build_app

    common = {"artifact_uri": tiny_artifact, "max_rows": 5000, "num_cpus": 1}
    # The token reaches the replica as an environment variable (in production: a Kubernetes secret).
    serve.run(build_app({**common, "auth_token_env": TOKEN_ENV, "max_batch_size": 32,
                         "batch_wait_timeout_s": 0.01, "max_ongoing_requests": 64, "max_body_bytes": 65536,
                         "deployment_name": "Sampler",
                         "ray_actor_options": {"runtime_env": {"env_vars": {TOKEN_ENV: TOKEN}}}}),
              name="synth", route_prefix="/")
    serve.run(build_app({**common, "max_batch_size": 4, "max_ongoing_requests": 2, "max_queued_requests": 2,
                         "max_inflight_rows": 3000, "max_request_s": 600, "retry_after_s": 1, "calibrate": False,
                         "deployment_name": "Tight"}), name="tight", route_prefix="/tight")
    yield serve_http
    serve.delete("synth")
    serve.delete("tight")


@pytest.fixture(scope="module")
def client(cluster):
    import httpx

    with httpx.Client(base_url=cluster["base"], timeout=60,
                      headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c


def _table(resp) -> pa.Table:
    ctype = resp.headers["content-type"]
    if "arrow" in ctype:
        return pa.ipc.open_stream(resp.content).read_all()
    if "parquet" in ctype:
        return pq.read_table(io.BytesIO(resp.content))
    return pa.Table.from_pylist(resp.json()["records"])


def test_sample_each_format_has_reference_schema(client, engine):
    for fmt in ("json", "arrow", "parquet"):
        r = client.post("/v1/sample", json={"rows": 7, "format": fmt, "seed": 3, "steps": 4})
        assert r.status_code == 200, r.text
        t = _table(r)
        assert t.num_rows == 7
        if fmt == "json":
            assert t.column_names == engine.codec.schema.names
            assert r.json()["steps"] == 4 and r.json()["seed"] == 3
        else:
            assert t.schema == engine.codec.schema
    # all three formats carry the same rows for the same seed
    tabs = [_table(client.post("/v1/sample", json={"rows": 5, "format": f, "seed": 9, "steps": 4}))
            for f in ("arrow", "parquet")]
    assert tabs[0].equals(tabs[1])


def test_conditions_are_met_exactly(client, engine):
    female = client.post("/v1/sample", json={"rows": 40, "conditions": {"sex": "Female", "race": "White"},
                                             "format": "arrow", "guidance": 2.0})
    assert female.status_code == 200, female.text
    t = _table(female)
    assert set(t["sex"].to_pylist()) == {"Female"} and set(t["race"].to_pylist()) == {"White"}
    per_row = ["Male", "Female"] * 5
    r = client.post("/v1/sample", json={"rows": 10, "conditions": {"sex": per_row}})
    assert r.status_code == 200, r.text
    assert [rec["sex"] for rec in r.json()["records"]] == per_row


def test_seed_determinism_alone_and_in_a_concurrent_batch(cluster, client, engine):
    import httpx

    body = {"rows": 6, "seed": 1234, "sampler": "dpmpp_2m", "steps": 8, "conditions": {"income": ">50K"},
            "format": "arrow"}
    alone = client.post("/v1/sample", json=body)
    assert alone.status_code == 200 and alone.headers["x-synth-seed"] == "1234"
    ref = _table(alone)
    assert_same_rows(ref, engine.sample(6, {"income": ">50K"}, sampler="dpmpp_2m", steps=8, seed=1234))

    async def burst():
        async with httpx.AsyncClient(base_url=cluster["base"], timeout=60,
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as ac:
            others = [ac.post("/v1/sample", json={**body, "seed": s, "rows": 1 + s % 5}) for s in range(15)]
            return await asyncio.gather(ac.post("/v1/sample", json=body), *others)

    for _ in range(3):  # the batch must actually merge requests; retry if the burst came in trickles
        responses = asyncio.run(burst())
        assert all(r.status_code == 200 for r in responses)
        if int(responses[0].headers["x-synth-batch-requests"]) > 1:
            break
    assert int(responses[0].headers["x-synth-batch-requests"]) > 1
    assert max(int(r.headers["x-synth-batch-requests"]) for r in responses) > 1
    assert_same_rows(ref, _table(responses[0]))


def test_auto_steps_and_headers(client, engine):
    model = client.get("/v1/model").json()
    r = client.post("/v1/sample", json={"rows": 2})
    assert r.status_code == 200
    steps, sampler = int(r.headers["x-synth-steps"]), r.headers["x-synth-sampler"]
    assert steps in model["steps_candidates"] and sampler == engine.config.sampler
    assert int(r.headers["x-synth-nfe"]) == engine.cost(sampler, steps, engine.config.guidance, conditioned=False)
    assert int(r.headers["x-synth-seed"]) >= 0
    r = client.post("/v1/sample", json={"rows": 2, "sampler": "heun", "steps": 5})
    assert r.headers["x-synth-steps"] == "5" and r.headers["x-synth-nfe"] == str(SAMPLERS["heun"].nfe(5))


def test_model_and_slo_endpoints(client, engine):
    m = client.get("/v1/model")
    assert m.status_code == 200
    info = m.json()
    assert [f["name"] for f in info["schema"]] == engine.codec.schema.names
    conds = {c["name"]: c["values"] for c in info["condition_columns"]}
    assert set(conds) == set(engine.cond_columns) and "Female" in conds["sex"]
    assert {s["name"] for s in info["samplers"]} >= {"ddim", "ddpm", "dpmpp_2m", "unipc", "euler", "heun"}
    assert info["defaults"]["sampler"] == engine.config.sampler and info["slo_p99_ms"] == 150
    slo = client.get("/v1/slo").json()
    assert slo["target_p99_ms"] == 150 and slo["requests"] >= 1 and slo["p99_ms"] is not None
    assert client.get("/v1/slo", params={"window_s": 0}).status_code == 422
    assert client.get("/v1/slo", params={"window_s": 3600}).json()["window_s"] == 3600
    assert 0 <= slo["adherence"] <= 1 and slo["violations"] <= slo["requests"]
    assert set(slo["auto_steps"]) >= {"ddim", "dpmpp_2m"} and slo["latency_model"]
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/v1/sample" in spec["paths"] and "SampleRequest" in json.dumps(spec)


@pytest.mark.parametrize("body,loc", [
    ({"rows": 0}, ["body", "rows"]),
    ({"rows": 5001}, ["body", "rows"]),
    ({"rows": 1.5}, ["body", "rows"]),
    ({"conditions": {"nope": "x"}}, ["body", "conditions", "nope"]),
    ({"conditions": {"sex": "Martian"}}, ["body", "conditions", "sex"]),
    ({"conditions": {"age": 30}}, ["body", "conditions", "age"]),  # numeric column
    ({"rows": 3, "conditions": {"sex": ["Male"]}}, ["body", "conditions", "sex"]),
    ({"guidance": -1}, ["body", "guidance"]),
    ({"guidance": 1e9}, ["body", "guidance"]),
    ({"steps": 0}, ["body", "steps"]),
    ({"steps": 100000}, ["body", "steps"]),
    ({"sampler": "nope"}, ["body", "sampler"]),
    ({"seed": -5}, ["body", "seed"]),
    ({"format": "csv"}, ["body", "format"]),
    ({"rows": 1, "extra": True}, ["body", "extra"]),
])
def test_bad_requests_get_field_level_422(client, body, loc):
    r = client.post("/v1/sample", json=body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert any(d["loc"][:len(loc)] == loc for d in detail), detail
    assert all(d["msg"] for d in detail)


def test_malformed_and_oversized_bodies(client):
    for raw in (b"{not json", b'{"rows": NaN, "guidance": NaN}', b'{"guidance": Infinity}', b"[]", b"",
                b"\xff\xfe", b'{"rows": 1' + b" " * 100):
        r = client.post("/v1/sample", content=raw, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, (raw, r.status_code, r.text)
    assert client.post("/v1/sample", content=b'{"rows": 2}', headers={"content-type": "text/plain"}).status_code < 500
    big = json.dumps({"rows": 1, "conditions": {"sex": "x" * 70000}}).encode()
    r = client.post("/v1/sample", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_auth(cluster):
    import httpx

    with httpx.Client(base_url=cluster["base"], timeout=30) as anon:
        assert anon.post("/v1/sample", json={"rows": 1}).status_code == 401
        r = anon.get("/v1/model", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert anon.post("/v1/sample", content=b"{bad", headers={"content-type": "application/json"}).status_code == 401
        assert anon.get("/healthz").status_code == 200
        assert anon.post("/tight/v1/sample", json={"rows": 1, "steps": 2}).status_code == 200  # auth off there


def test_backpressure_answers_429_or_503_with_retry_after(cluster):
    import httpx

    async def burst():
        async with httpx.AsyncClient(base_url=cluster["base"], timeout=60) as ac:
            return await asyncio.gather(*[ac.post("/tight/v1/sample", json={"rows": 2500, "steps": 50,
                                                                              "format": "arrow"})
                                          for _ in range(16)])

    responses = asyncio.run(burst())
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429, 503}, codes
    assert 200 in codes and ({429, 503} & set(codes)), codes
    for r in responses:
        if r.status_code in (429, 503):
            assert int(r.headers["retry-after"]) >= 1
    assert 429 in codes, codes  # the app-level admission limit (max_inflight_rows) fired


def test_metrics_are_exported(cluster, client):
    client.post("/v1/sample", json={"rows": 3, "steps": 4, "sampler": "ddim"})
    wanted = ["ray_synth_request_latency_ms_bucket", "ray_synth_rows_generated", "ray_synth_nfe",
              "ray_synth_batch_size_bucket", "ray_synth_inflight_requests"]
    text = scrape_until(cluster["metrics"], lambda t: all(w in t for w in wanted) and re.search(
        r'ray_synth_request_latency_ms_bucket\{[^}]*sampler="ddim"[^}]*\}', t))
    missing = [w for w in wanted if w not in text]
    assert not missing, missing
    line = next(ln for ln in text.splitlines()
                if ln.startswith("ray_synth_request_latency_ms_bucket") and 'sampler="ddim"' in ln)
    assert 'steps="4"' in line or re.search(r'steps="\d+"', line)


def test_fuzzed_bodies_never_get_5xx(client):
    pytest.importorskip("hypothesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                        st.text(max_size=20), st.sampled_from(["Female", "Male", ">50K", "White", "ddim", "json"]))
    json_values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4)
                               | st.dictionaries(st.text(max_size=10), kids, max_size=4), max_leaves=12)
    fields = {
        "rows": st.one_of(st.integers(-3, 12), json_values),
        "conditions": st.one_of(st.dictionaries(st.sampled_from(["sex", "race", "age", "nope", "income"]),
                                                st.one_of(scalars, st.lists(scalars, max_size=3)), max_size=3),
                                json_values),
        "guidance": st.one_of(st.floats(allow_nan=True, allow_infinity=True), json_values),
        "sampler": st.one_of(st.sampled_from(["ddim", "ddpm", "heun", "x"]), json_values),
        "steps": st.one_of(st.integers(-2, 12), json_values),
        "seed": st.one_of(st.integers(-2**64, 2**64), json_values),
        "format": st.one_of(st.sampled_from(["json", "arrow", "parquet", "xml"]), json_values),
        "junk": json_values,
    }
    bodies = st.one_of(st.fixed_dictionaries({}, optional=fields), json_values)

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(body=bodies)
    def check(body):
        raw = json.dumps(body, allow_nan=True)
        r = client.post("/v1/sample", content=raw, headers={"content-type": "application/json"})
        assert r.status_code < 500, (raw, r.status_code, r.text[:500])
        if r.status_code == 200:
            assert r.headers["x-synth-steps"].isdigit()

    check()


def test_scheduler_merges_jobs_queued_while_busy(engine):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from synth.serving.scheduler import ModelScheduler

    gate, runs = threading.Event(), []

    def run(jobs):
        runs.append(len(jobs))
        gate.wait(5)
        return [f"r{j.seed}" for j in jobs], []

    async def scenario(max_requests):
        runs.clear()
        gate.clear()
        sched = ModelScheduler(run, max_requests=max_requests, max_cost=10**9, executor=ThreadPoolExecutor(1))
        first = sched.submit([_job(engine, 1, 0)])
        await asyncio.sleep(0.05)  # the model is now busy with job 0
        later = sched.submit([_job(engine, 1, s) for s in range(1, 6)])
        cancelled = sched.submit([_job(engine, 1, 99)])[0]
        cancelled.cancel()
        gate.set()
        return await asyncio.gather(*first, *later)

    assert asyncio.run(scenario(32)) == [f"r{s}" for s in range(6)]
    assert runs == [1, 5]  # everything queued while busy ran as one batch; the cancelled job never ran
    assert asyncio.run(scenario(1)) == [f"r{s}" for s in range(6)]
    assert runs == [1] * 6  # max_batch_size 1: nothing merged
