"""Continuous, integer and datetime columns through a quantile-normal transform.

The monotone map x -> u in [0, 1] is the (sketched) empirical CDF: light support points are
joined linearly through their mid-CDF, heavy points (point masses such as 0 in capital-gain)
become flat segments [F(v-), F(v)] so that every u in the segment decodes to exactly v.
Then z = Phi^-1(u). Training can dequantise: a heavy value gets a random u in its segment, so
the feature is continuous and close to N(0, 1). Nullable columns add a +/-1 missing flag.
With value protection (`min_count` k) the support keeps exact points only for values seen at
least k times, the rest as centroids of >= k rows, and the range ends at the k-th smallest and
largest values (`synth.table.protection.protected_support`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from scipy.special import ndtr, ndtri

from synth.errors import ConfigError, DataError
from synth.table.protection import protected_support
from synth.table.stats import ColumnStats

HEAVY_SHARE = 1e-3
U_EPS = 1e-9  # the codec's u stays in [U_EPS, 1 - U_EPS]
Z_MAX = float(ndtri(1 - U_EPS))  # so its quantile-normal feature z stays in [-Z_MAX, Z_MAX]
U_SHRINK = 1e-10  # conditions: u-intervals are shrunk by this much (float round trips stay inside)


@dataclass
class NumericColumn:
    name: str
    kind: str  # continuous | integer | datetime
    arrow_type: str
    nullable: bool
    knots_x: np.ndarray  # support points (datetime: seconds since epoch)
    knots_f: np.ndarray  # CDF before each point, then after the last: len = len(knots_x) + 1
    heavy: np.ndarray  # bool per support point
    min: float
    max: float
    resolution: float = 0.0  # datetime: step in seconds; integer: 1
    origin: int = 0  # datetime: the minimum in the column's own unit (exact integer)

    @classmethod
    def fit(cls, stats: ColumnStats, kind: str, arrow_type: pa.DataType, nullable: bool,
            min_count: int | None = None) -> "NumericColumn":
        sk = stats.sketch
        x, w = sk.values.copy(), sk.weights
        share = w / w.sum()
        heavy = (w > 1) & (share >= HEAVY_SHARE) if sk.exact else share >= max(HEAVY_SHARE, 2.0 / sk.capacity)
        lo, hi = stats.min, stats.max
        if min_count is not None:
            x, w, heavy, lo, hi = protected_support(x, w, heavy, min_count)
        f = np.concatenate([[0.0], np.cumsum(w / w.sum())])
        f[-1] = 1.0
        res = 0.0
        origin = 0
        if kind == "datetime":
            from synth.table.stats import _unit_ns

            unit_s = _unit_ns(arrow_type) / 1e9
            res = stats.resolution * unit_s
            origin = stats.imin + int(round((lo - stats.min) / unit_s))  # the (protected) minimum, in the unit
        elif kind == "integer":
            res = 1.0
        return cls(stats.name, kind, str(arrow_type), nullable, x, f, heavy, lo, hi, res, origin)

    # -- the polyline used by both directions ---------------------------------------------
    def _polyline(self) -> tuple[np.ndarray, np.ndarray]:
        if not hasattr(self, "_poly"):
            xs, us = [], []
            for i, v in enumerate(self.knots_x):
                lo, hi = self.knots_f[i], self.knots_f[i + 1]
                if self.heavy[i]:
                    xs += [v, v]
                    us += [lo, hi]
                else:
                    xs.append(v)
                    us.append(0.5 * (lo + hi))
            # compressed sketches hold centroids: pin the exact extremes to the CDF ends
            if self.min < xs[0]:
                xs.insert(0, self.min)
                us.insert(0, U_EPS)
            if self.max > xs[-1]:
                xs.append(self.max)
                us.append(1 - U_EPS)
            self._poly = (np.asarray(xs), np.asarray(us))
        return self._poly

    @property
    def width(self) -> int:
        return 2 if self.nullable else 1

    def bounds(self) -> tuple[list[float], list[float]]:
        return ([-Z_MAX, -1.0], [Z_MAX, 1.0]) if self.nullable else ([-Z_MAX], [Z_MAX])

    def encode(self, arr: pa.Array, rng: np.random.Generator | None = None, strict: bool = True) -> np.ndarray:
        n = len(arr)
        mask = np.asarray(arr.is_null().to_numpy(zero_copy_only=False)) if arr.null_count else np.zeros(n, bool)
        x = self._to_float(arr)
        if not np.isfinite(x).all():
            raise DataError(f"column {self.name!r} holds NaN or infinite values; replace them with nulls (missing "
                            "values are modelled) or with finite numbers")
        xs, us = self._polyline()
        u = _interp_monotone(x, xs, us)
        # values sitting exactly on a heavy point: middle of its flat segment (or random in it)
        idx = np.clip(np.searchsorted(self.knots_x, x), 0, len(self.knots_x) - 1)
        on_heavy = self.heavy[idx] & (self.knots_x[idx] == x)
        lo, hi = self.knots_f[idx], self.knots_f[idx + 1]
        r = rng.random(n) if rng is not None else np.full(n, 0.5)
        u = np.where(on_heavy, lo + r * (hi - lo), u)
        z = ndtri(np.clip(u, U_EPS, 1 - U_EPS))
        if rng is not None:
            z = np.where(mask, rng.standard_normal(n), z)
        else:
            z = np.where(mask, 0.0, z)
        if not self.nullable:
            return z[:, None]
        return np.stack([z, np.where(mask, 1.0, -1.0)], axis=1)

    def decode(self, feats: np.ndarray, rng: np.random.Generator | None = None) -> pa.Array:
        xs, us = self._polyline()
        u = ndtr(feats[:, 0].astype(np.float64))
        x = np.interp(u, us, xs)
        x = np.clip(x, self.min, self.max)
        mask = feats[:, 1] > 0 if self.nullable else None
        return self._from_float(x, mask)

    # -- conditions (synth.engine.sampling) -----------------------------------------------
    def condition(self, value: Any) -> tuple[float, float, bool]:
        """A condition a user gives for this column, as (low, high, exact) in the column's float
        space (seconds since the epoch for datetimes): a value (`30`, `"2021-03-01"`), a range
        `{"min": 30, "max": 40}` or the text `"30..40"`, either end open (`"30.."`, `"..40"`)."""
        if isinstance(value, dict):
            extra = set(value) - {"min", "max"}
            if extra or not value:
                raise ConfigError(f"condition on {self.name!r}: a range is {{\"min\": ..., \"max\": ...}} (either may be "
                                  f"left out), got the keys {sorted(map(str, value))[:5]}")
            lo, hi = value.get("min"), value.get("max")
        elif isinstance(value, str) and ".." in value:
            lo, hi = (p.strip() or None for p in value.split("..", 1))
            if lo is None and hi is None:
                raise ConfigError(f"condition on {self.name!r}: the range '..' has no end; give min..max, min.. or ..max")
        else:
            v = self.condition_value(value)
            if self.kind == "integer" and not float(v).is_integer():
                raise ConfigError(f"condition on {self.name!r} (integer): {str(value)[:40]!r} is not an integer; give "
                                  "an integer, or a range min..max")
            return v, v, True
        low = -np.inf if lo is None else self.condition_value(lo)
        high = np.inf if hi is None else self.condition_value(hi)
        if low > high:
            raise ConfigError(f"condition on {self.name!r}: the range's min is above its max; give min <= max")
        return low, high, False

    def condition_value(self, value: Any) -> float:
        """One end of a condition, parsed as this column's kind, in its float space."""
        what = "an ISO date or timestamp such as 2021-03-01 or 2021-03-01T12:00:00" if self.kind == "datetime" \
            else ("an integer" if self.kind == "integer" else "a number")
        bad = ConfigError(f"condition on {self.name!r} ({self.kind}): {str(value)[:40]!r} is not {what}; "
                          f"give {what}, or a range min..max")
        if value is None or isinstance(value, (bool, np.bool_)):
            raise bad
        if self.kind == "datetime":
            import pandas as pd

            if isinstance(value, (int, float, np.number)):
                raise bad
            try:
                t = pd.Timestamp(value)
            except (ValueError, TypeError, OverflowError):
                raise bad from None
            if t is pd.NaT:
                raise bad
            if t.tzinfo is not None:  # Arrow holds instants in UTC
                t = t.tz_convert("UTC").tz_localize(None)
            return (t - pd.Timestamp(0)).total_seconds()
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise bad from None
        if not np.isfinite(v):
            raise bad
        return v

    def u_interval(self, low: float, high: float) -> tuple[float, float] | None:
        """The CDF values u (the quantile-normal feature is Phi^-1(u)) that decode into [low, high]:
        an interval, since decoding is monotone, shrunk inward by a hair so that float round trips
        stay inside. None when no value of [low, high] is ever generated (outside the support the
        codec stores, or between the values of a column of point values)."""
        low, high = max(low, self.min), min(high, self.max)
        if self.kind in ("integer", "datetime"):  # decoded values are rounded to whole steps
            base, step = (0.0, 1.0) if self.kind == "integer" else (self.min, self.resolution)
            if step > 0:
                first, last = np.ceil((low - base) / step - 1e-9), np.floor((high - base) / step + 1e-9)
                if first > last:
                    return None
                low, high = base + (first - 0.5) * step, base + (last + 0.5) * step
        if low > high:
            return None
        xs, us = self._polyline()
        i = int(np.searchsorted(xs, low, side="left"))  # the first support point >= low
        if i == len(xs):
            return None
        a = 0.0 if i == 0 else us[i - 1] + (low - xs[i - 1]) / (xs[i] - xs[i - 1]) * (us[i] - us[i - 1])
        j = int(np.searchsorted(xs, high, side="right")) - 1  # the last support point <= high
        if j < 0:
            return None
        b = 1.0 if j == len(xs) - 1 else us[j] + (high - xs[j]) / (xs[j + 1] - xs[j]) * (us[j + 1] - us[j])
        if b < a or (b == a and self.kind != "continuous"):
            return None
        d = min(U_SHRINK, 0.25 * (b - a))
        return float(a + d), float(b - d)

    def to_arrow(self, values: np.ndarray) -> pa.Array:
        """Values in the column's float space (conditions) as an array of its Arrow type."""
        return self._from_float(np.asarray(values, dtype=np.float64), None)

    # -- Arrow <-> float ------------------------------------------------------------------
    def _to_float(self, arr: pa.Array) -> np.ndarray:
        if self.kind == "datetime":
            from synth.table.stats import _unit_ns

            from synth.table.stats import temporal_ints

            unit = _unit_ns(arr.type)
            ints = temporal_ints(arr)
            return ints.astype(np.float64) * (unit / 1e9)
        return arr.cast(pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False)

    def _from_float(self, x: np.ndarray, mask: np.ndarray | None) -> pa.Array:
        t = _parse_type(self.arrow_type)
        if self.kind == "datetime":
            from synth.table.stats import _unit_ns

            unit_s = _unit_ns(t) / 1e9
            steps = np.rint((x - self.min) / self.resolution).astype(np.int64)
            step_units = int(round(self.resolution / unit_s))
            ints = self.origin + steps * step_units
            from synth.table.stats import ints_to_temporal

            return ints_to_temporal(ints, mask, t)
        if self.kind == "integer":
            return pa.array(np.rint(x).astype(np.int64), mask=mask).cast(t)
        return pa.array(x, type=pa.float64(), mask=mask).cast(t)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "arrow_type": self.arrow_type, "nullable": self.nullable,
            "knots_x": self.knots_x.tolist(), "knots_f": self.knots_f.tolist(), "heavy": self.heavy.tolist(),
            "min": self.min, "max": self.max, "resolution": self.resolution, "origin": self.origin,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NumericColumn":
        return cls(d["name"], d["kind"], d["arrow_type"], d["nullable"], np.asarray(d["knots_x"], float),
                   np.asarray(d["knots_f"], float), np.asarray(d["heavy"], bool), d["min"], d["max"],
                   d["resolution"], d["origin"])


def _interp_monotone(x: np.ndarray, xs: np.ndarray, us: np.ndarray) -> np.ndarray:
    """Linear interpolation on a non-decreasing xs that may repeat a value (flat segments)."""
    k = np.clip(np.searchsorted(xs, x, side="right") - 1, 0, len(xs) - 1)
    k1 = np.minimum(k + 1, len(xs) - 1)
    dx = xs[k1] - xs[k]
    t = np.where(dx > 0, (x - xs[k]) / np.where(dx > 0, dx, 1.0), 0.0)
    u = us[k] + np.clip(t, 0.0, 1.0) * (us[k1] - us[k])
    return np.where(x < xs[0], us[0], u)


_TYPES: dict[str, pa.DataType] = {}


def _parse_type(s: str) -> pa.DataType:
    """Arrow type from its string form (ints, floats, timestamps with unit/tz, dates)."""
    if s not in _TYPES:
        if s.startswith("timestamp["):
            inner = s[len("timestamp["):-1].split(",")
            unit = inner[0].strip()
            tz = inner[1].split("=", 1)[1].strip() if len(inner) > 1 else None
            _TYPES[s] = pa.timestamp(unit, tz=tz)
        elif s == "date32[day]":
            _TYPES[s] = pa.date32()
        elif s == "date64[ms]":
            _TYPES[s] = pa.date64()
        else:
            _TYPES[s] = pa.type_for_alias(s)
    return _TYPES[s]
