"""InterFusion's home layout: ``<name>_train.pkl``, ``<name>_test.pkl``, ``<name>_test_label.pkl``.

The arrays are pickled numpy arrays of shape (T, D), (T', D) and (T',). Interpretation labels,
when present, are text lines ``start-end:d1,d2,...`` (test-series step range, inclusive, and
1-based metric dimensions), looked up as ``<name>_interpretation_label.txt``,
``interpretation_label/<name>.txt`` or ``<name>.txt`` in that folder.

Pickle runs code from the file: only open home-data folders you trust.
"""
from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stages.core.errors import InputError

log = logging.getLogger(__name__)


@dataclass
class InterpretationSegment:
    """One labelled anomaly: test steps ``start..end`` (inclusive, 0-based) and its culprit dims (0-based)."""

    start: int
    end: int
    dims: list[int]


@dataclass
class PklDataset:
    name: str
    train: np.ndarray  # (T, D) float32
    test: np.ndarray  # (T', D) float32
    test_label: np.ndarray  # (T',) int8
    interpretation: list[InterpretationSegment] | None = None
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def n_dims(self) -> int:
        return self.train.shape[1]


def _load_array(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError(path, None, "an existing pickled numpy array")
    try:
        with open(path, "rb") as fh:
            obj = pickle.load(fh)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, ValueError) as exc:
        raise InputError(path, None, f"a readable pickle ({type(exc).__name__}: {exc})") from None
    try:
        arr = np.asarray(obj, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(path, None, "a numeric array", type(obj).__name__) from None
    return arr


def _check_finite(arr: np.ndarray, path: Path) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = np.argwhere(bad)[0]
        raise InputError(path, f"index {tuple(int(i) for i in idx)}", "finite values (no NaN/inf)", arr[tuple(idx)])


def parse_interpretation(path: str | Path, n_dims: int, n_steps: int, one_based_steps: bool = False
                         ) -> list[InterpretationSegment]:
    """Parse ``start-end:d1,d2,...`` lines; dims are 1-based in the file, 0-based in the result."""
    path = Path(path)
    segments = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(path, f"byte {exc.start}", "UTF-8 text") from None
    for lineno, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        where = f"line {lineno}"
        span, sep, dims_text = text.partition(":")
        bounds = span.split("-")
        if not sep or len(bounds) != 2:
            raise InputError(path, where, "'start-end:d1,d2,...'", text)
        try:
            start, end = int(bounds[0]), int(bounds[1])
            dims = [int(d) for d in dims_text.replace(" ", "").split(",") if d]
        except ValueError:
            raise InputError(path, where, "integers in 'start-end:d1,d2,...'", text) from None
        if one_based_steps:
            start, end = start - 1, end - 1
        if not 0 <= start <= end < n_steps:
            raise InputError(path, where, f"0 <= start <= end < {n_steps} (test length)", text)
        if not dims or min(dims) < 1 or max(dims) > n_dims:
            raise InputError(path, where, f"1-based dimensions in 1..{n_dims}", text)
        segments.append(InterpretationSegment(start, end, sorted({d - 1 for d in dims})))
    return segments


def find_interpretation_file(directory: Path, name: str) -> Path | None:
    for cand in (directory / f"{name}_interpretation_label.txt", directory / "interpretation_label" / f"{name}.txt",
                 directory / f"{name}.txt"):
        if cand.is_file():
            return cand
    return None


def read_pkl_dataset(directory: str | Path, name: str, interpretation: str | Path | None = None,
                     one_based_steps: bool = False) -> PklDataset:
    """Load and validate one InterFusion-format dataset (shapes, dims agree, labels 0/1, finite)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(directory, None, "an existing folder with <name>_train.pkl / _test.pkl / _test_label.pkl")
    files = {k: directory / f"{name}_{k}.pkl" for k in ("train", "test", "test_label")}
    train, test, label = (_load_array(files[k]) for k in ("train", "test", "test_label"))
    if train.ndim != 2 or train.shape[0] < 2 or train.shape[1] < 1:
        raise InputError(files["train"], "shape", "a 2-D array (T, D) with T >= 2, D >= 1", train.shape)
    if test.ndim != 2 or test.shape[1] != train.shape[1]:
        raise InputError(files["test"], "shape", f"a 2-D array (T', {train.shape[1]}) like the train file",
                         test.shape)
    if label.ndim == 2 and label.shape[1] == 1:
        label = label[:, 0]
    if label.ndim != 1 or label.shape[0] != test.shape[0]:
        raise InputError(files["test_label"], "shape", f"a 1-D array ({test.shape[0]},) matching the test file",
                         label.shape)
    _check_finite(train, files["train"])
    _check_finite(test, files["test"])
    if not np.isin(label, (0, 1)).all():
        i = int(np.argmax(~np.isin(label, (0, 1))))
        raise InputError(files["test_label"], f"index {i}", "0/1 labels", label[i])
    interp_path = Path(interpretation) if interpretation else find_interpretation_file(directory, name)
    segments = None
    if interp_path is not None:
        if not interp_path.is_file():
            raise InputError(interp_path, None, "an existing interpretation label file")
        segments = parse_interpretation(interp_path, train.shape[1], test.shape[0], one_based_steps)
        files["interpretation"] = interp_path
    log.info("%s/%s: train %s, test %s, %d anomalous test steps, %s interpretation segments", directory, name,
             train.shape, test.shape, int(label.sum()), "no" if segments is None else len(segments))
    return PklDataset(name=name, train=train.astype(np.float32), test=test.astype(np.float32),
                      test_label=label.astype(np.int8), interpretation=segments, files=files)
