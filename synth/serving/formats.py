"""Response bodies: JSON records, an Arrow IPC stream, or Parquet bytes."""
from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import math
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def _json_default(v: Any) -> Any:
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, dt.timedelta):
        return v.total_seconds()
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, bytes):
        return base64.b64encode(v).decode()
    return str(v)


def _finite(records: list[dict], float_cols: list[str]) -> list[dict]:
    for r in records:
        for c in float_cols:
            v = r.get(c)
            if isinstance(v, float) and not math.isfinite(v):
                r[c] = None
    return records


def to_json(table: pa.Table, meta: dict[str, Any]) -> bytes:
    records = table.to_pylist()
    float_cols = [f.name for f in table.schema if pa.types.is_floating(f.type)]
    if float_cols:
        records = _finite(records, float_cols)
    return json.dumps({"records": records, **meta}, default=_json_default, allow_nan=False,
                      separators=(",", ":")).encode()


def to_arrow(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def to_parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def encode(table: pa.Table, fmt: str, meta: dict[str, Any]) -> bytes:
    if fmt == "arrow":
        return to_arrow(table)
    if fmt == "parquet":
        return to_parquet(table)
    return to_json(table, meta)
