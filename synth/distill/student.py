"""Trajectory distillation with guidance as an input.

The teacher's deterministic solver maps prior noise to a sample through many small steps. We
record each trajectory at the student's K + 1 grid points (a subset of the teacher's grid) and
train the student so that ONE DDIM step from grid point t_i lands where the teacher's many steps
land at t_{i-1}: the student's x0 estimate must be

    x0* = (x_s - (sigma_s / sigma_t) x_t) / (alpha_s - sigma_s alpha_t / sigma_t)

(for s = 0 simply the teacher's sample). This is the target of progressive distillation
(Salimans & Ho 2022) taken over K teacher segments at once instead of halving the step count
log2(N / K) times, which needs one training run instead of several on a CPU budget.

Guidance distillation (Meng et al. 2023): trajectories are drawn with random condition subsets
and guidance weights w in [0, guidance_max], the teacher running both halves of classifier-free
guidance; the student receives w as an input, so guided sampling costs one evaluation per step.

Trajectories come from the teacher only: the student never reads the reference data, so a
student of a differentially private teacher keeps the teacher's guarantee (post-processing).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from synth.diffusion.objectives import ObjectiveConfig
from synth.diffusion.processes import timesteps
from synth.diffusion.samplers import SAMPLERS
from synth.distill.config import DistillConfig
from synth.engine.diffusion import DiffusionEngine, DistilledSpec


def teacher_grid(teacher: DiffusionEngine, cfg: DistillConfig) -> tuple[Tensor, list[int]]:
    """The teacher's full time grid and the indices of the student's grid points on it."""
    full = timesteps(teacher.process, cfg.teacher_steps, SAMPLERS[cfg.teacher_sampler].spacing)
    every = cfg.teacher_steps // cfg.steps
    return full, list(range(0, cfg.teacher_steps + 1, every))


def make_student(teacher: DiffusionEngine, cfg: DistillConfig) -> DiffusionEngine:
    """A student engine: the teacher's codec, process and network shape, an x0 head, the guidance
    weight as an input, and the trunk initialised from the teacher's EMA weights."""
    full, idx = teacher_grid(teacher, cfg)
    spec = DistilledSpec(steps=cfg.steps, grid=[float(full[i]) for i in idx], guidance_max=cfg.guidance_max,
                         teacher={"artifact_id": (teacher.manifest or {}).get("artifact_id"),
                                  "uri": getattr(teacher, "uri", cfg.teacher),
                                  "sampler": cfg.teacher_sampler, "steps": cfg.teacher_steps})
    tc = teacher.config
    config = tc.model_copy(update={
        "objective": ObjectiveConfig(head="x0", t_eps=tc.objective.t_eps),
        "net": tc.net.model_copy(update={"guidance_input": True}),
        "sampler": "distilled", "steps": cfg.steps, "guidance": min(tc.guidance, cfg.guidance_max),
        "distilled": spec})
    student = DiffusionEngine(config, teacher.codec)
    state = {k: v for k, v in teacher.ema.state_dict().items() if not k.startswith("out.")}
    missing, unexpected = student.net.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith(("guidance_mlp.", "out.")) for k in missing), (missing, unexpected)
    student.ema.load_state_dict(student.net.state_dict())
    return student


def _chunk_seed(seed: int, rank: int, chunk: int) -> int:
    return int(np.random.SeedSequence([seed, rank, chunk]).generate_state(1, np.uint64)[0] >> 1)


@torch.no_grad()
def teacher_trajectories(teacher: DiffusionEngine, cfg: DistillConfig, n: int, *, rank: int = 0,
                         chunk: int = 8192) -> Tensor:
    """`n` teacher trajectories packed as rows [x at the K + 1 grid points | condition indices | w],
    float32. Deterministic in (cfg.seed, rank)."""
    full, idx = teacher_grid(teacher, cfg)
    keep = set(idx)
    fn = teacher.model_fn(teacher.ema)
    k = len(teacher.cond_columns)
    teacher.ema.eval()
    out = []
    for c, start in enumerate(range(0, n, chunk)):
        b = min(chunk, n - start)
        gen = torch.Generator().manual_seed(_chunk_seed(cfg.seed, rank, c))
        n_u = b if k == 0 else max(1, math.ceil(b * cfg.uncond_share))
        null_u = teacher.null_conditions(n_u)
        states_u = _trajectory(fn, teacher.prior(n_u, gen), null_u, null_u, torch.ones(n_u), full, keep, teacher,
                               cfg.teacher_sampler)
        parts = [(states_u, null_u, torch.ones(n_u))]
        n_c = b - n_u
        if n_c > 0:
            # realistic condition combinations: the unconditional samples' categories, random subsets
            src = teacher.conditions_from_features(states_u[:, -1])[torch.randint(0, n_u, (n_c,), generator=gen)]
            hide = torch.rand(src.shape, generator=gen) < cfg.cond_drop_each
            hide[torch.arange(n_c), torch.randint(0, k, (n_c,), generator=gen)] = False  # keep at least one
            null_c = teacher.null_conditions(n_c)
            cond = torch.where(hide, null_c, src)
            w = torch.rand(n_c, generator=gen) * cfg.guidance_max
            states_c = _trajectory(fn, teacher.prior(n_c, gen), cond, null_c, w, full, keep, teacher,
                                   cfg.teacher_sampler)
            parts.append((states_c, cond, w))
        for states, cond, w in parts:
            out.append(torch.cat([states.flatten(1), cond.float(), w[:, None]], dim=1))
    return torch.cat(out)


def thin(packed: Tensor, width: int, steps_from: int, steps_to: int) -> Tensor:
    """Trajectories packed for a `steps_from` student, re-packed for a `steps_to` student whose
    grid is every (steps_from / steps_to)-th point of the same grid."""
    if steps_from % steps_to:
        raise ValueError(f"{steps_to} steps do not divide {steps_from}")
    every = steps_from // steps_to
    n = packed.shape[0]
    states = packed[:, :(steps_from + 1) * width].reshape(n, steps_from + 1, width)[:, ::every]
    return torch.cat([states.flatten(1), packed[:, (steps_from + 1) * width:]], dim=1)


def _trajectory(fn, x: Tensor, cond: Tensor, null: Tensor, w: Tensor, grid: Tensor, keep: set[int],
                teacher: DiffusionEngine, sampler: str) -> Tensor:
    """Run the teacher's solver with per-row guidance weights; states at the kept grid indices."""
    guided = not torch.equal(cond, null)
    wcol = w[:, None]

    def den(x_: Tensor, t_: Tensor) -> Tensor:
        if not guided:
            return fn(x_, t_, cond)
        both = fn(torch.cat([x_, x_]), torch.cat([t_, t_]), torch.cat([cond, null]))
        x0_c, x0_u = both.chunk(2)
        return x0_u + wcol.to(x0_u) * (x0_c - x0_u)

    states = [x] if 0 in keep else []

    def record(info: dict) -> None:
        if info["i"] + 1 in keep:
            states.append(info["x"])

    SAMPLERS[sampler](den, x, grid, process=teacher.process, callback=record)
    return torch.stack(states, dim=1)


class DistillTask:
    """What `synth.train.loop.train` needs (net, ema, loss, update_ema) for a student trained on
    packed teacher trajectories."""

    def __init__(self, student: DiffusionEngine):
        self.student = student
        self.net, self.ema = student.net, student.ema
        spec = student.config.distilled
        self.K, self.W, self.k = spec.steps, student.codec.width, len(student.cond_columns)
        grid = torch.tensor(spec.grid, dtype=torch.float64)
        a, s = student.process.alpha(grid), student.process.sigma(grid)
        t_, s_ = slice(0, self.K), slice(1, self.K + 1)
        # per segment i (from grid[i] to grid[i+1]): target = c_s * x_s - c_t * x_t
        denom = a[s_] - s[s_] * a[t_] / s[t_]
        self.c_s = (1.0 / denom).float()
        self.c_t = ((s[s_] / s[t_]) / denom).float()
        self.t = grid[t_].float()
        # the error that matters is where the step lands: |x_s - x_s*| = denom |x0 - x0*|, so weight
        # each segment by denom^2 (normalised); in x0 space the first, widest segment would dominate
        # (measured on Adult, 4 steps, 1k steps: SDMetrics 0.824 landing-weighted vs 0.811 unweighted)
        self.weight = (denom ** 2 / (denom ** 2).mean()).float()

    def unpack(self, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n, K1, W = rows.shape[0], self.K + 1, self.W
        states = rows[:, :K1 * W].reshape(n, K1, W)
        cond = rows[:, K1 * W:K1 * W + self.k].round().long()
        return states, cond, rows[:, -1]

    def loss(self, net: nn.Module, rows: Tensor, generator: torch.Generator | None) -> Tensor:
        states, cond, w = self.unpack(rows)
        n, dev = rows.shape[0], rows.device
        i = torch.randint(0, self.K, (n,), generator=generator, device=dev)
        ar = torch.arange(n, device=dev)
        x_t, x_s = states[ar, i], states[ar, i + 1]
        c_s, c_t = self.c_s.to(dev)[i, None], self.c_t.to(dev)[i, None]
        target = c_s * x_s - c_t * x_t
        pred = net(x_t, self.t.to(dev)[i], cond, w)
        return (self.weight.to(dev)[i, None] * (pred.float() - target) ** 2).mean()

    def update_ema(self, net: nn.Module, decay: float) -> None:
        self.student.update_ema(net, decay)
