"""Source/target pairs for sequence-to-sequence fine-tuning: read, encode, batch.

Files are TSV/CSV/JSONL as for classification (data/labeled.py reads the rows). The columns are named,
or guessed as a pair: source/target, src/tgt, input/output, text/summary, document/summary, ...; a file
without a header needs them named by index (`--source_column 0 --target_column 1`). An empty target is
an error naming the line; an empty source is skipped and counted.

Encoding: `prefix + source` then end-of-text, cut to `max_length` (counted); the target then
end-of-text, cut to `max_target_length` (counted). The decoder reads the target shifted right behind
the pad token (T5's start), and the labels are the target with padding IGNORE.

Batches are pure functions of (seed, step), as for classification: a seeded permutation per epoch.
Dimension letters: B examples, S longest source in the batch, T longest target.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmforge.corpus.columns import KNOWN_PAIRS, PAIR_COLUMNS
from lmforge.data.labeled import EpochOrder, _read_rows
from lmforge.errors import LmforgeError

IGNORE_INDEX = -100


@dataclass
class Pairs:
    path: Path
    sources: list[str]
    targets: list[str] | None
    lines: list[int]
    columns: tuple[str, str | None]
    skipped_empty: int = 0

    def __len__(self) -> int:
        return len(self.sources)

    def describe(self) -> str:
        empty = f"; skipped {self.skipped_empty} empty sources" if self.skipped_empty else ""
        target = f", target column {self.columns[1]!r}" if self.columns[1] else ""
        return f"{self.path}: {len(self)} pairs, source column {self.columns[0]!r}{target}{empty}"


def read_pairs(path: str | Path, source_column: str = "", target_column: str = "", header: str = "auto",
               need_targets: bool = True) -> Pairs:
    path = Path(path)
    names, rows = _read_rows(path, header, KNOWN_PAIRS)
    src, tgt = source_column, target_column
    if not src:
        lower = {n.lower(): n for n in names}
        guess = next((pair for pair in PAIR_COLUMNS
                      if pair[0] in lower and (pair[1] in lower or tgt or not need_targets)), None)
        if guess is None:
            raise LmforgeError(f"{path}: no source/target columns among {', '.join(map(repr, names))}: name them "
                               "with --source_column and --target_column (0-based indexes and --header no for a "
                               "file without a header)")
        src, tgt = lower[guess[0]], tgt or lower.get(guess[1])
    for role, col in (("source", src), ("target", tgt if need_targets else None)):
        if col is not None and col not in names:
            raise LmforgeError(f"{path}: no column {col!r} (set by finetune.{role}_column); the columns are "
                               f"{', '.join(map(repr, names))}")
    if need_targets and not tgt:
        raise LmforgeError(f"{path}: no target column: name it with --target_column")
    sources, targets, lines, empty = [], [], [], 0
    for n, row in rows:
        source = row[src].strip()
        if not source:
            empty += 1
            continue
        target = row[tgt].strip() if tgt and tgt in row else None
        if need_targets and not target:
            raise LmforgeError(f"{path}:{n}: empty target in column {tgt!r}: fill it in or drop the line")
        sources.append(source)
        targets.append(target)
        lines.append(n)
    if not sources:
        raise LmforgeError(f"{path} holds no pairs")
    return Pairs(path, sources, targets if tgt else None, lines, (src, tgt), empty)


@dataclass
class EncodedPairs:
    sources: list[np.ndarray]
    targets: list[np.ndarray] | None
    truncated_sources: int
    truncated_targets: int


def encode_sources(tok, texts: list[str], prefix: str, max_length: int) -> tuple[list[list[int]], list[bool]]:
    """`prefix + text` then end-of-text, cut to `max_length` tokens; and which ones were cut."""
    ids = tok.encode_batch([prefix + t for t in texts])
    return [[*x[:max_length - 1], tok.eot_id] for x in ids], [len(x) > max_length - 1 for x in ids]


def encode_pairs(tok, pairs: Pairs, prefix: str, max_length: int, max_target_length: int) -> EncodedPairs:
    if max_length < 2 or max_target_length < 2:
        raise LmforgeError("finetune.max_length and finetune.max_target_length must leave room for text (>= 2)")
    src, cut = encode_sources(tok, pairs.sources, prefix, max_length)
    cut_src = sum(cut)
    sources = [np.asarray(x, dtype=np.int64) for x in src]
    targets, cut_tgt = None, 0
    if pairs.targets is not None:
        tgt = tok.encode_batch(pairs.targets)
        cut_tgt = sum(len(y) > max_target_length - 1 for y in tgt)
        targets = [np.asarray([*y[: max_target_length - 1], tok.eot_id], dtype=np.int64) for y in tgt]
    return EncodedPairs(sources, targets, cut_src, cut_tgt)


def collate_pairs(enc: EncodedPairs, index: np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask (B, S), padded on the right; with targets, decoder_ids and labels (B, T)."""
    seqs = [enc.sources[i] for i in index]
    S = max(len(s) for s in seqs)
    ids = np.full((len(seqs), S), pad_id, dtype=np.int64)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = s
    mask = np.arange(S)[None, :] < np.array([len(s) for s in seqs])[:, None]  # (B, S)
    batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask.astype(np.int64))}
    if enc.targets is not None:
        tgts = [enc.targets[i] for i in index]
        T = max(len(t) for t in tgts)
        labels = np.full((len(tgts), T), IGNORE_INDEX, dtype=np.int64)
        for r, t in enumerate(tgts):
            labels[r, :len(t)] = t
        decoder = np.concatenate([np.full((len(tgts), 1), pad_id), np.where(labels[:, :-1] == IGNORE_INDEX, pad_id,
                                                                            labels[:, :-1])], axis=1)
        batch["decoder_ids"], batch["labels"] = torch.from_numpy(decoder), torch.from_numpy(labels)
    return batch


class PairBatches:
    """Training batches of pairs: a seeded permutation per epoch, sliced by step (data/labeled.EpochOrder);
    `group_by_length` groups pairs of like source + target lengths."""

    def __init__(self, enc: EncodedPairs, batch_size: int, seed: int, pad_id: int, group_by_length: bool = False):
        self.enc, self.pad_id = enc, pad_id
        lengths = np.array([len(s) + len(t) for s, t in zip(enc.sources, enc.targets)]) if group_by_length else None
        self.order = EpochOrder(len(enc.sources), batch_size, seed, lengths)

    def get(self, step: int, micro: int = 0, rank: int = 0, world: int = 1,
            micro_batch: int | None = None) -> dict[str, torch.Tensor]:
        return collate_pairs(self.enc, self.order.share(step, micro, rank, world, micro_batch), self.pad_id)


def pair_batches(enc: EncodedPairs, batch_size: int, pad_id: int, rank: int = 0, world: int = 1):
    """Every pair once, in file order; process `rank` takes batches rank, rank + world, ..."""
    for start in range(rank * batch_size, len(enc.sources), world * batch_size):
        yield collate_pairs(enc, np.arange(start, min(start + batch_size, len(enc.sources))), pad_id)
