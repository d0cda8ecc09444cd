"""Crash-atomic file output: a stage publishes its complete new output set, or leaves the old one.

How (issue 10):

* Everything is built in a private *staging entry* under one ``.staging/`` folder at the
  repository root (found by its ``dvc.yaml`` / ``.dvc``), i.e. outside every DVC-tracked path
  and ignored by git and DVC. Nothing at the destination is touched while the stage computes,
  so a failure on bad input leaves the previous outputs exactly as they were. Where the
  destination lies on another file system (``data/`` symlinked to a big disk) the entry goes to
  ``<destination folder>/.staging/`` instead, so every publish is a same-device ``rename``.
* Publishing several names (files or folders) is made all-or-nothing by a journal: once the
  whole set exists in the entry, ``journal.json`` is written atomically (the commit point); then
  each old output is moved aside into the entry and the new one renamed into place; finally the
  journal is removed and the entry deleted. A kill *before* the commit leaves the destination
  untouched (the next run deletes the entry: roll back); a kill *after* it leaves a journal that
  the next run rolls forward, idempotently, whatever rename it stopped at. Right after such a
  kill the destination may hold a mix until that next run — but never afterwards, and DVC reruns
  the killed stage anyway because its outputs no longer match ``dvc.lock``.
* Each live entry holds an exclusive ``flock`` on its ``.lock`` file, released by the kernel
  when its process dies (even by SIGKILL). Recovery therefore touches only entries whose owner
  is gone, never a concurrent stage's; it runs before every publish and from
  :func:`recover_staging`.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import polars as pl

log = logging.getLogger(__name__)

STAGING_DIRNAME = ".staging"
_ROOT_MARKERS = ("dvc.yaml", ".dvc")
_JOURNAL = "journal.json"
_LOCK = ".lock"
_NEW, _OLD = "new", "old"
_ORPHAN_AGE_S = 600.0  # a hidden (still being created) entry this old: its creator died
# Test seam: called with the name of every publishing step ("commit", "move-old:<name>",
# "move-new:<name>", "done") just before it runs, so a test can kill the process exactly there.
before_step: Callable[[str], None] | None = None


# ------------------------------------------------------------------ where staging lives


def _repo_root(start: Path) -> Path | None:
    for d in (start, *start.parents):
        if any((d / m).exists() for m in _ROOT_MARKERS):
            return d
    return None


def _existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def staging_root(dest_dir: str | Path) -> Path:
    """The ``.staging`` folder that serves a destination folder (see the module docstring)."""
    dest_dir = Path(dest_dir).absolute()
    root = _repo_root(dest_dir)
    if root is not None and os.stat(root).st_dev == os.stat(_existing(dest_dir)).st_dev:
        return root / STAGING_DIRNAME
    return dest_dir / STAGING_DIRNAME


def _inside_staging(path: Path) -> bool:
    return STAGING_DIRNAME in Path(path).absolute().parts[:-1]


# ------------------------------------------------------------------ removal / rename helpers


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _step(name: str) -> None:
    if before_step is not None:
        before_step(name)


def _write_journal(entry: Path, dest_dir: Path, names: list[str]) -> None:
    """The commit point: written to a temporary name, flushed, then renamed (atomic)."""
    tmp = entry / (_JOURNAL + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({"dest": str(dest_dir.absolute()), "names": names}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, entry / _JOURNAL)


def _roll_forward(entry: Path) -> None:
    """Finish a committed publish; safe to repeat after a kill at any point of itself."""
    journal = json.loads((entry / _JOURNAL).read_text(encoding="utf-8"))
    dest_dir, names = Path(journal["dest"]), list(journal["names"])
    (entry / _OLD).mkdir(exist_ok=True)
    for name in names:
        new, old, dest = entry / _NEW / name, entry / _OLD / name, dest_dir / name
        if not _present(new):
            continue  # already in place
        if _present(dest):
            _step(f"move-old:{name}")
            if _present(old):
                _remove(dest)  # cannot happen through this module; something else wrote it meanwhile
            else:
                old.parent.mkdir(parents=True, exist_ok=True)
                os.replace(dest, old)
        _step(f"move-new:{name}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(new, dest)
    _step("done")
    (entry / _JOURNAL).unlink()


# ------------------------------------------------------------------ staging entries


class _Entry:
    """One staging entry, locked by this process for its whole life."""

    def __init__(self, dest_dir: Path, label: str):
        self.dest_dir = Path(dest_dir)
        self.root = staging_root(self.dest_dir)
        recover_staging(self.root)
        name = f"{label}-{os.getpid()}-{secrets.token_hex(4)}"
        for attempt in range(3):  # a concurrent cleanup may remove an empty .staging in between
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                building = self.root / f".{name}"  # hidden from recovery until it is locked
                building.mkdir()
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        self._lock = open(building / _LOCK, "w")  # noqa: SIM115 - held until close()
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        (building / _NEW).mkdir()
        self.path = self.root / name
        os.replace(building, self.path)

    @property
    def new(self) -> Path:
        return self.path / _NEW

    def publish(self, names: list[str]) -> None:
        missing = [n for n in names if not _present(self.new / n)]
        if missing:
            raise RuntimeError(f"stage did not produce {missing} in {self.new}")
        _step("commit")
        _write_journal(self.path, self.dest_dir, names)
        _roll_forward(self.path)

    def close(self) -> None:
        """Delete the entry (a committed but unfinished publish is left for recovery)."""
        try:
            if not (self.path / _JOURNAL).exists():
                shutil.rmtree(self.path, ignore_errors=True)
        finally:
            self._lock.close()
            with contextlib.suppress(OSError):
                self.root.rmdir()  # only when empty


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _claim(entry: Path):
    """The entry's lock file, locked by us, when no live process holds it; else None.

    Held while the entry is recovered, so two runs never roll the same publish forward at once.
    An entry is locked before it becomes visible; one without a lock file at all is stale."""
    try:
        fh = open(entry / _LOCK, "r+")  # noqa: SIM115 - closed by the caller
    except FileNotFoundError:
        return contextlib.nullcontext() if entry.exists() else None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    return fh


def recover_staging(root: str | Path | None = None) -> list[str]:
    """Finish or undo what killed runs left in ``root`` (default: the repository's ``.staging``).

    A committed entry (journal present) is rolled forward, an uncommitted one deleted; entries of
    live processes are left alone. Returns what was done, one line per entry (also logged).
    """
    root = Path(root) if root is not None else staging_root(Path.cwd())
    done: list[str] = []
    if not root.is_dir():
        return done
    for entry in sorted(root.iterdir()):
        if not entry.is_dir():
            continue
        if entry.name.startswith("."):  # an entry still being created, or whose creator died then
            if _age_s(entry) > _ORPHAN_AGE_S:
                shutil.rmtree(entry, ignore_errors=True)
            continue
        claim = _claim(entry)
        if claim is None:
            continue
        with claim:
            if not entry.exists():
                continue  # recovered by another run between listing and locking
            try:
                if (entry / _JOURNAL).exists():
                    _roll_forward(entry)
                    done.append(f"rolled forward the interrupted publish {entry.name}")
                else:
                    done.append(f"removed the stale staging folder {entry.name}")
            except OSError as exc:  # leave it for a person: the message says where
                log.error("%s: cannot finish the interrupted publish (%s); fix and rerun", entry, exc)
                continue
            shutil.rmtree(entry, ignore_errors=True)
    for line in done:
        log.warning("%s: %s", root, line)
    with contextlib.suppress(OSError):
        root.rmdir()
    return done


@contextlib.contextmanager
def staged_set(dest_dir: str | Path, names: list[str], label: str = "out") -> Iterator[Path]:
    """Yield an empty staging folder; on success publish its ``names`` into ``dest_dir`` at once.

    The previous outputs stay in place until every new one exists; see the module docstring.
    ``names`` may be relative paths in several folders (e.g. ``dest_dir="."`` with
    ``["data/windows/ds", "metrics/data/ds.json"]``): one journal covers them all, so a stage
    whose outputs live in different places publishes them all-or-nothing too.
    """
    entry = _Entry(Path(dest_dir), label)
    try:
        yield entry.new
        entry.publish(list(names))
    finally:
        entry.close()


@contextlib.contextmanager
def staged_targets(*targets: str | Path) -> Iterator[list[Path]]:
    """One staged path per target (files or folders anywhere), published together all-or-nothing.

    For stages whose outputs live in different trees (a model folder and a metrics file): the
    common parent is the publish root, so one journal covers every target.
    """
    abs_targets = [Path(t).absolute() for t in targets]
    root = Path(os.path.commonpath([t.parent for t in abs_targets]))
    names = [str(t.relative_to(root)) for t in abs_targets]
    root.mkdir(parents=True, exist_ok=True)
    with staged_set(root, names, label=abs_targets[0].name) as stage:
        paths = [stage / n for n in names]
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
        yield paths


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path; it replaces ``target`` only if the block succeeds.

    Works for files and directories alike (the caller decides what to create at the path).
    Inside a staging folder (a stage writing its staged set) the path itself is yielded: the
    whole set is published atomically later.
    """
    target = Path(target)
    if _inside_staging(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove(target)
        yield target
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with staged_set(target.parent, [target.name], label=target.name) as tmp:
        yield tmp / target.name


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Atomic directory output: fill the yielded (new, empty) directory; it replaces ``target``."""
    with atomic_path(target) as tmp:
        tmp.mkdir()
        yield tmp


def write_parquet(df: pl.DataFrame, path: str | Path) -> None:
    """Deterministic Parquet (no statistics timestamps, fixed compression) written atomically."""
    with atomic_path(path) as tmp:
        df.write_parquet(tmp, compression="zstd", compression_level=3, statistics=True)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _stable_floats(obj: Any) -> Any:
    """Round floats to 12 significant digits: multi-threaded reductions differ in the last bits
    from run to run, and those bits would otherwise change the file's hash in dvc.lock."""
    if isinstance(obj, (float, np.floating)):
        return float(f"{float(obj):.12g}")
    if isinstance(obj, dict):
        return {k: _stable_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_stable_floats(v) for v in obj]
    return obj


def dumps_json(obj: Any) -> str:
    return json.dumps(_stable_floats(obj), indent=2, sort_keys=True, default=_json_default) + "\n"


def write_json(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(dumps_json(obj), encoding="utf-8")


def write_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_json(path: str | Path) -> Any:
    from stages.core.errors import InputError

    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, None, "an existing JSON file") from None
    except UnicodeDecodeError as exc:
        raise InputError(path, f"byte {exc.start}", "UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise InputError(path, f"line {exc.lineno} column {exc.colno}", f"valid JSON ({exc.msg})") from None
