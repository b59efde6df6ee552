"""Column kinds: each kind is one transform class mapping an Arrow column to float features.

- `numeric.NumericColumn`: continuous, integer and datetime columns (quantile-normal).
- `categorical.CategoricalColumn`: categorical and boolean columns (one-hot, capped).
- `array.ArrayColumn`: fixed-shape numeric arrays (images, series windows), one block of features.
- `identifier.IdColumn`: identifiers (kind `id`): no features; decoding writes fresh identifiers.

A transform has `width`, `encode(array, rng) -> (n, width) float64`,
`decode(features, rng) -> pa.Array` and `to_dict()/from_dict()` for the codec state.
"""
from synth.table.columns.array import ArrayColumn
from synth.table.columns.categorical import CategoricalColumn
from synth.table.columns.identifier import IdColumn
from synth.table.columns.numeric import NumericColumn

KINDS = ("continuous", "integer", "datetime", "categorical", "boolean", "array", "id")


def column_from_dict(d: dict):
    if d["kind"] == "array":
        return ArrayColumn.from_dict(d)
    if d["kind"] == "id":
        return IdColumn.from_dict(d)
    return (CategoricalColumn if d["kind"] in ("categorical", "boolean") else NumericColumn).from_dict(d)


__all__ = ["KINDS", "ArrayColumn", "CategoricalColumn", "IdColumn", "NumericColumn", "column_from_dict"]
