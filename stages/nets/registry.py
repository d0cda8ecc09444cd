"""Detector registry: name in params.yaml → detector class (imported lazily)."""
from __future__ import annotations

import importlib

from stages.core.errors import InputError

DETECTORS = {
    "random": "stages.nets.baselines:RandomDetector",
    "iforest": "stages.nets.baselines:IsolationForestDetector",
    "pca": "stages.nets.baselines:PCADetector",
    "fuseguard": "stages.nets.fuseguard:FuseGuard",
    "kad_disformer": "stages.nets.kad_disformer:KADDisformer",
    "interfusion": "stages.nets.interfusion:InterFusion",
    "metalog": "stages.nets.metalog:MetaLog",
    "xlstm_logad": "stages.nets.xlstm_logad:XLSTMLogAD",
}


def detector_class(name: str):
    if name not in DETECTORS:
        raise InputError("params.yaml", "pipeline.detectors", f"one of {sorted(DETECTORS)}", name)
    module, cls = DETECTORS[name].split(":")
    return getattr(importlib.import_module(module), cls)
