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
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from lmforge.config import check_ranges
from lmforge.errors import LmforgeError


@dataclass(frozen=True)
class DataConfig:
    path: str = ""
    """Shards folder (made by `lmforge shards build`)."""
    seq_len: int = 0
    """Tokens per training sequence; 0 means the model's context_len."""
    train_split: str = "train"
    val_split: str = "val"

    def __post_init__(self) -> None:
        check_ranges(self, "data", non_negative="seq_len")



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


class StreamBatches:
    """Truncated-BPTT training batches: the split cut into `batch_size` contiguous streams.

    Stream j is tokens [j*L, (j+1)*L) with L = num_tokens // batch_size (the tail is dropped, as in the
    classic word_language_model `batchify`). Step s reads window w = s mod n_windows, `seq_len` tokens
    (+1 label) at offset w*seq_len of every stream; a recurrent model carries its state from window w to
    w+1 of the same stream. Each batch names its streams (`streams`, global ids from `first_stream`) and
    flags `reset` at window 0 (a new epoch), so the objective keeps one state per stream and a
    (process, micro-step) always owns the same streams. The batch is still a pure function of the step.
    """

    def __init__(self, source: TokenSource, seq_len: int, batch_size: int, first_stream: int = 0) -> None:
        self.source, self.seq_len, self.batch_size = source, seq_len, batch_size
        self.first_stream = first_stream
        self.stream_len = source.num_tokens // batch_size
        self.n_windows = max(0, (self.stream_len - 1) // seq_len)

    def get(self, step: int, micro: int = 0, rank: int = 0, world: int = 1,
            micro_batch: int | None = None) -> dict[str, torch.Tensor]:
        """Micro-batch `micro` of process `rank`: streams (micro * world + rank) * b ... + b."""
        if self.n_windows == 0:
            raise LmforgeError(f"the training split holds {self.source.num_tokens} tokens: too few for "
                               f"{self.batch_size} streams of data.seq_len={self.seq_len} + 1 tokens; lower "
                               "train.batch_size or data.seq_len, or add data")
        b = micro_batch or self.batch_size // world
        index = micro * world + rank
        if (index + 1) * b > self.batch_size:
            raise ValueError(f"micro-batch {micro} of rank {rank} lies outside a batch of {self.batch_size}")
        window = step % self.n_windows
        streams = np.arange(index * b, (index + 1) * b, dtype=np.int64)  # (B,)
        starts = streams * self.stream_len + window * self.seq_len
        batch = _to_batch(self.source.windows(starts, self.seq_len + 1))
        return _with_streams(batch, streams + self.first_stream, window == 0)

    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len


def _with_streams(batch: dict[str, torch.Tensor], streams: np.ndarray, reset: bool) -> dict:
    batch["streams"] = torch.from_numpy(streams)  # (B,)
    batch["reset"] = torch.full((len(streams),), reset)  # (B,)
    return batch


def stream_eval_batches(source: TokenSource, seq_len: int, n_streams: int = 10, max_batches: int = 0,
                        rank: int = 0, world: int = 1, first_stream: int = 0) -> Iterator[dict]:
    """Classic recurrent-LM evaluation: `n_streams` contiguous streams read window after window.

    Every token of a stream after its first is a target exactly once (the last window may be shorter),
    which is how word-level perplexities in the literature are computed (10 streams, BPTT 35). The
    first window resets the state. With several processes each takes its share of the streams.
    `max_batches` > 0 keeps the first that many windows.
    """
    stream_len = source.num_tokens // n_streams
    if stream_len < 2:
        raise LmforgeError(f"the validation split holds {source.num_tokens} tokens, fewer than 2 for each "
                           f"of {n_streams} evaluation streams: hold out more data")
    mine = np.array_split(np.arange(n_streams, dtype=np.int64), world)[rank]  # (B,)
    if len(mine) == 0:
        return
    offsets = range(0, stream_len - 1, seq_len)
    for i, offset in enumerate(offsets):
        if max_batches and i >= max_batches:
            return
        length = min(seq_len, stream_len - 1 - offset)
        batch = _to_batch(source.windows(mine * stream_len + offset, length + 1))
        yield _with_streams(batch, mine + first_stream, i == 0)
