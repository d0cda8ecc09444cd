"""Crash-atomic outputs (issue 10): a stage publishes its complete new output set or leaves the old one.

A kill is injected at every publishing step of a multi-output stage (``logs@ds``: three Parquet
files and the ``drain3/`` folder): in-process as an exception, and for real with ``os._exit`` in a
subprocess. After the next run's recovery the output set is byte-for-byte the complete old or the
complete new one — so DVC's hashes (md5 of each file) match one of the two.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stages import logs as logs_stage
from stages.core import io
from stages.core.io import atomic_dir, recover_staging, staged_set, staging_root, write_text
from stages.features.publish import staged_outputs

REPO = Path(__file__).resolve().parents[1]
T0 = 1_650_000_000
RAW = {"datasets": {"toy": {"format": "eadro", "raw": "raw/toy", "step_s": 10}}}
NAMES = logs_stage.OUTPUTS
STEPS = ["commit"] + [f"{kind}:{n}" for n in NAMES for kind in ("move-old", "move-new")] + ["done"]


class Killed(BaseException):
    """Stands for SIGKILL in-process: not an Exception, so no handler in the stage catches it."""


def digests(folder: Path, names: list[str]) -> dict[str, str]:
    """md5 of every file of the output set (what DVC hashes), keyed by relative path."""
    out = {}
    for name in names:
        p = folder / name
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p] if p.exists() else []
        for q in files:
            out[str(q.relative_to(folder))] = hashlib.md5(q.read_bytes()).hexdigest()
    return out


def write_logs(root: Path, lines: int) -> None:
    chunk = root / "raw" / "toy" / "TT.aDb"
    chunk.mkdir(parents=True, exist_ok=True)
    msgs = [f"2022-04-15 05:{i // 60:02d}:{i % 60:02d}.000  INFO 1 --- [main] svc.Api : request {i} served in {i % 7} ms"
            for i in range(lines)]
    (chunk / "logs.json").write_text(json.dumps({"ts-a": msgs, "ts-b": msgs[::3]}))


@pytest.fixture
def repo(tmp_path: Path, monkeypatch) -> Path:
    """A project root (dvc.yaml marks it) holding a toy Eadro dump with logs only."""
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    write_logs(tmp_path, 300)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def old_and_new(repo: Path) -> tuple[dict, dict]:
    """Digests of the outputs of a first run (old) and of a run on changed input (new, built and undone)."""
    out = repo / "data/features/toy"
    logs_stage.run("toy", RAW)
    old = digests(out, NAMES)
    write_logs(repo, 420)
    saved = {n: (out / n) for n in NAMES}
    backup = repo / "backup"
    backup.mkdir()
    for n, p in saved.items():
        os.replace(p, backup / n)
    logs_stage.run("toy", RAW)
    new = digests(out, NAMES)
    for n in NAMES:
        io._remove(out / n)
        os.replace(backup / n, out / n)
    assert digests(out, NAMES) == old and new != old
    return old, new


def test_staging_lives_at_the_repo_root_outside_outputs(repo: Path):
    assert staging_root(repo / "data/features/toy") == repo / ".staging"
    assert staging_root(Path("/nonexistent-root-xyz/a")) == Path("/nonexistent-root-xyz/a/.staging")
    for line in (REPO / ".gitignore").read_text().splitlines() + (REPO / ".dvcignore").read_text().splitlines():
        if line.strip() == ".staging/":
            break
    else:
        pytest.fail(".staging/ is not ignored by git and DVC")


@pytest.mark.parametrize("step", STEPS)
def test_kill_at_each_publishing_step_leaves_old_or_new(repo: Path, monkeypatch, step: str):
    out = repo / "data/features/toy"
    old, new = old_and_new(repo)

    def hook(name: str) -> None:
        if name == step:
            raise Killed(name)

    monkeypatch.setattr(io, "before_step", hook)
    with pytest.raises(Killed):
        logs_stage.run("toy", RAW)
    monkeypatch.setattr(io, "before_step", None)
    done = recover_staging(repo / ".staging")  # what the next run does first
    after = digests(out, NAMES)
    assert after == (old if step == "commit" else new), (step, done)
    assert not (repo / ".staging").exists()  # stale entries cleaned, empty root removed


@pytest.mark.parametrize("step", ["commit", f"move-new:{NAMES[1]}", f"move-old:{NAMES[3]}", "done"])
def test_real_kill_in_a_subprocess_then_next_run_recovers(repo: Path, step: str):
    """os._exit at a publishing step (no cleanup runs; the kernel drops the lock), then the next
    stage run rolls the publish forward (or back) before doing its own work."""
    out = repo / "data/features/toy"
    old, new = old_and_new(repo)
    code = ("import os, sys; sys.path.insert(0, sys.argv[1]); import stages.core.io as io\n"
            "io.before_step = lambda s: os._exit(9) if s == sys.argv[2] else None\n"
            "from stages import logs\n"
            f"logs.run('toy', {RAW!r})\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "POLARS_MAX_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code, str(REPO), step], cwd=repo, env=env, capture_output=True)
    assert proc.returncode == 9, proc.stderr.decode()[-2000:]
    assert [p for p in (repo / ".staging").iterdir()], "the killed run left its staging entry"
    write_text("x", repo / "data/other.txt")  # any later atomic write recovers the interrupted publish first
    assert digests(out, NAMES) == (old if step == "commit" else new)
    assert not (repo / ".staging").exists()


def test_bad_input_leaves_previous_outputs_untouched(repo: Path):
    out = repo / "data/features/toy"
    logs_stage.run("toy", RAW)
    before = digests(out, NAMES)
    (repo / "raw/toy/TT.aDb/logs.json").write_text('{"ts-a": ["2022-04-15 05:00:00.000  INFO 1 --- [m] a : x", ')
    with pytest.raises(Exception, match="expected valid JSON"):
        logs_stage.run("toy", RAW)
    assert digests(out, NAMES) == before
    assert not (repo / ".staging").exists()


def test_stale_staging_of_a_dead_process_is_removed_live_one_kept(repo: Path):
    root = repo / ".staging"
    stale = root / "x-1-dead"  # an interrupted build: its owner is gone, so its lock is free
    (stale / "new").mkdir(parents=True)
    (stale / ".lock").write_text("")
    (stale / "new" / "half.parquet").write_bytes(b"partial")
    with staged_set(repo / "out", ["a.txt"]) as live:
        (live / "a.txt").write_text("1")
        assert not stale.exists()  # cleaned when this run started
        # while this entry is alive (locked), recovery from another run leaves it alone
        assert recover_staging(root) == [] and live.exists()
    assert (repo / "out/a.txt").read_text() == "1" and not root.exists()


def test_incomplete_set_or_failure_publishes_nothing(repo: Path):
    (repo / "out").mkdir()
    (repo / "out/a.txt").write_text("old a")
    with pytest.raises(RuntimeError, match="did not produce"):
        with staged_outputs(repo / "out", ["a.txt", "b.txt"]) as tmp:
            (tmp / "a.txt").write_text("new a")
    with pytest.raises(ValueError):
        with staged_outputs(repo / "out", ["a.txt"]) as tmp:
            (tmp / "a.txt").write_text("new a")
            raise ValueError("bad input")
    assert sorted(p.name for p in (repo / "out").iterdir()) == ["a.txt"]
    assert (repo / "out/a.txt").read_text() == "old a" and not (repo / ".staging").exists()


def test_directory_output_is_replaced_whole_and_survives_a_kill(repo: Path, monkeypatch):
    target = repo / "data/windows/toy"
    with atomic_dir(target) as tmp:
        (tmp / "grid.npz").write_text("old")
    # nothing is written beside the tracked folder (DVC would hash a sibling temp folder)
    assert sorted(p.name for p in target.parent.iterdir()) == ["toy"]

    def hook(name: str) -> None:
        if name == "move-new:toy":
            raise Killed(name)

    monkeypatch.setattr(io, "before_step", hook)
    with pytest.raises(Killed):
        with atomic_dir(target) as tmp:
            (tmp / "grid.npz").write_text("new")
            (tmp / "schema.json").write_text("{}")
    monkeypatch.setattr(io, "before_step", None)
    assert not target.exists()  # between the two renames: the journal says what to finish
    recover_staging(repo / ".staging")
    assert sorted(p.name for p in target.iterdir()) == ["grid.npz", "schema.json"]
    assert (target / "grid.npz").read_text() == "new"


@pytest.mark.parametrize("step", ["commit", "move-old:metrics/data/toy.json", "move-new:data/windows/toy", "done"])
def test_outputs_in_several_folders_publish_as_one_set(repo: Path, monkeypatch, step: str):
    """A stage with a folder output and a metrics file elsewhere (windows@ds) publishes both at once."""
    names = ["data/windows/toy", "metrics/data/toy.json"]

    def publish(tag: str) -> None:
        with staged_set(".", names) as tmp:
            (tmp / names[0]).mkdir(parents=True)
            (tmp / names[0] / "grid.npz").write_text(tag)
            (tmp / names[1]).parent.mkdir(parents=True)
            (tmp / names[1]).write_text(tag)

    publish("old")
    old = digests(repo, names)

    def hook(name: str) -> None:
        if name == step:
            raise Killed(name)

    monkeypatch.setattr(io, "before_step", hook)
    with pytest.raises(Killed):
        publish("new")
    monkeypatch.setattr(io, "before_step", None)
    recover_staging(repo / ".staging")
    after = digests(repo, names)
    assert after == old if step == "commit" else (after != old and set(after) == set(old))
    assert {(repo / n).read_text() if (repo / n).is_file() else (repo / n / "grid.npz").read_text()
            for n in names} == {"old" if step == "commit" else "new"}
