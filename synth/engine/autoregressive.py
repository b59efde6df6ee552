"""The autoregressive family: p(row) = prod_j p(token_j | tokens before j), one categorical head
per token column (`synth.nets.column_heads`).

Tokens come from the table codec's features, so the codec stays the one place that knows column
kinds: a categorical/boolean column is the index of its one-hot slot; a numeric column whose values
are all point masses, at most 4 x `numeric_bins[0]` of them (codes, counts, education-num), is one
token with a class per value; any other numeric, integer or datetime column is its CDF value
u = Phi(z) of the codec's quantile-normal feature, cut into a coarse and a fine token
(`numeric_bins`, 32 x 32 = 1,024 equal-mass bins by default; a null is a coarse class of its own).
Every token is predicted from all the tokens before it, a fine bin too (measured on adult, credit
and diamonds: a fine bin that saw only its coarse bin mixed up neighbouring values, 0.55 vs 0.54
held-out C2ST on adult, 0.58 vs 0.52 on diamonds). Decoding draws u uniformly inside the sampled
fine bin, so numerics are continuous between the codec's support points and point masses (flat CDF
segments) come back exactly.

Conditioning is exact: the training loss mixes rows scored in canonical column order with rows
that reveal a random subset of the categorical condition columns first, draw a random subset of the
numeric columns next (each scored from the revealed columns and the numeric ones before it only) and
score the rest given them. So a request that fixes categorical columns generates the rest from
p(rest | given) in one pass, and a numeric value or range is met by drawing that column first from
p(column | given) with the classes outside its u-interval masked (truncation), then the rest given
it: no rejection and no guidance (docs/conditions.md). The loss is an exact negative log-likelihood of tokens (nats
per row); in canonical order (validation) it is the held-out likelihood of whole rows.

Sampling is one head evaluation per token column and draws every token by inverse CDF from the
prior's uniforms, so the rows depend only on the prior draws (seeded) and the weights.
"""
from __future__ import annotations

import copy
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from synth.engine.onepass import ConditionalOnePassConfig, OnePassEngine
from synth.engine.sampling import EMAWeights
from synth.errors import ConfigError
from synth.nets.column_heads import ColumnHeads
from synth.table import TableCodec
from synth.table.columns import CategoricalColumn, NumericColumn
from synth.table.columns.numeric import U_EPS



def point_values(col: NumericColumn, bins: int) -> bool:
    """Whether a numeric column is tokenised as one class per value: every value a point mass
    (a flat CDF segment of its own) and at most 4 x bins of them."""
    return bool(col.heavy.all()) and len(col.heavy) <= 4 * bins


class AutoregressiveConfig(ConditionalOnePassConfig):
    family: Literal["autoregressive"] = "autoregressive"
    condition_columns: list[str] | None = Field(
        None, description="columns usable as conditions (categorical: a value; numeric, integer, datetime: a value "
                          "or a range); null = every column")
    hidden: int = Field(64, ge=8, description="width of each column head (64 beat 128 and 256 on adult, credit "
                                              "and diamonds: a smaller head overfits later)")
    depth: int = Field(2, ge=1, description="layers per column head")
    embed_dim: int | None = Field(None, ge=2, description="embedding size per token column; "
                                                         "null: 16, shrunk so columns x dim <= 768")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout inside the column heads")
    token_dropout: float = Field(0.2, ge=0, lt=1, description="in training, chance that a head is shown a token "
                                                              "before it as 'not seen' (against memorising rows: "
                                                              "held-out C2ST loans 0.76 -> 0.68, credit 0.63 -> "
                                                              "0.60, caravan 0.80 -> 0.77; adult, diamonds even)")
    cond_drop_all: float = Field(0.25, ge=0, le=1, description="share of training rows that reveal no condition "
                                                               "(0.25: a range condition on adult's later columns "
                                                               "came closer to the real rows in the range than with "
                                                               "0.5, unconditional fidelity even; docs/conditions.md)")
    numeric_reveal: float = Field(0.5, ge=0, le=1, description="in training rows that reveal conditions, chance each "
                                                                "numeric condition column is drawn first (from the "
                                                                "revealed columns alone), as a numeric condition is")
    numeric_bins: tuple[int, int] = Field((32, 32), description="coarse and fine equal-mass bins per numeric column "
                                                               "(a column of at most 4 x coarse point values: one "
                                                               "class per value)")


class AutoregressiveEngine(EMAWeights, OnePassEngine):
    family = "autoregressive"
    config_class = AutoregressiveConfig
    range_enforcement = "truncation"

    def __init__(self, config: AutoregressiveConfig, codec: TableCodec):
        self.config = config
        self.codec = codec
        k1, k2 = config.numeric_bins
        # token columns: (codec column index, part) with part "cat", "coarse" or "fine"; a numeric
        # column of point values has a coarse token only (one class per value)
        self.tokens: list[tuple[int, str]] = []
        cards: list[int] = []
        self.cuts: dict[int, Tensor] = {}  # numeric column -> its coarse classes' edges in u
        # every point mass's flat CDF segment [lo, hi]: a value on one is tokenised at the segment's
        # middle, so its tokens do not carry the codec's training dequantisation noise
        self.masses: dict[int, tuple[Tensor, Tensor]] = {}
        for i, col in enumerate(codec.columns):
            if isinstance(col, CategoricalColumn):
                self.tokens.append((i, "cat"))
                cards.append(col.width)
            elif isinstance(col, NumericColumn):
                values = point_values(col, k1)
                self.cuts[i] = torch.as_tensor(col.knots_f if values else np.linspace(0.0, 1.0, k1 + 1),
                                               dtype=torch.float64)
                self.masses[i] = (torch.as_tensor(col.knots_f[:-1][col.heavy], dtype=torch.float64),
                                  torch.as_tensor(col.knots_f[1:][col.heavy], dtype=torch.float64))
                self.tokens.append((i, "coarse"))
                cards.append(len(self.cuts[i]) - 1 + (1 if col.nullable else 0))
                if not values:
                    self.tokens.append((i, "fine"))
                    cards.append(k2)
            else:
                raise ConfigError(f"column {col.name!r} is {col.kind}; the autoregressive family models tabular "
                                  "columns only: use model.family array for fixed-shape arrays")
        self.cards = cards
        self.null_class: list[int | None] = []  # each token's class that means null, if any
        for i, part in self.tokens:
            col = codec.columns[i]
            if part == "cat":
                self.null_class.append(col.categories.index(None) if None in col.categories else None)
            else:
                self.null_class.append(len(self.cuts[i]) - 1 if part == "coarse" and col.nullable else None)
        names = [c.name for c in codec.columns] if config.condition_columns is None else config.condition_columns
        for name in names:
            if name not in codec.by_name:
                codec.categorical(name)  # an unknown column is named
        self.cond_columns = [c for c in names if isinstance(codec.by_name[c], CategoricalColumn)]
        self.cond_cards = [codec.categorical(c).width for c in self.cond_columns]
        col_index = {c.name: i for i, c in enumerate(codec.columns)}
        self.cond_tokens = [self.tokens.index((col_index[c], "cat")) for c in self.cond_columns]
        # numeric conditions: the column's tokens are drawn first, from p(column | given), truncated
        self.range_columns = [c for c in names if isinstance(codec.by_name[c], NumericColumn)]
        self.range_tokens = [[j for j, (i, _) in enumerate(self.tokens) if i == col_index[c]] for c in self.range_columns]
        numeric = [i for i, part in self.tokens if part == "coarse"]
        self.range_within = [numeric.index(col_index[c]) for c in self.range_columns]  # its uniform in the prior
        n_tok = len(cards)
        dim = config.embed_dim or max(4, min(16, 768 // max(n_tok, 1)))
        self.n_numeric = sum(1 for _, p in self.tokens if p == "coarse")
        self.net = ColumnHeads(cards, dim, config.hidden, config.depth, config.dropout, config.token_dropout)
        self.ema = copy.deepcopy(self.net).requires_grad_(False)

    @classmethod
    def from_artifact(cls, art):
        engine = super().from_artifact(art)
        if "numeric_reveal" not in art.engine["config"]:  # trained before numeric conditions: never drew one first
            engine.range_columns, engine.range_tokens, engine.range_within = [], [], []
            engine.range_refusal = ("this autoregressive model was trained before numeric conditions (its training "
                                    "never drew a numeric column first); retrain it with this version")
        return engine

    # -- features <-> tokens --------------------------------------------------------------
    def to_tokens(self, x: Tensor) -> Tensor:
        """Encoded rows (n, codec.width) -> tokens (n, J)."""
        k2 = self.config.numeric_bins[1]
        out = []
        for i, part in self.tokens:
            col, sl = self.codec.columns[i], self.codec.slices[i]
            if part == "cat":
                out.append(x[:, sl].argmax(dim=1))
                continue
            u = torch.special.ndtr(x[:, sl.start].double())
            lo, hi = (t.to(u.device) for t in self.masses[i])
            if len(lo):
                k = (torch.searchsorted(lo, u, right=True) - 1).clamp(min=0)
                u = torch.where((u >= lo[k]) & (u <= hi[k]), 0.5 * (lo[k] + hi[k]), u)
            u = u.clamp(0.0, 1.0 - 1e-12)
            cuts = self.cuts[i].to(u.device)
            n_cls = len(cuts) - 1
            coarse = (torch.searchsorted(cuts, u, right=True) - 1).clamp(0, n_cls - 1)
            null = x[:, sl.start + 1] > 0 if col.nullable else torch.zeros_like(u, dtype=torch.bool)
            if part == "coarse":
                tok = torch.where(null, n_cls, coarse)
            else:
                lo, hi = cuts[coarse], cuts[coarse + 1]
                tok = torch.where(null, 0, ((u - lo) / (hi - lo) * k2).floor().clamp(0, k2 - 1).long())
            out.append(tok)
        return torch.stack(out, dim=1)

    def to_features(self, tokens: Tensor, within: Tensor) -> np.ndarray:
        """Tokens (n, J) and a uniform per numeric column (n, #numeric) -> codec features."""
        from scipy.special import ndtri

        k2 = self.config.numeric_bins[1]
        tok = tokens.numpy()
        r = within.double().numpy()
        feats = np.full((tok.shape[0], self.codec.width), -1.0)
        num = 0
        for j, (i, part) in enumerate(self.tokens):
            col, sl = self.codec.columns[i], self.codec.slices[i]
            if part == "cat":
                feats[np.arange(tok.shape[0]), sl.start + tok[:, j]] = 1.0
            elif part == "coarse":
                cuts = self.cuts[i].numpy()
                n_cls = len(cuts) - 1
                null = tok[:, j] == n_cls
                c = np.minimum(tok[:, j], n_cls - 1)
                if j + 1 < len(self.tokens) and self.tokens[j + 1] == (i, "fine"):
                    where = (tok[:, j + 1] + r[:, num]) / k2
                else:  # one class per value: anywhere in its flat segment decodes to it
                    where = r[:, num]
                u = cuts[c] + where * (cuts[c + 1] - cuts[c])
                feats[:, sl.start] = ndtri(np.clip(u, U_EPS, 1 - U_EPS))
                if col.nullable:
                    feats[:, sl.start + 1] = np.where(null, 1.0, -1.0)
                num += 1
        return feats

    # -- training -------------------------------------------------------------------------
    def loss(self, net: nn.Module, x0: Tensor, generator: torch.Generator | None, reduce: bool = True) -> Tensor:
        """Negative log-likelihood of the rows' tokens (nats per row). In training, a share
        1 - cond_drop_all of the rows reveals a random set of condition columns first (each with
        chance 1 - cond_drop_each) and is scored on the rest given them; in eval mode every row is
        scored on all its tokens in canonical order (the held-out likelihood)."""
        tokens = self.to_tokens(x0)
        n, dev = tokens.shape[0], tokens.device
        given = torch.zeros(tokens.shape, dtype=torch.bool, device=dev)
        first = None
        if net.training and (self.cond_tokens or self.range_tokens):
            c = self.config
            moved = torch.rand(n, len(self.cond_tokens), generator=generator, device=dev) >= c.cond_drop_each
            keep = torch.rand(n, 1, generator=generator, device=dev) >= c.cond_drop_all
            given[:, self.cond_tokens] = moved & keep
            if self.range_tokens:  # numeric columns drawn first, each with chance numeric_reveal, and scored
                first = torch.zeros_like(given)
                drawn = (torch.rand(n, len(self.range_tokens), generator=generator, device=dev) < c.numeric_reveal) & keep
                for r, toks in enumerate(self.range_tokens):
                    first[:, toks] = drawn[:, r:r + 1]
        logits = net(tokens, given, first).float()
        nll = -torch.log_softmax(logits, dim=-1).gather(-1, tokens[..., None])[..., 0]
        nll = nll.masked_fill(given, 0.0).sum(dim=1)
        return nll.mean() if reduce else nll

    # -- sampling -------------------------------------------------------------------------
    def prior(self, n: int, generator: torch.Generator) -> Tensor:
        """One uniform per token (inverse-CDF draw) and one per numeric column (inside its bin)."""
        return torch.rand((n, len(self.cards) + self.n_numeric), generator=generator, dtype=torch.float64)

    @torch.no_grad()
    def sample_features(self, x: Tensor, cond: Tensor, *, sampler: str = "ddim", steps: int = 1,
                        guidance: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """Categorical conditions are given tokens. A numeric condition's tokens are drawn first, in
        canonical order, each from its head seeing the given tokens and the condition tokens before
        it, with the classes outside the row's u-interval masked (truncation: no rejection), and u
        uniform inside the drawn cell's part of the interval; then every other token in canonical
        order, seeing all of them."""
        self.ema.eval()
        dev = next(self.ema.parameters()).device
        n, n_tok = x.shape[0], len(self.cards)
        tokens = torch.zeros(n, n_tok, dtype=torch.long, device=dev)
        given = torch.zeros(n, n_tok, dtype=torch.bool, device=dev)
        slots, low, high = self.split_conditions(cond.to(dev))
        for c, (j, card) in enumerate(zip(self.cond_tokens, self.cond_cards)):
            g = slots[:, c] < card
            tokens[:, j] = torch.where(g, slots[:, c], 0)
            given[:, j] = g
        u = x[:, :n_tok].to(dev)
        within = x[:, n_tok:].clone()
        first = torch.zeros_like(given)
        bounds: dict[int, tuple[Tensor, Tensor]] = {}  # token -> the rows' u-interval of its column
        for r, toks in enumerate(self.range_tokens):
            g = (low[:, r] > 0.0) | (high[:, r] < 1.0)
            first[:, toks] = g[:, None]
            for j in toks:
                bounds[j] = (low[:, r], high[:, r])

        if first.any():
            for j in range(n_tok):
                rows = first[:, j]
                if rows.any():
                    cells = self.cells(j, tokens)
                    a, b = bounds[j]
                    ok = (cells[1] > a[:, None]) & ((cells[0] < b[:, None]) | ((a == b)[:, None] & (cells[0] <= a[:, None])))
                    logits = self.ema.head(j, tokens, self.ema.seen_by(j, given, first))
                    tokens[:, j] = torch.where(rows, self.draw(logits.masked_fill(~ok, float("-inf")), u[:, j]),
                                               tokens[:, j])
            for r, toks in enumerate(self.range_tokens):  # u uniform inside the drawn cell's part of the interval
                rows, k = first[:, toks[0]], self.range_within[r]
                lo, hi = (t[torch.arange(n, device=dev), tokens[:, toks[-1]]] for t in self.cells(toks[-1], tokens))
                a, b = torch.maximum(lo, low[:, r]), torch.minimum(hi, high[:, r])
                inside = ((a - lo) + within[:, k].to(dev) * (b - a).clamp(min=0.0)) / (hi - lo)
                within[:, k] = torch.where(rows, inside, within[:, k].to(dev)).cpu()
        self.draw_rest(tokens, given | first, u)
        return torch.from_numpy(self.to_features(tokens.cpu(), within))

    @staticmethod
    def draw(logits: Tensor, u: Tensor) -> Tensor:
        """Inverse-CDF draws (n,) of classes from logits (n, card) and uniforms u (n,), never a class
        of probability 0 (a masked one)."""
        probs = torch.softmax(logits.double(), dim=1)
        last = torch.where(probs > 0, torch.arange(probs.shape[1], device=probs.device), 0).amax(dim=1)
        return torch.minimum((probs.cumsum(dim=1) < u[:, None].clamp(min=1e-300)).sum(dim=1), last)

    def draw_rest(self, tokens: Tensor, shown: Tensor, u: Tensor, valued: bool = False) -> None:
        """Draw every token not `shown` (B, J) in canonical order, each head seeing the tokens before
        it and every shown one (in place). valued=True never draws a null (imputation fills nulls)."""
        for j in range(len(self.cards)):
            todo = ~shown[:, j]
            if todo.any():
                logits = self.ema.head(j, tokens, self.ema.seen_by(j, shown))
                if valued and self.null_class[j] is not None:
                    logits[:, self.null_class[j]] = float("-inf")
                tokens[:, j] = torch.where(todo, self.draw(logits, u[:, j]), tokens[:, j])

    @torch.no_grad()
    def impute(self, table, seed: int = 0):
        """The rows of `table` with every null cell of a modelled column filled by a draw given the
        row's known cells (revealed first, as conditions are); known cells are returned as given,
        byte for byte, and columns the model does not hold pass through. Row i's draws depend on
        (seed, i) only."""
        import pyarrow as pa
        import pyarrow.compute as pc

        from synth.engine.rowstreams import RowUniforms

        self.ema.eval()
        dev = next(self.ema.parameters()).device
        missing = [c.name for c in self.codec.columns if c.name not in table.schema.names]
        if missing:
            raise ConfigError(f"the table to impute lacks {len(missing)} of the model's columns (first: "
                              f"{missing[0]!r}); give a table with the columns the model was fitted on")
        n, n_tok = table.num_rows, len(self.cards)
        x = torch.from_numpy(self.codec.encode(table, strict=False)).to(dev)
        tokens = self.to_tokens(x)
        null = {c.name: np.asarray(table.column(c.name).is_null().to_numpy(zero_copy_only=False))
                for c in self.codec.columns}
        known = torch.from_numpy(np.stack([~null[self.codec.columns[i].name] for i, _ in self.tokens], axis=1)).to(dev)
        prior = self.row_prior(seed, 0, n)
        bs = self.config.sample_batch_size
        for lo in range(0, n, bs):
            self.draw_rest(tokens[lo:lo + bs], known[lo:lo + bs], prior[lo:lo + bs, :n_tok].to(dev), valued=True)
        filled = self.codec.decode(self.to_features(tokens.cpu(), prior[:, n_tok:]), RowUniforms(seed, 0, n))
        out = []
        for f in table.schema:
            col = table.column(f.name)
            if f.name in null and null[f.name].any():
                new = filled.column(f.name).cast(f.type)
                col = pc.if_else(pa.array(~null[f.name]), col.combine_chunks(), new.combine_chunks())
            out.append(col)
        return pa.Table.from_arrays(out, schema=table.schema)

    def cells(self, j: int, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """The u-interval [low, high) of every class of numeric token j per row (n, card): a coarse
        class's bin (the null class, if any, is empty: a numeric condition means a value), or the fine
        bins of the row's coarse class."""
        i, part = self.tokens[j]
        cuts = self.cuts[i].to(tokens.device)
        n, n_cls = tokens.shape[0], len(cuts) - 1
        if part == "coarse":
            lo, hi = cuts[:-1], cuts[1:]
            if self.cards[j] > n_cls:  # nullable: the null class holds no u
                lo, hi = torch.cat([lo, lo.new_ones(1)]), torch.cat([hi, hi.new_zeros(1)])
            return lo.expand(n, -1), hi.expand(n, -1)
        k2 = self.cards[j]
        c = tokens[:, j - 1].clamp(max=n_cls - 1)
        width = (cuts[c + 1] - cuts[c])[:, None]
        steps = torch.arange(k2 + 1, device=tokens.device, dtype=cuts.dtype)[None, :] / k2
        edges = cuts[c][:, None] + steps * width
        return edges[:, :-1], edges[:, 1:]

    # -- likelihood (synth.engine.likelihood) ----------------------------------------------
    likelihood_kind = ("exact: the tokens' likelihood in canonical order, each numeric's density uniform inside "
                       "its token cell (how it samples): - log(cell width in u) per non-null numeric")

    @torch.no_grad()
    def log_prob(self, rows, *, seed: int = 0, batch_size: int = 4096):
        """log p(row) in nats for every row of `rows` (an Arrow table with the model's columns), in
        the space of `synth.engine.likelihood`: the token NLL of the validation loss, plus the
        discretisation term that turns a non-null numeric's token probability into the density of
        u inside its cell (the generator draws u uniformly there): - log(width of the coarse class
        in u / fine bins), or - log(the value's CDF mass) for a column of point values. `seed` is
        unused (the value is exact)."""
        from synth.engine.likelihood import log_prob_rows

        k2 = self.config.numeric_bins[1]
        dev = next(self.ema.parameters()).device
        coarse = [(j, i, j + 1 < len(self.tokens) and self.tokens[j + 1] == (i, "fine"))
                  for j, (i, part) in enumerate(self.tokens) if part == "coarse"]

        def score(x: Tensor, _gen) -> Tensor:
            self.ema.eval()
            x = x.to(dev)
            lp = -self.loss(self.ema, x, None, reduce=False).double()
            tokens = self.to_tokens(x)
            for j, i, fine in coarse:
                cuts = self.cuts[i].to(dev)
                n_cls = len(cuts) - 1
                t = tokens[:, j]
                width = (cuts[t.clamp(max=n_cls - 1) + 1] - cuts[t.clamp(max=n_cls - 1)]) / (k2 if fine else 1)
                lp = lp - torch.where(t < n_cls, torch.log(width), 0.0)  # class n_cls: null, discrete
            return lp
        return log_prob_rows(self, rows, score, batch_size, seed)
