"""The table codec: column kinds inferred from Arrow schema + statistics, rows <-> float features.

    stats = TableStats.empty(schema); stats.add_batch(b) ...   (or merged from many workers)
    codec = TableCodec.from_stats(stats, CodecConfig(overrides={"zip": "categorical"}))
    x = codec.encode(table)          # (n, codec.width) float64
    table2 = codec.decode(x)         # same values, same Arrow schema

The state is plain JSON (`to_dict`/`from_dict`), stored in the model artifact.
"""
from __future__ import annotations

from typing import Any, Iterable, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from synth.errors import ConfigError, DataError
from synth.table.arrow_types import schema_from_b64, schema_to_b64
from synth.table.columns import KINDS, ArrayColumn, CategoricalColumn, IdColumn, NumericColumn, column_from_dict
from synth.table.protection import identifier_format, value_format
from synth.table.stats import ColumnStats, TableStats

Kind = Literal["continuous", "integer", "datetime", "categorical", "boolean", "id"]


class CodecConfig(BaseModel):
    """How columns are modelled. Defaults are inferred; `overrides` pins a column's kind."""
    model_config = ConfigDict(extra="forbid")

    overrides: dict[str, Kind] = Field(default_factory=dict)
    ignore: list[str] = Field(default_factory=list, description="columns left out of the model")
    max_onehot: int = Field(100, ge=2, description="one-hot slots per categorical; rarer values share one")
    low_cardinality_int: int = Field(10, ge=0, description="integer columns with at most this many values are categorical")
    value_protection: bool = Field(True, description="store no value seen fewer than rare_min_count times: identifiers "
                                                     "come out fresh, rare categories as _RARE_, numerics as smoothed "
                                                     "quantiles without their extremes (docs/protection.md)")
    rare_min_count: int = Field(10, ge=1, description="k: values seen fewer times are never stored (value_protection)")

    @property
    def min_count(self) -> int | None:
        """k when value protection is on, else None (the codec stores every value exactly)."""
        return self.rare_min_count if self.value_protection else None


def infer_kind(stats: ColumnStats, cfg: CodecConfig) -> str:
    if stats.family == "bool":
        return "boolean"
    if stats.family == "string":
        return "categorical"
    if stats.family == "temporal":
        return "datetime"
    distinct = stats.distinct_exact
    if stats.integral and distinct is not None and distinct <= cfg.low_cardinality_int:
        return "categorical"
    return "integer" if stats.integral else "continuous"


def id_column(stats: ColumnStats, arrow_type: pa.DataType, fmt: str | None) -> IdColumn:
    """The identifier column of `stats` (format detected, or from its values when the kind was set
    by an override); its only statistics are the null share and, for digit strings, the usual length."""
    if stats.family not in ("string", "numeric") or stats.family == "numeric" and not stats.integral:
        raise ConfigError(f"column {stats.name!r} is {arrow_type}; only string and integer columns can be of kind id")
    fmt = fmt or (value_format(list(stats.counts or [])) if stats.family == "string" else "integer")
    length = 0
    if fmt == "digits":
        lengths: dict[int, int] = {}
        for v, c in (stats.counts or {}).items():
            lengths[len(v)] = lengths.get(len(v), 0) + c
        length = max(lengths, key=lengths.get)
    return IdColumn(stats.name, str(arrow_type), stats.nulls > 0, fmt, length, stats.nulls / max(stats.count, 1))


class TableCodec:
    SCHEMA_VERSION = 1

    def __init__(self, schema: pa.Schema, columns: list[CategoricalColumn | NumericColumn | ArrayColumn | IdColumn],
                 num_rows: int):
        self.schema = schema  # the output columns, in order, with their exact Arrow types
        self.columns = [c for c in columns if not isinstance(c, IdColumn)]  # the modelled ones (features)
        self.ids = [c for c in columns if isinstance(c, IdColumn)]  # written fresh by decode, never modelled
        self.num_rows = num_rows
        self.slices: list[slice] = []
        start = 0
        for c in self.columns:
            self.slices.append(slice(start, start + c.width))
            start += c.width
        self.width = start
        self.by_name = {c.name: c for c in self.columns}

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_stats(cls, stats: TableStats, cfg: CodecConfig | None = None) -> "TableCodec":
        cfg = cfg or CodecConfig()
        names = [f.name for f in stats.schema]
        for col in list(cfg.overrides) + list(cfg.ignore):
            if col not in names:
                raise ConfigError(f"override names column {col!r}, which is not in the data; columns are {names}")
        if stats.num_rows == 0:
            raise DataError("the reference table has no rows; give it at least a few hundred rows to learn from")
        columns = []
        fields = []
        for f in stats.schema:
            if f.name in cfg.ignore:
                continue
            s = stats.columns[f.name]
            if s.family == "array":  # fixed-shape arrays: one block of prod(shape) features
                if f.name in cfg.overrides:
                    raise ConfigError(f"column {f.name!r} holds fixed-shape arrays; its kind is array and cannot be "
                                      f"overridden to {cfg.overrides[f.name]!r}")
                if s.nonfinite:
                    raise DataError(f"column {f.name!r} has {s.nonfinite} NaN or infinite values inside its arrays; "
                                    "replace them with finite numbers (arrays have no missing-value model)")
                columns.append(ArrayColumn.fit(s, f.type))
                fields.append(f)
                continue
            if s.nulls == s.count:
                raise DataError(f"column {f.name!r} is entirely null; drop it or list it under `ignore`")
            k = cfg.min_count
            id_format = identifier_format(s, k) if k and f.name not in cfg.overrides else None
            kind = cfg.overrides.get(f.name) or ("id" if id_format else infer_kind(s, cfg))
            if s.inexact is not None and kind != "id":
                raise DataError(f"column {f.name!r} holds integers beyond the +-2**53 that synth's float64 "
                                "statistics hold exactly (larger values would not round-trip); if it is an identifier "
                                f"set data.codec.overrides {{{f.name}: id}} or list it under `ignore`, else cast it to "
                                "float64 or to string")
            if s.nonfinite:
                raise DataError(
                    f"column {f.name!r} has {s.nonfinite} NaN or infinite values; replace them with nulls "
                    "(missing values are modelled) or with finite numbers")
            nullable = s.nulls > 0
            if kind == "id":
                columns.append(id_column(s, f.type, id_format))
            elif kind in ("categorical", "boolean"):
                if s.counts is None and (s.sketch is None or not s.sketch.exact):
                    raise ConfigError(f"column {f.name!r} has too many distinct values to be categorical; "
                                      "model it as continuous or integer")
                if kind == "boolean" and s.family != "bool":
                    raise ConfigError(f"column {f.name!r} is {f.type}, not boolean; declare it categorical")
                if s.counts_overflow:
                    raise DataError(f"column {f.name!r} has over {len(s.counts)} distinct values; if it is an "
                                    f"identifier set data.codec.overrides {{{f.name}: id}} (fresh identifiers) or "
                                    "list it under `ignore`")
                columns.append(CategoricalColumn.fit(s, kind, f.type, nullable, cfg.max_onehot,
                                                     None if kind == "boolean" else k))
            else:
                if s.family == "string" or s.family == "bool":
                    raise ConfigError(f"column {f.name!r} holds {f.type} values and cannot be {kind}; "
                                      "declare it categorical")
                if kind == "datetime" and s.family != "temporal":
                    raise ConfigError(f"column {f.name!r} is {f.type}, not a timestamp or date")
                if kind != "datetime" and s.family == "temporal":
                    raise ConfigError(f"column {f.name!r} is a {f.type}; its kind must be datetime")
                columns.append(NumericColumn.fit(s, kind, f.type, nullable, k))
            fields.append(f)
        return cls(pa.schema(fields), columns, stats.num_rows)

    @classmethod
    def fit(cls, batches: Iterable[pa.RecordBatch | pa.Table], cfg: CodecConfig | None = None,
            schema: pa.Schema | None = None) -> "TableCodec":
        stats = None
        for b in batches:
            if stats is None:
                stats = TableStats.empty(b.schema)
            stats.add_batch(b)
        if stats is None:
            if schema is None:
                raise DataError("the reference table has no rows")
            stats = TableStats.empty(schema)
        return cls.from_stats(stats, cfg)

    @classmethod
    def from_schema(cls, schema: pa.Schema, declared: dict, cfg: CodecConfig | None = None, *, num_rows: int,
                    bins: int = 32, masses: dict[str, np.ndarray] | None = None) -> "TableCodec":
        """A codec from a user-declared schema (`synth.table.schema.ColumnSchema` per column) and,
        optionally, noised histogram masses on the declared grid; no statistic is read from data."""
        from synth.table.schema import check_declared, codec_columns

        cfg = cfg or CodecConfig()
        if cfg.overrides:
            raise ConfigError(f"data.codec.overrides {sorted(cfg.overrides)} do not apply to a declared schema; "
                              "set each column's `kind` under privacy.schema instead")
        fields = check_declared(schema, declared, cfg.ignore)
        columns = codec_columns(fields, declared, cfg.max_onehot, bins, masses)
        return cls(pa.schema(fields), columns, num_rows)

    # -- encode / decode ------------------------------------------------------------------
    def encode(self, table: pa.Table | pa.RecordBatch, rng: np.random.Generator | None = None,
               strict: bool = True) -> np.ndarray:
        """Rows to features (n, width). With `rng`, heavy numeric values are dequantised (training).
        strict=False encodes held-out rows whose categories the codec never saw (validation)."""
        missing = [c.name for c in self.columns if c.name not in table.schema.names]
        if missing:
            raise DataError(f"columns {missing} are missing from the table to encode")
        out = np.empty((table.num_rows, self.width), dtype=np.float64)
        for col, sl in zip(self.columns, self.slices):
            arr = table.column(col.name)
            if isinstance(arr, pa.ChunkedArray):
                arr = arr.combine_chunks()
            out[:, sl] = col.encode(arr, rng, strict)
        return out

    def decode(self, feats: np.ndarray, rng: np.random.Generator | None = None) -> pa.Table:
        feats = np.asarray(feats, dtype=np.float64)
        arrays = {col.name: col.decode(feats[:, sl], rng) for col, sl in zip(self.columns, self.slices)}
        arrays.update({col.name: col.decode(len(feats), rng) for col in self.ids})
        return pa.Table.from_arrays([arrays[name] for name in self.schema.names], schema=self.schema)

    def feature_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Range every feature can take (denoised estimates are projected into it)."""
        lo, hi = np.empty(self.width), np.empty(self.width)
        for col, sl in zip(self.columns, self.slices):
            lo[sl], hi[sl] = col.bounds()
        return lo, hi

    # -- helpers for conditioning and reporting --------------------------------------------
    def categorical(self, name: str) -> CategoricalColumn:
        col = self.by_name.get(name)
        if col is None:
            raise ConfigError(f"unknown column {name!r}; columns are {[c.name for c in self.columns]}")
        if not isinstance(col, CategoricalColumn):
            raise ConfigError(f"column {name!r} is {col.kind}; conditions are supported on categorical "
                              f"and boolean columns: {self.categorical_names()}")
        return col

    def categorical_names(self) -> list[str]:
        return [c.name for c in self.columns if isinstance(c, CategoricalColumn)]

    def kinds(self) -> dict[str, str]:
        """Kind of every output column, in schema order (identifiers: "id")."""
        kind = {c.name: c.kind for c in self.columns + self.ids}
        return {name: kind[name] for name in self.schema.names}

    def slice_of(self, name: str) -> slice:
        return self.slices[[c.name for c in self.columns].index(name)]

    # -- state ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": self.SCHEMA_VERSION, "schema": schema_to_b64(self.schema),
                "num_rows": self.num_rows, "columns": [c.to_dict() for c in self.columns + self.ids]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TableCodec":
        if d.get("schema_version") != cls.SCHEMA_VERSION:
            raise ConfigError(f"codec state version {d.get('schema_version')} is not supported "
                              f"(this synth reads version {cls.SCHEMA_VERSION}); retrain the model")
        return cls(schema_from_b64(d["schema"]), [column_from_dict(c) for c in d["columns"]], d["num_rows"])


__all__ = ["KINDS", "CodecConfig", "TableCodec", "infer_kind"]
