"""Names of the feature units (metric channels, edge features, log columns) in the grid's column order.

One definition, so a detector's per-unit explanation and the scorer's feature deviations name a
unit the same way (the alarm table and the report match them by name).
"""
from __future__ import annotations

import numpy as np

from stages.core.windowset import FeatureSchema


def unit_names(schema: FeatureSchema) -> tuple[list[str], np.ndarray]:
    """(names, modality of each) for the metric, then trace (edge-major), then log columns."""
    metric = list(schema.metric_channels)
    trace = [f"{a}->{b}/{f}" for a, b in schema.edges for f in schema.edge_features]
    log = [f"{s}/#{k} {schema.templates[k][:60]}" if k < len(schema.templates) else f"{s}/#{k}"
           for s, k in schema.log_columns]  # the template id keeps names unique
    modality = np.array(["metric"] * len(metric) + ["trace"] * len(trace) + ["log"] * len(log))
    return metric + trace + log, modality
