"""The VAE family: a conditional variational autoencoder over the codec's features with a
likelihood per column kind, trained on the beta-ELBO with KL annealing and free bits.

Per-kind likelihood p(x | z, c), in the space of `synth.engine.likelihood`:

* numeric (continuous, integer, datetime): a Gaussian, or a mixture of `mixture_components`
  Gaussians, over the codec's quantile-normal feature y = Phi^-1(u); its density over u is
  p(y) / phi(y). A point mass sits at the middle of its flat CDF segment (training: dequantised
  uniformly inside it by the codec);
* categorical and boolean: a categorical over the one-hot slots;
* null flag of a nullable numeric: a Bernoulli; a null's value is not scored.

Conditioning: the encoder and decoder see embeddings of the revealed condition columns (training
reveals a random subset: all hidden with chance `cond_drop_all`, else each hidden with chance
`cond_drop_each`); the prior is N(0, I), so sampling decodes prior draws given the requested
values, which are written into the output exactly.

Objective: loss = -E_q[log p(x | z, c)] + beta_t * sum_d max(free_bits, KL_d), KL_d the batch-mean
KL of latent dimension d, beta_t rising linearly from 0 to `beta` over `kl_warmup` training
batches (early stopping counts its patience after them: `synth.train.monitored`). In eval mode
the loss is the plain negative ELBO (beta 1, no free bits) in nats per row: `val_loss` is
-ELBO_val, early stopping keeps the best. Every evaluation also reports
(`monitor`) `elbo_val`, `elbo_val_gain` (over the first evaluation), `reconstruction` (share of
validation cells reconstructed from the posterior mean: the category, the null flag, a numeric's
rank within 0.05) and `posterior_collapse_rate` (share of latent dimensions whose mean KL on
validation rows is below `collapse_threshold`); the last report's values are in the manifest.

`log_prob` is the importance-weighted bound (IWAE) with `iw_samples` posterior draws:
log p(x) >= E[log (1/K) sum_k p(x, z_k) / q(z_k | x)], tighter than the ELBO.
"""
from __future__ import annotations

import copy
import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from synth.engine.likelihood import LOG_SQRT_2PI, log_prob_rows, log_std_normal
from synth.engine.onepass import ConditionalOnePassConfig, OnePassEngine
from synth.engine.sampling import EMAWeights
from synth.errors import ConfigError
from synth.nets.vae import TabularVAE
from synth.table import TableCodec
from synth.table.columns import CategoricalColumn, NumericColumn
from synth.table.columns.numeric import Z_MAX

LOG_SCALE = (-6.0, 2.0)  # bounds of a numeric's log standard deviation (in y units)


class VAEConfig(ConditionalOnePassConfig):
    family: Literal["vae"] = "vae"
    latent: int = Field(32, ge=1, description="latent dimensions")
    hidden: int = Field(256, ge=8, description="width of the encoder and decoder")
    depth: int = Field(2, ge=1, description="hidden layers of the encoder and of the decoder")
    embed_dim: int = Field(8, ge=1, description="embedding size per condition column")
    numeric: Literal["gaussian", "mixture"] = Field("mixture", description="a numeric column's likelihood")
    mixture_components: int = Field(5, ge=2, description="Gaussians per numeric column (numeric: mixture)")
    beta: float = Field(1.0, gt=0, description="weight of the KL term once annealed")
    kl_warmup: int = Field(500, ge=0, description="training batches over which beta rises from 0 (0: no annealing); "
                                                  "early stopping waits them out")
    free_bits: float = Field(0.0, ge=0, description="nats per latent dimension below which its KL is not "
                                                    "penalised (batch mean)")
    collapse_threshold: float = Field(0.01, gt=0, description="a latent dimension whose mean KL (nats) is below "
                                                              "this is collapsed")
    iw_samples: int = Field(32, ge=1, description="importance samples of log_prob's IWAE bound")


class VAEEngine(EMAWeights, OnePassEngine):
    family = "vae"
    config_class = VAEConfig
    likelihood_kind = "bound: the importance-weighted ELBO (IWAE) of the conditional VAE"

    def __init__(self, config: VAEConfig, codec: TableCodec):
        self.config, self.codec = config, codec
        k = 1 if config.numeric == "gaussian" else config.mixture_components
        self.k = k
        num_feat, null_of_num, null_feat, cats = [], [], [], []
        out = 0
        num_out = []  # per numeric: start of its k means, k log-scales, (k logits)
        null_out = []
        for i, (col, sl) in enumerate(zip(codec.columns, codec.slices)):
            if isinstance(col, NumericColumn):
                num_feat.append(sl.start)
                null_of_num.append(sl.start + 1 if col.nullable else -1)
                num_out.append(out)
                out += 2 * k + (k if k > 1 else 0)
                if col.nullable:
                    null_feat.append(sl.start + 1)
                    null_out.append(out)
                    out += 1
            elif isinstance(col, CategoricalColumn):
                cats.append((sl, slice(out, out + col.width)))
                out += col.width
            else:
                raise ConfigError(f"column {col.name!r} is {col.kind}; the vae family models tabular columns only: "
                                  "use model.family array for fixed-shape arrays")
        self.num_feat = torch.tensor(num_feat, dtype=torch.long)
        self.null_of_num = torch.tensor(null_of_num, dtype=torch.long)
        self.null_feat = torch.tensor(null_feat, dtype=torch.long)
        self.null_out = torch.tensor(null_out, dtype=torch.long)
        base = torch.tensor(num_out, dtype=torch.long)[:, None]
        ar = torch.arange(k)[None, :]
        self.mean_out, self.scale_out, self.logit_out = base + ar, base + k + ar, base + 2 * k + ar
        self.cats = cats
        self.d_out = out
        names = codec.categorical_names() if config.condition_columns is None else config.condition_columns
        self.cond_columns = [codec.categorical(c).name for c in names]
        self.cond_cards = [codec.categorical(c).width for c in self.cond_columns]
        self.cond_slices = [codec.slice_of(c) for c in self.cond_columns]
        self.net = TabularVAE(codec.width, out, config.latent, config.hidden, config.depth, self.cond_cards,
                              config.embed_dim)
        self.ema = copy.deepcopy(self.net).requires_grad_(False)
        self._first_elbo: float | None = None

    # -- conditions -----------------------------------------------------------------------------
    def condition_mask(self, x: Tensor, training: bool, generator: torch.Generator | None) -> Tensor:
        n, dev = x.shape[0], x.device
        hidden = torch.tensor(self.cond_cards, dtype=torch.long, device=dev).expand(n, -1)
        if not training or not self.cond_columns:
            return hidden.clone()
        slots = torch.stack([x[:, sl].argmax(dim=1) for sl in self.cond_slices], dim=1)
        shown = torch.rand(n, len(self.cond_cards), generator=generator, device=dev) >= self.config.cond_drop_each
        keep = torch.rand(n, 1, generator=generator, device=dev) >= self.config.cond_drop_all
        return torch.where(shown & keep, slots, hidden)

    # -- the per-kind likelihood ----------------------------------------------------------------
    def numeric_params(self, raw: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(means, log-scales, mixture log-weights), each (n, #numeric, k)."""
        dev = raw.device
        means = raw[:, self.mean_out.to(dev)]
        scales = raw[:, self.scale_out.to(dev)].clamp(*LOG_SCALE)
        logw = (torch.log_softmax(raw[:, self.logit_out.to(dev)], dim=-1) if self.k > 1
                else torch.zeros_like(means))
        return means, scales, logw

    def log_likelihood(self, raw: Tensor, x: Tensor) -> Tensor:
        """log p(x | z, c) per row (n,), in the shared space: numerics over u, the rest discrete."""
        raw, dev = raw.float(), x.device
        ll = torch.zeros(x.shape[0], device=dev)
        if len(self.num_feat):
            y = x[:, self.num_feat.to(dev)].float()
            means, scales, logw = self.numeric_params(raw)
            comp = -0.5 * ((y[..., None] - means) * torch.exp(-scales)) ** 2 - scales - LOG_SQRT_2PI
            dens = torch.logsumexp(logw + comp, dim=-1) - log_std_normal(y)
            nn_ = self.null_of_num.to(dev)
            present = torch.where(nn_ >= 0, x[:, nn_.clamp(min=0)] <= 0, torch.ones_like(y, dtype=torch.bool))
            ll = ll + (dens * present).sum(dim=1)
        if len(self.null_feat):
            target = (x[:, self.null_feat.to(dev)] > 0).float()
            ll = ll - F.binary_cross_entropy_with_logits(raw[:, self.null_out.to(dev)], target,
                                                         reduction="none").sum(dim=1)
        for sl_in, sl_out in self.cats:
            ll = ll + torch.log_softmax(raw[:, sl_out], dim=1).gather(1, x[:, sl_in].argmax(dim=1, keepdim=True))[:, 0]
        return ll

    @staticmethod
    def kl_dims(mu: Tensor, logvar: Tensor) -> Tensor:
        """KL(q(z | x) || N(0, I)) per row and latent dimension."""
        return 0.5 * (mu * mu + torch.exp(logvar) - 1.0 - logvar)

    # -- training -------------------------------------------------------------------------------
    def loss(self, net: nn.Module, x0: Tensor, generator: torch.Generator | None, reduce: bool = True) -> Tensor:
        """Training: the annealed beta-ELBO with free bits; eval mode: the negative ELBO (nats/row)."""
        cond = self.condition_mask(x0, net.training, generator)
        eps = torch.randn(x0.shape[0], self.config.latent, generator=generator, device=x0.device)
        mu, logvar, raw = net(x0.float(), cond, eps)
        recon = self.log_likelihood(raw, x0)
        kl = self.kl_dims(mu.float(), logvar.float())
        if not net.training:
            nelbo = kl.sum(dim=1) - recon
            return nelbo.mean() if reduce else nelbo
        c = self.config
        seen = float(getattr(net, "module", net).batches_seen)
        beta = c.beta * (min(1.0, seen / c.kl_warmup) if c.kl_warmup else 1.0)
        if reduce:
            return -recon.mean() + beta * kl.mean(dim=0).clamp(min=c.free_bits).sum()
        return -recon + beta * kl.clamp(min=c.free_bits).sum(dim=1)

    def warmup_batches(self) -> int:
        """Training batches of the KL annealing (early stopping waits them out: synth.train.monitored)."""
        return self.config.kl_warmup

    # -- likelihood and monitoring ------------------------------------------------------------
    @torch.no_grad()
    def log_prob(self, rows, *, seed: int = 0, batch_size: int = 1024) -> np.ndarray:
        """log p(row) in nats (lower bound): the IWAE bound with `iw_samples` posterior draws from `seed`."""
        k = self.config.iw_samples
        self.ema.eval()
        dev = next(self.ema.parameters()).device

        def score(x: Tensor, gen: torch.Generator) -> Tensor:
            x = x.to(dev)
            n = x.shape[0]
            cond = self.condition_mask(x, False, None)
            mu, logvar = self.ema.encode(x.float(), cond)
            eps = torch.randn(k, n, self.config.latent, generator=gen).to(dev)
            z = mu + torch.exp(0.5 * logvar) * eps  # (k, n, L)
            raw = self.ema.decode(z.reshape(k * n, -1), cond.repeat(k, 1))
            ll = self.log_likelihood(raw, x.repeat(k, 1)).view(k, n).double()
            log_prior = log_std_normal(z).sum(dim=-1).double()
            log_q = (log_std_normal(eps) - 0.5 * logvar).sum(dim=-1).double()
            return torch.logsumexp(ll + log_prior - log_q, dim=0) - math.log(k)
        return log_prob_rows(self, rows, score, batch_size, seed)

    @torch.no_grad()
    def monitor(self, x_val: Tensor, seed: int) -> dict:
        """ELBO_val (nats/row), its gain over the first evaluation, reconstruction and the
        posterior-collapse rate of the EMA weights on validation rows."""
        self.ema.eval()
        dev = next(self.ema.parameters()).device
        x = x_val[:4096].to(dev).float()
        gen = torch.Generator(device=dev).manual_seed(seed + 1_000_003)
        cond = self.condition_mask(x, False, None)
        eps = torch.randn(x.shape[0], self.config.latent, generator=gen, device=dev)
        mu, logvar, raw = self.ema(x, cond, eps)
        kl = self.kl_dims(mu, logvar)
        elbo = float((self.log_likelihood(raw, x) - kl.sum(dim=1)).mean())
        if self._first_elbo is None:
            self._first_elbo = elbo
        recon = self.reconstruction(self.ema.decode(mu, cond), x)
        return {"elbo_val": elbo, "elbo_val_gain": elbo - self._first_elbo, "reconstruction": recon,
                "posterior_collapse_rate": float((kl.mean(dim=0) < self.config.collapse_threshold).float().mean()),
                "kl_val": float(kl.sum(dim=1).mean())}

    def reconstruction(self, raw: Tensor, x: Tensor) -> float:
        """Share of cells reconstructed: category (argmax), null flag, numeric rank within 0.05."""
        hits, cells = 0.0, 0
        if len(self.num_feat):
            dev = x.device
            y = x[:, self.num_feat.to(dev)]
            means, _, logw = self.numeric_params(raw)
            top = means.gather(-1, logw.argmax(dim=-1, keepdim=True))[..., 0]
            close = (torch.special.ndtr(top) - torch.special.ndtr(y)).abs() <= 0.05
            nn_ = self.null_of_num.to(dev)
            present = torch.where(nn_ >= 0, x[:, nn_.clamp(min=0)] <= 0, torch.ones_like(y, dtype=torch.bool))
            hits += float((close & present).sum())
            cells += int(present.sum())
        if len(self.null_feat):
            dev = x.device
            pred = raw[:, self.null_out.to(dev)] > 0
            hits += float((pred == (x[:, self.null_feat.to(dev)] > 0)).sum())
            cells += pred.numel()
        for sl_in, sl_out in self.cats:
            hits += float((raw[:, sl_out].argmax(dim=1) == x[:, sl_in].argmax(dim=1)).sum())
            cells += x.shape[0]
        return hits / max(cells, 1)

    # -- sampling -------------------------------------------------------------------------------
    def prior(self, n: int, generator: torch.Generator) -> Tensor:
        """Latent normals, then per numeric a normal and a uniform (mixture component), per
        categorical and per null flag a uniform (inverse-CDF draws of the decoder's likelihood)."""
        m = len(self.num_feat)
        z = torch.randn((n, self.config.latent + m), generator=generator)
        u = torch.rand((n, m + len(self.cats) + len(self.null_feat)), generator=generator)
        return torch.cat([z, u], dim=1)

    @torch.no_grad()
    def sample_features(self, x: Tensor, cond: Tensor, *, sampler: str = "ddim", steps: int = 1,
                        guidance: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        self.ema.eval()
        dev = next(self.ema.parameters()).device
        lat, m = self.config.latent, len(self.num_feat)
        raw = self.ema.decode(x[:, :lat].float().to(dev), cond.to(dev)).double().cpu()
        eps, u = x[:, lat:lat + m].double(), x[:, lat + m:].double()
        n = x.shape[0]
        feats = torch.full((n, self.codec.width), -1.0, dtype=torch.float64)
        if m:
            means, scales, logw = self.numeric_params(raw)
            pick = (torch.softmax(logw, dim=-1).cumsum(dim=-1) < u[:, :m, None]).sum(dim=-1).clamp(max=self.k - 1)
            mean = means.gather(-1, pick[..., None])[..., 0]
            scale = torch.exp(scales.gather(-1, pick[..., None])[..., 0])
            feats[:, self.num_feat] = (mean + scale * eps).clamp(-Z_MAX, Z_MAX)
        for j, (sl_in, sl_out) in enumerate(self.cats):
            probs = torch.softmax(raw[:, sl_out], dim=1)
            slot = (probs.cumsum(dim=1) < u[:, m + j:m + j + 1]).sum(dim=1).clamp(max=probs.shape[1] - 1)
            feats[torch.arange(n), sl_in.start + slot] = 1.0
        if len(self.null_feat):
            p_null = torch.sigmoid(raw[:, self.null_out])
            feats[:, self.null_feat] = torch.where(u[:, m + len(self.cats):] < p_null, 1.0, -1.0).double()
        return feats

    def describe(self) -> dict:
        return {"likelihood": {"estimate": self.likelihood_kind, "iw_samples": self.config.iw_samples},
                **super().describe()}
