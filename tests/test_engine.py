"""Engine + artifact: training improves the loss, sampling keeps the schema, seeds reproduce
bytes, conditions are met exactly, and tampered or incompatible artifacts are refused."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synth.io.artifact import MANIFEST, WEIGHTS
from synth.config import RunConfig
from synth.families import load_engine
from synth.errors import ArtifactError, ConfigError
from synth.train.fit import fit
from tests.conftest import tiny_run

ADULT = pq.read_schema("synth/datasets/adult.parquet")


def test_artifact_layout_and_manifest(tiny_artifact):
    import os

    files = sorted(os.listdir(tiny_artifact))
    assert files == ["codec.json", "engine.json", "manifest.json", "weights.safetensors"]
    m = json.loads(open(os.path.join(tiny_artifact, MANIFEST)).read())
    for key in ("input", "split", "seeds", "process", "objective", "sampling", "versions", "metrics", "wall_s",
                "files", "artifact_id"):
        assert key in m, key
    assert len(m["input"]["sha256"]) == 64 and m["split"]["rows"]["test"] > 5000
    assert m["metrics"]["step"] == 40 and np.isfinite(m["metrics"]["val_loss"])


def test_sample_keeps_reference_schema(tiny_artifact):
    engine = load_engine(tiny_artifact)
    for sampler in ("ddpm", "ddim", "dpmpp_2m", "unipc", "euler", "heun"):
        t = engine.sample(300, sampler=sampler, steps=4, seed=1)
        assert t.num_rows == 300 and t.schema == ADULT.remove_metadata(), sampler
    # nullable columns keep producing nulls
    t = engine.sample(3000, seed=2)
    assert t.column("workclass").null_count > 0


def test_same_seed_same_bytes_and_different_seed_differs(tiny_artifact):
    engine = load_engine(tiny_artifact)
    a = engine.sample(500, seed=7, sampler="ddpm", steps=5)
    b = load_engine(tiny_artifact).sample(500, seed=7, sampler="ddpm", steps=5)
    c = engine.sample(500, seed=8, sampler="ddpm", steps=5)
    assert a.equals(b)
    assert not a.equals(c)


def test_same_config_and_seed_give_identical_artifacts(tmp_path):
    # the same files; the ids differ, as each manifest records its own run (output, times)
    uris = [fit(RunConfig.parse(tiny_run(tmp_path / str(i), steps=10))).artifact_uri for i in range(2)]
    files = [json.loads(open(f"{u}/{MANIFEST}").read())["files"] for u in uris]
    assert files[0] == files[1]


def test_conditions_met_exactly_with_guidance(tiny_artifact):
    engine = load_engine(tiny_artifact)
    t = engine.sample(400, {"sex": "Female", "race": "Black"}, guidance=2.0, seed=3)
    assert set(t.column("sex").to_pylist()) == {"Female"}
    assert set(t.column("race").to_pylist()) == {"Black"}
    mixed = engine.sample(4, {"income": [">50K", "<=50K", ">50K", "<=50K"]}, seed=3)
    assert mixed.column("income").to_pylist() == [">50K", "<=50K", ">50K", "<=50K"]


@pytest.mark.parametrize("kwargs,match", [
    ({"n": 0}, "rows must be a positive integer"),
    ({"n": 5, "conditions": {"nope": "x"}}, "unknown column 'nope'"),
    ({"n": 5, "conditions": {"sex": "Robot"}}, "'sex' has no category 'Robot'"),
    ({"n": 5, "conditions": {"age": 30}}, "'age' is integer"),
    ({"n": 5, "sampler": "magic"}, "unknown sampler 'magic'"),
    ({"n": 5, "steps": 0}, "steps must be an integer"),
    ({"n": 5, "guidance": float("nan")}, "guidance must be a finite number"),
    ({"n": 5, "guidance": -1.0}, "guidance must be a finite number"),
])
def test_bad_sample_requests(tiny_artifact, kwargs, match):
    engine = load_engine(tiny_artifact)
    n = kwargs.pop("n")
    with pytest.raises(ConfigError, match=match):
        engine.sample(n, **kwargs)


def test_tampered_and_incompatible_artifacts_are_refused(tiny_artifact, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_artifact, bad)
    with open(bad / WEIGHTS, "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(ArtifactError, match="modified after training"):
        load_engine(str(bad))
    shutil.copytree(tiny_artifact, tmp_path / "old")
    m = json.loads((tmp_path / "old" / MANIFEST).read_text())
    m["format_version"] = 99
    (tmp_path / "old" / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="format version 99"):
        load_engine(str(tmp_path / "old"))
    with pytest.raises(ArtifactError, match="no model artifact"):
        load_engine(str(tmp_path / "missing"))
    (tmp_path / "half").mkdir()
    shutil.copy(bad / WEIGHTS, tmp_path / "half" / WEIGHTS)
    with pytest.raises(ArtifactError, match="has no manifest.json"):
        load_engine(str(tmp_path / "half"))


def test_training_reduces_validation_loss(tmp_path):
    seen = []
    fit(RunConfig.parse(tiny_run(tmp_path, steps=60, train={"eval_every": 20})), report=lambda m, _o: seen.append(m))
    assert [m["step"] for m in seen] == [20, 40, 60]
    assert seen[-1]["val_loss"] < seen[0]["val_loss"]
    assert all(m["samples_per_s"] > 0 and np.isfinite(m["grad_norm"]) for m in seen)


def test_unseen_category_in_validation_rows_does_not_break_training(tmp_path):
    rng = np.random.default_rng(0)
    n = 3000
    tbl = pa.table({"c": rng.choice(["a", "b"], n).tolist(), "x": rng.normal(size=n)})
    # one category that can only land in held-out rows for this seed
    rows = tbl.to_pylist()
    rows[17]["c"] = "rare"
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    raw = tiny_run(tmp_path / "run", steps=5)
    raw["data"] = {"uri": str(path)}
    fit(RunConfig.parse(raw))
