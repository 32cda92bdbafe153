"""What the memorisation probe asks of a causal language model: sequence losses and greedy continuations.

Works on any model whose `decoding` (the backbone contract) is "kv_cache" (GPT) or "recurrent" (RNN).
Dimension letters: B sequences, T tokens, V vocabulary, K prompt tokens.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.errors import LmforgeError


def check_causal(model: nn.Module, what: str) -> None:
    if getattr(model, "decoding", None) not in ("kv_cache", "recurrent"):
        raise LmforgeError(f"{what} needs a causal language model run (gpt or rnn), this one is "
                           f"{type(model).__name__}")


def _logits(model: nn.Module, ids: torch.Tensor, state=None):
    """(logits (B, T, V), carried state or None); a GPT with a KV cache passes it as `state`."""
    if model.decoding == "recurrent":
        return model(ids, state)
    return model(ids, state), state


@torch.no_grad()
def sequence_losses(model: nn.Module, seqs: list[list[int]], batch_size: int = 256, mean: bool = False
                    ) -> np.ndarray:
    """Summed (or mean) next-token loss in nats of each sequence's tokens after its first."""
    device = next(model.parameters()).device
    out = np.zeros(len(seqs))
    order = np.argsort([len(s) for s in seqs], kind="stable")  # similar lengths share a batch: little padding
    for lo in range(0, len(seqs), batch_size):
        rows = order[lo:lo + batch_size]
        T = max(len(seqs[r]) for r in rows)
        ids = torch.zeros(len(rows), T, dtype=torch.long)
        mask = torch.zeros(len(rows), T - 1)
        for i, r in enumerate(rows):
            ids[i, :len(seqs[r])] = torch.tensor(seqs[r])
            mask[i, :len(seqs[r]) - 1] = 1
        ids, mask = ids.to(device), mask.to(device)
        logits = _logits(model, ids[:, :-1])[0].float()  # (B, T-1, V)
        # flattened: cross_entropy over a (B, V, T) view runs at half the speed on CPU
        nll = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none").view(mask.shape) * mask
        total = nll.sum(1) / (mask.sum(1).clamp(min=1) if mean else 1)
        out[rows] = total.cpu().numpy()
    return out


@torch.no_grad()
def greedy(model: nn.Module, prompts: np.ndarray, steps: int, batch_size: int = 64) -> np.ndarray:
    """The arg-max continuation of each prompt (all of one length K): (B, K) -> (B, steps)."""
    device = next(model.parameters()).device
    out = np.zeros((len(prompts), steps), dtype=np.int64)
    for lo in range(0, len(prompts), batch_size):
        ids = torch.as_tensor(prompts[lo:lo + batch_size], dtype=torch.long, device=device)  # (B, K)
        state = model.new_kv_cache(len(ids), ids.size(1) + steps) if model.decoding == "kv_cache" else None
        logits, state = _logits(model, ids, state)
        for t in range(steps):
            nxt = logits[:, -1].argmax(-1)  # (B,)
            out[lo:lo + len(ids), t] = nxt.cpu().numpy()
            if t + 1 < steps:
                logits, state = _logits(model, nxt[:, None], state)
    return out
