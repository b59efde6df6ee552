"""Streaming, mergeable column statistics.

One pass over Arrow record batches (or many passes in parallel, merged afterwards) gives
everything the codec needs: counts, nulls, bounds, a quantile sketch for numerics and value
counts for categoricals. Memory is bounded by the sketch capacity and the number of distinct
categories, never by the number of rows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from synth.errors import DataError

SKETCH_CAPACITY = 4096
COUNT_CAPACITY = 200_000  # distinct categories tracked per column


@dataclass
class QuantileSketch:
    """Weighted sorted support points; exact until more than `capacity` distinct values.

    Compression merges neighbouring light points into their weighted mean but never moves a
    heavy point (a point mass such as capital-gain = 0 stays exactly where it is).
    """

    values: np.ndarray = field(default_factory=lambda: np.zeros(0))
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0))
    exact: bool = True
    capacity: int = SKETCH_CAPACITY

    def add(self, x: np.ndarray) -> None:
        if x.size == 0:
            return
        v, c = np.unique(x.astype(np.float64), return_counts=True)
        self._absorb(v, c.astype(np.float64))

    def merge(self, other: "QuantileSketch") -> None:
        self.exact = self.exact and other.exact
        if other.values.size:
            self._absorb(other.values, other.weights)

    def _absorb(self, v: np.ndarray, w: np.ndarray) -> None:
        allv = np.concatenate([self.values, v])
        allw = np.concatenate([self.weights, w])
        uv, inv = np.unique(allv, return_inverse=True)
        self.values, self.weights = uv, np.bincount(inv, weights=allw)
        if self.values.size > self.capacity:
            self._compress()

    def _compress(self) -> None:
        total = self.weights.sum()
        width = total / (self.capacity // 2)
        heavy = self.weights >= width
        before = np.cumsum(self.weights) - self.weights
        bins = np.floor(before / width)
        boundary = np.ones(self.values.size, dtype=bool)
        boundary[1:] = (bins[1:] != bins[:-1]) | heavy[1:] | heavy[:-1]
        group = np.cumsum(boundary) - 1
        w = np.bincount(group, weights=self.weights)
        v = np.bincount(group, weights=self.values * self.weights) / w
        self.values, self.weights, self.exact = v, w, False

    def to_dict(self) -> dict[str, Any]:
        return {"values": self.values.tolist(), "weights": self.weights.tolist(), "exact": self.exact}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QuantileSketch":
        return cls(np.asarray(d["values"], dtype=np.float64), np.asarray(d["weights"], dtype=np.float64),
                   bool(d["exact"]))


def _resolution_of(ints: np.ndarray, unit_ns: int) -> int:
    """Largest of (day, h, min, s, ms, us, ns), in the column's unit, dividing every value."""
    for step_ns in (86_400 * 10**9, 3600 * 10**9, 60 * 10**9, 10**9, 10**6, 10**3, 1):
        if step_ns < unit_ns:
            continue
        step = step_ns // unit_ns
        if ints.size == 0 or not np.any(ints % step):
            return step
    return 1


@dataclass
class ColumnStats:
    """Statistics of one column, by Arrow type family: 'numeric', 'temporal', 'string', 'bool'."""

    name: str
    family: str
    count: int = 0
    nulls: int = 0
    nonfinite: int = 0
    min: float = math.inf
    max: float = -math.inf
    integral: bool = True
    resolution: int = 0  # temporal: step in the column's unit; 0 = no value seen yet
    imin: int | None = None  # temporal: exact minimum in the column's unit
    sketch: QuantileSketch | None = None
    counts: dict[Any, int] | None = None
    counts_overflow: bool = False
    shape: list[int] | None = None  # array: the fixed shape of every row
    inexact: int | None = None  # an integer value float64 cannot hold exactly (beyond +-2**53), if any

    def add(self, arr: pa.Array) -> None:
        if self.family == "array":
            from synth.table.columns.array import add_stats

            return add_stats(self, arr)
        self.count += len(arr)
        self.nulls += arr.null_count
        valid = arr.drop_null() if arr.null_count else arr
        if self.family in ("string", "bool"):
            self._count_values(valid)
            return
        if self.family == "temporal":
            unit_ns = _unit_ns(arr.type)
            ints = temporal_ints(valid)
            res = _resolution_of(ints, unit_ns)
            self.resolution = res if self.resolution == 0 else math.gcd(self.resolution, res)
            if ints.size:
                m = int(ints.min())
                self.imin = m if self.imin is None else min(self.imin, m)
            x = ints.astype(np.float64) * (unit_ns / 1e9)  # seconds since epoch
        else:
            if pa.types.is_integer(arr.type) and len(valid) and self.inexact is None:
                # statistics are float64: beyond 2**53 distinct integers collapse into one value
                lo, hi = (v.as_py() for v in pc.min_max(valid).values())
                if hi > EXACT_INT or lo < -EXACT_INT:
                    self.inexact = hi if hi > EXACT_INT else lo
            x = valid.to_numpy(zero_copy_only=False).astype(np.float64)
            finite = np.isfinite(x)
            if not finite.all():
                self.nonfinite += int((~finite).sum())
                x = x[finite]
            if x.size and self.integral:
                self.integral = bool(np.all(np.floor(x) == x))
        if x.size:
            self.min = min(self.min, float(x.min()))
            self.max = max(self.max, float(x.max()))
        if self.sketch is None:
            self.sketch = QuantileSketch()
        self.sketch.add(x)

    def _count_values(self, valid: pa.Array) -> None:
        if self.counts is None:
            self.counts = {}
        if pa.types.is_dictionary(valid.type):
            valid = valid.dictionary_decode()
        vc = pc.value_counts(valid)
        for v, c in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()):
            self.counts[v] = self.counts.get(v, 0) + c
        if len(self.counts) > COUNT_CAPACITY:
            self.counts_overflow = True

    def merge(self, o: "ColumnStats") -> None:
        self.count += o.count
        self.nulls += o.nulls
        self.nonfinite += o.nonfinite
        self.min, self.max = min(self.min, o.min), max(self.max, o.max)
        self.integral = self.integral and o.integral
        if o.imin is not None:
            self.imin = o.imin if self.imin is None else min(self.imin, o.imin)
        if o.resolution:
            self.resolution = o.resolution if not self.resolution else math.gcd(self.resolution, o.resolution)
        if o.sketch is not None:
            if self.sketch is None:
                self.sketch = QuantileSketch()
            self.sketch.merge(o.sketch)
        if o.counts is not None:
            if self.counts is None:
                self.counts = {}
            for v, c in o.counts.items():
                self.counts[v] = self.counts.get(v, 0) + c
        self.counts_overflow = self.counts_overflow or o.counts_overflow
        if self.inexact is None:
            self.inexact = o.inexact
        if self.family == "array":
            from synth.table.columns.array import merge_shape

            self.shape = merge_shape(self.name, self.shape, o.shape)

    @property
    def distinct_exact(self) -> int | None:
        """Exact number of distinct non-null values when known."""
        if self.counts is not None:
            return None if self.counts_overflow else len(self.counts)
        if self.sketch is not None and self.sketch.exact:
            return int(self.sketch.values.size)
        return None if self.sketch is not None else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "family": self.family, "count": self.count, "nulls": self.nulls,
            "nonfinite": self.nonfinite, "min": self.min, "max": self.max, "integral": self.integral,
            "resolution": self.resolution, "imin": self.imin,
            "sketch": None if self.sketch is None else self.sketch.to_dict(),
            "counts": None if self.counts is None else [[k, v] for k, v in self.counts.items()],
            "counts_overflow": self.counts_overflow, "shape": self.shape, "inexact": self.inexact,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ColumnStats":
        s = cls(d["name"], d["family"], d["count"], d["nulls"], d["nonfinite"], d["min"], d["max"],
                d["integral"], d["resolution"], d["imin"], None, None, d["counts_overflow"])
        if d["sketch"] is not None:
            s.sketch = QuantileSketch.from_dict(d["sketch"])
        if d["counts"] is not None:
            s.counts = {k: v for k, v in d["counts"]}
        s.shape = d.get("shape")
        s.inexact = d.get("inexact")
        return s


def temporal_ints(arr: pa.Array) -> np.ndarray:
    """Timestamps/dates as int64 counts of the type's own unit (nulls as 0)."""
    storage = pa.int32() if pa.types.is_date32(arr.type) else pa.int64()
    return arr.cast(storage).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)


def ints_to_temporal(ints: np.ndarray, mask: np.ndarray | None, t: pa.DataType) -> pa.Array:
    storage = pa.int32() if pa.types.is_date32(t) else pa.int64()
    return pa.array(ints.astype(np.int64), pa.int64(), mask=mask).cast(storage).cast(t)


def _unit_ns(t: pa.DataType) -> int:
    if pa.types.is_date32(t):
        return 86_400 * 10**9
    if pa.types.is_date64(t):
        return 10**6
    return {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}[t.unit]


EXACT_INT = 2**53  # the largest integer range float64 holds exactly


def check_unique_names(names: list[str], where: str = "the reference table") -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise DataError(f"{where} has more than one column named {n!r}; rename the duplicates so every "
                            "column name is unique")
        seen.add(n)


def type_family(name: str, t: pa.DataType) -> str:
    from synth.table.columns.array import is_array_type

    if is_array_type(t):
        return "array"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return "numeric"
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return "temporal"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or (
        pa.types.is_dictionary(t) and (pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type))
    ):
        return "string"
    raise DataError(
        f"column {name!r} has Arrow type {t}, which synth cannot model yet "
        "(supported: integers, floats, booleans, strings, dictionaries of strings, timestamps, dates, "
        "fixed-shape arrays of numbers); "
        "drop the column or cast it before fitting."
    )


@dataclass
class TableStats:
    """Statistics of a whole table, built batch by batch and mergeable across workers."""

    schema: pa.Schema
    columns: dict[str, ColumnStats]

    @classmethod
    def empty(cls, schema: pa.Schema) -> "TableStats":
        check_unique_names(schema.names)
        return cls(schema, {f.name: ColumnStats(f.name, type_family(f.name, f.type)) for f in schema})

    @property
    def num_rows(self) -> int:
        return next(iter(self.columns.values())).count if self.columns else 0

    def add_batch(self, batch: pa.RecordBatch | pa.Table) -> "TableStats":
        for name, col in self.columns.items():
            arr = batch.column(name)
            if isinstance(arr, pa.ChunkedArray):
                for chunk in arr.chunks:
                    col.add(chunk)
                if arr.num_chunks == 0:
                    continue
            else:
                col.add(arr)
        return self

    def merge(self, other: "TableStats") -> "TableStats":
        for name, col in self.columns.items():
            col.merge(other.columns[name])
        return self

    def to_dict(self) -> dict[str, Any]:
        from synth.table.arrow_types import schema_to_b64

        return {"schema": schema_to_b64(self.schema), "columns": [c.to_dict() for c in self.columns.values()]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TableStats":
        from synth.table.arrow_types import schema_from_b64

        return cls(schema_from_b64(d["schema"]), {c["name"]: ColumnStats.from_dict(c) for c in d["columns"]})
