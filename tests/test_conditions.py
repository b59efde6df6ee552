"""Numeric, integer and datetime conditions (issue #20): values and ranges met on every row with no
rejection (the autoregressive family truncates the column's distribution after drawing it first;
the copula conditions its Gaussian), range-conditioned rows that look like the real rows in that
range, families that cannot refuse by name, and bad conditions refused before any work with a
message that names the column and never echoes the data."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from synth.config import RunConfig
from synth.errors import ConfigError
from synth.families import load_engine
from synth.train.fit import fit

ADULT = pq.read_table("synth/datasets/adult.parquet")


def _fit(out, data: dict | None = None, steps: int = 300) -> str:
    raw = {"output": str(out), "model": {"family": "autoregressive", "hidden": 32},
           "train": {"steps": steps, "eval_every": steps, "batch_size": 256, "threads": 1}, "evaluate": {"check": "off"}}
    if data:
        raw["data"] = data
    before = torch.get_num_threads()
    try:
        return fit(RunConfig.parse(raw)).artifact_uri
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def adult_ar(tmp_path_factory) -> str:
    return _fit(tmp_path_factory.mktemp("cond-ar"))


@pytest.fixture(scope="module")
def dated(tmp_path_factory) -> str:
    """A table with a datetime column the other columns depend on: plan 'annual' in the second half
    of 2020 only, amounts growing with the date."""
    d = tmp_path_factory.mktemp("dated")
    rng = np.random.default_rng(0)
    n = 3000
    day = rng.integers(0, 366, n)
    ts = np.datetime64("2020-01-01T00:00:00", "s") + day.astype("timedelta64[D]") + rng.integers(0, 86400, n).astype("timedelta64[s]")
    plan = np.where(day >= 183, np.where(rng.random(n) < 0.7, "annual", "monthly"), "monthly")
    amount = 10.0 + day / 10.0 + rng.normal(0, 1, n)
    pq.write_table(pa.table({"signup": pa.array(ts, pa.timestamp("s")), "plan": plan, "amount": amount}),
                   d / "data.parquet")
    return _fit(d / "run", {"uri": str(d / "data.parquet")}, steps=250)


def _values(table, name) -> np.ndarray:
    return np.asarray(table.column(name).to_pylist())


def test_ranges_and_values_are_met_on_every_row(adult_ar):
    engine = load_engine(adult_ar)
    assert set(engine.range_columns) >= {"age", "hours-per-week", "capital-gain", "education-num"}
    t = engine.sample(4000, {"age": "30..40", "hours-per-week": {"min": 45}, "capital-gain": "..0", "sex": "Female"},
                      seed=3)
    age, hours = _values(t, "age"), _values(t, "hours-per-week")
    assert ((age >= 30) & (age <= 40)).all() and len(set(age)) == 11  # the whole range, nothing outside
    assert (hours >= 45).all() and (_values(t, "capital-gain") == 0).all()
    assert set(t.column("sex").to_pylist()) == {"Female"}
    # per-row conditions: values and ranges mixed, as the endpoint sends them
    per_row = [{"min": 20, "max": 25}, 50, "60..", 33] * 250
    t = engine.sample(1000, {"age": per_row}, seed=4)
    age = _values(t, "age")
    assert ((age[0::4] >= 20) & (age[0::4] <= 25)).all() and (age[1::4] == 50).all()
    assert (age[2::4] >= 60).all() and (age[3::4] == 33).all()
    assert engine.sample(1000, {"age": per_row}, seed=4).equals(t)  # reproducible


def test_an_exact_value_is_met_by_the_draw_itself(adult_ar):
    """The model's own draw meets an exact value (the decode's writing it is not what makes it exact)."""
    engine = load_engine(adult_ar)
    for cond in ({"age": 37}, {"education-num": 13}, {"capital-gain": 0}, {"hours-per-week": "38..42"}):
        c, _ = engine.encode_conditions(500, cond)
        feats = engine.sample_features(engine.row_prior(9, 0, 500), c)
        (name, value), = cond.items()
        got = _values(engine.codec.decode(feats.numpy()), name)
        if isinstance(value, str):
            assert ((got >= 38) & (got <= 42)).all(), name
        else:
            assert (got == value).all(), (name, set(got) - {value})


def test_range_conditioned_rows_look_like_the_real_rows_in_that_range(adult_ar):
    """Drawn first and the rest given it: the young earn less and are rarely married, as in the data,
    and the conditioned column keeps its shape inside the range; a condition on a later column
    (hours-per-week) moves the columns before it towards the real rows in that range."""
    engine = load_engine(adult_ar)

    def share(t, name, value):
        return np.mean(_values(t, name) == value)

    joint = engine.sample(30_000, seed=7)
    for col, lo, hi in (("age", 17, 24), ("age", 45, 60), ("hours-per-week", 1, 20)):
        syn = engine.sample(3000, {col: f"{lo}..{hi}"}, seed=1)
        x = _values(ADULT, col)
        real = ADULT.filter(pa.array((x >= lo) & (x <= hi)))
        x = _values(joint, col)
        own = joint.filter(pa.array((x >= lo) & (x <= hi)))  # the model's own rows in the range
        for name, value in (("income", ">50K"), ("marital-status", "Never-married"), ("sex", "Female")):
            got, want, everyone = share(syn, name, value), share(real, name, value), share(ADULT, name, value)
            assert abs(got - want) < 0.6 * abs(everyone - want) + 0.05, (col, lo, hi, name, got, want, everyone)
            if col == "age":  # the first column: drawn first is its canonical place, so exactly the model's own
                assert abs(got - share(own, name, value)) < 0.035, (lo, hi, name, got, share(own, name, value))
        qs = [0.25, 0.5, 0.75]
        assert np.abs(np.quantile(_values(syn, col), qs) - np.quantile(_values(real, col), qs)).max() <= 2


def _seconds(table) -> np.ndarray:
    return table.column("signup").cast(pa.timestamp("s")).cast(pa.int64()).to_numpy()


def test_datetime_conditions(dated):
    engine = load_engine(dated)
    t = engine.sample(2000, {"signup": "2020-09-01..2020-10-31"}, seed=0)
    ts = _seconds(t)
    lo = np.datetime64("2020-09-01T00:00:00", "s").astype(np.int64)
    hi = np.datetime64("2020-10-31T00:00:00", "s").astype(np.int64)
    assert ((ts >= lo) & (ts <= hi)).all()
    assert np.mean(_values(t, "plan") == "annual") > 0.45  # the data: 70 % in the second half, 0 % in the first
    early = engine.sample(2000, {"signup": "..2020-03-31"}, seed=0)
    assert np.mean(_values(early, "plan") == "annual") < 0.15
    assert np.median(_values(t, "amount")) > np.median(_values(early, "amount")) + 10
    at = engine.sample(50, {"signup": "2020-05-05T10:30:00"}, seed=0)
    assert set(_seconds(at).tolist()) == {
        int(np.datetime64("2020-05-05T10:30:00", "s").astype(np.int64))}


def test_copula_conditions_its_gaussian(tmp_path):
    from synth.table import CodecConfig
    from synth.table.fingerprint import build_fingerprint, write_fingerprint
    from synth.train.fit import fit_fingerprint

    write_fingerprint(build_fingerprint("bundled:adult", CodecConfig(), quantiles=51), str(tmp_path / "fp.json"))
    fit_fingerprint(str(tmp_path / "fp.json"), str(tmp_path / "model"))
    engine = load_engine(str(tmp_path / "model"))
    conds = {"age": "50..60", "hours-per-week": {"max": 30}, "sex": "Male"}
    t = engine.sample(3000, conds, seed=0)
    age, hours = _values(t, "age"), _values(t, "hours-per-week")
    assert ((age >= 50) & (age <= 60)).all() and (hours <= 30).all()
    assert set(t.column("sex").to_pylist()) == {"Male"}
    assert engine.enforcement(conds) == {"age": "conditional-gaussian", "hours-per-week": "conditional-gaussian",
                                         "sex": "exact-slot"}
    # one condition is exact: the conditioned rows are the copula's own rows in that range
    joint = engine.sample(40_000, seed=1)
    for lo, hi in ((17, 22), (35, 50)):
        young = engine.sample(4000, {"age": f"{lo}..{hi}"}, seed=0)
        age = _values(joint, "age")
        own = joint.filter(pa.array((age >= lo) & (age <= hi)))
        for name in ("hours-per-week", "education-num"):
            assert abs(_values(young, name).mean() - _values(own, name).mean()) < 0.6, (lo, hi, name)
        assert abs(np.mean(_values(young, "sex") == "Female") - np.mean(_values(own, "sex") == "Female")) < 0.04


def test_families_without_numeric_conditions_refuse_by_name(tiny_artifact):
    engine = load_engine(tiny_artifact)  # diffusion
    with pytest.raises(ConfigError, match="column 'age' is integer; the diffusion family conditions on categorical "
                                          "columns only: fit the autoregressive"):
        engine.sample(5, {"age": "30..40"})


@pytest.mark.parametrize("cond,says", [
    ({"nope": "1..2"}, "unknown column 'nope': this model has no such column"),
    ({"age": "40..30"}, "condition on 'age': the range's min is above its max"),
    ({"age": {"min": 50, "max": 20}}, "the range's min is above its max"),
    ({"age": "200..300"}, "this model never generates a integer range like '200..300'"),
    ({"age": 1000}, "never generates a integer value like 1000"),
    ({"age": "thirty"}, "condition on 'age' (integer): 'thirty' is not an integer"),
    ({"age": 30.5}, "30.5' is not an integer"),
    ({"age": ".."}, "the range '..' has no end"),
    ({"age": {"low": 3}}, "a range is {\"min\": ..., \"max\": ...}"),
    ({"hours-per-week": None}, "'hours-per-week' (integer): 'None' is not an integer"),
])
def test_bad_numeric_conditions_are_refused_before_any_work(adult_ar, cond, says):
    engine = load_engine(adult_ar)
    with pytest.raises(ConfigError) as e:
        engine.encode_conditions(3, cond)
    msg = str(e.value)
    assert says in msg, msg
    assert "workclass" not in msg and "fnlwgt" not in msg  # no list of every column
    col = engine.codec.by_name["age"]
    assert repr(col.min) not in msg.replace("'200..300'", "") or col.min in (20, 30, 50)  # no data extremes


def test_bad_datetime_conditions(dated):
    engine = load_engine(dated)
    for cond, says in [({"signup": "next tuesday"}, "'next tuesday' is not an ISO date or timestamp"),
                       ({"signup": 5}, "5' is not an ISO date"),
                       ({"signup": "2031-01-01.."}, "never generates a datetime range"),
                       ({"amount": "1e9.."}, "never generates a continuous range")]:
        with pytest.raises(ConfigError, match="condition on") as e:
            engine.sample(3, cond)
        assert says in str(e.value), str(e.value)


def test_cli_sample_takes_ranges_and_records_how_they_were_met(adult_ar, tmp_path):
    from synth.cli import app

    out = tmp_path / "rows.parquet"
    r = CliRunner().invoke(app, ["sample", adult_ar, "-n", "300", "-o", str(out), "--condition", "age=30..40",
                                 "--condition", "sex=Female", "--condition", "hours-per-week=..20"])
    assert r.exit_code == 0, r.output
    t = pq.read_table(out)
    assert ((_values(t, "age") >= 30) & (_values(t, "age") <= 40)).all() and (_values(t, "hours-per-week") <= 20).all()
    record = json.loads(t.schema.metadata[b"synth.generation"])
    assert record["enforced"] == {"age": "truncation", "sex": "exact-slot", "hours-per-week": "truncation"}
    for args, says in [(["--condition", "age=50..20"], "the range's min is above its max"),
                       (["--condition", "nope=1"], "unknown column 'nope'")]:
        r = CliRunner().invoke(app, ["sample", adult_ar, "-n", "5", "-o", str(tmp_path / "x.parquet"), *args])
        assert r.exit_code == 2 and says in " ".join(r.output.split()), r.output
        assert not (tmp_path / "x.parquet").exists()


def test_the_endpoint_takes_ranges_and_reports_how_they_were_met(adult_ar):
    from synth.serving import ServeArgs
    from synth.serving.batching import run_jobs
    from synth.serving.schemas import SampleRequest
    from synth.serving.service import RequestProblem, SamplingService

    engine = load_engine(adult_ar)
    service = SamplingService(ServeArgs(artifact_uri=adult_ar, calibrate=False), engine=engine)
    req = SampleRequest.model_validate({"rows": 40, "seed": 5, "conditions": {
        "age": {"min": 30, "max": 40}, "hours-per-week": [50] * 20 + [{"max": 20}] * 20, "income": ">50K"}})
    job = service.validate(req)
    other = service.validate(SampleRequest(rows=10, seed=6))  # merged into the same model batch
    (table, plain), _ = run_jobs(engine, [job, other], max_cost=32768)
    assert table.equals(engine.sample(40, req.plain_conditions(), seed=5))
    assert plain.equals(engine.sample(10, seed=6))
    age, hours = _values(table, "age"), _values(table, "hours-per-week")
    assert ((age >= 30) & (age <= 40)).all() and (hours[:20] == 50).all() and (hours[20:] <= 20).all()
    assert service.meta(job)["enforced"] == {"age": "truncation", "hours-per-week": "truncation",
                                             "income": "exact-slot"}
    names = {c["name"]: c["kind"] for c in service.model_info()["condition_columns"]}
    assert names["age"] == "integer" and names["sex"] == "categorical"
    with pytest.raises(RequestProblem) as e:
        service.validate(SampleRequest.model_validate({"rows": 2, "conditions": {"age": {"min": 90, "max": 20}}}))
    (err,) = e.value.errors
    assert err["loc"] == ["body", "conditions", "age"] and "min is above its max" in err["msg"]


# --------------------------------------------------------------------------- synth impute
def _with_nulls(table: pa.Table, share: float, columns: list[str], seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    out = []
    for f in table.schema:
        col = table.column(f.name).combine_chunks()
        if f.name in columns:
            col = pc_if_else(rng.random(len(col)) < share, col)
        out.append(col)
    return pa.Table.from_arrays(out, schema=table.schema)


def pc_if_else(mask: np.ndarray, col: pa.Array) -> pa.Array:
    import pyarrow.compute as pc

    return pc.if_else(pa.array(mask), pa.nulls(len(col), col.type), col)


def test_impute_fills_nulls_given_the_known_cells_and_keeps_them_byte_identical(adult_ar, tmp_path):
    from synth.cli import app

    real = ADULT.slice(0, 3000)
    holes = _with_nulls(real, 0.25, real.schema.names)
    holes = holes.set_column(holes.schema.get_field_index("education-num"), "education-num",
                             pa.nulls(holes.num_rows, pa.int64()))  # every education-num from its education
    pq.write_table(holes, tmp_path / "holes.parquet")
    r = CliRunner().invoke(app, ["impute", adult_ar, str(tmp_path / "holes.parquet"), "-o", str(tmp_path / "filled.parquet")])
    assert r.exit_code == 0, r.output
    filled = pq.read_table(tmp_path / "filled.parquet")
    assert filled.schema.remove_metadata() == holes.schema.remove_metadata()
    assert all(filled.column(n).null_count == 0 for n in filled.schema.names)
    for n in holes.schema.names:  # known cells unchanged, byte for byte
        known = holes.column(n).is_valid()
        assert filled.column(n).filter(known).equals(holes.column(n).filter(known)), n
    # the draws follow the row's known cells: education-num from education (one value per education)
    edu, num = _values(filled, "education"), _values(filled, "education-num")
    match = {e: real.column("education-num").filter(pa.array(_values(real, "education") == e))[0].as_py()
             for e in set(edu)}
    agree = np.mean([match[e] == v for e, v in zip(edu, num)])
    assert agree > 0.9, agree
    assert load_engine(adult_ar).impute(holes, seed=0).equals(load_engine(adult_ar).impute(holes, seed=0))


def test_impute_is_refused_by_families_that_cannot(tiny_artifact):
    with pytest.raises(ConfigError, match="the diffusion family cannot impute missing cells; fit the autoregressive"):
        load_engine(tiny_artifact).impute(ADULT.slice(0, 10))


# --------------------------------------------------------------------------- rebalancing
def test_rebalance_draws_the_requested_shares_by_conditioning(adult_ar, tmp_path):
    from synth.cli import app
    from synth.pipelines.sample import rebalanced, replay_sample

    out = tmp_path / "rich.parquet"
    r = CliRunner().invoke(app, ["sample", adult_ar, "-n", "2000", "-o", str(out), "--rebalance", "income=>50K:0.5",
                                 "--condition", "age=25..35"])
    assert r.exit_code == 0, r.output
    t = pq.read_table(out)
    income = _values(t, "income")
    assert np.sum(income == ">50K") == 1000 and np.sum(income == "<=50K") == 1000  # exact counts, not a filter
    # the rest of each row is consistent with its income: the rich are mostly husbands, as in the data
    rel = _values(t, "relationship")
    assert np.mean(rel[income == ">50K"] == "Husband") > np.mean(rel[income == "<=50K"] == "Husband") + 0.2
    assert ((_values(t, "age") >= 25) & (_values(t, "age") <= 35)).all()
    assert replay_sample(str(out))["matched"]
    engine = load_engine(adult_ar)
    race = rebalanced(engine, "race", {"Black": 0.3}, 1000, seed=0)
    shares = {v: race.count(v) / 1000 for v in set(race)}
    real = _values(ADULT, "race")
    white = 0.7 * np.mean(real == "White") / np.mean(real != "Black")  # the others keep their proportions
    assert shares["Black"] == 0.3 and abs(shares["White"] - white) < 0.005, (shares, white)
    for spec, says in [({"income": {">50K": 0.7, "<=50K": 0.6}}, "the shares sum to 1.3, over 1"),
                       ({"income": {">50K": 1.5}}, "shares must be numbers in [0, 1]"),
                       ({"income": {">50K": 0.5, "<=50K": 0.4}}, "no other value to fill the rest"),
                       ({"age": {30: 0.5}}, "rebalancing takes a categorical or boolean column"),
                       ({"income": {"rich": 0.5}}, "'income' has no category 'rich'")]:
        (column, shares), = spec.items()
        with pytest.raises(ConfigError) as e:
            rebalanced(engine, column, shares, 100, seed=0)
        assert says in str(e.value), str(e.value)
    r = CliRunner().invoke(app, ["sample", adult_ar, "-n", "5", "-o", str(tmp_path / "x.parquet"),
                                 "--rebalance", "income>50K"])
    assert r.exit_code == 2 and "must look like column=value:share" in " ".join(r.output.split())


def test_heads_see_the_same_tokens_in_training_and_sampling():
    """The batched forward (training) and one head at a time (sampling) give the same logits for any
    mix of revealed (`given`) and drawn-first (`first`) tokens: a drawn-first head sees the given
    tokens and the drawn-first ones before it only, every other head all of them and its canonical past."""
    from synth.nets.column_heads import ColumnHeads

    torch.manual_seed(0)
    cards = [3, 5, 4, 2, 6, 3]
    net = ColumnHeads(cards, dim=4, hidden=8, depth=2).eval()
    with torch.no_grad():
        net.w_out.normal_()
    n = 64
    tokens = torch.stack([torch.randint(0, c, (n,)) for c in cards], dim=1)
    given = torch.rand(n, len(cards)) < 0.3
    first = (torch.rand(n, len(cards)) < 0.3) & ~given
    full = net(tokens, given, first)
    for j, card in enumerate(cards):
        seen = net.seen_by(j, given, first)
        assert torch.allclose(full[:, j, :card], net.head(j, tokens, seen), atol=1e-5), j
        rows = first[:, j]  # a drawn-first head sees no canonical past that was not revealed
        assert not (seen[rows] & ~(given[rows] | first[rows])).any()
        assert (seen[rows][:, j:] == given[rows][:, j:]).all()
    assert torch.allclose(net(tokens, given), torch.stack(
        [torch.nn.functional.pad(net.head(j, tokens, net.seen_by(j, given)), (0, max(cards) - c), value=float("-inf"))
         for j, c in enumerate(cards)], dim=1), atol=1e-5)


def test_bulk_synthesis_shards_meet_numeric_conditions(adult_ar, tmp_path):
    """What each sampler actor runs (no Ray here): planned shards of a run with a range condition."""
    from synth.pipelines.synthesize import SynthesizeConfig, conditioned_columns, plan_shards, sample_shard

    engine = load_engine(adult_ar)
    cfg = SynthesizeConfig(artifact=adult_ar, rows=700, shard_rows=300, batch_rows=128, output=str(tmp_path / "o"),
                           conditions={"fixed": {"age": {"min": 60}, "income": ">50K"}})
    shards = [sample_shard(engine, cfg, spec) for spec in plan_shards(cfg, engine)]
    assert [s.num_rows for s in shards] == [300, 300, 100]
    assert all((_values(s, "age") >= 60).all() and set(s.column("income").to_pylist()) == {">50K"} for s in shards)
    assert engine.enforcement(conditioned_columns(cfg.conditions)) == {"age": "truncation", "income": "exact-slot"}
    bad = SynthesizeConfig(artifact=adult_ar, rows=10, output=str(tmp_path / "b"), conditions={"fixed": {"age": "90..80"}})
    with pytest.raises(ConfigError, match="the range's min is above its max"):
        plan_shards(bad, engine)


def test_a_model_trained_before_numeric_conditions_refuses_them(adult_ar, tmp_path):
    """Its training never drew a numeric column first, so truncating one would not condition the rest."""
    from synth.engine.autoregressive import AutoregressiveEngine
    from synth.io.artifact import read_artifact

    art = read_artifact(adult_ar)
    art.engine["config"].pop("numeric_reveal")  # as an artifact of the version before wrote it
    old = AutoregressiveEngine.from_artifact(art)
    assert old.range_columns == [] and old.sample(5, {"sex": "Female"}).num_rows == 5
    with pytest.raises(ConfigError, match="column 'age' is integer; this autoregressive model was trained before "
                                          "numeric conditions"):
        old.sample(5, {"age": "30..40"})
