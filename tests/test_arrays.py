"""Array columns (issue 11): the array kind's exact round trip and refusals, the array diffusion
family (fit, conditional sampling, artifact reload, errors), the configs, and the endpoint
(JSON, Arrow and PNG over real HTTP)."""
from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from synth.config import RunConfig
from synth.errors import ConfigError, DataError
from synth.table import TableCodec
from synth.table.columns.array import flatten

REPO = Path(__file__).resolve().parents[1]
TINY_UNET = {"channels": [16, 32], "layers_per_block": 1, "attention": True, "norm_groups": 8}


def mixed_array_table(n: int = 60, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    tensor = pa.ExtensionArray.from_storage(
        pa.fixed_shape_tensor(pa.uint8(), [8, 8]),
        pa.FixedSizeListArray.from_arrays(pa.array(rng.integers(0, 17, n * 64).astype(np.uint8)), 64))
    nested = pa.FixedSizeListArray.from_arrays(
        pa.FixedSizeListArray.from_arrays(pa.array(rng.normal(size=n * 12).astype(np.float32)), 4), 3)
    plain = pa.array([list(rng.normal(size=5)) for _ in range(n)])  # list<double>, as pandas writes it
    big = pa.array([[list(rng.integers(-3, 9, 3)) for _ in range(2)] for _ in range(n)],
                   pa.large_list(pa.list_(pa.int16())))
    return pa.table({"img": tensor, "nested": nested, "plain": plain, "big": big,
                     "label": pa.array([f"c{i % 3}" for i in range(n)])})


def test_array_kind_round_trip_keeps_values_and_arrow_types(tmp_path):
    import pyarrow.parquet as pq

    table = mixed_array_table()
    pq.write_table(table, tmp_path / "a.parquet")  # through Parquet, as the reference data arrives
    table = pq.read_table(tmp_path / "a.parquet")
    codec = TableCodec.fit(table.to_batches(max_chunksize=17))  # statistics merged over batches
    assert codec.kinds() == {"img": "array", "nested": "array", "plain": "array", "big": "array",
                             "label": "categorical"}
    assert codec.width == 64 + 12 + 5 + 6 + 3
    assert [c.shape for c in codec.columns[:4]] == [[8, 8], [3, 4], [5], [2, 3]]
    state = json.loads(json.dumps(codec.to_dict()))
    for c in (codec, TableCodec.from_dict(state)):
        x = c.encode(table)
        assert x.shape == (60, c.width) and x.min() >= -1 and x.max() <= 1
        back = c.decode(x)
        assert back.schema.equals(table.schema)
        for name in ("img", "nested", "big", "label"):  # integers and float32: bit-exact
            assert back.column(name).equals(table.column(name)), name
        np.testing.assert_allclose(flatten("plain", back.column("plain"))[0], flatten("plain", table.column("plain"))[0],
                                   rtol=1e-14, atol=1e-14)  # float64: exact up to the affine map's rounding


@pytest.mark.parametrize("column, match", [
    (pa.array([[1.0, 2.0], [1.0]]), "'a' has ragged lists: lengths from 1 to 2"),
    (pa.array([[[1, 2], [3, 4]], [[1, 2], [3]]]), "'a' has ragged lists at depth 2"),
    (pa.array([[1.0, float("nan")], [1.0, 2.0]]), "'a' has 1 NaN or infinite values inside its arrays"),
    (pa.array([[1.0, float("inf")], [1.0, 2.0]]), "'a' has 1 NaN or infinite values inside its arrays"),
    (pa.array([[1.0, 2.0], None]), "'a' has 1 null arrays"),
    (pa.array([[1.0, None], [1.0, 2.0]]), "'a' has 1 null elements"),
    (pa.array([["x"], ["y"]]), "'a' holds lists of string"),
])
def test_bad_arrays_are_named(column, match):
    with pytest.raises(DataError, match=match):
        TableCodec.fit([pa.table({"a": column})])


def test_wrong_shape_is_refused_by_name():
    table = mixed_array_table()
    codec = TableCodec.fit([table])
    wrong = table.set_column(2, "plain", pa.array([[0.0] * 4] * table.num_rows))
    with pytest.raises(DataError, match=r"'plain' has arrays of shape \(4,\), expected \(5,\)"):
        codec.encode(wrong)
    a, b = pa.table({"a": pa.array([[1.0, 2.0]])}), pa.table({"a": pa.array([[1.0, 2.0, 3.0]])})
    with pytest.raises(DataError, match=r"'a' has arrays of shape \(3,\), expected \(2,\)"):
        TableCodec.fit([a, b])
    with pytest.raises(ConfigError, match="'plain' holds fixed-shape arrays"):
        TableCodec.fit([table], __import__("synth.table", fromlist=["CodecConfig"]).CodecConfig(
            overrides={"plain": "continuous"}))


def test_split_hashes_array_rows():
    from synth.io.data import SplitConfig, split_labels

    table = mixed_array_table(200)
    labels = split_labels(table, SplitConfig())
    assert set(labels) <= {0, 1, 2} and (labels == 0).mean() > 0.5
    np.testing.assert_array_equal(labels[:50], split_labels(table.slice(0, 50), SplitConfig()))


# -- the array family -----------------------------------------------------------------------------
def digits_run(out: Path, steps: int = 40, **model) -> RunConfig:
    return RunConfig.parse({
        "name": "digits-test", "output": str(out), "data": {"uri": "bundled:digits"},
        "model": {"family": "array", "net": TINY_UNET, "steps": 4, **model},
        "train": {"steps": steps, "batch_size": 64, "eval_every": steps, "warmup_steps": 5, "threads": 2,
                  "precision": "fp32"}})


@pytest.fixture(scope="module")
def digits_artifact(tmp_path_factory) -> str:
    from synth.train.fit import fit

    return fit(digits_run(tmp_path_factory.mktemp("digits"))).artifact_uri


def test_digits_fit_sample_conditions_and_reload(digits_artifact):
    from synth.families import load_engine
    from synth.engine.array import ArrayEngine

    engine = load_engine(digits_artifact)
    assert isinstance(engine, ArrayEngine) and engine.layout == "image" and engine.shape == (1, 8, 8)
    assert engine.cond_columns == ["digit"] and engine.cond_cards == [10]
    assert engine.manifest["family"] == "array" and engine.manifest["columns"] == {"image": "array",
                                                                                    "digit": "categorical"}
    labels = [d for d in range(10) for _ in range(3)]
    t = engine.sample(30, {"digit": labels}, guidance=2.0, seed=5)
    assert t.schema.field("image").type == pa.fixed_shape_tensor(pa.uint8(), [8, 8])
    assert t.column("digit").to_pylist() == labels  # requested labels exactly
    x, shape = flatten("image", t.column("image"))
    assert shape == [8, 8] and x.min() >= 0 and x.max() <= 16
    assert x.std() > 0.5  # not a constant image
    again = load_engine(digits_artifact).sample(30, {"digit": labels}, guidance=2.0, seed=5)
    assert again.equals(t)  # same artifact + seed -> same rows
    free = engine.sample(40, seed=1)  # labels drawn from the reference frequencies
    assert set(free.column("digit").to_pylist()) <= set(range(10)) and len(set(free.column("digit").to_pylist())) > 3
    assert engine.cost("ddim", 4, 2.0) == 8 and engine.cost("ddim", 4, 1.0) == 4
    with pytest.raises(ConfigError, match="has no category 11"):
        engine.sample(2, {"digit": 11})
    with pytest.raises(ConfigError, match="'image' is array; conditions are supported on categorical"):
        engine.sample(2, {"image": 1})
    with pytest.raises(ConfigError, match="unknown sampler 'distilled'"):
        engine.sample(2, sampler="distilled")


def test_series_layout_and_family_errors(tmp_path):
    import pyarrow.parquet as pq

    from synth.engine.array import ArrayConfig, ArrayEngine
    from synth.train.fit import fit

    rng = np.random.default_rng(0)
    t = np.arange(32)
    win = np.sin(2 * np.pi * (t[None] / rng.uniform(6, 12, (300, 1)) + rng.uniform(0, 1, (300, 1))))
    table = pa.table({"w": pa.FixedSizeListArray.from_arrays(pa.array(win.reshape(-1).astype(np.float32)), 32),
                      "kind": pa.array(["a", "b"] * 150), "x": pa.array(rng.normal(size=300))})
    pq.write_table(table, tmp_path / "s.parquet")
    raw = {"output": str(tmp_path / "run"), "data": {"uri": str(tmp_path / "s.parquet"), "codec": {"ignore": ["x"]}},
           "model": {"family": "array", "net": {"channels": [16], "depth": 3, "norm_groups": 4}, "steps": 3},
           "train": {"steps": 20, "batch_size": 64, "eval_every": 20, "warmup_steps": 2, "precision": "fp32"}}
    from synth.families import load_engine

    engine = load_engine(fit(RunConfig.parse(raw)).artifact_uri)
    assert engine.layout == "series" and engine.shape == (1, 32)
    out = engine.sample(6, {"kind": "b"}, sampler="dpmpp_2m", seed=0)
    assert out.schema.field("w").type == pa.list_(pa.float32(), 32) and out.column("kind").to_pylist() == ["b"] * 6
    codec = TableCodec.fit([table])
    with pytest.raises(ConfigError, match=r"'x': 'continuous'.*data.codec.ignore"):
        ArrayEngine(ArrayConfig(), codec)
    with pytest.raises(ConfigError, match="needs an array column"):
        ArrayEngine(ArrayConfig(), TableCodec.fit([table.select(["kind", "x"])]))
    with pytest.raises(ConfigError, match="cannot be modelled as image"):
        ArrayEngine(ArrayConfig(layout="image"), TableCodec.fit([table.select(["w", "kind"])]))
    with pytest.raises(ConfigError, match="model.net: .*halved"):
        ArrayEngine(ArrayConfig(layout="image", net={"channels": [8, 8, 8, 8, 8]}),
                    TableCodec.fit([pa.table({"im": pa.array([[[1.0] * 6] * 6] * 4)})]))


def test_array_configs_are_valid():
    for name in ("digits.yaml", "series.yaml"):
        cfg = RunConfig.from_yaml(str(REPO / "configs" / name))
        assert cfg.model.family == "array"
    with pytest.raises(ConfigError, match="model.net.channels"):
        RunConfig.parse({"model": {"family": "array", "net": {"channels": []}}})


# -- the endpoint over real HTTP (uvicorn on a free port, no Ray) -----------------------------------
@pytest.fixture(scope="module")
def http(digits_artifact):
    import httpx
    import uvicorn

    from synth.serving.config import ServeArgs
    from synth.serving.http import create_app
    from synth.serving.models import ModelHost
    from synth.serving.service import SamplingService
    from tests.conftest import free_port

    svc = SamplingService(ServeArgs(artifact_uri=digits_artifact, calibrate=False))
    svc.warm_up()
    host = ModelHost(svc.args, executor=None)
    host.add(svc)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(host), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        yield client
    server.should_exit = True
    thread.join(5)


def test_endpoint_json_arrow_and_png(http):
    from PIL import Image

    body = {"rows": 4, "conditions": {"digit": [1, 2, 3, 4]}, "seed": 3, "steps": 4}
    r = http.post("/v1/sample", json={**body, "format": "json"})
    assert r.status_code == 200, r.text
    recs = r.json()["records"]
    assert [rec["digit"] for rec in recs] == [1, 2, 3, 4] and all(len(rec["image"]) == 64 for rec in recs)
    r = http.post("/v1/sample", json={**body, "format": "arrow"})
    table = pa.ipc.open_stream(r.content).read_all()
    assert table.schema.field("image").type == pa.fixed_shape_tensor(pa.uint8(), [8, 8])
    assert flatten("image", table.column("image"))[0].tolist() == [rec["image"] for rec in recs]  # same seed, same rows
    r = http.post("/v1/sample", json={**body, "format": "png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = np.asarray(Image.open(io.BytesIO(r.content)))
    assert img.shape == (8, 32)
    expect = np.round(np.concatenate(list(flatten("image", table.column("image"))[0].reshape(4, 8, 8)), axis=1)
                      / 16 * 255)
    np.testing.assert_array_equal(img, expect)
    free = [http.post("/v1/sample", json={"rows": 6, "seed": 9, "steps": 4, "format": "arrow"}).content
            for _ in range(2)]  # labels drawn from the request's own seed: reproducible
    assert free[0] == free[1]
    r = http.post("/v1/sample", json={"rows": 2, "conditions": {"digit": 12}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "conditions", "digit"]
    info = http.get("/v1/model").json()
    assert "png" in info["formats"]


def test_digits_on_ray_train_workers(ray_session, tmp_path):
    """The array family through the Ray Train path (Ray Data statistics and encoding, a worker)."""
    from synth.families import load_engine
    from synth.train.fit import fit

    raw = digits_run(tmp_path / "ray", steps=6).model_dump(mode="json")
    raw["scaling"] = {"num_workers": 1, "cpus_per_worker": 1, "storage_path": str(tmp_path / "ray-ckpt")}
    res = fit(RunConfig.parse(raw))
    engine = load_engine(res.artifact_uri)
    assert engine.family == "array" and engine.manifest["workers"] == 1
    t = engine.sample(3, {"digit": 7}, steps=2, seed=0)
    assert t.column("digit").to_pylist() == [7, 7, 7]


def test_bulk_synthesis_and_evaluation_of_an_array_model(ray_session, digits_artifact, tmp_path):
    """Bulk synthesis (Ray Data actors) writes fixed-shape tensor shards with the requested label
    mix; `synth evaluate` scores the image column (KID, precision/recall, label accuracy against
    real floors) next to the tabular metrics of the label column."""
    import subprocess
    import sys

    import pyarrow.parquet as pq

    from synth.pipelines.synthesize import SynthesizeConfig, synthesize

    out = tmp_path / "syn"
    m = synthesize(SynthesizeConfig(artifact=digits_artifact, output=str(out), rows=600, shard_rows=250,
                                    batch_rows=100, steps=4, guidance=2.0, actors=2, cpus_per_actor=0.5,
                                    conditions={"mix": {"digit": {str(d): 60 for d in range(10)}}}))
    files = sorted(out.glob("part-*.parquet"))
    assert len(files) == 3 and [s["rows"] for s in m["shards"]] == [250, 250, 100]
    table = pq.ParquetDataset([str(f) for f in files]).read()
    assert table.schema.field("image").type == pa.fixed_shape_tensor(pa.uint8(), [8, 8])
    assert sorted(table.column("digit").value_counts().to_pylist(), key=lambda v: v["values"]) == \
        [{"values": d, "counts": 60} for d in range(10)]
    assert m["nfe"] == 8  # 4 guided steps, two evaluations each

    r = subprocess.run([sys.executable, "-m", "synth.cli", "evaluate", str(out), "--artifact", digits_artifact,
                        "--output", str(tmp_path / "ev.json")], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    ev = json.loads((tmp_path / "ev.json").read_text())
    img = ev["arrays"]["image"]
    assert img["kind"] == "image" and img["shape"] == [8, 8] and img["label"] == "digit"
    floor = img["reference"]
    assert floor["real_heldout_label_accuracy"] > 0.85 and abs(floor["real_train"]["kid"]) < 0.05
    assert 0 <= img["label_accuracy"] <= 1 and 0 <= img["precision"] <= 1 and img["kid"] > floor["real_train"]["kid"]
    assert ev["column_shapes"]["mean"] > 0.9  # the label mix is the reference's near-uniform one
    assert "image: KID" in r.stdout + r.stderr and "digit accuracy" in r.stdout + r.stderr

    from synth.report import report_for

    rep = report_for(str(out), artifact=digits_artifact, output=str(tmp_path / "report.html"))
    doc = (tmp_path / "report.html").read_text()
    assert rep.evaluation["arrays"]["image"]["kid"] == pytest.approx(img["kid"])
    assert doc.count('class="plot array image" data-column="image"') == 1 and "data:image/png;base64" in doc
    assert 'data-column="digit"' in doc and 'data-column="image"' in doc.split('id="arrays"')[1]


def test_series_evaluation_scores_temporal_structure():
    """The series metrics see time: real windows score near their floor, time-shuffled windows do not."""
    from synth.evaluate.arrays import evaluate_arrays

    rng = np.random.default_rng(0)
    t = np.arange(48)

    def windows(n, shuffle=False):
        x = np.sin(2 * np.pi * (t[None, :] / 12 + rng.random((n, 1)))) + 0.2 * rng.normal(size=(n, 48))
        x = rng.permuted(x, axis=1) if shuffle else x
        return pa.table({"w": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 48)})

    kinds = {"w": "array"}
    good = evaluate_arrays(windows(300), windows(200), windows(200), kinds)["w"]
    bad = evaluate_arrays(windows(300), windows(200), windows(200, shuffle=True), kinds)["w"]
    assert good["kind"] == "series" and good["shape"] == [48]
    assert good["acf_mae"] < 0.05 < bad["acf_mae"]
    assert good["log_spectral_distance"] < bad["log_spectral_distance"] / 3
    assert bad["acf_mae"] == pytest.approx(good["reference"]["time_shuffled_real"]["acf_mae"], rel=0.5)
