"""Task heads on a pretrained backbone (any model of the registry, through the backbone contract).

Dimensions: B batch, T sequence length, C hidden width (`config.hidden_size`), L labels.

State-dict names are `backbone.*` (the unchanged names of the pretrained model, so its checkpoint
loads into `backbone` as is) and `head.*`; each head is the one `transformers` uses for the
backbone's family, so export is a renaming:

| backbone | pooling (default)                | head                         | HF class                      |
| -------- | -------------------------------- | ---------------------------- | ----------------------------- |
| bert     | `cls`: tanh(pooler(h[:, 0]))     | dropout, Linear(C, L) + bias | BertForSequenceClassification |
| gpt      | `last`: h at the last real token | Linear(C, L), no bias        | GPT2ForSequenceClassification |
| rnn      | `last`: h at the last real token | dropout, Linear(C, L) + bias | (none)                        |

Per-token heads (the same layout in every HF family):

| head | computes | HF classes |
| ---- | -------- | ---------- |
| TokenClassifier | dropout, Linear(C, L) + bias on every token: (B, T, L) | *ForTokenClassification (`classifier`) |
| SpanScorer | Linear(C, 2) + bias: start and end logits (B, T) each | *ForQuestionAnswering (`qa_outputs`) |

`mean` pooling (the average of the real tokens' hidden states) is an option for every backbone; for
BERT it bypasses the pooler. Padding is on the right; `attention_mask` (B, T) is 1 on real tokens.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from lmforge.models import ModelConfig, build_model, model_class

POOLINGS = ("auto", "last", "mean", "cls")


class SequenceClassifier(nn.Module):
    """`logits = head(dropout(pool(backbone(input_ids))))`, (B, L)."""

    def __init__(self, model_cfg: ModelConfig, num_labels: int, pooling: str = "auto",
                 dropout: float = 0.1) -> None:
        super().__init__()
        kind = model_class(model_cfg)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        pooling = kind.default_pooling if pooling == "auto" else pooling
        if pooling == "cls" and kind.default_pooling != "cls":
            raise ValueError(f"pooling='cls' needs a backbone with a [CLS] pooler ({model_cfg.kind} has none)")
        if num_labels < 2:
            raise ValueError(f"a classifier needs at least 2 labels, got {num_labels}")
        self.config, self.pooling, self.num_labels = model_cfg, pooling, num_labels
        self.layerwise_lr_decay = 1.0
        """Set by fine-tuning: the lr of each layer below the head is this times the one above."""
        self.backbone = build_model(model_cfg)
        self.drop = nn.Dropout(dropout if kind.classifier_dropout else 0.0)
        self.head = nn.Linear(model_cfg.hidden_size, num_labels, bias=kind.classifier_bias)
        nn.init.normal_(self.head.weight, mean=0.0, std=getattr(model_cfg, "init_std", 0.02))
        if self.head.bias is not None:
            nn.init.zeros_(self.head.bias)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The pooled representation the head reads, (B, C)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        h = self.backbone.hidden(input_ids, attention_mask, token_type_ids)  # (B, T, C)
        if self.pooling == "cls":
            return self.backbone.pool(h)  # (B, C)
        mask = attention_mask.to(h.dtype)  # (B, T)
        if self.pooling == "mean":
            return (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)  # (B, C)
        last = (attention_mask.long().sum(1) - 1).clamp(min=0)  # (B,) index of the last real token
        return h[torch.arange(h.size(0), device=h.device), last]  # (B, C)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.drop(self.features(input_ids, attention_mask, token_type_ids)))  # (B, L)

    def unused_prefixes(self) -> tuple[str, ...]:
        """Backbone parameters classification never runs: the LM head, and the pooler unless pooling
        is cls. A head weight tied to the embedding is named (and trained) as the embedding."""
        unused = self.backbone.lm_head_prefixes
        return unused if self.pooling == "cls" else unused + self.backbone.pooler_prefixes

    def freeze_unused(self) -> None:
        """requires_grad=False on what the classifier never runs: DDP must not wait for gradients that
        never come, and the optimizer leaves them out."""
        for name, p in self.backbone.named_parameters():
            if name.startswith(self.unused_prefixes()):
                p.requires_grad_(False)

    def freeze_backbone(self) -> None:
        """Train the head only (and the [CLS] pooler, which belongs to the classification path)."""
        for name, p in self.backbone.named_parameters():
            p.requires_grad = self.pooling == "cls" and name.startswith(self.backbone.pooler_prefixes)

    def layer_of(self, name: str) -> int:
        """Depth for layer-wise lr decay: the backbone's depths, the head on top (n_layer + 1)."""
        if name.startswith("backbone."):
            return self.backbone.layer_of(name[len("backbone."):])
        return self.config.n_layer + 1

    def lr_scales(self) -> dict[str, float]:
        """Name -> lr multiplier `layerwise_lr_decay ** (top depth - its depth)`; the optimizer reads it."""
        top, decay = self.config.n_layer + 1, self.layerwise_lr_decay
        return {name: decay ** (top - self.layer_of(name)) for name, _ in self.named_parameters()}

    def num_params(self, non_embedding: bool = False) -> int:
        return self.backbone.num_params(non_embedding) + sum(p.numel() for p in self.head.parameters())

    def flops_per_token(self, seq_len: int) -> float:
        return self.backbone.flops_per_token(seq_len)  # the head is one (C, L) matmul per sequence


class TokenHead(nn.Module):
    """A backbone with a per-token linear head (`head`): what token classification and span extraction
    share. The LM head and the pooler are never run (frozen so DDP does not wait for their gradients)."""

    def __init__(self, model_cfg: ModelConfig, outputs: int, dropout: float) -> None:
        super().__init__()
        self.config = model_cfg
        self.layerwise_lr_decay = 1.0
        self.backbone = build_model(model_cfg)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(model_cfg.hidden_size, outputs)
        nn.init.normal_(self.head.weight, mean=0.0, std=getattr(model_cfg, "init_std", 0.02))
        nn.init.zeros_(self.head.bias)

    def token_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                     token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        h = self.backbone.hidden(input_ids, attention_mask, token_type_ids)  # (B, T, C)
        return self.head(self.drop(h))  # (B, T, outputs)

    def unused_prefixes(self) -> tuple[str, ...]:
        return self.backbone.lm_head_prefixes + self.backbone.pooler_prefixes

    def freeze_unused(self) -> None:
        for name, p in self.backbone.named_parameters():
            if name.startswith(self.unused_prefixes()):
                p.requires_grad_(False)

    def freeze_backbone(self) -> None:
        for p in self.backbone.parameters():
            p.requires_grad_(False)

    def lr_scales(self) -> dict[str, float]:
        """Layer-wise lr decay: the backbone's depths, the head on top (n_layer + 1)."""
        top, decay = self.config.n_layer + 1, self.layerwise_lr_decay
        depth = {name: self.backbone.layer_of(name[len("backbone."):]) if name.startswith("backbone.") else top
                 for name, _ in self.named_parameters()}
        return {name: decay ** (top - d) for name, d in depth.items()}

    def num_params(self, non_embedding: bool = False) -> int:
        return self.backbone.num_params(non_embedding) + sum(p.numel() for p in self.head.parameters())

    def flops_per_token(self, seq_len: int) -> float:
        return self.backbone.flops_per_token(seq_len) + 6 * self.head.weight.numel()


class TokenClassifier(TokenHead):
    """One label per token: `logits = head(dropout(backbone(input_ids)))`, (B, T, L)."""

    def __init__(self, model_cfg: ModelConfig, num_labels: int, dropout: float = 0.1) -> None:
        if num_labels < 2:
            raise ValueError(f"a token classifier needs at least 2 labels, got {num_labels}")
        super().__init__(model_cfg, num_labels, dropout)
        self.num_labels = num_labels

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.token_logits(input_ids, attention_mask, token_type_ids)  # (B, T, L)


class SpanScorer(TokenHead):
    """Where an answer starts and ends: `start, end = head(backbone(input_ids)).unbind(-1)`, (B, T) each.
    No dropout before the head, as HF's *ForQuestionAnswering."""

    def __init__(self, model_cfg: ModelConfig) -> None:
        super().__init__(model_cfg, 2, 0.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.token_logits(input_ids, attention_mask, token_type_ids).unbind(-1)  # (B, T) each
        return start, end
