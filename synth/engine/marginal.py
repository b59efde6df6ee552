"""The marginal engine (family "marginal"): a graphical model fitted to noisy low-order marginals
(AIM or MST on Private-PGM, `synth.privacy.marginal`), the private family of choice for tables.

Every modelled column is discretised on the cells its declaration in `privacy.schema` fixes
(`synth.table.schema.NumericGrid`: atoms, equal-width bins, categories, a null cell when
nullable); nothing is read from the data to choose them. The fit measures marginals under a
zCDP budget and fits the model; sampling draws cells row by row along the junction tree
(`synth.privacy.pgm.Sampler`) and turns each cell into a value: the category, the atom, or a
uniform draw inside the bin (an integer bin draws among its integers). Conditions on categorical
columns are evidence on the model, so conditioned rows come from the model's exact conditional.

One pass, no sampler: `sampler`, `steps` and `guidance` are accepted and ignored. Without
`privacy.enabled` the same algorithm runs with exact counts and greedy selection.
"""
from __future__ import annotations

import math
import time
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from synth.engine.onepass import OnePassEngine
from synth.errors import ConfigError, DataError
from synth.io.artifact import Artifact
from synth.table import TableCodec
from synth.table.columns import CategoricalColumn
from synth.table.schema import ColumnSchema, NumericGrid, cell_index


class MarginalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    family: Literal["marginal"] = "marginal"
    method: Literal["aim", "mst"] = Field(
        "aim", description="aim: adaptive rounds over all pairs and the target's triples (McKenna et al. 2022); "
                           "mst: a spanning tree of pairs (McKenna et al. 2021)")
    max_model_mb: float = Field(25.0, gt=0, description="AIM: the junction tree's size limit (MB of float64 cells)")
    rounds_per_column: int = Field(8, ge=1, le=64, description="AIM: T = this x columns rounds' worth of budget "
                                                               "at the start (the most rounds it makes)")
    per_round: int = Field(3, ge=1, le=64, description="AIM: cliques selected and measured per round, before "
                                                        "one refit of the model (each selection and measurement "
                                                        "is charged; the refits are the fit's time)")
    round_iters: int = Field(200, ge=10, le=10_000, description="AIM: Private-PGM iterations after each round "
                                                                 "(warm started; `iters` for the final fit)")
    shares: tuple[float, float, float] = Field(
        (1 / 3, 1 / 3, 1 / 3), description="MST: shares of the budget (rho) for the 1-way measurements, the "
                                           "pair selection and the pair measurements")
    sigma: float | None = Field(None, gt=0, description="MST: fix the noise std of every measurement (counts) "
                                                        "instead of deriving it from privacy.epsilon; refused if over "
                                                        "budget")
    iters: int = Field(1000, ge=50, le=100_000, description="Private-PGM mirror-descent iterations")
    bins: int = Field(32, ge=2, le=10_000, description="cells per numeric column unless declared (privacy.bins "
                                                       "is used when privacy is enabled)")
    # the fitted state (written by the fit; a config from the user leaves these empty)
    declared: dict[str, ColumnSchema] = Field(default_factory=dict)
    columns: list[str] = Field(default_factory=list)
    sizes: list[int] = Field(default_factory=list, description="cells per column on the declared grid")
    merged: list[int] = Field(default_factory=list, description="cells per column after merging rare cells")
    cliques: list[list[str]] = Field(default_factory=list)
    # the request settings of the shared sampling protocol (one-pass: validated, then ignored)
    sampler: str = "ddim"
    steps: int = Field(1, ge=1)
    guidance: float = Field(1.0, ge=0)
    sample_batch_size: int = Field(65_536, ge=1)

    @model_validator(mode="after")
    def _shares(self):
        if min(self.shares) <= 0 or not math.isclose(sum(self.shares), 1.0, rel_tol=1e-6):
            raise ValueError(f"model.shares {list(self.shares)} must be three positive shares adding up to 1")
        return self


class MarginalEngine(OnePassEngine):
    family = "marginal"

    def __init__(self, config: MarginalConfig, codec: TableCodec, tensors: dict[str, Tensor] | None = None):
        self.config = config
        self.codec = codec
        self.cond_columns = [c for c in codec.categorical_names() if c in config.columns]
        self.cond_cards = [config.sizes[config.columns.index(c)] for c in self.cond_columns]
        self.tensors = tensors or {}
        self._sampler = None

    # -- discretisation on the declared grid ---------------------------------------------------
    def grid(self, name: str) -> NumericGrid:
        return NumericGrid.of(self.config.declared[name], self.config.bins)

    def cells_of_column(self, name: str, arr: pa.Array) -> np.ndarray:
        """Cell of every value (atoms, bins, categories; null last when the column is nullable).
        Errors name the column and never a value (these are private rows)."""
        decl = self.config.declared[name]
        cells, undeclared = cell_index(arr, decl, self.config.bins, name)
        if undeclared.any():
            raise DataError(f"column {name!r} holds values outside its declared categories; add every possible "
                            f"value to privacy.schema.{name}.categories (a private run names no data value)")
        size = self.config.sizes[self.config.columns.index(name)]
        if not decl.nullable and (cells >= size).any():
            raise DataError(f"column {name!r} holds nulls but privacy.schema.{name} is not nullable; set "
                            f"`nullable: true` there")
        return cells

    def discretise(self, table: pa.Table) -> np.ndarray:
        return np.stack([self.cells_of_column(n, table.column(n)) for n in self.config.columns], axis=1)

    # -- the sampling protocol (synth.engine.onepass) ------------------------------------------
    @property
    def sampler_(self):
        if self._sampler is None:
            from synth.privacy.pgm import Sampler

            pots = [(tuple(cl), self.tensors[f"potential/{i}"].double().numpy())
                    for i, cl in enumerate(self.config.cliques)]
            self._sampler = Sampler(self.config.columns, self.config.merged, pots)
        return self._sampler

    def prior(self, n: int, generator: torch.Generator) -> Tensor:
        return torch.rand((n, 2 * len(self.config.columns)), generator=generator, dtype=torch.float64)

    def to(self, device: torch.device | str) -> "MarginalEngine":
        return self  # numpy on the CPU; nothing to move

    def condition_slots(self, name: str, values: list) -> np.ndarray:
        """Condition slots are cells on the declared grid (exact for every declared category)."""
        decl = self.config.declared[name]
        index = {repr(v): i for i, v in enumerate(decl.categories)}
        if decl.nullable:
            index[repr(None)] = len(decl.categories)
        bad = [v for v in values if repr(v) not in index]
        if bad:
            raise ConfigError(f"condition {name!r}: {bad[0]!r} is not one of its categories {decl.categories}")
        return np.asarray([index[repr(v)] for v in values], dtype=np.int64)

    def sample_features(self, x: Tensor, cond: Tensor, *, sampler: str = "ddim", steps: int = 1,
                        guidance: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """Cells (original grid) and a within-cell uniform per column: (n, 2d)."""
        u = x.double().cpu().numpy()
        d = len(self.config.columns)
        cond = cond.cpu().numpy()
        cards = np.asarray(self.cond_cards)
        given = cond < cards[None, :] if len(cards) else np.zeros((len(u), 0), bool)
        merged = np.empty((len(u), d), dtype=np.int64)
        keys = np.where(given, cond, -1)
        patterns, inverse = np.unique(keys, axis=0, return_inverse=True)
        col_of = {c: self.config.columns.index(c) for c in self.cond_columns}
        for k, pattern in enumerate(patterns):
            rows = np.flatnonzero(inverse.reshape(-1) == k)
            evidence = tuple((c, int(self._merge(col_of[c])[cell])) for c, cell in zip(self.cond_columns, pattern)
                             if cell >= 0)
            merged[rows] = self.sampler_.sample(u[rows, :d], evidence)
        cells, within = np.empty_like(merged), u[:, d:].copy()
        for j in range(d):
            cells[:, j], within[:, j] = self._unmerge(j, merged[:, j], within[:, j])
        for i, c in enumerate(self.cond_columns):  # a conditioned column is its given cell
            j = col_of[c]
            cells[given[:, i], j] = cond[given[:, i], i]
        return torch.from_numpy(np.concatenate([cells.astype(np.float64), within], axis=1))

    def cell_log_prob(self, rows: pa.Table) -> np.ndarray:
        """log P(cells of each row) in nats under the released model: the merged cells by the
        graphical model (exact), the original cell inside its merged cell by the noisy 1-way weights
        that sampling uses. On the declared grid, not a density over values (a white-box membership
        score: synth.privacy.audit)."""
        cells = self.discretise(rows)
        merged = np.stack([self._merge(j)[cells[:, j]] for j in range(cells.shape[1])], axis=1)
        out = self.sampler_.log_prob(merged)
        for j in range(cells.shape[1]):
            merge = self._merge(j)
            weight = np.clip(self.tensors[f"within/{j}"].double().numpy(), 0, None) + 1e-9
            share = weight / np.bincount(merge, weights=weight)[merge]
            out += np.log(share[cells[:, j]])
        return out

    def _merge(self, j: int) -> np.ndarray:
        return self.tensors[f"merge/{j}"].long().numpy()

    def _unmerge(self, j: int, merged: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Original cell inside each merged cell, by the (noisy) 1-way weights, and the uniform left
        over for the position inside it."""
        merge = self._merge(j)
        weight = np.clip(self.tensors[f"within/{j}"].double().numpy(), 0, None) + 1e-9
        cells, rest = np.empty_like(merged), u.copy()
        for m in np.unique(merged):
            rows = np.flatnonzero(merged == m)
            members = np.flatnonzero(merge == m)
            if len(members) == 1:
                cells[rows] = members[0]
                continue
            cdf = np.concatenate([[0.0], np.cumsum(weight[members])])
            cdf /= cdf[-1]
            k = np.clip(np.searchsorted(cdf, u[rows], side="right") - 1, 0, len(members) - 1)
            cells[rows] = members[k]
            rest[rows] = np.clip((u[rows] - cdf[k]) / np.maximum(cdf[k + 1] - cdf[k], 1e-300), 0, 1 - 1e-12)
        return cells, rest

    def decode(self, feats: Tensor | np.ndarray, requested: dict[str, list], seed: int, start: int = 0) -> pa.Table:
        f = feats.numpy() if isinstance(feats, Tensor) else np.asarray(feats)
        d = len(self.config.columns)
        cells, within = f[:, :d].astype(np.int64), f[:, d:]
        arrays = []
        for col in self.codec.columns:
            j = self.config.columns.index(col.name)
            if col.name in requested:
                arrays.append(col.to_arrow(requested[col.name]))
            elif isinstance(col, CategoricalColumn):
                arrays.append(col.to_arrow(self._category_values(col.name, cells[:, j])))
            else:
                x, null = self._numeric_values(col.name, cells[:, j], within[:, j])
                arrays.append(col._from_float(x, null if col.nullable else None))
        return pa.Table.from_arrays(arrays, schema=self.codec.schema)

    def _category_values(self, name: str, cells: np.ndarray) -> list:
        cats = list(self.config.declared[name].categories) + [None]
        return [cats[c] for c in cells]

    def _numeric_values(self, name: str, cells: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        decl, grid = self.config.declared[name], self.grid(name)
        n_atoms, n_bins = len(grid.atoms), max(0, len(grid.edges) - 1)
        null = cells >= n_atoms + n_bins
        x = np.zeros(len(cells))
        is_atom = cells < n_atoms
        x[is_atom] = grid.atoms[cells[is_atom]]
        b = np.clip(cells - n_atoms, 0, max(n_bins - 1, 0))
        in_bin = ~is_atom & ~null
        if n_bins and in_bin.any():
            lo, hi = grid.edges[b[in_bin]], grid.edges[b[in_bin] + 1]
            if decl.kind == "integer":  # integers of the bin (edges[b], edges[b + 1]], the first bin from its edge
                first = np.where(b[in_bin] == 0, np.ceil(lo), np.floor(lo) + 1)
                last = np.maximum(np.floor(hi), first)
                x[in_bin] = np.minimum(first + np.floor(u[in_bin] * (last - first + 1)), last)
            else:
                x[in_bin] = lo + u[in_bin] * (hi - lo)
        return x, null

    # -- artifact -------------------------------------------------------------------------------
    def sampling_state(self) -> dict[str, Tensor]:
        return {k: v.clone() for k, v in self.tensors.items()}

    def config_dict(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json")

    @classmethod
    def from_artifact(cls, art: Artifact) -> "MarginalEngine":
        return cls(MarginalConfig.model_validate(art.engine["config"]), TableCodec.from_dict(art.codec),
                   dict(art.tensors))


def build(config: MarginalConfig, codec: TableCodec) -> MarginalEngine:
    """An unfitted engine (the family's `build`); `fit_marginal` fills it."""
    return MarginalEngine(config.model_copy(), codec)


def plan(cfg, rows: int):
    """The privacy plan of a private run of this family (before any row is read)."""
    from synth.privacy.marginal import plan_marginal

    m = cfg.model
    return plan_marginal(cfg.privacy, rows, len(_modelled(cfg)), m.shares, m.sigma, m.method, m.max_model_mb,
                         m.rounds_per_column)


def _modelled(cfg) -> list[str]:
    return [n for n in cfg.privacy.declared if n not in cfg.data.codec.ignore]


def use_declared_grid(engine: MarginalEngine, cfg) -> list[str]:
    """Set `engine`'s cells from the declared schema (the run's bins); returns the modelled columns.
    Nothing is read from the data."""
    declared = cfg.privacy.declared
    names = [c.name for c in engine.codec.columns]
    if not declared or any(n not in declared for n in names):
        missing = [n for n in names if n not in declared]
        raise ConfigError(f"the marginal family discretises every column on its declared grid, and columns "
                          f"{missing or names} have no entry under privacy.schema: declare each (kind and min/max, "
                          "or categories; docs/privacy.md) or list it under data.codec.ignore")
    bins = cfg.privacy.bins if cfg.privacy.enabled else cfg.model.bins
    sizes = [NumericGrid.of(declared[n], bins).cells - (0 if declared[n].nullable else 1)
             if declared[n].kind in ("integer", "continuous")
             else len(declared[n].categories) + (1 if declared[n].nullable else 0) for n in names]
    c = engine.config
    c.declared, c.columns, c.sizes, c.bins = {n: declared[n] for n in names}, names, sizes, bins
    engine.cond_columns = [n for n in engine.codec.categorical_names() if n in names]
    engine.cond_cards = [sizes[names.index(n)] for n in engine.cond_columns]
    return names


def fit_marginal(engine: MarginalEngine, cfg, rows: pa.Table, privacy) -> dict:
    """Fit `engine` on the training rows with the run's privacy plan (None: exact, not private).
    Returns the fit's metrics (`step`: selection rounds made; `epsilon`: what the parts spend)."""
    from synth.privacy import pgm
    from synth.privacy.marginal import no_privacy_plan, run_aim, run_mst

    t0, c0 = time.perf_counter(), time.process_time()
    names = use_declared_grid(engine, cfg)
    sizes, c = engine.config.sizes, engine.config
    data = engine.discretise(rows)
    plan_ = privacy if privacy is not None else no_privacy_plan(rows.num_rows, len(names), c.shares, c.method,
                                                                c.max_model_mb)
    if c.method == "aim":
        target = names.index(cfg.data.target) if cfg.data.target in names else None
        measured = run_aim(data, sizes, names, plan_, target, iters=c.iters, round_iters=c.round_iters,
                           per_round=c.per_round)
    else:
        measured = run_mst(data, sizes, names, plan_, iters=c.iters)
    pots = pgm.potentials(measured.model)
    c.merged = [int(m.max()) + 1 for m in measured.merge]
    c.cliques = [list(cl) for cl, _ in pots]
    tensors = {f"potential/{i}": torch.from_numpy(v.copy()) for i, (_, v) in enumerate(pots)}
    for j in range(len(names)):
        tensors[f"merge/{j}"] = torch.from_numpy(measured.merge[j].astype(np.int64))
        tensors[f"within/{j}"] = torch.from_numpy(np.asarray(measured.one_way[j], dtype=np.float64))
    engine.tensors, engine._sampler = tensors, None
    pgm.release_compiled()
    # cpu_s: this process's CPU time (all its threads), which other jobs on the cores do not inflate as they do fit_s
    metrics = {"step": len(plan_.rounds_log), "fit_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
               "cliques": len(measured.cliques),
               **{k: v for k, v in measured.log.items() if k != "iters"}}
    if plan_.private:
        metrics["epsilon"] = plan_.total_epsilon()
    return metrics


def fit_table(cfg, table: pa.Table) -> MarginalEngine:
    """Fit on an in-memory table with `cfg`'s model and privacy settings (the audit's repeated fits;
    `synth fit` goes through `synth.train.fit`): the codec from the declared schema alone."""
    codec = TableCodec.from_schema(table.schema, cfg.privacy.declared, cfg.data.codec, num_rows=table.num_rows,
                                   bins=cfg.privacy.bins)
    engine = build(cfg.model, codec)
    fit_marginal(engine, cfg, table, plan(cfg, table.num_rows) if cfg.privacy.enabled else None)
    return engine
