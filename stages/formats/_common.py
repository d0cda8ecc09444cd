"""Parsing helpers every raw-dump reader shares: finding files, decoding, CSV headers, numbers, times.

Each helper raises :class:`InputError` naming the file, the row/key and what was expected, so a
reader never has to translate a library exception into a readable message itself.

Nothing is dropped without a word (issue 10): :func:`walk` / :class:`Scan` list every data-like
file a reader does not read and why, :func:`require_rows` makes a modality whose files yield no
row an error, :class:`TimeAudit` rejects implausible times where file and row are still known,
:func:`check_columns` names entity files whose columns differ from the rest, and
:func:`dedupe_spans` / :func:`cut_bad_parents` report reused span ids and impossible parent links.

Non-UTF-8 policy (DESIGN §9): bytes that are not UTF-8 are *replaced* (U+FFFD) in log files,
where they only damage free text and a whole day of logs should not be lost to one bad byte
(a warning says how many were replaced); in every other file (metrics, traces, faults) they are
an error, because a mangled number, id or time would silently corrupt the data.
"""
from __future__ import annotations

import codecs
import fnmatch
import functools
import io
import json
import logging
import mmap
import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import IO, Any

import ijson
import numpy as np
import polars as pl

from stages.core.errors import InputError
from stages.core.frames import US, conform, empty
from stages.formats._metric_points import MetricPoints

log = logging.getLogger(__name__)

# Time-zone abbreviations seen in real dumps (Glances writes the local zone name).
TZ_OFFSETS_S = {"UTC": 0, "GMT": 0, "Z": 0, "CET": 3600, "CEST": 7200, "CST": 8 * 3600, "BST": 3600}
_NUMBER = r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$"
_LEVEL_ALIASES = {"WARN": "WARNING", "ERR": "ERROR"}


# ------------------------------------------------------------------ files


_JUNK = (".", "__MACOSX")  # name prefixes of hidden files and macOS archive junk, skipped by walk_text


def path_order(p: Path):
    """Sort key giving ``sorted(paths)``'s order: POSIX paths compare part by part, so their ``parts``
    tuples compare the same way, in C, where ``Path.__lt__`` rebuilds each side's parts in Python
    (300k trace-file paths: 0.9 s against 2.7 s, docs/benchmarks.md)."""
    return p.parts if isinstance(p, PurePosixPath) else p


def walk_text(root: Path) -> tuple[list[str], list[str]]:
    """(regular files, other entries) under ``root`` as unsorted path text, recursively, hidden/macOS
    junk skipped; :func:`walk` sorts them into ``Path`` objects, :func:`find` only those it keeps.

    "Other" are names that are not regular files: folders, broken or looping symlinks, pipes —
    the readers list the ones named like a data file as skipped. Symlinked folders are followed
    once (a dump assembled from links), loops are not. A folder that cannot be listed is an
    error: silently missing a whole folder of a dump is how a metric table shrinks without a word.

    ``os.scandir`` entries say whether they are files from the folder listing itself (no ``stat``
    per file unless a name is a symlink), and paths stay text until sorted (issue 11: an MSDS dump
    holds hundreds of thousands of trace files; listing 2,600 took 22 ms with a ``stat`` and a
    ``Path`` per name, docs/benchmarks.md; a metrics-only MSDS read spent 6 of its 13 ms listing
    making and sorting ``Path`` objects of trace files it does not read)."""
    root = Path(root)
    files: list[str] = []
    other: list[str] = []
    seen = {os.path.realpath(root)}
    folders = [os.fspath(root)]
    while folders:
        folder = folders.pop()
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError as exc:
            raise InputError(exc.filename or folder, None, "a readable folder", exc.strerror or str(exc)) from None
        subfolders = []
        # _is written out: this loop runs once per file of the dump (86,541 trace files: 24 → 13 ms)
        for entry in entries:
            if entry.name.startswith(_JUNK):
                continue
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                subfolders.append(entry)
                continue
            try:
                is_file = entry.is_file()
            except OSError:
                is_file = False
            (files if is_file else other).append(entry.path)
        # by name, depth first: of two names for one folder, the one os.walk's sorted descent meets first is followed
        subfolders.sort(key=lambda e: e.name)
        follow = []
        for entry in subfolders:
            real = os.path.realpath(entry.path)
            if real in seen:  # a symlink back into the tree, or a second name for a folder: would loop or repeat
                other.append(entry.path)
                continue
            seen.add(real)
            follow.append(entry.path)
            if PurePosixPath(entry.name).suffix:  # a folder named like a data file ("svc.csv/")
                other.append(entry.path)
        folders.extend(reversed(follow))  # popped in name order: os.walk's depth-first order
    return files, other


def walk(root: Path) -> tuple[list[Path], list[Path]]:
    """:func:`walk_text`'s (regular files, other entries), each sorted as ``sorted(paths)`` sorts."""
    files, other = walk_text(root)
    return _sorted_paths(files), _sorted_paths(other)


def _is(test: Callable[[], bool]) -> bool:
    """``DirEntry.is_dir`` / ``is_file``, False where the ``stat`` behind a symlink fails (as ``os.walk``)."""
    try:
        return test()
    except OSError:
        return False


def _sorted_paths(paths: list[str]) -> list[Path]:
    """``sorted`` of these paths as ``Path`` objects, sorting their text: on POSIX, with each ``/``
    read as NUL (the one byte no name holds, so below every character a name can hold) text order is
    ``Path.parts`` order, part by part; every path here starts with the same root text and scandir
    joins names with one ``/``. Only the sorted list is turned into ``Path`` objects (100k paths:
    0.03 s against 0.17 s splitting each into its parts)."""
    if os.sep == "/" and not os.altsep:
        return [Path(p) for p in sorted(paths, key=lambda p: p.replace("/", "\0"))]
    return sorted((Path(p) for p in paths), key=path_order)


def find(root: Path, *patterns: str, exclude: Iterable[str] = (), odd: list[tuple[Path, str]] | None = None,
         walked: tuple[list[str], list[str]] | None = None, odd_only: bool = False) -> list[Path]:
    """Regular files under ``root`` (recursively) whose name matches any glob pattern (case-sensitive,
    as ``fnmatch.fnmatchcase``); sorted, hidden/macOS junk skipped.

    Entries that match but are not regular files are appended to ``odd`` as (path, why).
    ``walked``: :func:`walk_text`'s result for ``root``, when the caller lists several patterns.
    ``odd_only``: only fill ``odd`` and return no files (a reader listing a modality it does not read).
    Names are matched as text and only matches become sorted ``Path`` objects."""
    files, other = walked if walked is not None else walk_text(root)
    named = _name_matcher(patterns)
    suffixes = _suffixes(patterns)
    skip = tuple(exclude)

    def kept(paths: list[str]) -> list[Path]:
        if suffixes is not None:  # "*.csv": the path's text ends so exactly when its name does
            picked = _sorted_paths([p for p in paths if p.endswith(suffixes)])
        else:
            picked = _sorted_paths([p for p in paths if named(os.path.basename(p))])
        return [p for p in picked if not any(p.match(x) for x in skip)] if skip else picked

    if odd is not None:
        odd.extend((p, not_regular(p)) for p in kept(other))
    return [] if odd_only else kept(files)


@functools.lru_cache(maxsize=64)
def _suffixes(patterns: tuple[str, ...]) -> tuple[str, ...] | None:
    """The literal endings of patterns that are all ``*`` + text without wildcards or a separator
    (``*.csv``), else None. Matching the whole path's text with ``str.endswith`` is then the same as
    ``fnmatchcase`` of its name, at a tenth of the cost (86,541 trace files: 46 → 6 ms)."""
    out = []
    for p in patterns:
        rest = p[1:]
        if not p.startswith("*") or any(ch in rest for ch in "*?[/") or (os.altsep and os.altsep in rest):
            return None
        out.append(rest)
    return tuple(out)


@functools.lru_cache(maxsize=64)
def _name_matcher(patterns: tuple[str, ...]) -> Callable[[str], object]:
    """One compiled regex for all ``patterns``: ``fnmatch.fnmatchcase`` of any of them."""
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns)).match


def not_regular(p: Path) -> str:
    """Why a path that looks like a data file cannot be read as one."""
    if p.is_symlink():
        try:
            p.resolve(strict=True)
        except (OSError, RuntimeError):
            return "a broken or looping symlink"
    if p.is_dir():
        return "a folder, not a file"
    return "not a regular file"


@dataclass
class Scan:
    """What a reader reads under a dump root, per modality, and what it skips.

    ``skipped[modality]``: files that belong to the modality (by name or header) but cannot be
    read as such (not a regular file, misnamed, header only): they count as the modality's files,
    so a modality made only of them is an error. ``unclaimed``: data-like files no modality takes.
    """

    files: dict[str, list[Path]]
    skipped: dict[str, list[tuple[Path, str]]] = field(default_factory=dict)
    unclaimed: list[tuple[Path, str]] = field(default_factory=list)

    def skips(self, modality: str) -> list[tuple[Path, str]]:
        return self.skipped.get(modality, [])

    def skip(self, modality: str, path: Path, why: str) -> None:
        self.skipped.setdefault(modality, []).append((path, why))


_WARNED: set[tuple[str, str]] = set()  # (what, file): each skipped file is named once per process
# Files a dump may hold that another part of the pipeline reads (not a reader): never "unclaimed".
SIDE_FILES = ("synth_truth.json",)  # the synthetic dumps' ground-truth sidecar (stages/features/fault_truth.py)


def _listing(items: list[tuple[Path, str]]) -> str:
    listed = "; ".join(f"{p} ({why})" for p, why in items[:20])
    return listed + (f"; ... (+{len(items) - 20})" if len(items) > 20 else "")


def warn_skipped(modality: str, skipped: list[tuple[Path, str]], unclaimed: list[tuple[Path, str]] = ()) -> None:
    """One warning listing every file of a modality that is not read and why, one for files no
    modality reads (each file named once per process, though every reader of the dump sees it)."""
    if skipped:
        log.warning("%s: %d file(s) skipped: %s", modality, len(skipped), _listing(skipped))
    fresh = [(p, why) for p, why in unclaimed if ("unclaimed", str(p)) not in _WARNED and p.name not in SIDE_FILES]
    if fresh:
        _WARNED.update(("unclaimed", str(p)) for p, _ in fresh)
        log.warning("%d file(s) under the dump are read by no reader: %s", len(fresh), _listing(fresh))


def require_rows(modality: str, frame: pl.DataFrame | None, files: list[Path],
                 skipped: list[tuple[Path, str]]) -> None:
    """A modality whose files exist but yield no row at all is an error, not an empty table."""
    require_row_count(modality, 0 if frame is None else frame.height, files, skipped)


def require_row_count(modality: str, rows: int, files: list[Path], skipped: list[tuple[Path, str]]) -> None:
    """:func:`require_rows` given the number of rows read (a reader that read in parts)."""
    if (files or skipped) and rows == 0:
        first, why = skipped[0] if skipped else (files[0], "no data rows")
        n = len({*files, *(p for p, _ in skipped)})
        raise InputError(first, None, f"{modality} rows from at least one of its {n} {modality} file(s)",
                         f"none; this one: {why}")


def check_columns(modality: str, headers: dict[Path, list[str]], skip: Iterable[str] = ()) -> None:
    """Warn for each entity file whose column set differs from the majority of the dump's files."""
    if len(headers) < 3:
        return
    skip = set(skip)
    sets = {p: frozenset(h) - skip for p, h in headers.items()}
    counts: dict[frozenset, int] = {}
    for cols in sets.values():
        counts[cols] = counts.get(cols, 0) + 1
    majority, n = max(counts.items(), key=lambda kv: (kv[1], sorted(kv[0])))
    if n * 2 <= len(sets):
        return  # no majority layout to compare with
    for p, cols in sets.items():
        if cols != majority:
            log.warning("%s: columns differ from the %d other %s files of the dump: missing %s, extra %s",
                        p, n, modality, sorted(majority - cols), sorted(cols - majority))


def read_bytes(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InputError(path, None, "a readable file", str(exc)) from None


def decode(data: bytes, path: Path, *, lossy: bool) -> str:
    """UTF-8 text; ``lossy`` replaces bad bytes (log files) instead of failing (structural files)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        if not lossy:
            raise InputError(path, f"line {line} (byte {exc.start})", "UTF-8 text",
                             data[max(0, exc.start - 10):exc.start + 10]) from None
        text = data.decode("utf-8", errors="replace")
        log.warning("%s: replaced %d non-UTF-8 byte sequence(s) (first on line %d) with U+FFFD",
                    path, text.count("\ufffd"), line)
        return text


def load_json_bytes(data: bytes, path: Path | str, *, lossy: bool = False) -> Any:
    """Parse JSON with an error that names the file, line and column (truncation included)."""
    text = decode(data, Path(path), lossy=lossy)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"line {exc.lineno} column {exc.colno}", f"valid JSON ({exc.msg})") from None


def load_json(path: Path, *, lossy: bool = False) -> Any:
    return load_json_bytes(read_bytes(path), path, lossy=lossy)


def expect_key(obj: Any, key: str, path: Path | str, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise InputError(path, f"{where}.{key}".lstrip("."), f"key '{key}'",
                         sorted(obj)[:10] if isinstance(obj, dict) else type(obj).__name__)
    return obj[key]


# ------------------------------------------------------------------ streamed JSON
#
# A multi-GB JSON dump is parsed item by item (DESIGN §8) instead of json.load: the bytes are
# never held whole, and neither is the decoded object tree. An ``opener`` is a no-argument
# callable returning a context manager over a binary stream, so a failed parse can re-read the
# stream to say exactly where it failed.

JSON_READ_BYTES = 1 << 16  # bytes per read handed to the parser
_JSON_SPACE = b" \t\r\n"

Opener = Callable[[], AbstractContextManager[IO[bytes]]]


@functools.cache
def json_backend():
    """ijson's C parser (yajl2_c) when the wheel has it, several times faster than pure Python."""
    try:
        return ijson.get_backend("yajl2_c")
    except ImportError:
        log.info("ijson's yajl2_c backend is unavailable; using %s (slower)", ijson.backend)
        return ijson


@contextmanager
def open_binary(path: Path) -> Iterator[IO[bytes]]:
    """Unbuffered ``open(path, 'rb')`` whose failure is an InputError naming the file.

    Unbuffered: the parser reads 64 KiB blocks, which a BufferedReader serves ~20× slower."""
    try:
        fh = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise InputError(path, None, "a readable file", str(exc)) from None
    with fh:
        yield fh


class _Tap:
    """Counts the bytes handed to the parser, so a parse error can be placed.

    From ``trickle_from`` on it hands out one byte per read, so the parser fails on the very byte.
    """

    def __init__(self, raw: IO[bytes], trickle_from: int | None = None):
        self.raw, self.trickle_from = raw, trickle_from
        self.pos = 0  # bytes handed out so far
        self.block_start = 0  # where the last non-empty read began
        self.eof = False

    def read(self, n: int = -1) -> bytes:
        if n == 0:
            return b""
        if self.trickle_from is not None:
            n = 1 if self.pos >= self.trickle_from else min(n if n > 0 else 1 << 30, self.trickle_from - self.pos)
        data = self.raw.read(n)
        if data:
            self.block_start, self.pos = self.pos, self.pos + len(data)
        else:
            self.eof = True
        return data


class LossyUtf8:
    """Replaces non-UTF-8 bytes by U+FFFD on the fly (log files, DESIGN §9), counting them as
    :func:`decode` does so the warning reads the same."""

    def __init__(self, raw: IO[bytes]):
        self.raw = raw
        self._lossy = codecs.getincrementaldecoder("utf-8")("replace")
        self._strict = codecs.getincrementaldecoder("utf-8")("strict")
        self.replaced = 0  # U+FFFD in the decoded text
        self.first_bad_line: int | None = None  # None: the input was valid UTF-8
        self._lines = 0
        self._done = False

    def read(self, n: int = -1) -> bytes:
        if n == 0:
            return b""
        while not self._done:  # loop: a block ending mid-character may decode to nothing yet
            block = self.raw.read(n)
            self._done = not block
            text = self._lossy.decode(block, self._done)
            self.replaced += text.count("\ufffd")
            if self.first_bad_line is None:
                self._check(block)
            if text:
                return text.encode("utf-8")
        return b""

    def _check(self, block: bytes) -> None:
        """Strict decoding alongside, only to learn whether (and on which line) a byte was bad."""
        pending = self._strict.getstate()[0]
        try:
            self._strict.decode(block, not block)
        except UnicodeDecodeError as exc:
            self.first_bad_line = self._lines + (pending + block).count(b"\n", 0, exc.start) + 1
        self._lines += block.count(b"\n")

    def warn(self, path: Path | str) -> None:
        if self.first_bad_line is not None:
            log.warning("%s: replaced %d non-UTF-8 byte sequence(s) (first on line %d) with U+FFFD",
                        path, self.replaced, self.first_bad_line)


@contextmanager
def _reopen(opener: Opener, lossy: bool) -> Iterator[IO[bytes]]:
    with opener() as raw:
        yield LossyUtf8(raw) if lossy else raw


def json_first_byte(opener: Opener) -> str:
    """First non-blank character of a JSON stream ('' when empty): tells a list from an object
    before choosing what to stream."""
    with opener() as raw:
        while block := raw.read(JSON_READ_BYTES):
            rest = block.lstrip(_JSON_SPACE)
            if rest:
                return chr(rest[0])
    return ""


def stream_json(opener: Opener, path: Path | str, prefix: str, *, kv: bool = False, lossy: bool = False,
                progress=None) -> Iterator[Any]:
    """Yield the values under ijson ``prefix`` one at a time ((key, value) pairs with ``kv``).

    Malformed or truncated JSON raises an InputError naming the line, column and byte where it
    failed; non-UTF-8 bytes are an error (named like :func:`decode` does) unless ``lossy``.
    ``progress`` (a tqdm bar) advances by the bytes parsed.
    """
    backend = json_backend()
    parse = backend.kvitems if kv else backend.items
    failure, done, last_key = None, 0, None
    with _reopen(opener, lossy) as src:
        tap = _Tap(src)
        try:
            for item in parse(tap, prefix, use_float=True, buf_size=JSON_READ_BYTES):
                yield item
                done, last_key = done + 1, item[0] if kv else None
                if progress is not None:
                    progress.update(tap.pos - progress.n)
        except ijson.JSONError as exc:
            failure = exc
        finally:
            if lossy:
                src.warn(path)
    if failure is not None:
        after = f", after key '{last_key}'" if kv and done else f", after {done} item(s)" if done else ""
        raise _json_failure(opener, path, lossy, failure, tap, after)


def _json_failure(opener: Opener, path: Path | str, lossy: bool, exc: Exception, tap: _Tap, after: str) -> InputError:
    """The InputError for a failed parse: a bad UTF-8 byte if there is one, else the exact byte."""
    if not lossy:
        bad = _first_bad_utf8(opener, tap.pos)
        if bad is not None:
            line, start, around = bad
            return InputError(path, f"line {line} (byte {start})", "UTF-8 text", around)
    at = _pin_json_error(opener, lossy, tap.block_start)
    at = tap.pos if at is None else at
    line, col = _line_col(opener, lossy, at)
    reason = exc.args[0] if exc.args else str(exc)
    reason = (reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)).splitlines()[0]
    return InputError(path, f"line {line} column {col}", f"valid JSON ({reason.strip()} at byte {at}{after})")


def _pin_json_error(opener: Opener, lossy: bool, block_start: int) -> int | None:
    """Re-parse, one byte at a time from the block that failed: the offset of the failing byte."""
    with _reopen(opener, lossy) as src:
        tap = _Tap(src, trickle_from=block_start)
        try:
            for _ in json_backend().basic_parse(tap, buf_size=JSON_READ_BYTES):
                pass
        except ijson.JSONError:
            return tap.pos if tap.eof else tap.pos - 1
    return None


def _line_col(opener: Opener, lossy: bool, at: int) -> tuple[int, int]:
    """1-based line and column of byte ``at``, counted without holding the stream."""
    line, pos, last_nl = 1, 0, -1
    with _reopen(opener, lossy) as src:
        while pos < at and (block := src.read(min(1 << 20, at - pos))):
            line += block.count(b"\n")
            nl = block.rfind(b"\n")
            if nl >= 0:
                last_nl = pos + nl
            pos += len(block)
    return line, at - last_nl


def _first_bad_utf8(opener: Opener, limit: int) -> tuple[int, int, bytes] | None:
    """(line, byte, surrounding bytes) of the first non-UTF-8 byte before ``limit``, else None."""
    dec = codecs.getincrementaldecoder("utf-8")("strict")
    line, pos = 1, 0
    with opener() as raw:
        while pos <= limit:  # one read past: a sequence cut by the end of the file shows at EOF
            block = raw.read(1 << 20)
            pending = dec.getstate()[0]
            try:
                dec.decode(block, not block)
            except UnicodeDecodeError as exc:
                data = pending + block
                return (line + data.count(b"\n", 0, exc.start), pos - len(pending) + exc.start,
                        data[max(0, exc.start - 10):exc.start + 10])
            if not block:
                break
            line += block.count(b"\n")
            pos += len(block)
    return None


# ------------------------------------------------------------------ CSV


def csv_header(path: Path) -> list[str]:
    """Column names of a CSV (first line only), without reading the file."""
    try:
        with open(path, "rb") as fh:
            first = fh.readline()
    except OSError as exc:
        raise InputError(path, None, "a readable file", str(exc)) from None
    return [c.strip().strip('"') for c in first.decode("utf-8", errors="replace").rstrip("\r\n").split(",")]


def read_csv(path: Path, required: Iterable[str], *, lossy: bool = False, infer: bool = False,
             direct: pl.DataFrame | None = None) -> pl.DataFrame:
    """Whole CSV (quoted newlines allowed), after checking the required columns exist.

    Columns are read as text (or, with ``infer``, typed by polars with a fall-back to text when
    inference fails), so typing errors are reported with their row number by :func:`to_float` /
    :func:`parse_times` instead of failing inside the CSV parser. ``direct``: this file's frame
    from :func:`direct_csvs` (read together with other files), used as :func:`_direct_csv`'s.
    """
    if infer and not lossy:
        df = direct if direct is not None else _direct_csv(path)
        if df is not None and all(c in df.columns for c in required):
            return df
    data = read_bytes(path)
    if data.isascii():  # valid UTF-8 as it is: no decoded copy of the file (bytes.isspace = str.isspace here)
        if not data or data.isspace():
            raise InputError(path, "header", f"a CSV with columns {list(required)}", "an empty file")
    else:
        text = decode(data, path, lossy=lossy)
        if not text or text.isspace():  # not text.strip(): that copies the whole file
            raise InputError(path, "header", f"a CSV with columns {list(required)}", "an empty file")
        if "\ufffd" in text:
            data = text.encode("utf-8")
        del text
    df = None
    # Types inferred from 100 rows first (polars' default, twice as fast as 10,000), then from
    # 10,000 when a later cell does not fit: a column typed wrongly by 100 rows fails to parse.
    for rows in (100, 10_000) if infer else ():
        try:
            df = pl.read_csv(io.BytesIO(data), infer_schema_length=rows, quote_char='"')
            break
        except pl.exceptions.PolarsError:
            df = None  # a cell that does not fit the inferred type: re-read as text to name it
    try:
        df = df if df is not None else pl.read_csv(io.BytesIO(data), infer_schema=False, quote_char='"')
    except pl.exceptions.PolarsError as exc:
        raise InputError(path, None, "a well-formed CSV", str(exc).splitlines()[0]) from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(path, "header", f"columns {list(required)} (missing {missing})", df.columns)
    return df


CSV_BLOCK_BYTES = 64 * 2**20  # a large CSV is parsed this much at a time (csv_blocks)


def csv_blocks(path: Path, required: Iterable[str], *, lossy: bool = False,
               block_bytes: int | None = None) -> Iterator[tuple[int, pl.DataFrame]]:
    """:func:`read_csv`'s frame as consecutive blocks of whole records, each with the 0-based row
    of its first record: a file of several GB never sits in memory as bytes and frame at once
    (issue 11). The blocks come from polars' streaming CSV scan (the parser ``read_csv`` uses,
    so quoted newlines stay in their record), about ``block_bytes`` of input each; its read-ahead
    is bounded. A file of at most ``block_bytes``, or one that is not all ASCII (then
    :func:`read_csv`'s decoding and its warnings and errors apply), is read whole, as one block."""
    block_bytes = block_bytes or CSV_BLOCK_BYTES
    if file_size(path) <= block_bytes or not _all_ascii(path, block_bytes):
        yield 0, read_csv(path, required, lossy=lossy)
        return
    with open(path, "rb") as f:
        header = f.readline()
        sample = f.read(_SAMPLE_BYTES)
    try:
        columns = pl.read_csv(io.BytesIO(header), infer_schema=False, quote_char='"').columns
    except pl.exceptions.PolarsError as exc:
        raise InputError(path, "header", "a well-formed CSV", str(exc).splitlines()[0]) from None
    missing = [c for c in required if c not in columns]
    if missing:
        raise InputError(path, "header", f"columns {list(required)} (missing {missing})", columns)
    record_bytes = max(1, len(sample) // max(1, sample.count(b"\n")))
    batches = iter(pl.scan_csv(path, infer_schema=False, quote_char='"', glob=False)
                   .collect_batches(chunk_size=max(1, block_bytes // record_bytes), lazy=True))
    first = 0
    while True:
        try:
            df = next(batches, None)
        except pl.exceptions.PolarsError as exc:
            raise InputError(path, f"{row_of(first)} or after", "a well-formed CSV",
                             str(exc).splitlines()[0]) from None
        if df is None:
            return
        if df.height:
            yield first, df
        first += df.height


_SAMPLE_BYTES = 2**20  # input whose newlines tell the typical record length (records per block)


def _all_ascii(path: Path, block_bytes: int) -> bool:
    """Whether every byte is ASCII, looked at through a memory map: no copy of the file (a
    read of it took half as long as polars parsing it, issue 11)."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = np.frombuffer(mapped, np.uint8)
            try:
                return all(int(view[i:i + block_bytes].max()) < 128 for i in range(0, view.size, block_bytes))
            finally:
                del view  # the map cannot close while numpy holds it
    except (OSError, ValueError):
        return False  # read_csv names the problem (an empty file cannot be mapped)


_DIRECT_GROUP_BYTES = 32 * 2**20  # input read per collect_all: memory stays bounded at any dump size


def direct_csvs(paths: list[Path]) -> Iterator[tuple[Path, pl.DataFrame | None]]:
    """``(path, frame)`` in order, the frame being :func:`_direct_csv`'s, or None where that
    function's own read must decide (it then runs on that file alone, as before).

    Files are read by one ``collect_all`` per group of up to 32 MB of input and :data:`QUERY_FILES`
    files (one query over 7,000 small files hung in polars 2.1, every thread waiting), in parallel: one
    eager ``read_csv`` per file cost ~1.6 ms of query overhead under polars 2 (~0.6 ms under
    1.44), a quarter to a half of reading a dump of a few hundred small metric files (GAIA holds
    one file per series). A group whose query fails yields None for all its files, so errors
    and warnings are the file-by-file ones, in file order."""
    for group in byte_groups(paths, [file_size(p) for p in paths], _DIRECT_GROUP_BYTES, QUERY_FILES):
        yield from _direct_group(group)


def file_size(path: Path) -> int:
    """Bytes on disk; 0 when it cannot be told (the file's own read then names the problem)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


QUERY_FILES = 256  # files per collect_all: polars opens each scan on a blocking thread, at most 512


def byte_groups(items: list, sizes: list[int], budget: int, max_items: int | None = None) -> list[list]:
    """Consecutive ``items`` in groups whose ``sizes`` sum to at most ``budget`` and that hold at
    most ``max_items``; an item larger than ``budget`` is a group of its own. Bounds what one query
    or one part holds at once."""
    groups: list[list] = []
    total = 0
    for item, n in zip(items, sizes):
        if not groups or total + n > budget or (max_items is not None and len(groups[-1]) >= max_items):
            groups.append([])
            total = 0
        groups[-1].append(item)
        total += n
    return groups


def _direct_group(paths: list[Path]) -> Iterator[tuple[Path, pl.DataFrame | None]]:
    if len(paths) == 1:
        yield paths[0], None
        return
    try:
        frames = pl.collect_all([pl.scan_csv(p, infer_schema_length=100, quote_char='"', glob=False) for p in paths])
    except (Exception, pl.exceptions.PanicException):  # noqa: BLE001 - each file's own read names it
        frames = [None] * len(paths)
    for path, df in zip(paths, frames):
        yield path, None if df is None or df.height == 0 or any("\ufffd" in c for c in df.columns) else df


def _direct_csv(path: Path) -> pl.DataFrame | None:
    """The CSV parsed by polars straight from its path, types inferred from 100 rows, or None.

    When polars parses it into rows and no column name holds U+FFFD, the bytes are UTF-8: a cell
    typed as numbers is ASCII, polars validates every text cell, and a header byte that is not UTF-8
    becomes U+FFFD. The checked path of :func:`read_csv` would then hand polars these very bytes with
    the same settings, so the frame is the same (issue 11: reading and checking a metric file's bytes
    first cost a tenth of a GAIA read). None otherwise: that path reads the file again and names
    any problem (an empty file, header only, bad bytes, a cell past row 100 that breaks its type)."""
    try:
        df = pl.read_csv(path, infer_schema_length=100, quote_char='"')
    except (Exception, pl.exceptions.PanicException):  # noqa: BLE001 - the checked path names it
        return None
    if df.height == 0 or any("\ufffd" in c for c in df.columns):
        return None
    return df


def row_of(index: int) -> str:
    """Human number of a 0-based data row: 'row 1' is the first record after the header.

    Records, not lines: quoted fields may hold newlines (GAIA messages do)."""
    return f"row {index + 1}"


def to_float(col: pl.Series, path: Path, column: str, row_label=row_of) -> pl.Series:
    """Text column → Float64; empty/'nan' become missing; anything else non-numeric is an error
    (naming ``row_label`` of its index)."""
    s = col.cast(pl.Utf8).str.strip_chars()
    out = s.cast(pl.Float64, strict=False)
    if out.null_count() == s.null_count():  # every text cell parsed: nothing to name
        return out
    bad = out.is_null() & s.is_not_null() & (s != "") & ~s.str.to_lowercase().is_in(["nan", "null", "none", "na"])
    if bad.any():
        i = int(bad.arg_true()[0])
        raise InputError(path, f"{row_label(i)} column '{column}'", "a number", s[i])
    return out


def is_numeric_column(col: pl.Series) -> bool:
    """True when the column holds at least one number: a metric (bad cells then are errors)."""
    s = col.cast(pl.Utf8).str.strip_chars()
    return bool(s.str.contains(_NUMBER).fill_null(False).any())


# ------------------------------------------------------------------ time


def epoch_to_us(values: pl.Series) -> pl.Series:
    """Epoch numbers in s, ms, µs or ns (decided per value by magnitude) → Int64 µs."""
    exact = _integer_epoch_to_us(values)
    if exact is not None:
        return exact
    v = values.cast(pl.Float64)
    a = v.abs()
    scale = (
        pl.when(a < 1e11).then(pl.lit(1e6))
        .when(a < 1e14).then(pl.lit(1e3))
        .when(a < 1e17).then(pl.lit(1.0))
        .otherwise(pl.lit(1e-3))
    )
    return pl.select((pl.lit(v) * scale).round(0).cast(pl.Int64)).to_series().rename(values.name)


_UNITS = ((1e11, 1_000_000), (1e14, 1_000), (1e17, 1))  # |value| below → µs per unit (else ns: ÷1000)
_SMALL_INTS = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32)  # all fit an Int64


def _integer_epoch_to_us(values: pl.Series) -> pl.Series | None:
    """:func:`epoch_to_us` of integers all in one unit, by an integer product: the float path's
    result exactly, when every product stays below 2**53 (the float product is exact there)."""
    if values.dtype not in _SMALL_INTS or values.null_count() == values.len():
        return None
    lo, hi = int(values.min()), int(values.max())
    if lo < 0:  # a negative value: the range of |values| needs their absolute values
        a = values.cast(pl.Int64).abs()
        lo, hi = int(a.min()), int(a.max())
        if lo < 0:  # abs of the most negative Int64 wraps
            return None
    for limit, scale in _UNITS:
        if hi < limit:
            if lo >= limit / 1000 or limit == 1e11:  # the same unit for every value
                return None if hi * scale >= 2**53 else (values.cast(pl.Int64) * scale).rename(values.name)
            return None
    return None


_DT_FORMATS = ("%Y-%m-%d %H:%M:%S%.f", "%Y/%m/%d %H:%M:%S%.f", "%b %d, %Y @ %H:%M:%S%.f", "%Y-%m-%d")


def parse_times(col: pl.Series, path: Path | str, column: str, *, tz_offset_s: float = 0.0,
                row_label=row_of) -> pl.Series:
    """Text or numeric time column → Int64 epoch µs UTC.

    Accepts epoch numbers (unit by magnitude), ISO-like strings with ``T`` or space, ``,`` or ``.``
    before fractions, a trailing ``Z``, ``+HH:MM`` offset or a zone abbreviation (``CEST``...),
    and Kibana's ``Nov 19, 2019 @ 18:38:55.384``. Naive strings are taken as UTC + ``tz_offset_s``
    (the wall-clock zone the dump was written in), i.e. ``tz_offset_s`` is *subtracted*.
    """
    if col.dtype.is_numeric():
        return epoch_to_us(col)
    if col.dtype == pl.Utf8:  # no blank around a value of the fixed shape: nothing to strip
        fixed = _parse_fixed(col, tz_offset_s)
        if fixed is not None:
            return fixed.rename(col.name)
    return _parse_general(col, path, column, tz_offset_s, row_label)


def _parse_general(col: pl.Series, path: Path | str, column: str, tz_offset_s: float, row_label) -> pl.Series:
    """:func:`parse_times` of a text column of any accepted shape: zones, cleaning, format trials."""
    s = col.cast(pl.Utf8).str.strip_chars()
    nonnull = s.is_not_null() & (s != "")
    if bool(s.filter(nonnull).str.contains(_NUMBER).all()) and int(nonnull.sum()) > 0:
        return epoch_to_us(s.cast(pl.Float64, strict=False))
    frame = pl.DataFrame({"s": s})
    frame = frame.with_columns(
        pl.col("s").str.extract(r"\s([A-Za-z]{2,5})$", 1).alias("abbr"),
        pl.col("s").str.extract(r"(?:\d)([+-]\d\d:?\d\d)$", 1).alias("num"),
    )
    unknown = frame.with_row_index("_i").filter(pl.col("abbr").is_not_null()
                                                & ~pl.col("abbr").str.to_uppercase().is_in(list(TZ_OFFSETS_S)))
    if unknown.height:
        raise InputError(path, f"{row_label(int(unknown['_i'][0]))} column '{column}'",
                         f"a time zone among {sorted(TZ_OFFSETS_S)}", unknown["s"][0])
    sign = pl.when(pl.col("num").str.slice(0, 1) == "-").then(-1).otherwise(1)
    digits = pl.col("num").str.replace(":", "").str.slice(1)
    frame = frame.with_columns(
        pl.when(pl.col("abbr").is_not_null())
        .then(pl.col("abbr").str.to_uppercase().replace_strict(TZ_OFFSETS_S, default=0, return_dtype=pl.Int64))
        .when(pl.col("num").is_not_null())
        .then(sign * (digits.str.slice(0, 2).cast(pl.Int64) * 3600 + digits.str.slice(2, 2).cast(pl.Int64) * 60))
        .otherwise(None)
        .alias("zone_s"),
        pl.col("s")
        .str.replace(r"\s[A-Za-z]{2,5}$", "")
        .str.replace(r"(\d)[+-]\d\d:?\d\d$", "$1")
        .str.replace(r"Z$", "")
        .str.replace("T", " ", literal=True)
        .str.replace(r"(\d\d:\d\d:\d\d),(\d)", "$1.$2")
        .alias("clean"),
    )
    parsed = None
    missing = frame["clean"].null_count()
    for fmt in _DT_FORMATS:
        p = frame["clean"].str.to_datetime(fmt, strict=False, time_unit="us")
        parsed = p if parsed is None else parsed.fill_null(p)
        if parsed.null_count() == missing:
            break  # every text parsed: later formats could fill nothing
    numeric = s.str.contains(_NUMBER).fill_null(False)
    if numeric.any():  # a column mixing epoch numbers and date strings
        epoch = epoch_to_us(s.cast(pl.Float64, strict=False))
        parsed = pl.select(pl.when(pl.lit(numeric)).then(pl.lit(epoch).cast(pl.Datetime("us")))
                           .otherwise(pl.lit(parsed))).to_series()
    bad = parsed.is_null() & nonnull
    if bad.any():
        i = int(bad.arg_true()[0])
        raise InputError(path, f"{row_label(i)} column '{column}'", "a date-time or epoch number", s[i])
    naive_shift = int(round(tz_offset_s * US))
    zone_us = frame["zone_s"].cast(pl.Int64) * US
    out = parsed.dt.epoch("us") - zone_us.fill_null(naive_shift)
    return out.rename(col.name)


def _fixed_pattern(sep: str) -> str:
    """The fixed shape with this date/time separator (" " or "T"), before its zone suffix and ``$``."""
    return r"^[0-9]{4}-[0-9]{2}-[0-9]{2}" + sep + r"[0-9]{2}:[0-9]{2}:[0-9]{2}(?:[.,][0-9]{1,9})?"


def _parse_fixed(s: pl.Series, tz_offset_s: float) -> pl.Series | None:
    """:func:`parse_times` of a text column where every value is ``YYYY-MM-DD HH:MM:SS`` (or with
    ``T`` between date and time, as every value of the column), maybe with a ``.`` or ``,``
    fraction, all with the same known zone suffix (Glances' ``2019-10-11 21:11:16 CEST``), all
    ending in ``Z`` (Elasticsearch's ``2019-11-19T10:00:01.578Z``) or all without one (GAIA's
    ``2021-07-01 00:01:42.875903``); nulls stay null. None for anything else (blanks, mixed zones
    or separators, offsets, a value that is no date), which the general path then parses. The
    same µs as the general path: on these shapes its cleaning leaves the text as it is (but for
    ``,`` → ``.``) and its first format
    parses it; here with one regex check instead of its regex cleaning and format trials
    (issue 11: most of an MSDS metric read, of a GAIA trace read)."""
    fixed = _parse_fixed_columns(s.to_frame("t"), ["t"], tz_offset_s).get("t")  # any name: not read as a regex
    return None if fixed is None else fixed.rename(s.name)


def parse_time_columns(df: pl.DataFrame, columns: list[str], path: Path | str, *,
                       tz_offset_s: float = 0.0, row_label=row_of) -> list[pl.Series]:
    """:func:`parse_times` of several columns of one frame (each named by its column): the
    fixed-shape text ones are checked in one pass and parsed in a second, side by side, instead of
    one column after the other (a GAIA span's start and end, issue 11); the rest as before."""
    fixed = _parse_fixed_columns(df, [c for c in columns if df[c].dtype == pl.Utf8], tz_offset_s)
    out = []
    for c in columns:
        if c in fixed:
            out.append(fixed[c])
        elif df[c].dtype.is_numeric():
            out.append(epoch_to_us(df[c]))
        else:
            out.append(_parse_general(df[c], path, c, tz_offset_s, row_label))
    return out


def _parse_fixed_columns(df: pl.DataFrame, columns: list[str], tz_offset_s: float) -> dict[str, pl.Series]:
    """:func:`_parse_fixed` of each text column, those of the fixed shape only (see there)."""
    zones = {c: z for c in columns if (z := _fixed_zone(df[c], tz_offset_s)) is not None}
    if not zones:
        return {}
    checks = df.select([e for c, (sep, suffix, _) in zones.items() for e in _fixed_checks(c, sep, suffix)]).row(0)
    plans = {}
    for i, (c, (sep, suffix, shift_us)) in enumerate(zones.items()):
        fits, longest, comma = checks[3 * i:3 * i + 3]
        if fits:
            plans[c] = _fixed_parse(c, sep, suffix, shift_us, longest, comma)
    parsed = df.select(list(plans.values())) if plans else pl.DataFrame()
    # a day or hour that does not exist parses to null: the general path names it
    return {c: parsed[c] for c in plans if parsed[c].null_count() == df[c].null_count()}


def _fixed_zone(s: pl.Series, tz_offset_s: float) -> tuple[str, str, int] | None:
    """(date/time separator, zone suffix, µs to subtract) read off the first value; None when the
    column is all null or its first value ends in an unknown zone name.

    Separator ``T`` and suffix ``Z`` (Elasticsearch's ``2019-11-19T10:00:01.578Z``) are what the
    general path's cleaning removes: it takes such a time as naive (``tz_offset_s``), and so does
    this one."""
    nulls = s.null_count()
    if s.len() == nulls:
        return None
    first = s[0] if not nulls else s.drop_nulls()[0]
    sep = "T" if first[10:11] == "T" else " "
    naive = int(round(tz_offset_s * US))
    if first.endswith("Z") and first[-2:-1].isdigit():
        return sep, "Z", naive
    head, _, zone = first.rpartition(" ")
    if zone.isascii() and zone.isalpha():  # a zone name (a time ends with a digit)
        if not 2 <= len(zone) <= 5 or zone.upper() not in TZ_OFFSETS_S:
            return None
        return sep, " " + zone, TZ_OFFSETS_S[zone.upper()] * US
    return sep, "", naive


def _fixed_checks(column: str, sep: str, suffix: str) -> list[pl.Expr]:
    """Whether every value has the fixed shape (nulls aside), the longest value, whether one has a ','."""
    col = pl.col(column)
    return [col.str.contains(_fixed_pattern(sep) + suffix + "$").all().alias(f"{column}:fits"),
            col.str.len_bytes().max().alias(f"{column}:longest"),
            col.str.contains(",", literal=True).any().alias(f"{column}:comma")]


def _fixed_parse(column: str, sep: str, suffix: str, shift_us: int, longest: int, comma: bool) -> pl.Expr:
    """Epoch µs of a fixed-shape column: one ``to_datetime`` format (see :func:`_parse_fixed`)."""
    col, fmt = pl.col(column), f"%Y-%m-%d{sep}%H:%M:%S"
    if longest == 19 + len(suffix):  # no value with a fraction: the zone in the format
        fmt += suffix  # (letters only: no % directive)
    else:
        if suffix:
            col = col.str.strip_suffix(suffix)
        fmt += "%.f"
        if comma:
            col = col.str.replace(",", ".", literal=True)
    # no cache of parsed strings: no faster on 3 M times of 10,000 distinct, 11% slower on GAIA's span times
    return (col.str.to_datetime(fmt, strict=False, time_unit="us", cache=False).dt.epoch("us")
            - shift_us).alias(column)


# Plausible times (issue 10): nothing before 2000 (an epoch-0 or negative stamp, a unit mistake),
# nothing more than a year from the median time of the dump's modality (one typo'd year would
# otherwise stretch a grid over millions of empty steps).
MIN_PLAUSIBLE_US = 946_684_800 * US  # 2000-01-01T00:00:00Z
MAX_SPREAD_US = 365 * 86_400 * US


def iso_us(us: int | float | None) -> str:
    """ISO-8601 UTC of epoch µs (any year python can show; else the number)."""
    if us is None:
        return "null"
    try:
        return datetime.fromtimestamp(us / US, tz=timezone.utc).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return f"{us} µs"


class TimeAudit:
    """Plausibility of one modality's times, checked where the reader still knows file and row.

    :meth:`series` / :meth:`value` reject a time before 2000 at once (naming file, row, column)
    and remember each file's earliest and latest time with its place; :meth:`finish`, given the
    whole modality's times, rejects the first remembered one more than a year from their median.
    """

    def __init__(self, modality: str):
        self.modality = modality
        self._ext: dict[tuple[str, str], tuple[int, str, str]] = {}  # (file, lo|hi) → (µs, file, where)

    def _keep(self, path: Path | str, us: int, where: str) -> None:
        if us < MIN_PLAUSIBLE_US:
            raise InputError(path, where, "a time after 2000-01-01 (epoch s/ms/µs/ns or a date)", iso_us(us))
        for side, better in (("lo", lambda a, b: a < b), ("hi", lambda a, b: a > b)):
            key = (str(path), side)
            if key not in self._ext or better(us, self._ext[key][0]):
                self._ext[key] = (us, str(path), where)

    def value(self, path: Path | str, us: int | None, where: str) -> None:
        if us is not None:
            self._keep(path, int(us), where)

    def series(self, path: Path | str, ts: pl.Series, column: str, row_label=row_of,
               rows: pl.Series | None = None) -> None:
        """``rows``: the original 0-based record of each value (default: its position)."""
        if ts.len() == 0 or ts.null_count() == ts.len():
            return
        for i in (ts.arg_min(), ts.arg_max()):
            row = int(rows[i]) if rows is not None else int(i)
            self._keep(path, int(ts[i]), f"{row_label(row)} column '{column}'")

    def values(self, path: Path | str, times: list[int], column: str, places: list[str]) -> None:
        """:meth:`series` for a Python list of times without nulls; ``places[i]`` names value i."""
        if not times:
            return
        for i in (min(range(len(times)), key=times.__getitem__), max(range(len(times)), key=times.__getitem__)):
            self._keep(path, int(times[i]), f"{places[i]} column '{column}'")

    def finish(self, ts: pl.Series | None) -> None:
        if ts is None or ts.len() == 0 or not self._ext:
            return
        self.finish_median(_median(ts))

    def finish_median(self, median: int) -> None:
        """:meth:`finish` given the median of the modality's times (a reader that read in parts)."""
        if not self._ext:
            return
        for us, path, where in sorted(self._ext.values(), key=lambda e: (-abs(e[0] - median), e[1], e[2])):
            if abs(us - median) > MAX_SPREAD_US:
                raise InputError(path, where, f"a time within a year of the {self.modality} median "
                                              f"{iso_us(median)}", iso_us(us))
            break


def _median(ts: pl.Series) -> int:
    """``int(ts.median())``, read off the middle when ``ts`` is sorted (a metric frame is) instead of
    selecting it from millions of values."""
    n = ts.len()
    if ts.null_count() or not ts.is_sorted():
        return int(ts.median())
    lo, hi = int(ts[(n - 1) // 2]), int(ts[n // 2])
    return int(float(lo) if lo == hi else (float(lo) + float(hi)) / 2)


def shift(df: pl.DataFrame, columns: Iterable[str], offset_s: float) -> pl.DataFrame:
    """Add a clock offset (seconds) to the given µs columns."""
    delta = int(round(offset_s * US))
    if delta == 0:
        return df
    return df.with_columns([(pl.col(c) + delta).alias(c) for c in columns])


def normalise_level(col: pl.Expr) -> pl.Expr:
    """Upper-case log levels and fold common aliases (WARN→WARNING); missing → UNKNOWN."""
    up = col.str.strip_chars().str.to_uppercase()
    return up.replace(_LEVEL_ALIASES).fill_null("UNKNOWN").replace("", "UNKNOWN")


# ------------------------------------------------------------------ frames


def finish(frames: list[pl.DataFrame], modality: str, sort_by: list[str], *, maintain_order: bool = True) -> pl.DataFrame:
    """Concatenate, conform to the canonical schema and sort deterministically.

    Text sort keys with repeated values (services, entities, kinds) are sorted as Enums whose
    categories are the sorted distinct values: the same order as sorting the text, at the cost
    of integer keys (a stable sort on text keys was most of a read, issue 11)."""
    if not frames:
        return empty(modality)
    df = conform(pl.concat([conform(f, modality) for f in frames], how="vertical"), modality)
    by_first = _sorted_by_distinct_first(df, sort_by)
    if by_first is not None:
        return by_first
    return df.sort([_sort_key(df, c) for c in sort_by], maintain_order=maintain_order, nulls_last=True)


def _sorted_by_distinct_first(df: pl.DataFrame, sort_by: list[str]) -> pl.DataFrame | None:
    """``df`` sorted by its first key alone when that key is an integer without nulls or repeats
    (span start times usually are): then the later keys cannot change the order, and sorting on
    text ids as well was a third of a GAIA trace read (issue 11). None when the key has ties."""
    first = df[sort_by[0]]
    if len(sort_by) < 2 or df.height < 2 or not first.dtype.is_integer() or first.null_count():
        return None
    order = first.arg_sort()
    ranked = first.gather(order)
    if bool((ranked.slice(1) == ranked.slice(0, ranked.len() - 1)).any()):
        return None
    return df[order]


_KEY_SAMPLE = 4096  # rows whose distinct count tells an id column from a label column


def _sort_key(df: pl.DataFrame, column: str) -> pl.Expr:
    """``column`` itself, or for text with at most one distinct value per 4 rows its Enum rank.

    Either key gives the same order; the choice is only about speed. A first sample with more
    than one distinct value per 4 rows (ids) settles it without hashing the whole column."""
    col = df[column]
    if col.dtype != pl.Utf8 or df.height < 1024:
        return pl.col(column)
    sample = col.head(_KEY_SAMPLE).drop_nulls()
    if sample.n_unique() * 4 > max(sample.len(), 1024):
        return pl.col(column)
    distinct = col.drop_nulls().unique()
    if distinct.len() * 4 > df.height:
        return pl.col(column)
    return pl.col(column).cast(pl.Enum(distinct.sort().to_list()))


def melt_metrics(df: pl.DataFrame, ts: pl.Series, entity: str, path: Path, skip: Iterable[str],
                 points: MetricPoints) -> None:
    """Wide per-entity table → long metric points in ``points``; non-numeric columns skipped, bad cells named.

    ``ts`` holds no nulls (the readers drop rows without a time first)."""
    skip = set(skip)
    cols = {}
    for c in df.columns:
        if c in skip or c == "" or c.startswith("Unnamed"):
            continue
        if df[c].dtype.is_numeric():
            cols[c] = df[c].cast(pl.Float64)
        elif is_numeric_column(df[c]):
            cols[c] = to_float(df[c], path, c)
        else:
            log.info("%s: column '%s' holds no numbers, not a metric: skipped", path, c)
    note_dropped(path, points.add(entity, ts, cols))


def note_dropped(path: Path, dropped: int) -> None:
    """Says how many missing/NaN values of a metric file were left out of its points."""
    if dropped:
        log.info("%s: %d missing/NaN metric values dropped (gap filling happens in the metrics stage)", path, dropped)


# ------------------------------------------------------------------ spans: duplicates and links


def _ids(df: pl.DataFrame, n: int = 3) -> str:
    return ", ".join(f"trace {t} span {sp}" for t, sp in df.select("trace_id", "span_id").head(n).iter_rows())


def dedupe_spans(spans: pl.DataFrame, source: str) -> pl.DataFrame:
    """Drop repeated spans; a spanID reused with *different* content is a counted warning.

    Exact repeats are normal (the Jaeger export repeats whole traces). Two different records
    under one (trace, span) id are a warning, not an error: a late flush can rewrite a span, and
    one corrupt id among millions should not stop a dump; the first record (in file order) is
    kept and the ids are named so the user can look.
    """
    if spans.height == 0:
        return spans
    key = ["trace_id", "span_id"]
    if span_ids_unique(spans):
        return spans
    distinct = spans.unique(maintain_order=True)
    clash = distinct.filter(pl.len().over(key) > 1)
    if clash.height:
        groups = clash.unique(subset=key, maintain_order=True)
        log.warning("%s: %d span id(s) reused by different spans (%d records); the first record of each is kept "
                    "(%s)", source, groups.height, clash.height, _ids(groups))
    return distinct.unique(subset=key, keep="first", maintain_order=True)


def span_ids_unique(spans: pl.DataFrame) -> bool:
    """Whether each (trace_id, span_id) pair occurs once (nulls alike): the pairs' hashes counted
    first (equal pairs hash alike, so as many distinct hashes as rows settles it), the pairs
    themselves only when two hashes meet."""
    if spans.height < 2:
        return True
    if spans.select(_pair_hash("trace_id", "span_id").n_unique()).item() == spans.height:
        return True
    return not bool(spans.select("trace_id", "span_id").is_duplicated().any())


_HASH_SEEDS = (0x5EED, 0xC0FFEE)


def _pair_hash(first: str, second: str) -> pl.Expr:
    """One u64 per (first, second) text pair: equal pairs (nulls alike) get equal hashes, so a join
    or duplicate test on it finds every true match, and only needs checking for collisions."""
    return pl.col(first).hash(_HASH_SEEDS[0]) ^ pl.col(second).hash(_HASH_SEEDS[1])


def parent_rows(spans: pl.DataFrame) -> np.ndarray:
    """Row of each span's parent in the same trace, -1 for none (null ids match nothing); (trace,
    span) ids must be unique (:func:`span_ids_unique`; the readers' :func:`dedupe_spans` sees to it), so
    the left join keeps one row per span."""
    parent = _parent_rows_hashed(spans)
    if parent is None:  # a hash collision: the join on the ids themselves
        idx = spans.select("trace_id", "span_id").with_row_index("_i")
        parent = (spans.select("trace_id", pl.col("parent_id").alias("span_id"))
                  .join(idx, on=["trace_id", "span_id"], how="left", maintain_order="left")["_i"])
        return parent.fill_null(-1).cast(pl.Int64).to_numpy().copy()
    return parent


def _parent_rows_hashed(spans: pl.DataFrame) -> np.ndarray | None:
    """:func:`parent_rows` by a join on one u64 per id pair instead of on two text columns (most
    of the parent check, issue 11); None when two different id pairs share a hash.

    The join is an inner one of the linked spans only, lazy and in no particular order (a third
    of the ordered left join's time on GAIA's 8.6 M spans); each match is then put at its child's
    row, so the order of the join's output does not matter."""
    known = pl.col("trace_id").is_not_null()
    own = pl.when(known & pl.col("span_id").is_not_null()).then(_pair_hash("trace_id", "span_id"))
    up = pl.when(known & pl.col("parent_id").is_not_null()).then(_pair_hash("trace_id", "parent_id"))
    keys = spans.lazy().select(up.alias("_k"), own.alias("_own")).collect()
    children = keys.lazy().select("_k").with_row_index("_c").filter(pl.col("_k").is_not_null())
    rows = keys.lazy().select(pl.col("_own").alias("_k")).with_row_index("_i").filter(pl.col("_k").is_not_null())
    found = children.join(rows, on="_k", how="inner").select("_c", "_i").collect()
    if found["_c"].n_unique() != found.height:  # a span matched two rows: two id pairs share a hash
        return None
    child = spans.select("trace_id", "parent_id")[found["_c"]]
    parent = spans.select("trace_id", "span_id")[found["_i"]]
    if not (child["trace_id"].equals(parent["trace_id"]) and child["parent_id"].equals(parent["span_id"])):
        return None  # a hash collision matched different ids
    out = np.full(spans.height, -1, np.int64)
    out[found["_c"].to_numpy()] = found["_i"].to_numpy()
    return out


def _all_reach_a_root(p: np.ndarray, steps: int = 64) -> bool:
    """True when every parent chain ends at a root within ``steps`` links: then no span sits on a
    cycle. Real traces are a few levels deep, so this settles the usual case in a few passes over
    the linked spans instead of the pointer doubling's log2(n) passes over all of them."""
    cur = p[p >= 0]
    for _ in range(steps):
        if not cur.size:
            return True
        cur = p[cur]
        cur = cur[cur >= 0]
    return not cur.size


def cut_bad_parents(spans: pl.DataFrame, source: str) -> pl.DataFrame:
    """Self-parent spans and parent cycles lose their parent link (they become roots), counted.

    A counted warning, not an error: the spans' own times and services are sound, only the link is
    impossible; cutting it keeps the data while no call edge is made up from it. The message names
    trace and span ids.
    """
    if spans.height == 0:
        return spans
    p = parent_rows(spans)
    if _all_reach_a_root(p):
        return spans
    n = len(p)
    # pointer doubling: after k rounds q[i] is the 2^k-th ancestor; past n steps only a cycle remains
    q = p.copy()
    for _ in range(max(1, int(np.ceil(np.log2(n + 1))) + 1)):
        q = np.where(q >= 0, q[np.maximum(q, 0)], -1)
    in_cycle = np.zeros(n, bool)
    frontier = np.unique(q[q >= 0])
    while frontier.size:
        new = frontier[~in_cycle[frontier]]
        in_cycle[new] = True
        frontier = p[new]
        frontier = frontier[frontier >= 0]
    if not in_cycle.any():
        return spans
    bad = spans.filter(pl.Series(in_cycle))
    selfish = bad.filter(pl.col("parent_id") == pl.col("span_id"))
    log.warning("%s: %d span(s) in %d trace(s) are their own parent (%d) or sit on a parent cycle (%d); their "
                "parent links are cut so no call edge is made up (%s)", source, bad.height,
                bad["trace_id"].n_unique(), selfish.height, bad.height - selfish.height, _ids(bad))
    return spans.with_columns(pl.when(pl.Series(in_cycle)).then(None).otherwise(pl.col("parent_id"))
                              .alias("parent_id"))
