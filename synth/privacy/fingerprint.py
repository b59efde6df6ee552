"""A differentially private fingerprint (`synth fingerprint DATA --epsilon E --schema FILE`): the
same format as `synth.table.fingerprint` (the `fingerprint` family fits a copula from it), released
under zero-concentrated DP and accounted in one zCDP budget (synth.privacy.zcdp):

1. every column's counts on the cells its declaration fixes (atoms, equal-width bins, categories,
   null; nothing read from the data to choose them) + N(0, sigma_h^2) per cell: d histograms of L2
   sensitivity 1, rho_h = d / (2 sigma_h^2). The quantiles, category frequencies and null shares
   are post-processing of these noisy counts (the codec that `from_schema` builds from them).
2. every row's normal scores under those released CDFs (one per latent dimension; a nullable
   numeric column adds a null dimension), clipped to [-c, c]; the sums of their pairwise products
   (i < j) + N(0, sigma_c^2) each. One row adds z z^T, whose off-diagonal half has L2 norm at most
   |z|^2 / sqrt(2) <= D c^2 / sqrt(2) for D dimensions: rho_c = (D c^2 / sqrt(2))^2 / (2 sigma_c^2).
   The correlation is the noisy sums over rows times the clipped normal's variance, repaired to the
   nearest correlation matrix (post-processing).

The budget is split evenly (rho_h = rho_c = rho / 2) and converted once to (epsilon, delta). The row
count is treated as public, as in every private run; the source's digest is withheld. Noise comes
from OS entropy. Means and standard deviations are left out (the quantiles describe the columns).
"""
from __future__ import annotations

import math
import secrets

import numpy as np
from scipy.stats import norm

from synth.errors import ConfigError, DataError
from synth.privacy import zcdp
from synth.table.schema import ColumnSchema, cell_index, check_declared, measurement_cells

CLIP = 3.0  # normal scores are clipped to [-CLIP, CLIP] before their products are summed


def clipped_normal_variance(c: float) -> float:
    """E[clip(Z, -c, c)^2] for a standard normal Z (public: divides the noisy sums)."""
    tail = norm.sf(c)
    return 1 - 2 * tail - 2 * c * norm.pdf(c) + 2 * c * c * tail


def build_private_fingerprint(uri: str, declared: dict[str, ColumnSchema], epsilon: float, delta: float = 1e-5,
                              codec_cfg=None, bins: int = 32, quantiles: int = 201, batch_size: int = 65_536,
                              rng: np.random.Generator | None = None) -> dict:
    """The fingerprint of the Parquet data at `uri` under (epsilon, delta)-DP (its `privacy` block
    states the guarantee and every number that re-derives it). `rng` is for tests only (a known seed
    voids the guarantee)."""
    from synth.io.data import iter_batches
    from synth.table import CodecConfig, TableCodec
    from synth.table.fingerprint import FORMAT, VERSION, _latent_pass, codec_entries, latent_dims, \
        nearest_correlation

    if not epsilon > 0 or not 0 < delta < 1:
        raise ConfigError(f"--epsilon must be > 0 and --delta in (0, 1), got {epsilon:g} and {delta:g}")
    rng = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
    cfg = (codec_cfg or CodecConfig()).model_copy(update={"max_onehot": 10**9})
    schema, n, counts = None, 0, {}
    for b in iter_batches(uri, batch_size):
        if schema is None:
            schema = b.schema
            fields = [f.name for f in check_declared(schema, declared, cfg.ignore)]
            counts = {c: np.zeros(measurement_cells(declared[c], bins)) for c in fields}
        n += b.num_rows
        for c in fields:
            cells, undeclared = cell_index(b.column(c), declared[c], bins, c)
            if undeclared.any():
                raise DataError(f"column {c!r} holds values outside its declared categories; add every possible "
                                f"value to its categories in the schema (a private fingerprint names no data value)")
            counts[c] += np.bincount(cells, minlength=len(counts[c]))
    if schema is None or n == 0:
        raise DataError(f"reference data {uri!r} has no rows")
    if delta >= 1.0 / n:
        raise ConfigError(f"--delta {delta:g} must be below 1 / rows ({1 / n:.3g}); lower it to at most "
                          f"{0.1 / n:.1g}")

    rho = zcdp.cdp_rho(epsilon, delta)
    d = len(fields)
    sigma_h = zcdp.gaussian_sigma(rho / 2 / d)
    masses = {c: v + rng.normal(0.0, sigma_h, v.shape) for c, v in counts.items()}
    codec = TableCodec.from_schema(schema, declared, cfg, num_rows=n, bins=bins, masses=masses)
    null_shares = {}
    for c in fields:  # the null cell is the last; its share of the (clipped) noisy counts
        m = np.clip(masses[c], 0, None)
        null_shares[c] = float(m[-1] / m.sum()) if declared[c].nullable and m.sum() > 0 else 0.0
    columns = codec_entries(codec, quantiles, null_shares)
    dims = latent_dims(columns)
    big_d = len(dims)

    sums = np.zeros((big_d, big_d))

    def accumulate(z, _slots, _moments):
        zc = np.clip(z, -CLIP, CLIP)
        sums[:] += zc.T @ zc

    _latent_pass(uri, batch_size, codec, columns, big_d, rng, accumulate)
    sensitivity = big_d * CLIP ** 2 / math.sqrt(2)
    sigma_c = zcdp.gaussian_sigma(rho / 2, sensitivity)
    noise = np.triu(rng.normal(0.0, sigma_c, (big_d, big_d)), 1)
    corr = (np.triu(sums, 1) + noise) / (n * clipped_normal_variance(CLIP))
    corr = np.clip(corr + corr.T, -1.0, 1.0)
    np.fill_diagonal(corr, 1.0)
    corr = nearest_correlation(corr) if big_d > 1 else corr
    parts = {"histograms": d * zcdp.gaussian_rho(sigma_h), "correlation": zcdp.gaussian_rho(sigma_c, sensitivity)}
    spent = zcdp.cdp_epsilon(sum(parts.values()), delta)
    return {
        "format": FORMAT, "version": VERSION, "rows": n,
        "source": {"uri": uri, "sha256": "withheld (private fingerprint)"},
        "columns": columns,
        "correlation": {"method": "gaussian-copula", "dims": [list(x) for x in dims],
                        "matrix": [[float(v) for v in row] for row in corr]},
        "privacy": {
            "dp": True, "epsilon": spent, "delta": delta, "epsilon_budget": epsilon,
            "accountant": "zCDP (rho adds up; (epsilon, delta) by Canonne-Kamath-Steinke 2020)",
            "mechanism": "Gaussian 1-way histograms on the declared grid; Gaussian sums of pairwise products of "
                         "clipped normal scores (under the released CDFs) for the copula correlation",
            "rho": sum(parts.values()), "rho_parts": parts,
            "histograms": d, "noise_std_histogram": sigma_h,
            "dims": big_d, "clip": CLIP, "sensitivity_correlation": sensitivity, "noise_std_correlation": sigma_c,
            "composition": "zCDP: histograms / (2 noise_std_histogram^2) + sensitivity_correlation^2 / "
                           "(2 noise_std_correlation^2), converted once at delta",
            "bins": bins, "declared": {c: declared[c].model_dump(mode="json") for c in fields},
            "unit": "one row (add/remove adjacency); the number of rows is treated as public",
        },
    }


def read_schema(uri: str) -> dict[str, ColumnSchema]:
    """A declared schema file (YAML or JSON: column -> {kind, min, max | categories, ...}), or the
    `privacy.schema` of a run config."""
    import yaml

    from synth.errors import validated
    from synth.io import storage

    if not storage.exists(uri):
        raise ConfigError(f"--schema {uri!r} does not exist")
    raw = yaml.safe_load(storage.read_bytes(uri))
    if isinstance(raw, dict) and isinstance(raw.get("privacy"), dict) and "schema" in raw["privacy"]:
        raw = raw["privacy"]["schema"]
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"--schema {uri!r} must map each column to its declaration (docs/privacy.md)")
    return {str(k): validated(ColumnSchema, v, f"--schema {uri!r} column {k!r}") for k, v in raw.items()}


__all__ = ["build_private_fingerprint", "clipped_normal_variance", "read_schema"]
