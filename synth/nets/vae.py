"""The VAE family's network: an encoder q(z | x, c) and a decoder p(x | z, c) (MLPs), both given
learnt embeddings of the revealed categorical conditions c (each column has a "not given" row).
The decoder's output holds every column's likelihood parameters; `synth.engine.vae` reads them."""
from __future__ import annotations

import torch
from torch import Tensor, nn


def mlp(d_in: int, width: int, depth: int, d_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = d_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.SiLU()]
        d = width
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers)


class TabularVAE(nn.Module):
    def __init__(self, d_in: int, d_out: int, latent: int, width: int, depth: int, cond_cards: list[int],
                 embed_dim: int):
        super().__init__()
        self.latent = latent
        self.embeds = nn.ModuleList(nn.Embedding(card + 1, embed_dim) for card in cond_cards)  # card: not given
        d_ctx = embed_dim * len(cond_cards)
        self.encoder = mlp(d_in + d_ctx, width, depth, 2 * latent)
        self.decoder = mlp(latent + d_ctx, width, depth, d_out)
        # training batches seen: drives the KL annealing, saved and restored with the weights
        self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long))

    def context(self, cond: Tensor) -> Tensor:
        if not self.embeds:
            return cond.new_zeros(cond.shape[0], 0, dtype=torch.float32)
        return torch.cat([e(cond[:, j]) for j, e in enumerate(self.embeds)], dim=1)

    def encode(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encoder(torch.cat([x, self.context(cond)], dim=1))
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decode(self, z: Tensor, cond: Tensor) -> Tensor:
        return self.decoder(torch.cat([z, self.context(cond)], dim=1))

    def forward(self, x: Tensor, cond: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(mu, logvar, decoder output at z = mu + sigma * eps); counts training batches."""
        if self.training:
            self.batches_seen += 1
        mu, logvar = self.encode(x, cond)
        return mu, logvar, self.decode(mu + torch.exp(0.5 * logvar) * eps, cond)
