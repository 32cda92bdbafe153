"""Dedup throughput (documents/s): exact and MinHash+LSH near-dedup on WikiText-2, one line a document.

    python bench/bench_dedup.py [PATH] [--limit N] [--num-perm P]

Rows: exact dedup alone; MinHash signatures alone (lmforge's numpy vs datasketch.MinHash); and the
full exact+near stage with lmforge's signatures and with datasketch's, both indexed by MinHashLSH.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from lmforge.corpus.dedup import ExactDedup, MinHasher, NearDedup

ROOT = Path(__file__).resolve().parents[1]


def datasketch_signature(text: str, num_perm: int, k: int) -> np.ndarray:
    from datasketch import MinHash

    words = text.lower().split()
    shingles = {" ".join(words[i:i + k]).encode() for i in range(max(1, len(words) - k + 1))}
    m = MinHash(num_perm=num_perm)
    m.update_batch(list(shingles))
    return m.hashvalues


class DatasketchNear(NearDedup):
    """The same stage with datasketch.MinHash computing the signatures."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        num_perm, k = self.hasher.num_perm, self.hasher.k
        self.hasher.signature = lambda text: datasketch_signature(text, num_perm, k)


def rate(fn, docs: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    kept = sum(fn(d) is not None for d in docs)
    return len(docs) / (time.perf_counter() - start), len(docs) - kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", nargs="?", default=str(ROOT / "../shared/data/wikitext-2/train.txt"))
    ap.add_argument("--limit", type=int, default=0, help="first N documents only (0: all)")
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--shingle-size", type=int, default=5)
    args = ap.parse_args()
    docs = [line.strip() for line in Path(args.path).read_text(encoding="utf-8").splitlines() if line.strip()]
    docs = docs[: args.limit] if args.limit else docs
    words = sum(len(d.split()) for d in docs)
    print(f"{len(docs):,} documents, {words:,} words, num_perm={args.num_perm}, "
          f"shingles of {args.shingle_size} words")
    print(f"| {'setting':<44} | {'docs/s':>9} | {'removed':>7} |")
    print(f"| {'-' * 44} | {'-' * 9}:| {'-' * 7}:|")
    hasher = MinHasher(args.num_perm, args.shingle_size)
    rows = [
        ("exact (blake2b-128 of normalised text)", ExactDedup()),
        ("signatures: lmforge numpy MinHasher", hasher.signature),
        ("signatures: datasketch.MinHash",
         lambda t: datasketch_signature(t, args.num_perm, args.shingle_size)),
    ]
    for name, fn in rows:
        r, removed = rate(fn, docs)
        shown = removed if isinstance(fn, ExactDedup) else "-"
        print(f"| {name:<44} | {r:>9,.0f} | {shown:>7} |", flush=True)
    for name, near_cls in (("exact + near (numpy sigs, MinHashLSH)", NearDedup),
                           ("exact + near (datasketch sigs, MinHashLSH)", DatasketchNear)):
        stages = (ExactDedup(), near_cls(0.8, args.num_perm, args.shingle_size))
        r, removed = rate(lambda t, s=stages: s[0](t) and s[1](t), docs)
        print(f"| {name:<44} | {r:>9,.0f} | {removed:>7} |", flush=True)


if __name__ == "__main__":
    main()
