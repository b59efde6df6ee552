"""Synth's own evaluation metrics (fidelity, detection, ML efficacy, privacy).

SDMetrics is only an outside judge in the benchmarks; nothing here imports it, but the
fidelity metrics follow SDMetrics' definitions so the numbers are comparable.
"""

from .detection import c2st_auc
from .efficacy import ml_efficacy
from .fidelity import column_shapes, fit_report, pair_trends
from .privacy import distance_to_closest_record, membership_inference
from .suite import evaluate, summary_table, to_jsonable

__all__ = [
    "c2st_auc",
    "column_shapes",
    "distance_to_closest_record",
    "evaluate",
    "fit_report",
    "membership_inference",
    "ml_efficacy",
    "pair_trends",
    "summary_table",
    "to_jsonable",
]
