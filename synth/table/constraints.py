"""Constraints (business rules) of the run config, as reversible table transforms (docs/constraints.md).

Every constraint is a *reparametrisation*: `forward` rewrites the training rows into columns the
model can learn without any rule (the "model table" the codec is fitted on), `inverse` maps
decoded rows back to the output columns, where the rule then holds on every row by construction:

    inequality  low <= high          high -> (high - low), the inverse adds back max(diff, 0)
    range       min <= x <= max      x -> logit of its position in [min, max]; one bound: the distance
    fixed_combinations (a, b, ...)   the columns -> one categorical column of the seen combinations
    formula     total = price * qty  total is not modelled; it is computed after decoding

A row where a cell the rule reads is null is left as is: the rule does not apply, and the column
the rule rewrites keeps its own value in a side column (modelled like any column) when the data has
such rows. Fixed combinations treat null as a value (only combinations seen, nulls included, come
out). No rule needs resampling, so no sample path loops.

    cons = Constraints.fit(specs, train_rows, codec_cfg)   # checks the data, learns what it needs
    model_rows = cons.forward(rows)                         # before the codec (training, scoring)
    rows = cons.inverse(decoded, uniforms)                  # after the codec (every sample path)

The state is plain JSON (`to_dict`/`from_dict`), stored in the model artifact as constraints.json.
Errors name the constraint (`constraints[i] (kind)`), never a value of the data.
"""
from __future__ import annotations

import ast
import json
import math
from typing import Annotated, Any, Literal, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from synth.errors import ConfigError, DataError
from synth.table.arrow_types import schema_from_b64, schema_to_b64
from synth.table.stats import ints_to_temporal, temporal_ints

FORMAT = 1
EPS = 1e-12  # logit of positions in [EPS, 1 - EPS]; the ends snap back to the bounds exactly


# ---- the run config's `constraints:` list ---------------------------------------------------------
class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Inequality(_Spec):
    """`low <= high` (`low < high` with strict) between two numeric or datetime columns."""
    kind: Literal["inequality"] = "inequality"
    low: str
    high: str
    strict: bool = Field(False, description="high > low instead of high >= low")

    @model_validator(mode="after")
    def _check(self):
        if self.low == self.high:
            raise ValueError(f"low and high are the same column {self.low!r}; name two columns")
        return self

    def targets(self) -> list[str]:
        return [self.high]

    def reads(self) -> list[str]:
        return [self.low]

    def title(self) -> str:
        return f"{self.low} {'<' if self.strict else '<='} {self.high}"


Bound = Union[float, int, str]  # a number, or a date/time for datetime columns (ISO 8601)


class Range(_Spec):
    """`min <= column <= max`; each bound a constant (`min`/`max`) or a column (`low_column`/`high_column`)."""
    kind: Literal["range"] = "range"
    column: str
    min: Bound | None = None
    max: Bound | None = None
    low_column: str | None = None
    high_column: str | None = None

    @model_validator(mode="after")
    def _check(self):
        if (self.min is not None and self.low_column is not None
                or self.max is not None and self.high_column is not None):
            raise ValueError("give each bound once: min or low_column, max or high_column")
        if self.min is None and self.max is None and self.low_column is None and self.high_column is None:
            raise ValueError("a range needs min, max, low_column or high_column")
        for b in (self.min, self.max):
            if isinstance(b, float) and not math.isfinite(b):
                raise ValueError("bounds must be finite")
        if isinstance(self.min, (int, float)) and isinstance(self.max, (int, float)) and self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max}); swap them")
        if isinstance(self.min, str) and isinstance(self.max, str) and _datetime(self.min) > _datetime(self.max):
            raise ValueError(f"min ({self.min}) is after max ({self.max}); swap them")
        if self.column in (self.low_column, self.high_column):
            raise ValueError(f"column {self.column!r} cannot bound itself")
        if (self.low_column is None) != (self.high_column is None) and (self.min is not None or self.max is not None):
            raise ValueError("give both bounds as columns or both as constants: a bounding column could pass the "
                             "constant bound on some row, and then no value fits (bound the column itself with "
                             "another constraint instead)")
        return self

    def targets(self) -> list[str]:
        return [self.column]

    def reads(self) -> list[str]:
        return [c for c in (self.low_column, self.high_column) if c is not None]

    def title(self) -> str:
        lo = self.low_column if self.low_column is not None else self.min
        hi = self.high_column if self.high_column is not None else self.max
        return " <= ".join(str(p) for p in (lo, self.column, hi) if p is not None)


class FixedCombinations(_Spec):
    """Only combinations of these columns' values that the training data holds."""
    kind: Literal["fixed_combinations"] = "fixed_combinations"
    columns: list[str] = Field(min_length=2)

    @model_validator(mode="after")
    def _check(self):
        if len(set(self.columns)) != len(self.columns):
            raise ValueError("columns has duplicates")
        return self

    def targets(self) -> list[str]:
        return list(self.columns)

    def reads(self) -> list[str]:
        return []

    def title(self) -> str:
        return " x ".join(self.columns)


class Formula(_Spec):
    """`column = expression` over numeric columns: + - * / parentheses and numbers."""
    kind: Literal["formula"] = "formula"
    column: str
    expression: str = Field(max_length=1000)
    decimals: int | None = Field(None, ge=0, le=15, description="round the result to this many decimals "
                                                                 "(integer columns are rounded to integers)")

    @model_validator(mode="after")
    def _check(self):
        names = expression_columns(self.expression)  # refuses anything but arithmetic
        if self.column in names:
            raise ValueError(f"the expression reads {self.column!r}, the column it defines")
        return self

    def targets(self) -> list[str]:
        return [self.column]

    def reads(self) -> list[str]:
        return expression_columns(self.expression)

    def title(self) -> str:
        return f"{self.column} = {self.expression}"


def _kind(v) -> str | None:
    return v.get("kind") if isinstance(v, dict) else getattr(v, "kind", None)


Constraint = Annotated[Union[tuple(Annotated[m, Tag(m.model_fields["kind"].default)]  # type: ignore[misc]
                                   for m in (Inequality, Range, FixedCombinations, Formula))],
                      Discriminator(_kind, custom_error_type="constraint_kind",
                                    custom_error_message="each constraint needs a kind: inequality, range, "
                                                         "fixed_combinations or formula (docs/constraints.md)")]
NUMERIC_KINDS = ("inequality", "range", "formula")


def label(i: int, spec) -> str:
    """How errors and the manifest name a constraint: constraints[i] (kind: title)."""
    return f"constraints[{i}] ({spec.kind}: {spec.title()})"


def check_specs(specs: list, codec_cfg) -> None:
    """What can be checked before reading any data: no column rewritten by two constraints, no
    cycle, no constraint on an ignored column or on a column whose kind an override pins."""
    owner: dict[str, int] = {}
    for i, s in enumerate(specs):
        for c in s.targets():
            if c in owner:
                j = owner[c]
                raise ConfigError(f"{label(i, s)} and {label(j, specs[j])} both constrain column {c!r}; a column "
                                  "can be rewritten by one constraint only: merge them (a range takes min/max and "
                                  "low_column/high_column together) or drop one")
            owner[c] = i
    for i, s in enumerate(specs):
        if s.kind == "range" and s.low_column is not None and s.high_column is not None and not any(
                o.kind == "inequality" and (o.low, o.high) == (s.low_column, s.high_column) for o in specs):
            raise ConfigError(f"{label(i, s)} needs {s.low_column} <= {s.high_column} on every row, or no value fits "
                              f"between them: add {{kind: inequality, low: {s.low_column}, high: {s.high_column}}}")
        for c in s.targets() + s.reads():
            if c in codec_cfg.ignore:
                raise ConfigError(f"{label(i, s)} uses column {c!r}, which data.codec.ignore leaves out of the model; "
                                  "remove it from ignore or drop the constraint")
            kind = codec_cfg.overrides.get(c)
            if kind is None:
                continue
            if c in s.targets():
                raise ConfigError(f"{label(i, s)} rewrites column {c!r}, so data.codec.overrides cannot pin its kind "
                                  f"({kind}); remove the override")
            if s.kind in NUMERIC_KINDS and kind in ("categorical", "boolean", "id"):
                raise ConfigError(f"{label(i, s)} reads column {c!r} as a number, but data.codec.overrides makes it "
                                  f"{kind}; remove the override or the constraint")
    _order(specs)


def _order(specs: list) -> list[int]:
    """Indices in the order `inverse` runs them: a constraint after those that rewrite what it reads."""
    owner = {c: i for i, s in enumerate(specs) for c in s.targets()}
    deps = {i: {owner[c] for c in s.reads() if c in owner} for i, s in enumerate(specs)}
    done: list[int] = []
    while len(done) < len(specs):
        ready = [i for i in range(len(specs)) if i not in done and deps[i] <= set(done)]
        if not ready:
            stuck = [i for i in range(len(specs)) if i not in done]
            raise ConfigError(f"constraints {', '.join(label(i, specs[i]) for i in stuck)} depend on each other in a "
                              "cycle (each rewrites a column another reads), so they contradict or cannot be "
                              "applied in any order; drop one of them")
        done.append(ready[0])
    return done


# ---- safe arithmetic expressions --------------------------------------------------------------------
_OPS = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.divide}


def _walk(node, names: list[str]) -> None:
    if isinstance(node, ast.Expression):
        return _walk(node.body, names)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        _walk(node.left, names)
        return _walk(node.right, names)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return _walk(node.operand, names)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return None
    if isinstance(node, ast.Name):
        if node.id not in names:
            names.append(node.id)
        return None
    raise ValueError(f"expression may hold only column names, numbers, + - * / and parentheses, not "
                     f"{type(node).__name__.lower()} {ast.unparse(node)[:40]!r} (quote a column name that is not "
                     "an identifier in backquotes: `hours-per-week` * 52)")


def _parse(expression: str) -> tuple[ast.Expression, dict[str, str]]:
    """The expression's syntax tree, with `quoted column names` (any characters but a backquote)
    as placeholders, and the placeholder -> column map."""
    parts = expression.split("`")
    if len(parts) % 2 == 0:
        raise ValueError(f"expression {expression!r} has an unclosed backquote")
    names: dict[str, str] = {}
    text = []
    for k, part in enumerate(parts):
        if k % 2:
            key = f"_q{len(names)}"
            names[key] = part
            text.append(key)
        else:
            text.append(part)
    try:
        return ast.parse("".join(text).strip(), mode="eval"), names
    except SyntaxError:
        raise ValueError(f"expression {expression!r} is not valid arithmetic (quote column names that are not "
                         "identifiers in backquotes: `hours-per-week` * 52)") from None


def expression_columns(expression: str) -> list[str]:
    """The column names an arithmetic expression reads; anything else is refused."""
    tree, quoted = _parse(expression)
    names: list[str] = []
    _walk(tree, names)
    if not names:
        raise ValueError("the expression reads no column; a constant column needs no model")
    return [quoted.get(n, n) for n in names]


def evaluate(expression: str, columns: dict[str, np.ndarray]) -> np.ndarray:
    """The expression over float64 arrays (whitelisted nodes only; no eval)."""
    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.BinOp):
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp):
            return -ev(node.operand) if isinstance(node.op, ast.USub) else ev(node.operand)
        if isinstance(node, ast.Constant):
            return float(node.value)
        return columns[quoted.get(node.id, node.id)]

    tree, quoted = _parse(expression)
    _walk(tree, [])
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.asarray(ev(tree), dtype=np.float64) * np.ones(len(next(iter(columns.values()))))


# ---- column values ----------------------------------------------------------------------------------
def _datetime(s: str) -> np.datetime64:
    try:
        return np.datetime64(s, "ns")
    except ValueError:
        raise ValueError(f"bound {s!r} is neither a number nor an ISO 8601 date/time (e.g. 2024-01-31)") from None


def _column(table: pa.Table, name: str) -> pa.Array:
    arr = table.column(name)
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    return arr.dictionary_decode() if pa.types.is_dictionary(arr.type) else arr


def _numeric_kind(t: pa.DataType) -> str | None:
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return "time"
    return None


def _values(arr: pa.Array, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(values, null mask): int64 for ints and datetimes (ticks of the type's unit), float64 else."""
    null = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if kind == "time":
        return temporal_ints(arr), null
    if kind == "int":
        return arr.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64), null
    return arr.cast(pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False).astype(np.float64), null


def _ticks(arr: pa.Array, t: pa.DataType, up: bool | None) -> tuple[np.ndarray, np.ndarray]:
    """Datetimes as int64 counts of the unit of type `t` (the constrained column's), rounded up (a
    lower bound), down (an upper bound) or exactly (None: the column itself), and the null mask."""
    from synth.table.stats import _unit_ns

    v, null = _values(arr, "time")
    have, want = _unit_ns(arr.type), _unit_ns(t)
    if have == want:
        return v, null
    ns = v * have
    return (-((-ns) // want) if up else ns // want), null


def _array(x: np.ndarray, null: np.ndarray, kind: str, t: pa.DataType) -> pa.Array:
    mask = null if null.any() else None
    if kind == "time":
        return ints_to_temporal(np.asarray(x, dtype=np.int64), mask, t)
    if kind == "int":
        lo, hi = (np.iinfo(t.to_pandas_dtype()).min, np.iinfo(t.to_pandas_dtype()).max)
        return pa.array(np.clip(np.asarray(x, dtype=np.float64), lo, hi).astype(np.int64), pa.int64(),
                        mask=mask).cast(t)
    return pa.array(np.asarray(x, dtype=np.float64), pa.float64(), mask=mask).cast(t)


def _put(table: pa.Table, name: str, arr: pa.Array, at: str | None = None) -> pa.Table:
    """`table` with column `name` set to `arr` (in place of `at`, or appended)."""
    field = pa.field(name, arr.type)
    if at is not None:
        return table.set_column(table.schema.get_field_index(at), field, arr)
    return table.append_column(field, arr)


def _side(name: str) -> str:
    return f"{name} (rule off)"


# ---- the transforms ---------------------------------------------------------------------------------
class Transform:
    """One constraint as a reversible transform of tables (state: JSON)."""
    index: int
    spec: Any
    keep: str | None = None  # side column: the target's own value on rows where the rule does not apply

    def label(self) -> str:
        return label(self.index, self.spec)

    def model_columns(self) -> list[str]:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"index": self.index, "kind": self.spec.kind, "rule": self.spec.title(),
                "spec": self.spec.model_dump(mode="json", exclude_none=True), "mechanism": self.mechanism,
                "model_columns": self.model_columns()}


class Bounded(Transform):
    """A numeric/datetime column bounded below, above or both (inequality, range): rewritten as its
    distance to the one bound, or the logit of its position between two; the inverse cannot leave them."""

    def __init__(self, index: int, spec, kind: str, arrow_type: str, step: int, keep: str | None,
                 lo: float | None = None, hi: float | None = None):
        self.index, self.spec, self.kind, self.arrow_type = index, spec, kind, arrow_type
        self.step, self.keep = step, keep
        self.lo, self.hi = lo, hi  # constant bounds in the model's units (ticks // step for datetimes)
        if spec.kind == "inequality":
            self.target, self.low_col, self.high_col, self.strict = spec.high, spec.low, None, spec.strict
        else:
            self.target, self.low_col, self.high_col = spec.column, spec.low_column, spec.high_column
            self.strict = False
        two = (lo is not None or self.low_col is not None) and (hi is not None or self.high_col is not None)
        self.two_sided = two
        self.name = f"logit({self.target})" if two else (
            f"{self.target} - {self.low_col if self.low_col is not None else 'min'}"
            if (lo is not None or self.low_col is not None) else f"max - {self.target}")
        self.mechanism = ("logit of the position between the bounds; the inverse maps back inside them" if two else
                          "the distance to the bound; the inverse adds back max(distance, "
                          f"{'1 step' if self.strict and kind != 'float' else '0'})")

    def model_columns(self) -> list[str]:
        return [self.name] + ([self.keep] if self.keep else [])

    def to_dict(self) -> dict:
        return {"index": self.index, "spec": self.spec.model_dump(mode="json"), "kind": self.kind,
                "arrow_type": self.arrow_type, "step": self.step, "keep": self.keep, "lo": self.lo, "hi": self.hi}

    def _bounds(self, table: pa.Table) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray]:
        n = table.num_rows
        off = np.zeros(n, dtype=bool)  # rows where a bound column is null: the rule does not apply
        out = []
        for col, const, up in ((self.low_col, self.lo, True), (self.high_col, self.hi, False)):
            if col is not None:
                v, null = self._scaled(_column(table, col), up)
                off |= null
                out.append(v)
            else:
                out.append(None if const is None else np.full(n, const, dtype=np.float64 if self.kind == "float"
                                                               else np.int64))
        return out[0], out[1], off

    def _scaled(self, arr: pa.Array, up: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Values in the model's units: datetimes in steps of the constrained column's unit, a lower
        bound rounded up and an upper bound down (the same rule for integer values)."""
        if self.kind == "time":
            v, null = _ticks(arr, _type(self.arrow_type), up)
            return (-((-v) // self.step) if up else v // self.step), null
        v, null = _values(arr, _numeric_kind(arr.type))
        if self.kind == "float":
            v = v.astype(np.float64)
        return v, null

    def violations(self, table: pa.Table) -> np.ndarray:
        x, xnull = self._scaled(_column(table, self.target))
        lo, hi, off = self._bounds(table)
        bad = np.zeros(table.num_rows, dtype=bool)
        if lo is not None:
            bad |= (x <= lo) if self.strict else (x < lo)
        if hi is not None:
            bad |= x > hi
        return bad & ~xnull & ~off

    def forward(self, table: pa.Table) -> pa.Table:
        arr = _column(table, self.target)
        x, xnull = self._scaled(arr)
        lo, hi, off = self._bounds(table)
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.two_sided:
                if self.kind == "float":
                    w = hi - lo
                    u = np.where(w > 0, (x - lo) / np.where(w > 0, w, 1.0), 0.5)
                else:
                    u = (x - lo + 0.5) / np.maximum(hi - lo + 1, 1)
                u = np.clip(u, EPS, 1 - EPS)
                m = np.log(u) - np.log1p(-u)
            else:
                m = x - lo if lo is not None else hi - x
        model = pa.array(m, mask=xnull | off)
        table = _put(table, self.name, model, at=self.target)
        if self.keep:
            table = _put(table, self.keep, _mask(arr, ~off))
        return table

    def inverse(self, table: pa.Table, uniforms=None) -> pa.Table:
        t = _type(self.arrow_type)
        marr = _column(table, self.name)
        m, mnull = _values(marr, "float")
        lo, hi, off = self._bounds(table)
        if self.two_sided:
            u = 1.0 / (1.0 + np.exp(-np.clip(m, -700, 700)))
            if self.kind == "float":
                w = np.maximum(hi - lo, 0.0)
                x = np.clip(lo + u * w, lo, np.maximum(hi, lo))
                x = np.where(u <= EPS * (1 + 1e-6), lo, np.where(u >= 1 - EPS * (1 + 1e-6), np.maximum(hi, lo), x))
            else:
                w = np.maximum(hi - lo + 1, 1)
                x = lo + np.clip(np.floor(u * w), 0, w - 1).astype(np.int64)
        else:
            if self.kind == "float":
                d = np.maximum(m, 0.0)
            else:
                d = np.maximum(np.rint(m), 1 if self.strict else 0).astype(np.int64)
            x = lo + d if lo is not None else hi - d
            if self.kind == "float" and self.strict:  # float addition can round back onto the bound
                ref = lo if lo is not None else hi
                step = np.nextafter(ref, np.inf if lo is not None else -np.inf)
                x = np.where(x == ref, step, x)
        if self.kind == "time":
            x = np.asarray(x, dtype=np.int64) * self.step
        null = mnull | off
        out = _array(np.where(null, 0, x), null, self.kind, t)
        if self.keep:  # rows the rule does not apply to carry their own value
            out = pc.if_else(pa.array(off), _column(table, self.keep).cast(t), out)
            table = table.drop_columns([self.keep])
        return _put(table, self.target, out, at=self.name)


def _mask(arr: pa.Array, hide: np.ndarray) -> pa.Array:
    """`arr` with the cells where `hide` is true set to null."""
    return pc.if_else(pa.array(hide), pa.nulls(len(arr), arr.type), arr)


def _type(s: str) -> pa.DataType:
    from synth.table.columns.numeric import _parse_type

    return _parse_type(s)


class Combinations(Transform):
    """Fixed combinations: the columns become one categorical column whose categories are the
    combinations seen (nulls included). With value protection only combinations seen at least
    k times are stored; a row the codec decodes to its rare slot gets a stored combination drawn
    by frequency."""
    mechanism = "one categorical column of the seen combinations, split after decoding"

    def __init__(self, index: int, spec, types: list[str], combos: list[str], counts: list[int]):
        self.index, self.spec, self.types, self.combos, self.counts = index, spec, types, combos, counts
        self.name = " & ".join(spec.columns)
        self._known = set(combos)

    def model_columns(self) -> list[str]:
        return [self.name]

    def to_dict(self) -> dict:
        return {"index": self.index, "spec": self.spec.model_dump(mode="json"), "types": self.types,
                "combos": self.combos, "counts": self.counts}

    @staticmethod
    def labels(table: pa.Table, columns: list[str]) -> list[str]:
        cols = [_column(table, c).to_pylist() for c in columns]
        return [json.dumps(list(row), separators=(",", ":")) for row in zip(*cols)]

    def violations(self, table: pa.Table) -> np.ndarray:
        return np.zeros(table.num_rows, dtype=bool)  # every training combination is seen by definition

    def forward(self, table: pa.Table) -> pa.Table:
        joint = pa.array(self.labels(table, self.spec.columns), pa.string())
        first = self.spec.columns[0]
        table = _put(table, self.name, joint, at=first)
        return table.drop_columns(self.spec.columns[1:])

    def draw(self, u: np.ndarray, allowed: list[int] | None = None) -> list[str]:
        """Stored combinations (of `allowed` indices, default all) drawn by frequency with uniforms `u`."""
        idx = np.arange(len(self.combos)) if allowed is None else np.asarray(allowed, dtype=np.int64)
        cdf = np.cumsum(np.asarray(self.counts, dtype=np.float64)[idx])
        k = np.minimum(np.searchsorted(cdf / cdf[-1], u, side="right"), len(idx) - 1)
        return [self.combos[i] for i in idx[k]]

    def inverse(self, table: pa.Table, uniforms=None) -> pa.Table:
        enc = _column(table, self.name).dictionary_encode()  # each distinct label is parsed once
        labels = enc.dictionary.to_pylist()
        codes = enc.indices.fill_null(len(labels)).to_numpy(zero_copy_only=False).astype(np.int64)
        labels.append(None)
        unknown = np.flatnonzero(np.isin(codes, [k for k, v in enumerate(labels) if v not in self._known]))
        if len(unknown):  # the codec's rare slot (value protection): a stored combination by frequency
            u = (uniforms.uniforms(f"constraint:{self.index}")[unknown] if uniforms is not None
                 else np.full(len(unknown), 0.5))
            index = {v: k for k, v in enumerate(labels)}
            for v in set(self.combos) - set(index):
                index[v] = len(labels)
                labels.append(v)
            codes[unknown] = [index[v] for v in self.draw(u)]
        parsed = [json.loads(v) if v in self._known else None for v in labels]
        for j, (c, t) in enumerate(zip(self.spec.columns, self.types)):
            typ = _type_any(t)
            vt = typ.value_type if pa.types.is_dictionary(typ) else typ
            arr = pa.array([p[j] if p is not None else None for p in parsed], vt).take(pa.array(codes))
            if pa.types.is_dictionary(typ):
                arr = arr.dictionary_encode().cast(typ)
            table = _put(table, c, arr, at=self.name) if j == 0 else _put(table, c, arr)
        return table

    def values(self, column: str) -> list:
        j = self.spec.columns.index(column)
        return list(dict.fromkeys(json.loads(c)[j] for c in self.combos))

    def matching(self, given: dict[str, Any]) -> list[int]:
        pos = {self.spec.columns.index(c): v for c, v in given.items()}
        out = []
        for i, c in enumerate(self.combos):
            vals = json.loads(c)
            if all(vals[j] == v and isinstance(vals[j], bool) == isinstance(v, bool) for j, v in pos.items()):
                out.append(i)
        return out


def _type_any(s: str) -> pa.DataType:
    if s.startswith("dictionary<"):
        inner = s[len("dictionary<values="):].split(",")[0]
        return pa.dictionary(pa.int32(), _type(inner))
    return _type(s)


class FormulaColumn(Transform):
    """A formula column: not modelled; computed from the decoded columns (rounded to its type)."""
    mechanism = "not modelled: computed from the other columns after decoding (exact)"

    def __init__(self, index: int, spec, kind: str, arrow_type: str, keep: str | None):
        self.index, self.spec, self.kind, self.arrow_type, self.keep = index, spec, kind, arrow_type, keep

    def model_columns(self) -> list[str]:
        return [self.keep] if self.keep else []

    def to_dict(self) -> dict:
        return {"index": self.index, "spec": self.spec.model_dump(mode="json"), "kind": self.kind,
                "arrow_type": self.arrow_type, "keep": self.keep}

    def compute(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(value, null, off): the formula's value, where it is undefined (division by 0), where an input is null."""
        cols, off = {}, np.zeros(table.num_rows, dtype=bool)
        for c in self.spec.reads():
            v, null = _values(_column(table, c), "float")
            cols[c], off = v, off | null
        y = evaluate(self.spec.expression, cols)
        if self.kind == "int":
            y = np.rint(y)
        elif self.spec.decimals is not None:
            y = np.round(y, self.spec.decimals)
        bad = ~np.isfinite(y)
        if self.kind == "int":
            info = np.iinfo(_type(self.arrow_type).to_pandas_dtype())
            bad |= (y < info.min) | (y > info.max)
        return np.where(bad | off, 0.0, y), bad & ~off, off

    def violations(self, table: pa.Table) -> np.ndarray:
        y, undefined, off = self.compute(table)
        x, xnull = _values(_column(table, self.spec.column), "float")
        tol = 1e-9 * np.maximum(1.0, np.abs(y))
        return ~off & ((undefined & ~xnull) | (~undefined & (xnull | (np.abs(x - y) > tol))))

    def forward(self, table: pa.Table) -> pa.Table:
        _, _, off = self.compute(table)
        if self.keep:  # in the column's place
            return _put(table, self.keep, _mask(_column(table, self.spec.column), ~off), at=self.spec.column)
        return table.drop_columns([self.spec.column])

    def inverse(self, table: pa.Table, uniforms=None) -> pa.Table:
        t = _type(self.arrow_type)
        y, undefined, off = self.compute(table)
        out = _array(y, undefined | off, self.kind, t)
        if self.keep:
            out = pc.if_else(pa.array(off), _column(table, self.keep).cast(t), out)
            return _put(table, self.spec.column, out, at=self.keep)
        return _put(table, self.spec.column, out)


# ---- all of a run's constraints ---------------------------------------------------------------------
class Constraints:
    """A run's constraints: fitted on the training rows, applied by every path (docs/constraints.md)."""

    def __init__(self, transforms: list[Transform], schema: pa.Schema, order: list[int], dropped: int = 0):
        self.transforms, self.schema, self.order, self.dropped = transforms, schema, order, dropped
        self.owner = {c: t for t in transforms for c in t.spec.targets()}

    @classmethod
    def fit(cls, specs: list, table: pa.Table, codec_cfg, violations: str = "refuse",
            schema: pa.Schema | None = None) -> tuple["Constraints", pa.Table]:
        """Check the constraints against the data and learn what the transforms need (combinations,
        datetime steps). Rows that break a constraint are refused (the error counts them, per
        constraint, without a value) or, with violations="drop", left out. `table` may hold only the
        constraints' columns when `schema` gives the whole table's (Ray Train). Returns (constraints,
        the rows kept)."""
        check_specs(specs, codec_cfg)
        names = table.schema.names
        for i, s in enumerate(specs):
            cols = s.targets() + s.reads()
            unknown = [c for c in cols if c not in names]
            if unknown:
                raise ConfigError(f"{label(i, s)} names column(s) {unknown}, which the data does not have; columns "
                                  f"are {names}")
            for c in cols:
                t = table.schema.field(c).type
                t = t.value_type if pa.types.is_dictionary(t) else t
                k = _numeric_kind(t)
                if s.kind in NUMERIC_KINDS and (k is None or s.kind == "formula" and k == "time"):
                    need = "integer or floating-point" if s.kind == "formula" else "numeric or datetime"
                    raise ConfigError(f"{label(i, s)}: column {c!r} is {t}; a {s.kind} works on {need} columns "
                                      "only (use fixed_combinations for categorical columns)")
                if s.kind == "fixed_combinations" and not (pa.types.is_string(t) or pa.types.is_large_string(t)
                                                           or pa.types.is_boolean(t) or pa.types.is_integer(t)):
                    raise ConfigError(f"{label(i, s)}: column {c!r} is {t}; fixed combinations are for categorical "
                                      "(string), boolean or integer columns")
        kinds = [{c: _numeric_kind(_value_type(table.schema.field(c).type)) for c in s.targets() + s.reads()}
                 for s in specs]
        for i, s in enumerate(specs):
            found = set(kinds[i].values())
            if s.kind in ("inequality", "range") and len(found) > 1 and (
                    "time" in found or kinds[i][s.targets()[0]] == "int"):
                raise ConfigError(f"{label(i, s)} mixes column types "
                                  f"{ {c: kind_name(k) for c, k in kinds[i].items()} }; compare datetimes with "
                                  "datetimes, and bound an integer column by integer columns (a floating-point "
                                  "column may be bounded by integers)")
        transforms = [cls._fit_one(i, s, table, codec_cfg, kinds[i]) for i, s in enumerate(specs)]
        bad = np.zeros(table.num_rows, dtype=bool)
        counts = []
        for t in transforms:
            v = t.violations(table)
            counts.append(int(v.sum()))
            bad |= v
        if bad.any():
            if violations != "drop":
                lines = [f"{t.label()}: {c} row(s)" + (" (a formula over rounded values needs `decimals`)"
                                                      if t.spec.kind == "formula" and t.spec.decimals is None
                                                      and t.kind == "float" else "")
                         for t, c in zip(transforms, counts) if c]
                raise DataError(f"{int(bad.sum())} of {table.num_rows} training rows break the declared constraints "
                                f"({'; '.join(lines)}); fix the data or the constraint, or set "
                                "data.constraint_violations: drop to leave those rows out of training")
            table = table.filter(pa.array(~bad))
            transforms = [cls._fit_one(i, s, table, codec_cfg, kinds[i]) for i, s in enumerate(specs)]
        return cls(transforms, schema or table.schema, _order(specs), int(bad.sum())), table

    @staticmethod
    def _fit_one(i: int, s, table: pa.Table, codec_cfg, kinds: dict) -> Transform:
        if s.kind == "fixed_combinations":
            labels = Combinations.labels(table, s.columns)
            uniq, counts = np.unique(np.asarray(labels, dtype=object), return_counts=True) if labels else ([], [])
            k = codec_cfg.min_count or 1
            keep = [(str(u), int(c)) for u, c in zip(uniq, counts) if c >= k]
            if not keep:
                raise DataError(f"{label(i, s)}: no combination is seen at least {k} times, so value protection "
                                "stores none; lower data.codec.rare_min_count or drop the constraint")
            keep.sort(key=lambda uc: (-uc[1], uc[0]))
            return Combinations(i, s, [str(table.schema.field(c).type) for c in s.columns],
                                [u for u, _ in keep], [c for _, c in keep])
        target = s.targets()[0]
        t = table.schema.field(target).type
        kind = kinds[target]
        reads_null = np.zeros(table.num_rows, dtype=bool)
        for c in s.reads():
            reads_null |= np.asarray(_column(table, c).is_null().to_numpy(zero_copy_only=False), dtype=bool)
        target_set = ~np.asarray(_column(table, target).is_null().to_numpy(zero_copy_only=False), dtype=bool)
        keep = _side(target) if (reads_null & target_set).any() else None
        if keep is not None and keep in table.schema.names:
            raise ConfigError(f"{label(i, s)} needs a column named {keep!r}, which the data already has; rename it")
        if s.kind == "formula":
            return FormulaColumn(i, s, kind, str(t), keep)
        step = 1
        if kind == "time":
            g = 0
            high = getattr(s, "high_column", None)
            for c in [target] + s.reads():  # in the target's unit: bounds rounded inwards
                v, null = _ticks(_column(table, c), t, up=None if c == target else c != high)
                v = v[~null]
                if len(v):
                    g = math.gcd(g, int(np.gcd.reduce(np.abs(v - v.min()))), int(abs(v.min())))
            step = max(g, 1)
        lo = hi = None
        if s.kind == "range":
            lo = _const(s.min, kind, t, step, up=True, where=label(i, s))
            hi = _const(s.max, kind, t, step, up=False, where=label(i, s))
            if lo is not None and hi is not None and lo > hi:
                raise ConfigError(f"{label(i, s)}: no {kind_name(kind)} value lies between min and max; "
                                  "widen the range")
        return Bounded(i, s, kind, str(t), step, keep, lo, hi)

    # -- the transforms -------------------------------------------------------------------------
    def forward(self, table: pa.Table) -> pa.Table:
        """Rows in the output schema -> the model table the codec encodes (the rules' inverse order, reversed)."""
        missing = [c for c in self.columns() if c not in table.schema.names]
        if missing:
            raise DataError(f"the rows lack columns {missing} that the model's constraints read")
        try:
            for i in reversed(self.order):
                table = self.transforms[i].forward(table)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError) as e:
            raise DataError(f"the rows do not match the types of the columns the model's constraints read "
                            f"({str(e).splitlines()[0][:200]}); the model expects {self.schema}") from None
        return table

    def inverse(self, table: pa.Table, uniforms=None) -> pa.Table:
        """Decoded rows of the model table -> rows in the output schema, every rule met."""
        for i in self.order:
            table = self.transforms[i].inverse(table, uniforms)
        return table.select([f.name for f in self.output_fields(table)]).cast(pa.schema(self.output_fields(table)))

    def columns(self) -> list[str]:
        """Every column a constraint rewrites or reads."""
        return list(dict.fromkeys(c for t in self.transforms for c in t.spec.targets() + t.spec.reads()))

    def valid(self, table: pa.Table) -> np.ndarray:
        """Per row: does it meet every constraint (rows where a rule is off do)?"""
        bad = np.zeros(table.num_rows, dtype=bool)
        for t in self.transforms:
            bad |= t.violations(table)
        return ~bad

    def model_kinds(self) -> dict[str, str]:
        """Codec kinds the model columns must have (added to data.codec.overrides): a joint column is
        categorical even when its many combinations would look like an identifier."""
        return {t.name: "categorical" for t in self.transforms if isinstance(t, Combinations)}

    def output_fields(self, model_table: pa.Table) -> list[pa.Field]:
        have = set(model_table.schema.names)
        return [f for f in self.schema if f.name in have]

    def kinds(self, model_kinds: dict[str, str]) -> dict[str, str]:
        """Kind of every output column (codec kinds for those the codec models as they are)."""
        out = {}
        for f in self.schema:
            if f.name in model_kinds:
                out[f.name] = model_kinds[f.name]
            elif f.name in self.owner:
                k = _numeric_kind(_value_type(f.type))
                out[f.name] = {"int": "integer", "float": "continuous", "time": "datetime"}.get(
                    k, "boolean" if pa.types.is_boolean(_value_type(f.type)) else "categorical")
        return out

    def output_schema(self, model_schema: pa.Schema) -> pa.Schema:
        have = set(model_schema.names)
        for t in self.transforms:
            have |= set(t.spec.targets())
        return pa.schema([f for f in self.schema if f.name in have])

    # -- conditions -----------------------------------------------------------------------------
    def conditions(self, n: int, conditions: dict | None, uniforms=None) -> dict | None:
        """Conditions on output columns -> conditions on model columns: a condition on columns of a
        fixed combination conditions its joint column (on a combination drawn by frequency among the
        stored ones that match, when only some of its columns are given); any other column a
        constraint rewrites is refused, naming the constraint."""
        if not conditions:
            return conditions
        out = {k: v for k, v in conditions.items() if k not in self.owner}
        grouped: dict[int, dict[str, list]] = {}
        for name, value in conditions.items():
            t = self.owner.get(name)
            if t is None:
                continue
            if not isinstance(t, Combinations):
                raise ConfigError(f"column {name!r} is rewritten by {t.label()}, so it cannot be a condition; "
                                  "condition on other columns (the rule holds on every row anyway)")
            values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value] * n
            if len(values) != n:
                raise ConfigError(f"condition {name!r} has {len(values)} values for {n} rows; give one value or "
                                  "one per row")
            grouped.setdefault(t.index, {})[name] = values
        for i, given in grouped.items():
            t = self.transforms[i]
            u = uniforms.uniforms(f"condition:constraint:{i}") if uniforms is not None else np.full(n, 0.5)
            cache: dict[str, list[int]] = {}
            labels = []
            for r in range(n):
                row = {c: v[r] for c, v in given.items()}
                key = repr(sorted(row.items(), key=lambda kv: kv[0]))
                if key not in cache:
                    cache[key] = t.matching(row)
                    if not cache[key]:
                        shown = {c: row[c] for c in t.spec.columns if c in row}
                        raise ConfigError(f"condition {shown} is not a combination {t.label()} allows (it was not "
                                          f"seen in the training data); known values of "
                                          f"{list(row)[0]!r} include {t.values(list(row)[0])[:20]}")
                labels.append(t.draw(u[r:r + 1], cache[key])[0])
            out[t.name] = labels
        return out

    def condition_columns(self, model_columns: list[str]) -> dict[str, list | None]:
        """The columns a request may condition on, given the model's condition columns: a fixed
        combination's joint column is replaced by its columns (with their known values); others map to None."""
        joint = {t.name: t for t in self.transforms if isinstance(t, Combinations)}
        out: dict[str, list | None] = {}
        for name in model_columns:
            if name in joint:
                out.update({c: joint[name].values(c) for c in joint[name].spec.columns})
            else:
                out[name] = None
        return out

    def condition_values(self, name: str) -> list | None:
        """The known values of a fixed-combination column (what a condition on it may give), else None."""
        t = self.owner.get(name)
        return t.values(name) if isinstance(t, Combinations) else None

    # -- state ----------------------------------------------------------------------------------
    def describe(self) -> dict:
        return {"mechanism": "reparametrisation into unconstrained features (no resampling): each rule is a "
                             "reversible transform of the rows before the codec, inverted after decoding",
                "rows_dropped": self.dropped, "constraints": [t.describe() for t in self.transforms]}

    def to_dict(self) -> dict:
        return {"format": FORMAT, "schema": schema_to_b64(self.schema), "order": self.order, "dropped": self.dropped,
                "transforms": [{"type": type(t).__name__, **t.to_dict()} for t in self.transforms]}

    @classmethod
    def from_dict(cls, d: dict) -> "Constraints":
        from pydantic import TypeAdapter

        if d.get("format") != FORMAT:
            raise ConfigError(f"constraints format {d.get('format')} is not supported (this synth reads {FORMAT}); "
                              "retrain the model")
        adapter = TypeAdapter(Constraint)
        out: list[Transform] = []
        for t in d["transforms"]:
            spec = adapter.validate_python(t["spec"])
            if t["type"] == "Bounded":
                out.append(Bounded(t["index"], spec, t["kind"], t["arrow_type"], t["step"], t["keep"], t["lo"],
                                   t["hi"]))
            elif t["type"] == "Combinations":
                out.append(Combinations(t["index"], spec, t["types"], t["combos"], t["counts"]))
            elif t["type"] == "FormulaColumn":
                out.append(FormulaColumn(t["index"], spec, t["kind"], t["arrow_type"], t["keep"]))
            else:
                raise ConfigError(f"unknown constraint transform {t['type']!r}; retrain the model with this synth")
        return cls(out, schema_from_b64(d["schema"]), list(d["order"]), int(d.get("dropped", 0)))


def _value_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def kind_name(kind: str) -> str:
    return {"int": "integer", "float": "number", "time": "datetime"}[kind]


def _const(b, kind: str, t: pa.DataType, step: int, up: bool, where: str):
    """A constant bound in the model's units (None when absent): integers round inwards, datetimes
    become steps of the column."""
    if b is None:
        return None
    if kind == "time":
        if not isinstance(b, str):
            raise ConfigError(f"{where}: column is {t}, so its bounds are dates/times (e.g. '2024-01-31'), not {b!r}")
        try:
            ticks = int(temporal_ints(pa.array([_datetime(b)], pa.timestamp("ns")).cast(t, safe=False))[0]) \
                if not pa.types.is_date(t) else int(temporal_ints(pa.array([_datetime(b)]).cast(t, safe=False))[0])
        except (pa.ArrowInvalid, ValueError) as e:
            raise ConfigError(f"{where}: bound {b!r} does not fit the column's type {t} ({e})") from None
        return -((-ticks) // step) if up else ticks // step
    if isinstance(b, str):
        raise ConfigError(f"{where}: the column is numeric, so its bounds are numbers, not {b!r}")
    if kind == "int":
        return int(math.ceil(b)) if up else int(math.floor(b))
    return float(b)
