"""Torch detectors' scores move with the thread count, so `auto` keeps their cpu_threads; an explicit
stage-wide count reaches every one of them (MetaLog and the xLSTM detector used to ignore it)."""
from __future__ import annotations

import pytest

from stages.core.device import stage_scoring_threads
from stages.nets.registry import detector_class

TORCH_DETECTORS = ["fuseguard", "kad_disformer", "interfusion", "metalog", "xlstm_logad"]


@pytest.mark.parametrize("name", TORCH_DETECTORS)
def test_auto_keeps_every_torch_detectors_own_threads(name, monkeypatch):
    monkeypatch.delenv("AIOPS_SCORE_THREADS", raising=False)
    cls = detector_class(name)
    assert cls.scores_depend_on_threads
    n, why = stage_scoring_threads("auto", cls.scores_depend_on_threads)
    assert n is None and "cpu_threads" in why
    assert stage_scoring_threads(1, cls.scores_depend_on_threads)[0] == 1  # a number is obeyed


def test_floors_may_take_what_auto_picks():
    assert not detector_class("pca").scores_depend_on_threads
