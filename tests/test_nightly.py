"""The nightly pipeline: synthesize, check the release contract against held-out rows, report,
and fail on the violated thresholds."""
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


def nightly(tiny_artifact, tmp_path, contract: dict, **extra):
    path = tmp_path / f"contract-{len(list(tmp_path.glob('contract-*')))}.yaml"
    path.write_text(yaml.safe_dump(contract))
    return NightlyConfig.model_validate({
        "synthesize": {"artifact": tiny_artifact, "output": str(tmp_path / "syn"), "rows": 1200, "shard_rows": 600,
                       "steps": 4, "actors": 1, "cpus_per_actor": 1},
        "contract": str(path), "report": str(tmp_path / "report.json"), **extra})


@pytest.mark.ray
def test_nightly_passes_and_fails_on_the_contract(ray_session, tiny_artifact, tmp_path):
    ok = {"fidelity": {"quality_score_min": 0.0, "c2st_auc_max": 1.0}, "nfe": {"max": 4},
          "evaluation": {"rows": 1000}}
    report = run_nightly(nightly(tiny_artifact, tmp_path, ok, html_report=str(tmp_path / "report.html")))
    assert report["passed"] and report["violations"] == []
    disk = json.loads((tmp_path / "report.json").read_text())
    assert disk["synthesis"]["rows"] == 1200 and 0 <= disk["metrics"]["quality_score"] <= 1
    assert disk["artifact"]["artifact_id"] and disk["contract"]["generation"]["source"] == "synthesis manifest"
    assert disk["evaluation"]["rows"]["synthetic"] == 1000
    html = (tmp_path / "report.html").read_text()
    assert "<svg" in html and "nightly" in html and "PASSED" in html
    # an unreachable gate names each violated threshold; the shards are reused (same plan)
    strict = {"fidelity": {"quality_score_min": 0.999, "c2st_auc_max": 0.5}, "nfe": {"max": 2},
              "evaluation": {"rows": 1000}}
    report = run_nightly(nightly(tiny_artifact, tmp_path, strict))
    assert not report["passed"]
    assert [v.split(":")[0] for v in report["violations"]] == [
        "fidelity.quality_score_min", "fidelity.c2st_auc_max", "nfe.max"]
    assert "nfe = 4, required <= 2" in report["violations"][-1]


def test_nightly_config_and_contract_files_validate(tmp_path):
    cfg = NightlyConfig.model_validate(yaml.safe_load((REPO / "configs" / "nightly.yaml").read_text()))
    load_contract(str(REPO / cfg.contract))
    with pytest.raises(Exception, match="thresholds"):  # the old inline thresholds are gone
        NightlyConfig.model_validate({"synthesize": {}, "contract": "c.yaml", "report": "r.json",
                                      "thresholds": {"quality_score_min": 0.9}})
    # a bad contract fails before any compute, with the field named
    (tmp_path / "c.yaml").write_text("fidelity:\n  quality_min: 0.9\n")
    cfg = NightlyConfig.model_validate({"synthesize": {"artifact": "nowhere", "output": str(tmp_path / "o"),
                                                       "rows": 10},
                                        "contract": str(tmp_path / "c.yaml"), "report": str(tmp_path / "r.json")})
    with pytest.raises(ConfigError, match="unknown metric 'quality_min' in fidelity"):
        run_nightly(cfg)
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "o").exists()


def test_nightly_job_exit_code_on_bad_contract(tmp_path):
    (tmp_path / "c.yaml").write_text("privacy:\n  dcr_max: 0.6\n")
    (tmp_path / "n.yaml").write_text(yaml.safe_dump({
        "synthesize": {"artifact": "nowhere", "output": str(tmp_path / "o"), "rows": 10},
        "contract": str(tmp_path / "c.yaml"), "report": str(tmp_path / "r.json")}))
    r = subprocess.run([sys.executable, "-m", "jobs.nightly", "--config", str(tmp_path / "n.yaml")], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown metric 'dcr_max' in privacy" in r.stderr and "Traceback" not in r.stderr


def test_partitions(tmp_path):
    for d in ("date=2026-11-21", "date=2026-11-23", "date=2026-11-22", "_tmp"):
        (tmp_path / d).mkdir()
    assert newest_partition(str(tmp_path)).endswith("date=2026-11-23")
