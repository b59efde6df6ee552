"""Table codec: kinds, round trips (property-based), JSON state, bounded memory, bad input.

Round trips are exact with value protection off (`EXACT`); what protection keeps is tested in
tests/test_protection.py."""
import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synth.errors import ConfigError, DataError
from synth.table import CodecConfig, TableCodec, TableStats


EXACT = CodecConfig(value_protection=False)


def roundtrip(table: pa.Table, cfg: CodecConfig | None = None, batch: int = 97):
    stats = TableStats.empty(table.schema)
    for b in table.to_batches(max_chunksize=batch):
        stats.add_batch(b)
    codec = TableCodec.from_stats(stats, cfg)
    codec = TableCodec.from_dict(json.loads(json.dumps(codec.to_dict())))
    x = codec.encode(table)
    assert x.shape == (table.num_rows, codec.width) and np.isfinite(x).all()
    return codec, codec.decode(x)


def mixed_table(n=500, seed=0) -> pa.Table:
    rng = np.random.default_rng(seed)
    ints = rng.integers(-50, 5000, n)
    nulls = rng.random(n) < 0.1
    return pa.table({
        "f64": pa.array(rng.normal(3, 10, n)),
        "f32": pa.array(rng.gamma(2, 3, n).astype(np.float32)),
        "i32": pa.array(ints.astype(np.int32)),
        "u8": pa.array(rng.integers(0, 200, n).astype(np.uint8)),
        "mass": pa.array(np.where(rng.random(n) < 0.9, 0, rng.integers(1, 99999, n))),
        "nullable_int": pa.array(ints, mask=nulls),
        "cat": pa.array(rng.choice(["a", "b", "c", "ddd"], n)),
        "nullable_cat": pa.array(rng.choice(["x", "y"], n).tolist(), mask=nulls),
        "dict": pa.array(rng.choice(["p", "q"], n)).dictionary_encode(),
        "flag": pa.array(rng.random(n) < 0.3),
        "nullable_flag": pa.array((rng.random(n) < 0.5).tolist(), mask=nulls),
        "small_int": pa.array(rng.integers(0, 4, n)),
        "ts": pa.array(np.datetime64("2020-01-01T00:00:00") + rng.integers(0, 10**8, n).astype("timedelta64[s]")),
        "ts_tz": pa.array((1_600_000_000_000_000 + rng.integers(0, 10**12, n)), pa.timestamp("us", tz="UTC")),
        "date": pa.array([dt.date(2000, 1, 1) + dt.timedelta(days=int(d)) for d in rng.integers(0, 9000, n)],
                         mask=nulls),
    })


def test_kinds_inferred_from_schema_and_data():
    codec, _ = roundtrip(mixed_table())
    assert codec.kinds() == {
        "f64": "continuous", "f32": "continuous", "i32": "integer", "u8": "integer", "mass": "integer",
        "nullable_int": "integer", "cat": "categorical", "nullable_cat": "categorical", "dict": "categorical",
        "flag": "boolean", "nullable_flag": "boolean", "small_int": "categorical", "ts": "datetime",
        "ts_tz": "datetime", "date": "datetime"}


def test_roundtrip_keeps_values_and_arrow_types():
    table = mixed_table()
    codec, back = roundtrip(table, EXACT)
    assert back.schema == table.schema
    for name in table.schema.names:
        a, b = table.column(name), back.column(name)
        if pa.types.is_floating(a.type):
            np.testing.assert_allclose(b.to_numpy(), a.to_numpy(), rtol=1e-6)
        else:
            assert a.equals(b), name


def test_override_and_unknown_override():
    table = mixed_table()
    codec, back = roundtrip(table, CodecConfig(overrides={"u8": "categorical"}, ignore=["ts"], max_onehot=256,
                                               value_protection=False))
    assert codec.kinds()["u8"] == "categorical" and "ts" not in codec.kinds()
    assert back.column("u8").equals(table.column("u8"))
    with pytest.raises(ConfigError, match="'nope'"):
        roundtrip(table, CodecConfig(overrides={"nope": "integer"}))
    with pytest.raises(ConfigError, match="'cat'.*categorical"):
        roundtrip(table, CodecConfig(overrides={"cat": "continuous"}))


def test_point_mass_and_dequantisation_decode_exactly():
    table = mixed_table(2000)
    codec, _ = roundtrip(table, EXACT)
    x = codec.encode(table, np.random.default_rng(0))
    back = codec.decode(x)
    assert back.column("mass").equals(table.column("mass"))
    z = x[:, codec.slice_of("mass")][:, 0]
    assert 0.8 < z.std() < 1.2  # dequantised point mass is spread like N(0, 1)


def test_high_cardinality_categorical_is_bounded():
    n = 120_000
    rng = np.random.default_rng(1)
    values = np.char.add("id", rng.integers(0, 50_000, n).astype(str))
    table = pa.table({"big": values, "y": rng.normal(size=n)})
    codec, back = roundtrip(table, CodecConfig(max_onehot=64, value_protection=False), batch=10_000)
    assert codec.width == 64 + 1
    head = set(codec.by_name["big"].categories)
    # frequent values come back exactly; the tail is redrawn from its reference frequency
    same = np.asarray(back.column("big").to_pylist()) == values
    in_head = np.isin(values, list(head))
    assert same[in_head].all()
    assert set(back.column("big").to_pylist()) <= set(values.tolist())


def test_numeric_sketch_is_bounded_and_keeps_extremes():
    n = 200_000
    x = np.random.default_rng(2).lognormal(size=n)
    codec, back = roundtrip(pa.table({"x": x}), EXACT, batch=20_000)
    col = codec.by_name["x"]
    assert len(col.knots_x) <= 4096
    b = back.column("x").to_numpy()
    assert b.min() == x.min() and b.max() == x.max()
    np.testing.assert_allclose(np.quantile(b, [0.1, 0.5, 0.9]), np.quantile(x, [0.1, 0.5, 0.9]), rtol=1e-2)


@pytest.mark.parametrize("bad,match", [
    (pa.table({"a": pa.array([None, None], pa.float64()), "b": [1.0, 2.0]}), "'a' is entirely null"),
    (pa.table({"a": [1.0, float("nan"), 2.0]}), "'a' has 1 NaN or infinite"),
    (pa.table({"a": [1.0, float("inf"), 2.0]}), "'a' has 1 NaN or infinite"),
    (pa.table({"a": pa.array([], pa.float64())}), "no rows"),
    (pa.table({"a": pa.array([{"x": 1}, {"x": 2}])}), "'a' has Arrow type struct"),  # lists: array kind (test_arrays)
])
def test_bad_input_names_the_column(bad, match):
    with pytest.raises(DataError, match=match):
        TableCodec.fit([bad], schema=bad.schema)


def test_unseen_category_is_named_when_given_but_never_when_read_from_data():
    codec, _ = roundtrip(mixed_table())
    with pytest.raises(ConfigError, match="'cat' has no category 'zzz'"):
        codec.categorical("cat").codes(["zzz"])  # a condition: the user's own value
    with pytest.raises(ConfigError, match="'dict' holds a value that is not one of its categories") as e:
        codec.encode(mixed_table().set_column(8, "dict", pa.array(["Jane Q. Secret"] * 500)))
    assert "Jane" not in str(e.value)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    floats=st.lists(st.floats(-1e9, 1e9, allow_nan=False, allow_infinity=False, width=64), min_size=1, max_size=60),
    data=st.data(),
)
def test_property_roundtrip(floats, data):
    n = len(floats)
    ints = data.draw(st.lists(st.integers(-2**40, 2**40), min_size=n, max_size=n))
    cats = data.draw(st.lists(st.one_of(st.none(), st.sampled_from(["α", "b", "", "long value"])), min_size=n, max_size=n))
    secs = data.draw(st.lists(st.integers(0, 4_000_000_000), min_size=n, max_size=n))
    table = pa.table({
        "f": pa.array(floats, pa.float64()),
        "i": pa.array(ints, pa.int64()),
        "c": pa.array(cats, pa.string()),
        "t": pa.array(secs, pa.timestamp("s")),
    })
    if all(c is None for c in cats):
        table = table.drop(["c"])
    _, back = roundtrip(table, EXACT, batch=7)
    assert back.schema == table.schema
    np.testing.assert_allclose(back.column("f").to_numpy(), np.asarray(floats), rtol=1e-9, atol=1e-6)
    for name in back.schema.names[1:]:
        assert back.column(name).equals(table.column(name)), name
