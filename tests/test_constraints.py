"""Constraints (docs/constraints.md): every rule holds on every sampled row, whatever the path
(`engine.sample` = `synth sample`, the endpoint's batching and service, bulk synthesis on Ray), on
Adult and on a table with datetimes and nulls; bad declarations are refused before any work, naming
the constraint and never a value of the data."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from synth.config import RunConfig
from synth.errors import ArtifactError, ConfigError, DataError
from synth.families import load_engine
from synth.train.fit import fit
from synth.train.prepare import prepare

TINY = {"family": "diffusion", "net": {"width": 64, "depth": 1, "embed_dim": 32}}
ROWS = 100_000
FAST = {"sampler": "ddim", "steps": 2}  # the rules do not depend on the sampler: keep 100k rows cheap


def run(tmp, uri: str, constraints: list, steps: int = 40, **extra) -> dict:
    return {"output": str(tmp), "data": {"uri": uri, **extra.pop("data", {})}, "model": TINY,
            "train": {"steps": steps, "eval_every": steps, "batch_size": 256}, "evaluate": {"check": "warn"},
            "constraints": constraints, **extra}


# -- Adult, with a pair of columns for an inequality and a derived column for a formula ----------------
ADULT_RULES = [
    {"kind": "range", "column": "age", "min": 18, "max": 65},  # narrower than the data: rows outside are dropped
    {"kind": "fixed_combinations", "columns": ["relationship", "sex"]},
    {"kind": "inequality", "low": "hours-per-week", "high": "hours-max"},
    {"kind": "formula", "column": "annual-hours", "expression": "`hours-per-week` * 52"},
]


@pytest.fixture(scope="module")
def adult_data(tmp_path_factory) -> str:
    t = pq.read_table("synth/datasets/adult.parquet")
    rng = np.random.default_rng(0)
    hours = t.column("hours-per-week").to_numpy()
    t = t.append_column("hours-max", pa.array(hours + rng.integers(0, 30, t.num_rows)))
    t = t.append_column("annual-hours", pa.array(hours * 52))
    path = tmp_path_factory.mktemp("adult") / "adult.parquet"
    pq.write_table(t, path)
    return str(path)


@pytest.fixture(scope="module")
def adult_model(adult_data, tmp_path_factory) -> str:
    cfg = RunConfig.parse(run(tmp_path_factory.mktemp("cadult"), adult_data, ADULT_RULES,
                              data={"constraint_violations": "drop"}))
    return fit(cfg).artifact_uri


def seen_combinations(path: str, columns: list[str], k: int = 10) -> set:
    t = pq.read_table(path, columns=columns)
    rows = list(zip(*(t.column(c).to_pylist() for c in columns)))
    counts: dict = {}
    for r in rows:
        counts[r] = counts.get(r, 0) + 1
    return {r for r, c in counts.items() if c >= k}


def assert_adult_rules(t: pa.Table, adult_data: str) -> None:
    age = t.column("age").to_numpy()
    assert age.min() >= 18 and age.max() <= 65
    assert (t.column("hours-max").to_numpy() >= t.column("hours-per-week").to_numpy()).all()
    assert (t.column("annual-hours").to_numpy() == t.column("hours-per-week").to_numpy() * 52).all()
    combos = set(zip(t.column("relationship").to_pylist(), t.column("sex").to_pylist()))
    assert combos <= seen_combinations(adult_data, ["relationship", "sex"])


def test_adult_rules_hold_on_100k_sampled_rows(adult_model, adult_data):
    engine = load_engine(adult_model)
    t = engine.sample(ROWS, seed=3, **FAST)
    ref = pq.read_schema(adult_data).remove_metadata()
    assert t.num_rows == ROWS and t.schema == ref  # the output schema is the data's, not the model table's
    assert_adult_rules(t, adult_data)
    m = engine.manifest
    assert m["constraints"]["rows_dropped"] > 0 and "reparametrisation" in m["constraints"]["mechanism"]
    assert [c["kind"] for c in m["constraints"]["constraints"]] == [r["kind"] for r in ADULT_RULES]
    assert set(m["columns"]) == set(ref.names) and "constraints.json" in m["files"]
    assert m["fit_check"]["verdict"] in ("ok", "weak", "failed") and m["fit_check"]["rows"] == 4000
    # without the rules the same model table would break them: the codec's own range of age is wider
    assert engine.codec.by_name.get("age") is None and "logit(age)" in engine.codec.by_name


def test_conditions_on_a_constraints_columns(adult_model, adult_data):
    engine = load_engine(adult_model)
    t = engine.sample(2000, {"relationship": "Husband"}, seed=1, **FAST)
    assert set(t.column("relationship").to_pylist()) == {"Husband"}
    assert set(zip(t.column("relationship").to_pylist(), t.column("sex").to_pylist())) <= \
        seen_combinations(adult_data, ["relationship", "sex"])
    assert engine.sample(2000, {"relationship": "Husband"}, seed=1, **FAST).equals(t)
    both = engine.sample(50, {"relationship": "Wife", "sex": "Female"}, seed=2, **FAST)
    assert set(zip(both.column("relationship").to_pylist(), both.column("sex").to_pylist())) == {("Wife", "Female")}
    with pytest.raises(ConfigError, match=r"not a combination constraints\[1\] \(fixed_combinations"):
        engine.sample(5, {"relationship": "Wife", "sex": "Male"}, **FAST)
    with pytest.raises(ConfigError, match=r"'age' is rewritten by constraints\[0\] \(range: 18 <= age <= 65\)"):
        engine.sample(5, {"age": 30}, **FAST)


def test_the_endpoint_and_sample_cli_apply_the_rules(adult_model, adult_data, tmp_path):
    from typer.testing import CliRunner

    from synth.cli import app
    from synth.serving import ServeArgs
    from synth.serving.schemas import SampleRequest
    from synth.serving.service import SamplingService

    engine = load_engine(adult_model)
    service = SamplingService(ServeArgs(artifact_uri=adult_model, calibrate=False), engine=engine)
    jobs = [service.validate(SampleRequest(rows=3000, seed=s, format="arrow", conditions=c, **FAST))
            for s, c in ((1, {}), (2, {"relationship": "Own-child"}), (3, {}))]
    out, _ = service.run(jobs)
    tables = [pa.ipc.open_stream(b).read_all() for b in out]
    for t in tables:
        assert_adult_rules(t, adult_data)
    assert set(tables[1].column("relationship").to_pylist()) == {"Own-child"}
    assert tables[0].equals(engine.sample(3000, seed=1, **FAST))  # the batched endpoint gives engine.sample's rows
    info = service.model_info()
    assert [f["name"] for f in info["schema"]] == pq.read_schema(adult_data).names
    listed = {c["name"]: c["values"] for c in info["condition_columns"]}
    assert "relationship & sex" not in listed and set(listed["sex"]) == {"Male", "Female"}
    assert "Wife" in listed["relationship"]
    path = tmp_path / "rows.parquet"
    r = CliRunner().invoke(app, ["sample", adult_model, "-n", "500", "-o", str(path), "--condition",
                                 "sex=Female", "--steps", "2"])
    assert r.exit_code == 0, r.output
    t = pq.read_table(path)
    assert set(t.column("sex").to_pylist()) == {"Female"}
    assert_adult_rules(t, adult_data)


@pytest.mark.ray
def test_bulk_synthesis_on_ray_applies_the_rules(ray_session, adult_model, adult_data, tmp_path):
    from synth.pipelines.synthesize import SynthesizeConfig, synthesize

    out = tmp_path / "syn"
    synthesize(SynthesizeConfig(artifact=adult_model, output=str(out), rows=3000, shard_rows=1500, batch_rows=1500,
                                steps=2, actors=1, cpus_per_actor=0.5, conditions={"fixed": {"sex": "Male"}}))
    t = pq.ParquetDataset(sorted(str(p) for p in out.glob("part-*.parquet"))).read()
    assert t.num_rows == 3000 and set(t.column("sex").to_pylist()) == {"Male"}
    assert_adult_rules(t, adult_data)


@pytest.mark.ray
@pytest.mark.slow
def test_ray_train_fits_apply_the_rules(ray_session, adult_data, tmp_path):
    cfg = RunConfig.parse(run(tmp_path, adult_data, ADULT_RULES, steps=6, data={"constraint_violations": "drop"},
                              scaling={"num_workers": 1, "cpus_per_worker": 1}, evaluate={"check": "off"}))
    engine = load_engine(fit(cfg).artifact_uri)
    m = engine.manifest
    assert m["workers"] == 1 and m["constraints"]["rows_dropped"] > 0 and "logit(age)" in engine.codec.by_name
    assert_adult_rules(engine.sample(5000, seed=4, **FAST), adult_data)


def test_scoring_encodes_rows_through_the_rules(adult_model, adult_data):
    from synth.engine.likelihood import log_prob_rows

    engine = load_engine(adult_model)
    rows = pq.read_table(adult_data).slice(0, 300)
    seen = []
    log_prob_rows(engine, rows, lambda x, g: seen.append(x) or x.sum(1))
    expected = engine.codec.encode(engine.constraints.forward(rows), None, strict=False)
    assert np.array_equal(seen[0].numpy(), expected)


def test_a_changed_constraints_file_is_refused(adult_model, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(adult_model, copy)
    doc = json.loads((copy / "constraints.json").read_text())
    doc["transforms"][0]["lo"] = 0
    (copy / "constraints.json").write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="constraints.json in artifact .* was modified"):
        load_engine(str(copy))


# -- a table with datetimes and nulls -----------------------------------------------------------------
@pytest.fixture(scope="module")
def bookings(tmp_path_factory) -> str:
    rng = np.random.default_rng(1)
    n = 3000
    checkin = np.datetime64("2024-01-01") + rng.integers(0, 360, n).astype("timedelta64[D]")
    nights = rng.integers(1, 15, n)
    checkout = checkin + nights.astype("timedelta64[D]")
    price = np.round(rng.gamma(4, 30, n), 2)
    city = rng.choice(["Paris", "Lyon", "Austin", "Dallas"], n)
    state = np.where(np.isin(city, ["Paris", "Lyon"]), "FR", "TX")
    no_in, no_out = rng.random(n) < 0.08, rng.random(n) < 0.05
    no_price, no_state = rng.random(n) < 0.05, rng.random(n) < 0.04
    t = pa.table({
        "checkin": pa.array(checkin.astype("datetime64[us]"), mask=no_in),
        "checkout": pa.array(checkout.astype("datetime64[us]"), mask=no_out),
        "nights": pa.array(nights),
        "price": pa.array(price, mask=no_price),
        "total": pa.array(np.round(price * nights, 2), mask=no_price),
        "city": pa.array(city),
        "state": pa.array(state, mask=no_state),
        "day": pa.array(checkin.astype("datetime64[D]"), pa.date32()),
    })
    path = tmp_path_factory.mktemp("bookings") / "bookings.parquet"
    pq.write_table(t, path)
    return str(path)


BOOKING_RULES = [
    {"kind": "inequality", "low": "checkin", "high": "checkout", "strict": True},
    {"kind": "range", "column": "checkin", "min": "2024-01-01", "max": "2024-12-31"},
    {"kind": "fixed_combinations", "columns": ["city", "state"]},
    {"kind": "formula", "column": "total", "expression": "price * nights", "decimals": 2},
    {"kind": "range", "column": "day", "min": "2024-01-01", "max": "2024-12-31"},
]


def test_datetimes_and_nulls_round_trip_and_the_rules_hold(bookings, tmp_path):
    cfg = RunConfig.parse(run(tmp_path, bookings, BOOKING_RULES, steps=60, evaluate={"check": "off"}))
    prep = prepare(cfg)
    real = pq.read_table(bookings)
    cons = prep.constraints
    assert cons.inverse(cons.forward(real)).equals(real)  # exact on real rows, nulls included
    engine = load_engine(fit(cfg).artifact_uri)
    t = engine.sample(ROWS, seed=5, **FAST)
    assert t.schema == real.schema.remove_metadata()
    cin, cout = t.column("checkin"), t.column("checkout")
    both = pc.and_(pc.is_valid(cin), pc.is_valid(cout))
    assert pc.all(pc.less(pc.filter(cin, both), pc.filter(cout, both))).as_py()
    assert cin.null_count > 0 and cout.null_count > 0  # nulls are modelled, not lost or crashed on
    assert pc.sum(pc.and_(pc.is_null(cin), pc.is_valid(cout))).as_py() > 0  # the rule is off where checkin is null
    days = pc.cast(pc.filter(cin, pc.is_valid(cin)), pa.int64()).to_numpy() // 86_400_000_000
    lo, hi = np.datetime64("2024-01-01", "D").astype(int), np.datetime64("2024-12-31", "D").astype(int)
    assert days.min() >= lo and days.max() <= hi
    assert (pc.cast(pc.filter(cout, pc.is_valid(cout)), pa.int64()).to_numpy() % 86_400_000_000 == 0).all()
    day = pc.cast(t.column("day"), pa.int32()).to_numpy()
    assert day.min() >= lo and day.max() <= hi
    seen = set(zip(real.column("city").to_pylist(), real.column("state").to_pylist()))
    assert set(zip(t.column("city").to_pylist(), t.column("state").to_pylist())) <= seen
    price, nights, total = (t.column(c).to_numpy(zero_copy_only=False) for c in ("price", "nights", "total"))
    ok = ~np.isnan(price.astype(float))
    assert np.array_equal(total[ok].astype(float), np.round(price[ok].astype(float) * nights[ok], 2))
    assert t.column("total").null_count == t.column("price").null_count > 0


# -- bad input: refused before any work, naming the constraint, never a data value ---------------------
@pytest.mark.parametrize("rules,says", [
    ([{"kind": "range", "column": "age", "min": 65, "max": 18}], r"constraints\[0\]: min \(65\) is above max \(18\)"),
    ([{"kind": "range", "column": "age"}], "a range needs min, max, low_column or high_column"),
    ([{"kind": "formula", "column": "t", "expression": "__import__('os').system('x')"}],
     "may hold only column names, numbers"),
    ([{"kind": "formula", "column": "t", "expression": "a ** 2"}], "may hold only column names, numbers"),
    ([{"kind": "inequality", "low": "age", "high": "fnlwgt"}, {"kind": "range", "column": "fnlwgt", "min": 1}],
     r"constraints\[1\] \(range: 1 <= fnlwgt\) and constraints\[0\] \(inequality: age <= fnlwgt\) both "
     r"constrain column 'fnlwgt'"),
    ([{"kind": "inequality", "low": "a", "high": "b"}, {"kind": "inequality", "low": "b", "high": "a"}],
     "depend on each other in a cycle"),
    ([{"kind": "range", "column": "x", "low_column": "a", "high_column": "b"}],
     r"constraints\[0\] \(range: a <= x <= b\) needs a <= b on every row.*add \{kind: inequality, low: a, high: b\}"),
    ([{"kind": "range", "column": "x", "low_column": "a", "max": 3}], "give both bounds as columns or both as constants"),
    ([{"kind": "shape", "column": "a"}], r"constraints\[0\]: each constraint needs a kind: inequality, range"),
    ([{"kind": "range", "column": "a", "mn": 3}], r"unknown field 'mn' in constraints\[0\]; .* \(did you mean 'min'\?\)"),
])
def test_bad_declarations_are_refused_at_config_load(rules, says):
    with pytest.raises(ConfigError, match=says):
        RunConfig.parse({"constraints": rules})


def test_constraints_with_privacy_or_an_override_are_refused():
    with pytest.raises(ConfigError, match="not implemented for private runs"):
        RunConfig.parse({"privacy": {"enabled": True, "epsilon": 1.0}, "constraints": [{"kind": "range", "column": "age", "min": 1}]})
    with pytest.raises(ConfigError, match=r"constraints\[0\] \(range: 1 <= age\) rewrites column 'age'.*overrides"):
        RunConfig.parse({"data": {"codec": {"overrides": {"age": "categorical"}}},
                         "constraints": [{"kind": "range", "column": "age", "min": 1}]})


@pytest.mark.parametrize("rules,error,says", [
    ([{"kind": "range", "column": "agee", "min": 1}], ConfigError, r"constraints\[0\] .* names column\(s\) \['agee'\]"),
    ([{"kind": "formula", "column": "age", "expression": "sex * 2"}], ConfigError,
     r"constraints\[0\] \(formula: age = sex \* 2\): column 'sex' is string; a formula works on integer"),
    ([{"kind": "inequality", "low": "education", "high": "age"}], ConfigError, "numeric or datetime columns only"),
    ([{"kind": "range", "column": "age", "min": 20, "max": 60}], DataError,
     r"rows break the declared constraints \(constraints\[0\] \(range: 20 <= age <= 60\): \d+ row\(s\)\).*"
     r"constraint_violations: drop"),
    ([{"kind": "formula", "column": "capital-gain", "expression": "`capital-loss` * 2"}], DataError,
     r"constraints\[0\] \(formula"),
])
def test_the_data_is_checked_before_training(rules, error, says, tmp_path):
    with pytest.raises(error, match=says) as e:
        prepare(RunConfig.parse({"output": str(tmp_path), "constraints": rules}))
    assert "Traceback" not in str(e.value) and "90" not in str(e.value)  # no value of the data (age max is 90)


# -- the transforms alone: exact on real rows, never violated from any model table --------------------
def _random_model_table(model: pa.Table, rng) -> pa.Table:
    """What a (bad) model could decode: every rewritten numeric column replaced by wild values."""
    for i, f in enumerate(model.schema):
        if f.name.startswith("logit(") or " - " in f.name or f.name.startswith("max - "):
            n = model.num_rows
            if pa.types.is_integer(f.type):
                arr = pa.array(rng.integers(-1000, 1000, n), f.type)
            else:
                arr = pa.array(rng.normal(0, 50, n), f.type)
            model = model.set_column(i, f, arr)
    return model


def test_transforms_round_trip_and_cannot_be_violated():
    from pydantic import TypeAdapter

    from synth.table import CodecConfig
    from synth.table.constraints import Constraint, Constraints

    rng = np.random.default_rng(2)
    n = 4000
    lo = rng.normal(0, 10, n)
    hi = lo + rng.gamma(2, 3, n)
    x = lo + rng.random(n) * (hi - lo)
    a, b = rng.integers(0, 50, n), rng.integers(0, 9, n)
    t = pa.table({
        "lo": pa.array(lo, mask=rng.random(n) < 0.1), "hi": pa.array(hi, mask=rng.random(n) < 0.1),
        "x": pa.array(x, mask=rng.random(n) < 0.05), "cap": pa.array(rng.integers(0, 100, n)),
        "a": pa.array(a, mask=rng.random(n) < 0.1), "b": pa.array(b), "sum": pa.array(a + 2 * b, pa.int32()),
        "g": pa.array(rng.uniform(0, 1, n)), "h": pa.array(rng.uniform(1.5, 3, n)),
    })
    rules = [{"kind": "range", "column": "x", "low_column": "lo", "high_column": "hi"},
             {"kind": "inequality", "low": "lo", "high": "hi"},
             {"kind": "range", "column": "cap", "max": 99.5},
             {"kind": "formula", "column": "sum", "expression": "a + 2*b"},
             {"kind": "inequality", "low": "g", "high": "h", "strict": True}]
    specs = [TypeAdapter(Constraint).validate_python(r) for r in rules]
    cons, kept = Constraints.fit(specs, t, CodecConfig())
    assert kept.num_rows == n
    model = cons.forward(t)
    assert "x (rule off)" in model.schema.names and "sum (rule off)" in model.schema.names
    assert "sum" not in model.schema.names and "max - cap" in model.schema.names
    back = cons.inverse(model)
    for c in ("lo", "hi", "cap", "a", "b", "sum"):
        assert back.column(c).equals(t.column(c)), c
    for c in ("x", "h"):  # floats: high - low + low is high up to its last bits
        xs, xt = back.column(c).to_numpy(zero_copy_only=False), t.column(c).to_numpy(zero_copy_only=False)
        assert back.column(c).null_count == t.column(c).null_count
        assert np.allclose(xs.astype(float), xt.astype(float), equal_nan=True, rtol=1e-9, atol=1e-9)
    for seed in range(3):
        out = cons.inverse(_random_model_table(model, np.random.default_rng(seed)))
        v = {c: out.column(c).to_numpy(zero_copy_only=False).astype(float) for c in out.schema.names}
        ok = ~np.isnan(v["lo"]) & ~np.isnan(v["hi"]) & ~np.isnan(v["x"])
        assert ((v["x"][ok] >= v["lo"][ok]) & (v["x"][ok] <= v["hi"][ok])).all()
        assert v["cap"].max() <= 99
        ok = ~np.isnan(v["a"])
        assert (v["sum"][ok] == v["a"][ok] + 2 * v["b"][ok]).all()
        assert (v["h"] > v["g"]).all()
    assert "hi (rule off)" in model.schema.names and "hi - lo" in model.schema.names
    with pytest.raises(DataError, match=r"constraints\[0\] \(inequality: hi <= lo\): \d+ row\(s\)"):
        Constraints.fit([TypeAdapter(Constraint).validate_python({"kind": "inequality", "low": "hi", "high": "lo"})],
                        t, CodecConfig())


def test_the_example_config_is_valid():
    cfg = RunConfig.from_yaml("configs/adult-constraints.yaml")
    assert [c.kind for c in cfg.constraints] == ["range", "fixed_combinations", "fixed_combinations", "range"]


def test_datetimes_of_different_units_and_time_zones():
    from pydantic import TypeAdapter

    from synth.table import CodecConfig
    from synth.table.constraints import Constraint, Constraints

    rng = np.random.default_rng(0)
    n = 500
    ts = np.datetime64("2024-03-01T00:00:00", "s") + rng.integers(0, 86400 * 30, n).astype("timedelta64[s]")
    later = ts.astype("datetime64[ms]") + rng.integers(1, 5000, n).astype("timedelta64[ms]")
    t = pa.table({"t": pa.array(ts).cast(pa.timestamp("s", tz="Europe/Paris")),
                  "u": pa.array(later).cast(pa.timestamp("ms", tz="Europe/Paris")),
                  "d": pa.array(ts.astype("datetime64[D]") + np.timedelta64(1, "D"), pa.date32())})
    specs = [TypeAdapter(Constraint).validate_python(r) for r in (
        {"kind": "range", "column": "t", "min": "2024-03-01", "max": "2024-04-01"},
        {"kind": "inequality", "low": "t", "high": "u", "strict": True},
        {"kind": "inequality", "low": "t", "high": "d"})]
    cons, _ = Constraints.fit(specs, t, CodecConfig())
    model = cons.forward(t)
    assert cons.inverse(model).equals(t)
    wild = model.set_column(1, "u - t", pa.array(rng.integers(-3, 3, n))).set_column(2, "d - t", pa.array(
        rng.integers(-3, 3, n)))
    out = cons.inverse(wild)
    ns = {c: pc.cast(pc.cast(out.column(c), pa.timestamp("ns")), pa.int64()).to_numpy() for c in ("t", "u", "d")}
    assert (ns["u"] > ns["t"]).all() and (ns["d"] >= ns["t"]).all()
    with pytest.raises(DataError, match=r"500 of 500 training rows .*constraints\[0\] \(inequality: u < t\)"):
        Constraints.fit([TypeAdapter(Constraint).validate_python({"kind": "inequality", "low": "u", "high": "t",
                                                                  "strict": True})], t, CodecConfig())
