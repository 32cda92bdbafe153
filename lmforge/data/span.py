"""T5 span corruption over token shards: packed inputs with sentinel-marked gaps, the gaps as targets.

An example takes a run of raw tokens from the stream (documents packed, their end-of-text tokens kept),
picks `noise_density` of them as noise in spans of mean length `mean_span`, and becomes

    inputs:  the kept tokens, each noise span replaced by one sentinel (<extra_id_0>, <extra_id_1>, ...),
             then end-of-text;
    targets: each sentinel followed by the tokens it replaced, then end-of-text.

The raw length is the longest whose inputs fit `input_len` (T5's formula), so inputs are never padded
and targets have a fixed length. Noise and non-noise runs alternate, starting with a kept run; their
lengths are random partitions (every run at least one token). Everything is a pure function of
(seed, example index): resuming, accumulating or changing the number of processes never changes an
example. Validation uses a fixed seed, so every evaluation scores the same spans.

Dimension letters: B examples, S input length, T target length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lmforge.config import check
from lmforge.errors import LmforgeError

IGNORE_INDEX = -100
VAL_SEED = 0


@dataclass(frozen=True)
class SpanConfig:
    noise_density: float = 0.15
    """Share of the raw tokens that become targets."""
    mean_span: float = 3.0
    """Mean length of a corrupted span (in tokens)."""
    target_len: int = 0
    """Target tokens per example; 0 means what the raw length gives (T5's formula)."""

    def __post_init__(self) -> None:
        check(0 < self.noise_density < 1, "span.noise_density", "must be in (0, 1)")
        check(self.mean_span >= 1, "span.mean_span", "must be >= 1")
        check(self.target_len >= 0, "span.target_len", "must be >= 0 (0: from the input length)")


def lengths(raw: int, cfg: SpanConfig) -> tuple[int, int, int]:
    """(noise tokens, spans, (inputs, targets) lengths) of a raw run of `raw` tokens."""
    noise = min(max(int(round(raw * cfg.noise_density)), 1), raw - 1)
    spans = max(int(round(noise / cfg.mean_span)), 1)
    return noise, spans, (raw - noise + spans + 1, noise + spans + 1)


def raw_length(input_len: int, cfg: SpanConfig) -> int:
    """The longest raw run whose corrupted inputs fit `input_len` tokens (end-of-text included)."""
    raw = input_len
    while lengths(raw + 1, cfg)[2][0] <= input_len:
        raw += 1
    while lengths(raw, cfg)[2][0] > input_len:
        raw -= 1
    return raw


def _partition(rng: np.random.Generator, total: int, parts: int) -> np.ndarray:
    """`total` split into `parts` positive integers, uniformly among such splits."""
    cuts = np.sort(rng.choice(np.arange(1, total), size=parts - 1, replace=False)) if parts > 1 else []
    return np.diff(np.concatenate([[0], cuts, [total]])).astype(np.int64)


def corrupt(tokens: np.ndarray, rng: np.random.Generator, cfg: SpanConfig, sentinels: list[int],
            eos: int) -> tuple[list[int], list[int]]:
    """(inputs, targets) of one raw run of tokens."""
    noise, spans, _ = lengths(len(tokens), cfg)
    if spans > len(sentinels):
        raise LmforgeError(f"{spans} corrupted spans need as many sentinel tokens, the tokenizer has "
                           f"{len(sentinels)}: retrain it with --set tokenizer.extra_ids={spans} (or more)")
    noise_runs = _partition(rng, noise, spans)
    kept_runs = _partition(rng, len(tokens) - noise, spans)
    inputs, targets, pos = [], [], 0
    for k in range(spans):
        inputs += tokens[pos:pos + kept_runs[k]].tolist()
        pos += kept_runs[k]
        inputs.append(sentinels[k])
        targets += [sentinels[k], *tokens[pos:pos + noise_runs[k]].tolist()]
        pos += noise_runs[k]
    return inputs + [eos], targets + [eos]


class SpanCorruptionBatches:
    """Span-corruption examples over one split of token shards (`TokenShards` or `ArrayTokens`).

    The global batch of step s holds examples s*B ... s*B+B-1; example g reads a random run of the stream
    chosen, with its spans, by np.random.default_rng([seed, g]). With `shuffle=False` (validation) the runs
    are consecutive from the start of the split instead.
    """

    def __init__(self, source, input_len: int, batch_size: int, seed: int, cfg: SpanConfig, sentinels: list[int],
                 eos: int, pad: int, shuffle: bool = True) -> None:
        self.source, self.batch_size, self.seed, self.cfg = source, batch_size, seed, cfg
        self.sentinels, self.eos, self.pad, self.shuffle = sentinels, eos, pad, shuffle
        self.raw = raw_length(input_len, cfg)
        self.input_len = input_len
        self.target_len = cfg.target_len or lengths(self.raw, cfg)[2][1]
        if source.num_tokens < self.raw + 1:
            raise LmforgeError(f"the split holds {source.num_tokens} tokens, fewer than one example of "
                               f"{self.raw}: lower data.seq_len or add data")

    def examples(self, index: np.ndarray) -> dict[str, torch.Tensor]:
        """input_ids, attention_mask (B, S); decoder_ids, labels (B, T): teacher forcing from the pad token."""
        B = len(index)
        inputs = np.full((B, self.input_len), self.pad, dtype=np.int64)
        labels = np.full((B, self.target_len), IGNORE_INDEX, dtype=np.int64)
        for r, g in enumerate(index):
            rng = np.random.default_rng([self.seed, int(g)])
            if self.shuffle:
                start = int(rng.integers(0, self.source.num_tokens - self.raw))
            else:
                start = int(g) * self.raw % max(1, self.source.num_tokens - self.raw)
            run = self.source.windows(np.array([start]), self.raw)[0]
            src, tgt = corrupt(run, rng, self.cfg, self.sentinels, self.eos)
            inputs[r, :len(src)] = src
            tgt = tgt[: self.target_len]
            labels[r, :len(tgt)] = tgt
        decoder = np.concatenate([np.full((B, 1), self.pad), np.where(labels[:, :-1] == IGNORE_INDEX, self.pad,
                                                                      labels[:, :-1])], axis=1)
        return {"input_ids": torch.from_numpy(inputs), "attention_mask": torch.from_numpy(inputs != self.pad).long(),
                "decoder_ids": torch.from_numpy(decoder), "labels": torch.from_numpy(labels)}

    def get(self, step: int, micro: int = 0, rank: int = 0, world: int = 1,
            micro_batch: int | None = None) -> dict[str, torch.Tensor]:
        b = micro_batch or self.batch_size // world
        k = micro * world + rank
        if (k + 1) * b > self.batch_size:
            raise ValueError(f"micro-batch {micro} of rank {rank} lies outside a batch of {self.batch_size}")
        first = step * self.batch_size + k * b
        return self.examples(np.arange(first, first + b))

    def eval_batches(self, batch_size: int, max_batches: int, rank: int = 0, world: int = 1):
        """Consecutive runs from the start of the split: `max_batches` batches (0: one pass)."""
        total = max(1, (self.source.num_tokens - 1) // self.raw)
        n_batches = -(-total // batch_size)
        if max_batches:
            n_batches = min(n_batches, max_batches)
        for i in range(rank, n_batches, world):
            yield self.examples(np.arange(i * batch_size, min((i + 1) * batch_size, total)))
