"""Equal protocols: one few-shot data subset for every detector, labels only where the protocol allows."""
from __future__ import annotations

import numpy as np
import pytest

from stages import train as train_stage
from stages.core.errors import InputError
from stages.core.io import dumps_json
from stages.core.params import build
from stages.core.protocol import ProtocolParams, visible_labels
from stages.core.windowset import FeatureSchema

T, WINDOW, STRIDE, DS = 600, 8, 2, "tiny"
RANGES = {"train": [0, 300], "fewshot": [0, 300], "val": [308, 420], "test": [428, 600]}
BLOCKS = [[0, 30], [135, 165], [270, 300]]


def write_windows(root):
    rng = np.random.default_rng(1)
    labels = np.zeros(T, np.int8)
    for s in (5, 20, 140, 150, 275, 290):  # six short faults, all inside few-shot blocks
        labels[s:s + 3] = 1
    schema = FeatureSchema(dataset=DS, step_s=10.0, metric_channels=["a/cpu", "b/cpu"], metric_entities=["a", "b"],
                           edges=[], edge_features=["latency", "count", "error_rate"], services=["a", "b"],
                           log_columns=[], templates=[])
    wdir = root / "data" / "windows" / DS
    wdir.mkdir(parents=True)
    np.savez(wdir / "grid.npz", ts=np.arange(T, dtype=np.int64) * 10_000_000,
             metric=rng.normal(size=(T, 2)).astype(np.float32), trace=np.zeros((T, 0, 3), np.float32),
             log=np.zeros((T, 0), np.float32), labels=labels, kinds=np.where(labels > 0, "cpu_hog", ""),
             log_events=np.zeros((0, 3), np.int64))
    (wdir / "schema.json").write_text(dumps_json(schema.to_json()))
    (wdir / "splits.json").write_text(dumps_json({"ranges": RANGES, "fewshot_blocks": BLOCKS, "window": WINDOW,
                                                  "stride": STRIDE}))
    return wdir


def test_visible_labels_by_protocol():
    labels = np.array([0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0], np.int8)
    none, k0 = visible_labels(labels, "unsupervised", 5)
    assert k0 == 0 and not none.any()
    two, k2 = visible_labels(labels, "fewshot_labels", 2)
    assert k2 == 2 and two.tolist() == [0, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0]  # the third fault reads 0: unlabelled
    assert visible_labels(labels, "fewshot_labels", 9)[1] == 3


def test_label_supervised_detectors_refuse_the_unsupervised_protocol():
    p = build(ProtocolParams, {"by_detector": {"metalog": "unsupervised", "xlstm_logad": "fewshot_labels"}},
              where="protocol")
    with pytest.raises(InputError, match="protocol.by_detector.metalog"):
        p.protocol_for("metalog")
    assert p.protocol_for("xlstm_logad") == "fewshot_labels" and p.protocol_for("pca") == "unsupervised"
    with pytest.raises(InputError, match="protocol.by_detector.pca"):
        build(ProtocolParams, {"by_detector": {"pca": "supervised"}}, where="protocol")


def test_every_detector_of_a_protocol_learns_from_the_same_windows(tmp_path):
    write_windows(tmp_path)
    raw = {"seed": 0, "pipeline": {"datasets": [DS]},
           "datasets": {DS: {"format": "eadro", "raw": f"data/raw/{DS}"}}, "protocol": {"labelled_events": 2}}
    infos = {det: train_stage.run(DS, det, raw=raw, windows_root=tmp_path / "data/windows",
                                  models_root=tmp_path / "models", metrics_root=tmp_path / "metrics",
                                  word_pca_root=tmp_path / "no_pca")
             for det in ("random", "pca", "iforest")}
    digests = {i["windows_digest"] for i in infos.values()}
    assert len(digests) == 1
    for info in infos.values():
        assert info["protocol"] == "unsupervised" and info["labelled_events"] == 0
        assert info["data_share"] == pytest.approx(90 / 300)
        # windows never straddle two blocks: 3 blocks × ((30 - 8) // 2 + 1) windows
        assert info["n_train_windows"] == 3 * 12
