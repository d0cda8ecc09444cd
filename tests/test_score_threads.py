"""How many threads a scoring pass gets (evaluate.score_threads). `auto` may pick a different count from
run to run, so it applies only to detectors whose scores are the same bits at 1 and 2 threads; every
torch detector's scores move with the count, so each keeps its configured cpu_threads."""
from __future__ import annotations

import pytest
import torch

from stages.core import device
from stages.core.errors import InputError
from stages.evaluate import EvaluateParams
from stages.core.params import build


def test_a_number_is_taken_as_given(monkeypatch):
    monkeypatch.setenv(device.SCORE_THREADS_ENV, "7")
    assert device.resolve_score_threads(3) == (3, "evaluate.score_threads")


def test_auto_reads_the_environment_first(monkeypatch):
    monkeypatch.setenv(device.SCORE_THREADS_ENV, "2")
    assert device.resolve_score_threads("auto", cwd="/x/.dvc/tmp/exps/tmp123") == (2, "$AIOPS_SCORE_THREADS")
    monkeypatch.setenv(device.SCORE_THREADS_ENV, "two")
    with pytest.raises(InputError, match="AIOPS_SCORE_THREADS"):
        device.resolve_score_threads("auto")


def test_auto_keeps_to_one_core_in_a_dvc_queue_workspace(monkeypatch):
    monkeypatch.delenv(device.SCORE_THREADS_ENV, raising=False)
    assert device.resolve_score_threads("auto", cwd="/repo/.dvc/tmp/exps/tmpab12cd") == (1, "dvc queue workspace")
    assert device.in_dvc_queue("/repo/.dvc/tmp/exps/tmpab12cd/sub")
    assert not device.in_dvc_queue("/repo")
    assert not device.in_dvc_queue("/repo/.dvc/tmp")


def test_auto_takes_every_available_core_otherwise(monkeypatch):
    monkeypatch.delenv(device.SCORE_THREADS_ENV, raising=False)
    monkeypatch.setattr(device, "busy_elsewhere", lambda: 0)
    n, why = device.resolve_score_threads("auto", cwd="/repo")
    assert n == device.available_cores() >= 1 and why == "all available cores"


def test_auto_leaves_the_cores_other_running_work_holds(monkeypatch):
    monkeypatch.delenv(device.SCORE_THREADS_ENV, raising=False)
    monkeypatch.setattr(device, "available_cores", lambda: 4)
    monkeypatch.setattr(device, "busy_elsewhere", lambda: 1)
    assert device.resolve_score_threads("auto", cwd="/repo") == (3, "4 cores, 1 busy with other work")
    monkeypatch.setattr(device, "busy_elsewhere", lambda: 9)
    assert device.resolve_score_threads("auto", cwd="/repo")[0] == 1


def test_busy_elsewhere_reads_the_kernels_runnable_count(tmp_path):
    f = tmp_path / "loadavg"
    f.write_text("2.03 1.68 1.84 3/105 13783\n")  # 3 runnable, this process among them
    assert device.busy_elsewhere(samples=3, interval_s=0, loadavg=str(f)) == 2
    f.write_text("0.10 0.10 0.10 1/99 1\n")
    assert device.busy_elsewhere(samples=1, interval_s=0, loadavg=str(f)) == 0
    assert device.busy_elsewhere(loadavg=str(tmp_path / "missing")) == 0


def test_the_stage_wide_choice_overrides_each_detector_and_can_be_cleared():
    try:
        device.set_scoring_threads(2)
        assert device.scoring_threads(1) == 2
        with device.limited_threads(device.scoring_threads(1), torch.device("cpu")):
            assert torch.get_num_threads() == 2
    finally:
        device.set_scoring_threads(None)
    assert device.scoring_threads(1) == 1


def test_params_accept_auto_or_a_positive_count():
    assert build(EvaluateParams, {}).score_threads == "auto"
    assert build(EvaluateParams, {"score_threads": 2}).score_threads == 2
    for bad in (0, "many", 1.5, True):
        with pytest.raises(InputError, match="evaluate.score_threads"):
            build(EvaluateParams, {"score_threads": bad}, where="evaluate")


def test_auto_keeps_cpu_threads_for_a_detector_whose_scores_depend_on_them(monkeypatch):
    monkeypatch.delenv(device.SCORE_THREADS_ENV, raising=False)
    n, why = device.stage_scoring_threads("auto", True, cwd="/repo/.dvc/tmp/exps/tmpab12cd")
    assert n is None and "cpu_threads" in why
    assert device.stage_scoring_threads(2, True) == (2, "evaluate.score_threads")  # a number is always taken
    assert device.stage_scoring_threads("auto", False, cwd="/repo/.dvc/tmp/exps/tmpab12cd") == (1, "dvc queue workspace")
    monkeypatch.setenv(device.SCORE_THREADS_ENV, "3")  # an explicit count, as a number in params.yaml
    assert device.stage_scoring_threads("auto", True) == (3, "$AIOPS_SCORE_THREADS")


def test_which_detectors_declare_thread_dependent_scores(monkeypatch):
    """Measured in fresh processes on the default models at 1 vs 2 threads (2026-12-04): every torch
    detector's scores moved (FuseGuard: 4 of 12,036 synth_tt test steps, up to 1e-6 relative), so
    `auto` keeps each one's cpu_threads; a number is obeyed. The floors' scores do not use torch threads."""
    from stages.nets.registry import DETECTORS, detector_class

    monkeypatch.delenv(device.SCORE_THREADS_ENV, raising=False)
    dependent = {name for name in DETECTORS if detector_class(name).scores_depend_on_threads}
    assert dependent == {"fuseguard", "kad_disformer", "interfusion", "metalog", "xlstm_logad"}
    n, why = device.stage_scoring_threads("auto", True)
    assert n is None and "cpu_threads" in why
    assert device.stage_scoring_threads(1, True)[0] == 1
