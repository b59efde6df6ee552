"""Ray Train on a local Ray: 2 CPU workers, Ray Data ingest, checkpoints and resuming, and clear
errors for impossible or unsafe runs. Recovery from a lost worker (a whole node, with its workers)
is tests/test_multinode.py::test_train_on_two_nodes_survives_a_killed_node."""
import os

import pyarrow.parquet as pq
import pytest

from synth.config import RunConfig
from synth.families import load_engine
from synth.errors import ConfigError, SynthError
from synth.train.fit import fit
from tests.conftest import tiny_run

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def ray_run(tmp, name, steps=30, **scaling):
    raw = tiny_run(tmp, steps=steps, train={"eval_every": 10})
    raw["name"] = name
    raw["scaling"] = {"num_workers": 2, "cpus_per_worker": 1, **scaling}
    return RunConfig.parse(raw)


def test_two_workers_train_checkpoint_and_resume(ray_session, tmp_path):
    seen = []
    cfg = ray_run(tmp_path, "two")
    result = fit(cfg, report=lambda m, _o: seen.append(m))
    engine = load_engine(result.artifact_uri)
    assert engine.manifest["workers"] == 2 and engine.manifest["metrics"]["step"] == 30
    assert engine.sample(50, seed=0).num_rows == 50
    ckpts = [d for d in os.listdir(tmp_path / "ray" / "two") if d.startswith("checkpoint_2")]
    assert len(ckpts) == 2  # num_to_keep
    # same name + storage path: resumes from the last checkpoint (step 30) and trains 10 more
    seen.clear()
    fit(ray_run(tmp_path, "two", steps=40), report=lambda m, _o: seen.append(m))
    resumed = load_engine(result.artifact_uri).manifest
    assert resumed["metrics"]["step"] == 40 and resumed["ray"]["resumed_from"] == [30]
    # a different model under the same run name is refused instead of loading foreign weights
    bad = ray_run(tmp_path, "two", steps=50)
    bad.model.net.width = 32
    with pytest.raises(ConfigError, match="different model or data"):
        fit(bad)


def test_impossible_scaling_is_refused(ray_session, tmp_path):
    with pytest.raises(ConfigError, match="has 4 CPUs|the Ray cluster has 4"):
        fit(ray_run(tmp_path, "big", num_workers=16))
    with pytest.raises(ConfigError, match="GPUs"):
        fit(ray_run(tmp_path, "gpu", num_workers=1, use_gpu=True))


def test_unwritable_storage_path(ray_session, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "file").write_text("x")
    with pytest.raises(SynthError, match="cannot write to"):
        fit(ray_run(tmp_path / "out", "ro", storage_path=str(ro / "file" / "sub")))


def test_corrupt_parquet_among_many_is_named(ray_session, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    table = pq.read_table("synth/datasets/adult.parquet")
    for i in range(3):
        pq.write_table(table.slice(i * 1000, 1000), data / f"part-{i}.parquet")
    (data / "part-9.parquet").write_bytes(b"PAR1 this is not parquet")
    cfg = ray_run(tmp_path / "out", "corrupt")
    cfg.data.uri = str(data)
    with pytest.raises(SynthError, match="part-9.parquet"):
        fit(cfg)
