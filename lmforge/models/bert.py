"""BERT: a bidirectional transformer encoder with a masked-LM head and a [CLS] pooler.

Dimensions: B batch, T sequence length, N real (unpadded) tokens of a batch, C d_model, V vocabulary,
nh heads, hs head size (`head_dim`, by default C // nh).

Every weight corresponds to exactly one tensor of `transformers.BertForMaskedLM` (plus the pooler of
`BertModel`), so export is a renaming; the tests check the logits against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.config import check, check_ranges


@dataclass(frozen=True)
class BertConfig:
    kind: Literal["bert"] = "bert"
    vocab_size: int = 0
    """Vocabulary size; 0 takes it from the tokenizer."""
    context_len: int = 128
    """Positions a sequence may use."""
    position_offset: int = 0
    """Position ids start here (RoBERTa: its padding id + 1 = 2); the table has context_len + offset rows."""
    n_layer: int = 2
    n_head: int = 2
    d_model: int = 128
    head_dim: int = 0
    """Size of each attention head; 0 means d_model // n_head. Attention is n_head * head_dim wide inside
    (a pruned model's heads keep their size while fewer remain)."""
    d_ff: int = 0
    """MLP hidden width; 0 means 4*d_model."""
    type_vocab_size: int = 2
    """Segment (token type) embeddings; 0 disables them (1: a table whose one row every token gets)."""
    pair_style: Literal["bert", "roberta"] = "bert"
    """How a text pair is joined: [CLS] a [SEP] b [SEP], or RoBERTa's <s> a </s></s> b </s>."""
    pooler_activation: Literal["tanh", "relu"] = "tanh"
    """The [CLS] pooler's activation: BERT's tanh, or DistilBERT's pre_classifier ReLU."""
    pre_norm: bool = False
    """Pre-norm blocks instead of BERT's post-norm."""
    norm_eps: float = 1e-12
    dropout: float = 0.1
    attn_dropout: float = 0.1
    tie_embeddings: bool = True
    init_std: float = 0.02

    def __post_init__(self) -> None:
        check_ranges(self, "model", positive="context_len n_layer n_head d_model norm_eps init_std",
                     non_negative="vocab_size head_dim d_ff type_vocab_size position_offset",
                     fraction="dropout attn_dropout")
        check(self.head_dim > 0 or self.d_model % self.n_head == 0, "model.d_model",
              f"must be divisible by model.n_head={self.n_head} (or set model.head_dim)")

    def head_size(self) -> int:
        return self.head_dim or self.d_model // self.n_head

    def ff_width(self) -> int:
        return self.d_ff or 4 * self.d_model

    @property
    def hidden_size(self) -> int:
        return self.d_model

    @property
    def max_positions(self) -> int:
        return self.context_len

    @property
    def input_format(self) -> str:
        return "cls_sep" if self.pair_style == "bert" else "cls_sep_sep"

    @property
    def token_types(self) -> bool:
        """Whether inputs carry token_type_ids (0 for the first text of a pair, 1 for the second)."""
        return self.type_vocab_size >= 2 and self.pair_style == "bert"



class Layout:
    """Where the real tokens of a right-padded (B, T) batch sit, so that every per-token layer (the
    projections, the MLP, the norms: nearly all of the FLOPs) runs on those N tokens alone, and only
    attention sees the padded (B, T) grid. Short texts padded to the longest of their batch are mostly
    padding; without any padding `pad`/`unpad` are reshapes and nothing is copied.
    """

    def __init__(self, attention_mask: torch.Tensor | None, B: int, T: int) -> None:
        self.B, self.T = B, T
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None
        self.index = None if attention_mask is None else attention_mask.flatten().nonzero().squeeze(1)  # (N,)
        self.mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (N, D), the real tokens in order."""
        flat = x.flatten(0, 1)
        return flat if self.index is None else flat.index_select(0, self.index)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (B, T, D), zeros at the padding."""
        if self.index is None:
            return x.view(self.B, self.T, -1)
        return x.new_zeros(self.B * self.T, x.size(-1)).index_copy(0, self.index, x).view(self.B, self.T, -1)


class Attention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.n_head, self.hs, self.dropout = cfg.n_head, cfg.head_size(), cfg.attn_dropout
        inner = cfg.n_head * self.hs  # d_model unless head_dim says otherwise
        # separate q, k, v (not fused) so that each maps to one HF tensor
        self.query = nn.Linear(cfg.d_model, inner)
        self.key = nn.Linear(cfg.d_model, inner)
        self.value = nn.Linear(cfg.d_model, inner)
        self.out = nn.Linear(inner, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, layout: Layout) -> torch.Tensor:
        """x (N, C): the real tokens; returns (N, C)."""
        B, T, nh, hs = layout.B, layout.T, self.n_head, self.hs
        q, k, v = (layout.pad(lin(x)).view(B, T, nh, hs).transpose(1, 2)
                   for lin in (self.query, self.key, self.value))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=layout.mask,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, nh, T, hs)
        y = layout.unpad(y.transpose(1, 2).reshape(B, T, nh * hs))  # (N, nh*hs)
        return self.drop(self.out(y))


class MLP(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.ff_width())
        self.fc2 = nn.Linear(cfg.ff_width(), cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(x))))  # exact erf GELU, as in BERT; (N, C)


class Block(nn.Module):
    """Post-norm (BERT: norm(x + f(x))) or, with cfg.pre_norm, pre-norm (x + f(norm(x)))."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.pre_norm = cfg.pre_norm
        self.attn, self.ln_attn = Attention(cfg), nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp, self.ln_mlp = MLP(cfg), nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)

    def forward(self, x: torch.Tensor, layout: Layout) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attn(self.ln_attn(x), layout)
            return x + self.mlp(self.ln_mlp(x))
        x = self.ln_attn(x + self.attn(x, layout))  # (N, C)
        return self.ln_mlp(x + self.mlp(x))


class Bert(nn.Module):
    # the backbone contract (models/__init__.py)
    pretraining_task = "masked_lm"
    recomputable_layers = True  # runtime.activation_checkpointing recomputes each of its layers
    decoding = None
    default_pooling = "cls"
    lm_head_prefixes = ("head_dense.", "head_norm.", "decoder.")
    pooler_prefixes = ("pooler.",)
    classifier_bias = classifier_dropout = True  # HF's BertForSequenceClassification head

    def __init__(self, cfg: BertConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("BertConfig.vocab_size must be set (the tokenizer's vocabulary size)")
        self.config = cfg
        C = cfg.d_model
        self.word_embeddings = nn.Embedding(cfg.vocab_size, C)
        self.position_embeddings = nn.Embedding(cfg.context_len + cfg.position_offset, C)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, C) if cfg.type_vocab_size else None
        self.emb_norm = nn.LayerNorm(C, eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        # pre-norm leaves the last block's output unnormalised
        self.ln_f = nn.LayerNorm(C, eps=cfg.norm_eps) if cfg.pre_norm else None
        self.head_dense = nn.Linear(C, C)  # MLM head: dense -> gelu -> norm -> decoder
        self.head_norm = nn.LayerNorm(C, eps=cfg.norm_eps)
        self.decoder = nn.Linear(C, cfg.vocab_size)  # its bias is the head's own output bias
        if cfg.tie_embeddings:
            self.decoder.weight = self.word_embeddings.weight
        self.pooler = nn.Linear(C, C)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states (B, T, C); attention_mask (B, T) is 1 for tokens, 0 for padding."""
        return self.encode(input_ids, Layout(attention_mask, *input_ids.shape), token_type_ids)

    def embed(self, input_ids: torch.Tensor, layout: Layout, token_type_ids: torch.Tensor | None = None
              ) -> torch.Tensor:
        """The real tokens' input vectors (N, C): word + position (+ segment) embeddings, normalised (and
        dropped out in training)."""
        T = input_ids.size(1)
        if T > self.config.context_len:
            raise ValueError(f"{T} positions exceed context_len={self.config.context_len}")
        offset = self.config.position_offset  # right padding: real tokens sit at offset, offset + 1, ...
        x = self.word_embeddings(input_ids) + self.position_embeddings(
            torch.arange(offset, offset + T, device=input_ids.device))  # (B, T, C)
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.token_type_embeddings(token_type_ids)
        elif token_type_ids is not None:
            raise ValueError("token_type_ids given but type_vocab_size=0 (no segment embeddings)")
        return self.drop(self.emb_norm(layout.unpad(x)))  # (N, C): the real tokens only

    def encode(self, input_ids: torch.Tensor, layout: Layout, token_type_ids: torch.Tensor | None = None
               ) -> torch.Tensor:
        """`hidden` for a batch whose `Layout` is already made (ELECTRA reuses one for two encoders)."""
        x = self.embed(input_ids, layout, token_type_ids)  # (N, C)
        for block in self.blocks:
            x = block(x, layout)
        return layout.pad(self.ln_f(x) if self.ln_f is not None else x)  # (B, T, C), zeros at the padding

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, positions: torch.Tensor | None = None) -> torch.Tensor:
        """MLM logits (B, T, V), or (B, P, V) at `positions` (B, P) only.

        The head (dense, norm and the V-wide decoder) costs as much as the whole encoder of a small BERT
        when run at every position; pretraining only needs it at the ~15% masked ones.
        """
        h = self.hidden(input_ids, attention_mask, token_type_ids)  # (B, T, C)
        if positions is not None:
            h = h.gather(1, positions[:, :, None].expand(-1, -1, h.size(-1)))  # (B, P, C)
        h = self.head_norm(F.gelu(self.head_dense(h)))
        return self.decoder(h)  # (B, T, V) or (B, P, V)

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """The [CLS] summary for classification: tanh (or relu) of dense(hidden[:, 0]), (B, C)."""
        h = self.pooler(hidden[:, 0])
        return torch.tanh(h) if self.config.pooler_activation == "tanh" else torch.relu(h)

    def layer_of(self, name: str) -> int:
        """Depth of a parameter: 0 the embeddings, 1..n_layer the blocks, n_layer + 1 the top."""
        parts = name.split(".")
        if parts[0] == "blocks":
            return int(parts[1]) + 1
        embeddings = ("word_embeddings", "position_embeddings", "token_type_embeddings", "emb_norm")
        return 0 if parts[0] in embeddings else self.config.n_layer + 1

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters (a tied matrix once); `non_embedding` leaves out the word/position/segment tables."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            tables = [self.word_embeddings, self.position_embeddings, self.token_type_embeddings]
            n -= sum(t.weight.numel() for t in tables if t is not None)
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token, 6*N + 12*L*T*C, as for GPT (N: matmul weights incl. the decoder).

        The pooler is counted in N although masked-LM pretraining does not run it (C*C, negligible). The
        attention term's C is attention's inner width nh*hs (d_model unless head_dim says otherwise).
        """
        cfg = self.config
        n = self.num_params(non_embedding=True)
        if cfg.tie_embeddings:
            n += self.decoder.weight.numel()
        return 6.0 * n + 12.0 * cfg.n_layer * seq_len * cfg.n_head * cfg.head_size()
