"""xLSTM log detector: the container probability by hand, detection on a log-burst fault, persistence."""
from __future__ import annotations

import numpy as np
import pytest

from stages.core.errors import InputError
from stages.core.params import build
from stages.core.windowset import WindowSet
from stages.nets.base import TrainConfig
from stages.nets.xlstm_logad import XLSTMLogAD, XLSTMLogADConfig, container_probability
from test_metalog import TARGET_TEMPLATES, auc_pr, make_log_windowset

FAST = TrainConfig(epochs=2, batch_size=32, lr=3e-3, patience=2, max_train_windows=128)


def test_container_probability_on_hand_made_neighbours():
    keys = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    labels = np.array([0, 1, 1, 1])
    query = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    p = container_probability(query, keys, labels, k=2)
    # q0: neighbours key0 (cos 1, normal) and key1 (cos .8, anomalous) → .8 / 1.8
    assert p[0] == pytest.approx(0.8 / 1.8)
    # q1: key2 (1, anomalous) and key1 (.6, anomalous) → 1
    assert p[1] == pytest.approx(1.0)
    # q2: key3 (1, anomalous); the other neighbour has negative cosine and weighs nothing
    assert p[2] == pytest.approx(1.0)
    # leave-out: a container member never votes for itself
    own = container_probability(keys[:2], keys, labels, k=1, query_pos=np.arange(2), key_pos=np.arange(4),
                                exclude_radius=1)
    assert own[0] == pytest.approx(1.0) and own[1] == pytest.approx(0.0)
    # nothing similar at all → 0
    assert container_probability(np.array([[0.0, 1.0]]), keys[[3]], labels[[3]], k=3)[0] == 0.0


def test_xlstm_logad_beats_random_and_round_trips(tmp_path):
    train, val, test = make_log_windowset(TARGET_TEMPLATES, seed=5)
    cfg = XLSTMLogADConfig(embed_dim=16, num_blocks=2, slstm_at=[1], num_heads=4, max_len=32, train=FAST)
    det = XLSTMLogAD(cfg, train.schema, seed=0)
    history = det.fit(train, val)
    assert len(history["train_loss"]) >= 1 and np.isfinite(history["threshold"]).all()
    assert any("slstm" in k for k in det.state()), "the sLSTM block runs on the CPU (vanilla kernel)"
    scores = det.score(test)
    assert scores.shape == (test.n_steps,)
    assert auc_pr(scores, test.labels) > 2 * test.labels.mean()
    det.save(tmp_path / "x")
    again = XLSTMLogAD.load(tmp_path / "x", test.schema)
    np.testing.assert_allclose(again.score(test), scores, rtol=1e-5, atol=1e-6)
    assert again.threshold == pytest.approx(det.threshold)


def test_xlstm_logad_scores_with_the_stage_wide_thread_count(thread_counts_of_scoring):
    """evaluate's score_threads reaches the xLSTM scoring pass (it used to run on cpu_threads always)."""
    import stages.nets.xlstm_logad as xlstm_module

    train, val, test = make_log_windowset(TARGET_TEMPLATES, seed=5)
    cfg = XLSTMLogADConfig(embed_dim=16, num_blocks=1, slstm_at=[], num_heads=4, max_len=16, oof_folds=0,
                           cpu_threads=2, train=FAST)
    det = XLSTMLogAD(cfg, train.schema, seed=0)
    det.fit(train, val)
    seen, one, two = thread_counts_of_scoring(xlstm_module, det, test)
    assert seen == [1, 2]
    np.testing.assert_allclose(one, two, rtol=1e-5, atol=1e-6)


def test_xlstm_logad_bad_config_and_dataset_without_logs():
    with pytest.raises(InputError, match="embed_dim"):
        build(XLSTMLogADConfig, {"embed_dim": 10, "num_heads": 4}, where="xlstm_logad")
    with pytest.raises(InputError, match="slstm_at"):
        build(XLSTMLogADConfig, {"slstm_at": [5]}, where="xlstm_logad")
    ws = WindowSet.from_arrays(np.zeros((40, 1)), window=4, dataset="no_logs_here")
    with pytest.raises(InputError, match="no_logs_here"):
        XLSTMLogAD(XLSTMLogADConfig(train=FAST), ws.schema).fit(ws, ws)


def test_weighting_sees_out_of_fold_training_errors(tmp_path, one_torch_thread):
    """In-sample errors of memorised training blocks are far below a new block's: the z-score
    statistics (and the weighting fitted on them) must come from held-out folds."""
    from stages.features.log_windows import chronological_split, load_loghub
    from test_loghub import write_bgl

    csv, _ = write_bgl(tmp_path, n_lines=400, bursts=((60, 100), (200, 240), (330, 360)))
    train, val, _ = chronological_split(load_loghub(str(csv), window=10), 0.6, 0.2)
    epochs = TrainConfig(epochs=4, batch_size=8, lr=1e-2, patience=4, max_train_windows=0)
    fitted = {}
    for folds in (0, 3):
        cfg = XLSTMLogADConfig(embed_dim=16, num_heads=4, max_len=16, oof_folds=folds, train=epochs)
        det = XLSTMLogAD(cfg, train_schema(train), seed=0)
        det.fit_sequences(train, val)
        fitted[folds] = det
    assert fitted[3]._folds(len(train)).tolist() == [0] * 8 + [1] * 8 + [2] * 8
    assert fitted[3].err_mu > 1.2 * fitted[0].err_mu  # held-out errors are larger than memorised ones
    assert np.isfinite(fitted[3].threshold)


def train_schema(seqs):
    from stages.replays.log_common import loghub_schema

    return loghub_schema(seqs, "bgl_tiny")
