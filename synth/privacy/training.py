"""DP-SGD for the diffusion engine through Opacus' PrivacyEngine.

One process: `make_private` wraps the denoiser in a GradSampleModule (default "ghost" clipping:
exact per-sample gradient norms from the activations and backprops of its Linear/Embedding
layers, per-sample gradients only for the LayerNorms, then a second backward pass of the
clipped-weighted loss; 10-28x faster than materialising per-sample gradients on CPU; "hooks"
materialises them), the optimizer in a DPOptimizer (flat clipping
to max_grad_norm, Gaussian noise of std noise_multiplier * max_grad_norm) and the data in a
DPDataLoader (Poisson sampling: every row joins a step's batch independently with probability
sample_rate). The accountant is attached to the optimizer and counts the steps it really made.

Several Ray Train workers: the module is first wrapped in Opacus' DPDDP (parameters broadcast
over the gloo process group Ray Train set up); make_private then gives each worker a
DistributedDPOptimizer (per-sample clipping locally, noise added once on rank 0, clipped sums
all-reduced) and a DPDataLoader whose distributed Poisson sampler draws from the worker's
1/world slice of the rows. Every worker holds the same canonically ordered encoded training set
(Ray Train "memory" mode), so the union of the local batches is a Poisson sample of all rows at
the same rate, and the accountant's analysis is the single-process one. A Ray Data shard
iterator cannot give this: its batches have fixed sizes and arrive in block order.

Sampling and noise generators are seeded from OS entropy, never from the run's recorded seed
(a published seed would let anyone replay the noise).
"""
from __future__ import annotations

import secrets
import warnings
from typing import Iterator

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from synth.errors import SynthError
from synth.privacy.accounting import PrivacyPlan


class DPTraining:
    """Private training state for `synth.train.loop.train(..., private=DPTraining(...))`."""

    def __init__(self, plan: PrivacyPlan, x_train: Tensor, batch_size: int, *, world: int = 1):
        self.plan = plan
        self.x = x_train
        self.batch_size = batch_size
        self.world = world
        self.engine = None
        self.module = None

    @property
    def max_steps(self) -> int:
        """Training stops here at the latest: the planned steps are what the budget allows."""
        return self.plan.steps

    def attach(self, net: nn.Module, optimizer: torch.optim.Optimizer,
               start_step: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, Iterator[Tensor]]:
        from opacus import PrivacyEngine

        plan = self.plan
        if self.x.shape[0] != plan.train_rows:
            raise SynthError(f"the worker holds {self.x.shape[0]} training rows but the privacy plan was made for "
                             f"{plan.train_rows}; DP training needs every row on every worker (data_mode memory)")
        sampler_gen = torch.Generator().manual_seed(secrets.randbits(63))
        noise_gen = torch.Generator(device=next(net.parameters()).device).manual_seed(secrets.randbits(63))
        loader = DataLoader(TensorDataset(self.x), batch_size=self.batch_size, generator=sampler_gen)
        if self.world > 1:
            from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP

            net = DPDDP(net)
        self.engine = PrivacyEngine(accountant=plan.accountant)
        if start_step:  # resumed: the steps already made are already spent
            self.engine.accountant.history = [(plan.noise_multiplier, plan.sample_rate, int(start_step))]
        # Opacus' ghost clipping backpropagates to module outputs only; torch warns about it every step
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ss]ecure.*")
            out = self.engine.make_private(
                module=net, optimizer=optimizer, data_loader=loader, noise_multiplier=plan.noise_multiplier,
                max_grad_norm=plan.max_grad_norm, poisson_sampling=True, noise_generator=noise_gen,
                grad_sample_mode=plan.grad_sample_mode, criterion=_PerSample())
        if plan.grad_sample_mode == "ghost":
            module, dp_opt, self.criterion, dp_loader = out
        else:
            module, dp_opt, dp_loader = out
            self.criterion = None
        if abs(dp_loader.sample_rate - plan.sample_rate) > 1e-12:
            raise SynthError(f"Opacus samples at rate {dp_loader.sample_rate} but the plan assumed {plan.sample_rate}")
        self.module = module
        return module, dp_opt, _endless(dp_loader)

    def loss(self, engine, net: nn.Module, x0: Tensor, generator: torch.Generator | None):
        """The training loss of one Poisson batch, ready for `.backward()` (with ghost clipping a
        DPTensorFastGradientClipping that runs Opacus' two backward passes)."""
        if self.criterion is None:
            return engine.loss(net, x0, generator)
        return self.criterion(engine.loss(net, x0, generator, reduce=False))

    def steps_accounted(self) -> int:
        return sum(n for _, _, n in self.engine.accountant.history) if self.engine else 0

    def epsilon(self) -> float:
        """Training epsilon so far, from the accountant attached to the optimizer."""
        if self.engine is None or not self.engine.accountant.history:
            return 0.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(self.engine.accountant.get_epsilon(delta=self.plan.delta))

    def detach(self) -> None:
        """Remove Opacus' hooks from the module (the engine's net is a plain module again)."""
        if self.module is not None and hasattr(self.module, "_close"):
            self.module._close()


def _endless(loader: DataLoader) -> Iterator[Tensor]:
    while True:
        for (xb,) in loader:
            yield xb


class _PerSample(nn.Module):
    """Opacus' ghost clipping calls criterion(...) with reduction "none" to get per-sample losses;
    ours are computed already, so the criterion only reduces when asked to."""
    reduction = "mean"

    def forward(self, per_sample: Tensor) -> Tensor:
        return per_sample if self.reduction == "none" else per_sample.mean()
