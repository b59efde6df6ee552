"""A conditional WGAN-GP engine over the table codec's features (CTGAN-style conditioning and
PacGAN packing, without CTGAN's mode-specific normalisation: the codec's quantile-normal
numerics already are ~N(0, 1)).

- Generator: noise + conditional vector -> codec features (linear numerics, tanh null flags,
  Gumbel-softmax one-hot blocks scaled to [-1, 1]), BatchNorm as in CTGAN. Sampling uses the
  BatchNorm statistics in eval mode (a row's output must not depend on the other rows of its
  batch: the endpoint merges requests), re-estimated after training and before every
  validation on the sampling-time condition distribution: the running averages from training
  (log-frequency conditions, moving weights) sampled much worse on Adult (SDMetrics 0.78 vs
  0.85 with batch statistics; LayerNorm instead trained worse, 0.73).
- Critic: `pac` rows packed into one input (PacGAN), each with its conditional vector;
  gradient penalty on real/fake interpolates (WGAN-GP).
- Training by sampling: each row of a batch picks a condition column uniformly and a category
  with probability proportional to log(1 + count), then a real row with that category, so rare
  categories are seen as often as the log of their count suggests rather than their count;
  the generator gets a cross-entropy term for honouring the condition. Other condition columns
  of the same real row are revealed with probability `cond_extra`, so several conditions can be
  given at once when sampling.
- Unconditional rows are conditioned (as in CTGAN) on one column and category drawn with the
  reference frequencies, from two extra prior dimensions, so the same seed gives the same rows.
- Stability is monitored every `train.eval_every` steps (critic and generator losses, their gap,
  the Wasserstein estimate, gradient norms) with a validation distance (marginals + feature
  correlations of generated vs held-out rows); training stops early after `patience`
  evaluations without improvement or on a non-finite loss, and the best generator is kept.
  The distance is noisy from one evaluation to the next: with patience 6 Adult stopped at step
  4,250 (SDMetrics 0.80); patience 20 and 10,000 steps reach 0.87 (pairs 0.83), measured by
  bench/families.py against SDV CTGAN-50's 0.82 in BENCHMARKS.md.

Trains in this process (`synth fit` with `model.family: gan`) or on Ray Train workers
(`scaling.num_workers > 0`: gradients of both networks averaged over the workers, every
evaluation a checkpoint, resume after a worker failure); both run `train_gan`.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from scipy.special import ndtr
from torch import Tensor, nn
from torch.nn import functional as F

from synth.artifact import Artifact
from synth.engine.base import register
from synth.engine.onepass import OnePassEngine
from synth.errors import SynthError
from synth.table import TableCodec
from synth.table.columns import CategoricalColumn
from synth.train.distributed import ProcessGroup


class GANConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    family: Literal["gan"] = "gan"
    noise_dim: int = Field(128, ge=1)
    gen_width: int = Field(256, ge=8)
    gen_depth: int = Field(2, ge=1)
    critic_width: int = Field(256, ge=8)
    critic_depth: int = Field(2, ge=1)
    pac: int = Field(10, ge=1, description="rows packed per critic input (PacGAN)")
    gp_weight: float = Field(10.0, ge=0)
    critic_steps: int = Field(1, ge=1, description="critic updates per generator update")
    lr_generator: float = Field(2e-4, gt=0)
    lr_critic: float = Field(2e-4, gt=0)
    tau: float = Field(0.2, gt=0, description="Gumbel-softmax temperature of categorical blocks")
    condition_columns: list[str] | None = Field(None, description="null = every categorical column")
    cond_extra: float = Field(0.1, ge=0, le=1, description="chance each further condition column is revealed")
    patience: int = Field(20, ge=1, description="evaluations without improvement before stopping early (the "
                                                "validation distance is noisy: 6 stopped Adult at step 4,250, "
                                                "SDMetrics 0.80, where 10,000 steps reach 0.87)")
    val_rows: int = Field(4096, ge=64, description="rows generated for each validation")
    # accepted for interface parity with diffusion (one-pass generator: they do not apply)
    sampler: str = "ddim"
    steps: int = Field(1, ge=1)
    guidance: float = Field(1.0, ge=0)
    sample_batch_size: int = Field(16_384, ge=1)


def _mlp(d_in: int, width: int, depth: int, d_out: int, critic: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = d_in
    for _ in range(depth):
        if critic:
            layers += [nn.Linear(d, width), nn.LeakyReLU(0.2), nn.Dropout(0.5)]
        else:
            layers += [nn.Linear(d, width), nn.BatchNorm1d(width), nn.ReLU()]
        d = width
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers)


@register
class GANEngine(OnePassEngine):
    family = "gan"

    def __init__(self, config: GANConfig, codec: TableCodec):
        self.config = config
        self.codec = codec
        names = codec.categorical_names() if config.condition_columns is None else config.condition_columns
        self.cond_columns = [codec.categorical(c).name for c in names]
        self.cond_slices = [codec.slice_of(c) for c in self.cond_columns]
        self.cond_cards = [s.stop - s.start for s in self.cond_slices]
        self.cond_offsets = np.concatenate([[0], np.cumsum(self.cond_cards)]).astype(int)
        self.cond_dim = int(self.cond_offsets[-1])
        self.freqs = [np.asarray(codec.categorical(c).probs, dtype=np.float64) for c in self.cond_columns]
        # output activations per feature block
        self.blocks: list[tuple[str, slice]] = []
        for col, sl in zip(codec.columns, codec.slices):
            if isinstance(col, CategoricalColumn):
                self.blocks.append(("onehot", sl))
            else:
                self.blocks.append(("linear", slice(sl.start, sl.start + 1)))
                if col.nullable:
                    self.blocks.append(("flag", slice(sl.start + 1, sl.start + 2)))
        self.generator = _mlp(config.noise_dim + self.cond_dim, config.gen_width, config.gen_depth, codec.width, False)
        self.critic = _mlp((codec.width + self.cond_dim) * config.pac, config.critic_width, config.critic_depth, 1,
                           True)
        self.net = self.generator
        self.history: list[dict] = []

    # -- conditional vectors -------------------------------------------------------------------
    def cond_vector(self, cond: Tensor) -> Tensor:
        """(n, k) slot indices (card = not given) -> (n, cond_dim) one-hot blocks."""
        out = torch.zeros(cond.shape[0], self.cond_dim)
        for j, card in enumerate(self.cond_cards):
            given = cond[:, j] < card
            rows = torch.nonzero(given).squeeze(1)
            out[rows, int(self.cond_offsets[j]) + cond[rows, j]] = 1.0
        return out

    def activate(self, raw: Tensor, hard: bool = False) -> Tensor:
        parts = []
        for kind, sl in self.blocks:
            h = raw[:, sl]
            if kind == "linear":
                parts.append(h)
            elif kind == "flag":
                parts.append(torch.tanh(h))
            elif hard:
                parts.append(F.one_hot(h.argmax(dim=1), h.shape[1]).to(h.dtype) * 2 - 1)
            else:
                parts.append(F.gumbel_softmax(h, tau=self.config.tau) * 2 - 1)
        return torch.cat(parts, dim=1)

    # -- the sampling protocol (synth.engine.onepass) ------------------------------------------
    def prior(self, n: int, generator: torch.Generator) -> Tensor:
        """Noise plus two dimensions that pick the condition of unconditioned rows."""
        return torch.randn((n, self.config.noise_dim + 2), generator=generator)

    def fill_unconditioned(self, x: Tensor, cond: Tensor) -> Tensor:
        """Rows with no condition get one column and category drawn with reference frequencies."""
        if not self.cond_columns:
            return cond
        cond = cond.clone()
        free = (cond >= torch.tensor(self.cond_cards)).all(dim=1).numpy()
        if free.any():
            u = ndtr(x[free, -2:].double().numpy())
            col = np.minimum((u[:, 0] * len(self.cond_columns)).astype(int), len(self.cond_columns) - 1)
            rows = np.flatnonzero(free)
            for j in np.unique(col):
                sel = col == j
                cdf = np.cumsum(self.freqs[j])
                cat = np.minimum(np.searchsorted(cdf / cdf[-1], u[sel, 1], side="right"), len(cdf) - 1)
                cond[rows[sel], j] = torch.from_numpy(cat)
        return cond

    def to(self, device: torch.device | str) -> "GANEngine":
        self.generator.to(device)
        return self

    @torch.no_grad()
    def sample_features(self, x: Tensor, cond: Tensor, *, sampler: str = "ddim", steps: int = 1,
                        guidance: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        self.generator.eval()
        dev = next(self.generator.parameters()).device
        c = self.cond_vector(self.fill_unconditioned(x.cpu(), cond.cpu()))
        inp = torch.cat([x[:, : self.config.noise_dim].float().cpu(), c], dim=1).to(dev)
        return self.activate(self.generator(inp), hard=True).float().cpu()

    # -- training ------------------------------------------------------------------------------
    def loss(self, net: nn.Module, x0: Tensor, generator: torch.Generator | None, reduce: bool = True) -> Tensor:
        raise SynthError("the GAN engine trains with its adversarial loop (synth.engine.gan.train_gan), "
                         "not the diffusion loop")

    def gradient_penalty(self, real: Tensor, fake: Tensor) -> Tensor:
        pac = self.config.pac
        alpha = torch.rand(real.shape[0] // pac, 1, 1).expand(-1, pac, 1).reshape(-1, 1)
        mix = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        out = self.critic(mix.reshape(-1, pac * mix.shape[1]))
        grad, = torch.autograd.grad(out.sum(), mix, create_graph=True)
        norms = grad.reshape(-1, pac * mix.shape[1]).norm(dim=1)
        return ((norms - 1) ** 2).mean()

    def critic_score(self, x: Tensor, c: Tensor) -> Tensor:
        h = torch.cat([x, c], dim=1)
        return self.critic(h.reshape(-1, self.config.pac * h.shape[1]))

    def cond_cross_entropy(self, raw: Tensor, c: Tensor) -> Tensor:
        losses = []
        for j, sl in enumerate(self.cond_slices):
            block = c[:, int(self.cond_offsets[j]):int(self.cond_offsets[j + 1])]
            given = block.sum(dim=1) > 0
            if given.any():
                ce = F.cross_entropy(raw[given, sl], block[given].argmax(dim=1), reduction="sum")
                losses.append(ce)
        return torch.stack(losses).sum() / raw.shape[0] if losses else raw.new_zeros(())

    def sampling_state(self) -> dict[str, Tensor]:
        return {k: v.float() if v.is_floating_point() else v for k, v in self.generator.state_dict().items()}

    def config_dict(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json")

    def load_sampling_state(self, tensors: dict[str, Tensor]) -> None:
        self.generator.load_state_dict(tensors)
        self.generator.eval()

    @classmethod
    def from_artifact(cls, art: Artifact) -> "GANEngine":
        engine = cls(GANConfig.model_validate(art.engine["config"]), TableCodec.from_dict(art.codec))
        engine.load_sampling_state(art.tensors)
        return engine


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
    def load(cls, engine: "GANEngine", directory: str) -> "GANResume":
        from synth.train.checkpoint import load_checkpoint

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
    engine: "GANEngine"
    step: int
    optimizers: dict[str, torch.optim.Optimizer]
    best: dict
    stale: int
    stop_reason: str | None = None
    live: dict[str, Tensor] | None = None  # the last trained generator, when the engine holds the best

    def save(self, directory: str, manifest: dict) -> None:
        from synth.train.checkpoint import save_checkpoint

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


def fit_gan(cfg, report: Callable | None = None):
    """`synth fit` for `model.family: gan` in this process (`scaling.num_workers: 0`; with
    workers, `synth.train.ray_train` runs the same loop on Ray Train): prepare data like
    diffusion, train, write the artifact. Returns synth.train.fit.FitResult."""
    from synth import storage
    from synth.engine import save_engine
    from synth.train.fit import FitResult, encode_tensor, model_manifest, prepare

    t0 = time.perf_counter()
    storage.check_writable(cfg.output)
    prep = prepare(cfg)
    torch.manual_seed(cfg.train.seed)
    engine = GANEngine(cfg.model, prep.codec)
    x_train = encode_tensor(prep.codec, prep.train, seed=cfg.train.seed)
    x_val = encode_tensor(prep.codec, prep.val, seed=None, strict=False)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    t1 = time.perf_counter()

    def on_report(m: dict, snapshot: GANSnapshot) -> None:
        if report and not m.get("final"):
            report({**m, "loss": m["loss_generator"], "val_loss": m["val_distance"]}, None)

    metrics = train_gan(engine, x_train, x_val, steps=cfg.train.steps, batch_size=cfg.train.batch_size,
                        seed=cfg.train.seed, eval_every=cfg.train.eval_every, time_budget_s=cfg.train.time_budget_s,
                        report=on_report)
    manifest = model_manifest(cfg, prep, metrics, {"prepare_s": t1 - t0, "train_s": metrics["train_s"],
                                                   "total_s": time.perf_counter() - t0}, workers=0)
    manifest["history"] = engine.history
    artifact_id = save_engine(engine, cfg.artifact_uri, manifest)
    return FitResult(cfg.artifact_uri, artifact_id, metrics, prep)
