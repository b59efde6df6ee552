"""The autoregressive backbone: one small MLP head per token column over the embeddings of the
columns it may see.

A row is J discrete tokens (a categorical column is one token; a numeric column is a coarse and a
fine bin of its CDF value). Head j predicts token j from the concatenated embeddings of the tokens
it sees, every other token replaced by its column's learnt "not seen" embedding. Head j sees the
tokens before it in canonical order and, per row, any *given* token (a condition revealed first),
so one network generates in canonical order and, for any set of given columns, the rest from
p(rest | given); a given token's own head is not asked for it.

The first layer is linear in its inputs, so it runs as dense matmuls with the view folded into
the weights (as in MADE): the (B, J * dim) token embeddings against the weights of the tokens
before each head, plus the given tokens' embeddings against the weights of the tokens after it.
No (B, J, J, dim) block of per-head inputs is built; the later layers of all heads run as one
batched matmul each. A step costs O(J * J * dim * hidden) multiply-adds per row.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class ColumnHeads(nn.Module):
    def __init__(self, cards: list[int], dim: int, hidden: int, depth: int, dropout: float = 0.0,
                 token_dropout: float = 0.0):
        super().__init__()
        j = len(cards)
        self.cards = list(cards)
        self.dim, self.hidden, self.depth = dim, hidden, depth
        offsets = [0]
        for c in cards:
            offsets.append(offsets[-1] + c + 1)  # +1: the column's "not seen" token
        self.register_buffer("offset", torch.tensor(offsets[:-1], dtype=torch.long), persistent=False)
        self.register_buffer("unseen", torch.tensor([o + c for o, c in zip(offsets[:-1], cards)]), persistent=False)
        before = torch.ones(j, j, dtype=torch.bool).tril(-1)
        # masks [token, head] of the first layer: what a head sees always, and what it sees if given
        self.register_buffer("sees", before.T.float(), persistent=False)
        self.register_buffer("sees_given", (~before).T.float(), persistent=False)
        self.emb = nn.Embedding(offsets[-1], dim)
        nn.init.normal_(self.emb.weight, std=1.0)
        # the first layer of every head, token-major: rows (token k, embedding dim), columns (head j, unit)
        self.w_in = nn.Parameter(torch.randn(j * dim, j * hidden) / math.sqrt(j * dim))
        self.b_in = nn.Parameter(torch.zeros(j, hidden))
        self.w_mid = nn.Parameter(torch.randn(max(depth - 1, 0), j, hidden, hidden) / math.sqrt(hidden))
        self.b_mid = nn.Parameter(torch.zeros(max(depth - 1, 0), j, hidden))
        cmax = max(cards)
        self.w_out = nn.Parameter(torch.zeros(j, hidden, cmax))
        self.b_out = nn.Parameter(torch.zeros(j, cmax))
        invalid = torch.arange(cmax)[None, :] >= torch.tensor(cards)[:, None]
        self.register_buffer("logit_mask", torch.where(invalid, float("-inf"), 0.0), persistent=False)
        self.drop = nn.Dropout(dropout)
        self.token_dropout = token_dropout
        self.act = nn.SiLU()

    def _delta(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Each token's embedding as an offset from its "not seen" embedding, flat (B, J * d), and
        the all-unseen input (J * d,): a first layer W(u + m * (e - u)) is W(m * (e - u)) + W u."""
        unseen = self.emb(self.unseen)
        delta = self.emb(tokens + self.offset) - unseen
        return delta.reshape(delta.shape[0], -1), unseen.reshape(-1)

    def _masked(self, mask: Tensor, heads: Tensor | None = None) -> Tensor:
        """First-layer weights (J * dim, heads * hidden) with the [token, head] `mask` applied (all heads,
        or only `heads`)."""
        j, d, hid = len(self.cards), self.dim, self.hidden
        w = self.w_in.view(j, d, j, hid)
        if heads is not None:
            w, mask = w[:, :, heads], mask[:, heads]
        return (w * mask[:, None, :, None]).reshape(j * d, -1)

    def forward(self, tokens: Tensor, given: Tensor | None = None, first: Tensor | None = None) -> Tensor:
        """Logits (B, J, max card) of every head for (B, J) tokens of which `given` (B, J), if any,
        are revealed first and `first` (B, J), if any, are generated next, before the rest: the head
        of a `first` token sees the given tokens and the `first` tokens before it only (a numeric
        condition drawn from p(column | given) before the columns that depend on it); padded
        classes are -inf."""
        n, j = tokens.shape
        delta, base = self._delta(tokens)
        seen = delta
        if self.training and self.token_dropout > 0:  # show an earlier token as "not seen" at random (a
            keep = torch.rand(n, j, device=delta.device) >= self.token_dropout  # regulariser); conditions stay
            seen = delta * keep.repeat_interleave(self.dim, dim=1).to(delta.dtype)
        bias = self.b_in.view(-1) + base @ self.w_in
        pre = torch.addmm(bias, seen, self._masked(self.sees))  # (B, J * hidden)
        shown = given if first is None else first if given is None else given | first
        if shown is not None and shown.any():
            rows = shown.any(dim=1).nonzero()[:, 0]
            pre = pre.index_add(0, rows, self._spread(shown[rows], delta[rows]) @ self._masked(self.sees_given))
        if first is not None and first.any():  # heads of `first` tokens: given tokens, and `first` ones before
            rows, heads = first.any(dim=1).nonzero()[:, 0], first.any(dim=0).nonzero()[:, 0]  # only those heads
            early = self._spread(shown[rows], delta[rows]) @ self._masked(self.sees, heads)
            if given is not None:
                early = early + self._spread(given[rows], delta[rows]) @ self._masked(self.sees_given, heads)
            early = early.view(len(rows), len(heads), self.hidden) + bias.view(j, self.hidden)[heads]
            block = pre[rows].view(len(rows), j, self.hidden).clone()
            block[:, heads] = torch.where(first[rows][:, heads, None], early.to(block.dtype), block[:, heads])
            pre = pre.index_copy(0, rows, block.view(len(rows), -1))
        h = self.act(pre.view(n, j, self.hidden)).transpose(0, 1)  # (J, B, hidden)
        for i in range(self.depth - 1):
            h = h + self.act(torch.baddbmm(self.b_mid[i][:, None], self.drop(h), self.w_mid[i]))
        out = torch.baddbmm(self.b_out[:, None], self.drop(h), self.w_out)  # (J, B, C)
        return out.transpose(0, 1) + self.logit_mask

    def _spread(self, mask: Tensor, delta: Tensor) -> Tensor:
        """The embedding offsets (B, J * dim) of the tokens a (B, J) mask shows, zero elsewhere."""
        return mask.repeat_interleave(self.dim, dim=1).to(delta.dtype) * delta

    def seen_by(self, j: int, given: Tensor, first: Tensor | None = None) -> Tensor:
        """(B, J) mask of the tokens head j sees in rows whose `given` (B, J) tokens are revealed
        and whose `first` tokens, if any, are generated before the rest (as in `forward`)."""
        shown = given if first is None else given | first
        canonical = self.sees[:, j].bool() | (shown & self.sees_given[:, j].bool())
        if first is None:
            return canonical
        return torch.where(first[:, j:j + 1], given | (first & self.sees[:, j].bool()), canonical)

    def head(self, j: int, tokens: Tensor, seen: Tensor) -> Tensor:
        """Logits (B, card_j) of head j alone, seeing the tokens `seen` (B, J) marks (sampling)."""
        delta, base = self._delta(tokens)
        w = self.w_in[:, j * self.hidden:(j + 1) * self.hidden]
        x = seen.repeat_interleave(self.dim, dim=1).to(delta.dtype) * delta
        h = self.act(torch.addmm(self.b_in[j] + base @ w, x, w))
        for i in range(self.depth - 1):
            h = h + self.act(torch.addmm(self.b_mid[i, j], h, self.w_mid[i, j]))
        return torch.addmm(self.b_out[j], h, self.w_out[j])[:, : self.cards[j]]
