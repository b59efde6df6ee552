"""`synth report`: one self-contained HTML file, rendered by headless Chromium with its plots."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from synth.errors import ConfigError
from synth.report import resolve_inputs
from synth.report.association import association_matrix
from tests.conftest import require_tool

REPO = Path(__file__).resolve().parents[1]


def synth(*args):
    return subprocess.run([sys.executable, "-m", "synth.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=600)


def chromium(*args, tmp: Path) -> subprocess.CompletedProcess:
    exe = require_tool("chromium", ["chromium", "chromium-browser"], "tests/test_report.py")
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={tmp / 'chromium-profile'}", *args],
                          capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def run_folder(tiny_artifact, tmp_path_factory) -> Path:
    """A run folder (model/ + synthetic/) as the quickstart writes it, with 800 sampled rows."""
    run = tmp_path_factory.mktemp("run")
    shutil.copytree(tiny_artifact, run / "model")
    (run / "synthetic").mkdir()
    r = synth("sample", run / "model", "--rows", "800", "--steps", "4", "-o", run / "synthetic" / "part-00000.parquet")
    assert r.returncode == 0, r.stderr
    return run


def test_report_renders_in_chromium_with_its_plots(run_folder, tmp_path):
    contract = tmp_path / "c.yaml"
    contract.write_text(yaml.safe_dump({"fidelity": {"quality_score_min": 0.0, "c2st_auc_max": 0.5},
                                        "nfe": {"max": 10}}))
    r = synth("report", run_folder, "--contract", contract)
    assert r.returncode == 1, r.stderr[-3000:]  # c2st_auc_max 0.5 is unreachable: exit 1, report still written
    out = run_folder / "report.html"
    assert "report.html" in " ".join(r.stderr.split())
    doc = out.read_text()
    kinds = json.loads((run_folder / "model" / "manifest.json").read_text())["columns"]

    # self-contained: no scripts, no external resources
    assert "<script" not in doc
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", doc) and "@import" not in doc
    assert not re.search(r"url\(\s*['\"]?https?:", doc)

    dom = chromium("--dump-dom", f"file://{out}", tmp=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    figures = re.findall(r'<figure class="plot marginal (numeric|categorical)" data-column="([^"]+)"><svg', html)
    assert {c for _, c in figures} == set(kinds)
    assert {c for k, c in figures if k == "numeric"} == {c for c, k in kinds.items() if k in ("integer", "continuous")}
    assert len(re.findall(r'<figure class="plot heatmap" data-matrix="(real|synthetic|difference)"><svg', html)) == 3
    assert html.count("<svg") == len(kinds) + 3
    # the bars and histogram patches are drawn (matplotlib emits them as <path> elements)
    assert html.count("<path") > 10 * (len(kinds) + 3)
    assert 'class="badge fail">VIOLATED' in html and "fidelity.c2st_auc_max" in html
    assert "model artifact manifest" in html and json.loads(
        (run_folder / "model" / "manifest.json").read_text())["artifact_id"] in html
    assert "Quality score" in html and "Parquet metadata" in html

    shot = tmp_path / "report.png"
    r = chromium(f"--screenshot={shot}", "--window-size=1280,3000", f"file://{out}", tmp=tmp_path)
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[:2] == (3000, 1280)

    def share(rgb):  # pixels of the plots' two colours (real blue, synthetic orange), with antialiasing slack
        return float((np.abs(img - np.array(rgb)).sum(axis=2) < 40).mean())
    assert share((31, 119, 180)) > 0.002 and share((255, 127, 14)) > 0.002


def test_report_inputs_and_errors(run_folder, tmp_path):
    syn = str(run_folder / "synthetic" / "part-00000.parquet")
    assert resolve_inputs(str(run_folder), None, None) == (
        str(run_folder / "synthetic"), str(run_folder / "model"), str(run_folder / "report.html"))
    assert resolve_inputs(syn, "m", None) == (syn, "m", syn[: -len(".parquet")] + ".report.html")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_inputs(str(tmp_path / "nothing"), None, None)
    with pytest.raises(ConfigError, match="pass the model it was sampled from with --artifact"):
        resolve_inputs(syn, None, None)
    (tmp_path / "run" / "model").mkdir(parents=True)
    shutil.copy(run_folder / "model" / "manifest.json", tmp_path / "run" / "model" / "manifest.json")
    with pytest.raises(ConfigError, match="has no synthetic/ folder"):
        resolve_inputs(str(tmp_path / "run"), None, None)
    r = synth("report", syn, "--artifact", run_folder / "model", "-o", tmp_path / "r.pdf")
    assert r.returncode == 2 and "must end in .html" in " ".join(r.stderr.split()) and not (tmp_path / "r.pdf").exists()
    out = tmp_path / "r.html"
    r = synth("report", syn, "--artifact", run_folder / "model", "-o", out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "No contract given" in out.read_text()


def test_association_matrix():
    import pandas as pd

    rng = np.random.default_rng(0)
    x = rng.normal(size=2000)
    frame = pd.DataFrame({"x": x, "y": -x + 0.01 * rng.normal(size=2000),
                          "c": np.where(x > 0, "pos", "neg"), "d": rng.choice(["a", "b"], 2000),
                          "e": np.where(x > 0, "P", "N")})
    frame.loc[::7, "y"] = np.nan
    m = association_matrix(frame, {"x": "continuous", "y": "continuous", "c": "categorical", "d": "categorical",
                                   "e": "categorical"})
    assert np.allclose(np.diag(m), 1) and np.allclose(m, m.T)
    assert m[0, 1] < -0.99 and m[0, 2] > 0.75 and abs(m[0, 3]) < 0.1
    assert m[2, 4] > 0.99 and m[2, 3] < 0.1
