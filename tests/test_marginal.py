"""The marginal family (MST under zCDP on Private-PGM): its accountant, refusals before any row is
read, the manifest's epsilon recomputed from the recorded mechanism parameters, errors that name
no data value, the default family of a private fit, and the canary audit's mechanics."""
from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from synth.config import RunConfig
from synth.errors import ConfigError
from synth.privacy import zcdp
from synth.privacy.config import PrivacyConfig
from synth.privacy.marginal import plan_marginal

SCHEMA = {"age": {"kind": "integer", "min": 17, "max": 90},
          "sex": {"kind": "categorical", "categories": ["Female", "Male"]},
          "job": {"kind": "categorical", "categories": ["a", "b", "c", "secret-job"], "nullable": True}}
THIRDS = (1 / 3, 1 / 3, 1 / 3)


def _table(n: int = 3000, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    sex = rng.choice(["Female", "Male"], n)
    age = np.clip(rng.normal(40, 12, n) + (sex == "Male") * 5, 17, 90).astype(np.int64)
    job = np.where(age > 45, "a", np.where(sex == "Male", "b", "c")).astype(object)
    job[rng.random(n) < 0.05] = None
    return pa.table({"age": age, "sex": sex, "job": pa.array(job, type=pa.string())})


def _config(tmp_path, table: pa.Table, **privacy) -> dict:
    pq.write_table(table, tmp_path / "data.parquet")
    return {"name": "tiny", "output": str(tmp_path / "run"), "data": {"uri": str(tmp_path / "data.parquet")},
            "model": {"family": "marginal", "iters": 50}, "evaluate": {"check": "off"},
            "privacy": {"enabled": True, "epsilon": 2.0, "delta": 1e-5, "schema": SCHEMA, **privacy}}


def test_zcdp_conversion_round_trips_and_beats_the_classic_bound():
    for eps in (0.5, 1.0, 3.0, 8.0):
        rho = zcdp.cdp_rho(eps, 1e-5)
        assert zcdp.cdp_epsilon(rho, 1e-5) == pytest.approx(eps, rel=1e-6)
        assert eps < rho + 2 * math.sqrt(rho * math.log(1e5))  # tighter than rho + 2 sqrt(rho log 1/delta)
    assert zcdp.gaussian_rho(zcdp.gaussian_sigma(0.02)) == pytest.approx(0.02)


def test_plan_spends_exactly_the_budget_and_refuses_what_exceeds_it():
    pcfg = PrivacyConfig(enabled=True, epsilon=1.0, delta=1e-5, schema=SCHEMA)
    plan = plan_marginal(pcfg, 20_000, 15, THIRDS, method="mst")
    assert plan.total_epsilon() == pytest.approx(1.0, rel=1e-6) and plan.rounds == 14
    with pytest.raises(ConfigError, match=r"model.sigma 5 .* raise model.sigma to at least"):
        plan_marginal(pcfg, 20_000, 15, THIRDS, sigma=5.0, method="mst")
    assert plan_marginal(pcfg, 20_000, 15, THIRDS, sigma=60.0, method="mst").total_epsilon() < 1.0
    with pytest.raises(ConfigError, match="model.sigma fixes MST's noise"):
        plan_marginal(pcfg, 20_000, 15, THIRDS, sigma=60.0)
    for method in ("mst", "aim"):
        with pytest.raises(ConfigError, match=r"privacy.epsilon 0.01 is too small for 500 training rows.*at least"):
            plan_marginal(PrivacyConfig(enabled=True, epsilon=0.01, delta=1e-5, schema=SCHEMA), 500, 15, THIRDS,
                          method=method)
    with pytest.raises(ConfigError, match="privacy.noise_multiplier is a DP-SGD setting"):
        plan_marginal(PrivacyConfig(enabled=True, noise_multiplier=1.0, schema=SCHEMA), 20_000, 15, THIRDS)
    with pytest.raises(ConfigError, match="privacy.delta"):
        plan_marginal(PrivacyConfig(enabled=True, epsilon=1.0, delta=1e-3, schema=SCHEMA), 5_000, 15, THIRDS)


def test_aim_plans_its_first_round_and_weights_the_targets_triples():
    from synth.privacy.marginal import aim_workload

    pcfg = PrivacyConfig(enabled=True, epsilon=1.0, delta=1e-5, schema=SCHEMA)
    plan = plan_marginal(pcfg, 20_000, 15, THIRDS)
    assert plan.method == "aim" and plan.rounds == 8 * 15 and plan.rounds_log == []
    per_round = plan.rho / plan.rounds  # 90 % measures, 10 % selects; the 1-way marginals at the same noise
    assert zcdp.gaussian_rho(plan.sigma_one_way) == pytest.approx(0.9 * per_round)
    assert zcdp.exponential_rho(plan.epsilon_select) == pytest.approx(0.1 * per_round)
    w = aim_workload(4, target=3)
    assert (0, 1, 3) in w and (0, 1, 2) not in w and (0, 1) in w and (2,) in w
    assert w[(0, 3)] > w[(0, 1)]  # a pair with the target sits in more of the workload's triples
    assert aim_workload(4, None) == {cl: v for cl, v in aim_workload(4, None).items() if len(cl) <= 2}


def test_a_private_run_defaults_to_the_marginal_family_and_dp_sgd_stays_available():
    raw = {"privacy": {"enabled": True, "epsilon": 1.0, "schema": SCHEMA}}
    assert RunConfig.parse(raw).model.family == "marginal"
    assert RunConfig.parse({**raw, "model": {"family": "diffusion"}}).model.family == "diffusion"
    assert RunConfig.parse({}).model.family != "marginal"  # non-private runs keep the default


def test_fit_publishes_an_epsilon_recomputable_from_its_parameters(tmp_path):
    from synth.cli import app
    from synth.families import load_engine

    raw = _config(tmp_path, _table())
    (tmp_path / "run.yaml").write_text(json.dumps(raw))
    r = CliRunner().invoke(app, ["fit", "--config", str(tmp_path / "run.yaml"), "--epsilon", "2"])
    assert r.exit_code == 0, r.output
    engine = load_engine(str(tmp_path / "run" / "model"))
    p = engine.manifest["privacy"]
    # an officer's recomputation from the recorded mechanism parameters alone
    rho = p["columns"] / (2 * p["noise_std_one_way"] ** 2) + sum(e ** 2 / 8 + 1 / (2 * s ** 2)
                                                                 for e, s, _ in p["rounds_log"])
    assert p["rounds"] == len(p["rounds_log"]) > 0 and "AIM" in p["mechanism"]
    assert rho == pytest.approx(p["rho"], rel=1e-9) and rho == pytest.approx(sum(p["rho_parts"].values()))
    assert zcdp.cdp_epsilon(rho, p["delta"]) == pytest.approx(p["epsilon"], rel=1e-9)
    assert p["epsilon"] <= p["epsilon_budget"] == 2.0 and p["epsilon"] > 1.99
    assert engine.manifest["input"]["sha256"].startswith("withheld")
    t = engine.sample(500, {"job": "secret-job"}, seed=3)
    assert set(t.column("job").to_pylist()) == {"secret-job"}
    assert t.schema == engine.codec.schema and engine.sample(500, seed=3).num_rows == 500


@pytest.mark.parametrize("per_round", [1, 3])
def test_aim_rounds_charge_every_selection_and_measurement_and_refit_once_per_round(per_round):
    from synth.privacy.marginal import run_aim

    rng = np.random.default_rng(0)
    n, sizes = 4000, [6, 3, 4, 2]
    data = np.stack([rng.integers(0, s, n) for s in sizes], axis=1)
    data[:, 3] = (data[:, 0] + data[:, 1] > 4).astype(int)  # the target depends on a pair
    names = ["a", "b", "c", "y"]
    pcfg = PrivacyConfig(enabled=True, epsilon=2.0, delta=1e-5, schema=SCHEMA)
    plan = plan_marginal(pcfg, n, len(sizes), THIRDS, rounds_per_column=2)
    m = run_aim(data, sizes, names, plan, target=3, iters=50, round_iters=20, per_round=per_round,
                rng=np.random.default_rng(1))
    log = plan.rounds_log
    assert len(log) == len(m.cliques) == len(m.marginals) > per_round
    # the accountant's parts are the recorded measurements: every draw and measurement counted
    rho = len(sizes) * zcdp.gaussian_rho(plan.sigma_one_way) + sum(zcdp.exponential_rho(e) + zcdp.gaussian_rho(s)
                                                                   for e, s, _ in log)
    assert rho == pytest.approx(plan.spent_rho(), rel=1e-12) and rho <= plan.rho * (1 + 1e-9)
    assert plan.total_epsilon() == pytest.approx(2.0, rel=1e-3)  # AIM spends its whole budget
    # one refit per round (plus the 1-way model and the final fit): the rounds are what cost time
    assert m.log["refits"] <= -(-len(log) // per_round) + 2 + (per_round > 1)
    rounds = [log[i:i + per_round] for i in range(0, len(log), per_round)] if per_round > 1 else []
    for r in rounds[:-1]:  # a round's picks share its noise, and none holds another
        assert len({(e, s) for e, s, _ in r}) == 1
        assert not any(set(x[2]) < set(y[2]) for x in r for y in r)
    assert plan.manifest(len(log), plan.total_epsilon())["rounds"] == len(log)


def test_bad_input_names_the_field_and_no_data_value(tmp_path):
    from synth.cli import app

    table = _table(500)
    bad_cat = table.set_column(2, "job", pa.array(["PERSONAL-VALUE-42"] * 500))
    raw = _config(tmp_path, bad_cat)
    (tmp_path / "bad.yaml").write_text(json.dumps(raw))
    r = CliRunner().invoke(app, ["fit", "--config", str(tmp_path / "bad.yaml"), "--epsilon", "20"])
    assert r.exit_code == 2 and "'job'" in r.output and "privacy.schema.job.categories" in r.output
    assert "PERSONAL-VALUE-42" not in r.output
    no_bounds = _config(tmp_path, table)
    no_bounds["privacy"]["schema"] = {**SCHEMA, "age": {"kind": "integer"}}
    (tmp_path / "nb.yaml").write_text(json.dumps(no_bounds))
    r = CliRunner().invoke(app, ["fit", "--config", str(tmp_path / "nb.yaml")])
    assert r.exit_code == 2 and "age" in r.output and "min" in r.output and len(r.output.strip().splitlines()) <= 3
    small = _config(tmp_path, table, epsilon=0.01)
    (tmp_path / "small.yaml").write_text(json.dumps(small))
    r = CliRunner().invoke(app, ["fit", "--config", str(tmp_path / "small.yaml")])
    assert r.exit_code == 2 and "privacy.epsilon 0.01 is too small" in r.output


def test_audit_bounds_epsilon_from_attack_counts():
    from synth.privacy.audit import epsilon_lower_bound

    assert epsilon_lower_bound(50, 0, 0, 50, 1e-5) > 2.5  # perfect separation over 100 runs
    assert epsilon_lower_bound(25, 25, 25, 25, 1e-5) == 0.0  # a coin flip proves nothing
    assert epsilon_lower_bound(5, 0, 0, 5, 1e-5) < epsilon_lower_bound(50, 0, 0, 50, 1e-5)  # few runs: loose


def test_canary_audit_catches_a_copying_generator_and_not_a_blind_one():
    from synth.privacy.audit import canary_audit, match_share

    base = _table(400).select(["sex", "job"])
    canary = pa.table({"sex": ["Female"], "job": ["secret-job"]})
    audited = {"sex": "Female", "job": "secret-job"}
    copying = canary_audit(base, canary, 4, 80, 1e-5, lambda t, i: match_share(t, audited))  # releases its rows
    assert copying.tp + copying.tn == 40 and copying.epsilon_lower > 1.0
    blind = canary_audit(base, canary, 4, 40, 1e-5, lambda t, i: match_share(base, audited))  # never looks
    assert blind.epsilon_lower == 0.0


def test_cell_log_prob_is_the_models_distribution_and_sees_a_canary_without_dp(tmp_path):
    """The white-box attack's score: log P(cells) sums to 1 over the grid, matches the sampled
    frequencies, and (no DP) rises when the canary is in the training rows."""
    from synth.engine.marginal import fit_table

    table = _table(2000)
    raw = _config(tmp_path, table)
    cfg = RunConfig.parse(dict(raw, privacy={**raw["privacy"], "enabled": False, "epsilon": None}))
    engine = fit_table(cfg, table)
    grid = pa.table({"age": pa.array(np.repeat(np.arange(17, 91), 10), pa.int64()),
                     "sex": ["Female", "Male"] * 370,
                     "job": (["a", "b", "c", "secret-job", None] * 148)})
    cells = engine.discretise(grid)
    _, first = np.unique(cells, axis=0, return_index=True)  # every cell of the declared grid once
    assert len(first) == 2 * 5 * len(np.unique(cells[:, 0]))
    p = np.exp(engine.cell_log_prob(grid.take(first)))
    assert p.sum() == pytest.approx(1.0, abs=1e-6)
    sample = engine.sample(20_000, seed=1)
    freq = np.mean([r == {"sex": "Male", "job": "b"} for r in sample.select(["sex", "job"]).to_pylist()])
    joint = sum(pi for pi, row in zip(p, grid.take(first).to_pylist()) if row["sex"] == "Male" and row["job"] == "b")
    assert freq == pytest.approx(joint, abs=0.015)
    canary = pa.table({"age": pa.array([33], pa.int64()), "sex": ["Female"], "job": ["secret-job"]})
    with_it = fit_table(cfg, pa.concat_tables([table] + [canary] * 4))
    assert with_it.cell_log_prob(canary)[0] > engine.cell_log_prob(canary)[0] + 2.0


def test_junction_tree_marginals_equal_elimination_over_the_whole_model():
    """AIM scores candidates on the model's marginals from a calibrated junction tree; they must be
    the model's exact marginals (elimination over every potential), for pairs and triples far apart
    in the tree, and a model with independent parts."""
    import itertools

    from synth.privacy import pgm

    rng = np.random.default_rng(0)
    names, sizes = [f"c{i}" for i in range(8)], [3, 4, 2, 5, 3, 2, 4, 3]
    data = np.stack([rng.integers(0, s, 3000) for s in sizes], 1)
    data[:, 1] = (data[:, 0] + rng.integers(0, 2, 3000)) % 4
    data[:, 3] = (data[:, 1] + data[:, 2]) % 5
    one_way = [((n,), np.bincount(data[:, j], minlength=s).astype(float), np.arange(s))
               for j, (n, s) in enumerate(zip(names, sizes))]
    measured = [(tuple(names[c] for c in q), pgm.counts(data, q, sizes), 1.0)
                for q in [(0, 1), (1, 2, 3), (3, 4), (5, 6), (4, 7), (2, 7)]]
    model = pgm.Estimator(sizes, sizes, names, one_way, 0.0)(measured, 100)
    fitted = pgm.Marginals(model)
    letter = {a: i for i, a in enumerate(names)}
    ops = []
    for cl in model.potentials.cliques:
        v = np.asarray(model.potentials[cl].values, dtype=np.float64)
        ops += [np.exp(v - v.max()), [letter[a] for a in model.potentials[cl].domain.attributes]]
    for q in list(itertools.combinations(range(8), 2)) + [(0, 5, 7), (1, 4, 6), (0, 3, 6)]:
        names_q = tuple(names[c] for c in q)
        exact = np.einsum(*ops, [letter[a] for a in names_q])
        assert np.allclose(fitted(names_q), exact / exact.sum() * fitted.total, atol=1e-8)
