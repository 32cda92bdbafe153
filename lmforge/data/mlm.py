"""Masked-LM batches: documents cut into `[CLS] tokens... [SEP]` sequences, masked afresh on every visit.

A *segment* is a contiguous run of one document's tokens (or, with `cross_documents`, of the token
stream with document ends turned into [SEP]); the segment table is built once, vectorised, from the
shards' document offsets. Each segment becomes one sequence `[CLS] segment [SEP] pad...`.

Batches are pure functions of `(seed, step)`: step `s` holds the global sequences `g = s*B ... s*B+B-1`
of a seeded per-epoch permutation of the segments, and sequence `g` is masked with random numbers drawn
from a generator seeded by `(seed, g)`. Resuming, accumulating gradients or changing the number of
processes never changes a sequence or its mask; a segment seen again in a later epoch gets a new mask.

Masking selects `mask_prob` of the maskable tokens (not special, not padding) of each sequence, as whole
words when asked: words are shuffled and taken until the budget `n * mask_prob` is reached, the word that
straddles the budget being taken with the probability that keeps the expected count exactly
`n * mask_prob` (single-token masking is the same rule with one token per word). Of the selected tokens
`mask_token_prob` become [MASK], `random_token_prob` a random non-special token, the rest stay.
`ReplacementBatches` (ELECTRA) adds one uniform per masked position, from a third stream, from which the
generator's replacement for that position is drawn.

Dimension letters: b sequences in a micro-batch, T seq_len, S segments in the split.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from lmforge.config import check, check_ranges
from lmforge.errors import LmforgeError


@dataclass(frozen=True)
class MaskingConfig:
    mask_prob: float = 0.15
    """Share of (non-special) tokens selected for prediction."""
    mask_token_prob: float = 0.8
    """Of the selected: replaced by [MASK]."""
    random_token_prob: float = 0.1
    """Of the selected: replaced by a random token (the rest stay unchanged)."""
    whole_word: bool = False
    """Select whole words instead of single tokens."""
    cross_documents: bool = False
    """Let a packed sequence continue into the next document."""

    def __post_init__(self) -> None:
        check(0.0 < self.mask_prob < 1.0, "mlm.mask_prob", "must be in (0, 1)")
        check_ranges(self, "mlm", non_negative="mask_token_prob random_token_prob")
        check(self.mask_token_prob + self.random_token_prob <= 1.0, "mlm.random_token_prob",
               "mask_token_prob + random_token_prob must be <= 1")


IGNORE_INDEX = -100
"""Label of tokens that are not predicted (torch's cross_entropy default ignore_index)."""

_ORDER, _MASK, _REPLACE = 0, 1, 2  # independent random streams drawn from the same run seed
VAL_MASK_SEED = 0
"""Masking seed of validation batches: the same masks in every evaluation and every run."""

WordStarts = np.ndarray | Callable[[Sequence[int]], Sequence[bool]]
"""A bool table over the vocabulary (True where a token begins a word), or `Tokenizer.word_starts`."""


class TokenSource(Protocol):
    """What masked-LM batches need from a shards reader (`lmforge.data.shards.TokenShards`)."""

    num_tokens: int

    def tokens(self, start: int, stop: int) -> np.ndarray: ...

    def doc_offsets(self) -> np.ndarray: ...


@dataclass(frozen=True)
class SpecialTokens:
    """The token ids masking needs; `from_tokenizer` reads them off a `lmforge.tokenizer.Tokenizer`."""

    cls_id: int
    sep_id: int
    pad_id: int
    mask_id: int
    eot_id: int
    vocab_size: int
    special_ids: frozenset[int]

    @classmethod
    def from_tokenizer(cls, tok: Any) -> SpecialTokens:
        ids = {"cls_id": tok.cls_id, "sep_id": tok.sep_id, "pad_id": tok.pad_id, "mask_id": tok.mask_id,
               "eot_id": tok.eot_id}
        missing = [k[:-3] for k, v in ids.items() if v is None]
        if missing:
            raise LmforgeError(f"tokenizer has no {', '.join(missing)} token: a masked LM needs [CLS], "
                               "[SEP], [PAD], [MASK] and end-of-text; retrain with `lmforge tokenizer train`")
        specials = frozenset(tok.special_ids) | set(ids.values())
        return cls(**ids, vocab_size=tok.vocab_size, special_ids=specials)

    def special_table(self) -> np.ndarray:
        """(V,) bool: True for ids that are never selected for prediction."""
        table = np.zeros(self.vocab_size, dtype=bool)
        table[[i for i in self.special_ids if 0 <= i < self.vocab_size]] = True
        return table


# ----------------------------------------------------------------------------------------------------
# Segments


def segment_table(doc_offsets: np.ndarray, seq_len: int, cross_documents: bool = False) -> np.ndarray:
    """(S, 2) int64 [start, stop) stream positions of the segments, each at most seq_len - 2 tokens.

    `doc_offsets` holds num_docs + 1 document starts; each document's last token is its end-of-text
    token. Without `cross_documents` that token is left out and a long document is cut into the fewest
    segments of near-equal length (no tiny tail). With it the whole stream is cut into equal windows
    and the loader turns end-of-text tokens into [SEP].
    """
    span = seq_len - 2
    if span < 1:
        raise LmforgeError(f"config key 'data.seq_len' = {seq_len} leaves no room between [CLS] and [SEP]: "
                           "use at least 3")
    offsets = np.asarray(doc_offsets, dtype=np.int64)
    if cross_documents:
        starts = np.arange(offsets[0], offsets[-1], span, dtype=np.int64)
        return np.stack([starts, np.minimum(starts + span, offsets[-1])], axis=1)
    first, n = offsets[:-1], np.maximum(offsets[1:] - offsets[:-1] - 1, 0)
    keep = n > 0
    first, n = first[keep], n[keep]
    k = -(-n // span)  # segments per document
    doc = np.repeat(np.arange(len(n)), k)
    j = np.arange(len(doc), dtype=np.int64) - np.repeat(np.cumsum(k) - k, k)  # segment index inside its doc
    n_d, k_d, first_d = n[doc], k[doc], first[doc]
    return np.stack([first_d + j * n_d // k_d, first_d + (j + 1) * n_d // k_d], axis=1)


# ----------------------------------------------------------------------------------------------------
# Masking


def mask_uniforms(seed: int, seq_ids: Sequence[int] | np.ndarray, seq_len: int) -> np.ndarray:
    """(4, b, T) uniforms for sequences `seq_ids`, each row from its own generator seeded by (seed, id)."""
    rows = [np.random.default_rng([seed, _MASK, int(g)]).random((4, seq_len)) for g in seq_ids]
    return np.stack(rows, axis=1)


def mask_tokens(ids: np.ndarray, uniforms: np.ndarray, masking: MaskingConfig, specials: SpecialTokens,
                word_start: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mask a (b, T) batch; returns (inputs, labels), labels IGNORE_INDEX where nothing is predicted.

    `uniforms` (4, b, T) is the randomness (word order, budget rounding, 80/10/10 choice, random token),
    so the result is a pure function of its arguments. `word_start` (b, T) bool marks tokens that begin a
    word; None masks single tokens.
    """
    b, T = ids.shape
    r_order, r_budget, r_action, r_token = uniforms
    maskable = ~specials.special_table()[ids]  # (b, T)
    after_special = np.ones((b, T), dtype=bool)
    after_special[:, 1:] = ~maskable[:, :-1]
    # a word never spans a special token: the first token after one starts a word whatever its spelling
    start = maskable if word_start is None else maskable & (word_start | after_special)
    word = np.maximum(np.cumsum(start, axis=1) - 1, 0)  # (b, T) word slot of each token
    rows = np.arange(b)[:, None]
    word_len = np.bincount((rows * T + word)[maskable], minlength=b * T).reshape(b, T)  # (b, T) slot sizes
    n = maskable.sum(axis=1)  # (b,)

    # take words in random order until the budget n * mask_prob is spent; the straddling word is taken
    # with probability (budget left) / (its length), which keeps the expected count exact
    order = np.argsort(np.where(word_len > 0, r_order, 2.0), axis=1, kind="stable")  # empty slots last
    len_sorted = np.take_along_axis(word_len, order, axis=1)
    before = np.cumsum(len_sorted, axis=1) - len_sorted
    take = (len_sorted > 0) & (before + r_budget * len_sorted < (n * masking.mask_prob)[:, None])
    take[:, 0] |= n > 0  # at least one word per sequence that has one
    chosen = np.zeros((b, T), dtype=bool)
    np.put_along_axis(chosen, order, take, axis=1)
    selected = maskable & np.take_along_axis(chosen, word, axis=1)  # (b, T)

    labels = np.where(selected, ids, IGNORE_INDEX)
    inputs = ids.copy()
    p_mask = masking.mask_token_prob
    to_mask = selected & (r_action < p_mask)
    to_random = selected & (r_action >= p_mask) & (r_action < p_mask + masking.random_token_prob)
    ordinary = np.flatnonzero(~specials.special_table())
    random_ids = ordinary[np.minimum((r_token * len(ordinary)).astype(np.int64), len(ordinary) - 1)]
    inputs[to_mask] = specials.mask_id
    inputs[to_random] = random_ids[to_random]
    return inputs, labels


# ----------------------------------------------------------------------------------------------------
# Batches


class MaskedLMBatches:
    """Masked-LM batches over one split of a shards folder.

    `batch_size` is the global batch (sequences per optimizer step). With `shuffle=False` (validation)
    the segments come in order, one pass, and each sequence's mask depends only on `seed` and its
    position, so every evaluation sees the same inputs and targets.
    """

    def __init__(self, shards: TokenSource, specials: SpecialTokens, seq_len: int, batch_size: int, seed: int,
                 masking: MaskingConfig, word_starts: WordStarts | None = None, shuffle: bool = True) -> None:
        self.shards, self.specials, self.seq_len = shards, specials, seq_len
        self.batch_size, self.seed, self.masking, self.shuffle = batch_size, seed, masking, shuffle
        self.segments = segment_table(shards.doc_offsets(), seq_len, masking.cross_documents)  # (S, 2)
        if len(self.segments) == 0:
            raise LmforgeError("the shards hold no document with tokens: build them from a non-empty corpus")
        if masking.whole_word and word_starts is None:
            raise LmforgeError("config key 'mlm.whole_word' needs a tokenizer that marks word starts")
        self.word_starts = word_starts if masking.whole_word else None
        self._perm: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        """Sequences in one pass over the split."""
        return len(self.segments)

    def num_batches(self, batch_size: int | None = None) -> int:
        """Batches of `batch_size` (default: the global batch) in one pass, the last one possibly short."""
        return -(-len(self.segments) // (batch_size or self.batch_size))

    def get(self, step: int, micro: int = 0, rank: int = 0, world: int = 1,
            micro_batch: int | None = None) -> dict[str, torch.Tensor]:
        """Micro-batch `micro` of process `rank`: slice (micro * world + rank) of the global batch of `step`.

        Returns input_ids, attention_mask and labels, each (b, T) long, and mlm_positions (b, P) long:
        the labelled positions, padded with 0.
        """
        b = micro_batch or self.batch_size // world
        index = micro * world + rank
        if (index + 1) * b > self.batch_size:
            raise ValueError(f"micro-batch {micro} of rank {rank} lies outside a batch of {self.batch_size}")
        first = step * self.batch_size + index * b
        return self.sequences(np.arange(first, first + b))

    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def eval_batches(self, batch_size: int, max_batches: int = 0, rank: int = 0,
                     world: int = 1) -> Iterator[dict[str, torch.Tensor]]:
        """Batches over the split in order, the last one possibly short; `max_batches` 0 means all.

        With several processes each takes every `world`-th batch.
        """
        total = len(self.segments)
        n = self.num_batches(batch_size)
        n = n if max_batches <= 0 else min(max_batches, n)
        for i in range(rank, n, world):
            yield self.sequences(np.arange(i * batch_size, min((i + 1) * batch_size, total)))

    def sequences(self, seq_ids: np.ndarray) -> dict[str, torch.Tensor]:
        """The masked batch of global sequence numbers `seq_ids` (b,)."""
        ids, attention = self._pack(self._segment_of(seq_ids))
        word_start = self._word_start(ids) if self.word_starts is not None else None
        inputs, labels = mask_tokens(ids, mask_uniforms(self.seed, seq_ids, self.seq_len), self.masking,
                                     self.specials, word_start)
        return {"input_ids": torch.from_numpy(inputs), "attention_mask": torch.from_numpy(attention),
                "labels": torch.from_numpy(labels), "mlm_positions": torch.from_numpy(self._positions(labels))}

    def _positions(self, labels: np.ndarray) -> np.ndarray:
        """(b, P) the labelled positions of each row, then 0 ([CLS], never labelled) up to a fixed P.

        P is the single-token budget ceil((T - 2) * mask_prob) rounded up to a multiple of 8, so batches
        keep one shape (no recompilation); a batch that needs more (long whole words) gets a wider P.
        """
        selected = labels != IGNORE_INDEX  # (b, T)
        need = max(math.ceil((self.seq_len - 2) * self.masking.mask_prob), int(selected.sum(axis=1).max(initial=0)))
        width = -(-need // 8) * 8
        # a stable sort puts each row's labelled positions first, in order
        order = np.argsort(~selected, axis=1, kind="stable")[:, :width]  # (b, P)
        return np.where(np.take_along_axis(selected, order, axis=1), order, 0)

    def _segment_of(self, seq_ids: np.ndarray) -> np.ndarray:
        S = len(self.segments)
        if not self.shuffle:
            return seq_ids % S
        epochs, pos = np.divmod(seq_ids, S)
        out = np.empty_like(seq_ids)
        for epoch in np.unique(epochs):
            here = epochs == epoch
            out[here] = self._permutation(int(epoch))[pos[here]]
        return out

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            rng = np.random.default_rng([self.seed, _ORDER, epoch])
            self._perm = (epoch, rng.permutation(len(self.segments)))
        return self._perm[1]

    def _pack(self, segs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(b, T) ids `[CLS] tokens [SEP] pad...` and (b, T) attention mask of segments `segs`."""
        sp, T = self.specials, self.seq_len
        ids = np.full((len(segs), T), sp.pad_id, dtype=np.int64)
        lengths = np.zeros(len(segs), dtype=np.int64)
        for i, (start, stop) in enumerate(self.segments[segs]):
            toks = np.asarray(self.shards.tokens(int(start), int(stop)), dtype=np.int64)
            if self.masking.cross_documents:
                toks = np.where(toks == sp.eot_id, sp.sep_id, toks)
                if len(toks) > 1 and toks[-1] == sp.sep_id:
                    toks = toks[:-1]  # the closing [SEP] follows anyway
            ids[i, 0], ids[i, 1:len(toks) + 1], ids[i, len(toks) + 1] = sp.cls_id, toks, sp.sep_id
            lengths[i] = len(toks) + 2
        attention = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int64)  # (b, T)
        return ids, attention

    def _word_start(self, ids: np.ndarray) -> np.ndarray:
        if isinstance(self.word_starts, np.ndarray):
            return self.word_starts[ids]
        return np.array([self.word_starts(row.tolist()) for row in ids], dtype=bool).reshape(ids.shape)


class ReplacementBatches(MaskedLMBatches):
    """Masked-LM batches for replaced-token detection (ELECTRA): each also holds `replace_uniforms` (b, P)
    float32 in [0, 1), one per listed position, from which the generator's replacement of that token is
    drawn (`models.electra.sample`). They come from a generator per sequence seeded by (seed, id), like
    its mask, so the replacements too are a pure function of (seed, step).
    """

    def sequences(self, seq_ids: np.ndarray) -> dict[str, torch.Tensor]:
        batch = super().sequences(seq_ids)
        draws = np.stack([np.random.default_rng([self.seed, _REPLACE, int(g)]).random(self.seq_len)
                          for g in seq_ids])  # (b, T): a position's draw does not depend on P
        picked = np.take_along_axis(draws, batch["mlm_positions"].numpy(), axis=1).astype(np.float32)  # (b, P)
        # a draw just below 1 rounds to 1.0 in float32: keep it below
        batch["replace_uniforms"] = torch.from_numpy(np.minimum(picked, np.float32(1.0) - np.float32(2 ** -24)))
        return batch
