"""Training objectives: each returns the SUM of its per-target losses and the number of targets.

The loop divides by the number of targets in the whole optimizer step (every micro-batch, every
process), so gradient accumulation and data parallelism give exactly the gradient of one big batch.
Labels equal to `IGNORE` (-100) are not targets.

An objective is any callable `objective(model, batch) -> (loss_sum, n_targets, extras)` where
`loss_sum` is a scalar tensor, `n_targets` a scalar tensor (or int) and `extras` a dict of tensors
to log. `count_targets(batch)` counts the targets of a host-side batch before any forward pass.

Dimension letters: B batch, T sequence length, V vocabulary size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100


def count_targets(batch: dict[str, torch.Tensor]) -> int:
    """Targets in a batch still on the host (no device synchronisation)."""
    return int((batch["labels"] != IGNORE).sum())


def causal_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]):
    """Next-token cross-entropy summed over every labelled position."""
    logits = model(batch["input_ids"])  # (B, T, V)
    labels = batch["labels"]  # (B, T)
    loss_sum = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum")
    return loss_sum, (labels != IGNORE).sum(), {}


def masked_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]):
    """Cross-entropy summed over the masked (labelled) positions; extras count the correct predictions.

    All positions go through the loss with IGNORE labels rather than gathering the selected rows:
    boolean indexing would make the host wait for the device on every micro-step.
    """
    logits = model(batch["input_ids"], attention_mask=batch.get("attention_mask"))  # (B, T, V)
    labels = batch["labels"]  # (B, T)
    loss_sum = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum")
    selected = labels != IGNORE  # (B, T)
    correct = ((logits.detach().argmax(dim=-1) == labels) & selected).sum()
    return loss_sum, selected.sum(), {"correct": correct}
