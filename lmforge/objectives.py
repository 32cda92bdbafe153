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

from lmforge.runtime import all_reduce

IGNORE = -100


def count_targets(batch: dict[str, torch.Tensor]) -> int:
    """Targets in a batch still on the host (no device synchronisation)."""
    if "labels" not in batch:  # span extraction: one target (a start and an end) per window
        return len(batch["start_positions"])
    return int((batch["labels"] != IGNORE).sum())


def causal_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]):
    """Next-token cross-entropy summed over every labelled position; the GPT sums it itself (on a CPU
    without materialising the logits: models/linear_ce.py)."""
    labels = batch["labels"]  # (B, T)
    return model(batch["input_ids"], labels=labels), (labels != IGNORE).sum(), {}


def masked_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]):
    """Cross-entropy summed over the masked (labelled) positions; extras count the correct predictions.

    With `mlm_positions` (B, P) in the batch (the masked-LM loader lists every labelled position there,
    padded with position 0, whose label is IGNORE) the model runs its head at those positions only.
    The positions come from the host at a fixed width P: boolean indexing on the device would make
    the host wait for it on every micro-step. Without them every position goes through the head.
    """
    positions = batch.get("mlm_positions")
    extra = {} if positions is None else {"positions": positions}
    logits = model(batch["input_ids"], attention_mask=batch.get("attention_mask"), **extra)  # (B, T|P, V)
    labels = batch["labels"] if positions is None else batch["labels"].gather(1, positions)  # (B, T) or (B, P)
    loss_sum = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum")
    selected = labels != IGNORE
    correct = ((logits.detach().argmax(dim=-1) == labels) & selected).sum()
    return loss_sum, selected.sum(), {"correct": correct}


def replaced_token_detection_loss(model: nn.Module, batch: dict[str, torch.Tensor], disc_weight: float,
                                  mask_prob: float):
    """ELECTRA: the generator's cross-entropy at the masked positions plus `disc_weight` times the
    discriminator's binary cross-entropy (replaced or original) at every real token.

    The targets are the masked positions (what `count_targets` counts), so the loop divides by their
    number M. The paper's loss is a mean over the masked tokens plus `disc_weight` x a mean over the R real
    tokens, two denominators; a sum over targets has one. Each real token's term is therefore weighted by
    `mask_prob`: masking selects mask_prob of the maskable tokens in expectation, so the second part is
    disc_weight x (sum over real tokens) / (maskable tokens), the paper's mean up to R / maskable (a
    sequence's [CLS] and [SEP]: 1.6% for 128 tokens). Constant weights keep accumulation and data
    parallelism exact, as for every objective here. A sequence with no masked token (a label-less
    repeat of `Runtime.even_batches`) has nothing replaced and adds nothing.

    Extras: `correct` (the generator's argmax at masked tokens), `gen_loss`, `disc_loss` (the two sums),
    `disc_correct`, `replaced` and `real` (counts over the real tokens).
    """
    positions, attention = batch["mlm_positions"], batch["attention_mask"]  # (B, P), (B, T)
    targets = batch["labels"].gather(1, positions)  # (B, P), IGNORE at the padding of the list
    gen_logits, disc_logits, replaced = model(batch["input_ids"], attention, positions=positions, targets=targets,
                                              uniforms=batch["replace_uniforms"])  # (B, P, V), (B, T), (B, T)
    gen_sum = F.cross_entropy(gen_logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE,
                              reduction="sum")
    selected = targets != IGNORE  # (B, P)
    real = attention.bool() & selected.any(dim=1, keepdim=True)  # (B, T)
    bce = F.binary_cross_entropy_with_logits(disc_logits.float(), replaced.float(), reduction="none")  # (B, T)
    disc_sum = torch.where(real, bce, 0.0).sum()
    extras = {"correct": ((gen_logits.detach().argmax(dim=-1) == targets) & selected).sum(),
              "gen_loss": gen_sum.detach(), "disc_loss": disc_sum.detach(),
              "disc_correct": (((disc_logits.detach() > 0) == replaced) & real).sum(),
              "replaced": (replaced & real).sum(), "real": real.sum()}
    return gen_sum + disc_weight * mask_prob * disc_sum, selected.sum(), extras


class TruncatedBPTTLoss:
    """Next-token loss for a recurrent model whose state carries over from one window to the next.

    Batches name their streams (`streams`, (B,)) and flag `reset` ((B,), a stream's first window);
    the state of every stream lives in one buffer (L, n_streams, H) on the model's device, read and
    written by index, so the host never waits for the device. The state is detached after each
    window (truncated backprop). The model sums the loss itself (`model(ids, state, labels=labels)`),
    so an output layer over a large vocabulary need not materialise the logits. `state_dict()` /
    `load_state_dict()` let checkpoints carry it, so a resumed run continues exactly, whatever its
    number of processes: `state_dict()` must be called on every process, and merges the rows each one
    wrote.
    """

    def __init__(self, n_streams: int) -> None:
        self.n_streams = n_streams
        self.buffers: list[torch.Tensor] | None = None  # h, and c for an LSTM: (L, n_streams, H) each
        self.written: torch.Tensor | None = None  # (n_streams,) rows this process wrote since loading

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]):
        streams, keep = batch["streams"], (~batch["reset"]).float()[None, :, None]  # (B,), (1, B, 1)
        state = None
        if self.buffers is not None:
            self.buffers = [b.to(streams.device) for b in self.buffers]
            state = [b[:, streams] * keep for b in self.buffers]  # each (L, B, H)
            state = tuple(state) if len(state) == 2 else state[0]
        labels = batch["labels"]  # (B, T)
        loss_sum, new = model(batch["input_ids"], state, labels=labels)  # the logits never exist whole
        new = list(new) if isinstance(new, tuple) else [new]
        if self.buffers is None:
            self.buffers = [torch.zeros(s.size(0), self.n_streams, s.size(2), device=s.device) for s in new]
        if self.written is None or self.written.device != streams.device:
            self.written = torch.zeros(self.n_streams, dtype=torch.bool, device=streams.device)
        for buf, s in zip(self.buffers, new):
            buf[:, streams] = s.detach().float()
        self.written[streams] = True
        return loss_sum, (labels != IGNORE).sum(), {}

    def state_dict(self) -> dict[str, list[torch.Tensor]]:
        buffers = [b.clone() for b in self.buffers or []]
        if buffers and torch.distributed.is_available() and torch.distributed.is_initialized():
            # each stream is written by one process; rows nobody wrote are the same everywhere
            local = (self.written if self.written is not None
                     else torch.zeros(self.n_streams, dtype=torch.bool, device=buffers[0].device)).float()
            written = local.clone()  # (n_streams,)
            all_reduce(written)
            for i, b in enumerate(buffers):
                mine = b * local[None, :, None]
                all_reduce(mine)
                buffers[i] = torch.where(written[None, :, None] > 0, mine, b)
        return {"buffers": [b.cpu() for b in buffers]}

    def load_state_dict(self, state: dict[str, list[torch.Tensor]]) -> None:
        self.buffers = [b.clone() for b in state["buffers"]] or None
        self.written = None


def classification_loss(model: nn.Module, batch: dict[str, torch.Tensor],
                        class_weights: torch.Tensor | None = None):
    """Cross-entropy of one label per sequence, summed; extras count the correct predictions.

    `class_weights` (L,) scale each example's loss by its true class; the sum is still divided by the
    number of examples (not the sum of their weights), so a step's scale does not depend on its mix.
    """
    logits = model(batch["input_ids"], attention_mask=batch.get("attention_mask"),
                   token_type_ids=batch.get("token_type_ids"))  # (B, L)
    labels = batch["labels"]  # (B,)
    weight = class_weights.to(logits.device, torch.float32) if class_weights is not None else None
    loss_sum = F.cross_entropy(logits.float(), labels, weight=weight, ignore_index=IGNORE, reduction="sum")
    selected = labels != IGNORE
    correct = ((logits.detach().argmax(dim=-1) == labels) & selected).sum()
    return loss_sum, selected.sum(), {"correct": correct, "logits": logits.detach()}


def seq2seq_loss(model: nn.Module, batch: dict[str, torch.Tensor]):
    """Teacher-forced cross-entropy of an encoder-decoder, summed over the target tokens (padding is
    IGNORE); extras count the correct next-token predictions."""
    logits = model(batch["input_ids"], batch["decoder_ids"], attention_mask=batch.get("attention_mask"))  # (B, T, V)
    labels = batch["labels"]  # (B, T)
    loss_sum = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="sum")
    selected = labels != IGNORE
    correct = ((logits.detach().argmax(dim=-1) == labels) & selected).sum()
    return loss_sum, selected.sum(), {"correct": correct}


def token_classification_loss(model: nn.Module, batch: dict[str, torch.Tensor]):
    """Cross-entropy of every labeled token (labels (B, T), IGNORE on special tokens and, by default, on
    the later subwords of a word); extras count the correct ones."""
    labels = batch["labels"]
    logits = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))  # (B, T, L)
    loss_sum = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="sum")
    selected = labels != IGNORE
    correct = ((logits.argmax(-1) == labels) & selected).sum()
    return loss_sum, selected.sum(), {"correct": correct}


def span_loss(model: nn.Module, batch: dict[str, torch.Tensor]):
    """Extractive QA: the mean of the start and end cross-entropies per window (as HF's
    *ForQuestionAnswering), summed over the batch; one target per window."""
    start, end = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))  # (B, T) each
    loss_sum = (F.cross_entropy(start.float(), batch["start_positions"], reduction="sum")
                + F.cross_entropy(end.float(), batch["end_positions"], reduction="sum")) / 2
    return loss_sum, torch.tensor(start.size(0), device=start.device), {}


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float, alpha_kl: float, alpha_task: float, alpha_cos: float = 0.0,
                      student_hidden: torch.Tensor | None = None, teacher_hidden: torch.Tensor | None = None):
    """Knowledge distillation, summed over the targets (labels != IGNORE); extras hold each part's sum.

    Per target: `alpha_kl * T^2 * KL(softmax(t/T) || softmax(s/T)) + alpha_task * CE(s, label)
    + alpha_cos * (1 - cos(h_s, h_t))`. Logits are (..., V) over labels (...,); the hidden states
    (..., C) are what the heads read at the same targets. T^2 keeps the soft targets' gradient at the
    scale of the hard ones whatever T (Hinton et al., 2015); the teacher's logits carry no gradient.
    """
    s, t = student_logits.flatten(0, -2).float(), teacher_logits.detach().flatten(0, -2).float()  # (N, V)
    y = labels.flatten()  # (N,)
    selected = y != IGNORE
    log_s, log_t = F.log_softmax(s / temperature, dim=-1), F.log_softmax(t / temperature, dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)  # (N,)
    kl_sum = torch.where(selected, kl, 0.0).sum() * temperature ** 2
    ce_sum = F.cross_entropy(s, y, ignore_index=IGNORE, reduction="sum")
    loss_sum = alpha_kl * kl_sum + alpha_task * ce_sum
    extras = {"kl": kl_sum.detach(), "ce": ce_sum.detach()}
    if alpha_cos:
        hs, ht = student_hidden.flatten(0, -2).float(), teacher_hidden.detach().flatten(0, -2).float()  # (N, C)
        cos_sum = torch.where(selected, 1.0 - F.cosine_similarity(hs, ht, dim=-1), 0.0).sum()
        loss_sum = loss_sum + alpha_cos * cos_sum
        extras["cos"] = cos_sum.detach()
    return loss_sum, selected.sum(), extras
