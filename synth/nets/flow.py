"""The flow family's network: a neural spline flow (zuko's `NSF`: masked autoregressive
rational-quadratic spline transforms) over dequantised features, conditioned on learnt embeddings
of the given categorical columns (each column has a "not given" row)."""
from __future__ import annotations

import torch
import zuko
from torch import Tensor, nn


class ConditionalFlow(nn.Module):
    def __init__(self, features: int, cond_cards: list[int], embed_dim: int, transforms: int, hidden: int,
                 depth: int, bins: int):
        super().__init__()
        self.embeds = nn.ModuleList(nn.Embedding(card + 1, embed_dim) for card in cond_cards)  # card: not given
        context = embed_dim * len(cond_cards)
        self.flow = zuko.flows.NSF(features, context, bins=bins, transforms=transforms,
                                   hidden_features=[hidden] * depth)

    def context(self, cond: Tensor) -> Tensor | None:
        if not self.embeds:
            return None
        return torch.cat([e(cond[:, j]) for j, e in enumerate(self.embeds)], dim=1)

    def forward(self, y: Tensor, cond: Tensor) -> Tensor:
        """log p(y | given conditions), per row (the base density plus the log Jacobian)."""
        return self.flow(self.context(cond)).log_prob(y)

    def to_base(self, y: Tensor, cond: Tensor) -> Tensor:
        """f(y): features to base normals."""
        return self.flow(self.context(cond)).transform(y)

    def from_base(self, z: Tensor, cond: Tensor) -> Tensor:
        """f^-1(z): base normals to features (one pass per feature: the transform is autoregressive)."""
        return self.flow(self.context(cond)).transform.inv(z)
