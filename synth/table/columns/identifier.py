"""Identifier columns (kind `id`): not modelled; decoding writes fresh synthetic identifiers.

A column of names, e-mails, customer numbers ... carries no distribution worth learning and every
value identifies someone, so the codec stores only its format and no value. Each row gets a new
random identifier in that format, keyed like every other per-row draw (seed, row): `email` ->
`user-<16 hex>@example.invalid`, `uuid` -> a version-4 UUID, `digits` -> a zero-padded number of the
column's usual length, `integer` -> a random integer of 15 digits (fewer for
narrow integer types), `text` -> `<column>-<16 hex>`. The
`.invalid` top-level domain is reserved (RFC 2606): no generated address can reach anyone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from synth.table.columns.categorical import _dictionary_type

FORMATS = ("email", "uuid", "digits", "integer", "text")
INT_DIGITS = {"int8": 2, "uint8": 2, "int16": 4, "uint16": 4, "int32": 9, "uint32": 9}  # others: 15


@dataclass
class IdColumn:
    name: str
    arrow_type: str
    nullable: bool
    format: str  # one of FORMATS
    length: int = 0  # digits: the number of digits
    null_share: float = 0.0
    kind: str = "id"
    width: int = 0  # no features: the generator never sees the column

    def decode(self, n: int, rng: Any) -> pa.Array:
        a, b, c = (self._bits(n, rng, s) for s in "abc")
        if self.format == "integer":
            d = INT_DIGITS.get(self.arrow_type, 15)
            values = pa.array((10 ** (d - 1) + (a % (9 * 10 ** (d - 1))).astype(np.int64)).tolist(), pa.int64())
        else:
            hexes = [f"{int(x) >> 1:013x}{int(y) >> 1:013x}{int(z) >> 1:013x}" for x, y, z in zip(a, b, c)]  # 3 x 52 bits
            if self.format == "email":
                vals = [f"user-{h[:16]}@example.invalid" for h in hexes]
            elif self.format == "uuid":
                vals = [f"{h[:8]}-{h[8:12]}-4{h[12:15]}-{'89ab'[int(h[15], 16) % 4]}{h[16:19]}-{h[19:31]}" for h in hexes]
            elif self.format == "digits":
                d = max(1, min(self.length, 40))
                vals = [f"{int(h, 16) % 10**d:0{d}d}" for h in hexes]
            else:
                vals = [f"{self.name}-{h[:16]}" for h in hexes]
            values = pa.array(vals, pa.string())
        if self.null_share:
            values = pc.if_else(pa.array(self._bits(n, rng, "null") < self.null_share * 2**53), None, values)
        if self.arrow_type.startswith("dictionary"):
            return values.dictionary_encode().cast(_dictionary_type(self.arrow_type, pa.string()))
        return values.cast(pa.type_for_alias(self.arrow_type))

    def _bits(self, n: int, rng: Any, stream: str) -> np.ndarray:
        """53 random bits per row: from the row-keyed uniforms when sampling, else from `rng`."""
        if hasattr(rng, "uniforms"):  # synth.engine.rowstreams.RowUniforms
            u = rng.uniforms(f"{self.name}/{stream}")
        else:
            u = (rng if rng is not None else np.random.default_rng(0)).random(n)
        return (u * 2**53).astype(np.uint64)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "id", "arrow_type": self.arrow_type, "nullable": self.nullable,
                "format": self.format, "length": self.length, "null_share": self.null_share}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "IdColumn":
        return cls(d["name"], d["arrow_type"], d["nullable"], d["format"], d["length"], d["null_share"])
