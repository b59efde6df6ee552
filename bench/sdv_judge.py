"""SDMetrics (the outside judge) with every column pair counted.

QualityReport's defaults skip pairs whose real correlation/association is weak; the targets in
this project count all pairs, so both thresholds are set to 0.
"""
from __future__ import annotations

import pandas as pd

SDV_TYPES = {"continuous": "numerical", "integer": "numerical", "categorical": "categorical",
             "boolean": "boolean", "datetime": "datetime"}


def sdv_metadata(kinds: dict[str, str]) -> dict:
    return {"columns": {c: {"sdtype": SDV_TYPES[k]} for c, k in kinds.items()}}


def quality_report(real: pd.DataFrame, synthetic: pd.DataFrame, kinds: dict[str, str]) -> dict:
    from sdmetrics.reports.single_table import QualityReport

    report = QualityReport()
    report.real_correlation_threshold = 0
    report.real_association_threshold = 0
    for prop in report._properties.values():  # the report hands its thresholds to this property
        if hasattr(prop, "real_correlation_threshold"):
            prop.real_correlation_threshold = 0
            prop.real_association_threshold = 0
    cols = list(kinds)
    report.generate(real[cols], synthetic[cols], sdv_metadata(kinds), verbose=False)
    props = report.get_properties().set_index("Property")["Score"].to_dict()
    return {"overall": float(report.get_score()), "column_shapes": float(props["Column Shapes"]),
            "column_pair_trends": float(props["Column Pair Trends"])}
