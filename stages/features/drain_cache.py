"""Drain3 mining with exact caches: identical clusters, templates and per-line ids, several times faster.

Production logs repeat, so most of Drain3's work is redone on lines it has already seen. Two
caches skip that work without changing any result:

* Masking is a pure function of the line. It is memoised per raw line and, when every mask is
  *space-local* (:func:`space_local`: a match never contains a space and the regex sees a space
  exactly as it sees the start or end of the text), per space-separated token: masking each token
  alone then gives exactly the masked line. Unknown tokens of a line are masked together in one
  pass per regex.
* Drain3 routes a masked line through state that only a new cluster or a changed template can
  alter, and only for lines of that cluster's token count (the prefix tree's first level is the
  token count, and similarity compares equal-length sequences). A masked line whose last
  ``add_log_message`` changed nothing is therefore routed to the same cluster, again with no change,
  until a cluster of its token count is created or generalised; each token count keeps an epoch
  that such events advance, and a cached route is used only while its epoch is unchanged. A hit
  does what Drain3 would do to the state: the cluster's size grows by one (and, with
  ``max_clusters``, the cluster is touched in the LRU). With ``max_clusters`` set a new cluster can
  evict a cluster of any token count, so then every change advances a single shared epoch.

Templates are never cached: a cluster's template is read from the miner when needed, so a cluster
that generalised after a line was cached reports its current template.
"""
from __future__ import annotations

import logging
import re

import polars as pl
from drain3 import TemplateMiner
from drain3.drain import LogCluster
from drain3.masking import LogMasker, MaskingInstruction

try:  # Python >= 3.11
    from re import _constants as C, _parser as P
except ImportError:  # pragma: no cover - older interpreters
    import sre_constants as C  # type: ignore[no-redef]
    import sre_parse as P  # type: ignore[no-redef]

log = logging.getLogger(__name__)

SPACE = 32  # ord(" "): the separator masking can split on
DEFAULT_CACHE_SIZE = 1 << 16  # entries per cache; a full cache is emptied (exactness does not depend on it)
MASK_BATCH_LINES = 1 << 16  # lines masked together by TokenMasker.mask_all (memory, not results, depends on it)
_REPEATS = tuple(getattr(C, name) for name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT") if hasattr(C, name))
_NO_SPACE_CATEGORIES = {C.CATEGORY_DIGIT, C.CATEGORY_WORD, C.CATEGORY_NOT_SPACE}
_SPACE_CATEGORIES = {C.CATEGORY_SPACE, C.CATEGORY_NOT_DIGIT, C.CATEGORY_NOT_WORD}


def _class_has_space(items) -> bool | None:
    """Whether a character class ``[...]`` matches a space; None when the class is not understood."""
    negate, hit = False, False
    for op, av in items:
        if op is C.NEGATE:
            negate = True
        elif op is C.LITERAL:
            hit = hit or av == SPACE
        elif op is C.RANGE:
            hit = hit or av[0] <= SPACE <= av[1]
        elif op is C.CATEGORY and av in _SPACE_CATEGORIES:
            hit = True
        elif not (op is C.CATEGORY and av in _NO_SPACE_CATEGORIES):
            return None
    return hit != negate


def _local(items) -> bool:
    """True when no part of the parsed pattern can consume a space or tell a space from the text's edge."""
    for op, av in items:
        if op is C.LITERAL:
            ok = av != SPACE
        elif op is C.NOT_LITERAL:
            ok = av == SPACE
        elif op is C.IN:
            ok = _class_has_space(av) is False
        elif op in _REPEATS:
            ok = _local(av[2])
        elif op is C.SUBPATTERN:
            ok = _local(av[3])
        elif op in (C.ASSERT, C.ASSERT_NOT):
            ok = _local(av[1])
        elif op is C.BRANCH:
            ok = all(_local(branch) for branch in av[1])
        elif getattr(C, "ATOMIC_GROUP", None) is not None and op is C.ATOMIC_GROUP:
            ok = _local(av)
        elif op is C.AT:
            # \b and \B see a space and the text's edge alike (both non-word); ^ $ \A \Z do not.
            ok = av in (C.AT_BOUNDARY, C.AT_NON_BOUNDARY)
        else:  # ANY (matches a space), back-references, conditionals, anything unknown
            ok = False
        if not ok:
            return False
    return True


def space_local(regex: re.Pattern) -> bool:
    """Whether ``regex.sub`` on a text equals ``regex.sub`` on each of its space-separated pieces, joined.

    Sufficient conditions, checked on the parsed pattern: every match consumes at least one
    character, no match can contain a space, and every assertion (look-arounds, ``\\b``) reads a
    neighbouring space exactly as the text's start or end. Then a match can neither span a space
    nor start on one, and the engine tries each piece's positions with the same outcome as in the
    whole text. Patterns outside the understood subset are reported as not local.
    """
    if not isinstance(regex.pattern, str):
        return False
    try:
        parsed = P.parse(regex.pattern, regex.flags)
    except (re.error, RecursionError):  # pragma: no cover - it compiled, so it parses
        return False
    return parsed.getwidth()[0] >= 1 and _local(parsed.data)


class TokenMasker:
    """Drain3's masking (``LogMasker.mask``) with a per-token memo when every mask is space-local."""

    def __init__(self, masker: LogMasker, cache_size: int = DEFAULT_CACHE_SIZE):
        self.masker = masker
        self.cache_size = cache_size
        instructions = list(masker.masking_instructions)
        replacements = [masker.mask_prefix + mi.mask_with + masker.mask_suffix for mi in instructions]
        # Batch masking splits the output on spaces again, so a replacement must not insert one (nor
        # be a template with escapes that might).
        self.per_token = bool(instructions) and all(
            type(mi) is MaskingInstruction and space_local(mi.regex) for mi in instructions) and not any(
            " " in r or "\\" in r for r in replacements)
        self.identity = not instructions
        # MaskingInstruction.mask is ``regex.sub(prefix + name + suffix, text)``: call the subs directly.
        self._subs = [(mi.regex.sub, r) for mi, r in zip(instructions, replacements)] if self.per_token else []
        self._tokens: dict[str, str] = {}
        if instructions and not self.per_token:
            log.info("a mask is not space-local: masking whole lines (memoised per line only)")

    def mask(self, line: str) -> str:
        if self.identity:
            return line
        if not self.per_token:
            return self.masker.mask(line)
        tokens = self._tokens
        if len(tokens) > self.cache_size:
            tokens.clear()
        parts = line.split(" ")
        missing = [t for t in parts if t not in tokens]
        if missing:
            text = " ".join(missing)
            for sub, replacement in self._subs:
                text = sub(replacement, text)
            tokens.update(zip(missing, text.split(" ")))
        return " ".join([tokens[t] for t in parts])

    def mask_all(self, lines: pl.Series, batch_lines: int = MASK_BATCH_LINES) -> list[str]:
        """:meth:`mask` of every line, in order. Within each batch of lines, each distinct line (each
        distinct token, when every mask is space-local) is masked once, and the splitting, lookup and
        joining run in polars; batches bound the memory of those intermediate columns."""
        if self.identity:
            return lines.to_list()
        out: list[str] = []
        for start in range(0, lines.len(), batch_lines):
            out.extend(self._mask_batch(lines.slice(start, batch_lines)).to_list())
        return out

    def _mask_batch(self, lines: pl.Series) -> pl.Series:
        distinct = lines.unique()
        if self.per_token:
            tokens = distinct.str.split(" ")
            vocab = tokens.explode().unique()
            text = " ".join(vocab.to_list())
            for sub, replacement in self._subs:
                text = sub(replacement, text)
            masked_vocab = pl.Series(text.split(" "), dtype=pl.String)
            masked = tokens.list.eval(pl.element().replace_strict(vocab, masked_vocab)).list.join(" ")
        else:
            masked = pl.Series([self.masker.mask(line) for line in distinct.to_list()], dtype=pl.String)
        table = pl.DataFrame({"line": distinct, "masked": masked})
        return pl.DataFrame({"line": lines}).join(table, on="line", how="left", maintain_order="left")["masked"]


class CachedMiner:
    """``add(line)`` returns what ``miner.add_log_message(line)["cluster_id"]`` would, leaving the same state.

    The wrapper must be the only writer of the miner's state; a miner with a persistence handler
    (which saves on every change) is refused. Read templates from ``miner.drain.clusters``.
    """

    def __init__(self, miner: TemplateMiner, cache_size: int = DEFAULT_CACHE_SIZE):
        if miner.persistence_handler is not None:
            raise ValueError("CachedMiner needs an in-memory miner (persistence_handler=None)")
        self.miner = miner
        self.cache_size = cache_size
        self._drain = miner.drain
        self._lru = miner.drain.max_clusters is not None
        self._masker = TokenMasker(miner.masker, cache_size)
        self._masked: dict[str, str] = {}  # raw line → masked line
        self._routes: dict[str, tuple[LogCluster, int, int]] = {}  # masked line → (cluster, epoch key, epoch)
        self._epochs: dict[int, int] = {}  # token count (-1: all, with max_clusters) → changes so far
        self.hits = 0

    def add(self, line: str) -> int:
        masked = self._masked.get(line)
        if masked is None:
            masked = self._masker.mask(line)
            if len(self._masked) >= self.cache_size:
                self._masked.clear()
            self._masked[line] = masked
        return self.add_masked(masked)

    def add_masked(self, masked: str) -> int:
        """:meth:`add` of a line already masked with this miner's masks (:meth:`TokenMasker.mask_all`)."""
        route = self._routes.get(masked)
        if route is not None:
            cluster, key, epoch = route
            if self._epochs.get(key, 0) == epoch:
                cluster.size += 1
                if self._lru:
                    self._drain.id_to_cluster[cluster.cluster_id]  # noqa: B018 - the LRU touch Drain3 does
                self.hits += 1
                return cluster.cluster_id
        cluster, change = self._drain.add_log_message(masked)
        key = -1 if self._lru else len(cluster.log_template_tokens)
        if change == "none":
            if len(self._routes) >= self.cache_size:
                self._routes.clear()
            self._routes[masked] = (cluster, key, self._epochs.get(key, 0))
        else:
            self._epochs[key] = self._epochs.get(key, 0) + 1
        return cluster.cluster_id
