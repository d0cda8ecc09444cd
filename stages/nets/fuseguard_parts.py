"""Building blocks of FuseGuard (DESIGN §6), one small module per idea.

Every block is window-length agnostic (patching, pooled spectra, a learned time basis), so a
detector's weights do not depend on the window size chosen by ``windows@ds`` and ``load``
needs nothing but the config and the schema.
"""
from __future__ import annotations

import copy
import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stages.core.errors import InputError

log = logging.getLogger(__name__)


def sinusoid(n: int, d: int, device: torch.device | None = None) -> torch.Tensor:
    """(n, d) fixed sinusoidal position codes; fixed so that any length works without new weights."""
    pos = torch.arange(n, dtype=torch.float32, device=device)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / d))
    out = torch.zeros(n, d, device=device)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq[: d // 2])
    return out


GAP_BLOCK_BYTES = 64 << 20  # the most a scoring pass holds of the (B, C, C, k) gap at once


def mean_squared_gap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a - b).pow(2).mean(-1)`` of broadcast operands.

    Without autograd the square is taken in place (the same bits: ``pow(2)`` multiplies the value
    by itself), which saves allocating and first-touching a second (B, C, C, k) tensor per scoring
    batch (~7 -> ~3.5 ms for 128 windows); and a gap over ``GAP_BLOCK_BYTES`` is taken a block of
    rows (dimension 1) at a time, each element by the same operations. At 650 metric channels one
    scoring batch's gap was 3.5 GB, most of the pass's peak (issue 11)."""
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        return (a - b).pow(2).mean(-1)
    shape = torch.broadcast_shapes(a.shape, b.shape)
    size = math.prod(shape) * torch.promote_types(a.dtype, b.dtype).itemsize
    if size <= GAP_BLOCK_BYTES or a.dim() != b.dim() or a.dim() < 3 or shape[1] < 2:
        gap = a - b
        return gap.mul_(gap).mean(-1)
    step = max(1, GAP_BLOCK_BYTES * shape[1] // size)
    parts = []
    for i in range(0, shape[1], step):
        gap = (a[:, i:i + step] if a.shape[1] > 1 else a) - (b[:, i:i + step] if b.shape[1] > 1 else b)
        parts.append(gap.mul_(gap).mean(-1))
    return torch.cat(parts, dim=1)


class PatchEncoder(nn.Module):
    """A multichannel series window → one token: patch embedding, a local conv over patches,
    then mean + latest-patch pooling (the latest patch matters most to an online detector).

    The output is not normalised: its magnitude tells the fusion how unusual the input is."""

    def __init__(self, in_channels: int, patch_len: int, d: int, dropout: float = 0.0):
        super().__init__()
        self.patch_len = patch_len
        self.embed = nn.Linear(in_channels * patch_len, d)
        self.conv = nn.Conv1d(d, d, kernel_size=3, padding=1)
        self.pool = nn.Linear(2 * d, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, W, in) → (N, d)
        n, w, c = x.shape
        pad = (-w) % self.patch_len
        if pad:  # pad the oldest end so the newest patch is always complete
            x = F.pad(x, (0, 0, pad, 0))
        patches = x.reshape(n, -1, self.patch_len * c)
        h = self.embed(patches) + sinusoid(patches.shape[1], self.embed.out_features, x.device).to(patches.dtype)
        h = F.gelu(h)
        h = F.gelu(h + self.conv(h.transpose(1, 2)).transpose(1, 2))
        h = self.drop(h)
        return self.pool(torch.cat([h.mean(1), h[:, -1]], dim=-1))


class FrequencySparseMask(nn.Module):
    """Dynamic sparse channel mask: channels whose spectra are far apart (in a learned space)
    are unlikely to attend to each other.

    rFFT magnitudes → fixed number of pooled bins → learned projection → pairwise distance →
    Bernoulli probability. Training samples a hard mask with the Gumbel straight-through trick
    (hard forward, soft gradient); evaluation thresholds the probability at 0.5 (deterministic).
    The diagonal is always on so every channel keeps at least itself.
    """

    def __init__(self, freq_bins: int, freq_dim: int, tau: float):
        super().__init__()
        self.freq_bins = freq_bins
        self.proj = nn.Linear(freq_bins, freq_dim)
        self.threshold = nn.Parameter(torch.tensor(1.5))  # relative distance at which p = 0.5
        self.log_scale = nn.Parameter(torch.tensor(1.0))
        self.tau = tau

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:  # (B, W, C) → (B, C, C)
        spec = torch.fft.rfft(x.float().transpose(1, 2), dim=-1).abs()
        spec = F.adaptive_avg_pool1d(torch.log1p(spec), self.freq_bins)
        f = self.proj(spec).float()
        dist = mean_squared_gap(f[:, :, None, :], f[:, None, :, :])
        dist = dist / dist.mean((1, 2), keepdim=True).clamp_min(1e-6)  # relative: scale-free across windows
        return torch.sigmoid((self.threshold - dist) * self.log_scale.exp())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = self.probabilities(x)
        if self.training:
            logits = torch.logit(probs, eps=1e-6)
            u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
            soft = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / self.tau)
            mask = (soft > 0.5).to(soft.dtype) + soft - soft.detach()  # straight-through
        else:
            mask = (probs > 0.5).to(probs.dtype)
        eye = torch.eye(mask.shape[-1], device=mask.device, dtype=mask.dtype)
        return mask * (1 - eye) + eye, probs


class MaskedChannelAttention(nn.Module):
    """Self-attention across channel tokens whose weights are multiplied by a (differentiable)
    mask and renormalised, so a straight-through mask passes gradient to its distances."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:  # (B, C, d)
        b, c, d = h.shape
        q, k, v = self.qkv(h).reshape(b, c, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)).float()
        if torch.is_grad_enabled() and scores.requires_grad:
            att = torch.softmax(scores / math.sqrt(d // self.heads), dim=-1)
            if mask is not None:
                att = att * mask[:, None].float()
                att = att / att.sum(-1, keepdim=True).clamp_min(1e-9)
        else:  # scoring: the same operations in place, one (B, heads, C, C) tensor fewer at a time
            att = torch.softmax(scores.div_(math.sqrt(d // self.heads)), dim=-1)
            del scores
            if mask is not None:
                att.mul_(mask[:, None].float())
                att.div_(att.sum(-1, keepdim=True).clamp_min(1e-9))
        mixed = (self.drop(att).to(v.dtype) @ v).transpose(1, 2).reshape(b, c, d)
        h = self.norm1(h + self.drop(self.out(mixed)))
        return self.norm2(h + self.drop(self.ffn(h)))


class MetricBranch(nn.Module):
    """Per-channel temporal tokens, then channel attention under the dynamic sparse mask."""

    def __init__(self, n_channels: int, d: int, patch_len: int, heads: int, dropout: float,
                 sparse_mask: bool, freq_bins: int, freq_dim: int, gumbel_tau: float):
        super().__init__()
        self.encoder = PatchEncoder(1, patch_len, d, dropout)
        self.norm = nn.LayerNorm(d)
        self.channel_embedding = nn.Parameter(torch.randn(n_channels, d) * 0.02)
        self.mask = FrequencySparseMask(freq_bins, freq_dim, gumbel_tau) if sparse_mask else None
        self.attention = MaskedChannelAttention(d, heads, dropout)
        self.last_mask: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, W, C) → (channel tokens (B, C, d), unnormalised temporal features (B, C, d))."""
        b, w, c = x.shape
        raw = self.encoder(x.transpose(1, 2).reshape(b * c, w, 1)).reshape(b, c, -1)
        tokens = self.norm(raw) + self.channel_embedding.to(raw.dtype)
        mask = self.mask(x)[0] if self.mask is not None else None
        self.last_mask = None if mask is None else mask.detach()
        return self.attention(tokens, mask), raw


def graph_operators(nodes: list[str], edges: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(in-incidence, out-incidence, normalised adjacency) of the call graph.

    Incidences are row-normalised (a node's feature is the mean over its in-/out-edges); the
    adjacency is symmetric with self loops and D^-1/2 (A + I) D^-1/2 scaling (Kipf & Welling).
    """
    index = {s: i for i, s in enumerate(nodes)}
    n, e = len(nodes), len(edges)
    inc_in, inc_out = np.zeros((n, e), np.float32), np.zeros((n, e), np.float32)
    adj = np.eye(n, dtype=np.float32)
    for j, (caller, callee) in enumerate(edges):
        inc_out[index[caller], j] = 1.0
        inc_in[index[callee], j] = 1.0
        adj[index[caller], index[callee]] = adj[index[callee], index[caller]] = 1.0
    inc_in /= np.maximum(inc_in.sum(1, keepdims=True), 1.0)
    inc_out /= np.maximum(inc_out.sum(1, keepdims=True), 1.0)
    deg = adj.sum(1)
    adj = adj / np.sqrt(deg[:, None] * deg[None, :])
    return torch.from_numpy(inc_in), torch.from_numpy(inc_out), torch.from_numpy(adj)


class TraceBranch(nn.Module):
    """Service tokens from the call graph: edge series (latency/count/error) are gathered onto
    their caller and callee, encoded over time, then mixed by graph convolution."""

    def __init__(self, nodes: list[str], edges: list[tuple[str, str]], n_features: int, d: int, patch_len: int,
                 layers: int, dropout: float):
        super().__init__()
        inc_in, inc_out, adj = graph_operators(nodes, edges)
        self.register_buffer("inc_in", inc_in, persistent=False)
        self.register_buffer("inc_out", inc_out, persistent=False)
        self.register_buffer("adj", adj, persistent=False)
        self.encoder = PatchEncoder(2 * n_features, patch_len, d, dropout)
        self.input_norm = nn.LayerNorm(d)
        self.node_embedding = nn.Parameter(torch.randn(len(nodes), d) * 0.02)
        self.gcn = nn.ModuleList(nn.Linear(d, d) for _ in range(layers))
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, W, E, F) → (service tokens (B, N, d), unnormalised node features (B, N, d))."""
        b, w, _, f = x.shape
        x_in = torch.einsum("ne,bwef->bnwf", self.inc_in.to(x.dtype), x)
        x_out = torch.einsum("ne,bwef->bnwf", self.inc_out.to(x.dtype), x)
        feats = torch.cat([x_in, x_out], dim=-1)
        n = feats.shape[1]
        raw = self.encoder(feats.reshape(b * n, w, 2 * f)).reshape(b, n, -1)
        h = self.input_norm(raw) + self.node_embedding.to(raw.dtype)
        for layer in self.gcn:
            h = h + F.gelu(layer(torch.einsum("nm,bmd->bnd", self.adj.to(h.dtype), h)))
        return self.norm(h), raw


class LogBranch(nn.Module):
    """Per-service log tokens = semantic part (frequency-weighted mean of the service's template
    LLM embeddings) + statistical part (each template column's count series, pooled per
    service), plus one global token from the window's whole template-frequency vector."""

    def __init__(self, log_columns: list[tuple[str, int]], template_embeddings: np.ndarray | None, d: int,
                 patch_len: int, dropout: float):
        super().__init__()
        services = sorted({s for s, _ in log_columns})
        self.services = services
        index = {s: i for i, s in enumerate(services)}
        member = np.zeros((len(services), len(log_columns)), np.float32)
        for j, (s, _) in enumerate(log_columns):
            member[index[s], j] = 1.0
        self.register_buffer("member", torch.from_numpy(member), persistent=False)
        self.semantic = template_embeddings is not None
        if self.semantic:
            tmpl = np.asarray([k for _, k in log_columns], dtype=np.int64)
            emb = np.asarray(template_embeddings, dtype=np.float32)[tmpl]
            self.register_buffer("column_embeddings", torch.from_numpy(emb), persistent=False)
            self.semantic_proj = nn.Linear(emb.shape[1], d)
        self.encoder = PatchEncoder(1, patch_len, d, dropout)
        self.column_embedding = nn.Parameter(torch.randn(len(log_columns), d) * 0.02)
        self.stat_proj = nn.Linear(d, d)
        self.global_mlp = nn.Sequential(nn.Linear(len(log_columns), d), nn.GELU(), nn.Linear(d, d))
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, W, L) → (log tokens (B, S + 1, d), the same before normalisation)."""
        b, w, l = x.shape
        member = self.member.to(x.dtype)
        col = self.encoder(x.transpose(1, 2).reshape(b * l, w, 1)).reshape(b, l, -1)
        col = col + self.column_embedding.to(col.dtype)
        stat = self.stat_proj(torch.einsum("sl,bld->bsd", member / member.sum(1, keepdim=True), col))
        if self.semantic:
            weights = x.clamp_min(0).sum(1)[:, None, :] * member  # (B, S, L)
            sem = weights @ self.column_embeddings.to(x.dtype)
            sem = sem / weights.sum(-1, keepdim=True).clamp_min(1e-6)
            stat = stat + self.semantic_proj(sem)
        glob = self.global_mlp(x.mean(1))[:, None, :]
        raw = torch.cat([stat, glob], dim=1)
        return self.norm(raw), raw


# ---------------------------------------------------------------- LLM alignment


def lora_targets(block: nn.Module) -> tuple[list[str], bool]:
    """LoRA target module names for this architecture and whether its weights are stored
    transposed (GPT-2's Conv1D)."""
    names = {n.rsplit(".", 1)[-1] for n, _ in block.named_modules() if n}
    if {"query", "value"} <= names:  # BERT / MiniLM
        return ["query", "value"], False
    if "c_attn" in names:  # GPT-2
        return ["c_attn"], True
    if {"q_proj", "v_proj"} <= names:  # LLaMA / OPT style
        return ["q_proj", "v_proj"], False
    raise InputError("params.yaml", "llm.backbone", "a BERT-, GPT-2- or LLaMA-style block with attention "
                     "projections named query/value, c_attn or q_proj/v_proj", sorted(names))


class BlockStack(nn.Module):
    """The first N transformer blocks of the backbone, returning every block's output."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, ...]:
        states = []
        for block in self.blocks:
            out = block(h)
            h = out[0] if isinstance(out, (tuple, list)) else out
            states.append(h)
        return tuple(states)


def principal_words(words: torch.Tensor, n: int) -> torch.Tensor:
    """(n, H) principal word embeddings (mean + std · component), used only when the pipeline's
    ``embed_pca`` output is not given; same recipe so both live on the token-embedding scale."""
    words = words.double()
    mean = words.mean(0)
    _, s, vt = torch.linalg.svd(words - mean, full_matrices=False)
    std = s[:n] / math.sqrt(max(words.shape[0] - 1, 1))
    return (mean[None, :] + std[:, None] * vt[:n]).float()


class LLMAligner(nn.Module):
    """Cross-modal alignment through the first blocks of a frozen language model.

    Path (a): modality tokens → LoRA-adapted blocks. Path (b): the same tokens rewritten as
    mixtures of principal word embeddings (cross-attention) → the same blocks with adapters
    off. Layer-wise and output consistency losses pull (a) into the language model's space
    while only LoRA and our own layers learn.
    """

    def __init__(self, d: int, backbone: nn.Module, blocks: list[nn.Module], word_pca: torch.Tensor | None,
                 alignment: bool, heads: int, lora_r: int, lora_alpha: int, lora_dropout: float,
                 pca_components: int = 64):
        super().__init__()
        from peft import LoraConfig, get_peft_model

        from stages.core.llm import hidden_size

        hidden = hidden_size(backbone)
        stack = BlockStack([copy.deepcopy(b) for b in blocks])  # copies: the cached backbone stays untouched
        targets, fan_in_fan_out = lora_targets(stack.blocks[0])
        cfg = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=targets,
                         fan_in_fan_out=fan_in_fan_out, bias="none")
        self.peft = get_peft_model(stack, cfg)  # freezes every base weight of the blocks
        self.to_llm = nn.Sequential(nn.Linear(d, hidden), nn.LayerNorm(hidden))
        self.from_llm = nn.Linear(hidden, d)
        self.alignment = alignment
        if alignment:
            if hidden % heads:
                raise InputError("params.yaml", "fuseguard.align_heads", f"a divisor of the backbone width {hidden}",
                                 heads)
            if word_pca is None:
                from stages.core.llm import word_embeddings

                log.warning("fuseguard: no word_pca in the schema (embed_pca output); computing %d "
                            "principal word embeddings from the backbone", pca_components)
                word_pca = principal_words(word_embeddings(backbone), pca_components)
            word_pca = torch.as_tensor(word_pca, dtype=torch.float32)
            if word_pca.ndim != 2 or word_pca.shape[1] != hidden:
                raise InputError("models/word_pca/word_pca.npy", "shape", f"(P, {hidden}) for this backbone",
                                 tuple(word_pca.shape))
            self.register_buffer("word_pca", word_pca)
            self.cross = nn.MultiheadAttention(hidden, heads, batch_first=True)

    def language_path(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Path (b): tokens (B, n, H) as mixtures of principal word embeddings, through the blocks
        with the adapters off (so this path never trains LoRA, only the cross-attention)."""
        words = self.word_pca.to(x.dtype).expand(x.shape[0], -1, -1)
        aligned, _ = self.cross(x, words, words, need_weights=False)
        with self.peft.disable_adapter():
            return self.peft(aligned)

    def forward(self, tokens: torch.Tensor, consistency: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, n, d) → (refinement to add to the tokens (B, n, d), feature-consistency loss,
        output-consistency loss). ``consistency=False`` skips the frozen path (scoring needs only
        path (a)), halving the cost."""
        x = self.to_llm(tokens)
        tuned = self.peft(x)
        out = self.from_llm(tuned[-1])
        zero = tokens.new_zeros((), dtype=torch.float32)
        if not (self.alignment and consistency):
            return out, zero, zero
        frozen = self.language_path(x)
        feat = torch.stack([1 - F.cosine_similarity(a.float(), b.float(), dim=-1).mean()
                            for a, b in zip(tuned, frozen)]).mean()
        out_loss = F.mse_loss(self.from_llm(tuned[-1]).float(), self.from_llm(frozen[-1]).float())
        return out, feat, out_loss


# ---------------------------------------------------------------- fusion and decoding


class QualityFusion(nn.Module):
    """Per-sample modality confidence from an energy score, softmaxed into fusion weights.

    Every token position (a metric channel, a service node, a log service) has a few learned
    prototypes in the branch's unnormalised feature space (so an unusual amplitude counts);
    token energy = -logsumexp(-relative distance to its prototypes), and a modality's energy
    is the mean over its tokens, so a modality that is noisy as a whole scores high, while one
    faulty channel among fifty barely moves it (a local fault is not silenced by the fusion).
    Prototypes start at the first training batch's tokens and are then fitted on detached tokens
    to minimise training energy: a window unlike training has high energy, i.e. low confidence.
    Energies are standardised with their training mean and spread (running estimates while
    training, exact ones from the final model after ``fit``), so on normal data the weights are
    balanced whatever each modality's feature scale, and only unusual windows move them.
    """

    def __init__(self, n_tokens: list[int], d: int, prototypes: int, temperature: float, mode: str):
        super().__init__()
        self.mode = mode
        self.temperature = temperature
        self.prototypes = nn.ParameterList(nn.Parameter(torch.randn(n, prototypes, d)) for n in n_tokens)
        self.register_buffer("seeded", torch.zeros(len(n_tokens), dtype=torch.bool))
        self.register_buffer("energy_mean", torch.zeros(len(n_tokens)))
        self.register_buffer("energy_std", torch.ones(len(n_tokens)))
        self.register_buffer("stats_seen", torch.zeros((), dtype=torch.bool))
        self.momentum = 0.1
        if mode == "concat":
            self.concat = nn.Linear(len(n_tokens) * d, d)

    @torch.no_grad()
    def _seed(self, m: int, z: torch.Tensor) -> None:
        """Data-dependent start: Adam moves a parameter ~lr per step, far too slowly to walk a
        random prototype to the data in a few-shot run."""
        k = self.prototypes[m].shape[1]
        idx = torch.arange(k, device=z.device) % z.shape[0]
        self.prototypes[m].copy_(z[idx].transpose(0, 1).to(self.prototypes[m].dtype))
        self.seeded[m] = True

    def energies(self, tokens: list[torch.Tensor], detach: bool = False) -> torch.Tensor:
        """(B, M) energy of each modality from its unnormalised branch features (B, n_m, d);
        lower = more familiar. Distances are relative to the prototype's own size, so modalities
        of different feature scales compare fairly."""
        out = []
        for m, z in enumerate(tokens):
            z = (z.detach() if detach else z).float()
            if self.training and not bool(self.seeded[m]):
                self._seed(m, z)
            proto = self.prototypes[m][None].float()  # (1, n, K, d)
            dist = mean_squared_gap(z[:, :, None, :], proto) / proto.pow(2).mean(-1).clamp_min(1e-4)
            out.append(-torch.logsumexp(-dist, dim=-1).mean(1))
        energies = torch.stack(out, dim=1)
        if self.training and not detach and energies.shape[0] > 1:
            self._track(energies.detach())
        return energies

    @torch.no_grad()
    def _track(self, energies: torch.Tensor) -> None:
        mean, std = energies.mean(0), energies.std(0).clamp_min(1e-4)
        if not bool(self.stats_seen):
            self.energy_mean.copy_(mean)
            self.energy_std.copy_(std)
            self.stats_seen.fill_(True)
        else:
            self.energy_mean.lerp_(mean, self.momentum)
            self.energy_std.lerp_(std, self.momentum)

    @torch.no_grad()
    def set_energy_stats(self, energies: torch.Tensor) -> None:
        """Exact standardisation from (N, M) energies of the training windows."""
        self.energy_mean.copy_(energies.mean(0))
        spread = energies.std(0).clamp_min(1e-4) if len(energies) > 1 else torch.ones_like(self.energy_std)
        self.energy_std.copy_(spread)
        self.stats_seen.fill_(True)

    def weights(self, energies: torch.Tensor) -> torch.Tensor:
        if self.mode != "quality":
            return torch.full_like(energies, 1.0 / energies.shape[1])
        standard = (energies - self.energy_mean) / self.energy_std
        return torch.softmax(-standard / self.temperature, dim=1)

    def fuse(self, summaries: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:  # (B, M, d), (B, M) → (B, d)
        if self.mode == "concat":
            return self.concat(summaries.flatten(1))
        return (weights.to(summaries.dtype)[:, :, None] * summaries).sum(1)


class TimeBasisDecoder(nn.Module):
    """Decode a unit's code into its window: series(t) = <code, basis(t)>, basis(t) an MLP of a
    fixed sinusoid of t — a learned dictionary of window shapes that fits any window length."""

    def __init__(self, d: int, outputs_per_unit: int = 1):
        super().__init__()
        self.k = outputs_per_unit
        self.code = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d * outputs_per_unit))
        self.basis = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))

    def forward(self, units: torch.Tensor, window: int) -> torch.Tensor:  # (B, U, d) → (B, W, U, k)
        b, u, d = units.shape
        code = self.code(units).reshape(b, u, self.k, d)
        basis = self.basis(sinusoid(window, d, units.device).to(units.dtype))  # (W, d)
        return torch.einsum("bukd,wd->bwuk", code, basis) / math.sqrt(d)
