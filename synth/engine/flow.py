"""The flow family: a normalising flow (zuko's neural spline flow, `synth.nets.flow`) over
dequantised codec features, with an exact likelihood.

Every column is one or two continuous dimensions in z = Phi^-1(u), u in [0, 1]:

* a numeric column is the codec's quantile-normal feature (point masses dequantised uniformly
  inside their flat CDF segment by the codec when training);
* a categorical column is its category's interval of the reference-frequency CDF, [c_k, c_k+1),
  and a row draws u uniformly inside it (uniform dequantisation, as the copula's latent);
* a nullable numeric adds a null flag, dequantised the same way over [0, 1/2) (present) and
  [1/2, 1) (null); a null's value dimension is drawn uniformly over u (it carries nothing).

The flow models p(y | given conditions); training reveals a random subset of the condition
columns as its context (each row all hidden with chance `cond_drop_all`, else each hidden with
chance `cond_drop_each`), so one flow generates unconditionally and under any subset of given
categoricals. Requested values are written into the output exactly.

Likelihood (`synth.engine.likelihood`'s space): numerics are exact, log p_u(u) = log p_y(y) -
log phi(y) (the change of variables u = Phi(y), flow Jacobian included); discrete columns
(categories, null flags, a null's value) are scored through the dequantisation bound
log P(k) >= E_q[log p_u(u) - log q(u | k)], q uniform on the interval (log q = -log width), so the
training loss and `val_loss` are the held-out NLL bound in nats per row, and `log_prob` tightens it
with `dequantisation_samples` importance samples (log-mean-exp). The invertibility error
|f^-1(f(y)) - y| on validation rows and the validation bpd are reported at every evaluation and
land in the manifest (`inv_error`, `val_bpd`).

Sampling is one flow inversion (an autoregressive transform: one pass per dimension, counted as
one evaluation like the autoregressive family) from the prior's normals.
"""
from __future__ import annotations

import copy
import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from synth.engine.likelihood import log_prob_rows, log_std_normal
from synth.engine.onepass import ConditionalOnePassConfig, OnePassEngine
from synth.engine.sampling import EMAWeights
from synth.errors import ConfigError
from synth.nets.flow import ConditionalFlow
from synth.table import TableCodec
from synth.table.columns import CategoricalColumn, NumericColumn
from synth.table.columns.numeric import U_EPS, Z_MAX

INV_CHECK_ROWS = 64  # validation rows of the invertibility check (monitor)


class FlowConfig(ConditionalOnePassConfig):
    family: Literal["flow"] = "flow"
    transforms: int = Field(3, ge=1, description="autoregressive spline transforms")
    hidden: int = Field(128, ge=8, description="width of each transform's MADE network")
    depth: int = Field(2, ge=1, description="hidden layers of each transform's network")
    bins: int = Field(8, ge=2, description="rational-quadratic spline bins")
    embed_dim: int = Field(8, ge=1, description="embedding size per condition column")
    dequantisation_samples: int = Field(8, ge=1, description="importance samples per row of log_prob (a tighter "
                                                             "bound for discrete columns)")


class FlowEngine(EMAWeights, OnePassEngine):
    family = "flow"
    config_class = FlowConfig
    likelihood_kind = ("bound: exact density for numerics, an importance-weighted uniform-dequantisation bound "
                       "for categories and null flags")

    def __init__(self, config: FlowConfig, codec: TableCodec):
        self.config, self.codec = config, codec
        num, cat_dims, cat_cols, cuts = [], [], [], []
        null_value, null_flag = [], []
        d = 0
        self.layout: list[tuple[str, int]] = []  # (kind, codec column index) per dimension
        for i, (col, sl) in enumerate(zip(codec.columns, codec.slices)):
            if isinstance(col, NumericColumn):
                num.append((d, sl.start))
                self.layout.append(("numeric", i))
                d += 1
                if col.nullable:
                    null_value.append(d - 1)
                    null_flag.append((d, sl.start + 1))
                    self.layout.append(("null", i))
                    d += 1
            elif isinstance(col, CategoricalColumn):
                c = np.concatenate([[0.0], np.cumsum(np.asarray(col.probs, dtype=np.float64))])
                c /= c[-1]
                cat_dims.append(d)
                cat_cols.append(i)
                cuts.append(torch.as_tensor(c))
                self.layout.append(("categorical", i))
                d += 1
            else:
                raise ConfigError(f"column {col.name!r} is {col.kind}; the flow family models tabular columns only: "
                                  "use model.family array for fixed-shape arrays")
        self.dims = d
        self.num_dims = torch.tensor([a for a, _ in num], dtype=torch.long)
        self.num_feats = torch.tensor([b for _, b in num], dtype=torch.long)
        self.null_value = torch.tensor(null_value, dtype=torch.long)  # value dims of nullable numerics
        self.null_dims = torch.tensor([a for a, _ in null_flag], dtype=torch.long)
        self.null_feats = torch.tensor([b for _, b in null_flag], dtype=torch.long)
        self.cat_dims, self.cat_cols, self.cuts = cat_dims, cat_cols, cuts
        names = codec.categorical_names() if config.condition_columns is None else config.condition_columns
        self.cond_columns = [codec.categorical(c).name for c in names]
        self.cond_cards = [codec.categorical(c).width for c in self.cond_columns]
        self.cond_slices = [codec.slice_of(c) for c in self.cond_columns]
        self.net = ConditionalFlow(d, self.cond_cards, config.embed_dim, config.transforms, config.hidden,
                                   config.depth, config.bins)
        self.ema = copy.deepcopy(self.net).requires_grad_(False)

    # -- features <-> flow dimensions ---------------------------------------------------------
    def slots(self, x: Tensor, cols: list[slice]) -> Tensor:
        return torch.stack([x[:, sl].argmax(dim=1) for sl in cols], dim=1) if cols else \
            torch.zeros(x.shape[0], 0, dtype=torch.long, device=x.device)

    def dequantise(self, x: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """Codec features (n, width) -> flow dimensions y (n, D) with one uniform draw per discrete
        dimension, and log_corr (n,): what turns log p_y(y) into the u-space bound of the row,
        sum over discrete dims of log(interval width) minus sum over all dims of log phi(y)."""
        n, dev = x.shape[0], x.device
        x = x.double()
        y = torch.empty(n, self.dims, dtype=torch.float64, device=dev)
        log_w = torch.zeros(n, dtype=torch.float64, device=dev)
        y[:, self.num_dims.to(dev)] = x[:, self.num_feats.to(dev)]
        disc_lo, disc_hi, disc_dims = [], [], []
        for dim, i, cut in zip(self.cat_dims, self.cat_cols, self.cuts):
            k = x[:, self.codec.slices[i]].argmax(dim=1)
            cut = cut.to(dev)
            disc_lo.append(cut[k])
            disc_hi.append(cut[k + 1])
            disc_dims.append(dim)
        if len(self.null_dims):
            null = x[:, self.null_feats.to(dev)] > 0  # (n, #nullable)
            for j, dim in enumerate(self.null_dims.tolist()):
                disc_lo.append(torch.where(null[:, j], 0.5, 0.0).double())
                disc_hi.append(torch.where(null[:, j], 1.0, 0.5).double())
                disc_dims.append(dim)
            for j, dim in enumerate(self.null_value.tolist()):  # a null's value: u uniform on [0, 1]
                disc_lo.append(torch.zeros(n, dtype=torch.float64, device=dev))
                disc_hi.append(torch.where(null[:, j], 1.0, 0.0).double())  # width 0: not dequantised
                disc_dims.append(dim)
        if disc_dims:
            lo, hi = torch.stack(disc_lo, dim=1), torch.stack(disc_hi, dim=1)
            r = torch.rand(lo.shape, generator=generator, device=dev, dtype=torch.float64)
            width = hi - lo
            drawn = width > 0
            u = (lo + r * width).clamp(U_EPS, 1 - U_EPS)
            idx = torch.tensor(disc_dims, device=dev)
            y[:, idx] = torch.where(drawn, torch.special.ndtri(u), y[:, idx])
            log_w = torch.where(drawn, torch.log(width.clamp_min(1e-300)), 0.0).sum(dim=1)
        return y, log_w - log_std_normal(y).sum(dim=1)

    def condition_mask(self, x: Tensor, training: bool, generator: torch.Generator | None) -> Tensor:
        """Condition slots of the rows: revealed at random when training, none given otherwise."""
        n, dev = x.shape[0], x.device
        cards = torch.tensor(self.cond_cards, dtype=torch.long, device=dev)
        hidden = cards.expand(n, -1)
        if not training or not self.cond_columns:
            return hidden.clone()
        slots = self.slots(x, self.cond_slices)
        shown = torch.rand(n, len(self.cond_cards), generator=generator, device=dev) >= self.config.cond_drop_each
        keep = torch.rand(n, 1, generator=generator, device=dev) >= self.config.cond_drop_all
        return torch.where(shown & keep, slots, hidden)

    # -- training -----------------------------------------------------------------------------
    def loss(self, net: nn.Module, x0: Tensor, generator: torch.Generator | None, reduce: bool = True) -> Tensor:
        """The negative log-likelihood bound of the rows in nats (synth.engine.likelihood's space):
        given the revealed conditions when training, of whole rows in eval mode (`val_loss`)."""
        cond = self.condition_mask(x0, net.training, generator)
        y, corr = self.dequantise(x0, generator)
        nll = -(net(y.float(), cond).double() + corr)
        return nll.float().mean() if reduce else nll.float()

    # -- likelihood ---------------------------------------------------------------------------
    @torch.no_grad()
    def log_prob(self, rows, *, seed: int = 0, batch_size: int = 4096) -> np.ndarray:
        """log p(row) in nats of every row of `rows`: exact for numerics, discrete columns through
        `dequantisation_samples` importance samples of the uniform dequantisation (log-mean-exp, a
        lower bound that tightens with more samples); the draws come from `seed`."""
        k = self.config.dequantisation_samples
        self.ema.eval()
        dev = next(self.ema.parameters()).device

        def score(x: Tensor, gen: torch.Generator) -> Tensor:
            cond = self.condition_mask(x, False, None).to(dev)
            draws = []
            for _ in range(k):  # draws on the CPU from `gen`: the same scores on any device
                y, corr = self.dequantise(x, gen)
                draws.append(self.ema(y.float().to(dev), cond).double().cpu() + corr)
            return torch.logsumexp(torch.stack(draws), dim=0) - math.log(k)
        return log_prob_rows(self, rows, score, batch_size, seed)

    @torch.no_grad()
    def monitor(self, x_val: Tensor, seed: int) -> dict:
        """Measures of the EMA flow on validation rows: the invertibility error max |f^-1(f(y)) - y|
        (and its mean) on the first `INV_CHECK_ROWS` of them, and the validation bpd of the one-draw
        bound on up to 4,096. The inverse costs one pass per dimension and transform (seconds per
        evaluation on a wide table at 4,096 rows), so it is checked on a sample: the error is a
        property of the transform, not of the rows."""
        self.ema.eval()
        dev = next(self.ema.parameters()).device
        x = x_val[:4096].to(dev)
        gen = torch.Generator(device=dev).manual_seed(seed + 1_000_003)
        y, corr = self.dequantise(x, gen)
        cond = self.condition_mask(x, False, None)
        y = y.float()
        yc, cc = y[:INV_CHECK_ROWS], cond[:INV_CHECK_ROWS]
        err = (self.ema.from_base(self.ema.to_base(yc, cc), cc) - yc).abs()
        nll = -(self.ema(y, cond).double() + corr).mean()
        return {"inv_error": float(err.max()), "inv_error_mean": float(err.mean()),
                "val_bpd": float(nll) / (len(self.codec.columns) * math.log(2))}

    # -- sampling -----------------------------------------------------------------------------
    def prior(self, n: int, generator: torch.Generator) -> Tensor:
        return torch.randn((n, self.dims), generator=generator)

    @torch.no_grad()
    def sample_features(self, x: Tensor, cond: Tensor, *, sampler: str = "ddim", steps: int = 1,
                        guidance: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        self.ema.eval()
        dev = next(self.ema.parameters()).device
        y = self.ema.from_base(x.float().to(dev), cond.to(dev)).double().cpu()
        n = y.shape[0]
        feats = torch.full((n, self.codec.width), -1.0, dtype=torch.float64)
        feats[:, self.num_feats] = y[:, self.num_dims].clamp(-Z_MAX, Z_MAX)
        if len(self.null_dims):
            feats[:, self.null_feats] = torch.where(torch.special.ndtr(y[:, self.null_dims]) >= 0.5, 1.0, -1.0).double()
        for dim, i, cut in zip(self.cat_dims, self.cat_cols, self.cuts):
            u = torch.special.ndtr(y[:, dim])
            slot = torch.searchsorted(cut[1:-1].contiguous(), u.contiguous(), right=True)
            slot = slot.clamp(max=len(cut) - 2)
            feats[torch.arange(n), self.codec.slices[i].start + slot] = 1.0
        return feats

    def describe(self) -> dict:
        return {"likelihood": {"estimate": self.likelihood_kind, "dimensions": self.dims}, **super().describe()}
