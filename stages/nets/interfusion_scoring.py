"""InterFusion's test-time pass (MCMC imputation + reconstruction probability), laid out for a CPU.

The same model, the same draws (the same :class:`~stages.nets.interfusion.NoiseTape` order) and
the same arithmetic as :meth:`InterFusionNet.tail_nll_reference`, up to float rounding (tested);
only the layout differs. Scoring is 18 full passes of the net per window at the defaults (10
MCMC iterations, 8 score samples), none of which the method lets us drop; what made them slow
was per-op overhead, tanh, narrow matrix products and memory traffic:

* the q(e | x) encoder keeps every layer's activations; an MCMC step rewrites only the newest
  ``tail`` inputs, so each layer recomputes only the outputs whose receptive field reaches them;
* everything after e runs feature-major, (steps, features, rows): a transposed convolution of
  h(e) is then one batched product over overlapping input windows, its phases come out
  interleaved (:class:`_Deconv`), and the last one writes beside the GRU state;
* the backward GRU of q(z) is an explicit loop, three products and four element-wise ops per
  step (:meth:`TailScorer._gru`), no flips, no tanh; the dense layers after it run every few
  steps on the states just written, while they are in cache;
* the recurrent z sampler keeps only the newest ``tail`` steps (the flow and p(x | z, e) need
  no more) and skips the log-density, which scoring does not use;
* the score samples are views of one encoding; all rows (window × chain or sample) go through
  the net in blocks of ``block_rows`` that fit a core's cache, with work buffers reused.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

class _Scratch:
    """Work buffers reused from one block of rows to the next: a fresh multi-MB tensor per op costs page
    faults (measured ~10% of scoring), a reused one stays mapped and mostly cached."""

    def __init__(self):
        self.bufs: dict[tuple, torch.Tensor] = {}

    def __call__(self, key: object, shape: tuple[int, ...], like: torch.Tensor, zeros: bool = False) -> torch.Tensor:
        """The buffer of that key and shape; ``zeros``: zero-filled when first made (for margins never written)."""
        k = (key, tuple(shape))
        buf = self.bufs.get(k)
        if buf is None:
            buf = self.bufs[k] = like.new_zeros(shape) if zeros else like.new_empty(shape)
        return buf


class _Conv:
    """One encoder layer ``relu(conv1d)`` that can recompute only a suffix of its output."""

    def __init__(self, conv: nn.Conv1d, relu: bool = True):
        self.w, self.b = conv.weight.detach(), conv.bias.detach()
        self.stride, self.pad, self.k = conv.stride[0], conv.padding[0], conv.kernel_size[0]
        self.relu = relu

    def full(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv1d(x, self.w, self.b, stride=self.stride, padding=self.pad)
        return y.relu_() if self.relu else y

    def first_affected(self, first_changed_input: int) -> int:
        """The first output whose window reaches input position ``first_changed_input``."""
        return max(0, -(-(first_changed_input + self.pad - self.k + 1) // self.stride))

    def suffix(self, x: torch.Tensor, o0: int, n_out: int) -> torch.Tensor:
        """Outputs ``o0 … n_out - 1`` only, from the inputs they read (zero padding as in :meth:`full`)."""
        start, end, n_in = o0 * self.stride - self.pad, (n_out - 1) * self.stride - self.pad + self.k, x.shape[-1]
        seg = x[..., max(start, 0):min(end, n_in)]
        if start < 0 or end > n_in:
            seg = F.pad(seg, (max(-start, 0), max(end - n_in, 0)))
        y = F.conv1d(seg, self.w, self.b, stride=self.stride)
        return y.relu_() if self.relu else y


class _Deconv:
    """``relu(conv_transpose1d)`` on feature-major activations (L, C, N), as one batched matrix product.

    Output step ``o = s·j + r`` (phase ``r``) sums ``w[:, :, kk]ᵀ · in[j + d]`` over the taps ``kk`` with
    ``s·(j + d) − p + kk = o``. With the steps outermost, ``in[j + dmin … j + dmax]`` is one contiguous
    (q·Cin, N) matrix (a strided view, no copy, given zero margins around the input), and one product
    with the (s·Cout, q·Cin) tap matrix yields every phase of output step j, already interleaved.
    """

    def __init__(self, layer: nn.ConvTranspose1d):
        w, b = layer.weight.detach(), layer.bias.detach()  # w: (Cin, Cout, K)
        self.s, self.p, self.op = layer.stride[0], layer.padding[0], layer.output_padding[0]
        self.k, self.cin, self.cout = layer.kernel_size[0], w.shape[0], w.shape[1]
        taps = [(r, kk, (r + self.p - kk) // self.s) for r in range(self.s) for kk in range(self.k)
                if (r + self.p - kk) % self.s == 0]
        self.dmin, self.dmax = min(d for *_, d in taps), max(d for *_, d in taps)
        self.w = w.new_zeros(self.s * self.cout, (self.dmax - self.dmin + 1) * self.cin)
        for r, kk, d in taps:
            q = d - self.dmin
            self.w[r * self.cout:(r + 1) * self.cout, q * self.cin:(q + 1) * self.cin] = w[:, :, kk].t()
        self.b = b.repeat(self.s)[:, None]

    def out_len(self, n_in: int) -> int:
        return (n_in - 1) * self.s - 2 * self.p + self.k + self.op

    def margin(self, n_in: int) -> int:
        """Zero steps needed on each side of an input of ``n_in`` steps."""
        return max(0, -self.dmin, -(-self.out_len(n_in) // self.s) + self.dmax - n_in)

    def __call__(self, x: torch.Tensor, m: int, scratch: _Scratch, out: torch.Tensor) -> None:
        """x: (m + L + m, Cin, N) contiguous, zero margins of ``m`` steps; writes the relu'd output
        (L', Cout, N) into ``out`` (any strides)."""
        n_in, n = x.shape[0] - 2 * m, x.shape[2]
        n_out = self.out_len(n_in)
        j = -(-n_out // self.s)
        span = (self.dmax - self.dmin + 1) * self.cin
        windows = x.as_strided((j, span, n), (self.cin * n, n, 1), x.storage_offset() + (m + self.dmin) * self.cin * n)
        y = scratch((self, "y"), (j, self.s * self.cout, n), x)
        torch.baddbmm(self.b.expand(j, -1, n), self.w.expand(j, -1, -1), windows, out=y)
        torch.clamp_min(y.view(j * self.s, self.cout, n)[:n_out], 0.0, out=out)  # relu while placing


class TailScorer:
    """Inference-only view of a trained :class:`InterFusionNet` (build it after training: some weights
    are rearranged copies)."""

    def __init__(self, net: nn.Module, block_rows: int = 512):
        cfg = net.cfg
        self.net, self.block_rows = net, block_rows
        self.scratch = _Scratch()
        self.zd, self.lo, self.hi = cfg.z_dim, cfg.logstd_min, cfg.logstd_max
        inter = net.inter
        self.enc = [_Conv(m) for m in inter.encoder if isinstance(m, nn.Conv1d)]
        self.q_out = _Conv(inter.q_out, relu=False)
        self.channels = inter.channels
        self.deconv = [_Deconv(m) for m in inter.deconv if isinstance(m, nn.ConvTranspose1d)]
        lengths = [inter.latent_len]
        for layer in self.deconv:
            lengths.append(layer.out_len(lengths[-1]))
        self.margin = max(layer.margin(n) for layer, n in zip(self.deconv, lengths))
        self._gru(net.a_rnn)
        self.dense = [(m.weight.detach(), m.bias.detach()[:, None]) for m in net.a_dense if isinstance(m, nn.Linear)]
        w1, b1 = self.dense[0]
        self.dense[0] = (2 * w1, b1 - w1.sum(1, keepdim=True))  # it reads ĥ = (h + 1) / 2
        self.dense.append((net.qz_a.weight.detach(), net.qz_a.bias.detach()[:, None]))  # then qz_a, no relu
        self.qz_z = net.qz_z.weight.detach()  # (2z, z): the z sampler runs feature-major
        self._flow(net.flow)

    def _gru(self, g: nn.GRU) -> None:
        """The GRU rearranged so that a step is three products and four element-wise ops.

        * the r and z gates from the block [x_t; ĥ_{t+1}] of :meth:`decode`'s buffer in one product, the
          input and hidden parts of n in one product each (gate order r, z, n), all feature-major;
        * ``tanh(a) = 2·sigmoid(2a) − 1`` (sigmoid is several times cheaper than tanh on the CPU), the 2
          folded into the n weights;
        * the state is kept as ``ĥ = (h + 1) / 2``: then ``ĥ' = lerp(sigmoid(2a), ĥ, z)`` exactly, and the
          affine change of variable is folded into the hidden weights and the first dense layer.
        """
        H = self.hid = g.hidden_size
        w_ih, w_hh, b_ih, b_hh = (t.detach() for t in (g.weight_ih_l0, g.weight_hh_l0, g.bias_ih_l0, g.bias_hh_l0))
        # h = 2ĥ − 1: W h + b = 2W ĥ + (b − W·1); feature-major: (out, in) matrices, (out, 1) biases
        self.g_rz = torch.cat([w_ih[:2 * H], 2 * w_hh[:2 * H]], dim=1)
        self.g_rz_b = (b_ih[:2 * H] + b_hh[:2 * H] - w_hh[:2 * H].sum(1))[:, None]
        self.g_nx, self.g_nx_b = 2 * w_ih[2 * H:], 2 * b_ih[2 * H:, None]
        self.g_nh, self.g_nh_b = 4 * w_hh[2 * H:], 2 * (b_hh[2 * H:] - w_hh[2 * H:].sum(1))[:, None]

    def _flow(self, levels: nn.ModuleList) -> None:
        """Per level: dense map, coupling net on its first half (the +2 of the scale folded into the bias)."""
        self.flow_levels = [] if all(lv.n1 for lv in levels) else None  # z_dim 1: the modules' own path
        for lv in levels if self.flow_levels is not None else ():
            first, last = lv.net[0], lv.net[-1]
            n2 = lv.weight.shape[0] - lv.n1
            b2 = last.bias.detach().clone()
            b2[n2:] += 2.0
            self.flow_levels.append((lv.weight.detach(), lv.n1, first.weight.detach().t(), first.bias.detach(),
                                     last.weight.detach().t(), b2, n2))

    # -- q(e | x), incrementally
    def encode(self, x_cd: torch.Tensor) -> list[torch.Tensor]:
        """Every encoder activation of x (N, D, T), the input first, then mu and logstd of e."""
        acts = [x_cd]
        for layer in self.enc:
            acts.append(layer.full(acts[-1]))
        mu, ls = self.q_out.full(acts[-1]).chunk(2, dim=1)
        return acts + [mu.contiguous(), ls.clamp(self.lo, self.hi)]

    def reencode(self, acts: list[torch.Tensor], first_changed: int) -> None:
        """Refresh ``acts`` in place after the inputs from step ``first_changed`` on were rewritten."""
        c = first_changed
        for i, layer in enumerate(self.enc):
            out = acts[i + 1]
            c = layer.first_affected(c)
            out[..., c:] = layer.suffix(acts[i], c, out.shape[-1])
        mu, ls = acts[-2], acts[-1]
        q = self.q_out.suffix(acts[-3], c, mu.shape[-1])
        mu[..., c:] = q[:, :self.channels]
        ls[..., c:] = q[:, self.channels:].clamp(self.lo, self.hi)

    # -- (e, z) → p(x | z, e) at the newest steps
    def posterior_pre(self, buf: torch.Tensor, chunk: int = 8) -> torch.Tensor:
        """The a_t part of q(z_t | z_{t-1}, a_t) for every step, feature-major (T, 2z, N): backward GRU
        (see :meth:`_gru`); every ``chunk`` steps the dense layers on the steps just done (still in cache).

        ``buf`` (T + 1, c + H, N) holds h_t(e) in ``buf[t + 1, :c]``; the GRU writes ĥ_t into
        ``buf[t, c:]``, so that every step reads one contiguous block [h_t; ĥ_{t+1}]."""
        T, c, H, N = buf.shape[0] - 1, self.channels, self.hid, buf.shape[2]
        buf[T, c:] = 0.5  # ĥ of h = 0
        rows = buf.unbind(0)
        pre = self.scratch("pre", (T, 2 * self.zd, N), buf)
        done = T
        for t in range(T - 1, -1, -1):  # backward in time: a_t sees h_{t..T}
            block = rows[t + 1]  # [x_t; ĥ_{t+1}]
            rz = torch.addmm(self.g_rz_b, self.g_rz, block).sigmoid_()
            n_h = torch.addmm(self.g_nh_b, self.g_nh, block[c:])
            s = torch.addmm(self.g_nx_b, self.g_nx, block[:c]).addcmul_(rz[:H], n_h).sigmoid_()
            torch.lerp(s, block[c:], rz[H:], out=rows[t][c:])
            if done - t == chunk or t == 0:
                self._dense(buf[t:done, c:], pre[t:done])
                done = t
        return pre

    def _dense(self, a: torch.Tensor, pre: torch.Tensor) -> None:
        """pre (k, 2z, N) = qz_a(dense(a)) of the GRU states ĥ (k, H, N)."""
        k, n = a.shape[0], a.shape[2]
        for i, (w, b) in enumerate(self.dense):
            last = i == len(self.dense) - 1
            out = pre if last else self.scratch(("dense", i), (k, w.shape[0], n), a)
            a = torch.baddbmm(b.expand(k, -1, n), w.expand(k, -1, -1), a, out=out)
            if not last:
                a.relu_()

    def z_tail(self, pre: torch.Tensor, eps: torch.Tensor, tail: int) -> torch.Tensor:
        """Recurrent posterior samples of the newest ``tail`` steps (tail, N, z); pre (T, 2z, N), eps (N, T, z).

        Feature-major, so that the mean and log-sigma halves of every step are contiguous."""
        T, zd = pre.shape[0], self.zd
        pres, epss = pre.unbind(0), eps.permute(1, 2, 0).contiguous().unbind(0)
        z = torch.addcmul(pres[0][:zd], pres[0][zd:].clamp(self.lo, self.hi).exp_(), epss[0])  # z_0 = 0
        keep = [z] if T - tail <= 0 else []
        for t in range(1, T):  # sequential: z_t depends on the sampled z_{t-1}
            o = torch.addmm(pres[t], self.qz_z, z)
            z = torch.addcmul(o[:zd], o[zd:].clamp_(self.lo, self.hi).exp_(), epss[t])
            if t >= T - tail:
                keep.append(z)
        return torch.stack(keep).transpose(1, 2)

    def flow(self, z: torch.Tensor) -> torch.Tensor:
        """The RealNVP levels on rows (…, z) (their log-determinants are not needed for scoring)."""
        if self.flow_levels is None:
            for level in self.net.flow:
                z = level(z)[0]
            return z
        shape = z.shape
        z = z.reshape(-1, shape[-1])
        for w, n1, w1, b1, w2, b2, n2 in self.flow_levels:
            y = z @ w
            o = torch.addmm(b2, torch.addmm(b1, y[:, :n1], w1).relu_(), w2)
            z = torch.cat([y[:, :n1], torch.addcmul(o[:, :n2], y[:, n1:], o[:, n2:].sigmoid_())], dim=1)
        return z.view(shape)

    def decode(self, mu_e: torch.Tensor, ls_e: torch.Tensor, eps_e: torch.Tensor, eps_z: torch.Tensor,
               tail: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One (e, z) draw per row → p(x | z, e) mean and logstd at the newest ``tail`` steps (N, tail, D)."""
        n, c, m = mu_e.shape[0], self.channels, self.margin
        x = self.scratch("e", (mu_e.shape[2] + 2 * m, c, n), mu_e, zeros=True)
        torch.addcmul(mu_e, torch.exp(ls_e), eps_e, out=x[m:x.shape[0] - m].permute(2, 1, 0))  # feature-major
        for i, layer in enumerate(self.deconv):
            L = layer.out_len(x.shape[0] - 2 * m)
            if i == len(self.deconv) - 1:
                T, buf = L, self.scratch("gru", (L + 1, c + self.hid, n), x)
                layer(x, m, self.scratch, out=buf[1:, :c])  # h(e) beside the GRU state
            else:
                y = self.scratch(("h", i), (L + 2 * m, c, n), x, zeros=True)
                layer(x, m, self.scratch, out=y[m:m + L])
                x = y
        z = self.flow(self.z_tail(self.posterior_pre(buf), eps_z, tail))
        mu, ls = self.net.p_x(z, buf[T + 1 - tail:, :c].transpose(1, 2))
        return mu.transpose(0, 1), ls.transpose(0, 1)

    def decode_rows(self, mu_e: torch.Tensor, ls_e: torch.Tensor, eps_e: torch.Tensor, eps_z: torch.Tensor,
                    tail: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`decode` in blocks of ``block_rows`` rows (rows are independent; a block stays in cache)."""
        n = mu_e.shape[0]
        if n <= self.block_rows:
            return self.decode(mu_e, ls_e, eps_e, eps_z, tail)
        parts = [self.decode(mu_e[i:i + self.block_rows], ls_e[i:i + self.block_rows],
                             eps_e[i:i + self.block_rows], eps_z[i:i + self.block_rows], tail)
                 for i in range(0, n, self.block_rows)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    # -- the test-time pass
    def impute(self, x: torch.Tensor, tail: int, iters: int, chains: int, noise) -> list[torch.Tensor]:
        """MCMC imputation of the newest ``tail`` steps of x (B, T, D), as ``InterFusionNet.impute``: start
        from the observed values, ``iters`` times draw (e, z) ~ q(· | x̂), x ~ p(x | z, e) and overwrite
        the masked steps only; ``chains`` chains averaged. Returns the encoder activations of x̂ (see
        :meth:`encode`; x̂ itself, (B, D, T), first), so that scoring need not encode it again."""
        B, T, D = x.shape
        c, zd, first = self.channels, self.zd, T - tail
        base = self.encode(x.transpose(1, 2).clone(memory_format=torch.contiguous_format))
        if not iters:
            return base
        L = base[-2].shape[-1]
        acts = [a.repeat_interleave(chains, dim=0) for a in base] if chains > 1 else base
        N = B * chains
        for _ in range(iters):
            eps_e, eps_z = noise.take(N, c, L), noise.take(N, T, zd)
            mu, ls = self.decode_rows(acts[-2], acts[-1], eps_e, eps_z, tail)
            acts[0][:, :, first:] = torch.addcmul(mu, torch.exp(ls), noise.take(N, tail, D)).transpose(1, 2)
            self.reencode(acts, first)
        if chains > 1:
            base[0][:, :, first:] = acts[0][:, :, first:].reshape(B, chains, D, tail).mean(dim=1)
            self.reencode(base, first)
        return base

    def tail_nll(self, x: torch.Tensor, tail: int, iters: int, chains: int, samples: int, noise) -> torch.Tensor:
        """Per-metric NLL (B, tail, D) of the observed newest steps: −E_q[log p(x | z, e)] with q conditioned
        on the imputed window, over ``samples`` draws (see ``InterFusionNet.tail_nll_reference``)."""
        from stages.nets.interfusion import gaussian_loglik  # (that module imports this one)

        B, T, D = x.shape
        acts = self.impute(x, tail, iters, chains, noise)
        c, L, zd, first = self.channels, acts[-2].shape[-1], self.zd, T - tail
        n = B * samples  # rows b·samples + s: views of one encoding per window
        mu_e = acts[-2][:, None].expand(-1, samples, -1, -1).reshape(n, c, L)
        ls_e = acts[-1][:, None].expand(-1, samples, -1, -1).reshape(n, c, L)
        mu, ls = self.decode_rows(mu_e, ls_e, noise.take(n, c, L), noise.take(n, T, zd), tail)
        xt = x[:, None, first:].expand(-1, samples, -1, -1).reshape(n, tail, D)
        return -gaussian_loglik(xt, mu, ls).view(B, samples, tail, D).mean(dim=1)
