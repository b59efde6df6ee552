"""Issue 22: several models from one Serve deployment (`models:`, `@serve.multiplexed`).

Two tiny real artifacts of different tables and families (a diffusion model of Adult, a GAN of a
small table of its own) behind one deployment on the session Ray, over real HTTP: each model's rows
have that model's schema, by path and by Serve's header; an unknown id is a 404 naming how to list
the models; with one model per replica the second model's request evicts the first (LRU) and still
succeeds, which /v1/models and the Prometheus metrics show; each model keeps its own SLO state; a
model whose artifact is refused fails alone (500), the others keep serving."""
from __future__ import annotations

import re
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import scrape_until

from synth.errors import ConfigError
from synth.serving import ServeArgs

HEADER = "serve_multiplexed_model_id"


@pytest.fixture(scope="module")
def shop_artifact(tmp_path_factory) -> str:
    """A GAN (one pass: 1 network evaluation per row) of a small table unlike Adult."""
    from synth.config import RunConfig
    from synth.train.fit import fit

    d = tmp_path_factory.mktemp("shop")
    rng = np.random.default_rng(1)
    n = 400
    pq.write_table(pa.table({"colour": rng.choice(["red", "green", "blue"], n),
                             "size": rng.choice(["S", "M", "L"], n), "price": rng.gamma(2.0, 10.0, n)}),
                   d / "data.parquet")
    cfg = {"output": str(d / "run"), "data": {"uri": str(d / "data.parquet")},
           "train": {"steps": 4, "eval_every": 2, "batch_size": 50},
           "model": {"family": "gan", "noise_dim": 8, "gen_width": 16, "gen_depth": 1, "critic_width": 16,
                     "critic_depth": 1, "val_rows": 64},
           "evaluate": {"check": "warn"}}
    return fit(RunConfig.parse(cfg)).artifact_uri


@pytest.fixture(scope="module")
def broken_artifact(tiny_artifact, tmp_path_factory) -> str:
    """A copy of the Adult model whose weights were modified after training (integrity check fails)."""
    d = tmp_path_factory.mktemp("broken") / "model"
    shutil.copytree(tiny_artifact, d)
    weights = next(p for p in d.iterdir() if p.suffix == ".safetensors")
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    return str(d)


def test_models_config_is_validated():
    args = ServeArgs.parse({"artifact_uri": "a", "models": {"credit": "c"}})
    assert args.catalogue == {"default": "a", "credit": "c"} and args.default_id == "default"
    assert ServeArgs.parse({"models": {"x": "1", "y": "2"}}).default_id == "x"
    assert ServeArgs.parse({"models": {"x": "1", "y": "2"}, "default_model": "y"}).default_id == "y"
    for raw, says in [({}, "give artifact_uri"), ({"models": {"a/b": "x"}}, "model ids must match"),
                      ({"models": {"x": "1"}, "default_model": "z"}, "not one of the models"),
                      ({"artifact_uri": "a", "models": {"default": "b"}}, "rename one of them"),
                      ({"models": {"x": "1"}, "max_models_per_replica": 0}, "max_models_per_replica")]:
        with pytest.raises(ConfigError, match=says):
            ServeArgs.parse(raw)


def test_require_signature_is_checked_per_model_when_it_loads(tiny_artifact, shop_artifact, tmp_path):
    """In process (no Ray): the signed model serves, the unsigned one is refused alone (500)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from synth.io.artifact import sign_artifact
    from synth.serving.http import create_app
    from synth.serving.models import ModelHost

    key = Ed25519PrivateKey.generate()
    (tmp_path / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    (tmp_path / "k.pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    signed, unsigned = tmp_path / "signed", tmp_path / "unsigned"
    shutil.copytree(shop_artifact, signed)
    shutil.copytree(tiny_artifact, unsigned)
    sign_artifact(str(signed), str(tmp_path / "k.pem"))
    args = ServeArgs.parse({"models": {"shop": str(signed), "adult": str(unsigned)}, "calibrate": False,
                            "require_signature": True, "public_key": str(tmp_path / "k.pub")})
    host = ModelHost(args, executor=ThreadPoolExecutor(1))
    app = create_app(host)

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return (await c.post("/v1/sample", json={"rows": 2}),  # the default model: shop
                    await c.post("/v1/models/adult/sample", json={"rows": 2, "steps": 4}),
                    await c.get("/v1/models"))

    ok, refused, listing = asyncio.run(go())
    assert ok.status_code == 200 and ok.headers["x-synth-model"] == "shop", ok.text
    assert refused.status_code == 500 and "is not signed and a signature is required" in refused.json()["detail"]
    by_id = {m["id"]: m for m in listing.json()["models"]}
    assert by_id["shop"]["loaded"] and not by_id["adult"]["loaded"] and "not signed" in by_id["adult"]["load_error"]


@pytest.fixture(scope="module")
def mux(serve_http, tiny_artifact, shop_artifact, broken_artifact):
    """One replica holding at most one model: every switch of model is a load and an LRU eviction."""
    import httpx
    from ray import serve

    from serve.app import build_app

    serve.run(build_app({"models": {"adult": tiny_artifact, "shop": shop_artifact, "broken": broken_artifact},
                         "max_models_per_replica": 1, "num_replicas": 1, "num_cpus": 1, "calibrate": False,
                         "deployment_name": "Mux"}), name="mux", route_prefix="/mux")
    with httpx.Client(base_url=f"{serve_http['base']}/mux", timeout=120) as c:
        yield c
    serve.delete("mux")


def _records(r) -> pa.Table:
    assert r.status_code == 200, r.text
    return pa.Table.from_pylist(r.json()["records"])


def test_each_model_answers_with_its_own_schema_and_one_replica_keeps_one_loaded(mux, tiny_artifact, shop_artifact):
    from synth.families import load_engine

    adult, shop = load_engine(tiny_artifact), load_engine(shop_artifact)
    listing = mux.get("/v1/models").json()
    assert [m["id"] for m in listing["models"]] == ["adult", "shop", "broken"]
    assert listing["default_model"] == "adult" and listing["max_models_per_replica"] == 1
    assert listing["header"] == HEADER
    loaded = {m["id"]: m["loaded"] for m in listing["models"]}
    assert loaded == {"adult": True, "shop": False, "broken": False}  # the default is loaded at start-up

    a = mux.post("/v1/sample", json={"rows": 5, "seed": 1, "steps": 4})  # no id: the default model
    assert _records(a).column_names == adult.codec.schema.names and a.headers["x-synth-model"] == "adult"
    s = mux.post("/v1/models/shop/sample", json={"rows": 6, "seed": 1, "conditions": {"colour": "red"}})
    t = _records(s)
    assert t.column_names == shop.codec.schema.names and set(t["colour"].to_pylist()) == {"red"}
    assert s.headers["x-synth-model"] == "shop" and s.headers["x-synth-nfe"] == "1"  # one pass
    # the header picks the model too (and Serve's proxy routes on it); the path and the header agree
    h = mux.post("/v1/sample", json={"rows": 3, "steps": 4}, headers={HEADER: "adult"})
    assert _records(h).column_names == adult.codec.schema.names and h.headers["x-synth-model"] == "adult"
    assert mux.post("/v1/models/shop/sample", json={"rows": 1}, headers={HEADER: "adult"}).status_code == 400

    # max one model per replica: adult evicted shop again; its rows are still those of the same seed
    s2 = mux.post("/v1/models/shop/sample", json={"rows": 6, "seed": 1, "conditions": {"colour": "red"}})
    assert _records(s2).equals(t)
    listing = mux.get("/v1/models").json()
    by_id = {m["id"]: m for m in listing["models"]}
    assert by_id["shop"]["loaded"] and not by_id["adult"]["loaded"]
    # the family registry's cost of each model that this replica has loaded (kept after an eviction)
    assert by_id["shop"]["cost"]["family"] == "gan" and by_id["shop"]["cost"]["nfe_per_row"] == 1
    assert by_id["adult"]["cost"]["family"] == "diffusion"
    assert by_id["adult"]["cost"]["nfe_per_row"] == adult.cost(adult.config.sampler, adult.config.steps,
                                                               adult.config.guidance, conditioned=False)
    assert all("artifact_uri" in m and m["artifact_uri"] in (tiny_artifact, shop_artifact) or m["id"] == "broken"
               for m in listing["models"])


def test_unknown_model_is_404_naming_how_to_list(mux):
    for r in (mux.post("/v1/models/nope/sample", json={"rows": 1}),
              mux.post("/v1/sample", json={"rows": 1}, headers={HEADER: "nope"}),
              mux.get("/v1/models/nope"), mux.get("/v1/models/nope/slo")):
        assert r.status_code == 404, (r.status_code, r.text)
        assert "'nope'" in r.json()["detail"] and "GET /v1/models" in r.json()["detail"]


def test_a_model_that_fails_to_load_fails_alone(mux):
    r = mux.post("/v1/models/broken/sample", json={"rows": 1})
    assert r.status_code == 500 and "'broken' could not be loaded" in r.json()["detail"], r.text
    assert "modified after training" in r.json()["detail"] and int(r.headers["retry-after"]) >= 1
    again = mux.post("/v1/models/broken/sample", json={"rows": 1})  # remembered: not re-read per request
    assert again.status_code == 500
    entry = next(m for m in mux.get("/v1/models").json()["models"] if m["id"] == "broken")
    assert not entry["loaded"] and "modified after training" in entry["load_error"]
    assert mux.post("/v1/models/adult/sample", json={"rows": 2, "steps": 4}).status_code == 200


def test_each_model_keeps_its_own_slo_state_and_metrics(mux, serve_http):
    # (loaded again after eviction, each model's window starts fresh on this replica: count the delta)
    for _ in range(4):
        assert mux.post("/v1/models/adult/sample", json={"rows": 2, "steps": 4}).status_code == 200
    adult = mux.get("/v1/models/adult/slo").json()
    assert adult["model_id"] == "adult" and adult["requests"] >= 4
    assert mux.get("/v1/slo").json()["model_id"] == "adult"  # no id: the default model
    info = mux.get("/v1/models/adult").json()
    assert info["model_id"] == "adult" and info["cost"]["family"] == "diffusion"
    for _ in range(3):
        assert mux.post("/v1/models/shop/sample", json={"rows": 2}).status_code == 200
    shop = mux.get("/v1/slo", headers={HEADER: "shop"}).json()
    assert shop["model_id"] == "shop" and shop["requests"] == 3  # shop's own window: adult's are not in it
    assert shop["controller"]["measured_requests"] == 3

    wanted = [r'ray_synth_request_latency_ms_count\{[^}]*model="adult"', r'ray_synth_rows_generated_total\{[^}]*model="shop"',
              r'ray_synth_model_loads_total\{[^}]*model="shop"[^}]*outcome="evicted"|'
              r'ray_synth_model_loads_total\{[^}]*outcome="evicted"[^}]*model="shop"',
              r'ray_synth_model_loads_total\{[^}]*model="broken"[^}]*outcome="failed"|'
              r'ray_synth_model_loads_total\{[^}]*outcome="failed"[^}]*model="broken"',
              r'ray_synth_model_loaded\{[^}]*model="shop"[^}]*\} 1']
    text = scrape_until(serve_http["metrics"], lambda t: all(re.search(w, t) for w in wanted))
    assert all(re.search(w, text) for w in wanted), [w for w in wanted if not re.search(w, text)]
