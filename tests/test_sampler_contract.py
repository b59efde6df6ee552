"""One contract for every sampler x every noise process (x head where it matters).

The reference problem is Gaussian data x0 ~ N(mu, Sigma) (4-d, non-diagonal Sigma), for which the
exact denoiser E[x0 | x_t] and the exact probability-flow ODE map are known in closed form:
in the eigenbasis of Sigma (eigenvalues l), with y_t = x_t - alpha_t mu,

    E[x0 | x_t] = mu + alpha l / (alpha^2 l + sigma^2) y_t,
    ODE:  y_t / sqrt(alpha_t^2 l + sigma_t^2) is constant in t.

So deterministic samplers are checked path-wise against the exact ODE solution from the same
start (no Monte-Carlo noise), and every sampler on the sample mean/covariance of 20k draws.
Negative controls show that the checks fail for a biased denoiser and for broken samplers.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import Tensor

from synth.diffusion.objectives import Objective
from synth.diffusion.processes import NoiseProcess, ProcessConfig, timesteps
from synth.diffusion.samplers import SAMPLERS, UnknownSamplerError, sample_ddim

F64 = torch.float64

PROCESSES = {
    "vp-linear": ProcessConfig(kind="vp", schedule="linear"),
    "vp-cosine": ProcessConfig(kind="vp", schedule="cosine"),
    "vp-sigmoid": ProcessConfig(kind="vp", schedule="sigmoid"),
    "ve": ProcessConfig(kind="ve"),
    "flow": ProcessConfig(kind="flow"),
    "ou": ProcessConfig(kind="ou"),
}
DETERMINISTIC = ["ddim", "dpmpp_2m", "unipc", "euler", "heun", "distilled"]

# Steps for the convergence check at each sampler's default spacing. Euler/Heun integrate the ODE
# in the process's own clock t: VE's geometric clock (rate log(sigma_max/sigma_min) ~ 10.6) and
# OU's sqrt(1 - t) singularity at t_max need more steps; the exponential integrators do not.
STEPS = {"ddpm": 250, "ddim": 150, "dpmpp_2m": 50, "unipc": 50, "euler": 200, "heun": 25, "distilled": 150}
STEPS_OVERRIDE = {("euler", "ve"): 1200, ("euler", "ou"): 400, ("heun", "ve"): 100, ("heun", "ou"): 50}

N = 20_000
MEAN_TOL = 0.06  # Monte-Carlo s.e. of the mean ~0.01; prior mismatch at t_max <= 0.02
COV_TOL = 0.10  # s.e. of a covariance entry <= 0.02
PATH_TOL = 0.05  # RMS distance to the exact ODE solution


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny tensors: threads only add contention on a shared machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Gaussian:
    mu = torch.tensor([0.5, -1.0, 0.25, 1.5], dtype=F64)
    Sigma = torch.tensor(
        [[1.5, 0.6, -0.3, 0.2], [0.6, 1.0, 0.25, 0.0], [-0.3, 0.25, 0.8, -0.2], [0.2, 0.0, -0.2, 0.5]], dtype=F64
    )
    lam, Q = torch.linalg.eigh(Sigma)
    dim = 4

    @classmethod
    def posterior_mean(cls, x: Tensor, a: Tensor, s: Tensor) -> Tensor:
        """E[x0 | x_t] for per-row alpha ``a`` and sigma ``s`` of shape (batch, 1); x_t / a at s = 0."""
        y = (x.to(F64) - a * cls.mu) @ cls.Q
        return cls.mu + (a * cls.lam / (a * a * cls.lam + s * s) * y) @ cls.Q.T

    @classmethod
    def denoiser(cls, process: NoiseProcess, head: str = "x0", bias: float = 0.0) -> Callable[[Tensor, Tensor], Tensor]:
        """Exact denoiser, routed through ``head`` (the oracle network outputs the head's target)."""
        objective = Objective(head=head)

        def denoise(x: Tensor, t: Tensor) -> Tensor:
            a = process.alpha(t.to(F64))[:, None]
            s = process.sigma(t.to(F64))[:, None]
            x0 = cls.posterior_mean(x, a, s)
            eps = (x.to(F64) - a * x0) / s
            out = objective.target(x0, eps, t.to(F64), process).to(x.dtype)
            return objective.to_x0(out, x, t, process) + bias

        return denoise

    @classmethod
    def exact_ode(cls, process: NoiseProcess, x_start: Tensor, t_start: float) -> Tensor:
        a = process.alpha(torch.tensor(t_start, dtype=F64))
        s = process.sigma(torch.tensor(t_start, dtype=F64))
        y = (x_start.to(F64) - a * cls.mu) @ cls.Q
        return cls.mu + (y * torch.sqrt(cls.lam / (a * a * cls.lam + s * s))) @ cls.Q.T

    @classmethod
    def errors(cls, samples: Tensor) -> tuple[float, float]:
        samples = samples.to(F64)
        mean_err = (samples.mean(0) - cls.mu).abs().max().item()
        cov_err = (torch.cov(samples.T) - cls.Sigma).abs().max().item()
        return mean_err, cov_err


def _path_rms(a: Tensor, b: Tensor) -> float:
    return (a.to(F64) - b.to(F64)).pow(2).sum(1).mean().sqrt().item()


def _run(sampler: str, process: NoiseProcess, steps: int, *, head: str = "x0", n: int = N, seed: int = 0,
         bias: float = 0.0, spacing: str | None = None) -> tuple[Tensor, Tensor]:
    prior = process.prior((n, Gaussian.dim), generator=torch.Generator().manual_seed(seed))
    ts = timesteps(process, steps, spacing or SAMPLERS[sampler].spacing)
    out = SAMPLERS[sampler](Gaussian.denoiser(process, head, bias), prior, ts, process=process,
                            generator=torch.Generator().manual_seed(seed + 1))
    return prior, out


# ------------------------------------------------------------------------------------------------
# Contract: shape, dtype, NFE, callback, determinism, re-use, no in-place edits
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("proc", list(PROCESSES))
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_contract(sampler: str, proc: str, dtype: torch.dtype) -> None:
    process = PROCESSES[proc].build()
    steps = 6
    ts = timesteps(process, steps, SAMPLERS[sampler].spacing)
    x = process.prior((64, Gaussian.dim), generator=torch.Generator().manual_seed(0), dtype=dtype)
    x_copy = x.clone()
    calls: list[Tensor] = []
    infos: list[dict] = []
    exact = Gaussian.denoiser(process)

    def counting(x_: Tensor, t_: Tensor) -> Tensor:
        assert t_.shape == (x_.shape[0],) and t_.dtype == x_.dtype
        assert torch.all(t_ == t_[0]) and 0.0 < float(t_[0]) <= process.t_max + 1e-6
        calls.append(t_[0])
        return exact(x_, t_)

    fn = SAMPLERS[sampler]
    out = fn(counting, x, ts, process=process, generator=torch.Generator().manual_seed(1), callback=infos.append)
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert torch.isfinite(out).all()
    assert torch.equal(x, x_copy), "sampler modified its input"
    assert len(calls) == SAMPLERS[sampler].nfe(steps)
    assert [info["i"] for info in infos] == list(range(steps))
    assert infos[-1]["t_next"] == 0.0 and torch.equal(infos[-1]["x"], out)

    # same seeds -> identical tensors; calling again re-uses nothing from the first call
    again = fn(exact, x, ts, process=process, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    other = fn(exact, x, ts, process=process, generator=torch.Generator().manual_seed(2))
    if sampler == "ddpm":
        assert not torch.allclose(out, other)
    else:
        assert torch.equal(out, other), "deterministic sampler depends on the generator"


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_single_step_returns_denoised_prior(sampler: str) -> None:
    process = PROCESSES["vp-cosine"].build()
    x = process.prior((8, Gaussian.dim), generator=torch.Generator().manual_seed(0))
    den = Gaussian.denoiser(process)
    out = SAMPLERS[sampler](den, x, timesteps(process, 1), process=process)
    expected = den(x, torch.full((8,), process.t_max))
    torch.testing.assert_close(out, expected)


def test_registry_and_nfe() -> None:
    assert set(SAMPLERS) == {"ddpm", "ddim", "dpmpp_2m", "unipc", "euler", "heun", "distilled"}
    assert all(name == spec.name for name, spec in SAMPLERS.items())
    assert {spec.spacing for spec in SAMPLERS.values()} <= {"uniform", "logsnr"}
    assert SAMPLERS["heun"].nfe(25) == 49 and SAMPLERS["heun"].nfe(1) == 1
    assert all(spec.nfe(10) == 10 for s, spec in SAMPLERS.items() if s != "heun")
    assert [s for s, spec in SAMPLERS.items() if spec.stochastic] == ["ddpm"]
    assert [s for s, spec in SAMPLERS.items() if spec.student] == ["distilled"]
    with pytest.raises(ValueError, match="steps must be >= 1"):
        SAMPLERS["ddim"].nfe(0)
    for bad in (lambda: SAMPLERS["dpm"], lambda: SAMPLERS["dpm"].nfe(3)):
        with pytest.raises(ValueError, match="valid samplers.*ddim.*unipc"):
            bad()
    assert isinstance(UnknownSamplerError("x"), KeyError)
    assert "dpm" not in SAMPLERS and SAMPLERS.get("dpm") is None


def test_rejects_bad_grids() -> None:
    process = PROCESSES["vp-cosine"].build()
    x = torch.zeros(2, 4)
    den = Gaussian.denoiser(process)
    for bad in (torch.tensor([1.0]), torch.tensor([0.5, 0.7, 0.0]), torch.tensor([1.0, 0.5, 0.5, 0.0])):
        with pytest.raises(ValueError):
            sample_ddim(den, x, bad, process=process)


# ------------------------------------------------------------------------------------------------
# Convergence on the Gaussian
# ------------------------------------------------------------------------------------------------

CASES = [(s, p, "x0") for s in SAMPLERS for p in PROCESSES]
CASES += [(s, p, h) for s in ("dpmpp_2m", "unipc") for p in PROCESSES for h in ("eps", "v")]


@pytest.mark.parametrize("sampler,proc,head", CASES)
def test_gaussian_convergence(sampler: str, proc: str, head: str) -> None:
    process = PROCESSES[proc].build()
    steps = STEPS_OVERRIDE.get((sampler, proc), STEPS[sampler])
    prior, out = _run(sampler, process, steps, head=head)
    assert torch.isfinite(out).all()
    mean_err, cov_err = Gaussian.errors(out)
    assert mean_err < MEAN_TOL, f"mean error {mean_err:.3f}"
    assert cov_err < COV_TOL, f"covariance error {cov_err:.3f}"
    if sampler in DETERMINISTIC:
        path = _path_rms(out, Gaussian.exact_ode(process, prior, process.t_max))
        assert path < PATH_TOL, f"path error {path:.4f}"


@pytest.mark.parametrize("proc", ["vp-cosine", "ve", "flow"])
def test_checks_fail_for_a_biased_denoiser(proc: str) -> None:
    process = PROCESSES[proc].build()
    for sampler in ("ddpm", "dpmpp_2m"):
        _, out = _run(sampler, process, STEPS[sampler], bias=0.15)
        mean_err, _ = Gaussian.errors(out)
        assert mean_err > 2 * MEAN_TOL


def _broken_ddim_no_noise(denoiser, x, ts, *, process, generator=None, callback=None):
    """Forgets the implied-noise term: x_s = alpha_s D."""
    t = ts.tolist()
    for i in range(len(t) - 1):
        x = process.alpha(torch.tensor(t[i + 1])).item() * denoiser(x, torch.full((x.shape[0],), t[i]))
    return x


def _broken_ddim_swapped(denoiser, x, ts, *, process, generator=None, callback=None):
    """Uses the alpha ratio where the sigma ratio belongs."""
    t = ts.to(F64)
    a = process.alpha(t).tolist()
    for i in range(len(a) - 1):
        d = denoiser(x, torch.full((x.shape[0],), t[i].item()))
        ratio = a[i + 1] / a[i]  # should be s[i + 1] / s[i]
        x = ratio * x + (a[i + 1] - a[i] * ratio) * d
    return x


@pytest.mark.parametrize("broken", [_broken_ddim_no_noise, _broken_ddim_swapped])
def test_checks_fail_for_a_broken_sampler(broken) -> None:
    process = PROCESSES["vp-linear"].build()
    prior = process.prior((N, Gaussian.dim), generator=torch.Generator().manual_seed(0))
    out = broken(Gaussian.denoiser(process), prior, timesteps(process, 50), process=process)
    mean_err, cov_err = Gaussian.errors(out)
    path = _path_rms(out, Gaussian.exact_ode(process, prior, process.t_max))
    assert cov_err > 2 * COV_TOL or mean_err > 2 * MEAN_TOL
    assert path > 4 * PATH_TOL


@pytest.mark.parametrize("proc", list(PROCESSES))
def test_low_step_multistep_beats_ddim(proc: str) -> None:
    """At 8 steps the 2nd-order multistep solvers are several times closer to the exact ODE."""
    process = PROCESSES[proc].build()
    err = {}
    for sampler in ("ddim", "dpmpp_2m", "unipc"):
        prior, out = _run(sampler, process, 8, n=2000)
        err[sampler] = _path_rms(out, Gaussian.exact_ode(process, prior, process.t_max))
    assert err["ddim"] > 0.25
    assert err["dpmpp_2m"] < 0.1 and err["unipc"] < 0.15
    assert err["dpmpp_2m"] < err["ddim"] / 3 and err["unipc"] < err["ddim"] / 2


# UniPC-2 with its corrector is third order (Zhao et al. 2023, UniC raises the order by one).
ORDER = {"ddim": 1, "euler": 1, "dpmpp_2m": 2, "heun": 2, "unipc": 3, "distilled": 1}


@pytest.mark.parametrize("proc", list(PROCESSES))
@pytest.mark.parametrize("sampler", DETERMINISTIC)
def test_convergence_order(sampler: str, proc: str) -> None:
    """Doubling the steps divides the path error by ~2^order."""
    process = PROCESSES[proc].build()
    base = STEPS_OVERRIDE.get((sampler, proc), STEPS[sampler]) // 2
    errs = []
    for steps in (base, 2 * base):
        prior, out = _run(sampler, process, steps, n=1000)
        errs.append(_path_rms(out, Gaussian.exact_ode(process, prior, process.t_max)))
    ratio = errs[0] / errs[1]
    assert 0.8 * 2 ** ORDER[sampler] < ratio < 1.5 * 2 ** ORDER[sampler], errs


# ------------------------------------------------------------------------------------------------
# Cross-check against diffusers on a discrete-beta VP process
# ------------------------------------------------------------------------------------------------


class DiscreteVP(NoiseProcess):
    """VP process whose alpha_bar at t = (k + 1) / T is diffusers' alphas_cumprod[k]
    (log alpha_bar linear in between, alpha_bar(0) = 1)."""

    name = "discrete-vp"
    variance_preserving = True

    def __init__(self, alphas_cumprod: Tensor) -> None:
        self.T = len(alphas_cumprod)
        self.knots = torch.cat([torch.zeros(1, dtype=F64), torch.log(alphas_cumprod.to(F64))])

    def _segment(self, t: Tensor) -> tuple[Tensor, Tensor]:
        u = t * self.T
        i = u.floor().clamp(0, self.T - 1).long()
        return i, u - i

    def _lab(self, t: Tensor) -> Tensor:
        i, f = self._segment(t)
        return self.knots[i] * (1 - f) + self.knots[i + 1] * f

    def _alpha(self, t: Tensor) -> Tensor:
        return torch.exp(0.5 * self._lab(t))

    def _sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(self._lab(t)))

    def _d_alpha(self, t: Tensor) -> Tensor:
        i, _ = self._segment(t)
        return self._alpha(t) * 0.5 * (self.knots[i + 1] - self.knots[i]) * self.T

    def _d_sigma(self, t: Tensor) -> Tensor:
        return -self._alpha(t) * self._d_alpha(t) / self._sigma(t)


def _diffusers_schedulers():
    diffusers = pytest.importorskip("diffusers")
    return {
        "ddim": (diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=True, prediction_type="sample"), 20),
        "ddpm": (diffusers.DDPMScheduler(clip_sample=False, variance_type="fixed_small", prediction_type="sample"), 20),
        "dpmpp_2m": (diffusers.DPMSolverMultistepScheduler(prediction_type="sample", final_sigmas_type="zero"), 12),
        "unipc": (diffusers.UniPCMultistepScheduler(prediction_type="sample", final_sigmas_type="zero"), 12),
    }


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmpp_2m", "unipc"])
def test_matches_diffusers(sampler: str) -> None:
    scheduler, steps = _diffusers_schedulers()[sampler]
    ac = scheduler.alphas_cumprod
    process = DiscreteVP(ac)
    scheduler.set_timesteps(steps)
    ks = [int(k) for k in scheduler.timesteps]
    grid = torch.tensor([(k + 1) / len(ac) for k in ks] + [0.0], dtype=F64)

    x = torch.randn(256, Gaussian.dim, generator=torch.Generator().manual_seed(3))
    ref = x.clone()
    gen = torch.Generator().manual_seed(5)
    for k in ks:
        a, s = ac[k].to(F64).sqrt(), (1 - ac[k].to(F64)).sqrt()
        x0 = Gaussian.posterior_mean(ref, a, s).float()
        kwargs = {"generator": gen} if sampler == "ddpm" else {}
        ref = scheduler.step(x0, k, ref, **kwargs).prev_sample

    ours = SAMPLERS[sampler](Gaussian.denoiser(process), x, grid, process=process,
                             generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-4)
