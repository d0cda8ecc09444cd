"""DVC stage ``sources@<ds>``: a digest of the windows of the source systems ``<ds>`` learns from.

KAD-Disformer pre-trains on, and MetaLog meta-learns from, other datasets' windows
(``datasets.<ds>.sources``). DVC cannot turn that params list into deps, so their training stages
depend on this small JSON instead of the whole ``data/windows`` folder: adding or changing a dataset
that is not a source of ``<ds>`` leaves the digest, and so ``<ds>``'s trained models, untouched.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
from pathlib import Path

from stages.core.cli import run_stage
from stages.core.errors import InputError
from stages.core.io import write_json
from stages.core.params import dataset as dataset_params, load_checked
from stages.core.windowset import windows_dir

log = logging.getLogger("stages.sources")
SOURCES_ROOT = Path("data/sources")


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def source_manifest(ds: str, sources: list[str], windows_root: Path) -> dict:
    """sha256 of every file of each source's windows folder (sorted; the order of ``sources`` kept)."""
    out: dict[str, dict[str, str]] = {}
    for src in sources:
        if src == ds:
            continue
        folder = windows_dir(src, windows_root)
        if not folder.is_dir():
            raise InputError("params.yaml", f"datasets.{ds}.sources",
                             f"datasets whose windows exist ({folder} is missing: list {src} in "
                             "pipeline.datasets too, so its windows are built)", src)
        out[src] = {str(p.relative_to(folder)): file_digest(p)
                    for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".gitignore"}
    return {"dataset": ds, "sources": out}


def run(ds: str, raw: dict | None = None, windows_root: Path = Path("data/windows"),
        out_root: Path = SOURCES_ROOT) -> dict:
    raw = load_checked() if raw is None else raw
    manifest = source_manifest(ds, list(dataset_params(ds, raw).sources), windows_root)
    write_json(manifest, out_root / f"{ds}.json")
    log.info("sources@%s: %s", ds, sorted(manifest["sources"]) or "none")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.sources", description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    a = ap.parse_args(argv)
    return run_stage(lambda: run(a.dataset))


if __name__ == "__main__":
    raise SystemExit(main())
