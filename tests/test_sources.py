"""sources@<ds>: the digest the cross-system training stages depend on instead of all of data/windows."""
from __future__ import annotations

import json

import pytest
import yaml

from stages import sources
from stages.core.errors import InputError


def params(repo_root, **source_lists) -> dict:
    raw = yaml.safe_load((repo_root / "params.yaml").read_text())
    for ds, srcs in source_lists.items():
        raw["datasets"][ds]["sources"] = srcs
    return raw


def windows(root, ds: str, content: bytes = b"grid") -> None:
    (root / ds).mkdir(parents=True, exist_ok=True)
    (root / ds / "grid.npz").write_bytes(content)
    (root / ds / "schema.json").write_text("{}")
    (root / ds / ".gitignore").write_text("/x\n")  # written by DVC, never part of the digest


def test_digest_moves_with_a_source_only(tmp_path, repo_root):
    wroot, out = tmp_path / "windows", tmp_path / "sources"
    for ds in ("synth_msds", "synth_gaia", "synth_tt"):
        windows(wroot, ds)
    raw = params(repo_root, synth_msds=["synth_gaia"])
    first = sources.run("synth_msds", raw, wroot, out)
    assert list(first["sources"]) == ["synth_gaia"]
    assert set(first["sources"]["synth_gaia"]) == {"grid.npz", "schema.json"}
    before = (out / "synth_msds.json").read_bytes()

    windows(wroot, "synth_tt", b"other")      # not a source of synth_msds
    windows(wroot, "synth_msds", b"other")    # the dataset itself: its own windows are a dep of its stages
    sources.run("synth_msds", raw, wroot, out)
    assert (out / "synth_msds.json").read_bytes() == before

    windows(wroot, "synth_gaia", b"changed")  # a source
    sources.run("synth_msds", raw, wroot, out)
    assert json.loads((out / "synth_msds.json").read_text()) != json.loads(before)


def test_a_source_without_windows_is_named(tmp_path, repo_root):
    windows(tmp_path / "windows", "synth_msds")
    raw = params(repo_root, synth_msds=["synth_gaia"])
    with pytest.raises(InputError, match=r"datasets\.synth_msds\.sources.*synth_gaia"):
        sources.run("synth_msds", raw, tmp_path / "windows", tmp_path / "sources")
    assert not (tmp_path / "sources").exists()
