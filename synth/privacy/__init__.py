"""Differential privacy, accounted end to end: Opacus DP-SGD for training, a declared schema or
Laplace-noised histograms for the codec, and one accountant for the total epsilon.

    config.PrivacyConfig   the `privacy:` block of a run config
    accounting             the budget plan (noise multiplier, sample rate, steps), refusal of
                           configs that would exceed it, epsilon from Opacus' accountant
    preprocess             codec statistics without reading forbidden statistics
    training               Opacus PrivacyEngine (+ DPDDP over gloo on Ray Train workers)

See docs/privacy.md for the guarantees and their assumptions.
"""
from synth.privacy.accounting import PrivacyPlan, plan_privacy
from synth.privacy.config import PrivacyConfig

__all__ = ["PrivacyConfig", "PrivacyPlan", "plan_privacy"]
