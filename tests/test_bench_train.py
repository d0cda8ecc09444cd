"""``stages.bench train`` times a real scoring pass (the detector's cached pass over the windows it
calibrated on made FuseGuard's figure ~500k windows/s)."""
from __future__ import annotations

import argparse

from stages import bench
from stages.nets.fuseguard import FuseGuard


def test_bench_train_scores_with_a_forward_pass(monkeypatch):
    passes: list[int] = []
    real = FuseGuard._inference_passes

    def counted(self, ws):
        passes.append(len(ws))
        yield from real(self, ws)

    monkeypatch.setattr(FuseGuard, "_inference_passes", counted)
    real_score, in_score = FuseGuard.score, []

    def score(self, ws):
        before = len(passes)
        out = real_score(self, ws)
        in_score.append(passes[before:])
        return out

    monkeypatch.setattr(FuseGuard, "score", score)
    args = argparse.Namespace(detector="fuseguard", profile="default", windows=12, stride=4, channels=4, edges=3,
                              log_columns=5, epochs=1, batch_size=8)
    out = bench.bench_train(args)
    run = out["runs"][0]
    assert run["train_windows_per_s"] > 0 and run["validation_calibration_s"] is not None
    # the timed score makes its own pass over every window, not the one calibration left behind
    assert in_score == [[out["windows"]]], (in_score, passes)
