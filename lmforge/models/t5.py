"""T5: an encoder-decoder transformer in the T5 v1.1 layout.

Dimensions: B batch, S source length, T target length, C d_model, nh heads, dk head size (d_kv),
F d_ff, V vocabulary, R relative-position buckets.

RMSNorm pre-norm blocks without biases; attention without the 1/sqrt(dk) scale (T5 folds it into the
initialisation); a learned bias per (relative-position bucket, head), computed by the first layer of
each stack and shared by the others; a gated-GELU feed-forward (or the original T5's ReLU one, which
the `t5-small` preset uses for the published 60M shape); an output layer untied from the
embedding (T5 v1.1), or tied and fed hidden states scaled by C**-0.5 (the original T5). The decoder
starts from the pad token. Every weight maps to one tensor of `transformers.T5ForConditionalGeneration`
(the tests compare logits both ways).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.config import check, check_ranges


@dataclass(frozen=True)
class T5Config:
    kind: Literal["t5"] = "t5"
    vocab_size: int = 0
    """Vocabulary size; 0 takes it from the tokenizer (sentinel tokens included)."""
    context_len: int = 512
    """Longest source (and target) the model is used with; relative positions have no hard limit."""
    n_layer: int = 4
    """Encoder layers."""
    n_decoder_layer: int = 0
    """Decoder layers; 0 means n_layer."""
    n_head: int = 4
    d_model: int = 256
    d_kv: int = 0
    """Size of each head; 0 means d_model / n_head."""
    d_ff: int = 0
    """Feed-forward width; 0 means 8/3 * d_model rounded to 64 (gated), 4 * d_model (relu)."""
    feed_forward: Literal["gated-gelu", "relu"] = "gated-gelu"
    """gated-gelu: wo(gelu(wi_0 x) * wi_1 x), T5 v1.1; relu: wo(relu(wi x)), the original T5."""
    relative_buckets: int = 32
    relative_max_distance: int = 128
    norm_eps: float = 1e-6
    dropout: float = 0.1
    tie_embeddings: bool = False
    """Share the output layer with the embedding (original T5; v1.1 unties them)."""
    init_std: float = 1.0
    """T5's initialisation factor (weights ~ N(0, factor * fan_in**-0.5), embeddings N(0, factor))."""

    def __post_init__(self) -> None:
        check_ranges(self, "model", positive="context_len n_layer n_head d_model relative_buckets "
                     "relative_max_distance norm_eps init_std", non_negative="vocab_size n_decoder_layer d_kv d_ff",
                     fraction="dropout")
        check(self.d_kv or self.d_model % self.n_head == 0, "model.d_model",
              f"must be divisible by model.n_head={self.n_head} (or set model.d_kv)")

    def decoder_layers(self) -> int:
        return self.n_decoder_layer or self.n_layer

    def head_size(self) -> int:
        return self.d_kv or self.d_model // self.n_head

    def ff_width(self) -> int:
        if self.d_ff:
            return self.d_ff
        return 64 * ((8 * self.d_model // 3 + 63) // 64) if self.feed_forward == "gated-gelu" else 4 * self.d_model

    @property
    def hidden_size(self) -> int:
        return self.d_model

    @property
    def max_positions(self) -> int:
        return self.context_len

    input_format = "plain"
    token_types = False


def relative_bucket(relative: torch.Tensor, bidirectional: bool, buckets: int, max_distance: int) -> torch.Tensor:
    """T5's bucket of each key-minus-query offset: exact for small offsets, logarithmic beyond, the
    last bucket for everything past `max_distance`; an encoder uses half the buckets per direction."""
    out = torch.zeros_like(relative)
    if bidirectional:
        buckets //= 2
        out += (relative > 0).long() * buckets
        n = relative.abs()
    else:
        n = (-relative).clamp(min=0)  # a decoder only looks back
    exact = buckets // 2
    scaled = torch.log(n.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (buckets - exact)
    large = (exact + scaled.long()).clamp(max=buckets - 1)
    return out + torch.where(n < exact, n, large)


class Attention(nn.Module):
    """Multi-head attention without biases or scale; the first layer of a stack owns the position bias."""

    def __init__(self, cfg: T5Config, bidirectional: bool, position_bias: bool, dropout: float):
        super().__init__()
        self.n_head, self.dk, self.dropout = cfg.n_head, cfg.head_size(), dropout
        inner = self.n_head * self.dk
        self.q, self.k = nn.Linear(cfg.d_model, inner, bias=False), nn.Linear(cfg.d_model, inner, bias=False)
        self.v, self.o = nn.Linear(cfg.d_model, inner, bias=False), nn.Linear(inner, cfg.d_model, bias=False)
        self.bidirectional, self.cfg = bidirectional, cfg
        self.relative_attention_bias = nn.Embedding(cfg.relative_buckets, cfg.n_head) if position_bias else None

    def position_bias(self, q_len: int, k_len: int, offset: int, device) -> torch.Tensor:
        """(1, nh, Tq, Tk): the learned bias of each query (at offset + i) and key position."""
        queries = torch.arange(offset, offset + q_len, device=device)[:, None]
        keys = torch.arange(k_len, device=device)[None, :]
        buckets = relative_bucket(keys - queries, self.bidirectional, self.cfg.relative_buckets,
                                  self.cfg.relative_max_distance)  # (Tq, Tk)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)[None]  # (1, nh, Tq, Tk)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), x.size(1), self.n_head, self.dk).transpose(1, 2)  # (B, nh, L, dk)

    def forward(self, x: torch.Tensor, kv: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
                bias: torch.Tensor) -> torch.Tensor:
        """x (B, Tq, C) queries; kv: the (B, Tk, C) states to attend over, or their projected (k, v);
        bias (B|1, nh, Tq, Tk): position bias plus the mask (-inf where a key may not be seen)."""
        q = self.split(self.q(x))  # (B, nh, Tq, dk)
        k, v = kv if isinstance(kv, tuple) else (self.split(self.k(kv)), self.split(self.v(kv)))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=1.0,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, nh, Tq, dk)
        return self.o(y.transpose(1, 2).reshape(x.size(0), x.size(1), -1))  # (B, Tq, C)


class FeedForward(nn.Module):
    """Gated GELU, wo(gelu(wi_0 x) * wi_1 x), or the original T5's ReLU, wo(relu(wi x))."""

    def __init__(self, cfg: T5Config):
        super().__init__()
        F_ = cfg.ff_width()
        self.gated = cfg.feed_forward == "gated-gelu"
        if self.gated:
            self.wi_0, self.wi_1 = nn.Linear(cfg.d_model, F_, bias=False), nn.Linear(cfg.d_model, F_, bias=False)
        else:
            self.wi = nn.Linear(cfg.d_model, F_, bias=False)
        self.wo = nn.Linear(F_, cfg.d_model, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            h = F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x)  # (B, L, F)
        else:
            h = F.relu(self.wi(x))
        return self.wo(self.drop(h))  # (B, L, C)


class EncoderBlock(nn.Module):
    def __init__(self, cfg: T5Config, first: bool):
        super().__init__()
        self.ln_attn, self.attn = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps), Attention(cfg, True, first, cfg.dropout)
        self.ln_ff, self.ff = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps), FeedForward(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None, mask_bias: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the new states and the attention bias, which the first layer computes from its position
        table (inside its own forward, where FSDP has gathered that table) for the layers after it."""
        if bias is None:
            bias = self.attn.position_bias(x.size(1), x.size(1), 0, x.device) + mask_bias  # (B, nh, S, S)
        h = self.ln_attn(x)
        x = x + self.drop(self.attn(h, h, bias))  # (B, S, C)
        return x + self.drop(self.ff(self.ln_ff(x))), bias


class DecoderBlock(nn.Module):
    def __init__(self, cfg: T5Config, first: bool):
        super().__init__()
        self.ln_self, self.self_attn = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps), Attention(cfg, False, first,
                                                                                            cfg.dropout)
        self.ln_cross, self.cross_attn = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps), Attention(cfg, True, False,
                                                                                              cfg.dropout)
        self.ln_ff, self.ff = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps), FeedForward(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, y: torch.Tensor, memory, self_bias: torch.Tensor | None, cross_bias: torch.Tensor,
                cache: DecoderCache | None, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """As EncoderBlock: the first layer turns its position table into the causal self-attention bias."""
        if self_bias is None:
            T, offset = y.size(1), cache.pos if cache is not None else 0
            self_bias = self.self_attn.position_bias(T, offset + T, offset, y.device)  # (1, nh, T, offset + T)
            causal = torch.ones(T, offset + T, dtype=torch.bool, device=y.device).tril(diagonal=offset)
            self_bias = self_bias.masked_fill(~causal, float("-inf"))
        h = self.ln_self(y)
        kv = h
        if cache is not None:  # the new positions' keys and values join the cached ones
            attn = self.self_attn
            kv = cache.extend(layer, attn.split(attn.k(h)), attn.split(attn.v(h)))
        y = y + self.drop(self.self_attn(h, kv, self_bias))  # (B, T, C)
        y = y + self.drop(self.cross_attn(self.ln_cross(y), memory[layer] if cache else memory, cross_bias))
        return y + self.drop(self.ff(self.ln_ff(y))), self_bias


class DecoderCache:
    """Decoder self-attention keys and values so far (B, nh, t, dk) per layer, and the cross-attention keys
    and values of the encoder output, projected once."""

    def __init__(self, cross: list[tuple[torch.Tensor, torch.Tensor]]):
        self.cross, self.k, self.v, self.pos = cross, [None] * len(cross), [None] * len(cross), 0

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k[layer] is not None:
            k, v = torch.cat([self.k[layer], k], dim=2), torch.cat([self.v[layer], v], dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v

    def __getitem__(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cross[layer]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows `index` (beam search): (B,) -> the batch rows each new row continues."""
        self.k = [k.index_select(0, index) for k in self.k]
        self.v = [v.index_select(0, index) for v in self.v]
        self.cross = [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.cross]


def _mask_bias(mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, 1, S): 0 where a key is real, -inf where it is padding."""
    return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(
        ~mask.bool(), float("-inf"))[:, None, None, :]


class T5(nn.Module):
    # the backbone contract (models/__init__.py)
    pretraining_task = "span_corruption"
    recomputable_layers = True  # runtime.activation_checkpointing recomputes each of its layers
    decoding = "encoder_decoder"
    default_pooling = "mean"
    lm_head_prefixes = ("lm_head.", "decoder.", "dec_norm.")  # a head on the encoder never runs the decoder
    pooler_prefixes = ()
    classifier_bias = classifier_dropout = True

    def __init__(self, cfg: T5Config):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("T5Config.vocab_size must be set (the tokenizer's vocabulary size)")
        self.config = cfg
        self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder = nn.ModuleList(EncoderBlock(cfg, i == 0) for i in range(cfg.n_layer))
        self.decoder = nn.ModuleList(DecoderBlock(cfg, i == 0) for i in range(cfg.decoder_layers()))
        self.enc_norm, self.dec_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps), nn.RMSNorm(cfg.d_model,
                                                                                            eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.shared.weight
        self._init_weights()

    def _init_weights(self) -> None:
        f, C, dk = self.config.init_std, self.config.d_model, self.config.head_size()
        nn.init.normal_(self.shared.weight, std=f)
        if not self.config.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, std=f * C ** -0.5)
        for m in self.modules():
            if isinstance(m, Attention):
                nn.init.normal_(m.q.weight, std=f * (C * dk) ** -0.5)
                for lin in (m.k, m.v):
                    nn.init.normal_(lin.weight, std=f * C ** -0.5)
                nn.init.normal_(m.o.weight, std=f * (m.n_head * dk) ** -0.5)
                if m.relative_attention_bias is not None:
                    nn.init.normal_(m.relative_attention_bias.weight, std=f * C ** -0.5)
            elif isinstance(m, FeedForward):
                for lin in (m.wi_0, m.wi_1) if m.gated else (m.wi,):
                    nn.init.normal_(lin.weight, std=f * C ** -0.5)
                nn.init.normal_(m.wo.weight, std=f * self.config.ff_width() ** -0.5)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder output (B, S, C); attention_mask (B, S) is 1 for tokens, 0 for padding."""
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        x, bias, mask_bias = self.drop(self.shared(input_ids)), None, _mask_bias(mask)  # (B, S, C)
        for block in self.encoder:
            x, bias = block(x, bias, mask_bias)
        return self.drop(self.enc_norm(x))

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The backbone contract: the encoder's hidden states (B, S, C)."""
        return self.encode(input_ids, attention_mask)

    def decode(self, decoder_ids: torch.Tensor, memory: torch.Tensor, attention_mask: torch.Tensor | None,
               cache: DecoderCache | None = None) -> torch.Tensor:
        """Next-token logits (B, T, V) of decoder inputs given the encoder output (B, S, C). With a cache,
        `decoder_ids` are the new positions only and `memory` is ignored (the cache holds it)."""
        B, T = decoder_ids.shape
        S = memory.size(1) if cache is None else cache.cross[0][0].size(2)
        mask = attention_mask if attention_mask is not None else torch.ones(B, S, dtype=torch.long,
                                                                            device=decoder_ids.device)
        cross_bias = _mask_bias(mask).expand(-1, self.config.n_head, T, -1)  # (B, nh, T, S)
        y, self_bias = self.drop(self.shared(decoder_ids)), None  # (B, T, C)
        for i, block in enumerate(self.decoder):
            y, self_bias = block(y, cache if cache is not None else memory, self_bias, cross_bias, cache, i)
        if cache is not None:
            cache.pos += T
        y = self.drop(self.dec_norm(y))
        if self.config.tie_embeddings:
            y = y * self.config.d_model ** -0.5
        return self.lm_head(y)  # (B, T, V)

    def forward(self, input_ids: torch.Tensor, decoder_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher forcing: logits (B, T, V) for every target position."""
        return self.decode(decoder_ids, self.encode(input_ids, attention_mask), attention_mask)

    def new_cache(self, memory: torch.Tensor) -> DecoderCache:
        """A decoding cache for encoder output `memory` (B, S, C): its cross-attention keys and values."""
        cross = [b.cross_attn for b in self.decoder]
        return DecoderCache([(a.split(a.k(memory)), a.split(a.v(memory))) for a in cross])

    def layer_of(self, name: str) -> int:
        """Depth: 0 the embedding, then encoder layers, then decoder layers, the top last."""
        parts = name.split(".")
        if parts[0] == "encoder":
            return int(parts[1]) + 1
        if parts[0] == "decoder":
            return self.config.n_layer + int(parts[1]) + 1
        return 0 if parts[0] == "shared" else self.config.n_layer + self.config.decoder_layers() + 1

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.shared.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per (source + target) token, roughly 6*N (N: matmul weights, the output layer
        included) plus the attention score terms of both stacks."""
        cfg = self.config
        n = self.num_params(non_embedding=True) + (self.lm_head.weight.numel() if cfg.tie_embeddings else 0)
        return 6.0 * n + 12.0 * (cfg.n_layer + 2 * cfg.decoder_layers()) * seq_len * cfg.n_head * cfg.head_size()
