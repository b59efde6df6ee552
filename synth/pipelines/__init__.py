"""Pipelines over Ray Data: bulk synthesis (synthesize), the nightly job (nightly), blending tables
(blend)."""
