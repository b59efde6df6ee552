"""Column kinds: each kind is one transform class mapping an Arrow column to float features.

- `numeric.NumericColumn`: continuous, integer and datetime columns (quantile-normal).
- `categorical.CategoricalColumn`: categorical and boolean columns (one-hot, capped).

A transform has `width`, `encode(array, rng) -> (n, width) float64`,
`decode(features, rng) -> pa.Array` and `to_dict()/from_dict()` for the codec state.
"""
from synth.table.columns.categorical import CategoricalColumn
from synth.table.columns.numeric import NumericColumn

KINDS = ("continuous", "integer", "datetime", "categorical", "boolean")


def column_from_dict(d: dict):
    return (CategoricalColumn if d["kind"] in ("categorical", "boolean") else NumericColumn).from_dict(d)


__all__ = ["KINDS", "CategoricalColumn", "NumericColumn", "column_from_dict"]
