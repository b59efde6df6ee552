"""The GAN's adversarial training loop (the `gan` family's trainer): training by sampling,
WGAN-GP critic steps, monitoring, early stopping and rollback to the best generator, the same code
in this process and on Ray Train workers (gradients of both networks averaged over the workers,
every evaluation a checkpoint, resume after a worker failure). The model and its losses are
`synth.engine.gan.GANEngine`."""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from synth.engine.gan import GANEngine
from synth.train.checkpoint import load_checkpoint, save_checkpoint
from synth.train.distributed import ProcessGroup
from synth.train.session import Outcome, Session, TrainingData


class CondSampler:
    """Training by sampling: (column, category) by log-frequency, then a real row holding it."""

    def __init__(self, engine: GANEngine, x: Tensor, rng: np.random.Generator):
        self.engine, self.rng = engine, rng
        self.slots = [x[:, sl].argmax(dim=1).numpy() for sl in engine.cond_slices]
        self.rows = [[np.flatnonzero(s == k) for k in range(card)] for s, card in zip(self.slots, engine.cond_cards)]
        self.logp = []
        for j, card in enumerate(engine.cond_cards):
            counts = np.array([len(r) for r in self.rows[j]], dtype=float)
            w = np.log1p(counts)
            self.logp.append(w / w.sum())
        self.n = len(x)

    def draw(self, batch: int) -> tuple[np.ndarray, Tensor]:
        e = self.engine
        if not e.cond_columns:
            return self.rng.integers(0, self.n, batch), torch.zeros(batch, 0)
        col = self.rng.integers(0, len(e.cond_columns), batch)
        idx = np.empty(batch, dtype=np.int64)
        cond = e.null_conditions(batch).numpy()
        for j in np.unique(col):
            sel = np.flatnonzero(col == j)
            cats = self.rng.choice(len(self.logp[j]), size=len(sel), p=self.logp[j])
            for r, k in zip(sel, cats):
                pool = self.rows[j][k]
                idx[r] = pool[self.rng.integers(len(pool))]
                cond[r, j] = k
        if e.config.cond_extra > 0:  # reveal more conditions of the same real rows
            for j in range(len(e.cond_columns)):
                reveal = (self.rng.random(batch) < e.config.cond_extra) & (col != j)
                cond[reveal, j] = self.slots[j][idx[reveal]]
        return idx, e.cond_vector(torch.from_numpy(cond))


@torch.no_grad()
def recalibrate_norms(engine: GANEngine, rows: int = 20_000, batch: int = 500, seed: int = 0) -> None:
    """Re-estimate the generator's BatchNorm statistics (cumulative averages) on batches drawn
    the way sampling draws them: unconditioned rows conditioned by reference frequencies."""
    norms = [m for m in engine.generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    gen = torch.Generator().manual_seed(seed)
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    engine.generator.train()
    for _ in range(max(1, rows // batch)):
        x = engine.prior(batch, gen)
        c = engine.cond_vector(engine.fill_unconditioned(x, engine.null_conditions(batch)))
        engine.generator(torch.cat([x[:, : engine.config.noise_dim], c], dim=1))
    for m, mom in zip(norms, saved):
        m.momentum = mom
    engine.generator.eval()


def validation_distance(engine: GANEngine, x_val: Tensor, rows: int, seed: int) -> float:
    """Lower is better: mean marginal distance (KS on numerics, total variation on categories
    and flags) plus mean absolute difference of feature correlations, generated vs held out."""
    gen = torch.Generator().manual_seed(seed)
    n = min(rows, len(x_val)) if len(x_val) else rows
    fake = engine.sample_features(engine.prior(n, gen), engine.null_conditions(n)).double().numpy()
    real = x_val[:n].double().numpy()
    dists = []
    for kind, sl in engine.blocks:
        if kind == "linear":
            a, b = np.sort(real[:, sl.start]), np.sort(fake[:, sl.start])
            grid = np.concatenate([a, b])
            dists.append(np.abs(np.searchsorted(a, grid, "right") / len(a)
                                - np.searchsorted(b, grid, "right") / len(b)).max())
        else:
            ra = real[:, sl].argmax(1) if kind == "onehot" else (real[:, sl.start] > 0).astype(int)
            fa = fake[:, sl].argmax(1) if kind == "onehot" else (fake[:, sl.start] > 0).astype(int)
            k = (sl.stop - sl.start) if kind == "onehot" else 2
            dists.append(0.5 * np.abs(np.bincount(ra, minlength=k) / len(ra) - np.bincount(fa, minlength=k) / len(fa)).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        cr, cf = np.corrcoef(real.T), np.corrcoef(fake.T)
    ok = np.isfinite(cr) & np.isfinite(cf)
    corr = float(np.abs(cr - cf)[ok].mean()) if ok.any() else 0.0
    return float(np.mean(dists)) + corr


def _grad_norm(module: nn.Module) -> float:
    norms = [p.grad.detach().norm() for p in module.parameters() if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


@dataclass
class GANResume:
    """Where a checkpointed GAN run left off (critic, generator and both optimizers are restored
    by `load`; the random streams restart from (seed, rank, step))."""
    step: int
    optimizers: dict[str, dict]
    best: dict
    stale: int
    stop_reason: str | None

    @classmethod
    def load(cls, engine: GANEngine, directory: str) -> "GANResume":
        state = load_checkpoint(engine, directory, {"critic": engine.critic})  # generator: the artifact's
        extra = state.extra
        engine.history = list(state.manifest.get("history", []))
        best_state = {k[len("best."):]: v for k, v in state.tensors.items() if k.startswith("best.")}
        live = {k[len("live."):]: v for k, v in state.tensors.items() if k.startswith("live.")}
        if live:  # a final checkpoint holds the rolled-back generator; training goes on from the last one
            engine.generator.load_state_dict(live)
        return cls(state.step, state.optimizers, {"score": extra["best_score"], "step": extra["best_step"],
                                                  "state": best_state}, extra["stale"], extra.get("stop_reason"))


@dataclass
class GANSnapshot:
    """The state a report can checkpoint: `save(directory, manifest)` writes an artifact of the
    current generator plus everything `GANResume.load` needs."""
    engine: GANEngine
    step: int
    optimizers: dict[str, torch.optim.Optimizer]
    best: dict
    stale: int
    stop_reason: str | None = None
    live: dict[str, Tensor] | None = None  # the last trained generator, when the engine holds the best

    def save(self, directory: str, manifest: dict) -> None:
        e = self.engine
        save_checkpoint(e, self.step, directory, {**manifest, "history": e.history},
                        modules={"critic": e.critic}, optimizers=self.optimizers,
                        tensors={**{f"best.{k}": v for k, v in self.best["state"].items()},
                                 **{f"live.{k}": v for k, v in (self.live or {}).items()}},
                        extra={"best_score": self.best["score"], "best_step": self.best["step"], "stale": self.stale,
                               "stop_reason": self.stop_reason})


def train_gan(engine: GANEngine, x_train: Tensor, x_val: Tensor, *, steps: int, batch_size: int, seed: int,
              eval_every: int, time_budget_s: float | None = None,
              report: Callable[[dict, GANSnapshot], None] | None = None,
              group: ProcessGroup = ProcessGroup(), resume: GANResume | None = None) -> dict:
    """Adversarial training with monitoring, early stopping and rollback to the best generator.

    `report(metrics, snapshot)` is called at every evaluation and once more at the end (metrics
    with "final": True, snapshot of the rolled-back generator). With a `group` of several
    workers (Ray Train), each draws batch_size / world rows per step from its own seeded stream
    and gradients are averaged over the group after every backward; decisions taken on the
    validation score use rank 0's value."""
    cfg = engine.config
    rank, world = group.rank, group.world
    start = resume.step if resume else 0
    stream = seed if world == 1 and start == 0 else [seed, rank, start]  # one worker, fresh: as before
    torch.manual_seed(seed + 7919 * rank + start)
    rng = np.random.default_rng(stream)
    pac = cfg.pac
    batch = max(pac, batch_size // world // pac * pac)
    group.broadcast_module(engine.generator)
    group.broadcast_module(engine.critic)
    opt_g = torch.optim.Adam(engine.generator.parameters(), lr=cfg.lr_generator, betas=(0.5, 0.9), weight_decay=1e-6)
    opt_d = torch.optim.Adam(engine.critic.parameters(), lr=cfg.lr_critic, betas=(0.5, 0.9))
    optimizers = {"generator": opt_g, "critic": opt_d}
    sampler = CondSampler(engine, x_train, rng)
    if resume:
        opt_g.load_state_dict(resume.optimizers["generator"])
        opt_d.load_state_dict(resume.optimizers["critic"])
        best, stale, stop_reason = resume.best, resume.stale, resume.stop_reason or "steps"
    else:
        best = {"score": math.inf, "step": 0, "state": copy.deepcopy(engine.generator.state_dict())}
        stale, stop_reason = 0, "steps"
    finished = resume is not None and resume.stop_reason not in (None, "steps", "time budget")  # early stop is final
    t0 = time.perf_counter()
    window: dict[str, list[float]] = {"loss_critic": [], "loss_generator": [], "wasserstein": [],
                                      "grad_norm_critic": [], "grad_norm_generator": []}
    step = start
    for step in range(start + 1, steps + 1) if not finished else ():
        engine.generator.train()
        engine.critic.train()
        for _ in range(cfg.critic_steps):
            idx, c = sampler.draw(batch)
            real = x_train[torch.from_numpy(idx)]
            noise = torch.randn(batch, cfg.noise_dim)
            with torch.no_grad():
                fake = engine.activate(engine.generator(torch.cat([noise, c], dim=1)))
            d_real, d_fake = engine.critic_score(real, c).mean(), engine.critic_score(fake, c).mean()
            gp = engine.gradient_penalty(torch.cat([real, c], 1), torch.cat([fake, c], 1))
            loss_d = d_fake - d_real + cfg.gp_weight * gp
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            group.average_gradients(engine.critic)
            gn_d = _grad_norm(engine.critic)
            opt_d.step()
        _, c = sampler.draw(batch)
        noise = torch.randn(batch, cfg.noise_dim)
        raw = engine.generator(torch.cat([noise, c], dim=1))
        fake = engine.activate(raw)
        loss_g = -engine.critic_score(fake, c).mean() + engine.cond_cross_entropy(raw, c)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        group.average_gradients(engine.generator)
        gn_g = _grad_norm(engine.generator)
        opt_g.step()
        for k, v in (("loss_critic", loss_d), ("loss_generator", loss_g), ("wasserstein", d_real - d_fake),
                     ("grad_norm_critic", gn_d), ("grad_norm_generator", gn_g)):
            window[k].append(float(v.detach()) if isinstance(v, Tensor) else float(v))
        if not group.agree(float(math.isfinite(loss_d.item()) and math.isfinite(loss_g.item()))):
            stop_reason = "diverged (non-finite loss)"
            break
        out_of_time = time_budget_s is not None and time.perf_counter() - t0 > time_budget_s
        if step % eval_every == 0 or step == steps or out_of_time:
            recalibrate_norms(engine, seed=seed)
            score = group.agree(validation_distance(engine, x_val, cfg.val_rows, seed))
            m = {"step": step, **{k: float(np.mean(v)) for k, v in window.items()},
                 "loss_gap": float(np.mean(window["loss_generator"]) - np.mean(window["loss_critic"])),
                 "val_distance": score, "seconds": time.perf_counter() - t0,
                 "samples_per_s": (step - start) * batch * world * (cfg.critic_steps + 1) / (time.perf_counter() - t0)}
            window = {k: [] for k in window}
            engine.history.append(m)
            if score < best["score"]:
                best = {"score": score, "step": step, "state": copy.deepcopy(engine.generator.state_dict())}
                stale = 0
            else:
                stale += 1
            m["best_step"] = best["step"]
            if stale >= cfg.patience:
                stop_reason = f"early stop: no improvement in {cfg.patience} evaluations"
            elif out_of_time:
                stop_reason = "time budget"
            if report:
                report(m, GANSnapshot(engine, step, optimizers, best, stale))
            if stop_reason != "steps":
                break
    live = copy.deepcopy(engine.generator.state_dict())
    engine.generator.load_state_dict(best["state"])  # roll back to the best generator
    engine.generator.eval()
    metrics = {"step": step, "best_step": best["step"], "best_val_distance": best["score"], "stop_reason": stop_reason,
               "train_s": time.perf_counter() - t0}
    if report:
        report({**metrics, "final": True}, GANSnapshot(engine, step, optimizers, best, stale, stop_reason, live))
    return metrics


def train(engine: GANEngine, cfg, data: TrainingData, session: Session) -> Outcome:
    """The `gan` family's trainer: `train_gan` over all training rows (training by sampling needs
    them: scaling.data_mode memory), reporting every evaluation with a checkpoint; the last report
    carries the rolled-back best generator (the run's artifact on Ray Train)."""
    resume = session.restore(lambda d: GANResume.load(engine, d))

    def report(m: dict, snapshot: GANSnapshot) -> None:
        shown = m if m.get("final") else {**m, "loss": m["loss_generator"], "val_loss": m["val_distance"]}
        session.report(shown, lambda d: snapshot.save(d, {"kind": "checkpoint", "run": cfg.name}))

    t = cfg.train
    metrics = train_gan(engine, data.x_train, data.x_val, steps=t.steps, batch_size=t.batch_size, seed=t.seed,
                        eval_every=t.eval_every, time_budget_s=t.time_budget_s, report=report,
                        group=ProcessGroup(data.rank, data.world), resume=resume)
    return Outcome(metrics, engine.history)
