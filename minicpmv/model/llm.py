"""Decoder-only LLM for the four families (docs/model.md), with the official names
(`llm.model.layers.N.self_attn.q_proj`, `llm.lm_head`, ...).

One implementation, parameterised by `LLMConfig`: Qwen2 has q/k/v biases and GQA; Qwen3 has GQA
and an RMSNorm over every head of q and k (`q_norm`, `k_norm`) before RoPE; Llama-3 has GQA; MiniCPM multiplies token embeddings by `scale_emb`, scales every residual branch by
`scale_depth / sqrt(L)` and divides the final hidden state by `hidden / dim_model_base`.
The model takes embeddings (vision rows already scattered in), never token strings.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import CAUSAL, MLP, KVCache, RMSNorm, apply_rope, attend, rope_cos_sin
from .config import LLMConfig
from .embedding import embedding
from .qwen35 import HybridCache, Qwen35Layer, ZeroCentredRMSNorm

__all__ = ["KVCache", "LanguageModel", "RMSNorm", "apply_rope", "attention_bias", "rope_cos_sin"]


class Attention(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.cfg = cfg
        hd, bias = cfg.head_dim, cfg.attention_bias
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_heads * hd, bias=bias)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * hd, bias=bias)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * hd, bias=bias)
        self.o_proj = nn.Linear(cfg.num_heads * hd, cfg.hidden_size, bias=False)
        if cfg.qk_norm:
            self.q_norm, self.k_norm = RMSNorm(hd, cfg.rms_norm_eps), RMSNorm(hd, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, mask, cache: KVCache | None, layer: int):
        batch, length, _ = x.shape
        hd = self.cfg.head_dim
        q = self.q_proj(x).view(batch, length, -1, hd)  # (B, T, H, hd)
        k = self.k_proj(x).view(batch, length, -1, hd)  # (B, T, KVH, hd)
        if self.cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, T, hd), (B, KVH, T, hd)
        v = self.v_proj(x).view(batch, length, -1, hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, KVH, S, hd) with S = cached + T
        # grouped-query attention inside SDPA: no per-step copy of the whole cache per head
        gqa = self.cfg.num_heads != self.cfg.num_kv_heads
        out = attend(q, k, v, mask, gqa)  # (B, H, T, hd)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size)
        self.residual_scale = cfg.residual_scale

    def forward(self, x, cos, sin, mask, cache, layer, keep=None):
        # add with alpha: the residual scaling costs no extra op (and none at all when it is 1)
        x = torch.add(
            x, self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer), alpha=self.residual_scale
        )
        return torch.add(x, self.mlp(self.post_attention_layernorm(x)), alpha=self.residual_scale)


HYBRID = "qwen3_5"  # the family whose layers mix attention and a recurrence (qwen35.py)


class DecoderModel(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.embed_tokens = embedding(cfg.vocab_size, cfg.hidden_size)
        if cfg.family == HYBRID:
            self.layers = nn.ModuleList(Qwen35Layer(cfg, i) for i in range(cfg.num_layers))
            self.norm = ZeroCentredRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        else:
            self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
            self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


def attention_bias(
    attention_mask: torch.Tensor | None, batch: int, query_len: int, past_len: int, dtype: torch.dtype, device
) -> torch.Tensor:
    """Additive mask (B, 1, T, S): causal over absolute positions plus padded keys.

    attention_mask (B, S) marks real tokens with 1 (S = past + T). Rows that see no real key
    (left padding) keep a finite minimum instead of -inf, so they stay NaN-free.
    """
    total = past_len + query_len
    query_pos = torch.arange(past_len, total, device=device)[:, None]
    allowed = torch.arange(total, device=device)[None, :] <= query_pos  # (T, S)
    allowed = allowed[None, None].expand(batch, 1, query_len, total)
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, None, :total].bool().to(device)
    bias = torch.zeros((batch, 1, query_len, total), dtype=dtype, device=device)
    return bias.masked_fill(~allowed, torch.finfo(dtype).min)


class LanguageModel(nn.Module):
    """`llm.*`: embeddings in, logits out; an optional KV cache makes decoding incremental."""

    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.cfg = cfg
        self.model = DecoderModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.gradient_checkpointing = False  # training: trade compute for activation memory

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings, times scale_emb for MiniCPM."""
        embeds = self.model.embed_tokens(input_ids)
        return embeds * self.cfg.scale_emb if self.cfg.scale_emb != 1.0 else embeds

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        weight = self.model.embed_tokens.weight
        kind = HybridCache if self.cfg.family == HYBRID else KVCache
        return kind(self.cfg, batch, max_len, weight.dtype, weight.device)

    def forward(
        self,
        inputs_embeds,
        position_ids=None,
        attention_mask=None,
        cache: KVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """inputs_embeds (B, T, D) -> logits (B, T, V), or (B, 1, V) with last_only.

        position_ids (B, T) default to cache.length + arange(T) (4.7: (3, B, T) rows T, H, W);
        attention_mask (B, S) marks real tokens of the whole sequence so far (S = cached + T); a
        (B, 1, T, S) bool mask is used as given (packed training rows).
        """
        batch, length, _ = inputs_embeds.shape
        past = cache.length if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + length, device=inputs_embeds.device).expand(batch, length)
        cos, sin = rope_cos_sin(position_ids, self.cfg, inputs_embeds.dtype)
        keep = None  # recurrent layers: which tokens are real (padding must write nothing)
        if self.cfg.family == HYBRID and attention_mask is not None and attention_mask.dim() == 2:
            if not bool(attention_mask.all()):
                keep = attention_mask[:, past : past + length].to(inputs_embeds.device)  # (B, T)
        # one new token with no padding sees every cached key: nothing to mask (SDPA's fast path)
        unpadded = attention_mask is None or bool(attention_mask.all())
        if attention_mask is not None and attention_mask.dim() == 4:  # (B, 1, T, S) bool: e.g. packed samples
            mask = attention_mask.to(device=inputs_embeds.device, dtype=torch.bool)
        elif length == 1 and unpadded:
            mask = None
        elif past == 0 and unpadded:
            mask = CAUSAL
        else:
            mask = attention_bias(attention_mask, batch, length, past, inputs_embeds.dtype, inputs_embeds.device)
        logits = self.run_layers(inputs_embeds, cos, sin, mask, cache, last_only, keep)
        if cache is not None:
            cache.advance(length)
        return logits

    def run_layers(self, x, cos, sin, mask, cache: KVCache | None, last_only: bool, keep=None) -> torch.Tensor:
        """The decoder stack and the head: embeddings (B, T, D) -> logits. Positions, mask and the
        cache's bookkeeping stay outside, so that this part can be compiled as one graph."""
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for index, layer in enumerate(self.model.layers):
            if recompute:  # keep only each layer's input; recompute its inside in the backward pass
                x = checkpoint(layer, x, cos, sin, mask, cache, index, keep, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, cache, index, keep)
        return self.logits(x[:, -1:] if last_only else x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden states (B, T, D) -> logits (B, T, V): final norm, MiniCPM's divisor, head."""
        x = self.model.norm(x)
        if self.cfg.logit_divisor != 1.0:
            x = x / self.cfg.logit_divisor
        return self.lm_head(x)
