"""Bad input found on a newcomer's path (issue 15): each is one line naming the column, value or
file and what to do, exit 2 from the CLI (422 from the endpoint), and nothing half-written."""
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synth.errors import ArtifactError, ConfigError, DataError, SynthError

REPO = Path(__file__).resolve().parents[1]


def synth(*args, env=None):
    import os

    return subprocess.run([sys.executable, "-m", "synth.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=600, env={**os.environ, **(env or {})})


def one_line_error(r: subprocess.CompletedProcess) -> str:
    """The CLI's error: exit 2, one line on stderr, no traceback."""
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
    return lines[0]


# --------------------------------------------------------------------------- the artifact's manifest
@pytest.mark.parametrize("content,kind", [("[1, 2]", "array"), ('"x"', "string"), ("3", "number"), ("null", "null")])
def test_manifest_that_is_not_an_object_is_refused(tiny_artifact, tmp_path, content, kind):
    from synth.io.artifact import read_artifact

    art = tmp_path / "model"
    shutil.copytree(tiny_artifact, art)
    (art / "manifest.json").write_text(content)
    with pytest.raises(ArtifactError, match=rf"manifest.json holds a JSON {kind}, not a manifest"):
        read_artifact(str(art))
    (art / "manifest.json").write_text(json.dumps({"format_version": 1, "files": ["engine.json"]}))
    with pytest.raises(ArtifactError, match="its files field is not an object"):
        read_artifact(str(art))


def test_inspect_a_manifest_that_is_a_list(tiny_artifact, tmp_path):
    art = tmp_path / "model"
    shutil.copytree(tiny_artifact, art)
    (art / "manifest.json").write_text("[]")
    line = one_line_error(synth("inspect", art))
    assert "manifest.json holds a JSON array, not a manifest" in line


# --------------------------------------------------------------------------- reference data
def _write_bad_tables(d: Path) -> None:
    pq.write_table(pa.table({"a": pa.array([None] * 300, pa.float64())}), d / "onlynull.parquet")
    pq.write_table(pa.table({"a": pa.array([], pa.float64()), "b": pa.array([], pa.string())}), d / "norows.parquet")
    pq.write_table(pa.Table.from_arrays([pa.array(range(300)), pa.array(np.arange(300) * 0.5)], names=["x", "x"]),
                   d / "duplicate.parquet")
    u = np.arange(300, dtype=np.uint64)
    u[:3] = np.uint64(2**63 + 5)
    pq.write_table(pa.table({"u": pa.array(u, pa.uint64()), "v": np.arange(300) * 0.5}), d / "uint64.parquet")
    ids = np.arange(300, dtype=np.int64) * 2 + (2**53 + 1)
    pq.write_table(pa.table({"big": ids, "v": np.arange(300) % 7}), d / "bigint.parquet")


@pytest.mark.parametrize("name,message", [
    ("onlynull", "column 'a' is entirely null; drop it or list it under `ignore`"),
    ("norows", "norows.parquet' has no rows"),
    ("duplicate", "has more than one column named 'x'; rename the duplicates"),
    ("uint64", "column 'u' holds integers beyond the +-2**53"),
    ("bigint", "column 'big' holds integers beyond the +-2**53"),
])
def test_fit_refuses_with_one_line_and_writes_nothing(tmp_path, name, message):
    _write_bad_tables(tmp_path)
    out = tmp_path / "run"
    r = synth("fit", "--data", tmp_path / f"{name}.parquet", "--output", out, "--steps", "2")
    line = one_line_error(r)
    assert message in line, line
    assert "9223372036854775813" not in line and "9007199254741591" not in line  # no data value in errors
    assert "training" not in r.stderr and "steps" not in r.stderr.replace("--steps", "")  # no progress bar first
    assert not out.exists()  # not even an empty folder


def test_large_integers_are_refused_by_the_codec_and_fit_when_ignored(tmp_path):
    """float64 statistics cannot hold 2**53 + 1: such a column is refused (naming it, not its values)
    instead of a codec that cannot encode its own training rows; listed under `ignore`, the rest is
    modelled; recognised as an identifier (value protection), it comes out as fresh identifiers."""
    from synth.table import CodecConfig, TableCodec

    ids = pa.array(np.arange(200, dtype=np.int64) + 2**53)  # the first value, 2**53, is still exact
    table = pa.table({"id": ids, "v": np.arange(200) * 0.25})
    with pytest.raises(DataError, match=r"column 'id' holds integers beyond the \+-2\*\*53") as e:
        TableCodec.fit([table], CodecConfig(value_protection=False))
    assert "9007199254741191" not in str(e.value)
    assert TableCodec.fit([table]).kinds() == {"id": "id", "v": "continuous"}
    codec = TableCodec.fit([table], CodecConfig(ignore=["id"]))
    assert list(codec.by_name) == ["v"] and codec.encode(table.drop_columns(["id"])).shape == (200, 1)
    exact = pa.table({"id": pa.array(np.arange(200, dtype=np.int64) - 2**53), "v": np.arange(200) * 0.25})
    TableCodec.fit([exact])  # -2**53 .. exactly representable: accepted
    from synth.table.stats import TableStats

    st = TableStats.empty(table.schema).add_batch(table)
    merged = TableStats.from_dict(json.loads(json.dumps(TableStats.empty(table.schema).to_dict())))
    merged.merge(TableStats.from_dict(json.loads(json.dumps(st.to_dict()))))  # Ray workers merge dicts
    assert merged.columns["id"].inexact == 2**53 + 199


def test_duplicate_names_are_refused_by_the_statistics():
    from synth.table.stats import TableStats

    t = pa.Table.from_arrays([pa.array([1, 2]), pa.array([3, 4])], names=["x", "x"])
    with pytest.raises(DataError, match="more than one column named 'x'"):
        TableStats.empty(t.schema)


# --------------------------------------------------------------------------- endpoint conditions
@pytest.fixture(scope="module")
def typed_artifact(tmp_path_factory) -> str:
    """A tiny model of a table with a boolean column and an integer column modelled as categories."""
    from synth.config import RunConfig
    from synth.train.fit import fit

    d = tmp_path_factory.mktemp("typed")
    rng = np.random.default_rng(0)
    n = 600
    grade = rng.integers(1, 4, n)
    pq.write_table(pa.table({"flag": rng.random(n) < 0.3, "grade": grade,
                             "score": grade * 10 + rng.normal(size=n)}), d / "data.parquet")
    cfg = {"output": str(d / "run"), "data": {"uri": str(d / "data.parquet"),
                                             "codec": {"overrides": {"grade": "categorical"}}},
           "train": {"steps": 4, "eval_every": 2, "batch_size": 64},
           "model": {"family": "diffusion", "net": {"width": 32, "depth": 1, "embed_dim": 16}},
           "evaluate": {"check": "warn"}}
    return fit(RunConfig.parse(cfg)).artifact_uri


@pytest.fixture(scope="module")
def http(typed_artifact):
    """The endpoint's FastAPI app with its real sampling service, in this process (no Ray)."""
    from fastapi.testclient import TestClient

    from synth.serving.config import ServeArgs
    from synth.serving.http import create_app
    from synth.serving.models import ModelHost
    from synth.serving.service import SamplingService

    svc = SamplingService(ServeArgs(artifact_uri=typed_artifact, calibrate=False))
    svc.warm_up()
    host = ModelHost(svc.args, executor=None)  # no auth; the model runs on the loop's default executor
    host.add(svc)
    with TestClient(create_app(host)) as client:
        yield client


@pytest.mark.parametrize("conditions,column,says", [
    ({"flag": 1}, "flag", "holds boolean values but the value 1 is a int; give true or false"),
    ({"flag": [True, 0]}, "flag", "the value 0 is a int; give true or false"),
    ({"flag": "true"}, "flag", "the value 'true' is a str; give true or false"),
    ({"grade": True}, "grade", "holds int64 values but the value True is a bool; give a number"),
    ({"grade": [1, False]}, "grade", "the value False is a bool; give a number"),
])
def test_condition_of_the_other_type_is_refused_at_validation(http, conditions, column, says):
    rows = max(len(v) if isinstance(v, list) else 1 for v in conditions.values())
    r = http.post("/v1/sample", json={"rows": rows, "conditions": conditions, "steps": 2})
    assert r.status_code == 422, (r.status_code, r.text)
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", "conditions", column] and f"column {column!r}" in err["msg"], err
    assert says in err["msg"], err


def test_conditions_of_the_right_type_are_met(http):
    r = http.post("/v1/sample", json={"rows": 4, "conditions": {"flag": True, "grade": 3}, "steps": 2, "seed": 1})
    assert r.status_code == 200, r.text
    assert {(rec["flag"], rec["grade"]) for rec in r.json()["records"]} == {(True, 3)}
    r = http.post("/v1/sample", json={"rows": 2, "conditions": {"grade": 2.0}, "steps": 2})  # JSON 2.0 is 2
    assert r.status_code == 200 and {rec["grade"] for rec in r.json()["records"]} == {2}, r.text


def test_engine_refuses_condition_types_too(typed_artifact):
    from synth.families import load_engine

    engine = load_engine(typed_artifact)
    with pytest.raises(ConfigError, match="column 'flag' holds boolean values"):
        engine.sample(3, {"flag": 1}, steps=2)
    with pytest.raises(ConfigError, match="column 'grade' holds int64 values"):
        engine.sample(3, {"grade": np.bool_(True)}, steps=2)


# --------------------------------------------------------------------------- object stores
def test_unreachable_object_store_fails_fast_with_one_line(tmp_path):
    """No network here: GCS retries for minutes by default; synth gives up after
    SYNTH_STORAGE_TIMEOUT_S and names the URI. (With network but no credentials, the same.)"""
    t0 = time.perf_counter()
    r = synth("inspect", "gs://synth-test-no-such-bucket/model", env={"SYNTH_STORAGE_TIMEOUT_S": "3",
                                                                      "GOOGLE_APPLICATION_CREDENTIALS": ""})
    took = time.perf_counter() - t0
    line = one_line_error(r)
    assert "'gs://synth-test-no-such-bucket/model'" in line and "SYNTH_STORAGE_TIMEOUT_S=3" in line, line
    assert took < 40, took


def test_storage_errors_name_the_uri(monkeypatch):
    from synth.io import storage

    monkeypatch.setenv("SYNTH_STORAGE_TIMEOUT_S", "2")
    with pytest.raises(SynthError, match=r"cannot reach 'gs://synth-test-no-such-bucket/x\.json'") as e:
        storage.read_bytes("gs://synth-test-no-such-bucket/x.json")
    assert "\n" not in str(e.value)
    monkeypatch.setenv("SYNTH_STORAGE_TIMEOUT_S", "soon")
    with pytest.raises(SynthError, match="SYNTH_STORAGE_TIMEOUT_S must be a number"):
        storage.resolve("gs://b/x")
