"""Likelihoods (synth.engine.likelihood, synth.evaluate.likelihood): every family with `log_prob`
scores held-out rows, prefers the data it learnt to the same columns with their dependence
shuffled away, the flow recovers the analytic likelihood of a Gaussian table and the diffusion
family's probability-flow ODE that of a Gaussian mixture under its exact denoiser; `synth score`
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
         "vae": {"family": "vae", "latent": 4, "hidden": 48, "depth": 1, "kl_warmup": 200, "iw_samples": 16},
         "diffusion": {"family": "diffusion", "net": {"width": 64, "depth": 2, "embed_dim": 32},
                       "likelihood": {"steps": 12}}}
STEPS = {"autoregressive": 200, "flow": 200, "vae": 1000, "diffusion": 400}  # the VAE learns the dependence slowest


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


class Fitted(dict):
    """(family, "real" | "shuffled") -> artifact URI, fitted on first use (a test of one family fits only it)."""

    def __init__(self, tables, factory):
        super().__init__()
        self.tables, self.factory = tables, factory

    def __missing__(self, key):
        family, kind = key
        self[key] = fit_family(family, str(self.tables / f"{kind}.parquet"), self.factory.mktemp(f"{family}-{kind}"),
                               steps=STEPS[family])
        return self[key]


@pytest.fixture(scope="module")
def models(tables, tmp_path_factory):
    return Fitted(tables, tmp_path_factory)


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


class ExactMixtureDenoiser(torch.nn.Module):
    """The eps head of the exact denoiser E[x0 | x_t] of a Gaussian mixture over codec features
    (weights pi_k, means m_k, covariances S_k, singular where a component is a point mass)."""

    def __init__(self, process, pis, means, covs):
        super().__init__()
        self.process = process
        self.log_pi = torch.nn.Parameter(torch.log(torch.tensor(pis, dtype=torch.float64)), requires_grad=False)
        self.m = torch.nn.Parameter(torch.tensor(np.asarray(means)), requires_grad=False)
        self.S = torch.nn.Parameter(torch.tensor(np.asarray(covs)), requires_grad=False)

    def forward(self, x, t, cond=None):
        xd = x.double()
        a, s = self.process.alpha(t.double())[:, None], self.process.sigma(t.double())[:, None]
        eye = torch.eye(x.shape[1], dtype=torch.float64)
        log_w, post = [], []
        for k in range(len(self.m)):
            cov = a[:, :, None] ** 2 * self.S[k] + s[:, :, None] ** 2 * eye  # of x_t given component k
            r = xd - a * self.m[k]
            sol = torch.linalg.solve(cov, r.unsqueeze(-1)).squeeze(-1)
            log_w.append(self.log_pi[k] - 0.5 * (r * sol).sum(dim=1) - 0.5 * torch.linalg.slogdet(cov)[1])
            post.append(self.m[k] + a * (sol @ self.S[k]))
        x0 = (torch.softmax(torch.stack(log_w, 1), 1).unsqueeze(-1) * torch.stack(post, 1)).sum(dim=1)
        return ((xd - a * x0) / s).to(x.dtype)


def gaussian_mixture_model(process: dict | None = None, steps: int = 48):
    """A diffusion engine whose network is the exact denoiser of a known table, its rows and their
    analytic log-likelihood: a categorical (3 slots) and two numerics whose codec normal scores are
    a correlated Gaussian per category, p(row) = pi_k N(z; mu_k, S_k) / prod phi(z) in synth's space."""
    from scipy.stats import multivariate_normal, norm

    from synth.engine.diffusion import DiffusionConfig, DiffusionEngine
    from synth.table import TableCodec

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    codec = TableCodec.fit([pa.table({"g": rng.choice(["a", "b", "c"], 900, p=[.5, .3, .2]),
                                      "v1": rng.standard_normal(900), "v2": rng.standard_normal(900)})])
    assert codec.width == 5 and codec.slices[0] == slice(0, 3)
    pis, means, covs = [0.5, 0.3, 0.2], [], []
    for k, (mu, sd, rho) in enumerate([((-1.0, -0.5), 0.5, 0.6), ((0.5, 0.8), 0.7, -0.4), ((1.2, -1.0), 0.4, 0.0)]):
        m, cov = -np.ones(5), np.zeros((5, 5))
        m[k], m[3:] = 1.0, mu
        cov[3:, 3:] = sd ** 2 * np.array([[1, rho], [rho, 1]])
        means.append(m)
        covs.append(cov)
    cfg = {"likelihood": {"steps": steps}, **({"process": process} if process else {})}
    engine = DiffusionEngine(DiffusionConfig.model_validate(cfg), codec)
    engine.ema = ExactMixtureDenoiser(engine.process, pis, means, covs)
    ks = rng.choice(3, 200, p=pis)
    rows = codec.decode(np.stack([rng.multivariate_normal(means[k], covs[k]) for k in ks]))
    z = codec.encode(rows)
    slot = z[:, :3].argmax(axis=1)
    analytic = np.array([math.log(pis[k]) + multivariate_normal(means[k][3:], covs[k][3:, 3:]).logpdf(v[3:])
                         for k, v in zip(slot, z)]) - norm.logpdf(z[:, 3:]).sum(axis=1)
    return engine, rows, analytic


def test_diffusion_ode_recovers_the_analytic_likelihood_of_a_gaussian_mixture():
    """The estimator, not the training: with the exact denoiser of a Gaussian mixture in place of
    the network (`gaussian_mixture_model`), the ODE likelihood (48 RK4 steps, exact trace: 5
    features) matches the analytic log-likelihood within 0.01 nats/row on average and 0.15 on every
    row (measured: 0.0004 and 0.070; the rest is the one draw of the t_min dequantisation);
    Hutchinson's estimate is unbiased (its mean within 4 standard errors), more probes make it less
    noisy, and the same seed gives the same scores."""
    from synth.evaluate.likelihood import held_out_likelihood

    engine, rows, analytic = gaussian_mixture_model()
    lp = engine.log_prob(rows, seed=0)
    assert engine.likelihood_kind.startswith("bound") and "exact trace" in engine.likelihood_kind
    assert abs(lp.mean() - analytic.mean()) < 0.01, (lp.mean(), analytic.mean())
    assert np.abs(lp - analytic).max() < 0.15, np.abs(lp - analytic).max()
    few = rows.slice(0, 20)
    np.testing.assert_array_equal(engine.log_prob(few, seed=0, steps=8), engine.log_prob(few, seed=0, steps=8))
    assert not np.array_equal(engine.log_prob(few, seed=0, steps=8), engine.log_prob(few, seed=1, steps=8))

    engine.config.likelihood.exact_trace_features = 4  # 5 features: Hutchinson
    hutch = engine.log_prob(rows, seed=0)
    assert "Hutchinson" in engine.likelihood_kind
    err = hutch - analytic
    assert abs(err.mean()) < 4 * err.std() / math.sqrt(len(err)), (err.mean(), err.std())
    assert err.std() > 5 * (lp - analytic).std()  # the probe's noise, not the exact trace's
    engine.config.likelihood.probes = 8
    err8 = engine.log_prob(rows, seed=0, steps=16) - analytic
    assert "8 Rademacher probes" in engine.likelihood_kind
    assert err8.std() < 0.6 * err.std(), (err8.std(), err.std())  # 1/sqrt(8) of the noise, up to the rest

    engine.config.likelihood.held_out_rows = 40  # evaluations score at most this many rows
    assert held_out_likelihood(engine, rows, max_rows=10_000)["rows"] == 40


@pytest.mark.parametrize("process", [{"kind": "vp", "schedule": "linear"}, {"kind": "ve"}, {"kind": "flow"}],
                         ids=["vp-linear", "ve", "flow"])
def test_diffusion_ode_likelihood_holds_for_every_noise_process(process):
    """The same analytic check under the other processes (32 steps; measured mean errors 0.0003,
    0.0037, 0.0037 nats/row, largest per-row errors 0.12, 0.04, 0.04)."""
    engine, rows, analytic = gaussian_mixture_model(process, steps=32)
    err = engine.log_prob(rows, seed=0) - analytic
    assert abs(err.mean()) < 0.01 and np.abs(err).max() < 0.25, (err.mean(), np.abs(err).max())


def test_a_distilled_student_has_no_likelihood_and_says_why():
    from synth.engine.diffusion import DiffusionConfig, DiffusionEngine, DistilledSpec
    from synth.errors import ConfigError
    from synth.evaluate.likelihood import held_out_likelihood
    from synth.families import require_likelihood
    from synth.table import TableCodec

    codec = TableCodec.fit([dependent_table(200, 0)])
    spec = DistilledSpec(steps=2, grid=[1.0, 0.5, 0.0], guidance_max=1.0)
    student = DiffusionEngine(DiffusionConfig(distilled=spec, net={"width": 16, "guidance_input": True}), codec)
    with pytest.raises(ConfigError, match="teacher"):
        require_likelihood(student)
    assert held_out_likelihood(student, dependent_table(50, 1)) is None
    assert "likelihood" not in student.describe()
    assert "likelihood" in DiffusionEngine(DiffusionConfig(net={"width": 16}), codec).describe()


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


def test_synth_score_scores_with_a_diffusion_model_whose_hutchinson_trace_agrees_with_the_exact_one(
        models, tables, tmp_path):
    artifact = models["diffusion", "real"]
    engine = load_engine(artifact)
    assert engine.manifest["likelihood"]["steps"] == 12 and "exact trace" in engine.manifest["likelihood"]["estimate"]
    _, _, test = load_splits(str(tables / "real.parquet"), SplitConfig())
    data = tmp_path / "rows.parquet"
    pq.write_table(test.slice(0, 40), data)
    out = tmp_path / "scores.parquet"
    r = CliRunner().invoke(app, ["score", artifact, str(data), "-o", str(out), "--scores-only", "--seed", "2"])
    assert r.exit_code == 0, r.output
    lp = pq.read_table(out)["log_prob"].to_numpy()
    np.testing.assert_array_equal(lp, engine.log_prob(test.slice(0, 40), seed=2))
    # on a trained network (9 features: exact by default), one Rademacher probe per row is unbiased
    rows = test.slice(0, 300)
    exact = engine.log_prob(rows)
    engine.config.likelihood.exact_trace_features = 0
    diff = engine.log_prob(rows) - exact
    assert abs(diff.mean()) < 4 * diff.std() / math.sqrt(len(diff)) + 0.05, (diff.mean(), diff.std())


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
