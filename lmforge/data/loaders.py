"""Batches for training and evaluation, as pure functions of (seed, step).

A token source is anything with `num_tokens` and `windows(starts, length) -> (n, length) int64`:
`TokenShards` (memory-mapped shards) or `ArrayTokens` (an in-memory array, for tests and notebooks).

Causal-LM training: the global batch of step s is `batch_size` random windows whose starts come from
`np.random.default_rng([seed, s])`. Each (process, micro-step) takes its own contiguous slice of that
batch, so resuming at step s, accumulating gradients or changing the number of processes never
changes which sequences a step sees. Validation reads sequential, non-overlapping windows.

Dimension letters: B batch (micro-batch on one process), T sequence length.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch

from lmforge.errors import LmforgeError


class TokenSource(Protocol):
    num_tokens: int

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray: ...


class ArrayTokens:
    """A token source over an in-memory 1-D array."""

    def __init__(self, tokens: np.ndarray | list[int], bytes_per_token: float = 1.0) -> None:
        self.array = np.asarray(tokens, dtype=np.int64)
        self.num_tokens = len(self.array)
        self.text_bytes = int(round(bytes_per_token * self.num_tokens))

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        index = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(length)  # (n, length)
        return self.array[index]


def _to_batch(windows: np.ndarray) -> dict[str, torch.Tensor]:
    w = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.int64))  # (B, T+1)
    # separate contiguous tensors: a loader or objective may edit labels in place without touching inputs
    return {"input_ids": w[:, :-1].contiguous(), "labels": w[:, 1:].contiguous()}


class CausalLMBatches:
    """Random training windows of `seq_len + 1` tokens (inputs and next-token labels)."""

    def __init__(self, source: TokenSource, seq_len: int, batch_size: int, seed: int) -> None:
        if source.num_tokens < seq_len + 2:
            raise LmforgeError(f"the training split holds {source.num_tokens} tokens, fewer than one "
                               f"sequence of data.seq_len={seq_len} + 1: lower data.seq_len or add data")
        self.source, self.seq_len, self.batch_size, self.seed = source, seq_len, batch_size, seed

    def starts(self, step: int) -> np.ndarray:
        """Window starts of the whole (global) batch of `step`."""
        rng = np.random.default_rng([self.seed, step])
        return rng.integers(0, self.source.num_tokens - self.seq_len, size=self.batch_size)

    def get(self, step: int, micro: int = 0, rank: int = 0, world: int = 1,
            micro_batch: int | None = None) -> dict[str, torch.Tensor]:
        """Micro-batch `micro` of process `rank`: slice (micro * world + rank) of the global batch."""
        b = micro_batch or self.batch_size // world
        index = micro * world + rank
        if (index + 1) * b > self.batch_size:
            raise ValueError(f"micro-batch {micro} of rank {rank} lies outside a batch of {self.batch_size}")
        starts = self.starts(step)[index * b:(index + 1) * b]
        return _to_batch(self.source.windows(starts, self.seq_len + 1))

    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len


def eval_batches(source: TokenSource, seq_len: int, batch_size: int, max_batches: int = 0,
                 rank: int = 0, world: int = 1) -> Iterator[dict[str, torch.Tensor]]:
    """Sequential non-overlapping windows: every token after the first is a target exactly once.

    `max_batches` > 0 keeps the first that many batches (the same ones at every evaluation). With
    several processes each takes every `world`-th batch.
    """
    n_windows = (source.num_tokens - 1) // seq_len
    if n_windows == 0:
        raise LmforgeError(f"the validation split holds {source.num_tokens} tokens, fewer than one "
                           f"sequence of {seq_len} + 1: lower data.seq_len or hold out more data")
    n_batches = (n_windows + batch_size - 1) // batch_size
    if max_batches:
        n_batches = min(n_batches, max_batches)
    for i in range(rank, n_batches, world):
        starts = np.arange(i * batch_size, min((i + 1) * batch_size, n_windows), dtype=np.int64) * seq_len
        yield _to_batch(source.windows(starts, seq_len + 1))


def bytes_per_token(source: TokenSource) -> float | None:
    """UTF-8 bytes of text per token of a split (for bits per byte), if the source knows it."""
    text_bytes = getattr(source, "text_bytes", None)
    return text_bytes / source.num_tokens if text_bytes and source.num_tokens else None
