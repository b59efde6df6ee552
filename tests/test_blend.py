"""Hybrid blending (`synth blend`, synth.pipelines.blend): each mode's arithmetic, seeded determinism,
A's exact schema, and clear errors (mismatched schemas, weights outside [0, 1], unknown
columns) that leave no output behind."""
from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synth.pipelines.blend import blend_files, blend_tables
from synth.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
N = 2000


def table(offset: float, label: str, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    t0 = dt.datetime(2024, 1, 1)
    return pa.table({
        "amount": pa.array(rng.normal(offset, 1, N)),
        "count": pa.array(np.full(N, int(offset)), pa.int32()),
        "when": pa.array([t0 + dt.timedelta(days=int(offset))] * N, pa.timestamp("us")),
        "day": pa.array([dt.date(2024, 1, 1) + dt.timedelta(days=int(offset))] * N, pa.date32()),
        "city": pa.array([f"{label}{i % 3}" for i in range(N)]),
        "flag": pa.array([label == "a"] * N),
        "kind": pa.array([label] * N).dictionary_encode(),
    })


A, B = table(10, "a", 0), table(20, "b", 1)


def test_interpolate_averages_numerics_and_picks_categoricals_per_record():
    out = blend_tables(A, B, "interpolate", 0.25, seed=3)
    assert out.schema == A.schema
    np.testing.assert_allclose(out["amount"].to_numpy(), 0.25 * A["amount"].to_numpy() + 0.75 * B["amount"].to_numpy())
    assert set(out["count"].to_pylist()) == {18}  # 0.25 * 10 + 0.75 * 20 = 17.5 -> rounds to even
    assert set(out["when"].to_pylist()) == {dt.datetime(2024, 1, 18, 12)}
    assert set(out["day"].to_pylist()) == {dt.date(2024, 1, 18)}
    from_a = np.array([c.startswith("a") for c in out["city"].to_pylist()])
    assert 0.2 < from_a.mean() < 0.3  # weight 0.25 per record
    # one draw per record: a record's categorical columns come from the same source
    assert (np.array(out["flag"].to_pylist()) == from_a).all()
    assert (np.array([k == "a" for k in out["kind"].to_pylist()]) == from_a).all()


def test_select_takes_whole_records_and_ensemble_takes_columns():
    out = blend_tables(A, B, "select", 0.7, seed=5)
    from_a = np.array(out["flag"].to_pylist())
    assert 0.65 < from_a.mean() < 0.75
    for name in A.column_names:
        got = np.array(out[name].to_pylist(), dtype=object)
        want = np.where(from_a, np.array(A[name].to_pylist(), dtype=object), np.array(B[name].to_pylist(), dtype=object))
        assert (got == want).all(), name
    ens = blend_tables(A, B, "ensemble", columns=["amount", "city"])
    assert ens["amount"].equals(A["amount"]) and ens["city"].equals(A["city"])
    assert ens["count"].equals(B["count"]) and ens["kind"].equals(B["kind"])
    # interpolate restricted to some columns: the others come from A
    part = blend_tables(A, B, "interpolate", 0.5, columns=["amount"])
    assert part["city"].equals(A["city"]) and not part["amount"].equals(A["amount"])


def test_edge_weights_nulls_and_determinism():
    assert blend_tables(A, B, "select", 1.0).to_pylist() == A.to_pylist()
    assert blend_tables(A, B, "interpolate", 0.0).to_pylist() == B.to_pylist()
    assert blend_tables(A, B, "select", 0.4, seed=9).equals(blend_tables(A, B, "select", 0.4, seed=9))
    assert not blend_tables(A, B, "select", 0.4, seed=9).equals(blend_tables(A, B, "select", 0.4, seed=10))
    a = pa.table({"x": pa.array([1.0, None, None, 4.0]), "c": ["a"] * 4})
    b = pa.table({"x": pa.array([3.0, 2.0, None, None]), "c": ["b"] * 4})
    out = blend_tables(a, b, "interpolate", 0.5, seed=0)
    src_a = [c == "a" for c in out["c"].to_pylist()]
    x = out["x"].to_pylist()
    assert x[0] == 2.0 and x[2] is None
    assert x[1] == (None if src_a[1] else 2.0) and x[3] == (4.0 if src_a[3] else None)


@pytest.mark.parametrize("kwargs,message", [
    ({"mode": "interpolate", "weight": 1.5}, r"weight must be a number in \[0, 1\].*got 1.5"),
    ({"mode": "select", "weight": -0.1}, r"weight must be a number in \[0, 1\]"),
    ({"mode": "select", "weight": float("nan")}, r"weight must be a number in \[0, 1\]"),
    ({"mode": "select", "weight": None}, r"weight must be a number"),
    ({"mode": "interpolate", "weight": 0.5, "columns": ["amount", "nope"]}, r"unknown column\(s\) \['nope'\]"),
    ({"mode": "ensemble"}, "ensemble mode needs columns"),
    ({"mode": "ensemble", "columns": ["amount"], "weight": 0.5}, "weight does not apply to ensemble"),
    ({"mode": "average", "weight": 0.5}, "unknown blend mode 'average'"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        blend_tables(A, B, **kwargs)


def test_mismatched_schemas_name_the_column_and_both_types():
    b = B.set_column(1, "count", B["count"].cast(pa.string()))
    with pytest.raises(ConfigError, match="column 'count' is int32 in A but string in B"):
        blend_tables(A, b, "select", 0.5)
    with pytest.raises(ConfigError, match=r"\['city'\] only in A"):
        blend_tables(A, B.drop_columns(["city"]), "select", 0.5)
    with pytest.raises(ConfigError, match="A has 2000 rows and B has 10"):
        blend_tables(A, B.slice(0, 10), "select", 0.5)
    # same columns in another order are fine; the output keeps A's order
    assert blend_tables(A, B.select(B.column_names[::-1]), "select", 0.5).schema == A.schema


def test_cli_blend_writes_atomically_and_refuses_bad_input(tmp_path):
    pq.write_table(A, tmp_path / "a.parquet")
    pq.write_table(B, tmp_path / "b.parquet")
    pq.write_table(B.set_column(0, "amount", B["amount"].cast(pa.float32())), tmp_path / "b32.parquet")

    def synth(*args):
        return subprocess.run([sys.executable, "-m", "synth.cli", "blend", *map(str, args)], capture_output=True,
                              text=True, cwd=REPO, timeout=120)

    out = tmp_path / "out.parquet"
    r = synth(tmp_path / "a.parquet", tmp_path / "b.parquet", "--mode", "ensemble", "--columns", "amount,city",
              "-o", out)
    assert r.returncode == 0, r.stderr
    t = pq.read_table(out)
    assert t["amount"].equals(A["amount"]) and t["count"].equals(B["count"])
    assert blend_files(str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet"), str(tmp_path / "o2.parquet"),
                       "ensemble", columns=["amount", "city"]).equals(t.replace_schema_metadata(
                           pq.read_table(tmp_path / "o2.parquet").schema.metadata))
    for args, message in [
        (("--mode", "interpolate", "--weight", "2"), "weight must be a number in [0, 1]"),
        (("--mode", "select"), "--weight is required for select mode"),
        (("--mode", "ensemble", "--columns", "amount,ghost"), "unknown column(s) ['ghost']"),
    ]:
        r = synth(tmp_path / "a.parquet", tmp_path / "b.parquet", *args, "-o", tmp_path / "bad.parquet")
        assert r.returncode == 2 and message in " ".join(r.stderr.split()) and "Traceback" not in r.stderr, r.stderr
    r = synth(tmp_path / "a.parquet", tmp_path / "b32.parquet", "--mode", "select", "--weight", "0.5",
              "-o", tmp_path / "bad.parquet")
    err = " ".join(r.stderr.split())
    assert r.returncode == 2 and "column 'amount' is double in" in err and "but float in" in err, r.stderr
    assert not (tmp_path / "bad.parquet").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
