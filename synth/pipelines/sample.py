"""`synth sample`: rows from an artifact into one Parquet file that records how they were made,
and `replay_sample`, which makes them again from that record and checks them.

The record (schema metadata under `synth.generation`, read by `synth evaluate` too) holds every
setting that affects the rows (artifact URI and id, rows, conditions, sampler, steps, guidance,
seed, the precision used), the library versions, and `content_sha256`: a digest of the rows
themselves (the Arrow IPC stream of the table without its metadata), so a replay is checked
value for value, independent of Parquet encoder details.
"""
from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from synth.errors import ConfigError
from synth.evaluate.contract import GENERATION_KEY, generation_metadata
from synth.io import storage


def table_digest(table: pa.Table) -> str:
    """sha256 of the table's schema and values (its metadata left out)."""
    sink = pa.BufferOutputStream()
    plain = table.replace_schema_metadata(None)
    with pa.ipc.new_stream(sink, plain.schema) as writer:
        writer.write_table(plain)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def write_parquet(table: pa.Table, uri: str) -> None:
    """One Parquet file, written whole (storage.write_bytes: temporary name, then rename)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    storage.write_bytes(uri, sink.getvalue().to_pybytes())


def rebalanced(engine, column: str, shares: dict, rows: int, seed: int) -> list:
    """One value of the categorical `column` per row such that the requested values have their
    `shares` of the rows (largest remainders; shares in [0, 1], summing to at most 1) and the other
    categories split the rest in their reference proportions; the rows' order is a seeded shuffle.
    The rows are then drawn conditioned on these values (the conditioning machinery, not a filter)."""
    from synth.table.columns import NumericColumn

    if isinstance(engine.codec.by_name.get(column), NumericColumn):
        raise ConfigError(f"rebalance {column!r}: the column is {engine.codec.by_name[column].kind}; rebalancing takes "
                          "a categorical or boolean column (a numeric one can be conditioned on a range)")
    if column not in engine.cond_columns:
        engine.refuse_condition(column)
    col = engine.codec.categorical(column)
    col.codes(list(shares))  # unknown values are named with the known ones
    bad = {v: s for v, s in shares.items() if not (isinstance(s, (int, float)) and 0.0 <= s <= 1.0)}
    if bad:
        raise ConfigError(f"rebalance {column!r}: shares must be numbers in [0, 1], got {list(bad.values())[:5]}")
    total = float(sum(shares.values()))
    if total > 1.0 + 1e-9:
        raise ConfigError(f"rebalance {column!r}: the shares sum to {total:g}, over 1; lower them")
    values = list(col.categories) + list(col.tail_values)
    tail = [col.probs[-1] * p for p in col.tail_probs] if col.tail_values else []  # the "other" slot's values
    probs = np.asarray(list(col.probs[:len(col.categories)]) + tail, dtype=np.float64)
    rest = np.asarray([v not in shares for v in values])
    if total < 1.0 - 1e-9 and probs[rest].sum() <= 0:
        raise ConfigError(f"rebalance {column!r}: the shares sum to {total:g} but the column has no other value to "
                          "fill the rest; make them sum to 1")
    target = np.where(rest, (1.0 - total) * probs / max(probs[rest].sum(), 1e-300), 0.0)
    for v, share in shares.items():
        target[values.index(v)] = share
    exact = target * rows
    counts = np.floor(exact).astype(np.int64)
    counts[np.argsort(-(exact - counts), kind="stable")[:rows - counts.sum()]] += 1
    out = np.repeat(np.arange(len(values)), counts)
    out = out[np.random.default_rng([seed, 0x5EBA1]).permutation(len(out))]
    return [values[i] for i in out]


def sample_to_file(engine, artifact: str, rows: int, output: str | None, conditions: dict, *,
                   sampler: str | None, steps: int | None, guidance: float | None, seed: int,
                   rebalance: dict | None = None) -> tuple[pa.Table, float]:
    """Sample `rows` rows, record how, write them to `output` (None: do not write). Returns the
    table and the sampling seconds. `rebalance` {column: {value: share}} draws that column's values
    in the given shares (`rebalanced`)."""
    from synth.io.manifest import library_versions

    if rows < 1:
        raise ConfigError(f"--rows must be a positive integer, got {rows}")
    drawn = dict(conditions)
    for column, shares in (rebalance or {}).items():
        if column in drawn:
            raise ConfigError(f"{column!r} is both a condition and rebalanced; give one of them")
        drawn[column] = rebalanced(engine, column, shares, rows, seed)
    t0 = time.perf_counter()
    table = engine.sample(rows, drawn, sampler=sampler, steps=steps, guidance=guidance, seed=seed)
    seconds = time.perf_counter() - t0
    meta = generation_metadata(engine, sampler, steps, guidance, seed, conditioned=bool(drawn))
    record = json.loads(meta[GENERATION_KEY])
    record.update(kind="sample", artifact_uri=artifact, rows=rows, conditions=conditions,
                  enforced=engine.enforcement(drawn),
                  **({"rebalance": {c: [[v, s] for v, s in sh.items()] for c, sh in rebalance.items()}}
                     if rebalance else {}),
                  requested={"sampler": sampler, "steps": steps, "guidance": guidance},
                  precision="fp32",  # sampling never autocasts (training's mixed precision stays in training)
                  versions=library_versions(), content_sha256=table_digest(table))
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           GENERATION_KEY: json.dumps(record).encode()})
    if output is not None:
        write_parquet(table, output)
    return table, seconds


def impute_file(engine, data: str, output: str, seed: int = 0) -> tuple[pa.Table, int]:
    """`synth impute`: the rows of the Parquet file `data` with their null cells filled by the model
    (known cells unchanged), written to `output`. Returns the table and the number of cells filled."""
    from synth.io.data import iter_batches

    if not storage.exists(data):
        raise ConfigError(f"no file at {data!r}; give the Parquet file whose null cells to fill")
    batches = list(iter_batches(data))
    if not batches:
        raise ConfigError(f"{data} has no rows to impute")
    table = pa.Table.from_batches(batches)
    modelled = [c.name for c in engine.codec.columns if c.name in table.schema.names]
    cells = sum(table.column(c).null_count for c in modelled)
    filled = engine.impute(table, seed)
    write_parquet(filled, output)
    return filled, cells


def read_record(uri: str) -> tuple[dict, pa.Table]:
    """The `synth sample` record of a Parquet file and its rows, or a clear error."""
    if not storage.exists(uri):
        raise ConfigError(f"no file at {uri!r}; give a Parquet file written by `synth sample`")
    try:
        table = pq.read_table(pa.BufferReader(storage.read_bytes(uri)))
    except (pa.ArrowInvalid, OSError) as e:
        raise ConfigError(f"{uri} is not a Parquet file ({e})") from None
    try:
        record = json.loads((table.schema.metadata or {})[GENERATION_KEY])
    except (KeyError, ValueError):
        record = None
    if not isinstance(record, dict) or record.get("kind") != "sample":
        raise ConfigError(f"{uri} carries no `synth sample` record (schema metadata {GENERATION_KEY.decode()!r}); "
                          "`synth replay` re-runs files written by `synth sample` and folders written by "
                          "`synth synthesize`")
    return record, table


def replay_sample(uri: str, output: str | None = None) -> dict:
    """Sample again with the settings recorded in `uri`; the rows match when the replayed rows, the
    recorded digest and the rows in the file all agree. Returns
    {"rows", "matched": bool, "versions_differ": {lib: [recorded, now]}}."""
    from synth.families import load_engine
    from synth.io.manifest import library_versions

    r, in_file = read_record(uri)
    engine = load_engine(r["artifact_uri"])
    if engine.manifest.get("artifact_id") != r["artifact_id"]:
        raise ConfigError(f"the artifact at {r['artifact_uri']!r} is {engine.manifest.get('artifact_id')}, the rows "
                          f"were sampled from {r['artifact_id']}; the artifact they came from is needed to replay them")
    asked = r["requested"]
    rebalance = {c: {v: s for v, s in pairs} for c, pairs in r.get("rebalance", {}).items()}
    table, _ = sample_to_file(engine, r["artifact_uri"], r["rows"], output, r["conditions"], sampler=asked["sampler"],
                              steps=asked["steps"], guidance=asked["guidance"], seed=r["seed"], rebalance=rebalance)
    versions = library_versions()
    differ = {k: [v, versions.get(k)] for k, v in r.get("versions", {}).items() if versions.get(k) != v}
    return {"rows": r["rows"], "matched": table_digest(table) == r["content_sha256"] == table_digest(in_file),
            "versions_differ": differ}
