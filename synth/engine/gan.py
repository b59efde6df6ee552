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

Trained by `synth.train.gan` (the family's trainer), in this process or on Ray Train workers.
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from scipy.special import ndtr
from torch import Tensor, nn
from torch.nn import functional as F

from synth.io.artifact import Artifact
from synth.engine.onepass import OnePassEngine
from synth.table import TableCodec
from synth.table.columns import CategoricalColumn


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
    # the request settings of the shared sampling protocol (one-pass: validated, then ignored)
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

    # -- the adversarial losses (the loop is synth.train.gan) ------------------------------------
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
