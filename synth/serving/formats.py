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


def to_png(table: pa.Table, column: str, lo: float, hi: float) -> bytes:
    """The rows' images of `column` side by side (grey scale or RGB), scaled from [lo, hi] to 0..255."""
    import io

    import numpy as np
    from PIL import Image

    from synth.table.columns.array import flatten

    x, shape = flatten(column, table.column(column))
    imgs = x.reshape(-1, *shape)
    if imgs.ndim == 4:  # (n, C, H, W): grey (C=1) or RGB (C=3)
        imgs = imgs[:, 0] if imgs.shape[1] == 1 else imgs.transpose(0, 2, 3, 1)
    scaled = np.clip((imgs - lo) / ((hi - lo) or 1.0) * 255.0, 0, 255).round().astype(np.uint8)
    strip = np.concatenate(list(scaled), axis=1)
    buf = io.BytesIO()
    Image.fromarray(strip).save(buf, format="PNG")
    return buf.getvalue()


def encode(table: pa.Table, fmt: str, meta: dict[str, Any], image: tuple[str, float, float] | None = None) -> bytes:
    if fmt == "png":
        return to_png(table, *image)
    if fmt == "arrow":
        return to_arrow(table)
    if fmt == "parquet":
        return to_parquet(table)
    return to_json(table, meta)
