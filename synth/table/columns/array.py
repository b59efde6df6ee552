"""Fixed-shape array columns (small images, sensor windows): one block of features per column.

Recognised Arrow types (numeric elements only):
- `fixed_size_list<T>[n]`, nested for more dimensions: `fixed_size_list<fixed_size_list<T>[w]>[h]`;
- Arrow's canonical `fixed_shape_tensor` extension type (row-major, no permutation);
- variable `list` / `large_list` (nested) whose rows all have the same lengths, which is what
  pandas and most writers produce from numpy arrays; rows of different lengths are refused.

Values are mapped affinely from the column's [min, max] to [-1, 1] (the usual image range for
diffusion), flattened in row-major order, so the block is `prod(shape)` features wide. Decoding
inverts the map, clips into [min, max], rounds when every reference value was integral, and
rebuilds the exact Arrow type (nesting, field names, extension type). Null arrays, null
elements and NaN/inf values are refused by name: there is no missing-value model for arrays.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from synth.errors import DataError

ARRAY_HINT = ("array columns need a fixed shape: every row a list of the same length (nested lists for more "
              "dimensions), a fixed_size_list or a fixed_shape_tensor of numbers")


def is_array_type(t: pa.DataType) -> bool:
    if isinstance(t, pa.FixedShapeTensorType):
        return True
    return pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t)


def _levels(name: str, t: pa.DataType) -> tuple[list[pa.DataType], pa.DataType]:
    """The list types from the outside in, and the element type."""
    if isinstance(t, pa.FixedShapeTensorType):
        if t.permutation is not None and list(t.permutation) != list(range(len(t.shape))):
            raise DataError(f"column {name!r} is a fixed_shape_tensor with permutation {t.permutation}; "
                            "store it row-major (no permutation)")
        return [t], t.value_type
    levels = []
    while pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
        levels.append(t)
        t = t.value_type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
        raise DataError(f"column {name!r} holds lists of {t}; {ARRAY_HINT}")
    return levels, t


def flatten(name: str, arr: pa.Array, shape: list[int] | None = None) -> tuple[np.ndarray, list[int]]:
    """(rows, prod(shape)) float64 values of an array column and its shape; errors name the column."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.null_count:
        raise DataError(f"column {name!r} has {arr.null_count} null arrays; array columns cannot be null: "
                        "drop those rows or fill them")
    t = arr.type
    levels, _ = _levels(name, t)
    n = len(arr)
    if isinstance(t, pa.FixedShapeTensorType):
        found = [int(d) for d in t.shape]
        values = arr.storage.flatten()
    else:
        found, values = [], arr
        for lt in levels:
            if values.null_count:
                raise DataError(f"column {name!r} has null sub-lists; {ARRAY_HINT}")
            if pa.types.is_fixed_size_list(lt):
                size = lt.list_size
            else:
                lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False)
                if lengths.size and lengths.min() != lengths.max():
                    depth = f" at depth {len(found) + 1}" if found else ""
                    raise DataError(f"column {name!r} has ragged lists{depth}: lengths from {int(lengths.min())} "
                                    f"to {int(lengths.max())}; {ARRAY_HINT}")
                size = int(lengths[0]) if lengths.size else (shape[len(found)] if shape else 0)
            found.append(int(size))
            values = values.flatten()
    if shape is not None and list(shape) != found and n:
        raise DataError(f"column {name!r} has arrays of shape {tuple(found)}, expected {tuple(shape)}; "
                        "every row and every file must have the same shape")
    if values.null_count:
        raise DataError(f"column {name!r} has {values.null_count} null elements inside its arrays; fill them")
    flat = values.to_numpy(zero_copy_only=False).astype(np.float64)
    width = int(np.prod(found)) if found else 0
    if flat.size != n * width:
        raise DataError(f"column {name!r}: {flat.size} values for {n} arrays of shape {tuple(found)}; {ARRAY_HINT}")
    return flat.reshape(n, width), found


def add_stats(stats, arr: pa.Array) -> None:
    """Fold a batch of an array column into its `ColumnStats` (count, nulls, shape, min, max, integral)."""
    stats.count += len(arr)
    if len(arr) == 0:
        return
    x, shape = flatten(stats.name, arr, stats.shape)
    stats.shape = shape
    finite = np.isfinite(x)
    if not finite.all():
        stats.nonfinite += int((~finite).sum())
        x = x[finite]
    if x.size:
        stats.min = min(stats.min, float(x.min()))
        stats.max = max(stats.max, float(x.max()))
        if stats.integral:
            stats.integral = bool(np.all(np.floor(x) == x))


def merge_shape(name: str, a: list[int] | None, b: list[int] | None) -> list[int] | None:
    if a is not None and b is not None and list(a) != list(b):
        raise DataError(f"column {name!r} has arrays of shape {tuple(a)} in some files and {tuple(b)} in others; "
                        "every row must have the same shape")
    return a if a is not None else b


@dataclass
class ArrayColumn:
    name: str
    arrow_type: str  # the exact Arrow type, as a one-field IPC schema (base64)
    shape: list[int]
    min: float
    max: float
    integral: bool
    kind: str = "array"
    nullable: bool = False

    @classmethod
    def fit(cls, stats, arrow_type: pa.DataType) -> "ArrayColumn":
        from synth.table.arrow_types import schema_to_b64

        if stats.shape is None or not stats.shape or min(stats.shape) < 1:
            raise DataError(f"column {stats.name!r} has empty arrays (shape {stats.shape}); {ARRAY_HINT}")
        _levels(stats.name, arrow_type)
        return cls(stats.name, schema_to_b64(pa.schema([pa.field(stats.name, arrow_type, nullable=False)])),
                   [int(d) for d in stats.shape], float(stats.min), float(stats.max), bool(stats.integral))

    @property
    def type(self) -> pa.DataType:
        if not hasattr(self, "_type"):
            from synth.table.arrow_types import schema_from_b64

            self._type = schema_from_b64(self.arrow_type).field(0).type
        return self._type

    @property
    def width(self) -> int:
        return int(np.prod(self.shape))

    def bounds(self) -> tuple[list[float], list[float]]:
        return [-1.0] * self.width, [1.0] * self.width

    def _span(self) -> float:
        return self.max - self.min if self.max > self.min else 1.0

    def encode(self, arr: pa.Array, rng: np.random.Generator | None = None, strict: bool = True) -> np.ndarray:
        x, _ = flatten(self.name, arr, self.shape)
        bad = ~np.isfinite(x)
        if bad.any():
            raise DataError(f"column {self.name!r} has {int(bad.sum())} NaN or infinite values inside its arrays; "
                            "replace them with finite numbers")
        return (x - self.min) / self._span() * 2.0 - 1.0

    def to_values(self, feats: np.ndarray) -> np.ndarray:
        """Features (n, width) -> values (n, *shape) in the column's range (float64, rounded if integral)."""
        x = self.min + (np.asarray(feats, dtype=np.float64) + 1.0) / 2.0 * self._span()
        x = np.clip(x, self.min, self.max)
        if self.integral:
            x = np.round(x)
        return x.reshape(-1, *self.shape)

    def decode(self, feats: np.ndarray, rng: np.random.Generator | None = None) -> pa.Array:
        x = self.to_values(feats)
        return self.to_arrow(x)

    def to_arrow(self, x: np.ndarray) -> pa.Array:
        """Values (n, *shape) -> an Arrow array of the column's exact type."""
        t = self.type
        n = x.shape[0]
        levels, elem = _levels(self.name, t)
        values = pa.array(x.reshape(-1).astype(elem.to_pandas_dtype()), type=elem)
        if isinstance(t, pa.FixedShapeTensorType):
            storage = pa.FixedSizeListArray.from_arrays(values, type=t.storage_type)
            return pa.ExtensionArray.from_storage(t, storage)
        counts = [n * int(np.prod(self.shape[:i])) for i in range(len(levels))]
        for lt, size, count in zip(reversed(levels), reversed(self.shape), reversed(counts)):
            if pa.types.is_fixed_size_list(lt):
                values = pa.FixedSizeListArray.from_arrays(values, type=lt)
            else:
                dtype = np.int64 if pa.types.is_large_list(lt) else np.int32
                offsets = pa.array(np.arange(count + 1, dtype=dtype) * size)
                cls = pa.LargeListArray if pa.types.is_large_list(lt) else pa.ListArray
                values = cls.from_arrays(offsets, values, type=lt)
        return values

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "array", "arrow_type": self.arrow_type, "shape": list(self.shape),
                "min": self.min, "max": self.max, "integral": self.integral}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ArrayColumn":
        return cls(d["name"], d["arrow_type"], list(d["shape"]), float(d["min"]), float(d["max"]), bool(d["integral"]))
