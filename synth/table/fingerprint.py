"""Statistical fingerprints: a table summarised by per-column statistics and a Gaussian-copula
correlation matrix, small enough to leave the data owner's premises, rich enough to fit the
`fingerprint` family's copula engine (`synth.engine.copula`) with no raw rows.

    fp = build_fingerprint("data.parquet")          # two streaming passes, bounded memory
    write_fingerprint(fp, "fp.json")
    fp = read_fingerprint("fp.json")                # validated: malformed fields are named

Format (JSON, `"format": "synth-fingerprint"`, `"version": 1`):

    rows            number of rows summarised
    source          {"uri", "sha256", "bytes"} of the data it came from (optional)
    columns[]       name, kind (continuous|integer|datetime|categorical|boolean), arrow_type,
                    null_share, and
                      numeric kinds: mean, std, min, max, quantiles [[p, value], ...] (p from 0
                        to 1; a piecewise-linear CDF), for datetime resolution_s and origin
                        (the minimum in the column's own unit); values are seconds since epoch
                      categorical kinds: frequencies [[value, share], ...] of non-null values
    correlation     {"method": "gaussian-copula", "dims": [[column, "value"|"null"], ...],
                     "matrix": [[...]]} on normal scores: a numeric column's value dimension is
                     Phi^-1 of its CDF, a categorical one is Phi^-1 of a uniform draw inside the
                     category's interval of the cumulative frequencies (null first, then the
                     values in the order `frequencies` lists them), and a nullable numeric column adds a "null"
                     dimension whose low interval [0, null_share) means missing.

Hand-written fingerprints may give only mean/std/min/max for a numeric column (a normal
truncated to [min, max] is then assumed) and may leave out `correlation` (independent columns).
"""
from __future__ import annotations

import json
import math
import warnings
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.special import ndtri

from synth.io import storage
from synth.errors import ConfigError, DataError, validated

FORMAT = "synth-fingerprint"
VERSION = 1
NUMERIC_KINDS = ("continuous", "integer", "datetime")
CATEGORICAL_KINDS = ("categorical", "boolean")
PD_TOL = 1e-8  # smallest eigenvalue a correlation matrix may have before it is repaired


class FingerprintWarning(UserWarning):
    """A fingerprint was usable only after a repair (e.g. of its correlation matrix)."""


# -- the schema --------------------------------------------------------------------------------
class ColumnFingerprint(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    kind: Literal["continuous", "integer", "datetime", "categorical", "boolean"]
    arrow_type: str
    null_share: float = Field(0.0, ge=0.0, le=1.0)
    # numeric kinds
    mean: float | None = None
    std: float | None = Field(None, ge=0.0)
    min: float | None = None
    max: float | None = None
    quantiles: list[tuple[float, float]] | None = None
    resolution_s: float | None = Field(None, gt=0.0)
    origin: int | None = None
    # categorical kinds
    frequencies: list[tuple[Any, float]] | None = None

    @model_validator(mode="after")
    def _by_kind(self):
        if self.null_share >= 1.0:
            raise ValueError("null_share is 1 (the column is entirely null); drop the column")
        if self.kind in NUMERIC_KINDS:
            if self.frequencies is not None:
                raise ValueError(f"frequencies are for categorical columns; a {self.kind} column gives quantiles "
                                 "or mean/std/min/max")
            for f in ("min", "max"):
                v = getattr(self, f)
                if v is None or not math.isfinite(v):
                    raise ValueError(f"{f} is required for {self.kind} columns and must be a finite number")
            if self.min > self.max:
                raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
            if self.quantiles is not None:
                q = np.asarray(self.quantiles, dtype=float)
                if q.ndim != 2 or len(q) < 2 or not np.isfinite(q).all():
                    raise ValueError("quantiles must be at least two finite [p, value] pairs")
                if abs(q[0, 0]) > 1e-12 or abs(q[-1, 0] - 1) > 1e-12:
                    raise ValueError("quantiles must start at p = 0 (the minimum) and end at p = 1 (the maximum)")
                if np.any(np.diff(q[:, 0]) <= 0):
                    raise ValueError("quantile probabilities must be strictly increasing")
                if np.any(np.diff(q[:, 1]) < 0):
                    i = int(np.argmax(np.diff(q[:, 1]) < 0))
                    raise ValueError(f"quantile values must be non-decreasing; value at p={q[i + 1, 0]} "
                                     f"({q[i + 1, 1]}) is below the one at p={q[i, 0]} ({q[i, 1]})")
            elif self.mean is None or self.std is None:
                raise ValueError(f"a {self.kind} column needs quantiles, or mean and std (with min and max)")
            if self.kind == "datetime" and (self.resolution_s is None or self.origin is None):
                raise ValueError("a datetime column needs resolution_s and origin")
        else:
            if not self.frequencies:
                raise ValueError(f"a {self.kind} column needs frequencies: [[value, share], ...]")
            shares = np.asarray([s for _, s in self.frequencies], dtype=float)
            if not np.isfinite(shares).all() or np.any(shares < 0):
                raise ValueError("frequency shares must be finite and >= 0")
            if shares.sum() <= 0:
                raise ValueError("frequency shares sum to 0")
            values = [v for v, _ in self.frequencies]
            if any(v is None for v in values):
                raise ValueError("frequencies list non-null values; give the null share as null_share")
            if len({json.dumps(v) for v in values}) != len(values):
                raise ValueError("frequencies list a value twice")
        return self

    @property
    def numeric(self) -> bool:
        return self.kind in NUMERIC_KINDS


class CorrelationFingerprint(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Literal["gaussian-copula"] = "gaussian-copula"
    dims: list[tuple[str, Literal["value", "null"]]]
    matrix: list[list[float]]


class Fingerprint(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["synth-fingerprint"] = FORMAT
    version: int = VERSION
    rows: int | None = Field(None, ge=1)
    source: dict[str, Any] | None = None
    columns: list[ColumnFingerprint] = Field(min_length=1)
    correlation: CorrelationFingerprint | None = None
    privacy: dict[str, Any] | None = None  # a differentially private fingerprint's guarantee (synth.privacy.fingerprint)

    @model_validator(mode="after")
    def _consistent(self):
        if self.version != VERSION:
            raise ValueError(f"version {self.version} is not supported; this synth reads version {VERSION}")
        names = [c.name for c in self.columns]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"columns {dup} appear more than once")
        return self

    def dims(self) -> list[tuple[str, str]]:
        """The latent dimensions a sampler needs, in column order."""
        out = []
        for c in self.columns:
            out.append((c.name, "value"))
            if c.numeric and c.null_share > 0:
                out.append((c.name, "null"))
        return out


def parse_fingerprint(raw: Any, source: str = "") -> Fingerprint:
    if not isinstance(raw, dict):
        raise ConfigError(f"fingerprint {source} must be a JSON object, got {type(raw).__name__}")
    fp = validated(Fingerprint, raw, f"fingerprint {source}")
    for c in fp.columns:  # the Arrow type must be one we can produce
        try:
            arrow_type_from_string(c.arrow_type)
        except (ValueError, TypeError, KeyError, IndexError):
            raise ConfigError(f"fingerprint {source} is invalid:\n  columns ({c.name!r}).arrow_type: unknown Arrow "
                              f"type {c.arrow_type!r} (e.g. int64, double, string, bool, timestamp[us])") from None
    return fp


def read_fingerprint(uri: str) -> Fingerprint:
    if not storage.exists(uri):
        raise ConfigError(f"fingerprint {uri!r} does not exist; write one with `synth fingerprint DATA -o FP.json`")
    try:
        raw = json.loads(storage.read_bytes(uri))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"fingerprint {uri!r} is not valid JSON ({e})") from None
    return parse_fingerprint(raw, repr(uri))


def write_fingerprint(fp: dict | Fingerprint, uri: str) -> None:
    data = fp.model_dump(mode="json") if isinstance(fp, Fingerprint) else fp
    storage.write_bytes(uri, json.dumps(data, indent=1, allow_nan=False).encode())  # temp name + move


def arrow_type_from_string(s: str) -> pa.DataType:
    from synth.table.columns.categorical import _dictionary_type
    from synth.table.columns.numeric import _parse_type

    if s.startswith("dictionary<"):
        value = s.split("values=", 1)[1].split(",", 1)[0].strip()
        return _dictionary_type(s, _parse_type(value))
    return _parse_type(s)


# -- the correlation matrix ---------------------------------------------------------------------
def nearest_correlation(a: np.ndarray, tol: float = 1e-9, max_iter: int = 1000,
                        min_eig: float = 1e-6) -> np.ndarray:
    """The nearest correlation matrix (Frobenius norm) by Higham's (2002) alternating
    projections with Dykstra's correction, then nudged to eigenvalues >= `min_eig` so that it
    has a Cholesky factor."""
    a = (np.asarray(a, dtype=np.float64) + np.asarray(a, dtype=np.float64).T) / 2
    y = a.copy()
    ds = np.zeros_like(a)
    for _ in range(max_iter):
        r = y - ds
        w, v = np.linalg.eigh(r)
        x = (v * np.maximum(w, 0)) @ v.T
        ds = x - r
        y_new = x.copy()
        np.fill_diagonal(y_new, 1.0)
        done = np.linalg.norm(y_new - y) / max(np.linalg.norm(y_new), 1e-12) < tol
        y = y_new
        if done:
            break
    w, v = np.linalg.eigh((y + y.T) / 2)
    y = (v * np.maximum(w, min_eig)) @ v.T
    d = np.sqrt(np.diag(y))
    y = y / d[:, None] / d[None, :]
    np.fill_diagonal(y, 1.0)
    return (y + y.T) / 2


def check_correlation(fp: Fingerprint, on_invalid: Literal["repair", "refuse"] = "repair",
                      source: str = "") -> tuple[np.ndarray, dict]:
    """The correlation matrix over `fp.dims()` (identity without one), validated; a matrix that
    is not positive definite is repaired to the nearest valid one (with a FingerprintWarning) or
    refused. Returns (matrix, report)."""
    dims = fp.dims()
    if fp.correlation is None:
        return np.eye(len(dims)), {"given": False, "repaired": False}
    corr = fp.correlation
    where = f"fingerprint {source} correlation"
    given = [tuple(d) for d in corr.dims]
    if sorted(given) != sorted(dims):
        missing = sorted(set(dims) - set(given))
        extra = sorted(set(given) - set(dims))
        raise ConfigError(f"{where}.dims do not match the columns: missing {missing}, unknown {extra} "
                          "(every column has a 'value' dimension, every nullable numeric column a 'null' one)")
    m = np.asarray(corr.matrix, dtype=np.float64) if corr.matrix else np.zeros((0, 0))
    k = len(given)
    if m.shape != (k, k):
        raise ConfigError(f"{where}.matrix must be {k}x{k} (one row and column per dim), got shape {m.shape}")
    if not np.isfinite(m).all():
        i, j = np.argwhere(~np.isfinite(m))[0]
        raise ConfigError(f"{where}.matrix[{i}][{j}] is {m[i, j]}; entries must be finite")
    bad = np.argwhere(np.abs(m) > 1 + 1e-9)
    if len(bad):
        i, j = bad[0]
        raise ConfigError(f"{where}.matrix[{i}][{j}] = {m[i, j]} ({given[i]} vs {given[j]}) is outside [-1, 1]")
    asym = np.argwhere(np.abs(m - m.T) > 1e-6)
    if len(asym):
        i, j = asym[0]
        raise ConfigError(f"{where}.matrix is not symmetric: [{i}][{j}] = {m[i, j]} but [{j}][{i}] = {m[j, i]}")
    diag = np.argwhere(np.abs(np.diag(m) - 1) > 1e-6)
    if len(diag):
        i = int(diag[0][0])
        raise ConfigError(f"{where}.matrix[{i}][{i}] = {m[i, i]}; the diagonal of a correlation matrix is 1")
    order = [given.index(d) for d in dims]  # reorder to column order
    m = m[np.ix_(order, order)]
    m = (m + m.T) / 2
    np.fill_diagonal(m, 1.0)
    eig = float(np.linalg.eigvalsh(m).min()) if k else 1.0
    report = {"given": True, "repaired": False, "min_eigenvalue": eig}
    if eig < PD_TOL:
        if on_invalid == "refuse":
            raise ConfigError(f"{where}.matrix is not positive definite (smallest eigenvalue {eig:.3g}); fix it, "
                              "or let synth repair it to the nearest valid correlation matrix (--repair)")
        fixed = nearest_correlation(m)
        change = float(np.abs(fixed - m).max())
        warnings.warn(f"{where}.matrix is not positive definite (smallest eigenvalue {eig:.3g}); repaired to the "
                      f"nearest valid correlation matrix (largest entry change {change:.3g})",
                      FingerprintWarning, stacklevel=2)
        report.update(repaired=True, max_change=change)
        m = fixed
    return m, report


# -- building one from data ---------------------------------------------------------------------
def category_order(frequencies: list[tuple[Any, float]], null_share: float) -> tuple[list[Any], np.ndarray]:
    """Categories (None = null) in the order of their latent intervals and their probabilities:
    null first when the column has nulls, then the values in the order `frequencies` lists them.
    Shared by fingerprinting and sampling."""
    total = sum(float(s) for _, s in frequencies)
    cats = [v for v, _ in frequencies]
    probs = [float(s) / total * (1.0 - null_share) for _, s in frequencies]
    if null_share > 0:
        cats, probs = [None, *cats], [null_share, *probs]
    return cats, np.asarray(probs)


TAIL_PROBS = (0.0002, 0.0005, 0.001, 0.002, 0.003, 0.004)


def quantile_probs(points: int) -> np.ndarray:
    """`points` evenly spaced probabilities from 0 to 1, plus finer ones in both tails (heavy
    tails such as capital-gain's 99,999 at 0.5 % of rows decide the mean)."""
    tails = np.asarray(TAIL_PROBS)
    return np.unique(np.round(np.concatenate([np.linspace(0.0, 1.0, points), tails, 1.0 - tails]), 12))


def _uniform_in(lo: np.ndarray, width: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return lo + rng.random(lo.shape) * width


def _slots(arr: pa.Array, index: dict, col) -> np.ndarray:
    """Slot of each value of a categorical column in the latent order `index` (values the codec's
    protection folded away, as the codec stores them)."""
    import pyarrow.compute as pc

    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    enc = pc.dictionary_encode(arr)
    codes = np.asarray(enc.indices.fill_null(-1))
    lut = np.asarray([index[v] for v in col.standin(enc.dictionary.to_pylist())] + [index[None] if None in index else 0],
                     dtype=np.int64)
    return lut[codes]  # -1 (null) reads the last entry


def _orders(columns: list[dict]) -> dict[str, tuple[dict, np.ndarray, np.ndarray]]:
    """Per categorical column: value -> slot, slot interval starts and widths (latent order)."""
    out = {}
    for e in columns:
        if "frequencies" in e:
            cats, probs = category_order(e["frequencies"], e["null_share"])
            cum = np.concatenate([[0.0], np.cumsum(probs)])
            out[e["name"]] = ({v: i for i, v in enumerate(cats)}, cum[:-1], probs)
    return out


def _latent_pass(uri: str, batch_size: int, codec, columns: list[dict], d: int, rng: np.random.Generator,
                 visit) -> None:
    """Stream the data once; `visit(z, slots, batch_moments)` gets each batch's normal scores
    (n, d), the categorical slots and the numeric columns' (count, sum, sum of squares)."""
    from synth.io.data import iter_batches
    from synth.table.columns import CategoricalColumn

    orders = _orders(columns)
    for b in iter_batches(uri, batch_size):
        z = np.empty((b.num_rows, d))
        slots_of: dict[str, np.ndarray] = {}
        moments: dict[str, tuple[int, float, float]] = {}
        k = 0
        for col, e in zip(codec.columns, columns):
            arr = b.column(col.name)
            if isinstance(arr, pa.ChunkedArray):
                arr = arr.combine_chunks()
            if isinstance(col, CategoricalColumn):
                index, lo, probs = orders[col.name]
                slots = slots_of[col.name] = _slots(arr, index, col)
                z[:, k] = ndtri(np.clip(_uniform_in(lo[slots], probs[slots], rng), 1e-9, 1 - 1e-9))
                k += 1
                continue
            z[:, k] = col.encode(arr, rng)[:, 0]  # dequantised normal scores (random for nulls)
            k += 1
            mask = np.asarray(arr.is_null().to_numpy(zero_copy_only=False)) if arr.null_count \
                else np.zeros(len(arr), bool)
            x = np.clip(col._to_float(arr)[~mask], col.min, col.max)  # within the codec's (protected) range
            moments[col.name] = (x.size, float(x.sum()), float((x * x).sum()))
            if e["null_share"] > 0:
                ns = e["null_share"]
                u = np.where(mask, rng.random(len(arr)) * ns, ns + rng.random(len(arr)) * (1 - ns))
                z[:, k] = ndtri(np.clip(u, 1e-9, 1 - 1e-9))
                k += 1
        visit(z, slots_of, moments)


def codec_entries(codec, quantiles: int, null_shares: dict[str, float]) -> list[dict]:
    """The fingerprint's column entries from a codec's per-column CDFs and category frequencies."""
    from synth.table.columns import CategoricalColumn

    columns: list[dict] = []
    for col in codec.columns:
        entry: dict[str, Any] = {"name": col.name, "kind": col.kind, "arrow_type": col.arrow_type,
                                 "null_share": null_shares[col.name]}
        if isinstance(col, CategoricalColumn):
            freqs = [[v, p] for v, p in zip(col.categories, col.probs) if v is not None]
            total = sum(p for _, p in freqs)
            entry["frequencies"] = [[v, p / total] for v, p in freqs]
        else:
            xs, us = col._polyline()
            p = quantile_probs(quantiles)
            q = np.interp(p, us, xs)
            q[0], q[-1] = col.min, col.max
            q = np.maximum.accumulate(q)
            entry.update(min=col.min, max=col.max, quantiles=[[float(a), float(b)] for a, b in zip(p, q)])
            if col.kind == "datetime":
                entry.update(resolution_s=col.resolution, origin=int(col.origin))
        columns.append(entry)
    return columns


def latent_dims(columns: list[dict]) -> list[tuple[str, str]]:
    """The copula's latent dimensions in column order (a nullable numeric column adds "null")."""
    dims = []
    for e in columns:
        dims.append((e["name"], "value"))
        if e["kind"] in NUMERIC_KINDS and e["null_share"] > 0:
            dims.append((e["name"], "null"))
    return dims


def build_fingerprint(uri: str, codec_cfg=None, quantiles: int = 201, seed: int = 0,
                      batch_size: int = 65_536, order_categories: bool = True) -> dict:
    """Fingerprint of the Parquet data at `uri` in streaming passes (statistics; category
    order; moments and normal-score correlations); memory is bounded by the codec's sketches.

    Categories are ordered along the direction in which their rows differ most from the rest
    of the table (the first principal component of each category's mean normal scores of the
    other columns), so the copula's one latent dimension per categorical column carries as much
    of its dependence as one dimension can; `order_categories=False` keeps frequency order."""
    from synth.io.data import input_digest
    from synth.io.data import iter_batches
    from synth.table import CodecConfig, TableCodec
    from synth.table.stats import TableStats

    if quantiles < 3:
        raise ConfigError(f"quantiles must be at least 3, got {quantiles}")
    cfg = codec_cfg or CodecConfig()
    stats = None
    for b in iter_batches(uri, batch_size):
        if stats is None:
            stats = TableStats.empty(b.schema)
        stats.add_batch(b)
    if stats is None or stats.num_rows == 0:
        raise DataError(f"reference data {uri!r} has no rows")
    codec = TableCodec.from_stats(stats, cfg.model_copy(update={"max_onehot": 10**9}))
    n_rows = codec.num_rows

    columns = codec_entries(codec, quantiles, {c: s.nulls / n_rows for c, s in stats.columns.items()})
    dims = latent_dims(columns)
    d = len(dims)
    rng = np.random.default_rng(seed)
    cat_cols = [e for e in columns if "frequencies" in e and len(e["frequencies"]) > 2]
    if order_categories and cat_cols and d > 1:
        sums = {e["name"]: np.zeros((len(e["frequencies"]) + (e["null_share"] > 0), d)) for e in cat_cols}
        counts = {e["name"]: np.zeros(len(sums[e["name"]])) for e in cat_cols}

        def collect(z, slots_of, _m):
            for e in cat_cols:
                sl = slots_of[e["name"]]
                np.add.at(sums[e["name"]], sl, z)
                counts[e["name"]] += np.bincount(sl, minlength=len(counts[e["name"]]))

        _latent_pass(uri, batch_size, codec, columns, d, rng, collect)
        for e in cat_cols:
            own = dims.index((e["name"], "value"))
            w = counts[e["name"]]
            means = np.delete(sums[e["name"]] / np.maximum(w, 1)[:, None], own, axis=1)
            means -= (w[:, None] * means).sum(axis=0) / w.sum()
            v = np.linalg.svd(np.sqrt(w)[:, None] * means, full_matrices=False)[2][0]
            score = means @ v
            offset = int(e["null_share"] > 0)  # null keeps the first interval
            order = np.argsort(score[offset:], kind="stable")
            e["frequencies"] = [e["frequencies"][i] for i in order]

    n = 0
    s1 = np.zeros(d)
    s2 = np.zeros((d, d))
    mom = {e["name"]: np.zeros(3) for e in columns if e["kind"] in NUMERIC_KINDS}

    def accumulate(z, _slots, moments):
        nonlocal n, s1, s2
        n += len(z)
        s1 += z.sum(axis=0)
        s2 += z.T @ z
        for name, m in moments.items():
            mom[name] += m

    _latent_pass(uri, batch_size, codec, columns, d, rng, accumulate)
    mean = s1 / n
    cov = s2 / n - np.outer(mean, mean)
    sd = np.sqrt(np.maximum(np.diag(cov), 1e-12))
    corr = np.clip(cov / sd[:, None] / sd[None, :], -1.0, 1.0)
    np.fill_diagonal(corr, 1.0)
    for e in columns:
        if e["name"] in mom:
            cnt, sx, sxx = mom[e["name"]]
            mu = sx / cnt
            e["mean"] = mu
            e["std"] = math.sqrt(max(sxx / cnt - mu * mu, 0.0))
    source = input_digest(uri)
    return {
        "format": FORMAT, "version": VERSION, "rows": n_rows,
        "source": {k: source[k] for k in ("uri", "sha256", "bytes")},
        "columns": columns,
        "correlation": {"method": "gaussian-copula", "dims": [list(x) for x in dims],
                        "matrix": [[float(v) for v in row] for row in corr]},
    }


__all__ = ["Fingerprint", "FingerprintWarning", "build_fingerprint", "category_order", "quantile_probs", "check_correlation",
           "nearest_correlation", "parse_fingerprint", "read_fingerprint", "write_fingerprint"]
