"""The nightly pipeline: synthesize, evaluate against held-out rows, report, and fail on the
thresholds of the release gate."""
import json

import pytest

from synth.nightly import NightlyConfig, Thresholds, check_thresholds, newest_partition, run_nightly

pytestmark = [pytest.mark.ray]


def nightly(tiny_artifact, tmp_path, thresholds):
    return NightlyConfig.model_validate({
        "synthesize": {"artifact": tiny_artifact, "output": str(tmp_path / "syn"), "rows": 1200, "shard_rows": 600,
                       "steps": 4, "actors": 1, "cpus_per_actor": 1},
        "evaluate_rows": 1000, "thresholds": thresholds, "report": str(tmp_path / "report.json")})


def test_nightly_passes_and_fails_on_thresholds(ray_session, tiny_artifact, tmp_path):
    report = run_nightly(nightly(tiny_artifact, tmp_path, {"quality_score_min": 0.0, "c2st_auc_max": 1.0}))
    assert report["passed"] and report["violations"] == []
    disk = json.loads((tmp_path / "report.json").read_text())
    assert disk["synthesis"]["rows"] == 1200 and 0 <= disk["metrics"]["quality_score"] <= 1
    assert disk["artifact"]["artifact_id"]
    # an unreachable gate names the violated threshold; the shards are reused (same plan)
    report = run_nightly(nightly(tiny_artifact, tmp_path, {"quality_score_min": 0.999, "c2st_auc_max": 0.5}))
    assert not report["passed"]
    assert any(v.startswith("quality_score_min") for v in report["violations"])
    assert any(v.startswith("c2st_auc_max") for v in report["violations"])


def test_threshold_logic_and_partitions(tmp_path):
    m = {"quality_score": 0.9, "column_shapes": 0.95, "pair_trends": 0.85, "c2st_auc": 0.7, "dcr_share": 0.52,
         "exact_copy_rate": 0.0}
    assert check_thresholds(m, Thresholds(quality_score_min=0.85, c2st_auc_max=0.8)) == []
    assert check_thresholds(m, Thresholds(pair_trends_min=0.9)) == ["pair_trends_min: 0.8500 is not >= 0.9"]
    for d in ("date=2026-11-21", "date=2026-11-23", "date=2026-11-22", "_tmp"):
        (tmp_path / d).mkdir()
    assert newest_partition(str(tmp_path)).endswith("date=2026-11-23")
