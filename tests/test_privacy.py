"""Differential privacy: budget planning and refusal, the published epsilon against Opacus'
accountant, no forbidden statistics read by a private run, DP-SGD in one process and on two Ray
Train workers, and the membership-inference attack."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from synth.config import RunConfig
from synth.io.data import resolve_data_uri
from synth.families import load_engine
from synth.errors import ConfigError, DataError
from synth.privacy import plan_privacy
from synth.privacy.accounting import sample_rate_for
from synth.table import TableStats
from synth.table.schema import SUBPOINTS, NumericGrid
from synth.train.fit import fit
from synth.train.prepare import prepare

REPO = Path(__file__).resolve().parents[1]
DP_YAML = REPO / "configs" / "adult-dp.yaml"


def dp_raw(tmp: Path, steps: int = 6, **privacy) -> dict:
    """configs/adult-dp.yaml (its declared schema) with a tiny model and a few steps."""
    raw = yaml.safe_load(DP_YAML.read_text())
    raw["output"] = str(tmp)
    raw["model"]["net"] = {"width": 32, "depth": 1, "embed_dim": 16}
    raw["train"].update(steps=steps, eval_every=3, batch_size=512, warmup_steps=2)
    raw["privacy"].update(privacy)
    return raw


def opacus_epsilon(accountant: str, sigma: float, q: float, steps: int, delta: float) -> float:
    """Straight from Opacus, independent of synth.privacy."""
    from opacus.accountants import PRVAccountant, RDPAccountant

    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    for _ in range(steps):
        acc.step(noise_multiplier=sigma, sample_rate=q)
    return acc.get_epsilon(delta=delta)


def test_config_yaml_loads_and_declares_every_column():
    cfg = RunConfig.from_yaml(str(DP_YAML))
    assert cfg.privacy.enabled and cfg.privacy.epsilon == 3.0
    schema = pq.read_schema(resolve_data_uri("bundled:adult"))
    assert set(cfg.privacy.declared) == set(schema.names)


def test_plan_spends_at_most_the_budget_and_refuses_what_exceeds_it():
    cfg = RunConfig.parse(dp_raw(Path("/tmp/unused"), steps=500, epsilon=2.0, preprocessing="dp"))
    plan = plan_privacy(cfg.privacy, cfg.train, 20_000)
    assert plan.sample_rate == sample_rate_for(20_000, 512) == 1 / 40
    assert plan.epsilon_preprocessing == pytest.approx(0.2)
    spent = plan.total_epsilon(500)
    assert 1.95 <= spent <= 2.0  # the noise is chosen to spend (almost) all of it, never more
    assert plan.delta == 1e-6  # configs/adult-dp.yaml: at most 1 / (n ln n) = 5.05e-6 for 20,000 rows
    assert plan.training_epsilon(500) == pytest.approx(opacus_epsilon("rdp", plan.noise_multiplier, 1 / 40, 500, 1e-6))

    # a fixed noise multiplier that would overspend is refused, naming what would fit
    cfg.privacy.noise_multiplier = 1.0
    with pytest.raises(ConfigError, match=r"budget exceeded before training.*at most (\d+)") as e:
        plan_privacy(cfg.privacy, cfg.train, 20_000)
    affordable = int(re.search(r"at most (\d+)", str(e.value)).group(1))
    assert 0 < affordable < 500
    cfg.train.steps = affordable
    assert plan_privacy(cfg.privacy, cfg.train, 20_000).total_epsilon(affordable) <= 2.0

    # a delta that could release a row, low precision, accumulation: refused with the field named
    for field, value, msg in [("delta", 1e-3, "privacy.delta"), ("precision", "bf16", "train.precision"),
                              ("grad_accum", 2, "train.grad_accum")]:
        bad = RunConfig.parse(dp_raw(Path("/tmp/unused"), steps=50))
        setattr(bad.privacy if field == "delta" else bad.train, field, value)
        with pytest.raises(ConfigError, match=msg):
            plan_privacy(bad.privacy, bad.train, 20_000)


def test_delta_is_at_most_one_over_n_log_n_and_defaults_below_it():
    """0.9 / n passed before (it lets a mechanism release a row with probability 0.9 / n, so about
    one row in every run on average); now anything above 1 / (n ln n) is refused."""
    n = 20_000
    cfg = RunConfig.parse(dp_raw(Path("/tmp/unused"), steps=50))
    for delta in (0.9 / n, 1.01 / (n * math.log(n))):
        cfg.privacy.delta = delta
        with pytest.raises(ConfigError, match=r"privacy.delta .* is above 1 / \(n ln n\) = 5.05e-06 for the 20000"):
            plan_privacy(cfg.privacy, cfg.train, n)
    cfg.privacy.delta = 1 / (n * math.log(n))
    assert plan_privacy(cfg.privacy, cfg.train, n).delta == cfg.privacy.delta
    cfg.privacy.delta = None
    assert plan_privacy(cfg.privacy, cfg.train, n).delta == 1e-6
    cfg.train.batch_size = 100
    assert plan_privacy(cfg.privacy, cfg.train, 500).delta == 1e-4  # 1 / (500 ln 500) = 3.2e-4


def test_private_codec_refuses_nan_and_undeclared_values_without_echoing_them():
    """Before: NaN encoded as the column's declared maximum, and an undeclared category was printed
    in the error (into job logs)."""
    from synth.table import TableCodec
    from synth.table.schema import ColumnSchema

    table = pa.table({"x": [1.0, 2.0, 3.0], "c": ["a", "b", "a"]})
    declared = {"x": ColumnSchema(kind="continuous", min=0, max=10),
                "c": ColumnSchema(kind="categorical", categories=["a", "b"])}
    codec = TableCodec.from_schema(table.schema, declared, num_rows=3)
    assert codec.encode(table).shape == (3, codec.width)
    with pytest.raises(DataError, match="column 'x' holds NaN or infinite values; replace them with nulls"):
        codec.encode(table.set_column(0, "x", pa.array([1.0, float("nan"), 3.0])))
    from synth.table.schema import cell_counts

    with pytest.raises(DataError, match="column 'x' holds NaN"):  # the dp preprocessing counts refuse it first
        cell_counts(pa.array([1.0, float("nan")]), declared["x"], 32, "x")
    with pytest.raises(ConfigError, match="column 'c' holds a value that is not one of its categories") as e:
        codec.encode(table.set_column(1, "c", pa.array(["a", "Jane Q. Secret", "b"])))
    assert "Jane" not in str(e.value)


def test_a_log_scale_declares_finer_bins_near_the_minimum():
    from pydantic import ValidationError

    from synth.table.schema import ColumnSchema

    decl = ColumnSchema(kind="continuous", min=0, max=300_000, points=[0], scale="log")
    edges = NumericGrid.of(decl, 32).edges
    assert edges[0] == 0 and edges[-1] == 300_000 and np.all(np.diff(edges) > 0)
    assert np.all(np.diff(np.diff(np.log1p(edges))) < 1e-9)  # equal widths in log(1 + x)
    assert (edges < 10_000).sum() > 20  # linear bins would put all of 0..9,375 in one
    cells = NumericGrid.of(decl, 32).cell_of(np.array([0.0, 1000.0, 5000.0, 250_000.0]), np.zeros(4, bool))
    assert cells[0] == 0 and len(set(cells.tolist())) == 4  # the atom, then distinct bins
    with pytest.raises(ValidationError, match="takes `categories`, not bounds, points or a scale"):
        ColumnSchema(kind="categorical", categories=["a"], scale="log")


def test_unreadable_checkpoint_refuses_instead_of_spending_preprocessing_again(tmp_path):
    """Before, an unreadable checkpoint read as "no checkpoint": a private rerun planned and spent its
    preprocessing budget a second time. Now an older readable checkpoint is used, or the run is refused."""
    from synth.io.artifact import CODEC, ENGINE, MANIFEST
    from synth.train.ray_train import _latest_checkpoint

    run = tmp_path / "store" / "dp-run"
    good, bad = run / "checkpoint_000001", run / "checkpoint_000002"
    for d in (good, bad):
        d.mkdir(parents=True)
        for f in (MANIFEST, ENGINE, CODEC):
            (d / f).write_text(json.dumps({"file": f}))
    (bad / CODEC).write_text("{truncated")
    assert _latest_checkpoint(str(tmp_path / "store"), "dp-run")["path"].endswith("checkpoint_000001")
    (good / MANIFEST).unlink()
    with pytest.raises(ConfigError, match="has checkpoints but none can be read.*spends its preprocessing budget"):
        _latest_checkpoint(str(tmp_path / "store"), "dp-run")
    assert _latest_checkpoint(str(tmp_path / "store"), "other-run") is None


def test_private_fit_publishes_opacus_epsilon_within_budget(tmp_path):
    raw = dp_raw(tmp_path, steps=6, epsilon=3.0, preprocessing="dp", accountant="rdp")
    result = fit(RunConfig.parse(raw))
    m = load_engine(result.artifact_uri).manifest
    p = m["privacy"]
    assert p["dp"] is True and p["steps"] == 6 and p["accountant"] == "rdp" and p["delta"] == 1e-6
    assert p["epsilon"] <= p["epsilon_budget"] == 3.0
    rows = m["split"]["rows"]["train"]
    assert p["sample_rate"] == 1 / math.ceil(rows / 512)
    want = opacus_epsilon("rdp", p["noise_multiplier"], p["sample_rate"], p["steps"], p["delta"])
    assert p["epsilon_training"] == pytest.approx(want, rel=1e-9)
    assert p["epsilon"] == pytest.approx(p["epsilon_preprocessing"] + want, rel=1e-9)
    assert p["epsilon_preprocessing"] == pytest.approx(0.3)
    # nothing measured on private rows without noise is published
    assert "loss" not in m["metrics"] and "val_loss" not in m["metrics"]
    assert all("loss" not in h and "val_loss" not in h for h in m["history"])
    assert m["history"][-1]["epsilon"] == pytest.approx(want, rel=1e-9)
    assert "withheld" in m["input"]["sha256"]
    assert load_engine(result.artifact_uri).sample(20, seed=0).num_rows == 20


def test_a_config_over_budget_is_refused_before_anything_is_written(tmp_path):
    raw = dp_raw(tmp_path / "run", steps=400, epsilon=0.5, noise_multiplier=0.5)
    with pytest.raises(ConfigError, match="privacy budget exceeded before training"):
        fit(RunConfig.parse(raw))
    assert not (tmp_path / "run" / "model").exists()


def _perturbed_adult(tmp: Path) -> str:
    """Adult with other values in every column: different quantiles, bounds and frequencies."""
    t = pq.read_table(resolve_data_uri("bundled:adult"))
    rng = np.random.default_rng(1)
    cols = {}
    for name in t.schema.names:
        col = t.column(name)
        if pa.types.is_integer(col.type):
            cols[name] = pc.add(col, pa.scalar(int(rng.integers(1, 7)), col.type))
        else:
            vals = col.to_numpy(zero_copy_only=False)
            cols[name] = pa.array(vals[rng.permutation(len(vals))], col.type)
    path = tmp / "other.parquet"
    pq.write_table(pa.table(cols)[: 20_000], path)
    return str(path)


def test_schema_mode_codec_is_identical_whatever_the_data(tmp_path, monkeypatch):
    """The codec of a `schema` run is a function of the declaration alone, and no data
    statistic is gathered (TableStats, the non-private path, is never fed a batch)."""
    def forbidden(*_a, **_k):
        raise AssertionError("a private run read data statistics through TableStats")

    monkeypatch.setattr(TableStats, "add_batch", forbidden)
    raw = dp_raw(tmp_path, preprocessing="schema")
    a = prepare(RunConfig.parse(raw))
    raw["data"]["uri"] = _perturbed_adult(tmp_path)
    b = prepare(RunConfig.parse(raw))
    assert a.train.num_rows != b.train.num_rows
    ca, cb = a.codec.to_dict(), b.codec.to_dict()
    ca.pop("num_rows"), cb.pop("num_rows")  # the row count is public (it sets the sample rate)
    assert ca == cb
    # whereas the ordinary codec does depend on the data
    monkeypatch.undo()
    from synth.table import TableCodec

    assert TableCodec.fit([a.train]).to_dict()["columns"] != TableCodec.fit([b.train]).to_dict()["columns"]


def test_dp_preprocessing_reads_only_noised_counts_on_the_declared_grid(tmp_path, monkeypatch):
    """dp mode: the grid (atoms, bins, categories) comes from the declaration; the only data
    access is cell counting, and its counts are noised with Laplace(k / epsilon_pre)."""
    from synth.privacy import preprocess

    monkeypatch.setattr(TableStats, "add_batch", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    raw = dp_raw(tmp_path, preprocessing="dp", epsilon=1.0)
    cfg = RunConfig.parse(raw)
    seen = []
    real_noised = preprocess.noised

    def spy(counts, epsilon, rng=None):
        out = real_noised(counts, epsilon, np.random.default_rng(7))
        seen.append((counts, out, epsilon))
        return out

    monkeypatch.setattr(preprocess, "noised", spy)
    a = prepare(cfg)
    raw["data"]["uri"] = _perturbed_adult(tmp_path)
    b = prepare(RunConfig.parse(raw))
    (counts_a, noisy_a, eps), (counts_b, _, _) = seen
    assert eps == pytest.approx(0.1)
    # same cells (declared), different data -> different exact counts
    assert {k: v.shape for k, v in counts_a.items()} == {k: v.shape for k, v in counts_b.items()}
    assert any(not np.array_equal(counts_a[k], counts_b[k]) for k in counts_a)
    # the noise is Laplace with scale k / epsilon (mean absolute deviation = scale)
    k = len(counts_a)
    dev = np.concatenate([noisy_a[c] - counts_a[c] for c in counts_a])
    assert np.mean(np.abs(dev)) == pytest.approx(k / 0.1, rel=0.25)
    # numeric support points lie on the declared grid and the category lists are the declared ones
    for col_a, col_b in zip(a.codec.columns, b.codec.columns):
        decl = cfg.privacy.declared[col_a.name]
        if hasattr(col_a, "knots_x"):
            grid = NumericGrid.of(decl, cfg.privacy.bins)
            sub = [(e0 + (j + 0.5) * (e1 - e0) / SUBPOINTS) for e0, e1 in zip(grid.edges[:-1], grid.edges[1:])
                   for j in range(SUBPOINTS)]
            allowed = set(np.round(np.concatenate([grid.atoms, sub]), 6))
            for col in (col_a, col_b):
                assert set(np.round(col.knots_x, 6)) <= allowed
                assert (col.min, col.max) == (decl.min, decl.max)
        else:
            for col in (col_a, col_b):
                assert set(col.categories + col.tail_values) == set(decl.categories) | ({None} if decl.nullable else set())


def test_per_sample_loss_is_the_engine_loss_before_its_mean(tiny_artifact):
    engine = load_engine(tiny_artifact)
    x = torch.randn(64, engine.codec.width)
    a = engine.loss(engine.net, x, torch.Generator().manual_seed(3), reduce=False)
    b = engine.loss(engine.net, x, torch.Generator().manual_seed(3))
    assert a.shape == (64,) and torch.allclose(a.mean(), b)


def test_membership_inference_detects_copies_and_not_fresh_rows():
    from synth.evaluate import membership_inference

    t = pq.read_table(resolve_data_uri("bundled:adult")).to_pandas()
    kinds = {c: ("categorical" if t[c].dtype == object else "integer") for c in t.columns}
    t = t.sample(frac=1.0, random_state=0).reset_index(drop=True)
    train, holdout, fresh = t.iloc[:3000], t.iloc[3000:6000], t.iloc[6000:9000]
    leaky = membership_inference(train, train, holdout, kinds, seed=0, max_rows=1000)
    clean = membership_inference(train, fresh, holdout, kinds, seed=0, max_rows=1000)
    assert leaky["auc"] > 0.9 and leaky["auc_distance"] > 0.9
    assert abs(clean["auc_distance"] - 0.5) < 0.06 and abs(clean["auc_density_ratio"] - 0.5) < 0.06
    assert clean["n_members"] == clean["n_nonmembers"] == 1000


@pytest.mark.ray
@pytest.mark.slow
def test_two_ray_workers_train_privately_with_dpddp(ray_session, tmp_path):
    raw = dp_raw(tmp_path, steps=6, epsilon=4.0, preprocessing="dp")
    raw["name"] = "dp2"
    raw["scaling"] = {"num_workers": 2, "cpus_per_worker": 1}
    result = fit(RunConfig.parse(raw))
    m = load_engine(result.artifact_uri).manifest
    p = m["privacy"]
    assert p["workers"] == 2 and p["steps"] == 6 and p["epsilon"] <= 4.0
    want = opacus_epsilon("rdp", p["noise_multiplier"], p["sample_rate"], 6, p["delta"])
    assert p["epsilon_training"] == pytest.approx(want, rel=1e-9)
    assert "loss" not in m["metrics"]
    assert m["metrics"]["dp_optimizer"] == "DistributedDPOptimizerFastGradientClipping"  # DPDDP, noise on rank 0
    # the checkpoints carry the plan; resuming them under other privacy settings is refused
    raw["privacy"]["epsilon"] = 5.0
    with pytest.raises(ConfigError, match="other privacy settings"):
        fit(RunConfig.parse(raw))
