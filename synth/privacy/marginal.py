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
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from synth.errors import ConfigError
from synth.privacy import zcdp
from synth.privacy.config import PrivacyConfig

MERGE_BELOW = 3.0  # cells whose noisy 1-way count is below this many sigma_1 are merged (MST)
MIN_SIGNAL = 10.0  # refuse a plan whose (first) measurement noise std exceeds rows / MIN_SIGNAL
AIM_ALPHA = 0.9  # AIM: share of each round's rho that measures (the rest selects)
# AIM: T = 8 d rounds' worth of budget at the start. The paper's 16 d makes too many Private-PGM refits
# (each a JAX compilation) for minutes on 2 cores; at 2 d the 1-way marginals take 45 % of rho and
# annealing leaves 4 rounds on Adult at epsilon 1
AIM_ROUNDS_PER_COLUMN = 8
MECHANISMS = {
    "mst": "MST: Gaussian 1-way marginals, exponential-mechanism spanning-tree selection, Gaussian pair marginals "
           "on the declared grid; Private-PGM (mbi) fit as post-processing",
    "aim": "AIM: Gaussian 1-way marginals, then rounds of exponential-mechanism selection of a workload marginal "
           "(pairs, and triples with the target) scored by the current model's error less the expected noise, under "
           "a growing model-size limit, and its Gaussian measurement; noise halves when a round changes the model "
           "less than its noise (budget annealing) until rho is spent; Private-PGM (mbi) fit as post-processing",
}


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
    epsilon_select: float  # epsilon of each exponential-mechanism round (AIM: of the first)
    method: str = "mst"  # "mst" or "aim"
    max_model_mb: float = 0.0  # AIM: the junction tree's size limit at the end (MB)
    # every selection round as [epsilon of its exponential-mechanism draw, noise std of its measurement,
    # the measured clique]: fixed by the plan for MST, written round by round by AIM (budget annealing)
    rounds_log: list = field(default_factory=list)
    preprocessing: str = "schema"  # the codec comes from the declared schema alone (no spend)
    epsilon_preprocessing: float = 0.0

    @property
    def private(self) -> bool:
        return self.rho > 0

    def parts(self) -> dict[str, float]:
        """rho of each part, recomputed from the recorded noise scales and selection epsilons."""
        if not self.private:
            return {"one_way": 0.0, "select": 0.0, "measure": 0.0}
        return {"one_way": self.columns * zcdp.gaussian_rho(self.sigma_one_way),
                "select": sum(zcdp.exponential_rho(e) for e, _, _ in self.rounds_log),
                "measure": sum(zcdp.gaussian_rho(s) for _, s, _ in self.rounds_log)}

    def committed_rho(self) -> float:
        """The most this plan may spend: MST's fixed parts; AIM spends its whole budget."""
        return self.rho if self.method == "aim" else self.spent_rho()

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
        if steps != len(self.rounds_log) or (self.method == "mst" and steps != self.rounds):
            raise RuntimeError(f"the mechanism made {steps} selection rounds but its log has {len(self.rounds_log)}")
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
            "mechanism": MECHANISMS[self.method],
            "rho": rho,
            "rho_parts": parts,
            "epsilon_parts": {k: zcdp.cdp_epsilon(v, self.delta) for k, v in parts.items()},
            "noise_std_one_way": self.sigma_one_way,
            "columns": self.columns,
            "rounds": len(self.rounds_log),
            "rounds_log": [[e, s, list(cl)] for e, s, cl in self.rounds_log],
            "sensitivity": "1 per marginal (L1 and L2) and per selection score (L1)",
            "epsilon_preprocessing": 0.0,
            "preprocessing": {"mode": "schema", "mechanism": "declared schema only (no statistic read from the data)"},
            "composition": "zCDP: columns / (2 noise_std_one_way^2) + the sum over rounds_log of "
                           "epsilon_select^2 / 8 + 1 / (2 noise_std^2), converted once at delta",
            "train_rows": self.train_rows,
            "unit": "one row (add/remove adjacency); the number of training rows is treated as public",
        }


def plan_marginal(pcfg: PrivacyConfig, rows: int, columns: int, shares: tuple[float, float, float],
                  sigma: float | None = None, method: str = "aim", max_model_mb: float = 25.0,
                  rounds_per_column: int = AIM_ROUNDS_PER_COLUMN) -> MarginalPlan:
    """The budget of one run on `rows` rows of `columns` modelled columns. MST: the split `shares`
    of rho (with `sigma`, a fixed noise std for every measurement); AIM: the initial per-round
    noise and selection epsilon (later rounds are set by annealing, within rho). Refuses a plan
    that would exceed privacy.epsilon or whose (first) noise would drown the counts. Reads no row."""
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
    if sigma is not None and method != "mst":
        raise ConfigError("model.sigma fixes MST's noise; AIM sets its noise round by round from privacy.epsilon: "
                          "remove model.sigma or set model.method: mst")
    rho = zcdp.cdp_rho(pcfg.epsilon, pcfg.delta)
    if method == "aim":
        plan = _plan_aim(pcfg, rows, columns, rho, max_model_mb, rounds_per_column)
        noisiest, what = plan.sigma_one_way, "the marginals"
        need_rho = rounds_per_column * columns * zcdp.gaussian_rho(rows / MIN_SIGNAL) / AIM_ALPHA
    else:
        rounds = max(columns - 1, 0)
        if sigma is not None:  # a fixed noise scale: what it spends, refused if over budget
            plan = _plan(pcfg, rows, columns, rounds, shares, rho=rho, sigma=sigma)
            spent = plan.total_epsilon()
            if spent > pcfg.epsilon * (1 + 1e-9):
                need = _sigma_within(rho, columns, rounds, shares)
                raise ConfigError(f"privacy budget exceeded before any row is read: model.sigma {sigma:g} over "
                                  f"{columns} 1-way and {rounds} pair measurements spends epsilon {spent:.3f} > "
                                  f"privacy.epsilon {pcfg.epsilon:g}; raise model.sigma to at least {need:.3f}, "
                                  "remove it, or raise privacy.epsilon")
        else:
            plan = _plan(pcfg, rows, columns, rounds, shares, rho=rho)
        noisiest, what = plan.sigma_two_way, "the pair marginals"
        need_rho = rounds * zcdp.gaussian_rho(rows / MIN_SIGNAL) / shares[2]
    if noisiest * MIN_SIGNAL > rows:
        need = zcdp.cdp_epsilon(need_rho, pcfg.delta)
        raise ConfigError(f"privacy.epsilon {pcfg.epsilon:g} is too small for {rows} training rows: {what} "
                          f"would get noise of std {noisiest:.0f} rows per cell (more than a tenth of the rows); "
                          f"raise privacy.epsilon to at least {need:.3g} or train on more rows")
    return plan


def _plan_aim(pcfg: PrivacyConfig, rows: int, columns: int, rho: float, max_model_mb: float,
              rounds_per_column: int) -> MarginalPlan:
    """AIM's start (McKenna et al. 2022): rho / T per round with T = rounds_per_column x d (the most
    rounds it can make), 90 % of it measuring; the 1-way marginals are measured with the same noise."""
    rounds = rounds_per_column * columns
    return MarginalPlan(epsilon_budget=pcfg.epsilon, delta=pcfg.delta, rho=rho, train_rows=rows, columns=columns,
                        share_one_way=columns / rounds * AIM_ALPHA, share_select=0.0, share_two_way=0.0,
                        rounds=rounds, sigma_one_way=zcdp.gaussian_sigma(AIM_ALPHA * rho / rounds),
                        sigma_two_way=0.0, epsilon_select=zcdp.exponential_epsilon((1 - AIM_ALPHA) * rho / rounds),
                        method="aim", max_model_mb=max_model_mb)


def _plan(pcfg: PrivacyConfig, rows: int, columns: int, rounds: int, shares, rho: float,
          sigma: float | None = None) -> MarginalPlan:
    s1, ss, s2 = shares
    if sigma is not None:
        sig1 = sig2 = sigma
    else:
        sig1 = zcdp.gaussian_sigma(rho * s1 / columns)
        sig2 = zcdp.gaussian_sigma(rho * s2 / rounds) if rounds else 0.0
    eps_sel = zcdp.exponential_epsilon(rho * ss / rounds) if rounds else 0.0
    return MarginalPlan(epsilon_budget=pcfg.epsilon, delta=pcfg.delta, rho=rho, train_rows=rows, columns=columns,
                        share_one_way=s1, share_select=ss, share_two_way=s2, rounds=rounds, sigma_one_way=sig1,
                        sigma_two_way=sig2, epsilon_select=eps_sel, method="mst",
                        rounds_log=[[eps_sel, sig2, []] for _ in range(rounds)])


def _sigma_within(rho: float, columns: int, rounds: int, shares) -> float:
    """The smallest common noise std that fits the Gaussian shares of rho."""
    s1, ss, s2 = shares
    return zcdp.gaussian_sigma(rho * (s1 + s2) / (columns + rounds))


def no_privacy_plan(rows: int, columns: int, shares, method: str = "aim", max_model_mb: float = 25.0) -> MarginalPlan:
    """Exact measurements and greedy selection (a non-private run of the same algorithm; AIM makes
    2 d rounds)."""
    rounds = max(columns - 1, 0) if method == "mst" else 2 * columns
    return MarginalPlan(epsilon_budget=None, delta=0.0, rho=0.0, train_rows=rows, columns=columns,
                        share_one_way=shares[0], share_select=shares[1], share_two_way=shares[2],
                        rounds=rounds, sigma_one_way=0.0, sigma_two_way=0.0, epsilon_select=math.inf,
                        method=method, max_model_mb=max_model_mb,
                        rounds_log=[[math.inf, 0.0, []] for _ in range(rounds)] if method == "mst" else [])


# -- the mechanisms ----------------------------------------------------------------------------
@dataclass
class Measured:
    """What a mechanism releases: noisy 1-way counts (original cells), the merge of rare cells, the
    selected cliques and their noisy marginals on the merged cells, and the fitted model."""
    one_way: list[np.ndarray]
    merge: list[np.ndarray]  # column -> merged cell of each original cell
    cliques: list[tuple[int, ...]]
    marginals: list[np.ndarray]
    model: object  # mbi.MarkovRandomField over the merged cells
    log: dict = field(default_factory=dict)


def _one_way(data, sizes, names, plan, rng):
    """Every column's noisy counts, the merge of its rare cells, and the rows on the merged cells."""
    from synth.privacy.pgm import counts

    d = len(sizes)
    one_way = [counts(data, (c,), sizes) + rng.normal(0, plan.sigma_one_way, sizes[c]) if plan.private
               else counts(data, (c,), sizes) for c in range(d)]
    merge = [_merge_map(y, plan.sigma_one_way) for y in one_way]
    merged = np.stack([merge[c][data[:, c]] for c in range(d)], axis=1) if d else data
    msizes = [int(m.max()) + 1 for m in merge]
    return one_way, merge, merged, msizes, [((names[c],), one_way[c], merge[c]) for c in range(d)]


def run_mst(data: np.ndarray, sizes: list[int], names: list[str], plan: MarginalPlan, iters: int = 1000,
            rng: np.random.Generator | None = None) -> Measured:
    """MST on the discretised rows `data` (n, d) with `sizes[c]` cells per column. The noise and the
    selection draws come from OS entropy unless `rng` is given (tests only: a known seed voids the
    guarantee)."""
    from synth.privacy.pgm import counts, estimate, independent_pairs_error

    rng = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
    d = len(sizes)
    one_way, merge, merged, msizes, one_way_m = _one_way(data, sizes, names, plan, rng)

    # selection: the 1-way model's L1 error on each pair (sensitivity 1), a spanning tree by the
    # exponential mechanism (Kruskal: each round picks among pairs joining two components)
    candidates = list(itertools.combinations(range(d), 2))
    errors = independent_pairs_error(merged, msizes, one_way_m, candidates)
    component = list(range(d))
    pairs = []
    for r in range(plan.rounds):
        open_ = [k for k, (a, b) in enumerate(candidates) if component[a] != component[b]]
        scores = np.asarray([errors[k] for k in open_])
        k = open_[_exponential(scores, plan.epsilon_select, rng)]
        a, b = candidates[k]
        pairs.append((a, b))
        plan.rounds_log[r][2] = [names[a], names[b]]
        old, new = component[b], component[a]
        component = [new if x == old else x for x in component]
    two_way = [counts(merged, p, msizes) + (rng.normal(0, plan.sigma_two_way, (msizes[p[0]], msizes[p[1]]))
                                            if plan.private else 0.0) for p in pairs]
    model = estimate(sizes, msizes, names, one_way_m, plan.sigma_one_way,
                     [((names[a], names[b]), y, plan.sigma_two_way) for (a, b), y in zip(pairs, two_way)], iters)
    return Measured(one_way, merge, pairs, two_way, model,
                    {"merged_cells": int(sum(sizes) - sum(msizes)), "iters": iters})


def aim_workload(d: int, target: int | None) -> dict[tuple[int, ...], float]:
    """AIM's candidates and their weights: every pair, plus every triple that holds the target
    column (the downward closure, each clique weighted by its overlap with the workload)."""
    workload = list(itertools.combinations(range(d), 2))
    if target is not None:
        others = [c for c in range(d) if c != target]
        workload += [tuple(sorted((a, b, target))) for a, b in itertools.combinations(others, 2)]
    closure = {sub for w in workload for k in range(1, len(w) + 1) for sub in itertools.combinations(w, k)}
    return {cl: float(sum(len(set(cl) & set(w)) for w in workload)) for cl in sorted(closure)}


def run_aim(data: np.ndarray, sizes: list[int], names: list[str], plan: MarginalPlan, target: int | None = None,
            iters: int = 1000, round_iters: int = 200, per_round: int = 1,
            rng: np.random.Generator | None = None) -> Measured:
    """AIM (McKenna, Mullins, Sheldon and Miklau 2022) on the discretised rows `data` (n, d): after
    the 1-way marginals, each round picks `per_round` workload cliques by the exponential mechanism
    (one draw each, charged each), scored by the weighted L1 error of the current model on them less
    the noise their measurement would carry (sensitivity: the largest weight), among the cliques
    that keep the junction tree under a size limit growing with the budget spent; measures them with
    Gaussian noise and refits the model once (warm started: the refits, one mbi compilation each,
    are the cost). A round's later draws leave out the sub- and super-cliques of its earlier picks
    (the current model's errors on them overlap). When the round's measurements move the model less
    than their expected noise, the noise halves and the selection epsilon doubles; the last round
    spends what is left of rho. Every measurement is appended to `plan.rounds_log`, so the spend is
    recomputable. Exact and greedy without privacy."""
    from synth.privacy.pgm import Estimator, Marginals, counts, model_size_mb

    rng = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
    one_way, merge, merged, msizes, one_way_m = _one_way(data, sizes, names, plan, rng)
    weights = aim_workload(len(sizes), target)
    candidates = [cl for cl in weights if len(cl) > 1]
    answers = {cl: counts(merged, cl, msizes) for cl in candidates}  # the only data access besides 1-way
    sensitivity = max(weights[cl] for cl in candidates) if candidates else 1.0
    fit = Estimator(sizes, msizes, names, one_way_m, plan.sigma_one_way)
    model = fit([], round_iters)
    sigma, eps = plan.sigma_one_way, plan.epsilon_select
    rho_used = plan.columns * zcdp.gaussian_rho(sigma) if plan.private else 0.0
    plan.rounds_log = []
    chosen: list[tuple[int, ...]] = []
    measured: list = []
    seconds = {"size_check_s": 0.0, "score_s": 0.0, "estimate_s": 0.0}
    def fits(cl, limit):  # within the model-size limit with the chosen cliques
        return any(set(cl) <= set(h) for h in chosen) or \
            model_size_mb(names, msizes, [_names(names, x) for x in chosen + [cl]]) <= limit

    while candidates:
        k = max(1, per_round)
        if plan.private:
            cost = zcdp.gaussian_rho(sigma) + zcdp.exponential_rho(eps)
            last = plan.rho - rho_used < (k + 1) * cost
            if last:  # what remains, split as every round's over as many measurements as it affords (>= 1)
                remaining = (plan.rho - rho_used) * (1 - 1e-9)  # never a rounding error over the budget
                k = max(1, min(k, int(remaining / cost)))
                sigma = zcdp.gaussian_sigma(AIM_ALPHA * remaining / k)
                eps = zcdp.exponential_epsilon((1 - AIM_ALPHA) * remaining / k)
            limit = plan.max_model_mb * (rho_used + k * (zcdp.gaussian_rho(sigma) + zcdp.exponential_rho(eps))) / plan.rho
        else:
            k = min(k, plan.rounds - len(plan.rounds_log))
            last, limit = len(plan.rounds_log) + k >= plan.rounds, plan.max_model_mb
        bias = math.sqrt(2 / math.pi) * sigma
        fitted = Marginals(model)
        picked: list[tuple[int, ...]] = []
        score: dict[tuple[int, ...], float] = {}  # this round's (the model does not change within it)
        for _ in range(k):
            t0 = time.perf_counter()
            pool = [cl for cl in candidates if not any(set(cl) <= set(p) or set(p) <= set(cl) for p in picked)
                    and fits(cl, limit)]
            t1 = time.perf_counter()
            if not pool:
                break
            for cl in pool:
                if cl not in score:
                    score[cl] = weights[cl] * (np.abs(answers[cl] - fitted(_names(names, cl))).sum()
                                               - bias * answers[cl].size)
            seconds["size_check_s"] += t1 - t0
            seconds["score_s"] += time.perf_counter() - t1
            cl = pool[_exponential(np.asarray([score[c] for c in pool]), eps, rng, sensitivity)]
            if plan.private:
                rho_used += zcdp.gaussian_rho(sigma) + zcdp.exponential_rho(eps)
            y = answers[cl] + (rng.normal(0, sigma, answers[cl].shape) if plan.private else 0.0)
            picked.append(cl)
            chosen.append(cl)
            measured.append((_names(names, cl), y, sigma))
            plan.rounds_log.append([eps, sigma, list(_names(names, cl))])
        t2 = time.perf_counter()
        model = fit(measured, round_iters, warm_start=model)
        seconds["estimate_s"] += time.perf_counter() - t2
        if plan.private:
            now = Marginals(model)
            moved = sum(np.abs(now(_names(names, cl)) - fitted(_names(names, cl))).sum() for cl in picked)
            if moved <= bias * sum(answers[cl].size for cl in picked):
                sigma, eps = sigma / 2, eps * 2  # budget annealing
        if last or not picked:
            break
    if plan.private and rho_used > plan.rho * (1 + 1e-9):
        raise RuntimeError(f"AIM spent rho {rho_used} over its budget {plan.rho}")
    t2 = time.perf_counter()
    model = fit(measured, iters, warm_start=model)
    seconds["estimate_s"] += time.perf_counter() - t2
    return Measured(one_way, merge, chosen, [y for _, y, _ in measured], model,
                    {"merged_cells": int(sum(sizes) - sum(msizes)), "iters": iters, "refits": fit.fits, **seconds})


def _names(names: list[str], cl: tuple[int, ...]) -> tuple[str, ...]:
    return tuple(names[c] for c in cl)


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
