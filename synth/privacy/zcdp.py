"""Zero-concentrated differential privacy (zCDP): the accountant of the marginal mechanism.

Every part of the marginal family's mechanism is a rho-zCDP mechanism and rho adds up
(composition is exact in zCDP). The total rho converts to (epsilon, delta)-DP with the bound of
Canonne, Kamath and Steinke (2020, Prop. 12 / AIM's `cdp_delta`), tighter than the classic
epsilon = rho + 2 sqrt(rho log(1/delta)). The pieces:

    Gaussian mechanism, L2 sensitivity D, noise std sigma:   rho = D^2 / (2 sigma^2)
    exponential mechanism, epsilon0-DP (bounded range):     rho = epsilon0^2 / 8

One row changes a count vector (a marginal) by 1 in one cell (add/remove adjacency): L2 and L1
sensitivity 1.
"""
from __future__ import annotations

import math

ITERS = 200  # bisection steps: far past float precision


def cdp_delta(rho: float, eps: float) -> float:
    """The smallest delta for which rho-zCDP implies (eps, delta)-DP (CKS20, optimised over alpha)."""
    if rho <= 0:
        return 0.0
    amin, amax = 1.01, (eps + 1) / (2 * rho) + 2
    alpha = amin
    for _ in range(ITERS):
        alpha = (amin + amax) / 2
        derivative = (2 * alpha - 1) * rho - eps + math.log1p(-1.0 / alpha)
        if derivative < 0:
            amin = alpha
        else:
            amax = alpha
    delta = math.exp((alpha - 1) * (alpha * rho - eps) + alpha * math.log1p(-1 / alpha)) / (alpha - 1.0)
    return min(delta, 1.0)


def cdp_epsilon(rho: float, delta: float) -> float:
    """The epsilon at `delta` that rho-zCDP implies."""
    if rho <= 0:
        return 0.0
    return _bisect(lambda eps: cdp_delta(rho, eps) <= delta, 0.0, rho + 2 * math.sqrt(rho * math.log(1 / delta)),
                   return_above=True)


def cdp_rho(eps: float, delta: float) -> float:
    """The largest rho whose (eps, delta) conversion stays within the budget."""
    return _bisect(lambda rho: cdp_delta(rho, eps) > delta, 0.0, eps + 1, return_above=False)


def _bisect(ok_above, lo: float, hi: float, return_above: bool) -> float:
    """The boundary where `ok_above(x)` turns true (monotone in x), from above (hi) or from below (lo)."""
    for _ in range(ITERS):
        mid = (lo + hi) / 2
        if ok_above(mid):
            hi = mid
        else:
            lo = mid
    return hi if return_above else lo


def gaussian_rho(sigma: float, sensitivity: float = 1.0) -> float:
    return sensitivity ** 2 / (2 * sigma ** 2)


def gaussian_sigma(rho: float, sensitivity: float = 1.0) -> float:
    return sensitivity * math.sqrt(1 / (2 * rho))


def exponential_rho(epsilon: float) -> float:
    return epsilon ** 2 / 8


def exponential_epsilon(rho: float) -> float:
    return math.sqrt(8 * rho)
