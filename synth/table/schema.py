"""A user-declared table schema (bounds, categories) and codecs built from it alone.

Differentially private runs must not read data-dependent statistics (quantiles, category lists,
bounds) that they are not allowed to. Here a codec is built from what the user declares, plus,
optionally, *measurements* made on a grid that the declaration fixes in advance (noisy
histogram counts from `synth.privacy.preprocess`). The bins, atoms and categories never depend
on the data; only the masses do, and those arrive already noised.

    declared = {"age": ColumnSchema(kind="integer", min=17, max=90),
                "sex": ColumnSchema(kind="categorical", categories=["Female", "Male"])}
    codec = codec_from_schema(arrow_schema, declared, CodecConfig(), num_rows=n)            # uniform
    codec = codec_from_schema(arrow_schema, declared, CodecConfig(), num_rows=n, masses=m)  # DP masses
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Union

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from synth.errors import ConfigError, DataError
from synth.table.columns import CategoricalColumn, NumericColumn
from synth.table.columns.numeric import HEAVY_SHARE
from synth.table.stats import type_family

Value = Union[bool, int, float, str, None]
SUBPOINTS = 8  # light support points per histogram bin (the CDF is linear inside a bin)


class ColumnSchema(BaseModel):
    """What the user declares about one column, from domain knowledge and not from the data."""
    model_config = ConfigDict(extra="forbid")

    kind: Literal["continuous", "integer", "categorical", "boolean"]
    min: float | None = Field(None, description="numeric: smallest possible value (values below are clipped)")
    max: float | None = Field(None, description="numeric: largest possible value (values above are clipped)")
    categories: list[Value] | None = Field(None, description="categorical: every possible value")
    nullable: bool = Field(False, description="the column may hold nulls (modelled as their own category/flag)")
    points: list[float] = Field(default_factory=list,
                                description="numeric: values that may carry a point mass (e.g. 0 for capital-gain)")
    bins: int | None = Field(None, ge=2, le=10_000, description="numeric: histogram bins (default privacy.bins)")
    scale: Literal["linear", "log"] = Field(
        "linear", description="numeric: bin spacing; log: equal widths in log(1 + x - min), for long-tailed "
                              "amounts (incomes, prices, balances) whose mass sits near the minimum")

    @model_validator(mode="after")
    def _check(self):
        if self.kind in ("continuous", "integer"):
            if self.min is None or self.max is None or not (math.isfinite(self.min) and math.isfinite(self.max)):
                raise ValueError(f"a {self.kind} column needs finite `min` and `max` bounds")
            if not self.min < self.max:
                raise ValueError(f"min ({self.min}) must be below max ({self.max})")
            if self.categories is not None:
                raise ValueError(f"a {self.kind} column takes bounds, not `categories`")
            bad = [p for p in self.points if not self.min <= p <= self.max]
            if bad:
                raise ValueError(f"points {bad} lie outside [{self.min}, {self.max}]")
        else:
            if self.kind == "boolean" and self.categories is None:
                self.categories = [False, True]
            if not self.categories:
                raise ValueError(f"a {self.kind} column needs a non-empty `categories` list")
            if len(set(map(repr, self.categories))) != len(self.categories):
                raise ValueError("`categories` has duplicates")
            if None in self.categories:
                raise ValueError("null is not a category: set `nullable: true` instead")
            if self.min is not None or self.max is not None or self.points or self.scale != "linear":
                raise ValueError(f"a {self.kind} column takes `categories`, not bounds, points or a scale")
        return self


# -- the measurement grid: fixed by the declaration, never by the data ------------------------
@dataclass(frozen=True)
class NumericGrid:
    """Atoms (exact values) and bins over [min, max], of equal width (or equal width in
    log(1 + x - min) for `scale: log`). Integer columns whose whole range fits in the bin budget
    get one atom per value instead (exact CDF by value)."""
    atoms: np.ndarray
    edges: np.ndarray  # bin b = (edges[b], edges[b + 1]]; values equal to an atom go to the atom

    @classmethod
    def of(cls, decl: ColumnSchema, default_bins: int) -> "NumericGrid":
        bins = decl.bins or default_bins
        lo, hi = float(decl.min), float(decl.max)
        if decl.kind == "integer":
            lo, hi = math.ceil(lo), math.floor(hi)
            if hi - lo + 1 <= bins:
                return cls(np.arange(lo, hi + 1, dtype=np.float64), np.zeros(0))
        if decl.scale == "log":
            edges = lo + np.expm1(np.linspace(0.0, math.log1p(hi - lo), bins + 1))
            edges[-1] = hi
        else:
            edges = np.linspace(lo, hi, bins + 1)
        return cls(np.unique(np.asarray(decl.points, dtype=np.float64)), edges)

    @property
    def cells(self) -> int:
        """Counts measured per column: atoms, bins and one for nulls."""
        return len(self.atoms) + max(0, len(self.edges) - 1) + 1

    def cell_of(self, x: np.ndarray, null: np.ndarray) -> np.ndarray:
        """Cell index of every value: atoms first, then bins (values clipped into range), then null."""
        lo, hi = (self.edges[0], self.edges[-1]) if len(self.edges) else (self.atoms[0], self.atoms[-1])
        x = np.clip(x, lo, hi)
        n_atoms, n_bins = len(self.atoms), max(0, len(self.edges) - 1)
        out = np.full(x.shape, n_atoms + n_bins, dtype=np.int64)
        if n_atoms:
            k = np.clip(np.searchsorted(self.atoms, x), 0, n_atoms - 1)
            hit = self.atoms[k] == x
            if not n_bins:  # an atom per integer value: round to the nearest one
                k = np.clip(np.searchsorted(self.atoms, np.rint(x)), 0, n_atoms - 1)
                hit = np.ones_like(hit)
        else:
            k, hit = np.zeros(x.shape, np.int64), np.zeros(x.shape, bool)
        if n_bins:
            b = np.clip(np.searchsorted(self.edges, x, side="left") - 1, 0, n_bins - 1)
            out = np.where(hit, k, n_atoms + b)
        else:
            out = k
        return np.where(null, n_atoms + n_bins, out)


def measurement_cells(decl: ColumnSchema, default_bins: int) -> int:
    if decl.kind in ("categorical", "boolean"):
        return len(decl.categories) + 1  # + null
    return NumericGrid.of(decl, default_bins).cells


def cell_index(arr: pa.Array | pa.ChunkedArray, decl: ColumnSchema, default_bins: int,
               name: str) -> tuple[np.ndarray, np.ndarray]:
    """The declared cell of every value (atoms, bins, categories; null last) and a mask of the
    values that are not declared categories (given the null cell). NaN is refused, naming the column."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    null = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if decl.kind in ("categorical", "boolean"):
        index = {repr(v): i for i, v in enumerate(decl.categories)}
        k = len(decl.categories)
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        enc = arr.dictionary_encode()
        dictionary = enc.dictionary.to_pylist()
        slot = np.asarray([index.get(repr(v), k) for v in dictionary] + [k], dtype=np.int64)
        codes = np.asarray(enc.indices.fill_null(len(dictionary)).to_numpy(zero_copy_only=False), dtype=np.int64)
        cells = slot[codes]
        return cells, (cells == k) & ~null
    grid = NumericGrid.of(decl, default_bins)
    x = arr.cast(pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False)
    if not np.isfinite(x).all():  # before: counted as 0, then encoded as the maximum
        raise DataError(f"column {name!r} holds NaN or infinite values; replace them with nulls (declare the "
                        "column nullable) or with finite numbers")
    return grid.cell_of(x, null), np.zeros(len(x), dtype=bool)


def cell_counts(arr: pa.Array | pa.ChunkedArray, decl: ColumnSchema, default_bins: int, name: str) -> np.ndarray:
    """Exact counts of one column's values in the declared cells (the only data access of the DP
    preprocessing; its output is noised before anything else sees it). Undeclared values are
    counted in the null cell of the measurement (never published apart)."""
    cells, _ = cell_index(arr, decl, default_bins, name)
    return np.bincount(cells, minlength=measurement_cells(decl, default_bins)).astype(np.float64)


# -- columns from a declaration (+ optional noisy masses) -------------------------------------
def numeric_column(name: str, decl: ColumnSchema, arrow_type: pa.DataType, default_bins: int,
                   masses: np.ndarray | None = None) -> NumericColumn:
    """Quantile-normal column whose CDF is piecewise linear over the declared grid: uniform over
    [min, max] without masses, else the (noised) histogram. Atoms with at least HEAVY_SHARE of the
    mass become point masses that decode exactly."""
    grid = NumericGrid.of(decl, default_bins)
    n_atoms, n_bins = len(grid.atoms), max(0, len(grid.edges) - 1)
    if masses is None:  # nothing measured: uniform over the range, atoms carry no mass
        atom_m = np.zeros(n_atoms) if n_bins else np.ones(n_atoms)
        bin_m = np.ones(n_bins)
    else:
        m = np.clip(np.asarray(masses, dtype=np.float64)[: n_atoms + n_bins], 0.0, None)
        atom_m, bin_m = m[:n_atoms], m[n_atoms:]
    total = atom_m.sum() + bin_m.sum()
    if total <= 0:  # all noise and no signal: fall back to uniform
        atom_m, bin_m = (np.zeros(n_atoms), np.ones(n_bins)) if n_bins else (np.ones(n_atoms), bin_m)
        total = atom_m.sum() + bin_m.sum()
    floor = 1e-6 * total  # every cell keeps a little mass so the map stays strictly increasing
    atom_m = np.where(atom_m > 0, atom_m, 0.0)
    bin_m = np.maximum(bin_m, floor)
    points: list[tuple[float, float, bool]] = []  # (value, mass, heavy)
    for v, w in zip(grid.atoms, atom_m):
        points.append((float(v), float(w), False))
    for b in range(n_bins):
        a, c = grid.edges[b], grid.edges[b + 1]
        h = (c - a) / SUBPOINTS
        for j in range(SUBPOINTS):
            points.append((float(a + (j + 0.5) * h), float(bin_m[b]) / SUBPOINTS, False))
    points.sort(key=lambda p: p[0])
    # merge light points that collide with an atom value
    xs, ws = [], []
    for v, w, _ in points:
        if xs and xs[-1] == v:
            ws[-1] += w
        else:
            xs.append(v)
            ws.append(w)
    xs_a, ws_a = np.asarray(xs), np.asarray(ws)
    keep = ws_a > 0
    xs_a, ws_a = xs_a[keep], ws_a[keep]
    share = ws_a / ws_a.sum()
    knots_f = np.concatenate([[0.0], np.cumsum(share)])
    knots_f[-1] = 1.0
    atom_set = set(float(a) for a in grid.atoms)
    heavy = np.asarray([float(v) in atom_set and s >= HEAVY_SHARE for v, s in zip(xs_a, share)], dtype=bool)
    lo = float(grid.edges[0]) if n_bins else float(grid.atoms[0])
    hi = float(grid.edges[-1]) if n_bins else float(grid.atoms[-1])
    return NumericColumn(name, decl.kind, str(arrow_type), decl.nullable, xs_a, knots_f, heavy, lo, hi,
                         1.0 if decl.kind == "integer" else 0.0, 0)


def categorical_column(name: str, decl: ColumnSchema, arrow_type: pa.DataType, max_onehot: int,
                       masses: np.ndarray | None = None) -> CategoricalColumn:
    """One-hot column over the declared categories (and null when nullable). Without masses every
    category is equally likely and the declared order is kept; with (noised) masses they are
    ordered by them, so only the rarest share the "other" slot past max_onehot."""
    values: list[Any] = list(decl.categories) + ([None] if decl.nullable else [])
    if masses is None:
        w = np.ones(len(values))
        order = list(range(len(values)))
    else:
        m = np.clip(np.asarray(masses, dtype=np.float64), 0.0, None)
        w = np.concatenate([m[: len(decl.categories)], m[len(decl.categories):][:1] if decl.nullable else []])
        w = np.maximum(w, 1e-6 * max(1.0, w.sum()))
        order = sorted(range(len(values)), key=lambda i: -w[i])  # stable: declared order breaks ties
    total = float(w.sum())
    head, tail = order, []
    if len(order) > max_onehot:
        head, tail = order[: max_onehot - 1], order[max_onehot - 1:]
    probs = [float(w[i]) / total for i in head]
    tail_total = float(sum(w[i] for i in tail))
    if tail:
        probs.append(tail_total / total)
    vtype = arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type
    return CategoricalColumn(name, decl.kind, str(arrow_type), decl.nullable, [values[i] for i in head], probs,
                             [values[i] for i in tail], [float(w[i]) / tail_total for i in tail], str(vtype))


def check_declared(schema: pa.Schema, declared: dict[str, ColumnSchema], ignore: list[str]) -> list[pa.Field]:
    """The modelled fields, after checking the declaration covers them and fits their Arrow types."""
    names = schema.names
    unknown = [c for c in declared if c not in names]
    if unknown:
        raise ConfigError(f"privacy.schema declares columns {unknown} that are not in the data; columns are {names}")
    fields = [f for f in schema if f.name not in ignore]
    missing = [f.name for f in fields if f.name not in declared]
    if missing:
        raise ConfigError(f"columns {missing} have no declared schema; a private run reads no statistics from the "
                          "data, so declare each under privacy.schema (kind and min/max, or categories) or list "
                          "it under data.codec.ignore")
    for f in fields:
        fam, kind = type_family(f.name, f.type), declared[f.name].kind
        if fam == "temporal":
            raise ConfigError(f"column {f.name!r} is a {f.type}; private runs do not model datetimes yet: cast it "
                              "to an integer (e.g. days since an epoch) or list it under data.codec.ignore")
        if kind in ("continuous", "integer") and fam != "numeric":
            raise ConfigError(f"column {f.name!r} holds {f.type} values and cannot be declared {kind}; "
                              "declare it categorical with its categories")
        if kind == "boolean" and fam != "bool":
            raise ConfigError(f"column {f.name!r} is {f.type}, not boolean; declare it categorical")
    return fields


def codec_columns(fields: list[pa.Field], declared: dict[str, ColumnSchema], max_onehot: int, default_bins: int,
                  masses: dict[str, np.ndarray] | None = None) -> list:
    out = []
    for f in fields:
        decl = declared[f.name]
        m = None if masses is None else masses[f.name]
        if decl.kind in ("categorical", "boolean"):
            out.append(categorical_column(f.name, decl, f.type, max_onehot, m))
        else:
            out.append(numeric_column(f.name, decl, f.type, default_bins, m))
    return out
