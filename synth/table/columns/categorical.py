"""Categorical and boolean columns: one-hot in {-1, +1}, decoded by argmax.

Categories are ordered by frequency (ties by value). Past `max_onehot` categories the rarest
share one "other" slot: decoding it draws a tail value by its reference frequency, so a
50,000-category column costs `max_onehot` features, not 50,000. Null is a category of its own.
With value protection (`min_count` k) a value seen fewer than k times is never stored: strings
become `_RARE_`, numbers the nearest value seen at least k times (`synth.table.protection`), and
encoding maps every value it does not know the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from synth.errors import ConfigError
from synth.table.protection import RARE, nearest, protected_counts
from synth.table.stats import ColumnStats

NULL = None


@dataclass
class CategoricalColumn:
    name: str
    kind: str  # categorical | boolean
    arrow_type: str
    nullable: bool
    categories: list[Any]  # one-hot slots (None = null), most frequent first
    probs: list[float]  # reference frequency of each slot
    tail_values: list[Any] = field(default_factory=list)  # values behind the "other" slot
    tail_probs: list[float] = field(default_factory=list)
    arrow_value_type: str = "string"
    protected: bool = False  # rare values were folded away: encode maps unknown values like them

    @classmethod
    def fit(cls, stats: ColumnStats, kind: str, arrow_type: pa.DataType, nullable: bool,
            max_onehot: int, min_count: int | None = None) -> "CategoricalColumn":
        counts = dict(stats.counts or {})
        numeric = stats.counts is None and stats.sketch is not None  # numeric column declared categorical
        if numeric:
            counts = {(int(v) if stats.integral else float(v)): int(w)
                      for v, w in zip(stats.sketch.values, stats.sketch.weights)}
        if min_count is not None:
            counts = protected_counts(counts, min_count, numeric)
            if not counts:
                raise ConfigError(f"column {stats.name!r} has no value seen at least {min_count} times, so value "
                                  "protection keeps none of its categories; model it as integer/continuous "
                                  "(data.codec.overrides), list it under `ignore`, or lower data.codec.rare_min_count")
        if nullable and stats.nulls:
            counts[NULL] = stats.nulls
        items = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
        total = float(sum(c for _, c in items))
        head, tail = items, []
        if len(items) > max_onehot:
            head, tail = items[: max_onehot - 1], items[max_onehot - 1:]
        cats = [v for v, _ in head]
        probs = [c / total for _, c in head]
        tail_total = float(sum(c for _, c in tail))
        if tail:
            probs.append(tail_total / total)
        vtype = arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type
        return cls(stats.name, kind, str(arrow_type), nullable, cats, probs,
                   [v for v, _ in tail], [c / tail_total for _, c in tail], str(vtype), min_count is not None)

    @property
    def width(self) -> int:
        return len(self.categories) + (1 if self.tail_values else 0)

    def bounds(self) -> tuple[list[float], list[float]]:
        return [-1.0] * self.width, [1.0] * self.width

    def index_of(self) -> dict[Any, int]:
        if not hasattr(self, "_index"):
            self._index = {v: i for i, v in enumerate(self.categories)}
            other = len(self.categories)
            self._index.update({v: other for v in self.tail_values})
        return self._index

    def codes(self, values: list[Any], strict: bool = True, data: bool = False) -> np.ndarray:
        """Slot index of each value. Unseen values raise an error naming the column (and the value,
        unless it comes from the `data`), or with strict=False (held-out rows for validation) go to
        the "other" slot or the most frequent."""
        index = self.index_of()
        fallback = len(self.categories) if self.tail_values else 0
        out = np.empty(len(values), dtype=np.int64)
        if strict:
            self.check_types(values)
        for i, v in enumerate(values):
            j = index.get(v, -1)
            if j < 0:
                if strict:
                    raise ConfigError(self.unseen_message(None if data else v))
                j = fallback
            out[i] = j
        return out

    def check_types(self, values: list[Any]) -> None:
        """Refuse a boolean for a numeric column and a number for a boolean one: Python's 1 == True
        would otherwise map it to a slot of the other type and the output could not hold it."""
        t = self.arrow_value_type
        if t == "bool":
            bad = next((v for v in values if v is not None and not isinstance(v, (bool, np.bool_))), None)
        elif t.startswith(("int", "uint", "float", "double", "halffloat")):
            bad = next((v for v in values if isinstance(v, (bool, np.bool_))), None)
        else:
            return
        if bad is not None:
            want = "true or false" if t == "bool" else "a number"
            known = [c for c in self.categories if c is not None][:20]
            raise ConfigError(f"column {self.name!r} holds {'boolean' if t == 'bool' else t} values but the value "
                              f"{bad!r} is a {type(bad).__name__}; give {want} (known values include {known})")

    def unseen_message(self, v: Any = None) -> str:
        """The error for a value the codec does not know. A value given by a user (a condition) is
        named; a value read from the data never is (it may be private, and errors reach job logs)."""
        known = [c for c in self.categories if c is not None][:20]
        what = f"has no category {v!r}" if v is not None else "holds a value that is not one of its categories"
        return (f"column {self.name!r} {what} in the reference data (values are compared exactly, by type and "
                f"case); known values include {known}{' ...' if self.width > 20 else ''}")

    def standin(self, values: list[Any]) -> list[Any]:
        """Data values as the codec stores them: with protection, a value it does not know (seen
        fewer than k times) becomes _RARE_, or the nearest known number."""
        index = self.index_of()
        if not self.protected or all(v in index for v in values):
            return values
        if self.arrow_value_type in ("string", "large_string"):
            return [v if v in index else RARE for v in values]
        known = np.asarray(sorted(float(c) for c in index if c is not None))
        by_float = {float(c): c for c in index if c is not None}
        return [v if v in index or v is None else by_float[nearest(known, float(v))] for v in values]

    def encode(self, arr: pa.Array, rng: np.random.Generator | None = None, strict: bool = True) -> np.ndarray:
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        encoded = pc.dictionary_encode(arr)
        uniq, inverse = np.unique(np.asarray(encoded.indices.fill_null(-1)), return_inverse=True)
        dictionary = encoded.dictionary.to_pylist()
        slot_of_code = self.codes(self.standin([dictionary[c] if c >= 0 else None for c in uniq]), strict, data=True)
        slots = slot_of_code[inverse]
        out = np.full((len(arr), self.width), -1.0)
        out[np.arange(len(arr)), slots] = 1.0
        return out

    def decode(self, feats: np.ndarray, rng: np.random.Generator | None = None) -> pa.Array:
        return self.from_slots(np.argmax(feats, axis=1), rng)

    def to_arrow(self, values: list[Any]) -> pa.Array:
        """Values given by a user (conditions) as an array of this column's Arrow type."""
        return self._typed(np.asarray(values, dtype=object))

    def from_slots(self, slots: np.ndarray, rng: np.random.Generator | None) -> pa.Array:
        vals = np.empty(len(slots), dtype=object)
        k = len(self.categories)
        head = slots < k
        cats = np.empty(k, dtype=object)
        cats[:] = self.categories
        vals[head] = cats[slots[head]]
        n_tail = int((~head).sum())
        if n_tail:
            rng = rng if rng is not None else np.random.default_rng(0)
            tv = np.empty(len(self.tail_values), dtype=object)
            tv[:] = self.tail_values
            if hasattr(rng, "uniforms"):  # synth.engine.rowstreams.RowUniforms: row i's draw depends on row i only
                cdf = np.cumsum(np.asarray(self.tail_probs))
                pick = np.minimum(np.searchsorted(cdf / cdf[-1], rng.uniforms(self.name)[~head], side="right"),
                                  len(tv) - 1)
                vals[~head] = tv[pick]
            else:
                vals[~head] = tv[rng.choice(len(tv), size=n_tail, p=np.asarray(self.tail_probs))]
        return self._typed(vals)

    def _typed(self, vals: np.ndarray) -> pa.Array:
        from synth.table.columns.numeric import _parse_type

        vtype = _parse_type(self.arrow_value_type) if self.arrow_value_type not in ("string", "large_string") \
            else pa.type_for_alias(self.arrow_value_type)
        arr = pa.array(vals.tolist(), type=vtype)
        if self.arrow_type.startswith("dictionary"):
            arr = arr.dictionary_encode()
            target = _dictionary_type(self.arrow_type, vtype)
            if arr.type != target:
                arr = arr.cast(target)
        return arr

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "arrow_type": self.arrow_type, "nullable": self.nullable,
            "categories": self.categories, "probs": self.probs, "tail_values": self.tail_values,
            "tail_probs": self.tail_probs, "arrow_value_type": self.arrow_value_type, "protected": self.protected,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CategoricalColumn":
        return cls(d["name"], d["kind"], d["arrow_type"], d["nullable"], d["categories"], d["probs"],
                   d["tail_values"], d["tail_probs"], d["arrow_value_type"], d.get("protected", False))


def _dictionary_type(s: str, value_type: pa.DataType) -> pa.DataType:
    # "dictionary<values=string, indices=int32, ordered=0>"
    idx = s.split("indices=")[1].split(",")[0].strip()
    ordered = s.rstrip(">").endswith("ordered=1")
    return pa.dictionary(pa.type_for_alias(idx), value_type, ordered)
