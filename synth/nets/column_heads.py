"""The autoregressive backbone: one small MLP head per token column over the embeddings of the
columns it may see.

A row is J discrete tokens (a categorical column is one token; a numeric column is a coarse and a
fine bin of its CDF value). Head j predicts token j from the concatenated embeddings of the tokens
`visible[:, j]` marks, every other token replaced by its column's learnt "not seen" embedding, so
one network serves any order in which columns are revealed (canonical order for generation; the
conditioned columns first when a request conditions). All heads run as one batched matmul per
layer, which keeps a step cheap on CPUs: O(J * J * dim * hidden) per row.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class ColumnHeads(nn.Module):
    def __init__(self, cards: list[int], dim: int, hidden: int, depth: int, dropout: float = 0.0):
        super().__init__()
        j = len(cards)
        self.cards = list(cards)
        self.dim, self.hidden, self.depth = dim, hidden, depth
        offsets = [0]
        for c in cards:
            offsets.append(offsets[-1] + c + 1)  # +1: the column's "not seen" token
        self.register_buffer("offset", torch.tensor(offsets[:-1], dtype=torch.long), persistent=False)
        self.register_buffer("unseen", torch.tensor([o + c for o, c in zip(offsets[:-1], cards)]), persistent=False)
        self.emb = nn.Embedding(offsets[-1], dim)
        nn.init.normal_(self.emb.weight, std=1.0)
        width_in = j * dim
        self.w_in = nn.Parameter(torch.randn(j, width_in, hidden) / math.sqrt(width_in))
        self.b_in = nn.Parameter(torch.zeros(j, hidden))
        self.w_mid = nn.Parameter(torch.randn(max(depth - 1, 0), j, hidden, hidden) / math.sqrt(hidden))
        self.b_mid = nn.Parameter(torch.zeros(max(depth - 1, 0), j, hidden))
        cmax = max(cards)
        self.w_out = nn.Parameter(torch.zeros(j, hidden, cmax))
        self.b_out = nn.Parameter(torch.zeros(j, cmax))
        invalid = torch.arange(cmax)[None, :] >= torch.tensor(cards)[:, None]
        self.register_buffer("logit_mask", torch.where(invalid, float("-inf"), 0.0), persistent=False)
        self.drop = nn.Dropout(dropout)
        self.act = nn.SiLU()

    def inputs(self, tokens: Tensor, visible: Tensor) -> Tensor:
        """(B, J) tokens and (B, H, J) visibility of each token to H heads -> (B, H, J * dim)."""
        seen = self.emb(tokens + self.offset)  # (B, J, d)
        unseen = self.emb(self.unseen)  # (J, d)
        x = torch.where(visible[..., None], seen[:, None], unseen[None, None])
        return x.reshape(x.shape[0], x.shape[1], -1)

    def forward(self, tokens: Tensor, visible: Tensor) -> Tensor:
        """Logits (B, J, max card) of every head; padded classes are -inf."""
        x = self.inputs(tokens, visible).transpose(0, 1)  # (J, B, J*d)
        h = self.act(torch.baddbmm(self.b_in[:, None], x, self.w_in))
        for i in range(self.depth - 1):
            h = h + self.act(torch.baddbmm(self.b_mid[i][:, None], self.drop(h), self.w_mid[i]))
        out = torch.baddbmm(self.b_out[:, None], self.drop(h), self.w_out)  # (J, B, C)
        return out.transpose(0, 1) + self.logit_mask

    def head(self, j: int, tokens: Tensor, visible: Tensor) -> Tensor:
        """Logits (B, card_j) of head j alone, seeing `visible` (B, J) tokens (sampling)."""
        x = self.inputs(tokens, visible[:, None])[:, 0]  # (B, J*d)
        h = self.act(torch.addmm(self.b_in[j], x, self.w_in[j]))
        for i in range(self.depth - 1):
            h = h + self.act(torch.addmm(self.b_mid[i, j], h, self.w_mid[i, j]))
        return torch.addmm(self.b_out[j], h, self.w_out[j])[:, : self.cards[j]]
