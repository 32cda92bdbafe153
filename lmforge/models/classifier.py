"""Sequence classification: a pretrained backbone (GPT, BERT or RNN) plus a linear head.

Dimensions: B batch, T sequence length, C hidden width (d_model, or d_hidden for the RNN), L labels.

State-dict names are `backbone.*` (the unchanged names of the pretrained model, so its checkpoint
loads into `backbone` as is) and `head.*`, and each head is the one `transformers` uses, so export is
a renaming:

| backbone | pooling (default)                | head                         | HF class                      |
| -------- | -------------------------------- | ---------------------------- | ----------------------------- |
| bert     | `cls`: tanh(pooler(h[:, 0]))     | dropout, Linear(C, L) + bias | BertForSequenceClassification |
| gpt      | `last`: h at the last real token | Linear(C, L), no bias        | GPT2ForSequenceClassification |
| rnn      | `last`: h at the last real token | dropout, Linear(C, L) + bias | (none)                        |

`mean` pooling (the average of the real tokens' hidden states) is an option for every backbone; for
BERT it bypasses the pooler. Padding is on the right; `attention_mask` (B, T) is 1 on real tokens.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from lmforge.config import ModelConfig

POOLINGS = ("auto", "last", "mean", "cls")


def default_pooling(kind: str) -> str:
    return "cls" if kind == "bert" else "last"


class SequenceClassifier(nn.Module):
    """`logits = head(dropout(pool(backbone(input_ids))))`, (B, L)."""

    def __init__(self, model_cfg: ModelConfig, num_labels: int, pooling: str = "auto",
                 dropout: float = 0.1) -> None:
        super().__init__()
        from lmforge.models import build_model  # the registry imports this module's siblings

        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        pooling = default_pooling(model_cfg.kind) if pooling == "auto" else pooling
        if pooling == "cls" and model_cfg.kind != "bert":
            raise ValueError(f"pooling='cls' needs a BERT backbone ({model_cfg.kind} has no [CLS] pooler)")
        if num_labels < 2:
            raise ValueError(f"a classifier needs at least 2 labels, got {num_labels}")
        self.config, self.kind, self.pooling, self.num_labels = model_cfg, model_cfg.kind, pooling, num_labels
        self.layerwise_lr_decay = 1.0
        """Set by fine-tuning: the lr of each layer below the head is this times the one above."""
        self.backbone = build_model(model_cfg)
        width = model_cfg.d_hidden if model_cfg.kind == "rnn" else model_cfg.d_model
        self.drop = nn.Dropout(0.0 if model_cfg.kind == "gpt" else dropout)  # HF's GPT-2 head has none
        self.head = nn.Linear(width, num_labels, bias=model_cfg.kind != "gpt")
        std = getattr(model_cfg, "init_std", 0.02)
        nn.init.normal_(self.head.weight, mean=0.0, std=std)
        if self.head.bias is not None:
            nn.init.zeros_(self.head.bias)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The pooled representation the head reads, (B, C)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if self.kind == "bert":
            h = self.backbone.encode(input_ids, attention_mask, token_type_ids)  # (B, T, C)
            if self.pooling == "cls":
                return self.backbone.pool(h)  # (B, C)
        elif self.kind == "gpt":
            h = self.backbone.hidden_states(input_ids)  # (B, T, C); causal, so right padding is unseen
        else:
            h = self.backbone.hidden_states(input_ids)  # (B, T, H)
        mask = attention_mask.to(h.dtype)  # (B, T)
        if self.pooling == "mean":
            return (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)  # (B, C)
        last = (attention_mask.long().sum(1) - 1).clamp(min=0)  # (B,) index of the last real token
        return h[torch.arange(h.size(0), device=h.device), last]  # (B, C)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.drop(self.features(input_ids, attention_mask, token_type_ids)))  # (B, L)

    def freeze_backbone(self) -> None:
        """Train the head only (and BERT's pooler, which belongs to the classification path)."""
        for name, p in self.backbone.named_parameters():
            p.requires_grad = self.kind == "bert" and self.pooling == "cls" and name.startswith("pooler.")

    def layer_of(self, name: str) -> int:
        """Depth of a parameter for layer-wise lr decay: 0 embeddings, 1..n_layer blocks, n_layer+1 top."""
        n = self.config.n_layer
        if not name.startswith("backbone."):
            return n + 1
        parts = name.split(".")
        if parts[1] == "blocks":
            return int(parts[2]) + 1
        if parts[1] == "rnn":  # weight_ih_l0, bias_hh_l1, ...
            return int(parts[2].rpartition("_l")[2]) + 1
        if parts[1] in ("wte", "wpe", "word_embeddings", "position_embeddings", "token_type_embeddings",
                        "emb_norm", "encoder"):
            return 0
        return n + 1  # final norm, pooler, decoder

    def lr_scales(self) -> dict[str, float]:
        """Name -> lr multiplier `layerwise_lr_decay ** (top depth - its depth)`; the optimizer reads it."""
        top, decay = self.config.n_layer + 1, self.layerwise_lr_decay
        return {name: decay ** (top - self.layer_of(name)) for name, _ in self.named_parameters()}

    def num_params(self, non_embedding: bool = False) -> int:
        return self.backbone.num_params(non_embedding) + sum(p.numel() for p in self.head.parameters())

    def flops_per_token(self, seq_len: int) -> float:
        return self.backbone.flops_per_token(seq_len)  # the head is one (C, L) matmul per sequence
