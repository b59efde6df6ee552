"""The diffusion engine: a denoiser over codec features, trained with one noise process and
objective, sampled by any sampler of `synth.diffusion.samplers`, with classifier-free guidance
on categorical columns.

Categorical columns use a Gaussian relaxation of their one-hot block decoded by argmax (see
docs/architecture.md for why). Condition indices are read straight off the encoded one-hot
blocks, so a training batch is just the encoded rows.

Likelihood (`log_prob`, in the space of `synth.engine.likelihood`; docs/likelihood.md): the
unconditional model's (null conditions, guidance 1) probability-flow ODE density at t_min
(`synth.diffusion.likelihood`), read as a model of rows through the forward process at t_min,
q(x_tmin | row), as a variational bound (Song et al. 2021; Kingma et al. 2021):

    log p(row) >= E_q[log p_tmin(x_tmin) - log q_disc(x_tmin | row)] + sum_num (log alpha - log phi(z))

* a present numeric's feature z (its codec normal score, z = Phi^-1(u)) is noised, x = alpha z +
  sigma e, and decoded by the Gaussian decoder p(z | x) = N(z; x / alpha, sigma^2 / alpha^2): its
  decoder and q terms cancel to log alpha (the t_min truncation term); -log phi(z) takes the density
  from z to u = Phi(z) (`log_std_normal`);
* a categorical's one-hot block (slot k, vertex v_k in {-1, 1}^K) and a null flag (+-1) are
  discrete: the model's own discretisation (argmax of the block, the flag's sign, as sampling
  decodes) gives P(k) = the ODE density's mass over the region where slot k wins, bounded from below
  by the dequantisation q = N(alpha v_k, sigma^2 I) truncated to that region (rejection draws; its
  normaliser bounded by the union bound 1 - (K - 1) Phi(-sqrt(2) alpha / sigma), ~1 at t_min);
* a null's value is marginalised with q = the training encoding of a null (z ~ N(0, 1)) noised to
  t_min, N(0, alpha^2 + sigma^2).

One draw of q and of the Hutchinson probes per row, from the seeded generator: the same seed gives
the same scores.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from synth.diffusion.likelihood import ODELikelihoodConfig, ode_log_prob, rademacher
from synth.diffusion.objectives import ObjectiveConfig
from synth.diffusion.processes import ProcessConfig
from synth.diffusion.samplers import SAMPLERS
from synth.engine.likelihood import LOG_SQRT_2PI, log_prob_rows, log_std_normal
from synth.engine.sampling import MAX_STEPS, DenoisingEngine
from synth.errors import ConfigError
from synth.nets import MLPConfig, ResidualMLP
from synth.table import TableCodec
from synth.table.columns import CategoricalColumn, NumericColumn


class DistilledSpec(BaseModel):
    """What makes an artifact a distilled student (written by `synth distill`)."""
    model_config = ConfigDict(extra="forbid")
    steps: int = Field(ge=1, description="network evaluations per sample (guidance included)")
    grid: list[float] = Field(description="the student's descending time grid, steps + 1 points ending at 0")
    guidance_max: float = Field(ge=0, description="largest guidance weight the student was trained for")
    teacher: dict[str, Any] = Field(default_factory=dict, description="teacher artifact id, uri, sampler, NFE")


class DiffusionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    family: Literal["diffusion"] = "diffusion"
    process: ProcessConfig = Field(default_factory=ProcessConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    net: MLPConfig = Field(default_factory=MLPConfig)
    condition_columns: list[str] | None = Field(
        None, description="categorical columns usable as conditions; null = all categorical columns")
    cond_drop_all: float = Field(0.2, ge=0, le=1, description="share of training rows with no condition")
    cond_drop_each: float = Field(0.5, ge=0, le=1, description="otherwise, chance each condition is hidden")
    sampler: str = "dpmpp_2m"
    steps: int = Field(10, ge=1, le=MAX_STEPS)
    guidance: float = Field(1.0, ge=0)
    sample_batch_size: int = Field(8192, ge=1)
    distilled: DistilledSpec | None = Field(None, description="set on students made by `synth distill`")
    likelihood: ODELikelihoodConfig = Field(default_factory=ODELikelihoodConfig,
                                            description="log_prob through the probability-flow ODE")


class DiffusionEngine(DenoisingEngine):
    family = "diffusion"
    config_class = DiffusionConfig

    def __init__(self, config: DiffusionConfig, codec: TableCodec):
        self.config = config
        self.codec = codec
        self.process = config.process.build()
        self.objective = config.objective.build()
        names = codec.categorical_names() if config.condition_columns is None else config.condition_columns
        self.cond_columns = [codec.categorical(c).name for c in names]
        self.cond_slices = [codec.slice_of(c) for c in self.cond_columns]
        self.cond_cards = [s.stop - s.start for s in self.cond_slices]
        lo, hi = codec.feature_bounds()
        self.x0_lo, self.x0_hi = torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32)
        self.net = ResidualMLP(codec.width, config.net, self.cond_cards)
        self.ema = copy.deepcopy(self.net).requires_grad_(False)
        if config.distilled is not None:  # a student jumps along its grid: it has no ODE to score rows with
            self.log_prob = None
            self.no_likelihood = "a distilled student has no likelihood; score rows with its teacher"

    # -- training -------------------------------------------------------------------------
    def conditions_from_features(self, x0: Tensor) -> Tensor:
        if not self.cond_columns:
            return torch.zeros(x0.shape[0], 0, dtype=torch.long, device=x0.device)
        return torch.stack([x0[:, s].argmax(dim=1) for s in self.cond_slices], dim=1)

    def loss(self, net: nn.Module, x0: Tensor, generator: torch.Generator | None, reduce: bool = True) -> Tensor:
        return self.denoising_loss(net, x0, self.conditions_from_features(x0), generator, reduce)

    # -- sampling -------------------------------------------------------------------------
    def samplers(self) -> list[str]:
        """Sampler names this artifact accepts: a student only the students' sampler."""
        if self.config.distilled is None:
            return super().samplers()
        return sorted(s for s, spec in SAMPLERS.items() if spec.student)

    def fixed_steps(self) -> int | None:
        """A student runs exactly the steps it was distilled for."""
        return None if self.config.distilled is None else self.config.distilled.steps

    def validate_request(self, n: int, sampler: str, steps: int, guidance: float) -> None:
        spec = self.config.distilled
        student_sampler = sampler in SAMPLERS and SAMPLERS[sampler].student
        if spec is None and student_sampler:
            raise ConfigError(f"this model is not distilled, so sampler {sampler!r} is unavailable; make a student "
                              f"with `synth distill MODEL --steps 4`, or choose one of {self.samplers()}")
        if spec is not None:
            if not student_sampler:
                raise ConfigError(f"this model is a distilled student; it samples only with sampler "
                                  f"{self.samplers()[0]!r} (got {sampler!r}); use its teacher for other samplers")
            if steps != spec.steps:
                raise ConfigError(f"this student was distilled for steps={spec.steps}, got steps={steps}; "
                                  f"distill another student for {steps} steps")
            if isinstance(guidance, (int, float)) and guidance > spec.guidance_max:
                raise ConfigError(f"guidance {guidance} is above {spec.guidance_max}, the largest weight this "
                                  "student was distilled for; lower it or distill with a larger guidance_max")
        super().validate_request(n, sampler, steps, guidance)

    def model_fn(self, net: nn.Module, guidance: Tensor | None = None):
        """(x, t, cond) -> denoised estimate, projected into the features' range. Near t = 1 an
        eps head divides by alpha ~ 0 and the raw estimate can be wild; the projection keeps
        deterministic solvers from amplifying it. A distilled student's x0 head is not projected:
        its intermediate estimates are whatever makes a DDIM step land on the teacher's trajectory.
        `guidance` (per row) feeds a student's w input."""
        lo, hi = self.x0_lo, self.x0_hi
        project = self.config.distilled is None

        def fn(x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
            out = net(x, t, cond) if guidance is None else net(x, t, cond, guidance)
            x0 = self.objective.to_x0(out, x, t, self.process)
            return torch.maximum(torch.minimum(x0, hi.to(x0)), lo.to(x0)) if project else x0
        return fn

    def guidance_input(self, cond: Tensor, guidance: float) -> Tensor:
        """A student's per-row guidance input: w where a condition is given, 1 where none is
        (unconditional rows ignore w; training data uses the same convention)."""
        none_given = (cond == self.null_conditions(cond.shape[0], cond.device)).all(dim=1)
        return torch.where(none_given, 1.0, float(guidance)).to(torch.float32)

    def sample_features(self, x: Tensor, cond: Tensor, *, sampler: str, steps: int, guidance: float,
                        generator: torch.Generator | None) -> Tensor:
        """Run the sampler from prior draws `x` (n, width) under condition indices `cond`."""
        if not SAMPLERS[sampler].student:
            return self.solve(self.model_fn(self.ema), x, cond, sampler=sampler, steps=steps, guidance=guidance,
                              generator=generator)
        self.ema.eval()  # a student takes the guidance weight as an input: one evaluation per step
        x, cond, _ = self.on_sampling_device(x, cond, None)
        fn = self.model_fn(self.ema, self.guidance_input(cond, guidance))
        ts = torch.tensor(self.config.distilled.grid, dtype=torch.float64)
        return SAMPLERS[sampler](lambda x_, t_: fn(x_, t_, cond), x, ts, process=self.process).cpu()

    def prior(self, n: int, generator: torch.Generator) -> Tensor:
        return self.process.prior((n, self.codec.width), generator=generator)

    # -- likelihood (synth.engine.likelihood, synth.diffusion.likelihood) ---------------------
    @property
    def likelihood_kind(self) -> str:
        c = self.config.likelihood
        trace = "exact trace" if self.codec.width <= c.exact_trace_features else \
            f"Hutchinson trace ({c.probes} Rademacher probe{'s' if c.probes > 1 else ''})"
        return (f"bound: probability-flow ODE of the unconditional model (RK4, {c.steps} steps from t_min {c.t_min:g}, "
                f"{trace}); numerics through the Gaussian decoder at t_min, categories and null flags through a "
                f"truncated-Gaussian dequantisation at t_min")

    @property
    def likelihood_rows(self) -> int:
        """At most this many held-out rows are scored by evaluations (`synth.evaluate.likelihood`)."""
        return self.config.likelihood.held_out_rows

    def _score_layout(self) -> tuple[list[int], list[int], list[int], list[slice]]:
        """Feature indices of numeric values, of nullable numerics' values and their null flags, and
        the categorical blocks."""
        num, null_value, null_flag, blocks = [], [], [], []
        for col, sl in zip(self.codec.columns, self.codec.slices):
            if isinstance(col, NumericColumn):
                num.append(sl.start)
                if col.nullable:
                    null_value.append(sl.start)
                    null_flag.append(sl.start + 1)
            elif isinstance(col, CategoricalColumn):
                blocks.append(sl)
            else:
                raise ConfigError(f"column {col.name!r} is {col.kind}; diffusion likelihoods cover tabular columns")
        return num, null_value, null_flag, blocks

    def dequantise_at_t_min(self, x0: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Encoded rows (n, W) -> a draw x of q(x_tmin | row) (float64) and the per-row correction
        that turns log p_tmin(x) into the bound on log p(row) (module docstring): log alpha - log phi(z)
        per present numeric, -log q of the discrete dimensions and of nulls' values. Draws come from
        `generator` (CPU)."""
        t_min = self.config.likelihood.t_min
        tt = torch.tensor(t_min, dtype=torch.float64)
        a, s = float(self.process.alpha(tt)), float(self.process.sigma(tt))
        x0 = x0.double()
        n = x0.shape[0]
        num, null_value, null_flag, blocks = self._score_layout()

        def log_normal(e: Tensor, scale: float) -> Tensor:  # log N(scale e; 0, scale^2), summed over a row
            return (-0.5 * e * e - math.log(scale) - LOG_SQRT_2PI).sum(dim=1)

        eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        x = a * x0 + s * eps
        corr = torch.zeros(n, dtype=torch.float64)
        present = torch.ones(n, len(num), dtype=torch.bool)
        if null_flag:
            null = x0[:, null_flag] > 0
            present[:, [num.index(j) for j in null_value]] = ~null
            # the flag's sign region, f (alpha f + sigma e) > 0: a truncated normal drawn by inverse CDF
            lo = float(torch.special.ndtr(torch.tensor(-a / s, dtype=torch.float64)))
            r = torch.rand(n, len(null_flag), generator=generator, dtype=torch.float64)
            e = torch.special.ndtri(lo + r * (1 - lo)) * torch.sign(x0[:, null_flag])
            x[:, null_flag] = a * x0[:, null_flag] + s * e
            corr -= log_normal(e, s) - len(null_flag) * math.log1p(-lo)
            # a null's value: its training encoding N(0, 1) noised to t_min, N(0, alpha^2 + sigma^2)
            v = math.sqrt(a * a + s * s)
            z = torch.randn(n, len(null_value), generator=generator, dtype=torch.float64)
            x[:, null_value] = torch.where(null, v * z, x[:, null_value])
            corr -= torch.where(null, -0.5 * z * z - math.log(v) - LOG_SQRT_2PI, 0.0).sum(dim=1)
        tail = float(torch.special.ndtr(torch.tensor(-math.sqrt(2) * a / s, dtype=torch.float64)))
        for sl in blocks:
            k = sl.stop - sl.start
            e, slot = eps[:, sl], x0[:, sl].argmax(dim=1)
            for _ in range(100):  # rejection: redraw the (rare) draws whose argmax leaves the row's slot
                out = (a * x0[:, sl] + s * e).argmax(dim=1) != slot
                if not bool(out.any()):
                    break
                e[out] = torch.randn(int(out.sum()), k, generator=generator, dtype=torch.float64)
            else:
                raise ConfigError(f"likelihood.t_min {t_min:g} is too noisy to dequantise a {k}-slot category; "
                                  "lower it")
            x[:, sl] = a * x0[:, sl] + s * e
            # -log q: the Gaussian's density, truncated to the slot's region (its mass >= 1 - (k-1) tail)
            corr -= log_normal(e, s) - math.log1p(-(k - 1) * tail)
        z = x0[:, num]
        corr += torch.where(present, math.log(a) - log_std_normal(z), 0.0).sum(dim=1)
        return x, corr

    def log_prob(self, rows, *, seed: int = 0, batch_size: int = 1024, steps: int | None = None) -> np.ndarray:
        """log p(row) in nats of every row of `rows` (module docstring: a lower bound, estimated
        with one draw of the dequantisation at t_min and, above `exact_trace_features` codec
        features, `probes` Hutchinson probes per row; both from `seed`). `steps`: RK4 steps of the ODE
        (default: the config's `likelihood.steps`)."""
        c = self.config.likelihood
        steps = c.steps if steps is None else steps
        if not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"likelihood steps must be a positive integer, got {steps!r}")
        self.ema.eval()
        dev = next(self.ema.parameters()).device
        fn = self.model_fn(self.ema)
        exact = self.codec.width <= c.exact_trace_features

        def score(x0: Tensor, gen: torch.Generator) -> Tensor:
            x, corr = self.dequantise_at_t_min(x0, gen)
            probe = None if exact else rademacher((c.probes, *x.shape), gen)
            cond = self.null_conditions(x.shape[0], dev)
            lp = ode_log_prob(lambda x_, t_: fn(x_, t_, cond), x.to(dev), process=self.process, steps=steps,
                              t_min=c.t_min, probe=probe)
            return lp.cpu() + corr
        return log_prob_rows(self, rows, score, batch_size, seed)

    def describe(self) -> dict:
        out = super().describe()
        if callable(self.log_prob):
            out["likelihood"] = {"estimate": self.likelihood_kind, **self.config.likelihood.model_dump(mode="json")}
        return out
