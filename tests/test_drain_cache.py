"""CachedMiner and TokenMasker give exactly plain Drain3's results: cluster ids per line, templates, state."""
from __future__ import annotations

import random
import re

import jsonpickle
import polars as pl
import pytest

from stages.features.drain_cache import DEFAULT_CACHE_SIZE, CachedMiner, TokenMasker, space_local
from stages.features.log_templates import clean_logs, mine_templates, new_miner
from stages.features.params import LogsParams, MaskRule
from stages.formats import read_modality

PARAMS = LogsParams()


def plain_and_cached(lines: list[str], params: LogsParams, cache_size: int = DEFAULT_CACHE_SIZE):
    plain = new_miner(params)
    plain_ids = [plain.add_log_message(line)["cluster_id"] for line in lines]
    cached = CachedMiner(new_miner(params), cache_size=cache_size)
    cached_ids = [cached.add(line) for line in lines]
    return plain, plain_ids, cached, cached_ids


def clusters(miner) -> list[tuple[int, str, int]]:
    return [(c.cluster_id, c.get_template(), c.size) for c in miner.drain.clusters]


def assert_identical(lines: list[str], params: LogsParams, cache_size: int = DEFAULT_CACHE_SIZE) -> CachedMiner:
    plain, plain_ids, cached, cached_ids = plain_and_cached(lines, params, cache_size)
    assert cached_ids == plain_ids
    assert clusters(cached.miner) == clusters(plain)
    # the whole Drain3 state (tree, leaves, templates, sizes, LRU order) is the same object graph
    assert jsonpickle.dumps(cached.miner.drain, keys=True) == jsonpickle.dumps(plain.drain, keys=True)
    return cached


def naive_ids(lines: list[str], params: LogsParams) -> list[int]:
    """A cache of masked line → first cluster id, never invalidated (what must NOT be done)."""
    miner, seen, out = new_miner(params), {}, []
    for line in lines:
        masked = miner.masker.mask(line)
        if masked not in seen:
            seen[masked] = miner.drain.add_log_message(masked)[0].cluster_id
        out.append(seen[masked])
    return out


@pytest.mark.parametrize("pattern", [m.pattern for m in PARAMS.masks] + [r"\d+", r"(?i)\bid[=:]\w+", r"[^\s,]+@\w+"])
def test_default_masks_are_space_local(pattern):
    assert space_local(re.compile(pattern))


@pytest.mark.parametrize("pattern", [r"\d+ ms", r"\s\d+", r"^\d+", r"\d+$", r"a.b", r"[^,]+", r"\d*", r"(\d)-\1",
                                     r"(?<=\s)\d+", r"(?<! )\d+", r"\d+(?= )", r"\D+", r"[\W\d]+", r"\Ax"])
def test_patterns_that_see_spaces_are_not_space_local(pattern):
    assert not space_local(re.compile(pattern))


TRICKY = [
    "", " ", "  a  b ", "a\tb 12\t13", "ip 10.0.0.1:8080, 10.0.0.2 and 1.2.3.4.5 v1.2.3.4",
    "x=12 (34) [56] -7 +8 9.5 .5 5. a5 5a 0x1F 0x 1e5", "uuid 123e4567-e89b-12d3-a456-426614174000x",
    "123e4567-e89b-12d3-a456-426614174000 deadbeefdeadbeef deadbeefdeadbee1 aaaaaaaaaaaaaaa",
    "caf\u00e9 \u0661\u0662\u0663 \uff11\uff12 \u00b2 \u2003 12\u00a034", "<NUM> <*> <*> 5 <IP>",
]


def test_token_masking_equals_drain3_masking_on_odd_lines():
    miner = new_miner(PARAMS)
    masker = TokenMasker(miner.masker)
    assert masker.per_token
    for line in TRICKY + [" ".join(TRICKY), "\n".join(TRICKY)]:
        assert masker.mask(line) == miner.masker.mask(line), line


def test_a_mask_that_is_not_space_local_masks_whole_lines():
    params = LogsParams(masks=(MaskRule(pattern=r"took \d+ ms", name="DUR"),) + PARAMS.masks)
    miner = new_miner(params)
    masker = TokenMasker(miner.masker)
    assert not masker.per_token
    for line in TRICKY + ["call took 12 ms then took 5 ms"]:
        assert masker.mask(line) == miner.masker.mask(line)
    assert_identical(["call took 12 ms", "call took 13 ms", "call took 12 ms"] * 3, params)


@pytest.mark.parametrize("masks", ["default", "not_space_local", "none"])
def test_masking_a_whole_series_equals_masking_line_by_line(masks):
    extra = {"default": (), "not_space_local": (MaskRule(pattern=r"took \d+ ms", name="DUR"),), "none": None}[masks]
    params = LogsParams(masks=()) if extra is None else LogsParams(masks=extra + PARAMS.masks)
    miner = new_miner(params)
    rng = random.Random(3)
    lines = TRICKY + [" ".join(TRICKY), "\n".join(TRICKY), "call took 12 ms then took 5 ms"] + random_stream(rng, 300)
    lines = lines + lines[::-1]  # repeated lines, in another order
    want = [miner.masker.mask(line) for line in lines]
    for batch in (1, 7, len(lines), 1 << 16):
        assert TokenMasker(miner.masker).mask_all(pl.Series(lines, dtype=pl.String), batch) == want, batch
    assert TokenMasker(miner.masker).mask_all(pl.Series([], dtype=pl.String)) == []


# A line cached, then its cluster's template generalises, then the same line again; and a cached
# line whose tree path changes (a new first-token node) so that Drain3 sends it elsewhere.
GENERALISES = ["user alice logged in at home", "user alice logged in at home", "user bob logged in at home",
               "user alice logged in at home", "user alice logged in at home"]
REROUTED = ["v2 open file a b", "x open file a b", "x open file a b", "x close door c d", "x open file a b",
            "x open file a b"]


def test_templates_that_generalise_after_caching_and_rerouted_lines():
    cached = assert_identical(GENERALISES + REROUTED, PARAMS)
    by_id = {c.cluster_id: c.get_template() for c in cached.miner.drain.clusters}
    ids = [cached.miner.match(line).cluster_id for line in GENERALISES]
    assert len(set(ids)) == 1 and by_id[ids[0]] == "user <*> logged in at home"
    # the first "x open file a b" joined the v2 cluster; after "x close door c d" made an "x" node,
    # Drain3 sends it to a new cluster: a never-invalidated cache would have kept the old id
    plain_ids = plain_and_cached(REROUTED, PARAMS)[1]
    assert plain_ids == [1, 1, 1, 2, 3, 3]
    assert naive_ids(REROUTED, PARAMS) != plain_ids


# A cached line ("k9 b c u v" → cluster 2, which has more <*> than cluster 1 at equal similarity)
# is taken by cluster 1 once "k7 b w u v" generalises it: equal similarity, equal <*> count, and
# cluster 1 comes first in the leaf. Only a change to *another* cluster moved the line.
STOLEN = ["k1 b z u v", "k2 b z u v", "k3 s c u v", "k4 t c u v", "k9 b c u v", "k9 b c u v", "k7 b w u v",
          "k9 b c u v"]


def test_a_cached_line_taken_by_another_cluster_that_generalised():
    params = LogsParams(sim_th=0.6)
    assert_identical(STOLEN, params)
    plain_ids = plain_and_cached(STOLEN, params)[1]
    assert plain_ids == [1, 1, 2, 2, 2, 2, 1, 1]
    assert naive_ids(STOLEN, params) != plain_ids


def random_stream(rng: random.Random, n: int) -> list[str]:
    vocab = ["a", "b", "c", "get", "put", "x1", "y22", "<*>", "id=7", "10.0.0.1", "0xff", "ok", "fail"]
    lines = []
    for _ in range(n):
        if lines and rng.random() < 0.5:
            lines.append(rng.choice(lines))  # production logs repeat
        else:
            lines.append(" ".join(rng.choice(vocab) for _ in range(rng.randint(0, 6))))
    return lines


@pytest.mark.parametrize("sim_th,depth,max_children,max_clusters,cache_size", [
    (0.4, 4, 100, None, DEFAULT_CACHE_SIZE), (0.3, 3, 2, None, 8), (0.5, 5, 3, None, DEFAULT_CACHE_SIZE),
    (0.8, 4, 2, None, 3), (0.4, 4, 100, 5, DEFAULT_CACHE_SIZE), (0.3, 5, 3, 3, 8)])
def test_random_streams_give_plain_drain3_results(sim_th, depth, max_children, max_clusters, cache_size):
    params = LogsParams(sim_th=sim_th, depth=depth, max_children=max_children, max_clusters=max_clusters)
    naive_differs = 0
    for seed in range(40):
        lines = random_stream(random.Random(seed), 300)
        assert_identical(lines, params, cache_size)
        naive_differs += naive_ids(lines, params) != plain_and_cached(lines, params)[1]
    assert naive_differs > 0  # the streams do exercise reroutes and generalisation


@pytest.fixture(scope="module")
def tt_lines(shared_data) -> dict[str, list[str]]:
    df = clean_logs(read_modality("eadro", shared_data / "tt-eadro", "logs"))
    by_service: dict[str, list[str]] = {}
    for service, message in zip(df["service"].to_list(), df["message"].to_list()):
        by_service.setdefault(service, []).append(message)
    return by_service


def test_real_tt_lines_masked_as_a_series(tt_lines):
    masker = new_miner(PARAMS).masker
    lines = [line for service in sorted(tt_lines) for line in tt_lines[service]]
    assert TokenMasker(masker).mask_all(pl.Series(lines), 1000) == [masker.mask(line) for line in lines]


def test_real_tt_lines_give_plain_drain3_results(tt_lines):
    masker = TokenMasker(new_miner(PARAMS).masker)
    reference = new_miner(PARAMS).masker
    hits = 0
    for service, lines in tt_lines.items():
        assert all(masker.mask(line) == reference.mask(line) for line in lines)
        hits += assert_identical(lines * 2, PARAMS).hits
    assert hits > sum(len(v) for v in tt_lines.values())  # the second copy is served from the cache


@pytest.mark.parametrize("params", [LogsParams(max_clusters=4), LogsParams(masking=False), LogsParams(sim_th=0.7)])
def test_real_tt_lines_with_other_settings(tt_lines, params):
    for service in sorted(tt_lines)[:4]:
        assert_identical(tt_lines[service] * 2, params, cache_size=64)


def test_mine_templates_keeps_plain_drain3_state(shared_data, tt_lines):
    logs = read_modality("eadro", shared_data / "tt-eadro", "logs")
    mined = mine_templates(pl.concat([logs, logs]), PARAMS, 10)
    for service, lines in tt_lines.items():
        plain = new_miner(PARAMS)
        for line in lines:  # each line twice in a row: mining order is service, ts, message
            plain.add_log_message(line)
            plain.add_log_message(line)
        assert jsonpickle.dumps(mined.miners[service].drain, keys=True) == jsonpickle.dumps(plain.drain, keys=True)


def test_bench_compares_like_for_like(tt_lines):
    from stages.bench_drain import compare, table

    row = compare("tt", {s: tt_lines[s] for s in sorted(tt_lines)[:3]}, PARAMS, rounds=2)
    assert row["identical"] and row["lines"] == sum(len(tt_lines[s]) for s in sorted(tt_lines)[:3])
    assert len(row["plain_cpu_s"]) == len(row["cached_cpu_s"]) == 2
    assert "| tt |" in table([row]) and "| yes |" in table([row])
