"""Statistical fingerprint engine: `synth fingerprint` summarises a table without rows, the
`fingerprint` family fits from that summary alone, reproduces its marginals and correlations,
meets conditions exactly, works through bulk synthesis and the endpoint's batching path, and
refuses or repairs bad fingerprints with messages that name the field."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.special import ndtri
from scipy.stats import rankdata

from synth.families import load_engine
from synth.engine.copula import CopulaEngine
from synth.train.fit import fit_fingerprint
from synth.errors import ConfigError
from synth.table.fingerprint import (FingerprintWarning, build_fingerprint, check_correlation, nearest_correlation,
                               parse_fingerprint, write_fingerprint)

REPO = Path(__file__).resolve().parents[1]
ADULT = pq.read_schema(REPO / "synth/datasets/adult.parquet").remove_metadata()


@pytest.fixture(scope="module")
def adult_fp() -> dict:
    return build_fingerprint("bundled:adult")


@pytest.fixture(scope="module")
def adult_model(adult_fp, tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("fp")
    write_fingerprint(adult_fp, str(d / "fp.json"))
    fit_fingerprint(str(d / "fp.json"), str(d / "model"))
    return str(d / "model")


def normal_scores(x: np.ndarray) -> np.ndarray:
    return ndtri((rankdata(x) - 0.5) / len(x))


def test_fingerprint_holds_statistics_not_rows(adult_fp):
    fp = parse_fingerprint(adult_fp)
    real = pq.read_table(REPO / "synth/datasets/adult.parquet").to_pandas()
    assert fp.rows == len(real) == 32561 and [c.name for c in fp.columns] == list(real.columns)
    age = next(c for c in fp.columns if c.name == "age")
    assert age.kind == "integer" and age.min == real.age.min() and age.max == real.age.max()
    assert age.mean == pytest.approx(real.age.mean()) and age.std == pytest.approx(real.age.std(ddof=0))
    assert dict(age.quantiles)[0.5] == pytest.approx(real.age.quantile(0.5), abs=1)
    wc = next(c for c in fp.columns if c.name == "workclass")
    assert wc.null_share == pytest.approx(real.workclass.isna().mean())
    freq = dict(wc.frequencies)
    assert freq["Private"] == pytest.approx((real.workclass == "Private").sum() / real.workclass.notna().sum())
    m, report = check_correlation(fp)
    assert m.shape == (15, 15) and np.allclose(m, m.T) and np.linalg.eigvalsh(m).min() > 0
    assert not report["repaired"]
    # a summary, not the data: a fixed-size description per column, whatever the row count
    assert len(json.dumps(adult_fp)) < 100_000
    assert all(201 <= len(c.quantiles) <= 220 for c in fp.columns if c.numeric)


def test_model_reproduces_marginals_and_correlations(adult_fp, adult_model):
    engine = load_engine(adult_model)
    assert engine.family == "fingerprint" and engine.manifest["privacy"]["raw_rows"] is False
    syn = engine.sample(20_000, seed=0)
    assert syn.schema == ADULT
    df = syn.to_pandas()
    fp = parse_fingerprint(adult_fp)
    for c in fp.columns:
        if c.numeric:
            assert abs(df[c.name].mean() - c.mean) < 4 * c.std / np.sqrt(len(df)), c.name  # 4 standard errors
            assert df[c.name].std() == pytest.approx(c.std, rel=0.1), c.name
            assert df[c.name].min() >= c.min and df[c.name].max() <= c.max
        else:
            shares = df[c.name].value_counts(normalize=True, dropna=False)
            for value, share in c.frequencies[:3]:
                assert shares.get(value, 0) == pytest.approx(share * (1 - c.null_share), abs=0.02), (c.name, value)
        assert df[c.name].isna().mean() == pytest.approx(c.null_share, abs=0.01), c.name
    # dependence: the normal-score correlations of numeric pairs match the fingerprint's
    m, _ = check_correlation(fp)
    dims = fp.dims()
    for a, b in [("age", "hours-per-week"), ("education-num", "capital-gain"), ("age", "fnlwgt")]:
        want = m[dims.index((a, "value")), dims.index((b, "value"))]
        got = np.corrcoef(normal_scores(df[a].to_numpy()), normal_scores(df[b].to_numpy()))[0, 1]
        assert got == pytest.approx(want, abs=0.06), (a, b, got, want)


def test_strong_dependence_on_a_small_table(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=4000)
    y = 3 * x + 0.3 * rng.normal(size=4000)
    band = np.where(x > 0.5, "high", np.where(x < -0.5, "low", "mid"))
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"x": x, "y": y, "band": band}), path)
    fp = build_fingerprint(str(path))
    write_fingerprint(fp, str(tmp_path / "fp.json"))
    fit_fingerprint(str(tmp_path / "fp.json"), str(tmp_path / "m"))
    df = load_engine(str(tmp_path / "m")).sample(5000, seed=1).to_pandas()
    assert np.corrcoef(df.x, df.y)[0, 1] > 0.95
    assert df[df.band == "high"].x.mean() > df[df.band == "low"].x.mean() + 0.5
    # conditioning on a category moves the correlated columns with it
    high = load_engine(str(tmp_path / "m")).sample(2000, {"band": "high"}, seed=2).to_pandas()
    assert set(high.band) == {"high"} and high.x.mean() > 0.5


def test_conditions_exact_seeds_reproduce(adult_model):
    engine = load_engine(adult_model)
    t = engine.sample(3000, {"income": ">50K"}, seed=3)
    assert set(t.column("income").to_pylist()) == {">50K"}
    base = engine.sample(3000, seed=3).to_pandas()
    assert t.to_pandas()["age"].mean() > base["age"].mean() + 2  # richer rows are older in Adult
    two = engine.sample(500, {"sex": "Female", "race": "Black"}, seed=4)
    assert set(two["sex"].to_pylist()) == {"Female"} and set(two["race"].to_pylist()) == {"Black"}
    assert engine.sample(400, seed=7).equals(load_engine(adult_model).sample(400, seed=7))
    assert not engine.sample(400, seed=7).equals(engine.sample(400, seed=8))
    with pytest.raises(ConfigError, match="no category 'Martian'"):
        engine.sample(5, {"race": "Martian"})
    with pytest.raises(ConfigError, match="unknown column 'nope'"):
        engine.sample(5, {"nope": "x"})


def test_handwritten_fingerprint_without_quantiles_or_correlation(tmp_path):
    fp = {"format": "synth-fingerprint", "version": 1, "rows": 1000, "columns": [
        {"name": "amount", "kind": "continuous", "arrow_type": "double", "mean": 50, "std": 10, "min": 0,
         "max": 80, "null_share": 0.1},
        {"name": "flag", "kind": "boolean", "arrow_type": "bool", "frequencies": [[True, 0.25], [False, 0.75]]},
        {"name": "city", "kind": "categorical", "arrow_type": "string",
         "frequencies": [["Oslo", 3], ["Bergen", 1]]}]}
    (tmp_path / "fp.json").write_text(json.dumps(fp))
    fit_fingerprint(str(tmp_path / "fp.json"), str(tmp_path / "m"))
    t = load_engine(str(tmp_path / "m")).sample(4000, seed=0)
    assert t.schema == pa.schema([("amount", pa.float64()), ("flag", pa.bool_()), ("city", pa.string())])
    df = t.to_pandas()
    assert df.amount.mean() == pytest.approx(50, abs=1) and df.amount.max() <= 80
    assert df.amount.isna().mean() == pytest.approx(0.1, abs=0.02)
    assert df.flag.mean() == pytest.approx(0.25, abs=0.03) and (df.city == "Oslo").mean() == pytest.approx(0.75, abs=0.03)


def _indefinite(fp: dict) -> dict:
    bad = copy.deepcopy(fp)
    m = np.asarray(bad["correlation"]["matrix"])
    # age ~ education-num ~ hours-per-week all +0.95 but age vs hours -0.95: no such correlation matrix
    dims = [tuple(d) for d in bad["correlation"]["dims"]]
    a, b, c = (dims.index((n, "value")) for n in ("age", "education-num", "hours-per-week"))
    for i, j, v in [(a, b, 0.95), (b, c, 0.95), (a, c, -0.95)]:
        m[i, j] = m[j, i] = v
    bad["correlation"]["matrix"] = m.tolist()
    return bad


def test_non_positive_definite_correlation_is_repaired_with_a_warning_or_refused(adult_fp):
    bad = parse_fingerprint(_indefinite(adult_fp))
    with pytest.warns(FingerprintWarning, match="not positive definite.*nearest valid correlation matrix"):
        engine, report = CopulaEngine.from_fingerprint(bad)
    assert report["repaired"] and report["min_eigenvalue"] < 0
    m = engine.corr
    assert np.allclose(np.diag(m), 1) and np.allclose(m, m.T) and np.linalg.eigvalsh(m).min() > 0
    assert engine.sample(100, seed=0).num_rows == 100
    with pytest.raises(ConfigError, match="not positive definite \\(smallest eigenvalue -"):
        CopulaEngine.from_fingerprint(bad, on_invalid="refuse")


def test_nearest_correlation_is_nearest():
    a = np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1]], dtype=float)  # Higham (2002), section 4
    x = nearest_correlation(a)
    want = np.array([[1, 0.7607, 0.1573], [0.7607, 1, 0.7607], [0.1573, 0.7607, 1]])
    assert np.abs(x - want).max() < 2e-3
    good = np.array([[1, 0.3], [0.3, 1]])
    assert np.allclose(nearest_correlation(good), good, atol=1e-6)


@pytest.mark.parametrize("edit,message", [
    (lambda fp: fp["columns"][0].pop("max"), r"columns\[0\] \('age'\): max is required"),
    (lambda fp: fp["columns"][1].update(null_share=1.5), r"columns\[1\] \('workclass'\).null_share"),
    (lambda fp: fp["columns"][0].update(quantiles=[[0, 5], [0.5, 3], [1, 9]]),
     r"columns\[0\] \('age'\): quantile values must be non-decreasing"),
    (lambda fp: fp["columns"][3].update(frequencies=[]), r"columns\[3\] \('education'\): a categorical column needs"),
    (lambda fp: fp["columns"][2].update(arrow_type="float128x"), r"'fnlwgt'.*unknown Arrow type 'float128x'"),
    (lambda fp: fp.update(version=7), "version 7 is not supported"),
    (lambda fp: fp["correlation"]["matrix"][0].__setitem__(1, 1.7), r"matrix\[0\]\[1\] = 1.7.*outside \[-1, 1\]"),
    (lambda fp: fp["correlation"]["matrix"][0].__setitem__(1, 0.5), r"not symmetric: \[0\]\[1\] = 0.5"),
    (lambda fp: fp["correlation"]["dims"].pop(), r"dims do not match the columns: missing \[\('income', 'value'\)\]"),
    (lambda fp: fp["columns"][4].update(frequencies=[["x", 1]]), "frequencies are for categorical columns"),
])
def test_malformed_fingerprints_name_the_field(adult_fp, edit, message):
    fp = copy.deepcopy(adult_fp)
    edit(fp)
    with pytest.raises(ConfigError, match=message):
        CopulaEngine.from_fingerprint(parse_fingerprint(fp, "fp.json"))


def test_cli_fingerprint_fit_sample_and_bad_input(tmp_path, adult_fp):
    def synth(*args):
        return subprocess.run([sys.executable, "-m", "synth.cli", *map(str, args)], capture_output=True, text=True,
                              cwd=REPO, timeout=300)

    data = tmp_path / "small.parquet"
    pq.write_table(pq.read_table(REPO / "synth/datasets/adult.parquet").slice(0, 3000), data)
    r = synth("fingerprint", data, "-o", tmp_path / "fp.json")
    assert r.returncode == 0, r.stderr
    r = synth("fit-fingerprint", tmp_path / "fp.json", "-o", tmp_path / "m")
    assert r.returncode == 0 and "family fingerprint" in r.stderr, r.stderr
    r = synth("sample", tmp_path / "m", "-n", 200, "-o", tmp_path / "s.parquet", "--condition", "sex=Female")
    assert r.returncode == 0, r.stderr
    assert set(pq.read_table(tmp_path / "s.parquet")["sex"].to_pylist()) == {"Female"}
    r = synth("evaluate", tmp_path / "s.parquet", "-a", tmp_path / "m", "--data", data, "-o", tmp_path / "ev.json")
    assert r.returncode == 0, r.stderr[-2000:]
    assert 0.5 <= json.loads((tmp_path / "ev.json").read_text())["detection"]["c2st_auc"] <= 1
    r = synth("evaluate", tmp_path / "s.parquet", "-a", tmp_path / "m")
    assert r.returncode == 2 and "give the reference data" in " ".join(r.stderr.split()), r.stderr[-2000:]

    (tmp_path / "bad.json").write_text(json.dumps(_indefinite(adult_fp)))
    r = synth("fit-fingerprint", tmp_path / "bad.json", "-o", tmp_path / "m2", "--refuse-invalid")
    assert r.returncode == 2 and "not positive definite" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "m2").exists()
    r = synth("fit-fingerprint", tmp_path / "bad.json", "-o", tmp_path / "m2")
    assert r.returncode == 0 and "warning" in r.stderr and "repaired" in r.stderr, r.stderr
    (tmp_path / "broken.json").write_text("{not json")
    r = synth("fit-fingerprint", tmp_path / "broken.json", "-o", tmp_path / "m3")
    assert r.returncode == 2 and "not valid JSON" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.ray
def test_bulk_synthesis_with_a_fingerprint_model(ray_session, adult_model, tmp_path):
    from synth.pipelines.synthesize import SynthesizeConfig, synthesize

    out = tmp_path / "bulk"
    m = synthesize(SynthesizeConfig(artifact=adult_model, output=str(out), rows=3000, shard_rows=1000,
                                    actors=2, cpus_per_actor=0.5, conditions={"fixed": {"sex": "Female"}}))
    t = pq.ParquetDataset(sorted(str(p) for p in out.glob("part-*.parquet"))).read()
    assert m["rows"] == t.num_rows == 3000 and t.schema.remove_metadata() == ADULT
    assert set(t["sex"].to_pylist()) == {"Female"}
    direct = load_engine(adult_model)
    first = direct.sample(1000, {"sex": "Female"}, seed=0, start=0)  # rows keyed by (seed, row index)
    assert pq.read_table(out / "part-00000.parquet").equals(first)


def test_warnings_do_not_leak_for_valid_fingerprints(adult_fp):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FingerprintWarning)
        CopulaEngine.from_fingerprint(parse_fingerprint(adult_fp))


@pytest.mark.parametrize("family", ["fingerprint", "gan"])
def test_sampling_service_serves_every_one_pass_family(family, adult_model, tmp_path):
    """The endpoint's service (validation, calibration, batching, encoding) with each family."""
    import torch

    from synth.serving import ServeArgs
    from synth.serving.schemas import SampleRequest
    from synth.serving.service import RequestProblem, SamplingService

    uri = adult_model
    if family == "gan":
        from synth.config import RunConfig
        from synth.train.fit import fit

        torch.set_num_threads(1)
        uri = fit(RunConfig.parse({"output": str(tmp_path), "model": {"family": "gan", "gen_width": 32,
                                       "critic_width": 32, "noise_dim": 16, "val_rows": 256},
                                       "train": {"steps": 10, "eval_every": 5, "batch_size": 200,
                                                 "threads": 1}})).artifact_uri
    service = SamplingService(ServeArgs(artifact_uri=uri))
    service.warm_up()
    info = service.model_info()
    assert info["family"] == family and {c["name"] for c in info["condition_columns"]} >= {"sex", "race"}
    jobs = [service.validate(SampleRequest(rows=7, conditions={"sex": "Female"}, seed=3, format="json")),
            service.validate(SampleRequest(rows=4, seed=5, format="json"))]
    out, _ = service.run(jobs)
    body = json.loads(out[0])
    assert len(body["records"]) == 7 and {r["sex"] for r in body["records"]} == {"Female"}
    assert body["seed"] == 3 and len(json.loads(out[1])["records"]) == 4
    with pytest.raises(RequestProblem, match="no category 'Martian'"):
        service.validate(SampleRequest(rows=2, conditions={"race": "Martian"}))
    job = service.validate(SampleRequest(rows=2, guidance=3.0, conditions={"sex": "Male"}))
    assert job.steps == 1 and job.nfe == 1  # one pass: no steps chosen from steps_candidates
    assert service.headers(job)["X-Synth-Steps"] == "1" and service.headers(job)["X-Synth-NFE"] == "1"


def test_private_fingerprint_states_a_recomputable_guarantee_and_fits_a_model(tmp_path):
    """`synth fingerprint --epsilon`: noisy histograms on the declared grid and a noisy correlation
    of clipped normal scores; epsilon re-derived from the recorded noise; the copula family fits from
    it; an undeclared value is refused naming the column, never the value."""
    from typer.testing import CliRunner

    from synth.cli import app
    from synth.privacy import zcdp
    from synth.privacy.fingerprint import clipped_normal_variance

    rng = np.random.default_rng(0)
    n = 4000
    age = rng.normal(45, 12, n)
    income = np.where(rng.random(n) < 0.05, np.nan, 20_000 + 800 * age + rng.normal(0, 4000, n))
    sex = np.where(age + rng.normal(0, 8, n) > 45, "M", "F")
    pq.write_table(pa.table({"age": np.clip(age, 18, 90).round().astype(np.int64),
                             "income": pa.array(income, from_pandas=True), "sex": sex}),
                   tmp_path / "d.parquet")
    schema = {"age": {"kind": "integer", "min": 18, "max": 90},
              "income": {"kind": "continuous", "min": 0, "max": 200_000, "nullable": True},
              "sex": {"kind": "categorical", "categories": ["F", "M", "X"]}}
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    r = CliRunner().invoke(app, ["fingerprint", str(tmp_path / "d.parquet"), "-o", str(tmp_path / "fp.json"),
                                 "--epsilon", "2", "--schema", str(tmp_path / "schema.json")])
    assert r.exit_code == 0, r.output
    fp = json.loads((tmp_path / "fp.json").read_text())
    p = fp["privacy"]
    rho = p["histograms"] / (2 * p["noise_std_histogram"] ** 2) + p["sensitivity_correlation"] ** 2 / (
        2 * p["noise_std_correlation"] ** 2)
    assert rho == pytest.approx(p["rho"], rel=1e-9) and p["sensitivity_correlation"] == pytest.approx(
        p["dims"] * p["clip"] ** 2 / np.sqrt(2))
    assert zcdp.cdp_epsilon(rho, p["delta"]) == pytest.approx(p["epsilon"]) and 1.99 < p["epsilon"] <= 2.0
    assert "withheld" in fp["source"]["sha256"] and 0.02 < fp["columns"][1]["null_share"] < 0.08
    assert [d for d in fp["correlation"]["dims"]] == [["age", "value"], ["income", "value"], ["income", "null"],
                                                      ["sex", "value"]]
    corr = np.asarray(fp["correlation"]["matrix"])
    assert corr[0, 1] > 0.5  # age and income, through the noise
    assert clipped_normal_variance(50.0) == pytest.approx(1.0) and clipped_normal_variance(1.0) < 1.0
    r = CliRunner().invoke(app, ["fit-fingerprint", str(tmp_path / "fp.json"), "-o", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    model = load_engine(str(tmp_path / "m"))
    assert model.manifest["privacy"]["dp"] is True and model.manifest["privacy"]["epsilon"] == p["epsilon"]
    rows = model.sample(2000, seed=1).to_pandas()
    assert np.corrcoef(rows["age"], rows["income"].fillna(rows["income"].mean()))[0, 1] > 0.4
    pq.write_table(pa.table({"age": [30] * 50, "income": [1.0] * 50, "sex": ["PERSONAL-VALUE-7"] * 50}),
                   tmp_path / "bad.parquet")
    for args, named in ((["--epsilon", "1", "--schema", str(tmp_path / "schema.json")], "'sex'"),
                        (["--epsilon", "1"], "--schema")):
        r = CliRunner().invoke(app, ["fingerprint", str(tmp_path / "bad.parquet"), "-o", str(tmp_path / "b.json"),
                                     *args])
        assert r.exit_code == 2 and named in r.output and "PERSONAL-VALUE-7" not in r.output
