"""Hybrid blending: combine generated rows with rule-based or external rows of the same schema.

Row i of the output comes from row i of both sources (they must have the same rows and the same
columns with the same Arrow types). `weight` is the weight of source A (B gets 1 - weight):

- interpolate: numeric, timestamp and date columns are the weighted average `w * a + (1 - w) * b`
  (integers and times rounded to their type); every other column (strings, categories, booleans)
  is taken from A with probability w, per record, with one draw per record for all of them so a
  record's categories stay together. A value null in one source only is picked the same way.
- select: each whole record comes from A with probability w, else from B.
- ensemble: the chosen `columns` come from A, all others from B (weight does not apply).

For interpolate and select, `columns` restricts the blend to those columns; the rest come from A.
The same inputs, mode, weight and seed give the same bytes.
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
import pyarrow as pa

from synth.errors import ConfigError

Mode = Literal["interpolate", "select", "ensemble"]
MODES = ("interpolate", "select", "ensemble")


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def _is_temporal(t: pa.DataType) -> bool:
    return pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_duration(t)


def check_inputs(a: pa.Table, b: pa.Table, mode: str, weight: float | None, columns: list[str] | None,
                 names: tuple[str, str] = ("A", "B")) -> list[str]:
    """Validate a blend; returns the columns it acts on. Errors name the column, both types,
    the bad weight or the unknown column."""
    na, nb = names
    if mode not in MODES:
        raise ConfigError(f"unknown blend mode {mode!r}; choose one of {list(MODES)}")
    if mode != "ensemble":
        if weight is None or not isinstance(weight, (int, float)) or isinstance(weight, bool) \
                or not math.isfinite(weight) or not 0.0 <= weight <= 1.0:
            raise ConfigError(f"weight must be a number in [0, 1] (the share of {na}), got {weight!r}")
    only_a = [c for c in a.column_names if c not in b.column_names]
    only_b = [c for c in b.column_names if c not in a.column_names]
    if only_a or only_b:
        parts = [f"{only_a} only in {na}" if only_a else "", f"{only_b} only in {nb}" if only_b else ""]
        raise ConfigError("the sources have different columns: " + "; ".join(p for p in parts if p)
                          + ". Blending needs the same schema")
    for f in a.schema:
        tb = b.schema.field(f.name).type
        if f.type != tb:
            raise ConfigError(f"column {f.name!r} is {f.type} in {na} but {tb} in {nb}; cast one source so the "
                              "types match")
    if a.num_rows != b.num_rows:
        raise ConfigError(f"{na} has {a.num_rows} rows and {nb} has {b.num_rows}; blending pairs row i of each "
                          "source, so give both the same number of rows")
    if a.num_rows == 0:
        raise ConfigError("the sources have no rows")
    chosen = list(columns or [])
    unknown = [c for c in chosen if c not in a.column_names]
    if unknown:
        raise ConfigError(f"unknown column(s) {unknown} in columns; the columns are {a.column_names}")
    if len(set(chosen)) != len(chosen):
        raise ConfigError(f"columns lists a column twice: {chosen}")
    if mode == "ensemble":
        if not chosen:
            raise ConfigError("ensemble mode needs columns: the columns taken from A (the rest come from B)")
        if weight is not None:
            raise ConfigError("weight does not apply to ensemble mode (columns decide the source); leave it out")
        return chosen
    return chosen or list(a.column_names)


def _pick(a: pa.Array, b: pa.Array, from_a: np.ndarray) -> pa.Array:
    """Row i from a where from_a[i], else from b (any Arrow type)."""
    n = len(a)
    idx = np.where(from_a, np.arange(n), n + np.arange(n))
    return pa.concat_arrays([a, b]).take(pa.array(idx))


def _interpolate(a: pa.Array, b: pa.Array, w: float, from_a: np.ndarray) -> pa.Array:
    t = a.type
    if _is_temporal(t):
        storage = pa.int32() if pa.types.is_date32(t) else pa.int64()
        xa = a.cast(storage).fill_null(0).to_numpy(zero_copy_only=False).astype(np.float64)
        xb = b.cast(storage).fill_null(0).to_numpy(zero_copy_only=False).astype(np.float64)
    else:
        xa = a.cast(pa.float64()).fill_null(0).to_numpy(zero_copy_only=False)
        xb = b.cast(pa.float64()).fill_null(0).to_numpy(zero_copy_only=False)
    va = ~np.asarray(a.is_null().to_numpy(zero_copy_only=False))
    vb = ~np.asarray(b.is_null().to_numpy(zero_copy_only=False))
    both = va & vb
    out = np.where(both, w * xa + (1.0 - w) * xb, np.where(from_a, xa, xb))
    null = np.where(both, False, np.where(from_a, ~va, ~vb))  # one-sided nulls follow the per-record pick
    if _is_temporal(t):
        return pa.array(np.rint(out).astype(np.int64), pa.int64(), mask=null).cast(storage).cast(t)
    if pa.types.is_integer(t):
        info = np.iinfo(t.to_pandas_dtype())
        return pa.array(np.clip(np.rint(out), info.min, info.max).astype(np.int64), pa.int64(), mask=null).cast(t)
    return pa.array(out, pa.float64(), mask=null).cast(t)


def blend_tables(a: pa.Table, b: pa.Table, mode: Mode, weight: float | None = None,
                 columns: list[str] | None = None, seed: int = 0,
                 names: tuple[str, str] = ("A", "B")) -> pa.Table:
    """Blend two tables of one schema (see the module docstring); the result has A's schema."""
    chosen = check_inputs(a, b, mode, weight, columns, names)
    b = b.select(a.column_names)
    n = a.num_rows
    from_a = np.random.default_rng(seed).random(n) < (weight if weight is not None else 0.0)
    arrays = []
    for f in a.schema:
        ca, cb = a.column(f.name).combine_chunks(), b.column(f.name).combine_chunks()
        if mode == "ensemble":
            arrays.append(ca if f.name in chosen else cb)
        elif f.name not in chosen:
            arrays.append(ca)
        elif mode == "select":
            arrays.append(_pick(ca, cb, from_a))
        elif _is_numeric(f.type) or _is_temporal(f.type):
            arrays.append(_interpolate(ca, cb, float(weight), from_a))
        else:
            arrays.append(_pick(ca, cb, from_a))
    return pa.Table.from_arrays(arrays, schema=a.schema)


def blend_files(a_uri: str, b_uri: str, output: str, mode: Mode, weight: float | None = None,
                columns: list[str] | None = None, seed: int = 0) -> pa.Table:
    """Read two Parquet sources, blend them and write one Parquet file atomically (a temporary
    name moved into place: no reader sees a partial file, and nothing is written on error)."""
    import pyarrow.parquet as pq

    from synth.io import storage
    from synth.io.data import open_dataset

    a = open_dataset(a_uri).to_table()
    b = open_dataset(b_uri).to_table()
    out = blend_tables(a.replace_schema_metadata(None), b.replace_schema_metadata(None), mode, weight, columns,
                       seed, names=(a_uri, b_uri))
    out = out.replace_schema_metadata({"synth.pipelines.blend": f"mode={mode} weight={weight} seed={seed} "
                                                      f"columns={','.join(columns or [])}"})
    sink = pa.BufferOutputStream()
    pq.write_table(out, sink, compression="zstd")
    storage.write_bytes(output, sink.getvalue().to_pybytes())
    return out


__all__ = ["MODES", "blend_files", "blend_tables", "check_inputs"]
