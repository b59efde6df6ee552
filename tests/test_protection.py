"""Value protection (issue #21, item 1): no identifier, rare category or outlier of the reference
data reaches the artifact or the sampled rows of a non-private model (docs/protection.md)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synth.engine.rowstreams import RowUniforms
from synth.errors import ConfigError
from synth.table import CodecConfig, TableCodec
from synth.table.protection import RARE, identifier_format, name_hint
from synth.table.stats import TableStats

OUTLIER = 12_345_678
RARE_AGE = 104


def people(n: int = 5000, seed: int = 0) -> tuple[pa.Table, set[str]]:
    """A table of unique names and e-mails, a salary with one outlier, cities of which 40 are seen
    1-3 times, ages with one 104-year-old; and the set of strings that must never come back."""
    rng = np.random.default_rng(seed)
    first = ["Ada", "Bo", "Cy", "Di", "Ed", "Flo", "Gus", "Hal", "Ivy", "Jo"]
    names = [f"{first[i % 10]} Q. Secret{i}" for i in range(n)]
    emails = [f"{first[i % 10].lower()}.{i}@secret-mail.com" for i in range(n)]
    salary = np.round(rng.lognormal(10.5, 0.6, n))
    salary[7] = OUTLIER
    common = ["Berlin", "Lyon", "Porto", "Graz", "Turin"]
    rare = [f"Hamlet{i}" for i in range(40)]
    city = rng.choice(common, n).astype(object)
    city[: 80] = np.repeat(rare, 2)  # 40 hamlets, twice each
    age = rng.integers(18, 90, n)
    age[3] = RARE_AGE
    table = pa.table({"name": names, "email": emails, "salary": salary, "city": city.tolist(), "age": age})
    return table, set(names) | set(emails) | set(rare)


def leaks(text: str, secrets: set[str]) -> list[str]:
    return [s for s in secrets if s in text]


def test_codec_stores_no_identifier_rare_category_or_outlier_and_100k_decoded_rows_show_none():
    table, secrets = people()
    codec = TableCodec.fit([table])
    assert codec.kinds() == {"name": "id", "email": "id", "salary": "integer", "city": "categorical",
                             "age": "integer"} or codec.kinds()["salary"] == "continuous"
    state = json.dumps(codec.to_dict())
    assert not leaks(state, secrets)
    assert str(OUTLIER) not in state and f"{RARE_AGE}.0" not in state
    city = codec.by_name["city"]
    assert RARE in city.categories and not set(city.categories) & secrets
    salary = codec.by_name["salary"]
    assert salary.max < OUTLIER and salary.max <= np.sort(table.column("salary").to_numpy())[-10]
    assert codec.by_name["age"].max == 89  # the 104-year-old is alone above 89: the range ends at the 10th oldest

    n = 100_000
    feats = np.random.default_rng(1).normal(size=(n, codec.width)) * 2.5
    out = codec.decode(feats, RowUniforms(seed=3, start=0, n=n))
    for col in ("name", "email", "city"):
        assert not set(out.column(col).to_pylist()) & secrets, col
    assert out.column("salary").to_numpy().max() <= salary.max
    assert out.column("age").to_numpy().max() < RARE_AGE
    names, emails = out.column("name").to_pylist(), out.column("email").to_pylist()
    assert len(set(names)) == n and len(set(emails)) == n  # fresh identifiers, one per row
    assert all(re.fullmatch(r"user-[0-9a-f]{16}@example\.invalid", e) for e in emails[:1000])
    # row-keyed like every per-row draw: rows 10..19 of seed 3 are the same whoever asks
    again = codec.decode(feats[10:20], RowUniforms(seed=3, start=10, n=10))
    assert again.column("name").to_pylist() == names[10:20]


def test_without_protection_the_codec_stores_every_name_and_the_outlier():
    """What the artifact held before value protection (and holds with `value_protection: false`)."""
    table, secrets = people(2000)
    state = json.dumps(TableCodec.fit([table], CodecConfig(value_protection=False)).to_dict())
    assert len(leaks(state, secrets)) > 1000 and str(OUTLIER) in state


def test_fingerprint_family_samples_100k_rows_without_a_real_rare_value(tmp_path):
    from synth.families import load_engine
    from synth.table.fingerprint import build_fingerprint, write_fingerprint
    from synth.train.fit import fit_fingerprint

    table, secrets = people()
    pq.write_table(table, tmp_path / "people.parquet")
    write_fingerprint(build_fingerprint(str(tmp_path / "people.parquet"), quantiles=51), str(tmp_path / "fp.json"))
    fit_fingerprint(str(tmp_path / "fp.json"), str(tmp_path / "model"))
    for f in [tmp_path / "fp.json", *Path(tmp_path / "model").iterdir()]:
        text = f.read_text(errors="replace")
        assert not leaks(text, secrets) and str(OUTLIER) not in text, f.name
    rows = load_engine(str(tmp_path / "model")).sample(100_000, seed=0)
    assert not set(rows.column("city").to_pylist()) & secrets
    assert rows.column("salary").to_numpy().max() < OUTLIER and rows.column("age").to_numpy().max() < RARE_AGE


def test_default_family_fit_keeps_names_emails_and_rare_values_out_of_artifact_and_samples(tmp_path):
    from synth.config import RunConfig
    from synth.families import load_engine
    from synth.train.fit import fit

    table, secrets = people(2000)
    pq.write_table(table, tmp_path / "people.parquet")
    cfg = RunConfig.parse({"output": str(tmp_path / "run"), "data": {"uri": str(tmp_path / "people.parquet")},
                           "model": {"hidden": 32}, "evaluate": {"check": "warn"},
                           "train": {"steps": 20, "eval_every": 10, "batch_size": 256, "threads": 1}})
    uri = fit(cfg).artifact_uri
    check = load_engine(uri).manifest["fit_check"]  # scored on the modelled columns: ids are fresh, not compared
    assert check["rows"] > 0 and check["c2st_auc"] is not None
    for f in Path(uri).iterdir():
        if f.suffix == ".json":
            text = f.read_text()
            assert not leaks(text, secrets) and str(OUTLIER) not in text, f.name
    rows = load_engine(uri).sample(5000, seed=0)
    for col in ("name", "email", "city"):
        assert not set(rows.column(col).to_pylist()) & secrets, col
    assert rows.column("salary").to_numpy().max() < OUTLIER


def test_rare_categories_fold_into_rare_token_or_nearest_number_with_k_configurable():
    counts = {"a": 50, "b": 12, "c": 4, "d": 1}
    n = sum(counts.values())
    t = pa.table({"s": [v for v, c in counts.items() for _ in range(c)],
                  "i": [0] * 40 + [1] * 20 + [2] * 3 + [9] * 4})
    k10 = TableCodec.fit([t], CodecConfig(overrides={"i": "categorical"}))
    s = k10.by_name["s"]
    assert s.categories == ["a", "b", RARE] and s.probs[-1] == pytest.approx(5 / n)
    assert k10.by_name["i"].categories == [0, 1]  # 2 (3 rows) joins 1, 9 (4 rows) joins 1 too
    back = k10.decode(k10.encode(t))
    assert back.column("s").to_pylist().count(RARE) == 5 and set(back.column("i").to_pylist()) == {0, 1}
    k3 = TableCodec.fit([t], CodecConfig(rare_min_count=3))
    assert k3.by_name["s"].categories == ["a", "b", "c", RARE]
    with pytest.raises(ConfigError, match="'i' has no value seen at least 100 times") as e:
        TableCodec.fit([t], CodecConfig(overrides={"i": "categorical"}, rare_min_count=100))
    assert "9" not in str(e.value).split("times")[0][-20:]


def test_numeric_point_masses_seen_k_times_stay_exact_and_the_range_excludes_outliers():
    rng = np.random.default_rng(0)
    x = np.concatenate([np.zeros(3000), rng.integers(1, 500, 2000) * 10, [7777, 7778, 99_999]])
    codec = TableCodec.fit([pa.table({"gain": x.astype(np.int64)})])
    col = codec.by_name["gain"]
    values, counts = np.unique(x, return_counts=True)
    stored = set(col.knots_x[col.heavy].tolist())
    assert 0.0 in stored and all(counts[values == v][0] >= 10 for v in stored)
    assert col.max == np.sort(x)[-10] and 99_999 not in col.knots_x and 7777 not in col.knots_x
    out = codec.decode(rng.normal(size=(20_000, 1))).column("gain").to_numpy()
    assert 0.45 < (out == 0).mean() < 0.75 and out.max() <= col.max and out.min() >= 0
    np.testing.assert_allclose(np.quantile(out[out > 0], [0.25, 0.5, 0.75]),
                               np.quantile(x[x > 0], [0.25, 0.5, 0.75]), rtol=0.08)


@pytest.mark.parametrize("name,expected", [("customer_id", True), ("CustomerID", True), ("e-mail", True),
                                           ("first name", True), ("paid", False), ("valid", False),
                                           ("hours-per-week", False)])
def test_name_hints(name, expected):
    assert name_hint(name) is expected


def test_identifier_detection_by_share_name_and_pattern():
    rng = np.random.default_rng(0)
    n = 1000
    t = pa.table({
        "customer_id": np.arange(n) * 7 + 1000,  # integer, hinted name, unique: id
        "amount": np.arange(n) * 3,  # integer, unique, no hint: a number
        "product_name": rng.choice([f"p{i}" for i in range(30)], n),  # hinted name, 3 % distinct: categorical
        "contact": [f"c{i % 400}@x.org" for i in range(n)],  # e-mail pattern, 40 % distinct: id
        "ref": [f"{i:08d}" for i in range(n)],  # digits, unique: id of 8 digits
        "note": [f"free text {i}" for i in range(n)],  # unique text: id
    })
    stats = TableStats.empty(t.schema).add_batch(t)
    fmts = {c: identifier_format(stats.columns[c], 10) for c in t.column_names}
    assert fmts == {"customer_id": "integer", "amount": None, "product_name": None, "contact": "email",
                    "ref": "digits", "note": "text"}
    codec = TableCodec.fit([t])
    out = codec.decode(np.zeros((5, codec.width)), np.random.default_rng(0))
    assert out.schema == t.schema
    assert all(re.fullmatch(r"[0-9]{8}", r) for r in out.column("ref").to_pylist())
    assert all(str(v).startswith("note-") for v in out.column("note").to_pylist())
    assert all(10**14 <= v < 10**15 for v in out.column("customer_id").to_pylist())
    # an override pins the kind either way; protection off models everything as before
    pinned = TableCodec.fit([t], CodecConfig(overrides={"note": "categorical", "amount": "id"}, rare_min_count=1))
    assert pinned.kinds()["note"] == "categorical" and pinned.kinds()["amount"] == "id"
    assert "id" not in TableCodec.fit([t], CodecConfig(value_protection=False)).kinds().values()
