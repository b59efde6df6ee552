"""The nightly pipeline: retrain, synthesize, check the release contract against held-out rows,
report, fail on the violated thresholds, and release (latest.json) only the runs that pass."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from synth.errors import ConfigError
from synth.evaluate.contract import load_contract
from synth.pipelines.nightly import NightlyConfig, newest_partition, run_nightly

REPO = Path(__file__).resolve().parents[1]


PASS = {"fidelity": {"quality_score_min": 0.0, "c2st_auc_max": 1.0}, "nfe": {"max": 4}, "evaluation": {"rows": 150}}
FAIL = {"fidelity": {"quality_score_min": 0.999, "c2st_auc_max": 0.5}, "nfe": {"max": 2}, "evaluation": {"rows": 150}}


def nightly(tmp_path, contract: dict, **extra) -> NightlyConfig:
    path = tmp_path / f"contract-{len(list(tmp_path.glob('contract-*')))}.yaml"
    path.write_text(yaml.safe_dump(contract))
    return NightlyConfig.model_validate({
        "root": str(tmp_path / "release"),
        "synthesize": {"rows": 300, "shard_rows": 300, "steps": 4, "actors": 1, "cpus_per_actor": 1},
        "contract": str(path), **extra})


def partitions(tmp_path) -> Path:
    """Three nights of new reference data: date=... folders of Adult rows."""
    import pyarrow.parquet as pq

    adult = pq.read_table(REPO / "synth" / "datasets" / "adult.parquet")
    for night in range(3):
        d = tmp_path / "ref" / f"date=2026-11-2{night}"
        d.mkdir(parents=True)
        pq.write_table(adult.slice(night * 4000, 4000), d / "part.parquet")
    return tmp_path / "ref"


@pytest.mark.ray
def test_three_nights_release_only_the_runs_that_pass(ray_session, tmp_path):
    """Retraining on new data every night: pass, fail, pass. Each run stages under its own prefix;
    latest.json moves only on the passing nights; the failing night leaves the served model alone."""
    from synth.io.release import read_latest, resolve_artifact
    from tests.conftest import tiny_run

    ref = partitions(tmp_path)
    train = tmp_path / "train.yaml"
    train.write_text(yaml.safe_dump(tiny_run(tmp_path / "unused", steps=10, evaluate={"check": "off"})))
    retrain = {"config": str(train), "newest_partition_of": str(ref)}
    root = tmp_path / "release"
    nights = [("n1", PASS, {"html_report": True}), ("n2", FAIL, {}), ("n3", PASS, {})]
    reports = {}
    for i, (run_id, contract, extra) in enumerate(nights):
        if i:  # the next night's partition arrives
            (ref / f"date=2026-11-2{i}").rename(ref / f"date=2026-12-0{i}")
        reports[run_id] = run_nightly(nightly(tmp_path, contract, retrain=retrain, run_id=run_id, **extra))
        if run_id == "n1":
            served = (root / "runs" / "n1" / "model" / "manifest.json").read_bytes()
        assert (root / "runs" / run_id / "report.json").exists() and (root / "runs" / run_id / "model").is_dir()
        latest = read_latest(str(root))
        assert latest["run"] == ("n3" if run_id == "n3" else "n1"), (run_id, latest)
    assert reports["n1"]["passed"] and not reports["n2"]["passed"] and reports["n3"]["passed"]
    assert [v.split(":")[0] for v in reports["n2"]["violations"]] == [
        "fidelity.quality_score_min", "fidelity.c2st_auc_max", "nfe.max"]
    assert "nfe = 4, required <= 2" in reports["n2"]["violations"][-1] and "latest" not in reports["n2"]
    assert (root / "runs" / "n1" / "model" / "manifest.json").read_bytes() == served  # never rewritten
    ids = {r: reports[r]["artifact"]["artifact_id"] for r in reports}
    assert len(set(ids.values())) == 3  # three different models (new data each night), none overwritten
    latest = read_latest(str(root))
    assert latest == {**latest, "run": "n3", "previous": "n1", "artifact_id": ids["n3"],
                      "artifact": str(root / "runs" / "n3" / "model")}
    assert resolve_artifact(str(root)) == latest["artifact"]  # what serving (artifact_uri: ROOT) loads
    html = (root / "runs" / "n1" / "report.html").read_text()
    assert "<svg" in html and "nightly" in html and "PASSED" in html
    disk = json.loads((root / "runs" / "n1" / "report.json").read_text())
    assert disk["synthesis"]["rows"] == 300 and 0 <= disk["metrics"]["quality_score"] <= 1
    assert disk["contract"]["generation"]["source"] == "synthesis manifest"
    with pytest.raises(ConfigError, match="run 'n2' already finished"):  # a run is never rewritten
        run_nightly(nightly(tmp_path, PASS, retrain=retrain, run_id="n2"))


def test_nightly_config_and_contract_files_validate(tmp_path):
    cfg = NightlyConfig.model_validate(yaml.safe_load((REPO / "configs" / "nightly.yaml").read_text()))
    load_contract(str(REPO / cfg.contract))
    with pytest.raises(Exception, match="thresholds"):  # the old inline thresholds are gone
        NightlyConfig.model_validate({"root": "r", "synthesize": {}, "contract": "c.yaml",
                                      "thresholds": {"quality_score_min": 0.9}})
    # a bad contract fails before any compute, with the field named
    (tmp_path / "c.yaml").write_text("fidelity:\n  quality_min: 0.9\n")
    cfg = NightlyConfig.model_validate({"root": str(tmp_path / "rel"), "synthesize": {"artifact": "nowhere",
                                                                                      "rows": 10},
                                        "contract": str(tmp_path / "c.yaml")})
    with pytest.raises(ConfigError, match="unknown metric 'quality_min' in fidelity"):
        run_nightly(cfg)
    assert not (tmp_path / "rel").exists()
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(PASS))
    for change, says in [({"synthesize": {"artifact": "m", "output": "o", "rows": 10}}, "synthesize.output is set by"),
                         ({"sign": True}, "sign signs a retrained model"),
                         ({"run_id": "../x"}, "run_id is a folder name")]:
        with pytest.raises((ConfigError, ValueError), match=says):
            run_nightly(NightlyConfig.model_validate({**cfg.model_dump(), **change}))
    assert not (tmp_path / "rel").exists()


def test_nightly_job_exit_code_on_bad_contract(tmp_path):
    (tmp_path / "c.yaml").write_text("privacy:\n  dcr_max: 0.6\n")
    (tmp_path / "n.yaml").write_text(yaml.safe_dump({
        "root": str(tmp_path / "rel"), "synthesize": {"artifact": "nowhere", "rows": 10},
        "contract": str(tmp_path / "c.yaml")}))
    r = subprocess.run([sys.executable, "-m", "jobs.nightly", "--config", str(tmp_path / "n.yaml")], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown metric 'dcr_max' in privacy" in r.stderr and "Traceback" not in r.stderr


def test_partitions(tmp_path):
    for d in ("date=2026-11-21", "date=2026-11-23", "date=2026-11-22", "_tmp"):
        (tmp_path / d).mkdir()
    assert newest_partition(str(tmp_path)).endswith("date=2026-11-23")


def test_plans_are_claimed_once_and_stale_temporaries_swept(tmp_path):
    """Two runs racing for one output folder: the plan file is created exclusively, so exactly one
    claims it; `.tmp-*` files a dead writer left are swept once they are old."""
    import os
    import threading
    import time

    from synth.io import storage
    from synth.pipelines.synthesize import PLAN, SynthesizeConfig, claim_output

    out = tmp_path / "out"
    won, lost = [], []

    def claim(seed):
        cfg = SynthesizeConfig(artifact="m", output=str(out), rows=10)
        try:
            claim_output(cfg, {"seed": seed})
            won.append(seed)
        except ConfigError:
            lost.append(seed)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 7 and json.loads((out / PLAN).read_text()) == {"seed": won[0]}
    old, young = out / ".tmp-dead-part-00000.parquet", out / ".tmp-live-part-00001.parquet"
    old.write_bytes(b"x")
    young.write_bytes(b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert storage.sweep_tmp(str(out)) == 1 and not old.exists() and young.exists()
    storage.write_bytes(str(out / "f.json"), b"{}")
    assert sorted(p.name for p in out.iterdir()) == [PLAN, young.name, "f.json"]  # nothing left behind


def test_sampler_actors_refuse_an_artifact_other_than_the_planned_one(tiny_artifact, tmp_path):
    from synth.errors import ArtifactError
    from synth.pipelines.synthesize import SamplerActor

    cfg = {"artifact": tiny_artifact, "output": str(tmp_path / "o"), "rows": 10}
    with pytest.raises(ArtifactError, match="changed while the run was planned"):
        SamplerActor(cfg, artifact_id="0" * 64)
