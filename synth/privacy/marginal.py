"""The marginal mechanism (MST, McKenna, Miklau and Sheldon 2021) and its budget, in zCDP.

Input: every training row discretised on the cells that the declared schema fixes (no
data-dependent bounds). Three parts, each a share of the total rho (synth.privacy.zcdp):

1. measure every column's 1-way marginal with Gaussian noise (sigma_1 per cell); cells whose
   noisy count is below 3 sigma_1 are merged into one (post-processing of the noisy counts);
2. select d - 1 pairs that form a maximum spanning tree, one exponential-mechanism draw per
   round, scored by how badly the 1-way model misses each pair's marginal (L1, sensitivity 1);
3. measure the selected pairs' marginals with Gaussian noise (sigma_2 per cell).

Private-PGM (`mbi`) then fits the graphical model whose marginals best explain all the noisy
measurements (mirror descent); everything after the measurements is post-processing. The plan
(`plan_marginal`) is fixed from the budget, the declared schema and the public row count before
any row is read; a plan that would exceed the budget, or one whose noise would drown the counts,
is refused. The manifest block recomputes epsilon from the recorded parts.
"""
from __future__ import annotations

import itertools
import math
import secrets
from dataclasses import asdict, dataclass, field

import numpy as np

from synth.errors import ConfigError
from synth.privacy import zcdp
from synth.privacy.config import PrivacyConfig

MERGE_BELOW = 3.0  # cells whose noisy 1-way count is below this many sigma_1 are merged (MST)
MIN_SIGNAL = 10.0  # refuse a plan whose pair-marginal noise std exceeds rows / MIN_SIGNAL


@dataclass
class MarginalPlan:
    """The mechanism's parameters, fixed before any row is read."""
    epsilon_budget: float | None
    delta: float
    rho: float  # total zCDP budget (0: no privacy, exact measurements)
    train_rows: int
    columns: int
    share_one_way: float
    share_select: float
    share_two_way: float
    rounds: int  # exponential-mechanism selections (spanning-tree edges)
    sigma_one_way: float  # Gaussian noise std per cell of each 1-way marginal
    sigma_two_way: float  # ... of each selected pair's marginal
    epsilon_select: float  # epsilon of each exponential-mechanism round
    preprocessing: str = "schema"  # the codec comes from the declared schema alone (no spend)
    epsilon_preprocessing: float = 0.0

    @property
    def private(self) -> bool:
        return self.rho > 0

    def parts(self) -> dict[str, float]:
        """rho of each part, recomputed from the recorded noise scales."""
        if not self.private:
            return {"one_way": 0.0, "select": 0.0, "two_way": 0.0}
        return {"one_way": self.columns * zcdp.gaussian_rho(self.sigma_one_way),
                "select": self.rounds * zcdp.exponential_rho(self.epsilon_select),
                "two_way": self.rounds * zcdp.gaussian_rho(self.sigma_two_way)}

    def spent_rho(self) -> float:
        return sum(self.parts().values())

    def total_epsilon(self) -> float:
        return zcdp.cdp_epsilon(self.spent_rho(), self.delta) if self.private else math.inf

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MarginalPlan":
        return cls(**d)

    def manifest(self, steps: int, accountant_epsilon: float | None = None) -> dict:
        """The manifest's `privacy` block (the same shape as DP-SGD's: dp, epsilon, delta, budget,
        accountant, mechanism, parts). `steps` are the selection rounds made; `accountant_epsilon`
        what the fit reported, which must agree with the recomputation."""
        if steps != self.rounds:
            raise RuntimeError(f"the mechanism made {steps} selection rounds but the plan has {self.rounds}")
        parts, rho = self.parts(), self.spent_rho()
        eps = zcdp.cdp_epsilon(rho, self.delta)
        if accountant_epsilon is not None and not math.isclose(eps, accountant_epsilon, rel_tol=1e-9):
            raise RuntimeError(f"the mechanism reported epsilon {accountant_epsilon} but its parts give {eps}")
        if self.epsilon_budget is not None and eps > self.epsilon_budget * (1 + 1e-9):
            raise RuntimeError(f"spent epsilon {eps} exceeds the budget {self.epsilon_budget}")
        return {
            "dp": True,
            "epsilon": eps,
            "delta": self.delta,
            "epsilon_budget": self.epsilon_budget,
            "accountant": "zCDP (rho adds up; (epsilon, delta) by Canonne-Kamath-Steinke 2020)",
            "mechanism": "MST: Gaussian 1-way marginals, exponential-mechanism spanning-tree selection, Gaussian "
                         "pair marginals on the declared grid; Private-PGM (mbi) fit as post-processing",
            "rho": rho,
            "rho_parts": parts,
            "epsilon_parts": {k: zcdp.cdp_epsilon(v, self.delta) for k, v in parts.items()},
            "noise_std_one_way": self.sigma_one_way,
            "noise_std_two_way": self.sigma_two_way,
            "epsilon_select_per_round": self.epsilon_select,
            "rounds": self.rounds,
            "columns": self.columns,
            "sensitivity": "1 per marginal (L1 and L2) and per selection score (L1)",
            "epsilon_preprocessing": 0.0,
            "preprocessing": {"mode": "schema", "mechanism": "declared schema only (no statistic read from the data)"},
            "composition": "zCDP: rho_one_way + rho_select + rho_two_way, converted once at delta",
            "train_rows": self.train_rows,
            "unit": "one row (add/remove adjacency); the number of training rows is treated as public",
        }


def plan_marginal(pcfg: PrivacyConfig, rows: int, columns: int, shares: tuple[float, float, float],
                  sigma: float | None = None) -> MarginalPlan:
    """The budget split of one MST run on `rows` rows of `columns` modelled columns; refuses a plan
    that would exceed privacy.epsilon (with `sigma`, a fixed noise std for every measurement) or
    whose noise would drown the counts. Reads no row."""
    rounds = max(columns - 1, 0)
    s1, ss, s2 = shares
    if pcfg.noise_multiplier is not None:
        raise ConfigError("privacy.noise_multiplier is a DP-SGD setting; the marginal family derives its noise from "
                          "privacy.epsilon: remove privacy.noise_multiplier (or set model.family: diffusion)")
    if pcfg.epsilon is None:
        raise ConfigError("privacy.epsilon is not set; the marginal family needs a budget: set privacy.epsilon")
    if pcfg.delta >= 1.0 / max(rows, 1):
        raise ConfigError(f"privacy.delta {pcfg.delta:g} must be below 1 / training rows ({1 / max(rows, 1):.3g}); "
                          f"lower privacy.delta to at most {0.1 / max(rows, 1):.1g}")
    if columns < 1:
        raise ConfigError("no modelled column: declare the columns under privacy.schema")
    rho = zcdp.cdp_rho(pcfg.epsilon, pcfg.delta)
    if sigma is not None:  # a fixed noise scale: what it spends, refused if over budget
        plan = _plan(pcfg, rows, columns, rounds, shares, rho=rho, sigma=sigma)
        spent = plan.total_epsilon()
        if spent > pcfg.epsilon * (1 + 1e-9):
            need = _sigma_within(rho, columns, rounds, shares)
            raise ConfigError(f"privacy budget exceeded before any row is read: model.sigma {sigma:g} over {columns} "
                              f"1-way and {rounds} pair measurements spends epsilon {spent:.3f} > privacy.epsilon "
                              f"{pcfg.epsilon:g}; raise model.sigma to at least {need:.3f}, remove it, or raise "
                              "privacy.epsilon")
    else:
        plan = _plan(pcfg, rows, columns, rounds, shares, rho=rho)
    if plan.sigma_two_way * MIN_SIGNAL > rows:
        need = _epsilon_for_sigma(rows / MIN_SIGNAL, pcfg.delta, columns, rounds, shares)
        raise ConfigError(f"privacy.epsilon {pcfg.epsilon:g} is too small for {rows} training rows: the pair "
                          f"marginals would get noise of std {plan.sigma_two_way:.0f} rows per cell (more than a "
                          f"tenth of the rows); raise privacy.epsilon to at least {need:.3g} or train on more rows")
    return plan


def _plan(pcfg: PrivacyConfig, rows: int, columns: int, rounds: int, shares, rho: float,
          sigma: float | None = None) -> MarginalPlan:
    s1, ss, s2 = shares
    if sigma is not None:
        sig1 = sig2 = sigma
        eps_sel = zcdp.exponential_epsilon(rho * ss / rounds) if rounds else 0.0
    else:
        sig1 = zcdp.gaussian_sigma(rho * s1 / columns)
        sig2 = zcdp.gaussian_sigma(rho * s2 / rounds) if rounds else 0.0
        eps_sel = zcdp.exponential_epsilon(rho * ss / rounds) if rounds else 0.0
    return MarginalPlan(epsilon_budget=pcfg.epsilon, delta=pcfg.delta, rho=rho, train_rows=rows, columns=columns,
                        share_one_way=s1, share_select=ss, share_two_way=s2, rounds=rounds, sigma_one_way=sig1,
                        sigma_two_way=sig2, epsilon_select=eps_sel)


def _sigma_within(rho: float, columns: int, rounds: int, shares) -> float:
    """The smallest common noise std that fits the Gaussian shares of rho."""
    s1, ss, s2 = shares
    return zcdp.gaussian_sigma(rho * (s1 + s2) / (columns + rounds))


def _epsilon_for_sigma(target: float, delta: float, columns: int, rounds: int, shares) -> float:
    rho = rounds * zcdp.gaussian_rho(target) / shares[2]  # rho whose pair share gives noise `target`
    return zcdp.cdp_epsilon(rho, delta)


def no_privacy_plan(rows: int, columns: int, shares) -> MarginalPlan:
    """Exact measurements and greedy selection (a non-private run of the same algorithm)."""
    return MarginalPlan(epsilon_budget=None, delta=0.0, rho=0.0, train_rows=rows, columns=columns,
                        share_one_way=shares[0], share_select=shares[1], share_two_way=shares[2],
                        rounds=max(columns - 1, 0), sigma_one_way=0.0, sigma_two_way=0.0, epsilon_select=math.inf)


# -- the mechanism -----------------------------------------------------------------------------
@dataclass
class Measured:
    """What the mechanism releases: noisy 1-way counts (original cells), the merge of rare cells,
    the selected pairs and their noisy marginals on the merged cells, and the fitted model."""
    one_way: list[np.ndarray]
    merge: list[np.ndarray]  # column -> merged cell of each original cell
    pairs: list[tuple[int, int]]
    two_way: list[np.ndarray]
    model: object  # mbi.MarkovRandomField over the merged cells
    log: dict = field(default_factory=dict)


def run_mst(data: np.ndarray, sizes: list[int], names: list[str], plan: MarginalPlan, iters: int = 1000,
            rng: np.random.Generator | None = None) -> Measured:
    """MST on the discretised rows `data` (n, d) with `sizes[c]` cells per column. The noise and the
    selection draws come from OS entropy unless `rng` is given (tests only: a known seed voids the
    guarantee)."""
    from synth.privacy.pgm import counts, estimate, independent_pairs_error

    rng = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
    d = len(sizes)
    one_way = [counts(data, (c,), sizes) + rng.normal(0, plan.sigma_one_way, sizes[c]) if plan.private
               else counts(data, (c,), sizes) for c in range(d)]
    merge = [_merge_map(y, plan.sigma_one_way) for y in one_way]
    merged = np.stack([merge[c][data[:, c]] for c in range(d)], axis=1) if d else data
    msizes = [int(m.max()) + 1 for m in merge]
    one_way_m = [((names[c],), one_way[c], merge[c]) for c in range(d)]

    # selection: the 1-way model's L1 error on each pair (sensitivity 1), a spanning tree by the
    # exponential mechanism (Kruskal: each round picks among pairs joining two components)
    candidates = list(itertools.combinations(range(d), 2))
    errors = independent_pairs_error(merged, msizes, one_way_m, candidates)
    component = list(range(d))
    pairs = []
    for _ in range(plan.rounds):
        open_ = [k for k, (a, b) in enumerate(candidates) if component[a] != component[b]]
        scores = np.asarray([errors[k] for k in open_])
        k = open_[_exponential(scores, plan.epsilon_select, rng)]
        a, b = candidates[k]
        pairs.append((a, b))
        old, new = component[b], component[a]
        component = [new if x == old else x for x in component]
    two_way = [counts(merged, p, msizes) + (rng.normal(0, plan.sigma_two_way, (msizes[p[0]], msizes[p[1]]))
                                            if plan.private else 0.0) for p in pairs]
    model = estimate(sizes, msizes, names, one_way_m, plan.sigma_one_way,
                     [((names[a], names[b]), y) for (a, b), y in zip(pairs, two_way)], plan.sigma_two_way, iters)
    return Measured(one_way, merge, pairs, two_way, model,
                    {"merged_cells": int(sum(sizes) - sum(msizes)), "iters": iters})


def _merge_map(noisy: np.ndarray, sigma: float) -> np.ndarray:
    """Cells with a noisy count below 3 sigma share one merged cell (MST's compression)."""
    if sigma <= 0:
        return np.arange(len(noisy))
    keep = noisy >= MERGE_BELOW * sigma
    if keep.all() or (~keep).sum() == 1:
        return np.arange(len(noisy))
    out = np.empty(len(noisy), dtype=np.int64)
    out[keep] = np.arange(int(keep.sum()))
    out[~keep] = int(keep.sum())
    return out


def _exponential(scores: np.ndarray, epsilon: float, rng: np.random.Generator, sensitivity: float = 1.0) -> int:
    if not math.isfinite(epsilon):  # no privacy: the best pair
        return int(np.argmax(scores))
    logits = 0.5 * epsilon / sensitivity * (scores - scores.max())
    p = np.exp(logits)
    return int(rng.choice(len(scores), p=p / p.sum()))
