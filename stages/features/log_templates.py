"""Log lines → Drain3 templates (one miner per service), per-line events and per-step template counts.

Drain3 runs per service shard in a fixed order (services sorted, lines by ts then text), so
the same dump always yields the same template ids. Lines go through :class:`CachedMiner`,
which gives exactly plain Drain3's clusters and state, only faster on repeated lines. The miners'
state is saved so that new logs can be parsed by the very same miners (:func:`load_miners`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from drain3 import TemplateMiner
from drain3.file_persistence import FilePersistence
from drain3.masking import MaskingInstruction
from drain3.template_miner_config import TemplateMinerConfig
from tqdm import tqdm

from stages.core.errors import InputError
from stages.core.frames import conform
from stages.core.io import dumps_json
from stages.core.params import build
from stages.core.splits import grid
from stages.features.drain_cache import CachedMiner, TokenMasker
from stages.features.params import LogsParams

log = logging.getLogger(__name__)

OTHER_TEMPLATE = "<other>"
UNKNOWN_SERVICE = "unknown"
INDEX_FILE = "index.json"
TEMPLATE_SCHEMA = {"template_id": pl.Int64, "template": pl.Utf8, "service": pl.Utf8, "count": pl.Int64,
                   "first_ts": pl.Int64}
EVENT_SCHEMA = {"ts": pl.Int64, "step_ts": pl.Int64, "service": pl.Utf8, "template_id": pl.Int64, "level": pl.Utf8}


def miner_config(params: LogsParams) -> TemplateMinerConfig:
    cfg = TemplateMinerConfig()
    cfg.drain_sim_th = params.sim_th
    cfg.drain_depth = params.depth
    cfg.drain_max_children = params.max_children
    cfg.drain_max_clusters = params.max_clusters
    cfg.masking_instructions = ([MaskingInstruction(m.pattern, m.name) for m in params.masks]
                                if params.masking else [])
    cfg.snapshot_compress_state = True
    cfg.profiling_enabled = False
    return cfg


def new_miner(params: LogsParams) -> TemplateMiner:
    """A fresh in-memory miner (no persistence while mining: saving on every change is slow)."""
    return TemplateMiner(persistence_handler=None, config=miner_config(params))


@dataclass
class MinedLogs:
    templates: pl.DataFrame  # TEMPLATE_SCHEMA, template_id contiguous 0..K-1
    events: pl.DataFrame  # EVENT_SCHEMA, one row per line, sorted by ts then service
    miners: dict[str, TemplateMiner] = field(default_factory=dict)
    cluster_to_template: dict[str, dict[int, int]] = field(default_factory=dict)  # service → Drain3 id → template_id
    other_template: dict[str, int] = field(default_factory=dict)  # service → id of its "<other>" template


def clean_logs(logs: pl.DataFrame) -> pl.DataFrame:
    """Canonical lines in mining order; blank services become ``unknown``, null text becomes empty."""
    df = conform(logs, "logs")
    no_ts = df["ts"].null_count()
    if no_ts:
        log.warning("dropped %d log lines without a timestamp", no_ts)
        df = df.filter(pl.col("ts").is_not_null())
    return df.with_columns(
        pl.when(pl.col("service").is_null() | (pl.col("service").str.strip_chars() == ""))
        .then(pl.lit(UNKNOWN_SERVICE)).otherwise(pl.col("service")).alias("service"),
        pl.col("message").fill_null(""),
        pl.col("level").fill_null(""),
    ).sort(["service", "ts", "message", "level"])


def mine_templates(logs: pl.DataFrame, params: LogsParams, step_s: float) -> MinedLogs:
    """Run one Drain3 miner per service over its lines and number the templates globally."""
    df = clean_logs(logs)
    miners, cluster_ids = mine_services(df, params)
    templates, mapping, other = number_templates(cluster_counts(df, cluster_ids), miners, params)
    events = (df.select("ts", "service", "level").with_columns(pl.Series("cluster", cluster_ids))
              .sort(["ts", "service"], maintain_order=True))
    events = label_events(events, template_lookup(mapping), step_s)
    log.info("drain3: %d lines of %d services → %d templates", df.height, len(miners), templates.height)
    return MinedLogs(templates=templates, events=events, miners=miners, cluster_to_template=mapping,
                     other_template=other)


def mine_services(df: pl.DataFrame, params: LogsParams) -> tuple[dict[str, TemplateMiner], np.ndarray]:
    """One miner per service of ``clean_logs`` lines, each over its lines in order; each line's Drain3 cluster id."""
    miners: dict[str, TemplateMiner] = {}
    cluster_ids = np.zeros(df.height, dtype=np.int64)
    bounds = df.with_row_index("_i").group_by("service", maintain_order=True).agg(
        pl.col("_i").min().alias("lo"), pl.col("_i").max().alias("hi"))
    masked = TokenMasker(new_miner(params).masker).mask_all(df["message"])  # the masks are per line
    for service, lo, hi in tqdm(bounds.iter_rows(), total=bounds.height, desc="drain3", unit="service",
                                disable=None):
        cached = CachedMiner(new_miner(params))
        for i in range(lo, hi + 1):
            cluster_ids[i] = cached.add_masked(masked[i])
        miners[service] = cached.miner
    return miners, cluster_ids


def cluster_counts(df: pl.DataFrame, cluster_ids: np.ndarray) -> pl.DataFrame:
    """Lines and first time per (service, Drain3 cluster), sorted."""
    return (df.select("service", "ts").with_columns(pl.Series("cluster", cluster_ids))
            .group_by(["service", "cluster"]).agg(pl.len().alias("count"), pl.col("ts").min().alias("first_ts"))
            .sort(["service", "cluster"]))


def number_templates(per_cluster: pl.DataFrame, miners: dict[str, TemplateMiner], params: LogsParams
                     ) -> tuple[pl.DataFrame, dict[str, dict[int, int]], dict[str, int]]:
    """Template ids 0..K-1 over the services in sorted order (clusters of fewer than ``min_count``
    lines folded into the service's ``<other>``): (templates, service → cluster → id, service → other id)."""
    rows: list[tuple[int, str, str, int, int]] = []
    mapping: dict[str, dict[int, int]] = {}
    other: dict[str, int] = {}
    for service in sorted(miners):
        clusters = per_cluster.filter(pl.col("service") == service)
        clusters_by_id = {c.cluster_id: c for c in miners[service].drain.clusters}
        mapping[service] = {}
        rare_count, rare_first, rare_ids = 0, None, []
        for cid, count, first_ts in clusters.select("cluster", "count", "first_ts").iter_rows():
            if count < params.min_count:
                rare_count += count
                rare_first = first_ts if rare_first is None else min(rare_first, first_ts)
                rare_ids.append(cid)
                continue
            mapping[service][cid] = len(rows)
            rows.append((len(rows), clusters_by_id[cid].get_template(), service, count, first_ts))
        if rare_ids:
            other[service] = len(rows)
            for cid in rare_ids:
                mapping[service][cid] = len(rows)
            rows.append((len(rows), OTHER_TEMPLATE, service, rare_count, rare_first))
    if other:
        log.info("folded rare templates (< %d lines) into '%s' for %d services", params.min_count, OTHER_TEMPLATE,
                 len(other))
    return pl.DataFrame(rows, schema=TEMPLATE_SCHEMA, orient="row"), mapping, other


def template_lookup(mapping: dict[str, dict[int, int]]) -> pl.DataFrame:
    return pl.DataFrame([(s, c, t) for s, m in mapping.items() for c, t in m.items()],
                        schema={"service": pl.Utf8, "cluster": pl.Int64, "template_id": pl.Int64}, orient="row")


def label_events(lines: pl.DataFrame, lookup: pl.DataFrame, step_s: float) -> pl.DataFrame:
    """Lines (ts, service, level, Drain3 cluster), in event order → :data:`EVENT_SCHEMA` rows, same order."""
    step = int(round(step_s * 1_000_000))
    return (lines.join(lookup, on=["service", "cluster"], how="left", maintain_order="left")
            .with_columns(((pl.col("ts") // step) * step).alias("step_ts"))
            .select(list(EVENT_SCHEMA)))


def log_counts(events: pl.DataFrame, templates: pl.DataFrame, step_s: float) -> pl.DataFrame:
    """Raw per-step line counts of every template (``<service>/<template_id>``), 0 when none; not normalised."""
    if events.height == 0:
        return pl.DataFrame(schema={"ts": pl.Int64, **{n: pl.Float32 for n in _count_names(templates)}})
    g = grid(int(events["ts"].min()), int(events["ts"].max()), step_s)
    step = int(round(step_s * 1_000_000))
    t = (events["step_ts"].to_numpy() - g[0]) // step
    k = events["template_id"].to_numpy()
    K = templates.height
    counts = np.bincount(t * K + k, minlength=len(g) * K).reshape(len(g), K).astype(np.float32)
    return count_columns(g, counts, templates)


def _count_names(templates: pl.DataFrame) -> list[str]:
    return [f"{s}/{t}" for s, t in zip(templates["service"].to_list(), templates["template_id"].to_list())]


def count_columns(g: np.ndarray, counts: np.ndarray, templates: pl.DataFrame) -> pl.DataFrame:
    """The counts table: ``ts`` (the grid) and one float32 column per template (a column of ``counts``)."""
    return pl.DataFrame([pl.Series("ts", g, dtype=pl.Int64)]
                        + [pl.Series(n, counts[:, j], dtype=pl.Float32) for j, n in enumerate(_count_names(templates))])


def save_miners(mined: MinedLogs, params: LogsParams, directory: str | Path) -> None:
    """One Drain3 state file per service (FilePersistence) + ``index.json`` mapping Drain3 ids to template ids."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, service in enumerate(sorted(mined.miners)):
        name = f"service_{i:04d}.drain3"
        miner = mined.miners[service]
        miner.persistence_handler = FilePersistence(str(directory / name))
        miner.save_state("final state after mining")
        miner.persistence_handler = None
        entries.append({
            "service": service,
            "state_file": name,
            "cluster_to_template": {str(c): t for c, t in sorted(mined.cluster_to_template[service].items())},
            "other_template_id": mined.other_template.get(service),
        })
    index = {"params": dataclasses.asdict(params), "services": entries}
    (directory / INDEX_FILE).write_text(dumps_json(index), encoding="utf-8")


@dataclass
class SavedMiners:
    """The miners of one dataset, reloaded: parse new lines with the templates ids of the feature tables."""

    params: LogsParams
    miners: dict[str, TemplateMiner]
    cluster_to_template: dict[str, dict[int, int]]

    def match(self, service: str, line: str) -> int | None:
        """template_id of ``line`` under the service's miner; None for an unknown service or template."""
        miner = self.miners.get(service or UNKNOWN_SERVICE)
        if miner is None:
            return None
        cluster = miner.match(line or "", full_search_strategy="fallback")
        if cluster is None:
            return None
        return self.cluster_to_template[service or UNKNOWN_SERVICE].get(cluster.cluster_id)

    def match_many(self, service: str, lines: list[str]) -> np.ndarray:
        """template_id of every line of one service (-1: no template matches, or no miner for the service).

        Same result as :meth:`match` line by line; lines are masked first and each distinct masked
        line is matched once (production logs repeat), and the miners are never updated.
        """
        out = np.full(len(lines), -1, dtype=np.int64)
        miner = self.miners.get(service or UNKNOWN_SERVICE)
        if miner is None:
            return out
        mapping = self.cluster_to_template[service or UNKNOWN_SERVICE]
        cache: dict[str, int] = {}
        for i, line in enumerate(lines):
            masked = miner.masker.mask(line or "")
            tid = cache.get(masked)
            if tid is None:
                cluster = miner.drain.match(masked, "fallback")
                tid = -1 if cluster is None else mapping.get(cluster.cluster_id, -1)
                cache[masked] = tid
            out[i] = tid
        return out


def load_miners(directory: str | Path) -> SavedMiners:
    directory = Path(directory)
    index_path = directory / INDEX_FILE
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        params = build(LogsParams, index["params"], where="params", source=index_path)
        entries = index["services"]
    except FileNotFoundError:
        raise InputError(index_path, None, "a saved Drain3 index (run the logs stage first)") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InputError(index_path, None, f"a Drain3 index with 'params' and 'services' ({exc})") from None
    miners, mapping = {}, {}
    for entry in entries:
        state = directory / entry["state_file"]
        if not state.is_file():
            raise InputError(state, None, f"the Drain3 state of service {entry['service']!r}")
        try:
            miner = TemplateMiner(persistence_handler=FilePersistence(str(state)), config=miner_config(params))
        except Exception as exc:  # zlib / base64 / jsonpickle errors of a damaged file
            raise InputError(state, None, f"a readable Drain3 state ({type(exc).__name__}: {exc})") from None
        miner.persistence_handler = None  # read-only: matching never writes the state back
        miners[entry["service"]] = miner
        mapping[entry["service"]] = {int(c): int(t) for c, t in entry["cluster_to_template"].items()}
    return SavedMiners(params=params, miners=miners, cluster_to_template=mapping)
