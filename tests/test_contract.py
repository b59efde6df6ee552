"""Release contracts: the thresholds file, its errors, the verdicts, and `synth evaluate --contract`."""
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from synth.errors import ConfigError
from synth.evaluate.contract import (Contract, check_contract, generation_info, load_contract, parse_contract,
                                     threshold_names)

REPO = Path(__file__).resolve().parents[1]


def synth(*args):
    return subprocess.run([sys.executable, "-m", "synth.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=600)


def test_example_contract_loads_and_covers_every_section():
    c = load_contract(str(REPO / "contracts" / "adult.yaml"))
    names = {t[0] for t in c.thresholds()}
    assert {n.split(".")[0] for n in names} == {"fidelity", "privacy", "latency", "nfe", "guidance"}
    assert c.evaluation.target == "income" and c.needs_latency
    assert names <= set(threshold_names())


@pytest.mark.parametrize("raw, message", [
    ({"fidelity": {"quality_min": 0.9}},
     ["fidelity.quality_min", "unknown metric 'quality_min' in fidelity", "quality_score_min",
      "did you mean 'quality_score_min'"]),
    ({"privacy": {"dcr_max": 0.6}}, ["unknown metric 'dcr_max' in privacy", "dcr_share_max"]),
    ({"fidelty": {"quality_score_min": 0.9}}, ["unknown section or field 'fidelty'", "did you mean 'fidelity'"]),
    ({"nfe": {"max": 0}}, ["nfe.max", "greater than or equal to 1"]),
    ({"fidelity": {"c2st_auc_max": "high"}}, ["fidelity.c2st_auc_max"]),
    ({"fidelity": {"efficacy_ratio_min": 0.9}}, ["needs evaluation.target"]),
    ({"guidance": {"min": 3, "max": 1}}, ["guidance.min (3.0) is above guidance.max (1.0)"]),
    ({"name": "empty"}, ["sets no threshold", "fidelity.quality_score_min"]),
])
def test_bad_contracts_name_the_field(raw, message):
    with pytest.raises(ConfigError) as e:
        parse_contract(raw, source="c.yaml")
    for part in message:
        assert part in str(e.value), str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_contract(str(tmp_path / "missing.yaml"))
    (tmp_path / "bad.yaml").write_text("fidelity: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_contract(str(tmp_path / "bad.yaml"))
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_contract(str(tmp_path / "list.yaml"))


def test_verdicts_value_vs_threshold():
    c = Contract.model_validate({"fidelity": {"quality_score_min": 0.9, "c2st_auc_max": 0.8},
                                 "privacy": {"epsilon_max": 10, "exact_copy_rate_max": 0.0},
                                 "nfe": {"max": 10}, "guidance": {"min": 1.0, "max": 2.0},
                                 "latency": {"p99_ms_max": 100}})
    metrics = {"quality_score": 0.85, "c2st_auc": 0.7, "epsilon": float("inf"), "exact_copy_rate": 0.0,
               "nfe": 20, "guidance": 1.0, "latency_p99_ms": None}
    r = check_contract(c, metrics)
    assert not r.passed
    by = {v.threshold: v for v in r.verdicts}
    assert by["fidelity.c2st_auc_max"].passed and by["privacy.exact_copy_rate_max"].passed
    assert by["guidance.min"].passed and by["guidance.max"].passed
    assert r.violations == [
        "fidelity.quality_score_min: quality_score = 0.8500, required >= 0.9000 (VIOLATED)",
        "privacy.epsilon_max: epsilon = inf, required <= 10 (VIOLATED)",
        "latency.p99_ms_max: latency_p99_ms was not measured (required <= 100)",
        "nfe.max: nfe = 20, required <= 10 (VIOLATED)",
    ]
    d = r.to_dict()
    assert d["passed"] is False and json.dumps(d)  # plain JSON (inf -> null)
    metrics.update(quality_score=0.95, epsilon=4.0, nfe=10, latency_p99_ms=40.0)
    assert check_contract(c, metrics).passed


def test_generation_info_sources(tiny_artifact, tmp_path):
    from synth.families import load_engine

    engine = load_engine(tiny_artifact)
    engine.config = engine.config.model_copy(update={"sampler": "dpmpp_2m", "steps": 10, "guidance": 1.0})
    g = generation_info(None, engine)
    assert (g.sampler, g.steps, g.nfe, g.guidance, g.source) == ("dpmpp_2m", 10, 10, 1.0, "artifact defaults")
    g = generation_info(None, engine, sampler="ddim", steps=7, guidance=2.0)
    assert (g.sampler, g.nfe, g.guidance, g.source) == ("ddim", 7, 2.0, "command line")  # rows drawn unconditioned
    with pytest.raises(ConfigError, match="unknown sampler 'nope'"):
        generation_info(None, engine, sampler="nope")
    folder = tmp_path / "bulk"
    folder.mkdir()
    syn = {"artifact": {"artifact_id": engine.manifest["artifact_id"]}, "sampler": "unipc", "steps": 5, "nfe": 5,
           "guidance": 1.5}
    (folder / "_manifest.json").write_text(json.dumps(syn))
    g = generation_info(str(folder), engine)
    assert (g.sampler, g.steps, g.guidance, g.source) == ("unipc", 5, 1.5, "synthesis manifest")
    with pytest.raises(ConfigError, match=r"records steps=5.*drop the conflicting"):
        generation_info(str(folder), engine, steps=9)
    syn["artifact"]["artifact_id"] = "zzz"
    (folder / "_manifest.json").write_text(json.dumps(syn))
    with pytest.raises(ConfigError, match="synthesized from artifact zzz, not from the given artifact"):
        generation_info(str(folder), engine)


def test_evaluate_cli_gate(tiny_artifact, tmp_path):
    """`synth sample` records how it sampled; `synth evaluate --contract` passes (exit 0) or names
    every violated threshold with its value (exit 1); a bad contract is exit 2 before any work."""
    syn = tmp_path / "syn.parquet"
    r = synth("sample", tiny_artifact, "--rows", "600", "--steps", "3", "--guidance", "1.5", "-o", syn)
    assert r.returncode == 0, r.stderr
    meta = json.loads(pq.read_schema(syn).metadata[b"synth.generation"])
    assert (meta["sampler"], meta["steps"], meta["guidance"]) == ("dpmpp_2m", 3, 1.5)

    ok = tmp_path / "ok.yaml"
    ok.write_text(yaml.safe_dump({"fidelity": {"quality_score_min": 0.0, "c2st_auc_max": 1.0},
                                  "nfe": {"max": 3}, "guidance": {"max": 2.0},
                                  "latency": {"p99_ms_max": 60_000, "probes": 3, "request_rows": 4}}))
    r = synth("evaluate", syn, "--artifact", tiny_artifact, "--contract", ok, "-o", tmp_path / "ev.json")
    assert r.returncode == 0, r.stderr[-3000:]
    ev = json.loads((tmp_path / "ev.json").read_text())
    assert ev["contract"]["passed"] and ev["generation"]["source"] == "Parquet metadata"
    assert ev["contract"]["metrics"]["nfe"] == 3 and ev["contract"]["metrics"]["latency_p99_ms"] > 0

    strict = tmp_path / "strict.yaml"
    strict.write_text(yaml.safe_dump({"fidelity": {"quality_score_min": 0.999, "c2st_auc_max": 0.5},
                                      "privacy": {"epsilon_max": 1.0}, "nfe": {"max": 2},
                                      "guidance": {"max": 1.0}}))
    r = synth("evaluate", syn, "--artifact", tiny_artifact, "--contract", strict)
    assert r.returncode == 1, r.stderr[-3000:]
    err = " ".join(r.stderr.split())
    for name in ("fidelity.quality_score_min: quality_score = ", "fidelity.c2st_auc_max: c2st_auc = ",
                 "privacy.epsilon_max: epsilon = inf, required <= 1", "nfe.max: nfe = 3, required <= 2",
                 "guidance.max: guidance = 1.5, required <= 1"):
        assert name in err, err[-3000:]
    assert "Traceback" not in r.stderr

    bad = tmp_path / "bad.yaml"
    bad.write_text("fidelity:\n  quality_min: 0.9\n")
    r = synth("evaluate", syn, "--artifact", tiny_artifact, "--contract", bad)
    assert r.returncode == 2 and "unknown metric 'quality_min' in fidelity" in " ".join(r.stderr.split())
