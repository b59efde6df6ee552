"""Noise processes, objectives and the time-grid convention."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from synth.diffusion.objectives import Objective, ObjectiveConfig
from synth.diffusion.processes import (
    LOG_SNR_MIN,
    FlowProcess,
    NoiseProcess,
    OUProcess,
    ProcessConfig,
    VEProcess,
    VPProcess,
    timesteps,
)

F64 = torch.float64
CONFIGS = {
    "vp-linear": ProcessConfig(kind="vp", schedule="linear"),
    "vp-cosine": ProcessConfig(kind="vp", schedule="cosine"),
    "vp-sigmoid": ProcessConfig(kind="vp", schedule="sigmoid"),
    "ve": ProcessConfig(kind="ve"),
    "flow": ProcessConfig(kind="flow"),
    "ou": ProcessConfig(kind="ou"),
}
PROCS = {name: cfg.build() for name, cfg in CONFIGS.items()}
ALL = pytest.mark.parametrize("name", list(PROCS))


def _interior(p: NoiseProcess, n: int = 201, lo: float = 1e-3) -> torch.Tensor:
    """(0, t_max], minus t_max itself where alpha(t_max) = 0 (flow: lambda = -inf there)."""
    hi = p.t_max if float(p.alpha(torch.tensor(p.t_max, dtype=F64))) > 0 else p.t_max - 1e-3
    return torch.linspace(lo, hi, n, dtype=F64)


# -- construction -----------------------------------------------------------------------------


def test_config_builds_each_kind() -> None:
    assert isinstance(ProcessConfig().build(), VPProcess) and ProcessConfig().build().name == "vp-cosine"
    assert isinstance(CONFIGS["ve"].build(), VEProcess)
    assert isinstance(CONFIGS["flow"].build(), FlowProcess)
    assert isinstance(CONFIGS["ou"].build(), OUProcess)
    assert [PROCS[n].name for n in PROCS] == list(PROCS)
    assert ProcessConfig.model_validate({"kind": "ve", "sigma_max": 50}).build().sigma_max == 50
    for bad in ({"kind": "vx"}, {"schedule": "quad"}, {"sigma_min": 10.0, "sigma_max": 1.0},
                {"beta_min": 5.0, "beta_max": 1.0}, {"typo": 1}):
        with pytest.raises(ValidationError):
            ProcessConfig.model_validate(bad)
    with pytest.raises(ValueError):
        VPProcess("quad")  # type: ignore[arg-type]


# -- endpoints and numerics -------------------------------------------------------------------


@ALL
def test_endpoints(name: str) -> None:
    p = PROCS[name]
    assert float(p.alpha(0.0)) == 1.0 and float(p.sigma(0.0)) == 0.0
    assert float(p.log_snr(0.0)) == math.inf
    a1, s1 = float(p.alpha(p.t_max)), float(p.sigma(p.t_max))
    assert 0.0 <= a1 < 0.01 or name == "ve"
    assert s1 > 0.99
    if name.startswith("vp") or name == "ou":
        assert a1 > 0 and float(p.log_snr(p.t_max)) == pytest.approx(LOG_SNR_MIN, abs=0.03)
    if name == "ve":
        assert a1 == 1.0 and s1 == pytest.approx(80.0)
        assert float(p.sigma(1e-9)) == pytest.approx(0.002, rel=1e-6)
    if name == "flow":
        assert a1 == 0.0 and float(p.log_snr(1.0)) == -math.inf


def test_truncated_schedules_document_their_end() -> None:
    # cosine/sigmoid would reach alpha_bar = 0 at their nominal end; ours stop at lambda = -5
    for name in ("vp-cosine", "vp-sigmoid"):
        p = PROCS[name]
        assert p.tau_end < 1.0
        one = torch.tensor(1.0, dtype=F64)
        assert float(p.log_snr(one)) == pytest.approx(LOG_SNR_MIN, abs=1e-12)
        assert float(p.alpha(one)) == pytest.approx(math.sqrt(1 / (1 + math.exp(10))), rel=1e-9)
    assert PROCS["vp-linear"].tau_end == 1.0
    assert float(PROCS["vp-linear"].log_snr(1.0)) == pytest.approx(-5.025, abs=1e-3)
    assert PROCS["ou"].t_max == pytest.approx(1 - 2.27e-5, abs=1e-7)


@ALL
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["f32", "f64"])
def test_no_nan_anywhere(name: str, dtype: torch.dtype) -> None:
    p = PROCS[name]
    t = torch.cat([torch.tensor([0.0, 1e-12, 1e-7, p.t_max, 1.0]), torch.linspace(0, 1, 1001)]).to(dtype)
    for fn in (p.alpha, p.sigma, p.d_alpha, p.d_sigma, p.log_snr):
        v = fn(t)
        assert v.dtype == dtype and v.shape == t.shape
        assert not torch.isnan(v).any(), fn.__name__
    assert torch.isfinite(p.alpha(t)).all() and torch.isfinite(p.sigma(t)).all()
    lam = torch.tensor([-math.inf, -1e6, -50.0, 0.0, 50.0, 1e6, math.inf], dtype=dtype)
    back = p.t_from_log_snr(lam)
    assert torch.isfinite(back).all() and (back >= 0).all() and (back <= 1).all()
    assert float(back[-1]) == 0.0
    # python scalars and integer tensors work too
    assert p.alpha(0.5).dtype == torch.get_default_dtype()
    assert p.alpha(torch.tensor(0)).item() == 1.0


@ALL
def test_infinities_only_where_expected(name: str) -> None:
    p = PROCS[name]
    t = _interior(p)
    for fn in (p.alpha, p.sigma, p.d_alpha, p.d_sigma, p.log_snr):
        assert torch.isfinite(fn(t)).all(), fn.__name__


@pytest.mark.parametrize("name", ["vp-linear", "vp-cosine", "vp-sigmoid", "ou"])
def test_variance_preserving(name: str) -> None:
    p = PROCS[name]
    assert p.variance_preserving
    t = torch.linspace(0, 1, 501, dtype=F64)
    torch.testing.assert_close(p.alpha(t) ** 2 + p.sigma(t) ** 2, torch.ones_like(t), atol=1e-12, rtol=0)


def test_variance_preserving_flags() -> None:
    assert not PROCS["ve"].variance_preserving and not PROCS["flow"].variance_preserving


@ALL
def test_derivatives_match_finite_differences(name: str) -> None:
    p = PROCS[name]
    t = torch.linspace(0.01, p.t_max - 0.01, 97, dtype=F64)
    h = 1e-6
    for f, df in ((p.alpha, p.d_alpha), (p.sigma, p.d_sigma)):
        fd = (f(t + h) - f(t - h)) / (2 * h)
        torch.testing.assert_close(df(t), fd, rtol=1e-5, atol=1e-7)


@ALL
def test_log_snr_decreasing_and_inverse(name: str) -> None:
    p = PROCS[name]
    t = torch.cat([torch.tensor([1e-6, 1e-4], dtype=F64), _interior(p, 400)])
    lam = p.log_snr(t)
    assert (lam[1:] < lam[:-1]).all()
    torch.testing.assert_close(p.t_from_log_snr(lam), t, rtol=1e-9, atol=1e-12)
    lam_grid = torch.linspace(float(lam[-1]), float(lam[0]), 50, dtype=F64)
    torch.testing.assert_close(p.log_snr(p.t_from_log_snr(lam_grid)), lam_grid, rtol=1e-8, atol=1e-8)
    # also through float32
    t32 = t.float()
    torch.testing.assert_close(p.t_from_log_snr(p.log_snr(t32)), t32, rtol=1e-4, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(list(PROCS)), u=st.floats(1e-5, 1.0))
def test_log_snr_roundtrip_property(name: str, u: float) -> None:
    p = PROCS[name]
    t = torch.tensor(u * p.t_max, dtype=F64)
    assert float(p.t_from_log_snr(p.log_snr(t))) == pytest.approx(float(t), rel=1e-8, abs=1e-12)


def test_bisection_fallback_inverts() -> None:
    class Quadratic(NoiseProcess):  # uses the generic bisection t_from_log_snr
        name = "quad"

        def _alpha(self, t):
            return 1 - t**2

        def _sigma(self, t):
            return t.clone()

        def _d_alpha(self, t):
            return -2 * t

        def _d_sigma(self, t):
            return torch.ones_like(t)

    p = Quadratic()
    t = torch.linspace(0.01, 0.99, 50, dtype=F64)
    torch.testing.assert_close(p.t_from_log_snr(p.log_snr(t)), t, rtol=1e-10, atol=1e-12)
    assert float(p.t_from_log_snr(math.inf)) == 0.0


# -- forward process ---------------------------------------------------------------------------


@ALL
def test_q_sample_statistics(name: str) -> None:
    p = PROCS[name]
    g = torch.Generator().manual_seed(0)
    n = 50_000
    x0 = torch.tensor([[1.0, -2.0, 0.5]]).expand(n, 3)
    for tv in (0.05, 0.5, 0.9 * p.t_max):
        t = torch.full((n,), tv)
        x = p.q_sample(x0, t, torch.randn(n, 3, generator=g))
        a, s = float(p.alpha(tv)), float(p.sigma(tv))
        torch.testing.assert_close(x.mean(0), a * x0[0], atol=4 * s / math.sqrt(n) + 1e-6, rtol=0)
        torch.testing.assert_close(x.std(0), torch.full((3,), s), rtol=0.02, atol=1e-6)
    # t = 0 returns the data, scalar t broadcasts, shapes (batch, d1, d2) broadcast
    torch.testing.assert_close(p.q_sample(x0[:4], torch.zeros(4), torch.randn(4, 3)), x0[:4])
    assert p.q_sample(x0[:4], torch.tensor(0.3), torch.zeros(4, 3)).shape == (4, 3)
    assert p.q_sample(torch.ones(2, 3, 5), torch.tensor([0.2, 0.4]), torch.zeros(2, 3, 5)).shape == (2, 3, 5)


@ALL
def test_prior(name: str) -> None:
    p = PROCS[name]
    x = p.prior((20_000, 2), generator=torch.Generator().manual_seed(1))
    assert x.shape == (20_000, 2) and x.dtype == torch.float32
    assert float(x.std()) == pytest.approx(float(p.sigma(p.t_max)), rel=0.02)
    y = p.prior((20_000, 2), generator=torch.Generator().manual_seed(1))
    assert torch.equal(x, y)
    assert p.prior((3,), dtype=F64).dtype == F64


# -- objectives -------------------------------------------------------------------------------


@ALL
@pytest.mark.parametrize("head", ["eps", "v", "x0"])
def test_to_x0_inverts_target(name: str, head: str) -> None:
    p = PROCS[name]
    obj = Objective(head=head)
    g = torch.Generator().manual_seed(0)
    t = _interior(p, 64)  # the eps head cannot identify x0 where alpha = 0 (flow at t = 1)
    x0 = torch.randn(64, 5, generator=g, dtype=F64)
    eps = torch.randn(64, 5, generator=g, dtype=F64)
    x_t = p.q_sample(x0, t, eps)
    target = obj.target(x0, eps, t, p)
    torch.testing.assert_close(obj.to_x0(target, x_t, t, p), x0, rtol=1e-7, atol=1e-7)
    assert torch.equal(obj.loss(target, x0, eps, t, p), torch.zeros(64, dtype=F64))
    # float32 round trip stays accurate too
    x0f, epsf, tf = x0.float(), eps.float(), t.float()
    xtf = p.q_sample(x0f, tf, epsf)
    err = (obj.to_x0(obj.target(x0f, epsf, tf, p), xtf, tf, p) - x0f).abs().max()
    assert err < (5e-3 if head == "eps" else 1e-4)


def test_v_targets() -> None:
    x0, eps, t = torch.tensor([[2.0]]), torch.tensor([[3.0]]), torch.tensor([0.3])
    vp = PROCS["vp-cosine"]
    a, s = float(vp.alpha(0.3)), float(vp.sigma(0.3))
    assert float(Objective("v").target(x0, eps, t, vp)) == pytest.approx(a * 3 - s * 2, rel=1e-6)
    # flow: the velocity eps - x0
    assert float(Objective("v").target(x0, eps, t, PROCS["flow"])) == pytest.approx(1.0)


@pytest.mark.parametrize("head", ["eps", "v", "x0"])
def test_to_x0_is_finite_at_the_ends(head: str) -> None:
    obj = Objective(head=head)
    for p in PROCS.values():
        t = torch.tensor([0.0, 1e-7, p.t_max, 1.0])
        x = torch.randn(4, 3)
        out = obj.to_x0(torch.randn(4, 3), x, t, p)
        assert torch.isfinite(out).all(), (p.name, head)


def test_loss_and_sample_t() -> None:
    obj = Objective("x0")
    p = PROCS["vp-cosine"]
    x0, eps = torch.zeros(8, 2, 3), torch.zeros(8, 2, 3)
    loss = obj.loss(torch.ones(8, 2, 3), x0, eps, torch.rand(8), p)
    assert loss.shape == (8,) and torch.equal(loss, torch.ones(8))
    t = obj.sample_t(10_000, torch.Generator().manual_seed(0))
    assert t.shape == (10_000,) and t.dtype == torch.float32
    assert float(t.min()) >= 1e-3 and float(t.max()) <= 1.0 and abs(float(t.mean()) - 0.5) < 0.01
    assert torch.equal(t, obj.sample_t(10_000, torch.Generator().manual_seed(0)))


def test_objective_config() -> None:
    assert ObjectiveConfig().build() == Objective("eps")
    assert ObjectiveConfig(head="v", t_eps=0.01).build() == Objective("v", t_eps=0.01)
    with pytest.raises(ValidationError):
        ObjectiveConfig(head="score")
    with pytest.raises(ValueError):
        Objective("score")  # type: ignore[arg-type]


# -- time grid --------------------------------------------------------------------------------


@ALL
@pytest.mark.parametrize("spacing", ["uniform", "logsnr"])
@pytest.mark.parametrize("steps", [1, 2, 8, 50, 1000])
def test_timesteps_convention(name: str, spacing: str, steps: int) -> None:
    p = PROCS[name]
    ts = timesteps(p, steps, spacing)
    assert ts.dtype == F64 and ts.shape == (steps + 1,)
    assert float(ts[0]) == p.t_max and float(ts[-1]) == 0.0
    assert (ts[1:] < ts[:-1]).all()
    if steps >= 2:
        assert float(ts[-2]) == 1e-3


@ALL
def test_logsnr_spacing_is_uniform_in_lambda(name: str) -> None:
    p = PROCS[name]
    lam = p.log_snr(timesteps(p, 20, "logsnr")[1:-1])  # first point is pinned to t_max
    steps = lam[1:] - lam[:-1]
    torch.testing.assert_close(steps, steps.mean().expand_as(steps), rtol=1e-6, atol=1e-9)
    uni = timesteps(p, 20, "uniform")
    torch.testing.assert_close(uni[1:-1] - uni[:-2], (uni[1] - uni[0]).expand(19), rtol=1e-9, atol=1e-12)


def test_timesteps_rejects_bad_arguments() -> None:
    p = PROCS["vp-cosine"]
    with pytest.raises(ValueError):
        timesteps(p, 0)
    with pytest.raises(ValueError):
        timesteps(p, 10, "karras")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        timesteps(p, 10, t_min=1.5)
