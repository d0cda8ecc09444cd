"""Tokenisation, word vectors (GloVe text and backbone input embeddings) and TF-IDF aggregation."""
from __future__ import annotations

import math

import numpy as np
import pytest

from stages.core.errors import InputError
from stages.features.word_vectors import (BackboneWordVectors, GloveWordVectors, Idf, fit_idf, load_word_vectors,
                                          template_embeddings, tokenize)


def test_tokenize_splits_punctuation_camel_case_and_drops_variables():
    assert tokenize("PacketResponder 1 for block blk_<*> terminating") == [
        "packet", "responder", "for", "block", "blk", "terminating"]
    assert tokenize("HTTPServerError: getUserID() failed <NUM> at <IP>") == [
        "http", "server", "error", "get", "user", "id", "failed", "at"]
    assert tokenize("writeBlock blk_-1608999687919862906 received exception java.io.EOFException") == [
        "write", "block", "blk", "received", "exception", "java", "io", "eof", "exception"]
    assert tokenize("<*> 123 <*>") == []


def _glove(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text("error 1 0\ndisk 0 1\nread 1 1\nok -1 0\n")
    return path


def test_tfidf_weighted_mean_on_known_vectors(tmp_path):
    vectors = GloveWordVectors(_glove(tmp_path))
    assert vectors.dim == 2
    idf = fit_idf(["disk error", "disk read ok", "disk ok"])  # fitted on these (training) templates only
    assert idf.n_docs == 3 and idf.df == {"disk": 3, "error": 1, "read": 1, "ok": 2}
    assert idf("disk") == pytest.approx(math.log(4 / 4) + 1)
    assert idf("unseen") == pytest.approx(math.log(4 / 1) + 1)  # a word unseen in training: df = 0
    emb = template_embeddings(["Disk error", "disk, disk ERROR unknownword", "<*> 42"], vectors, idf,
                              normalise=False)
    w_disk, w_err = idf("disk") / 2, idf("error") / 2  # tf = 1/2 each
    expect0 = (w_disk * np.array([0, 1]) + w_err * np.array([1, 0])) / (w_disk + w_err)
    np.testing.assert_allclose(emb[0], expect0, rtol=1e-6)
    # tf counts repeats; a word without a vector is skipped (weight and vector)
    w_disk, w_err = 2 / 4 * idf("disk"), 1 / 4 * idf("error")
    np.testing.assert_allclose(emb[1], (w_disk * np.array([0, 1]) + w_err * np.array([1, 0])) / (w_disk + w_err),
                               rtol=1e-6)
    assert (emb[2] == 0).all()  # nothing but variables → zero row
    unit = template_embeddings(["disk error"], vectors, idf)
    assert np.linalg.norm(unit[0]) == pytest.approx(1.0)
    assert Idf.from_json(idf.to_json()) == idf


def test_glove_bad_input(tmp_path):
    with pytest.raises(InputError, match="GloVe"):
        load_word_vectors(str(tmp_path / "missing.txt"))
    bad = tmp_path / "bad.txt"
    bad.write_text("error 1 0\ndisk 0 x\n")
    with pytest.raises(InputError, match=r"bad\.txt: line 2"):
        GloveWordVectors(bad).lookup(["disk"])


def test_backbone_word_vector_is_mean_of_wordpiece_rows():
    from stages.core.llm import load_backbone, word_embeddings

    vectors = load_word_vectors("backbone", "minilm")
    assert isinstance(vectors, BackboneWordVectors)
    tok, model = load_backbone("minilm")
    table = word_embeddings(model).numpy()
    vecs, found = vectors.lookup(["disk", "responder", ""])
    pieces = tok("responder", add_special_tokens=False)["input_ids"]
    assert len(pieces) > 1  # a word split into several pieces
    np.testing.assert_allclose(vecs[1], table[pieces].mean(0), rtol=1e-5)
    np.testing.assert_allclose(vecs[0], table[tok("disk", add_special_tokens=False)["input_ids"]].mean(0), rtol=1e-5)
    assert found.tolist() == [True, True, False] and (vecs[2] == 0).all()
    # shared space: related templates from two systems are closer than unrelated ones
    idf = fit_idf(["connection timeout to database", "database connection timed out", "user logged in"])
    e = template_embeddings(["Connection timeout to database <*>", "Database connection timed out after <*> ms",
                             "User <*> logged in"], vectors, idf)
    assert e[0] @ e[1] > e[0] @ e[2]


def test_packaged_word_pieces_match_transformers_ids_and_rows(shared_data):
    """The light loader (tokenizer.json + safetensors, no transformers import) must give exactly
    the tokenizer ids and embedding rows that the transformers model gives."""
    from stages.core.llm import load_backbone, load_word_pieces, word_embeddings

    lines = []
    for path in sorted((shared_data / "loghub").rglob("*.log"))[:2]:
        with path.open(encoding="utf-8", errors="replace") as fh:
            lines += [next(fh, "") for _ in range(2000)]
    words = sorted({w for line in lines for w in tokenize(line)} | {w for line in lines[:200] for w in line.split()})
    words += ["", "Ünïcödé", "日本語", "CamelCaseWORD", "a-b_c", "x" * 300, "  spaced  "]
    assert len(words) > 500
    light = load_word_pieces("minilm")
    tok, model = load_backbone("minilm")
    assert light.encode(words) == tok(words, add_special_tokens=False)["input_ids"]
    np.testing.assert_array_equal(light.table, word_embeddings(model).float().numpy())
