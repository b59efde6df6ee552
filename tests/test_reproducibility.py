"""Same seed -> same rows, whatever the batch size, the number of rows, the shard layout or the
actor count (synth.engine.rowstreams); `synth replay` re-runs a bulk synthesis and checks its bytes."""
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO


def assert_same_rows(a: pa.Table, b: pa.Table) -> None:
    """Categories identical; numbers equal up to the float rounding of differently shaped batches."""
    assert a.schema.remove_metadata() == b.schema.remove_metadata() and a.num_rows == b.num_rows
    for name in a.column_names:
        x, y = a[name].to_pylist(), b[name].to_pylist()
        if pa.types.is_floating(a.schema.field(name).type) or pa.types.is_integer(a.schema.field(name).type):
            np.testing.assert_allclose(np.array(x, dtype=float), np.array(y, dtype=float), rtol=1e-4, atol=1.0,
                                       err_msg=name)
        else:
            assert x == y, name


@pytest.fixture(scope="module")
def engine(tiny_artifact):
    from synth.families import load_engine

    return load_engine(tiny_artifact)


@pytest.mark.parametrize("sampler", ["ddim", "euler"])
def test_batch_size_and_row_count_do_not_change_rows(engine, sampler):
    bs = engine.config.sample_batch_size
    try:
        engine.config.sample_batch_size = 8192
        big = engine.sample(300, seed=11, sampler=sampler, steps=4)
        engine.config.sample_batch_size = 100
        small = engine.sample(300, seed=11, sampler=sampler, steps=4)
        engine.config.sample_batch_size = 37  # not a multiple of anything
        odd = engine.sample(300, seed=11, sampler=sampler, steps=4)
    finally:
        engine.config.sample_batch_size = bs
    assert_same_rows(big, small)
    assert_same_rows(big, odd)
    assert_same_rows(big.slice(0, 100), engine.sample(100, seed=11, sampler=sampler, steps=4))  # a prefix
    parts = pa.concat_tables([engine.sample(130, seed=11, sampler=sampler, steps=4),
                              engine.sample(170, seed=11, sampler=sampler, steps=4, start=130)])
    assert_same_rows(big, parts)
    other = engine.sample(300, seed=12, sampler=sampler, steps=4)
    assert other.column("age").to_pylist() != big.column("age").to_pylist()


def test_conditioned_rows_depend_on_their_index_only(engine):
    whole = engine.sample(200, {"sex": "Female"}, seed=3, steps=4)
    tail = engine.sample(120, {"sex": "Female"}, seed=3, steps=4, start=80)
    assert_same_rows(whole.slice(80), tail)


def test_rare_category_draws_are_keyed_by_row():
    """Decoding the "other" slot draws a tail value per row from (seed, row), not from a stream
    shared by the batch: split decodes give the same values."""
    from synth.engine.rowstreams import RowUniforms
    from synth.table.columns.categorical import CategoricalColumn

    col = CategoricalColumn("city", "categorical", "string", False, ["a", "b"], [0.4, 0.3, 0.3],
                            [f"t{i}" for i in range(50)], [1 / 50] * 50)
    slots = np.random.default_rng(0).integers(0, 3, 500)
    whole = col.from_slots(slots, RowUniforms(7, 0, 500)).to_pylist()
    split = (col.from_slots(slots[:123], RowUniforms(7, 0, 123)).to_pylist()
             + col.from_slots(slots[123:], RowUniforms(7, 123, 377)).to_pylist())
    assert whole == split
    tails = [v for v, s in zip(whole, slots) if s == 2]
    assert len(set(tails)) > 30 and all(v.startswith("t") for v in tails)
    assert whole != col.from_slots(slots, RowUniforms(8, 0, 500)).to_pylist()
    u = RowUniforms(1, 0, 100_000).uniforms("x")
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01


@pytest.mark.ray
def test_bulk_rows_ignore_shards_batches_and_actors_and_replay_checks_bytes(ray_session, tiny_artifact, tmp_path):
    from synth.pipelines.synthesize import MANIFEST, SynthesizeConfig, replay, synthesize

    def run(out, **kw):
        synthesize(SynthesizeConfig(artifact=tiny_artifact, output=str(out), rows=1300, steps=4, seed=5,
                                    cpus_per_actor=0.5, conditions={"reference": ["race"]}, **kw))
        return pq.ParquetDataset(sorted(str(p) for p in out.glob("part-*.parquet"))).read()

    a = run(tmp_path / "a", shard_rows=1000, batch_rows=600, actors=2)
    b = run(tmp_path / "b", shard_rows=500, batch_rows=8192, actors=1)
    assert_same_rows(a, b)

    r = replay(str(tmp_path / "a"))
    assert r == {"shards": 2, "matched": 2, "mismatched": [], "versions_differ": {}}
    m = json.loads((tmp_path / "a" / MANIFEST).read_text())
    assert {k: m[k] for k in ("shard_rows", "batch_rows", "protocol")} == {"shard_rows": 1000, "batch_rows": 600,
                                                                          "protocol": "rowstreams-1"}
    m["shards"][1]["sha256"] = "0" * 64  # a recorded checksum the bytes no longer match
    (tmp_path / "a" / MANIFEST).write_text(json.dumps(m))
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}  # join the session's Ray
    p = subprocess.run([sys.executable, "-m", "synth.cli", "replay", str(tmp_path / "a")], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 1 and "1 of 2 shards" in p.stderr and "part-00001.parquet" in p.stderr, p.stderr[-2000:]
    (tmp_path / "notsyn.json").write_text(json.dumps({"kind": "training"}))
    p = subprocess.run([sys.executable, "-m", "synth.cli", "replay", str(tmp_path / "notsyn.json")], env=env,
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 2 and "is not a bulk synthesis manifest" in p.stderr and "Traceback" not in p.stderr


def test_replay_of_a_sample_file_checks_its_rows(tiny_artifact, tmp_path):
    """`synth sample` records every setting and a digest of the rows; `synth replay FILE` makes them
    again (conditions included) and says whether they are the same; a tampered file is caught."""
    out = tmp_path / "s.parquet"
    cmd = [sys.executable, "-m", "synth.cli"]
    p = subprocess.run(cmd + ["sample", tiny_artifact, "-n", "150", "-o", str(out), "--condition", "sex=Female",
                              "--steps", "3", "--seed", "4"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    record = json.loads(pq.read_schema(out).metadata[b"synth.generation"])
    assert record["conditions"] == {"sex": "Female"} and record["rows"] == 150 and record["precision"] == "fp32"
    p = subprocess.run(cmd + ["replay", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0 and "matches the recorded one" in p.stderr, p.stderr[-2000:]

    table = pq.read_table(out)
    flipped = table.set_column(table.schema.get_field_index("sex"), "sex", pa.array(["Male"] * table.num_rows))
    pq.write_table(flipped.replace_schema_metadata(table.schema.metadata), out)  # rows changed, record kept
    p = subprocess.run(cmd + ["replay", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 1 and "150 replayed rows are not the recorded ones" in p.stderr, p.stderr[-2000:]
    pq.write_table(table.replace_schema_metadata(None), out)
    p = subprocess.run(cmd + ["replay", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 2 and "carries no `synth sample` record" in p.stderr and "Traceback" not in p.stderr
