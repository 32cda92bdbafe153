"""GPT: a decoder-only transformer in the GPT-2 layout, with RoPE, RMSNorm and SwiGLU as options.

Dimensions: B batch, T sequence length, C d_model, V vocabulary, L layers, nh heads, nkv key/value
heads (nh with plain multi-head attention), hs head size (`head_dim`, by default C // nh), S key length
(cached positions + T).

With `pos="learned", norm="layernorm", mlp="gelu", bias=True, tie_embeddings=True` this is GPT-2
exactly (the tests compare logits with `transformers.GPT2LMHeadModel`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.config import check, check_ranges
from lmforge.models.kv_cache import KVCache, SlotKVCache
from lmforge.models.linear_ce import IGNORE, linear_cross_entropy


@dataclass(frozen=True)
class GPTConfig:
    kind: Literal["gpt"] = "gpt"
    vocab_size: int = 0
    """Vocabulary size; 0 takes it from the tokenizer."""
    context_len: int = 256
    """Longest sequence the model attends over (positions)."""
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 0
    """Key/value heads, each shared by n_head / n_kv_head query heads (grouped-query attention, as in
    Llama 3, Qwen2, SmolLM); 0 means n_head."""
    d_model: int = 256
    head_dim: int = 0
    """Size of each attention head; 0 means d_model // n_head. Attention is n_head * head_dim wide inside
    (a pruned model's heads keep their size while fewer remain)."""
    d_ff: int = 0
    """MLP hidden width; 0 means 4*d_model (GELU/ReLU^2) or 8/3*d_model rounded to 64 (SwiGLU)."""
    pos: Literal["learned", "rope"] = "learned"
    rope_theta: float = 10000.0
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = 1e-5
    mlp: Literal["gelu", "gelu_exact", "swiglu", "relu2"] = "gelu"
    bias: bool = True
    """Biases in linear layers and LayerNorm (GPT-2 has them)."""
    qkv_bias: bool = False
    """Biases on the query, key and value projections even when `bias` is false (Qwen2)."""
    dropout: float = 0.0
    tie_embeddings: bool = True
    init_std: float = 0.02
    """Std of the normal init; residual projections get init_std / sqrt(2 * n_layer)."""

    def __post_init__(self) -> None:
        check_ranges(self, "model", positive="context_len n_layer n_head d_model rope_theta norm_eps init_std",
                     non_negative="vocab_size n_kv_head head_dim d_ff", fraction="dropout")
        check(self.head_dim > 0 or self.d_model % self.n_head == 0, "model.d_model",
              f"must be divisible by model.n_head={self.n_head} (or set model.head_dim)")
        check(self.pos != "rope" or self.head_size() % 2 == 0, "model.pos",
              "rope needs an even head size (model.head_dim, or d_model / n_head)")
        check(self.n_kv_head >= 0 and self.n_head % self.kv_heads() == 0, "model.n_kv_head",
              f"must divide model.n_head={self.n_head} (0 means n_head)")

    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    def head_size(self) -> int:
        return self.head_dim or self.d_model // self.n_head

    def ff_width(self) -> int:
        if self.d_ff:
            return self.d_ff
        if self.mlp == "swiglu":
            return 64 * ((8 * self.d_model // 3 + 63) // 64)
        return 4 * self.d_model

    @property
    def hidden_size(self) -> int:
        return self.d_model

    @property
    def max_positions(self) -> int:
        return self.context_len

    input_format = "plain"
    token_types = False



def rope_tables(cfg: GPTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every (position, frequency), each (context_len, hs)."""
    hs = cfg.head_size()
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hs, 2, dtype=torch.float64) / hs))  # (hs/2,)
    angles = torch.outer(torch.arange(cfg.context_len, dtype=torch.float64), inv_freq)  # (T, hs/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, hs)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE (the Llama/NeoX convention, so weights map 1:1 to HF Llama)."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, nh, T, hs/2) each
    rotated = torch.cat([-x2, x1], dim=-1)  # (B, nh, T, hs)
    return (x * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    """Causal self-attention; with n_kv_head < n_head, groups of query heads share a key/value head (nkv)."""

    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.n_head, self.n_kv, self.layer, self.dropout = cfg.n_head, cfg.kv_heads(), layer, cfg.dropout
        self.hs = hs = cfg.head_size()
        self.sizes = [cfg.n_head * hs, self.n_kv * hs, self.n_kv * hs]  # q, k, v widths
        self.c_attn = nn.Linear(cfg.d_model, sum(self.sizes), bias=cfg.bias or cfg.qkv_bias)  # one matmul
        self.c_proj = nn.Linear(cfg.n_head * hs, cfg.d_model, bias=cfg.bias)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                kv_cache: KVCache | None) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.c_attn(x).split(self.sizes, dim=2)  # (B, T, nh*hs), (B, T, nkv*hs) x 2
        hs = self.hs
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k, v = (t.view(B, T, self.n_kv, hs).transpose(1, 2) for t in (k, v))  # (B, nkv, T, hs)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        mask, causal = None, True
        if kv_cache is not None:
            k, v, mask, causal = kv_cache.attend(self.layer, k, v)  # (B, nkv, S, hs) with the cached keys
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0.0,
                                           enable_gqa=self.n_kv != self.n_head)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * hs)  # (B, T, nh*hs)
        return self.resid_drop(self.c_proj(y))  # (B, T, C)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.kind, width = cfg.mlp, cfg.ff_width()
        self.c_fc = nn.Linear(cfg.d_model, width, bias=cfg.bias)
        if cfg.mlp == "swiglu":
            self.c_gate = nn.Linear(cfg.d_model, width, bias=cfg.bias)
        self.c_proj = nn.Linear(width, cfg.d_model, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)  # (B, T, d_ff)
        if self.kind == "gelu":
            h = F.gelu(h, approximate="tanh")  # GPT-2's "gelu_new"
        elif self.kind == "gelu_exact":
            h = F.gelu(h)  # the erf form (nanoGPT's nn.GELU, HF "gelu"): ~3x cheaper than tanh on CPU
        elif self.kind == "relu2":
            h = F.relu(h).square()
        else:
            h = F.silu(self.c_gate(x)) * h
        return self.drop(self.c_proj(h))  # (B, T, C)


def make_norm(cfg: GPTConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.ln_1, self.attn = make_norm(cfg), Attention(cfg, layer)
        self.ln_2, self.mlp = make_norm(cfg), MLP(cfg)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                kv_cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rope, kv_cache)  # (B, T, C)
        return x + self.mlp(self.ln_2(x))  # (B, T, C)


class GPT(nn.Module):
    # the backbone contract (models/__init__.py)
    pretraining_task = "causal_lm"
    recomputable_layers = True  # runtime.activation_checkpointing recomputes each of its layers
    decoding = "kv_cache"
    default_pooling = "last"
    lm_head_prefixes = ("lm_head.",)
    pooler_prefixes = ()
    classifier_bias = classifier_dropout = False  # HF's GPT2/Llama ForSequenceClassification heads

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("GPTConfig.vocab_size must be set (the tokenizer's vocabulary size)")
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.context_len, cfg.d_model) if cfg.pos == "learned" else None
        if cfg.pos == "rope":
            cos, sin = rope_tables(cfg)
            self.register_buffer("rope_cos", cos, persistent=False)  # derived, so never saved
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # residual outputs: keep the residual stream's variance flat
                nn.init.normal_(p, mean=0.0, std=cfg.init_std / math.sqrt(2 * cfg.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.Tensor, kv_cache: KVCache | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, V); given `labels` (B, T), the next-token loss summed over labels != -100 instead.

        On a CPU in float32 that loss is computed without the logits (models/linear_ce.py: no (B*T, V)
        buffers for logits, log-softmax and their gradients: less memory, the same step time on
        gpt-tiny); elsewhere (a GPU, or under autocast, where the head's matmul runs in bf16) through the
        logits, in the usual way."""
        h = self.hidden(input_ids, kv_cache=kv_cache)  # (B, T, C)
        if labels is None:
            return self.lm_head(h)  # (B, T, V)
        if h.device.type == "cpu" and not torch.is_autocast_enabled("cpu"):
            return _fused_loss(h.flatten(0, 1), self.lm_head.weight, labels.flatten())
        return F.cross_entropy(self.lm_head(h).flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum")

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None, kv_cache: KVCache | None = None) -> torch.Tensor:
        """Everything but the LM head: the final-norm hidden states (B, T, C), as HF GPT2Model returns.

        Attention is causal, so a real token never sees the right padding after it: the mask is not
        needed (and a GPT has no token types)."""
        B, T = input_ids.shape
        if kv_cache is None:
            if T > self.config.context_len:
                raise ValueError(f"{T} positions exceed context_len={self.config.context_len}")
            pos = torch.arange(T, device=input_ids.device)  # (T,)
        else:
            pos = kv_cache.positions(T, input_ids.device)  # (T,), or (B, 1) with a row per request
        x = self.wte(input_ids)  # (B, T, C)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(pos)  # (B, T, C)
        else:
            cos, sin = self.rope_cos[pos], self.rope_sin[pos]  # (T, hs) or (B, 1, hs)
            rope = (cos, sin) if pos.dim() == 1 else (cos.unsqueeze(1), sin.unsqueeze(1))  # over the heads
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, rope, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(T)
        return self.ln_f(x)  # (B, T, C)

    def new_kv_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty cache on this model's device and dtype, `max_len` positions (default context_len)."""
        cfg, w = self.config, self.wte.weight
        return KVCache(cfg.n_layer, batch_size, cfg.kv_heads(), max_len or cfg.context_len,
                       cfg.head_size(), device=w.device, dtype=w.dtype)

    def new_slot_cache(self, rows: int) -> SlotKVCache:
        """An empty cache of `rows` independent sequences of up to context_len positions (serving)."""
        cfg, w = self.config, self.wte.weight
        return SlotKVCache(cfg.n_layer, rows, cfg.kv_heads(), cfg.context_len, cfg.head_size(), device=w.device,
                           dtype=w.dtype)

    def layer_of(self, name: str) -> int:
        """Depth of a parameter: 0 the embeddings, 1..n_layer the blocks, n_layer + 1 the top."""
        parts = name.split(".")
        if parts[0] == "blocks":
            return int(parts[1]) + 1
        return 0 if parts[0] in ("wte", "wpe") else self.config.n_layer + 1

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters (a tied matrix once); `non_embedding` leaves out the token and position tables."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.wte.weight.numel() + (self.wpe.weight.numel() if self.wpe is not None else 0)
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward), PaLM-style: 6*N + 12*L*T*C.

        N counts every weight used in a matmul per token: the non-embedding parameters plus the
        output projection (V*C, which non_embedding left out when tied). 12*L*T*C is the attention
        score and value matmuls over the full T x T square (the causal half is not subtracted); C is
        attention's inner width nh*hs there (d_model unless head_dim says otherwise).
        """
        cfg = self.config
        n = self.num_params(non_embedding=True)
        if cfg.tie_embeddings:
            n += self.lm_head.weight.numel()
        return 6.0 * n + 12.0 * cfg.n_layer * seq_len * cfg.n_head * cfg.head_size()


@torch.compiler.disable
def _fused_loss(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """linear_cross_entropy outside any compiled graph: its chunk loop and hand-written backward run
    eagerly, the transformer below it compiled."""
    return linear_cross_entropy(h, weight, None, labels)

