"""The logs stage's reading in buckets of whole services against the whole read.

Buckets hold disjoint services and, per service, the whole frame's lines in the same order; the
tables and the saved miners written from them are the whole path's, byte for byte where they are
written as one frame; bad input raises the same error; nothing is left in the spill folders.
"""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from stages.core.errors import InputError
from stages.features.log_buckets import write_log_tables
from stages.features.params import LogsParams
from stages.formats import _log_reading, read_log_buckets, read_modality, reader
from stages.simulate.generate import generate
from stages.simulate.params import SynthParams

SHARES = (40, 3, 0)  # buckets of 1/40 of the dump's log input, of 1/3, one bucket


def _sizes(fmt: str, root: Path) -> list[int]:
    total = sum(p.stat().st_size for p in reader(fmt).log_reading(root).files)
    return [max(1, total // share) if share else 10**12 for share in SHARES]


def _buckets(fmt: str, root: Path, spill: Path, size: int) -> list[pl.DataFrame]:
    spill.mkdir(parents=True, exist_ok=True)
    got = list(read_log_buckets(fmt, root, spill, bucket_bytes=size))
    assert not any(spill.iterdir()), "spill files left behind"
    return got


def _service(df: pl.DataFrame) -> pl.Series:
    return df.select(_log_reading.service_key()).to_series()


def _check_reader(fmt: str, root: Path, tmp: Path) -> None:
    whole = read_modality(fmt, root, "logs")
    for size in _sizes(fmt, root):
        buckets = _buckets(fmt, root, tmp / f"r{size}", size)
        seen: set[str] = set()
        for bucket in buckets:
            services = set(_service(bucket).to_list())
            assert not services & seen, "a service in two buckets"
            seen |= services
            assert_frame_equal(bucket, whole.filter(_service(whole).is_in(list(services))))
        assert seen == set(_service(whole).to_list())
        assert sum(b.height for b in buckets) == whole.height
    assert len(_buckets(fmt, root, tmp / "r-most", _sizes(fmt, root)[0])) > 1


def _tables(fmt: str, root: Path, tmp: Path, size: int) -> tuple[dict, dict[str, bytes]]:
    out, spill = tmp / f"out{size}", tmp / f"spill{size}"
    out.mkdir(parents=True)
    spill.mkdir(parents=True)
    got = write_log_tables(read_log_buckets(fmt, root, spill, bucket_bytes=size), out, spill, LogsParams(), 20.0)
    assert not [p for p in spill.rglob("*") if p.is_file()], "spill files left behind"
    return got.__dict__, {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def _check_tables(fmt: str, root: Path, tmp: Path) -> None:
    want_summary, want = _tables(fmt, root, tmp, 10**12)  # one bucket: mine_templates on the whole frame
    for size in _sizes(fmt, root)[:-1]:
        summary, got = _tables(fmt, root, tmp, size)
        assert summary == want_summary
        assert got == want  # tables, Drain3 states and index: the same bytes


@pytest.fixture(scope="module")
def dumps(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("log-buckets")
    params = SynthParams(hours=6.0, services=4, requests_per_s=0.2)
    out = {}
    for fmt in ("msds", "gaia", "eadro"):
        out[fmt] = base / fmt
        generate(f"logb_{fmt}", fmt, out[fmt], params, seed=3)
    return out


@pytest.mark.parametrize("fmt", ["msds", "gaia", "eadro"])
def test_buckets_hold_the_whole_reads_lines_service_by_service(dumps, fmt, tmp_path):
    _check_reader(fmt, dumps[fmt], tmp_path)


@pytest.mark.parametrize("fmt", ["msds", "gaia", "eadro"])
def test_tables_and_miners_from_buckets_are_the_whole_paths(dumps, fmt, tmp_path):
    _check_tables(fmt, dumps[fmt], tmp_path)


@pytest.mark.parametrize("fmt", ["msds", "gaia"])
def test_csv_logs_read_in_blocks_bucket_alike(dumps, fmt, tmp_path, monkeypatch):
    """Log CSVs (MSDS exports, GAIA business tables) come to the spill block by block: with blocks of
    a few KB the buckets, the tables and the miners are still the whole read's."""
    from stages.formats import _common as c

    root = dumps[fmt]
    _, want = _tables(fmt, root, tmp_path / "whole", 10**12)
    monkeypatch.setattr(c, "CSV_BLOCK_BYTES", 4096)
    assert max(p.stat().st_size for p in reader(fmt).log_reading(root).files) > 4 * 4096  # several blocks
    _check_reader(fmt, root, tmp_path / "blocks")
    for size in _sizes(fmt, root)[:-1]:
        assert _tables(fmt, root, tmp_path / f"blocks{size}", size)[1] == want


def test_real_samples_in_buckets(shared_data, tmp_path):
    root = shared_data / "tt-eadro"  # 8,457 lines of 13 services
    _check_reader("eadro", root, tmp_path / "eadro")
    _check_tables("eadro", root, tmp_path / "eadro")


def test_large_events_go_out_chunk_by_chunk(dumps, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from stages.features import chunked

    root = dumps["gaia"]
    _, want = _tables("gaia", root, tmp_path / "whole", 10**12)
    monkeypatch.setattr(chunked, "HOLD_BYTES", 0)
    _, got = _tables("gaia", root, tmp_path / "chunks", _sizes("gaia", root)[0])
    path = tmp_path / "events.parquet"
    path.write_bytes(got["log_events.parquet"])
    assert pq.ParquetFile(path).metadata.num_row_groups > 1
    assert_frame_equal(pl.read_parquet(path), pl.read_parquet(io.BytesIO(want["log_events.parquet"])))
    assert {k: v for k, v in got.items() if k != "log_events.parquet"} == {
        k: v for k, v in want.items() if k != "log_events.parquet"}


def test_bad_input_raises_the_whole_reads_error_after_the_last_bucket(dumps, tmp_path):
    root = tmp_path / "gaia"
    shutil.copytree(dumps["gaia"], root)
    table = sorted((root / "business").glob("*.csv"))[0]
    lines = table.read_text().splitlines()
    lines[1] = lines[1].replace("2021-", "2018-")  # a time three years before the rest
    table.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as whole:
        read_modality("gaia", root, "logs")
    with pytest.raises(InputError) as buckets:
        _buckets("gaia", root, tmp_path / "s", _sizes("gaia", root)[0])
    assert "within a year" in str(whole.value) and str(buckets.value) == str(whole.value)
