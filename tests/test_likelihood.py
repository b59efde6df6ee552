"""Likelihoods (synth.engine.likelihood, synth.evaluate.likelihood): every family with `log_prob`
scores held-out rows, prefers the data it learnt to the same columns with their dependence
shuffled away, and the flow recovers the analytic likelihood of a Gaussian table; `synth score`
writes per-row scores, `synth evaluate`, the report and contracts show the held-out NLL and bpd."""
from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from synth.cli import app
from synth.config import RunConfig
from synth.families import FAMILIES, likelihood_families, load_engine
from synth.io.data import SplitConfig, load_splits
from synth.train.fit import fit

TRAIN = {"eval_every": 50, "batch_size": 128, "warmup_steps": 5, "threads": 1, "precision": "fp32", "patience": None}
SMALL = {"autoregressive": {"family": "autoregressive", "hidden": 32},
         "flow": {"family": "flow", "transforms": 2, "hidden": 32, "depth": 1, "bins": 6},
         "vae": {"family": "vae", "latent": 4, "hidden": 48, "depth": 1, "kl_warmup": 200, "iw_samples": 16}}
STEPS = {"autoregressive": 200, "flow": 200, "vae": 1000}  # the VAE learns the dependence slowest


def dependent_table(n: int, seed: int, shuffled: bool = False) -> pa.Table:
    """Three categories that set a numeric's mean, a second numeric that follows it, a flag from
    the second numeric's sign and a nullable numeric: strong dependence between columns."""
    rng = np.random.default_rng(seed)
    group = rng.choice(["north", "south", "east"], size=n, p=[0.5, 0.3, 0.2])
    mean = np.select([group == "north", group == "south"], [-2.0, 0.0], 2.0)
    x = mean + 0.4 * rng.standard_normal(n)
    y = x + 0.3 * rng.standard_normal(n)
    flag = np.where(rng.random(n) < 0.9, y > 0, y <= 0)
    extra = np.round(10 + 3 * y + rng.standard_normal(n), 2)
    cols = {"group": group, "x": x, "y": y, "flag": flag, "extra": extra}
    if shuffled:  # each column permuted on its own: the same marginals, no dependence
        cols = {k: v[rng.permutation(n)] for k, v in cols.items()}
    table = pa.table(cols)
    mask = pa.array(rng.random(n) < 0.1)
    return table.set_column(4, "extra", pc.if_else(mask, pa.scalar(None, pa.float64()), table["extra"]))


def fit_family(family: str, uri: str, out, steps: int, **model) -> str:
    cfg = RunConfig.parse({"name": f"lik-{family}", "output": str(out), "data": {"uri": uri},
                           "model": {**SMALL[family], **model}, "train": {**TRAIN, "steps": steps},
                           "evaluate": {"check": "off"}})
    torch.set_num_threads(1)
    return fit(cfg).artifact_uri


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    d = tmp_path_factory.mktemp("lik-data")
    pq.write_table(dependent_table(3000, 0), d / "real.parquet")
    pq.write_table(dependent_table(3000, 0, shuffled=True), d / "shuffled.parquet")
    return d


@pytest.fixture(scope="module")
def models(tables, tmp_path_factory):
    out = {}
    for family in SMALL:
        for kind in ("real", "shuffled"):
            out[family, kind] = fit_family(family, str(tables / f"{kind}.parquet"),
                                           tmp_path_factory.mktemp(f"{family}-{kind}"), steps=STEPS[family])
    return out


def test_the_likelihood_families_are_registered():
    assert set(SMALL) <= set(likelihood_families())
    assert "gan" not in likelihood_families() and "gan" in FAMILIES


@pytest.mark.parametrize("family", sorted(SMALL))
def test_the_data_beats_shuffled_columns_on_held_out_rows(family, models, tables):
    """A model of the data gives its held-out rows a lower NLL than a model of the same columns
    with their dependence shuffled away (the marginals, and so the codec, are the same)."""
    _, _, test = load_splits(str(tables / "real.parquet"), SplitConfig())
    real, shuffled = load_engine(models[family, "real"]), load_engine(models[family, "shuffled"])
    nll_real, nll_shuffled = -real.log_prob(test).mean(), -shuffled.log_prob(test).mean()
    assert np.isfinite(nll_real) and np.isfinite(nll_shuffled)
    assert nll_real < nll_shuffled - 1.0, (nll_real, nll_shuffled)
    assert np.array_equal(real.log_prob(test, seed=3), real.log_prob(test, seed=3))  # seeded estimators


def test_autoregressive_log_prob_is_its_validation_loss_plus_the_bin_width_term(models, tables):
    engine = load_engine(models["autoregressive", "real"])
    _, val, _ = load_splits(str(tables / "real.parquet"), SplitConfig())
    from synth.train.prepare import encode_tensor

    x = encode_tensor(engine.codec, val, seed=None, strict=False)
    engine.ema.eval()
    token_nll = engine.loss(engine.ema, x, None, reduce=False).double().numpy()
    k1, k2 = engine.config.numeric_bins
    # x, y and extra are continuous: equal-mass coarse classes of 1/k1, fine bins of 1/(k1 k2) in u
    assert [p for _, p in engine.tokens].count("fine") == 3
    present = 3 - np.asarray(val["extra"].is_null().to_numpy(zero_copy_only=False), dtype=int)
    np.testing.assert_allclose(engine.log_prob(val), -token_nll + present * math.log(k1 * k2), rtol=1e-5, atol=1e-4)


def test_vae_importance_weighting_tightens_its_elbo(models, tables):
    engine = load_engine(models["vae", "real"])
    _, val, _ = load_splits(str(tables / "real.parquet"), SplitConfig())
    m = engine.manifest["metrics"]
    assert {"elbo_val", "elbo_val_gain", "reconstruction", "posterior_collapse_rate"} <= set(m)
    assert 0 <= m["posterior_collapse_rate"] <= 1 and 0 <= m["reconstruction"] <= 1
    assert m["elbo_val_gain"] >= 0 and m["elbo_val"] == pytest.approx(-m["val_loss"], abs=1e-3)
    engine.config = engine.config.model_copy(update={"iw_samples": 1})
    elbo = engine.log_prob(val).mean()
    engine.config = engine.config.model_copy(update={"iw_samples": 64})
    iwae = engine.log_prob(val).mean()
    assert iwae > elbo  # K=64 is a tighter lower bound than K=1 (the ELBO)
    hist = engine.manifest["history"]
    assert all("posterior_collapse_rate" in h for h in hist)


def test_vae_early_stopping_waits_out_the_kl_warm_up():
    from synth.engine.flow import FlowConfig, FlowEngine
    from synth.engine.vae import VAEConfig, VAEEngine
    from synth.table import TableCodec
    from synth.train.config import TrainConfig
    from synth.train.monitored import waiting_out_warmup

    codec = TableCodec.fit([dependent_table(200, 0)])
    vae = VAEEngine(VAEConfig(kl_warmup=450, latent=2, hidden=8), codec)
    assert waiting_out_warmup(vae, TrainConfig(patience=6, eval_every=45)).patience == 6 + 10
    assert waiting_out_warmup(vae, TrainConfig(patience=6, eval_every=45, grad_accum=2)).patience == 6 + 5
    assert waiting_out_warmup(vae, TrainConfig(patience=None, eval_every=45)).patience is None
    no_warmup = VAEEngine(VAEConfig(kl_warmup=0, latent=2, hidden=8), codec)
    assert waiting_out_warmup(no_warmup, TrainConfig(patience=6, eval_every=45)).patience == 6
    flow = FlowEngine(FlowConfig(hidden=8, transforms=1), codec)
    assert waiting_out_warmup(flow, TrainConfig(patience=6, eval_every=45)).patience == 6


def test_flow_manifest_records_the_invertibility_error(models):
    engine = load_engine(models["flow", "real"])
    m = engine.manifest["metrics"]
    nulls = np.mean([v is None for v in engine.sample(2000, seed=0)["extra"].to_pylist()])
    assert 0.03 < nulls < 0.25  # 10 % of "extra" is null: the flag is learnt (roughly, in 200 steps) and decoded
    assert m["inv_error"] < 1e-3 and m["val_bpd"] == pytest.approx(m["val_loss"] / (5 * math.log(2)), rel=0.05)


def test_flow_recovers_the_analytic_likelihood_of_a_gaussian_table(tmp_path):
    """Three equicorrelated standard normal columns (rho 0.7): in synth's likelihood space (each
    numeric's CDF value u) the density is the Gaussian copula's, whose expected NLL is
    1/2 log det R = -0.797 nats/row. The flow's held-out NLL must match it within 0.06 nats/row, and
    the copula density evaluated on the same rows (the codec's ranks) within 0.04."""
    rho, n = 0.7, 8000
    cov = np.full((3, 3), rho) + (1 - rho) * np.eye(3)
    xs = np.random.default_rng(1).multivariate_normal(np.zeros(3), cov, size=n)
    pq.write_table(pa.table({f"v{i}": xs[:, i] for i in range(3)}), tmp_path / "gauss.parquet")
    uri = fit_family("flow", str(tmp_path / "gauss.parquet"), tmp_path / "m", steps=600, transforms=2, hidden=32)
    engine = load_engine(uri)
    _, _, test = load_splits(str(tmp_path / "gauss.parquet"), SplitConfig())
    nll = -engine.log_prob(test).mean()
    analytic = 0.5 * np.linalg.slogdet(cov)[1]
    y = engine.codec.encode(test)  # the codec's normal scores of the held-out rows
    inv = np.linalg.inv(cov)
    copula = -0.5 * np.einsum("ni,ij,nj->n", y, inv - np.eye(3), y) - 0.5 * np.linalg.slogdet(cov)[1]
    assert abs(nll - analytic) < 0.06, (nll, analytic)
    assert abs(nll + copula.mean()) < 0.04, (nll, -copula.mean())


# ---- synth score, synth evaluate, the report, contracts ---------------------------------------------
def test_synth_score_writes_per_row_scores_and_ranks_an_outlier_last(models, tables, tmp_path):
    artifact = models["autoregressive", "real"]
    _, _, test = load_splits(str(tables / "real.parquet"), SplitConfig())
    rows = test.slice(0, 50).to_pylist()
    rows.append({"group": "north", "x": 2.5, "y": -2.4, "flag": True, "extra": 30.0})  # against every dependence
    rows.append({"group": "west", "x": -2.0, "y": -2.0, "flag": False, "extra": 4.0})  # a category never seen
    data = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=test.schema), data)
    out = tmp_path / "scores.parquet"
    r = CliRunner().invoke(app, ["score", artifact, str(data), "-o", str(out)])
    assert r.exit_code == 0, r.output
    scored = pq.read_table(out)
    assert scored.column_names == test.column_names + ["log_prob", "bpd", "unseen_values"]
    lp = scored["log_prob"].to_numpy()
    assert np.argmin(lp[:51]) == 50  # the row that breaks the dependence is the least likely
    assert scored["unseen_values"].to_pylist()[-1] == 1 and sum(scored["unseen_values"].to_pylist()[:-1]) == 0
    np.testing.assert_allclose(scored["bpd"].to_numpy(), -lp / (5 * math.log(2)))
    assert json.loads(scored.schema.metadata[b"synth.score"])["artifact_id"] == load_engine(artifact).manifest[
        "artifact_id"]
    only = tmp_path / "only.parquet"
    assert CliRunner().invoke(app, ["score", artifact, str(data), "-o", str(only), "--scores-only"]).exit_code == 0
    assert pq.read_table(only).column_names == ["log_prob", "bpd", "unseen_values"]


def test_synth_score_refuses_bad_input_with_what_to_do(models, tables, tmp_path):
    artifact = models["flow", "real"]
    pq.write_table(pa.table({"group": ["north"], "x": [0.1]}), tmp_path / "partial.parquet")
    r = CliRunner().invoke(app, ["score", artifact, str(tmp_path / "partial.parquet"), "-o",
                                 str(tmp_path / "o.parquet")])
    assert r.exit_code == 2 and "lack the model's columns" in r.output and "'y'" in r.output
    (tmp_path / "notes.parquet").write_text("not parquet")
    r = CliRunner().invoke(app, ["score", artifact, str(tmp_path / "notes.parquet"), "-o", str(tmp_path / "o.parquet")])
    assert r.exit_code == 2 and "not a readable Parquet file" in r.output
    r = CliRunner().invoke(app, ["score", artifact, str(tables / "real.parquet"), "-o", str(tmp_path / "o.csv")])
    assert r.exit_code == 2 and ".parquet" in r.output


def test_a_family_without_a_likelihood_is_named(tables, tmp_path):
    from synth.table import CodecConfig
    from synth.table.fingerprint import build_fingerprint, write_fingerprint
    from synth.train.fit import fit_fingerprint

    write_fingerprint(build_fingerprint(str(tables / "real.parquet"), CodecConfig(), quantiles=21),
                      str(tmp_path / "fp.json"))
    fit_fingerprint(str(tmp_path / "fp.json"), str(tmp_path / "copula"))
    r = CliRunner().invoke(app, ["score", str(tmp_path / "copula"), str(tables / "real.parquet"), "-o",
                                 str(tmp_path / "o.parquet")])
    assert r.exit_code == 2 and "has no likelihood" in r.output and "autoregressive" in r.output


def test_evaluate_report_and_contract_show_the_held_out_likelihood(models, tmp_path):
    artifact = models["vae", "real"]
    engine = load_engine(artifact)
    syn = tmp_path / "syn.parquet"
    assert CliRunner().invoke(app, ["sample", artifact, "-n", "300", "-o", str(syn)]).exit_code == 0
    out = tmp_path / "ev.json"
    r = CliRunner().invoke(app, ["evaluate", str(syn), "--artifact", artifact, "-o", str(out)], terminal_width=200)
    assert r.exit_code == 0, r.output
    lik = json.loads(out.read_text())["likelihood"]
    assert "Held-out NLL" in r.output and "bits per dimension" in r.output
    assert lik["dimensions"] == 5 and lik["bpd"] == pytest.approx(lik["nats_per_row"] / (5 * math.log(2)))
    assert lik["estimate"].startswith("bound")
    contract = tmp_path / "c.yaml"
    contract.write_text(f"likelihood:\n  bpd_max: {lik['bpd'] - 0.01}\n  posterior_collapse_rate_max: 1.0\n"
                        f"  reconstruction_min: 0.0\n")
    r = CliRunner().invoke(app, ["evaluate", str(syn), "--artifact", artifact, "--contract", str(contract)],
                           terminal_width=200)
    assert r.exit_code == 1 and "likelihood.bpd_max" in r.output
    contract.write_text(f"likelihood:\n  bpd_max: {lik['bpd'] + 0.01}\n  inv_error_max: 0.001\n")
    r = CliRunner().invoke(app, ["evaluate", str(syn), "--artifact", artifact, "--contract", str(contract)],
                           terminal_width=200)
    assert r.exit_code == 1 and "inv_error was not measured" in r.output  # a VAE has no inverse: fails closed
    html = tmp_path / "r.html"
    r = CliRunner().invoke(app, ["report", str(syn), "--artifact", artifact, "-o", str(html)], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "Held-out NLL (nats/row" in html.read_text() and engine.family == "vae"


def test_the_flow_and_vae_contracts_load_with_their_likelihood_sections():
    from pathlib import Path

    from synth.evaluate.contract import load_contract, threshold_names

    c = load_contract(str(Path(__file__).resolve().parents[1] / "contracts" / "adult-vae.yaml"))
    names = {t[0] for t in c.thresholds()}
    assert {"likelihood.bpd_max", "likelihood.posterior_collapse_rate_max", "likelihood.reconstruction_min",
            "likelihood.elbo_val_gain_min"} <= names <= set(threshold_names())
    c = load_contract(str(Path(__file__).resolve().parents[1] / "contracts" / "adult-flow.yaml"))
    assert {"likelihood.bpd_max", "likelihood.inv_error_max"} <= {t[0] for t in c.thresholds()}
