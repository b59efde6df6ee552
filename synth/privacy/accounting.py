"""The privacy budget: plan it before training, refuse what would exceed it, account what was spent.

Total epsilon = preprocessing epsilon (pure epsilon-DP Laplace histograms, or 0 with a declared
schema) + training epsilon from Opacus' accountant (RDP or PRV) for the Poisson-subsampled
Gaussian mechanism with the recorded noise multiplier, sample rate and steps, at the run's delta
(basic sequential composition). The sample rate follows Opacus' `make_private`:
1 / ceil(rows / batch_size).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

from synth.errors import ConfigError
from synth.privacy.config import PrivacyConfig
from synth.train.config import TrainConfig


def accountant_epsilon(accountant: str, noise_multiplier: float, sample_rate: float, steps: int,
                       delta: float) -> float:
    """What Opacus' accountant reports after `steps` steps of (noise_multiplier, sample_rate)."""
    if steps <= 0:
        return 0.0
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=accountant)
    acc.history = [(noise_multiplier, sample_rate, int(steps))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta=delta))


def sample_rate_for(rows: int, batch_size: int) -> float:
    """Opacus' make_private: 1 / len(DataLoader(dataset, batch_size))."""
    return 1.0 / math.ceil(rows / batch_size)


@dataclass
class PrivacyPlan:
    epsilon_budget: float | None
    delta: float
    accountant: str
    noise_multiplier: float
    sample_rate: float
    steps: int  # planned optimizer steps (train.steps)
    max_grad_norm: float
    expected_batch_size: float
    train_rows: int
    preprocessing: str
    epsilon_preprocessing: float
    bins: int
    grad_sample_mode: str = "ghost"

    def training_epsilon(self, steps: int) -> float:
        return accountant_epsilon(self.accountant, self.noise_multiplier, self.sample_rate, steps, self.delta)

    def total_epsilon(self, steps: int) -> float:
        return self.epsilon_preprocessing + self.training_epsilon(steps)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PrivacyPlan":
        return cls(**d)

    def manifest(self, steps: int, accountant_epsilon: float | None = None) -> dict:
        """The `privacy` block of the model manifest for a run that made `steps` DP-SGD steps.
        `accountant_epsilon` is what the live accountant attached to the optimizer reported; it
        must agree with the recomputation from (noise, rate, steps)."""
        eps_train = self.training_epsilon(steps)
        if accountant_epsilon is not None and not math.isclose(eps_train, accountant_epsilon, rel_tol=1e-6,
                                                               abs_tol=1e-9):
            raise RuntimeError(f"the training accountant reported epsilon {accountant_epsilon} but "
                               f"(noise {self.noise_multiplier}, rate {self.sample_rate}, {steps} steps) gives {eps_train}")
        total = self.epsilon_preprocessing + eps_train
        if self.epsilon_budget is not None and total > self.epsilon_budget * (1 + 1e-9):
            raise RuntimeError(f"spent epsilon {total} exceeds the budget {self.epsilon_budget}")
        return {
            "dp": True,
            "epsilon": total,
            "delta": self.delta,
            "epsilon_budget": self.epsilon_budget,
            "accountant": self.accountant,
            "mechanism": "DP-SGD (Opacus): Poisson sampling, per-sample clipping, Gaussian noise",
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "expected_batch_size": self.expected_batch_size,
            "steps": steps,
            "max_grad_norm": self.max_grad_norm,
            "clipping": f"flat, per sample ({self.grad_sample_mode})",
            "epsilon_training": eps_train,
            "epsilon_preprocessing": self.epsilon_preprocessing,
            "preprocessing": {
                "mode": self.preprocessing,
                "mechanism": ("Laplace histograms on the declared grid" if self.preprocessing == "dp"
                              else "declared schema only (no statistic read from the data)"),
                **({"bins": self.bins} if self.preprocessing == "dp" else {}),
            },
            "composition": "basic: epsilon_preprocessing + epsilon_training at delta",
            "train_rows": self.train_rows,
            "unit": "one row (add/remove adjacency); the number of training rows is treated as public",
        }


def plan_privacy(pcfg: PrivacyConfig, tcfg: TrainConfig, rows: int) -> PrivacyPlan:
    """Choose (or check) the noise multiplier for `tcfg.steps` steps on `rows` training rows;
    refuse, before anything trains, a configuration that would exceed the budget."""
    if tcfg.precision in ("bf16", "fp16"):
        raise ConfigError(f"train.precision {tcfg.precision!r} is not supported with privacy: per-sample gradients "
                          "would be clipped in low precision; set train.precision to auto or fp32 (DP runs in fp32)")
    if tcfg.grad_accum != 1:
        raise ConfigError("train.grad_accum must be 1 with privacy (every Poisson-sampled batch is one noised "
                          "step); raise train.batch_size instead")
    if rows < 2 or tcfg.batch_size >= rows:
        raise ConfigError(f"train.batch_size {tcfg.batch_size} must be below the {rows} training rows for "
                          "Poisson sampling; lower it")
    delta = run_delta(pcfg.delta, rows)
    q = sample_rate_for(rows, tcfg.batch_size)
    eps_pre = pcfg.preprocessing_share * pcfg.epsilon if pcfg.preprocessing == "dp" else 0.0
    steps = tcfg.steps
    budget_train = None if pcfg.epsilon is None else pcfg.epsilon - eps_pre

    if pcfg.noise_multiplier is not None:
        sigma = pcfg.noise_multiplier
        spent = accountant_epsilon(pcfg.accountant, sigma, q, steps, delta)
        if budget_train is not None and spent > budget_train:
            affordable = max_steps_within(pcfg.accountant, sigma, q, delta, budget_train, steps)
            need = _noise_for(budget_train, delta, q, steps, pcfg.accountant)
            raise ConfigError(
                f"privacy budget exceeded before training: {steps} steps at noise_multiplier {sigma:g} and sample rate "
                f"{q:.4g} (batch {tcfg.batch_size} of {rows} rows) spend epsilon {spent:.3f} on training"
                + (f" + {eps_pre:.3f} on preprocessing" if eps_pre else "")
                + f" > privacy.epsilon {pcfg.epsilon:g}. Lower train.steps to at most {affordable}, raise "
                f"privacy.noise_multiplier to at least {need:.3f}, or raise privacy.epsilon")
    else:
        sigma = _noise_for(budget_train, delta, q, steps, pcfg.accountant)
    return PrivacyPlan(epsilon_budget=pcfg.epsilon, delta=delta, accountant=pcfg.accountant,
                       noise_multiplier=float(sigma), sample_rate=q, steps=steps, max_grad_norm=pcfg.max_grad_norm,
                       expected_batch_size=q * rows, train_rows=rows, preprocessing=pcfg.preprocessing,
                       epsilon_preprocessing=eps_pre, bins=pcfg.bins,
                       grad_sample_mode=pcfg.grad_sample_mode)


def max_delta(rows: int) -> float:
    """The largest delta a run on `rows` rows may use: 1 / (n ln n). A mechanism that publishes each
    row with probability delta is (0, delta)-DP, so delta must be far below 1/n; 1/(n ln n) also
    bounds the chance that any of the n rows is released, n * delta, by 1/ln n."""
    return 1.0 / (rows * math.log(rows))


def run_delta(delta: float | None, rows: int) -> float:
    """The run's delta: the configured one (refused above `max_delta`) or, when null, `max_delta`
    rounded down to a power of ten."""
    bound = max_delta(rows)
    if delta is None:
        return 10.0 ** math.floor(math.log10(bound))
    if delta > bound:
        raise ConfigError(f"privacy.delta {delta:g} is above 1 / (n ln n) = {bound:.3g} for the {rows} training rows; "
                          "a larger delta allows releasing some rows outright. Use at most that (or leave "
                          "privacy.delta unset: it then defaults to that bound rounded down to a power of ten)")
    return delta


def _noise_for(target: float, delta: float, q: float, steps: int, accountant: str) -> float:
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(get_noise_multiplier(target_epsilon=target, target_delta=delta, sample_rate=q, steps=steps,
                                              accountant=accountant, epsilon_tolerance=0.005 * target))
    except ValueError as e:
        raise ConfigError(f"no noise multiplier reaches training epsilon {target:g} in {steps} steps at sample rate "
                          f"{q:.4g} ({e}); raise privacy.epsilon or lower train.steps") from None


def max_steps_within(accountant: str, sigma: float, q: float, delta: float, budget: float, upper: int) -> int:
    """Largest number of steps whose epsilon stays within `budget` (0 when not even one does)."""
    lo, hi = 0, upper
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if accountant_epsilon(accountant, sigma, q, mid, delta) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo
