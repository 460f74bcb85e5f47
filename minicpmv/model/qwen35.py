"""Qwen3.5's decoder layers (the LLM of 4.6/4.7), with the official names.

Each layer mixes tokens either with gated full attention or with a Gated DeltaNet (a linear
recurrence with a fixed-size state), then runs the usual SwiGLU MLP. What differs from Qwen3:
- RMSNorm is zero-centred: x_norm * (1 + w), in float32;
- `q_proj` gives, per head, the query and a gate; the attention output is multiplied by
  sigmoid(gate) before `o_proj`; RoPE turns only the first `rotary_dim` dims of each head, and
  4.7 assigns the frequencies to (T, H, W) position rows interleaved (M-RoPE);
- the Gated DeltaNet: a causal depthwise conv + SiLU over [q | k | v], L2-normalised q and k,
  a per-head decay g = -exp(A_log) * softplus(a + dt_bias) and write strength beta = sigmoid(b);
  its output goes through an RMSNorm gated by silu(z). Prefill runs the chunked form, decoding
  the recurrent one: equal in exact arithmetic (tests pin both against each other).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import MLP, KVCache, apply_rope, attend
from .config import LLMConfig

CHUNK = 64  # the official chunk length of the prefill form


class ZeroCentredRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x):
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return (normed * (1.0 + self.weight.float())).type_as(x)


class GatedRMSNorm(nn.Module):
    """RMSNorm with a plain weight, then times silu(gate) (the DeltaNet's output norm)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x, gate):
        normed = self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)
        return (normed * F.silu(gate.float())).to(x.dtype)


def partial_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    rot = cos.shape[-1]
    return torch.cat([apply_rope(x[..., :rot], cos, sin), x[..., rot:]], dim=-1)


class GatedAttention(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.cfg = cfg
        hd, bias = cfg.head_dim, cfg.attention_bias
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_heads * hd * 2, bias=bias)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * hd, bias=bias)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * hd, bias=bias)
        self.o_proj = nn.Linear(cfg.num_heads * hd, cfg.hidden_size, bias=bias)
        self.q_norm = ZeroCentredRMSNorm(hd, cfg.rms_norm_eps)
        self.k_norm = ZeroCentredRMSNorm(hd, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, mask, cache: KVCache | None, layer: int):
        batch, length, _ = x.shape
        hd = self.cfg.head_dim
        query, gate = self.q_proj(x).view(batch, length, -1, 2 * hd).chunk(2, dim=-1)  # (B, T, H, hd) each
        q = partial_rope(self.q_norm(query).transpose(1, 2), cos, sin)  # (B, H, T, hd)
        k = partial_rope(self.k_norm(self.k_proj(x).view(batch, length, -1, hd)).transpose(1, 2), cos, sin)
        v = self.v_proj(x).view(batch, length, -1, hd).transpose(1, 2)  # (B, KVH, T, hd)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        gqa = self.cfg.num_heads != self.cfg.num_kv_heads
        out = attend(q, k, v, mask, gqa)  # (B, H, T, hd)
        out = out.transpose(1, 2).reshape(batch, length, -1) * torch.sigmoid(gate.reshape(batch, length, -1))
        return self.o_proj(out)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + 1e-6)


def delta_rule_chunked(q, k, v, g, beta, state=None, chunk: int = CHUNK):
    """The gated delta rule over a whole sequence, chunk by chunk (prefill and training).

    q, k (B, H, T, dk) normalised and q scaled; v (B, H, T, dv); g, beta (B, H, T); state
    (B, H, dk, dv) or None -> (out (B, H, T, dv), final state). Inside a chunk the sequential
    updates are folded into one unit-lower-triangular solve (the WY form): with decays
    D[i, j] = exp(G_i - G_j) (G the running sum of g, j <= i), the corrected values
    U = (I + tril(beta K K^T * D, -1))^-1 (beta V) stand for every write at once."""
    batch, heads, length, dk = k.shape
    # a shorter sequence is one chunk of its own length: the same sums, without computing the
    # padding (16 tokens padded to 64 made every (C, C) product and solve 16x the work)
    chunk = max(1, min(chunk, length))
    pad = (-length) % chunk
    q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    g, beta = (F.pad(t, (0, pad)) for t in (g, beta))
    n = (length + pad) // chunk
    q, k, v = (t.reshape(batch, heads, n, chunk, -1) for t in (q, k, v))  # (B, H, N, C, d)
    g, beta = g.reshape(batch, heads, n, chunk), beta.reshape(batch, heads, n, chunk)
    cum = g.cumsum(-1)  # (B, H, N, C)
    future = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).triu(1)
    decay = (cum[..., :, None] - cum[..., None, :]).masked_fill(future, float("-inf")).exp()  # (B, H, N, C, C)
    k_beta = k * beta[..., None]
    system = (k_beta @ k.transpose(-1, -2)) * decay
    values = torch.linalg.solve_triangular(system, v * beta[..., None], upper=False, unitriangular=True)
    inner = (q @ k.transpose(-1, -2)) * decay
    k_to_end = k * (cum[..., -1:] - cum).exp()[..., None]
    if state is None and n == 1:  # a first short prompt: nothing to read from a zero state
        return inner[:, :, 0] @ values[:, :, 0], k_to_end[:, :, 0].transpose(-1, -2) @ values[:, :, 0]
    keys_read = torch.linalg.solve_triangular(system, k_beta * cum.exp()[..., None], upper=False, unitriangular=True)
    q_decayed = q * cum.exp()[..., None]
    chunk_decay = cum[..., -1].exp()[..., None, None]  # (B, H, N, 1, 1)
    state = q.new_zeros((batch, heads, dk, v.shape[-1])) if state is None else state.to(q.dtype)
    out = torch.empty_like(values)
    for c in range(n):
        fresh = values[:, :, c] - keys_read[:, :, c] @ state  # what the old state does not predict
        out[:, :, c] = q_decayed[:, :, c] @ state + inner[:, :, c] @ fresh
        state = state * chunk_decay[:, :, c] + k_to_end[:, :, c].transpose(-1, -2) @ fresh
    return out.reshape(batch, heads, -1, v.shape[-1])[:, :, :length], state


def delta_rule_step(q, k, v, g, beta, state=None):
    """The same rule token by token (decoding): arguments as delta_rule_chunked. Products as
    matmuls: a decoded token makes no (dk, dv) temporaries besides the new state."""
    batch, heads, length, dk = k.shape
    state = q.new_zeros((batch, heads, dk, v.shape[-1])) if state is None else state.to(q.dtype)
    # without autograd the (dk, dv) state is updated in place: two passes over it per token
    # instead of four with two new tensors (the 18 DeltaNet layers of 4.6 hold 18 MB of state)
    in_place = not (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, g, beta, state)))
    out = torch.empty_like(v)
    for t in range(length):
        q_t, k_t = q[:, :, t : t + 1], k[:, :, t : t + 1]  # (B, H, 1, dk)
        decay = g[:, :, t, None, None].exp()
        state = state.mul_(decay) if in_place else state * decay
        delta = (v[:, :, t : t + 1] - k_t @ state) * beta[:, :, t, None, None]  # (B, H, 1, dv)
        write = (k_t.transpose(-1, -2), delta)  # rank-one: (B, H, dk, 1) x (B, H, 1, dv)
        state = state.addcmul_(*write) if in_place else state + write[0] @ write[1]
        out[:, :, t : t + 1] = q_t @ state
    return out, state


class GatedDeltaNet(nn.Module):
    """`linear_attn`: the recurrent token mixer. Its cache entry is the conv's last inputs and
    the (dk, dv) state per value head."""

    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.cfg = cfg
        key_dim = cfg.linear_key_heads * cfg.linear_key_head_dim
        value_dim = cfg.linear_value_heads * cfg.linear_value_head_dim
        self.split = (key_dim, key_dim, value_dim)
        channels = sum(self.split)
        self.in_proj_qkv = nn.Linear(cfg.hidden_size, channels, bias=False)
        self.in_proj_z = nn.Linear(cfg.hidden_size, value_dim, bias=False)
        self.in_proj_b = nn.Linear(cfg.hidden_size, cfg.linear_value_heads, bias=False)
        self.in_proj_a = nn.Linear(cfg.hidden_size, cfg.linear_value_heads, bias=False)
        self.conv1d = nn.Conv1d(channels, channels, cfg.linear_conv_kernel, groups=channels, bias=False)
        self.dt_bias = nn.Parameter(torch.ones(cfg.linear_value_heads))
        self.A_log = nn.Parameter(torch.zeros(cfg.linear_value_heads))
        self.norm = GatedRMSNorm(cfg.linear_value_head_dim, cfg.rms_norm_eps)
        self.out_proj = nn.Linear(value_dim, cfg.hidden_size, bias=False)

    def conv(self, mixed: torch.Tensor, cache, layer: int) -> torch.Tensor:
        """Causal depthwise conv + SiLU over (B, T, C), continuing the cached inputs (B, K-1, C).

        K shifted multiply-adds in time-major layout, in place: a depthwise conv1d call (oneDNN)
        took 37 ms for one 740-token prefill layer of the real 4.6, and joining the past to the
        input first, a 17 MB copy per layer; decoding is the T = 1 case."""
        kernel, length = self.conv1d.weight.shape[-1], mixed.shape[1]
        past = cache.conv_states[layer] if cache is not None else None
        if past is None:
            past = mixed.new_zeros((mixed.shape[0], kernel - 1, mixed.shape[2]))
        past = past.to(mixed.dtype)
        if cache is not None:  # the last K - 1 inputs, the past's own where T is shorter
            recent = mixed if length >= kernel - 1 else torch.cat([past, mixed], dim=1)
            cache.conv_states[layer] = recent[:, -(kernel - 1) :].clone()
        weight = self.conv1d.weight[:, 0].t()  # (K, C)
        out = mixed * weight[-1]  # the last tap reads the input itself
        for k in range(kernel - 1):
            # tap k reads the input `shift` steps back: the past's rows for the first steps
            shift = kernel - 1 - k
            if length > shift:
                out[:, shift:].addcmul_(mixed[:, : length - shift], weight[k])
            out[:, : min(shift, length)].addcmul_(past[:, k : k + min(shift, length)], weight[k])
        return F.silu(out)

    def forward(self, x, keep: torch.Tensor | None, cache, layer: int):
        cfg = self.cfg
        if keep is not None:  # padded positions write nothing into the state
            x = x * keep[..., None].to(x.dtype)
        batch, length, _ = x.shape
        mixed = self.conv(self.in_proj_qkv(x), cache, layer)  # (B, T, C)
        q, k, v = mixed.split(self.split, dim=-1)
        q = q.reshape(batch, length, cfg.linear_key_heads, -1)
        k = k.reshape(batch, length, cfg.linear_key_heads, -1)
        v = v.reshape(batch, length, cfg.linear_value_heads, -1)
        groups = cfg.linear_value_heads // cfg.linear_key_heads  # each key head serves this many value heads
        q, k = (t.repeat_interleave(groups, dim=2) if groups > 1 else t for t in (q, k))
        beta = torch.sigmoid(self.in_proj_b(x).float())
        g = -self.A_log.float().exp() * F.softplus(self.in_proj_a(x).float() + self.dt_bias.float())
        # (B, H, T, d) float32: the recurrence accumulates over the whole sequence
        q, k, v = (t.transpose(1, 2).float() for t in (q, k, v))
        q, k = l2_normalize(q) * q.shape[-1] ** -0.5, l2_normalize(k)
        beta, g = beta.transpose(1, 2), g.transpose(1, 2)
        state = cache.recurrent_states[layer] if cache is not None else None
        rule = delta_rule_step if state is not None and length == 1 else delta_rule_chunked
        out, state = rule(q, k, v, g, beta, state)
        if cache is not None:
            cache.recurrent_states[layer] = state
        out = out.transpose(1, 2).to(x.dtype)  # (B, T, Hv, dv)
        z = self.in_proj_z(x).view(batch, length, cfg.linear_value_heads, -1)
        return self.out_proj(self.norm(out, z).reshape(batch, length, -1))


class HybridCache(KVCache):
    """KV cache of the full-attention layers plus, for the DeltaNet layers, the conv inputs and
    the recurrent state: a fixed size per layer whatever the context length."""

    def __init__(self, cfg: LLMConfig, batch: int, max_len: int, dtype: torch.dtype, device):
        super().__init__(cfg, batch, max_len, dtype, device, [t == "full_attention" for t in cfg.layer_types])
        self.conv_states: list[torch.Tensor | None] = [None] * cfg.num_layers
        self.recurrent_states: list[torch.Tensor | None] = [None] * cfg.num_layers

    def reorder(self, rows: torch.Tensor):
        super().reorder(rows)
        for states in (self.conv_states, self.recurrent_states):
            states[:] = [None if s is None else s.index_select(0, rows.to(s.device)) for s in states]


class SparseMoE(nn.Module):
    """4.7's MoE MLP: a softmax router picks `experts_per_token` experts per token (their weights
    renormalised to sum to 1), plus a shared expert scaled by sigmoid(shared_expert_gate(x))."""

    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.top_k = cfg.experts_per_token
        self.gate = nn.Linear(cfg.hidden_size, cfg.num_experts, bias=False)
        self.experts = nn.ModuleList(MLP(cfg.hidden_size, cfg.expert_intermediate_size) for _ in range(cfg.num_experts))
        self.shared_expert = MLP(cfg.hidden_size, cfg.shared_expert_intermediate_size)
        self.shared_expert_gate = nn.Linear(cfg.hidden_size, 1, bias=False)

    def route(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The (token, expert) pairs of flat (N, D) grouped by expert, ascending, tokens in order
        within each: their tokens (N k,), routing weights (N k, 1) and each expert's count (E,)."""
        weights = F.softmax(self.gate(flat).float(), dim=-1)
        top, chosen = weights.topk(self.top_k, dim=-1)  # (N, k)
        top = (top / top.sum(-1, keepdim=True)).to(flat.dtype)
        # sorted once, instead of a search per expert (256 of them in 4.7's MoE: the searches cost
        # more than a short prompt's products)
        order = chosen.flatten().argsort(stable=True)  # (N k,)
        counts = torch.bincount(chosen.flatten(), minlength=len(self.experts))
        return order // self.top_k, top.flatten()[order, None], counts

    def shared(self, flat: torch.Tensor) -> torch.Tensor:
        return self.shared_expert(flat) * torch.sigmoid(self.shared_expert_gate(flat))

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])  # (N, D)
        tokens, scales, counts = self.route(flat)
        counts = counts.tolist()
        out = torch.zeros_like(flat)
        # each expert's rows gathered and added back on their own, in cache, in expert order
        for expert, index, scale, count in zip(self.experts, tokens.split(counts), scales.split(counts), counts):
            if count:
                out.index_add_(0, index, expert(flat[index]) * scale)
        return (out + self.shared(flat)).view_as(x)


class Qwen35Layer(nn.Module):
    def __init__(self, cfg: LLMConfig, index: int):
        super().__init__()
        self.input_layernorm = ZeroCentredRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = ZeroCentredRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.recurrent = cfg.layer_type(index) == "linear_attention"
        if self.recurrent:
            self.linear_attn = GatedDeltaNet(cfg)
        else:
            self.self_attn = GatedAttention(cfg)
        self.mlp = SparseMoE(cfg) if cfg.num_experts else MLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x, cos, sin, mask, cache, layer, keep=None):
        normed = self.input_layernorm(x)
        if self.recurrent:
            x = x + self.linear_attn(normed, keep, cache, layer)
        else:
            x = x + self.self_attn(normed, cos, sin, mask, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))
