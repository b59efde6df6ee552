"""The README's commands and the CLI's handling of bad input (clear message, exit 2, no
traceback, no half-written output)."""
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]


def synth(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "synth.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or REPO, timeout=600)


def test_readme_commands_exist():
    readme = (REPO / "README.md").read_text()
    assert "bash scripts/setup.sh" in readme  # tests/test_readme.py: .ci/run runs the same commands
    assert "synth quickstart" in readme and "python -m pytest -q" in readme


@pytest.mark.slow
def test_quickstart_then_inspect_sample_evaluate(tmp_path):
    out = tmp_path / "qs"
    r = synth("quickstart", "--output", out, "--steps", "40", "--rows", "600")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "model" / "manifest.json").exists()
    syn = pq.read_table(out / "synthetic" / "part-00000.parquet")
    assert syn.num_rows == 600 and syn.schema == pq.read_schema(REPO / "synth/datasets/adult.parquet").remove_metadata()
    # written by the Ray Data bulk synthesis path: its run manifest records the shard's checksum
    manifest = json.loads((out / "synthetic" / "_manifest.json").read_text())
    assert manifest["kind"] == "synthesis" and manifest["rows"] == 600
    assert manifest["shards"][0]["sha256"] == hashlib.sha256((out / "synthetic" / "part-00000.parquet").read_bytes()).hexdigest()
    ev = json.loads((out / "evaluation.json").read_text())
    assert 0 <= ev["quality_score"] <= 1 and 0 <= ev["detection"]["c2st_auc"] <= 1
    assert ev["efficacy"]["target"] == "income"
    flat = re.sub(r"\s+", "", r.stderr)
    assert "evaluation.json" in flat and "synthetic/part-00000.parquet" in flat

    r = synth("inspect", out / "model")
    assert r.returncode == 0 and "sha256" in r.stdout
    female = tmp_path / "female.parquet"
    r = synth("sample", out / "model", "--rows", "200", "--condition", "sex=Female", "--guidance", "2", "-o", female)
    assert r.returncode == 0, r.stderr
    assert set(pq.read_table(female).column("sex").to_pylist()) == {"Female"}
    r = synth("evaluate", female, "--artifact", out / "model", "-o", tmp_path / "ev.json")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "ev.json").read_text())["rows"]["synthetic"] == 200


def _bad_parquets(tmp_path):
    (tmp_path / "notparquet.parquet").write_text("hello")
    pq.write_table(pa.table({"a": pa.array([], pa.int64())}), tmp_path / "empty.parquet")
    pq.write_table(pa.table({"a": pa.array([None] * 100, pa.float64()), "b": list(range(100))}),
                   tmp_path / "allnull.parquet")
    pq.write_table(pa.table({"a": [float(i) if i % 2 else float("nan") for i in range(200)], "b": range(200)}),
                   tmp_path / "nan.parquet")


@pytest.mark.parametrize("data,message", [
    ("missing.parquet", "does not exist"),
    ("notparquet.parquet", "is not a readable Parquet file"),
    ("empty.parquet", "no rows"),
    ("allnull.parquet", "column 'a' is entirely null"),
    ("nan.parquet", "NaN or infinite values; replace them with nulls"),
])
def test_fit_bad_data(tmp_path, data, message):
    _bad_parquets(tmp_path)
    out = tmp_path / "run"
    r = synth("fit", "--data", tmp_path / data, "--output", out, "--steps", "2")
    assert r.returncode == 2
    assert message in re.sub(r"\s+", " ", r.stderr) and "Traceback" not in r.stderr, r.stderr
    assert not (out / "model").exists()


def test_fit_bad_config(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: {steps: -3}\nmodel: {family: diffusion, net: {widht: 3}}\n")
    r = synth("fit", "--config", cfg)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "train.steps" in r.stderr and "model.net.widht" in r.stderr
    cfg.write_text("data: {codec: {overrides: {nope: integer}}}\noutput: %s\n" % (tmp_path / "o"))
    r = synth("fit", "--config", cfg)
    assert r.returncode == 2 and "'nope'" in r.stderr


def test_sample_bad_requests(tiny_artifact, tmp_path):
    out = tmp_path / "s.parquet"
    for args, message in [
        (["--rows", "0"], "--rows must be a positive integer"),
        (["--rows", "-5"], "--rows must be a positive integer"),
        (["--rows", "5", "--condition", "nope=1"], "unknown column 'nope'"),
        (["--rows", "5", "--condition", "sex=Robot"], "'sex' has no category 'Robot'"),
        (["--rows", "5", "--condition", "sex"], "must look like column=value"),
        (["--rows", "5", "--sampler", "magic"], "unknown sampler 'magic'"),
    ]:
        r = synth("sample", tiny_artifact, *args, "-o", out)
        assert r.returncode == 2, args
        assert message in re.sub(r"\s+", " ", r.stderr) and "Traceback" not in r.stderr, (args, r.stderr)
        assert not out.exists()
    r = synth("sample", tmp_path / "nothing", "--rows", "5", "-o", out)
    assert r.returncode == 2 and "no model artifact" in r.stderr
