"""Bulk synthesis on a local Ray: exact rows, schema, deterministic bytes, resume after a crash,
conditions, manifest, and clear errors that leave nothing half-written."""
import json
import os
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from synth.errors import ArtifactError, ConfigError
from synth.pipelines.synthesize import MANIFEST, SynthesizeConfig, synthesize

pytestmark = [pytest.mark.ray]


def cfg(artifact, out, **kw):
    base = {"artifact": artifact, "output": str(out), "rows": 2500, "shard_rows": 1000, "batch_rows": 600,
            "steps": 4, "actors": 2, "cpus_per_actor": 0.5}
    return SynthesizeConfig(**{**base, **kw})


def read_all(out):
    return pq.ParquetDataset(sorted(str(p) for p in out.glob("part-*.parquet"))).read()


def test_exact_rows_schema_and_manifest(ray_session, tiny_artifact, tmp_path):
    out = tmp_path / "syn"
    m = synthesize(cfg(tiny_artifact, out))
    files = sorted(os.listdir(out))
    assert [f for f in files if f.startswith("part-")] == ["part-00000.parquet", "part-00001.parquet",
                                                          "part-00002.parquet"]
    table = read_all(out)
    ref = pq.read_schema("synth/datasets/adult.parquet").remove_metadata()
    assert table.num_rows == 2500 and table.schema.remove_metadata() == ref
    disk = json.loads((out / MANIFEST).read_text())
    assert disk["rows"] == 2500 and [s["rows"] for s in disk["shards"]] == [1000, 1000, 500]
    assert disk["artifact"]["artifact_id"] == m["artifact"]["artifact_id"] and disk["nfe"] == 4
    import hashlib

    for s in disk["shards"]:
        assert hashlib.sha256((out / s["file"]).read_bytes()).hexdigest() == s["sha256"]


def test_rerun_is_byte_identical_and_resumes_missing_shards(ray_session, tiny_artifact, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    synthesize(cfg(tiny_artifact, a))
    synthesize(cfg(tiny_artifact, b, actors=1))
    for name in ("part-00000.parquet", "part-00001.parquet", "part-00002.parquet"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    # simulate a crash: one shard lost, one corrupted; the rerun rewrites only those two
    (b / "part-00001.parquet").unlink()
    (b / "part-00002.parquet").write_bytes(b"garbage")
    m = synthesize(cfg(tiny_artifact, b))
    assert m["resumed_shards"] == 1
    for name in ("part-00000.parquet", "part-00001.parquet", "part-00002.parquet"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_killed_job_resumes_to_identical_output(ray_session, tiny_artifact, tmp_path):
    """A real `synth synthesize` process killed mid-run, then rerun: same bytes as uninterrupted."""
    ref, out = tmp_path / "ref", tmp_path / "out"
    args = ["--rows", "6000", "--shard-rows", "500", "--actors", "1", "--steps", "4"]
    synthesize(cfg(tiny_artifact, ref, rows=6000, shard_rows=500, actors=1, batch_rows=8192))
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}  # join the session's Ray
    proc = subprocess.Popen([sys.executable, "-m", "synth.cli", "synthesize", tiny_artifact, "-o", str(out), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while time.time() < deadline and len(list(out.glob("part-*.parquet"))) < 2 and proc.poll() is None:
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    partial = len(list(out.glob("part-*.parquet")))
    assert 0 < partial < 12, proc.stdout.read().decode()[-2000:]
    subprocess.run([sys.executable, "-m", "synth.cli", "synthesize", tiny_artifact, "-o", str(out), *args],
                   env=env, check=True, capture_output=True)
    for p in sorted(ref.glob("part-*.parquet")):
        assert (out / p.name).read_bytes() == p.read_bytes()
    assert not list(out.glob(".tmp-*"))


def test_conditions_fixed_reference_and_mix(ray_session, tiny_artifact, tmp_path):
    synthesize(cfg(tiny_artifact, tmp_path / "f", conditions={"fixed": {"sex": "Female"}}))
    assert set(read_all(tmp_path / "f").column("sex").to_pylist()) == {"Female"}
    synthesize(cfg(tiny_artifact, tmp_path / "m", conditions={"mix": {"income": {">50K": 2000, "<=50K": 500}}}))
    inc = read_all(tmp_path / "m").column("income").to_pylist()
    assert inc.count(">50K") == 2000 and inc.count("<=50K") == 500
    synthesize(cfg(tiny_artifact, tmp_path / "r", conditions={"reference": ["race"]}))
    race = read_all(tmp_path / "r").column("race").to_pylist()
    assert 0.75 < race.count("White") / len(race) < 0.95  # reference share is ~0.85


@pytest.mark.parametrize("kw,err,match", [
    ({"conditions": {"fixed": {"nope": "x"}}}, ConfigError, "unknown column 'nope'"),
    ({"conditions": {"fixed": {"sex": "Robot"}}}, ConfigError, "no category 'Robot'"),
    ({"conditions": {"mix": {"income": {">50K": 5}}}}, ConfigError, "make them equal"),
    ({"steps": 0}, ConfigError, "steps must be"),
])
def test_bad_requests_write_nothing(tiny_artifact, tmp_path, kw, err, match):
    out = tmp_path / "bad"
    with pytest.raises(err, match=match):
        synthesize(cfg(tiny_artifact, out, **kw))
    assert not out.exists() or not list(out.glob("part-*"))


def test_bad_outputs_and_artifacts(tiny_artifact, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not synth shards"):
        synthesize(cfg(tiny_artifact, foreign))
    with pytest.raises(ArtifactError, match="no model artifact"):
        synthesize(cfg(str(tmp_path / "missing"), tmp_path / "o"))
    with pytest.raises(ValueError, match="rows must be a positive integer"):
        cfg(tiny_artifact, tmp_path / "o", rows=0)
