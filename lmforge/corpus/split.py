"""Seeded shuffle with a bounded buffer, and a deterministic train/val split of a document stream."""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator


def shuffle(docs: Iterable[str], buffer_size: int, seed: int) -> Iterator[str]:
    """Shuffle a stream holding at most `buffer_size` documents: each new document takes the place
    of a random one in the buffer, which is emitted. A buffer as large as the corpus is a full shuffle."""
    rng = random.Random(f"shuffle-{seed}")
    buf: list[str] = []
    for doc in docs:
        if len(buf) < buffer_size:
            buf.append(doc)
            continue
        j = rng.randrange(buffer_size)
        yield buf[j]
        buf[j] = doc
    rng.shuffle(buf)
    yield from buf


def assign_splits(docs: Iterable[str], val_fraction: float, seed: int) -> Iterator[tuple[str, str]]:
    """Yield ("train" | "val", text). Each document goes to val with probability `val_fraction`. The
    first document always goes to train, and the last train document is held back so that val gets
    at least one document when there are two or more and val_fraction > 0."""
    rng = random.Random(f"split-{seed}")
    held: str | None = None
    n_val = n_train = 0
    for doc in docs:
        to_val = rng.random() < val_fraction
        if to_val and held is not None:  # the first document always stays in train
            n_val += 1
            yield "val", doc
            continue
        if held is not None:
            n_train += 1
            yield "train", held
        held = doc
    if held is not None:
        yield ("val" if val_fraction > 0 and n_val == 0 and n_train > 0 else "train"), held
