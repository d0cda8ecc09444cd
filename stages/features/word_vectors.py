"""Globally consistent template embeddings: tokens → shared word vectors → TF-IDF weighted mean.

Two log systems never share template ids, but they share English words. Embedding a template
as the TF-IDF weighted mean of its words' vectors puts the templates of every system into one
space, which is what lets a detector trained on one system transfer to another (MetaLog).

Word vectors are pluggable: a GloVe-style text file (``word v1 v2 ...`` per line) when the user
has one, or — the offline default — the LLM backbone's input embeddings, a word's vector being
the mean of its word-piece rows. IDF is always fitted on training documents only.
"""
from __future__ import annotations

import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np

from stages.core.errors import InputError

log = logging.getLogger(__name__)

BACKBONE = "backbone"  # value of a ``word_vectors`` param that selects the LLM's input embeddings
_PLACEHOLDER = re.compile(r"<\*>|<[A-Z_]+>")  # Drain's <*> and masks such as <NUM>, <IP>: variables
_NON_ALNUM = re.compile(r"[^0-9A-Za-z]+")
# camelCase / PascalCase / ACRONYMWord pieces, and digit runs (dropped later as variables)
_WORD_PIECE = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")


def tokenize(text: str) -> list[str]:
    """Split on punctuation and camelCase, lower-case, drop placeholders and pure numbers (variables).

    ``"PacketResponder 1 for blk_<*> <NUM>"`` → ``["packet", "responder", "for", "blk"]``.
    """
    words: list[str] = []
    for chunk in _NON_ALNUM.split(_PLACEHOLDER.sub(" ", text)):
        for piece in _WORD_PIECE.findall(chunk):
            if not piece.isdigit():
                words.append(piece.lower())
    return words


class WordVectors(Protocol):
    dim: int

    def lookup(self, words: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(vectors (n, dim) float32, found (n,) bool); rows of unknown words are zero."""


class BackboneWordVectors:
    """Word vector = mean of the word's word-piece rows of the backbone's input embedding matrix."""

    def __init__(self, backbone: str):
        from stages.core.llm import load_word_pieces

        self.backbone = backbone
        self._encode, self._table = load_word_pieces(backbone)
        self.dim = int(self._table.shape[1])

    def lookup(self, words: list[str]) -> tuple[np.ndarray, np.ndarray]:
        out = np.zeros((len(words), self.dim), np.float32)
        found = np.zeros(len(words), bool)
        if not words:
            return out, found
        pieces = self._encode(list(words))
        lengths = np.array([len(p) for p in pieces])
        found = lengths > 0
        if found.any():
            flat = np.concatenate([p for p in pieces if p]).astype(np.int64)
            sums = np.add.reduceat(self._table[flat], np.r_[0, np.cumsum(lengths[found])[:-1]], axis=0)
            out[found] = sums / lengths[found, None]
        return out, found


class GloveWordVectors:
    """GloVe-style text vectors, read lazily: one pass over the file per batch of unseen words."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(self.path, None, "an existing GloVe-style word-vector text file (word v1 v2 ...)")
        self._cache: dict[str, np.ndarray] = {}
        self._scanned: set[str] = set()
        self.dim = self._read_dim()

    def _read_dim(self) -> int:
        with self.path.open(encoding="utf-8", errors="replace") as fh:
            first = fh.readline().rstrip("\n").split(" ")
        if len(first) < 2:
            raise InputError(self.path, "line 1", "a word followed by its vector components", " ".join(first)[:80])
        return len(first) - 1

    def _scan(self, wanted: set[str]) -> None:
        with self.path.open(encoding="utf-8", errors="replace") as fh:
            for lineno, line in enumerate(fh, 1):
                word, _, rest = line.rstrip("\n").partition(" ")
                if word not in wanted:
                    continue
                try:
                    vec = np.asarray(rest.split(" "), dtype=np.float32)
                except ValueError:
                    raise InputError(self.path, f"line {lineno}", f"{self.dim} numbers after the word",
                                     rest[:80]) from None
                if vec.shape != (self.dim,):
                    raise InputError(self.path, f"line {lineno}", f"{self.dim} vector components", len(vec))
                self._cache[word] = vec
        self._scanned |= wanted

    def lookup(self, words: list[str]) -> tuple[np.ndarray, np.ndarray]:
        missing = set(words) - self._scanned
        if missing:
            self._scan(missing)
        out = np.zeros((len(words), self.dim), np.float32)
        found = np.array([w in self._cache for w in words], bool)
        for i in np.flatnonzero(found):
            out[i] = self._cache[words[i]]
        return out, found


def load_word_vectors(source: str, backbone: str = "minilm") -> WordVectors:
    """``source`` is ``"backbone"`` (offline default) or the path of a GloVe-style text file."""
    if source == BACKBONE:
        return BackboneWordVectors(backbone)
    return GloveWordVectors(source)


@dataclass
class Idf:
    """Smoothed inverse document frequency, ``log((1 + N) / (1 + df)) + 1``; unseen words get df = 0."""

    n_docs: int
    df: dict[str, int] = field(default_factory=dict)

    def __call__(self, word: str) -> float:
        return math.log((1 + self.n_docs) / (1 + self.df.get(word, 0))) + 1.0

    def to_json(self) -> dict:
        return {"n_docs": self.n_docs, "df": dict(sorted(self.df.items()))}

    @classmethod
    def from_json(cls, d: dict) -> "Idf":
        return cls(int(d["n_docs"]), {str(k): int(v) for k, v in d["df"].items()})


def fit_idf(documents: Iterable[str]) -> Idf:
    """IDF over training documents (template texts); call it with training data only."""
    df: Counter[str] = Counter()
    n = 0
    for doc in documents:
        df.update(set(tokenize(doc)))
        n += 1
    return Idf(n, dict(df))


def template_embeddings(templates: list[str], vectors: WordVectors, idf: Idf, normalise: bool = True
                        ) -> np.ndarray:
    """(K, dim) float32: per template Σ tfidf(w)·v(w) / Σ tfidf(w) over its words that have a vector.

    A template without any known word gets a zero row. ``normalise`` scales rows to unit L2 norm,
    so that systems whose templates differ in length land on the same scale.
    """
    token_lists = [tokenize(t) for t in templates]
    vocab = sorted({w for toks in token_lists for w in toks})
    index = {w: i for i, w in enumerate(vocab)}
    vecs, found = vectors.lookup(vocab)
    idf_w = np.array([idf(w) for w in vocab], np.float64)
    out = np.zeros((len(templates), vectors.dim), np.float32)
    for k, toks in enumerate(token_lists):
        if not toks:
            continue
        counts = Counter(toks)
        ids = np.array([index[w] for w in counts], np.int64)
        tf = np.array(list(counts.values()), np.float64) / len(toks)
        weights = tf * idf_w[ids] * found[ids]
        if weights.sum() <= 0:
            continue
        out[k] = (weights[:, None] * vecs[ids]).sum(0) / weights.sum()
    if normalise:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)
    n_empty = int((np.abs(out).sum(1) == 0).sum())
    if n_empty:
        log.info("%d of %d templates have no word with a vector (zero embedding)", n_empty, len(templates))
    return out
