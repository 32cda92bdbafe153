"""Deduplication: exact (hash of normalised text) and near (MinHash signatures + LSH index).

MinHash signatures are computed here with numpy: a document's shingles (k consecutive words, or k
characters for text written without spaces such as Chinese) are hashed to 32 bits, and each of the P
hash functions is multiply-shift, h -> ((a*h + b) mod 2^64) >> 32 with a odd (a universal family
that needs no division, ~3x faster than datasketch.MinHash here), minimised over the shingles.
The index is datasketch's `MinHashLSH`; candidates it returns are confirmed by the signature
agreement (the Jaccard estimate) before a document is dropped. Only the index grows with the corpus.

Letters: S shingles in a document, P permutations (`num_perm`).
"""

from __future__ import annotations

import hashlib
import re
import zlib

import numpy as np

from lmforge.corpus.clean import Stage
from lmforge.errors import LmforgeError

_MAX32 = np.uint64(0xFFFFFFFF)
_WS = re.compile(r"\s+")
_BLOCK = 4096  # shingles per block: bounds the (S, P) temporary on very long documents


def normalize_for_hash(text: str) -> str:
    return _WS.sub(" ", text.lower()).strip()


class ExactDedup(Stage):
    """Drop a document whose case- and whitespace-normalised text was seen before (16-byte blake2b)."""

    name = "dedup_exact"

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[bytes] = set()

    def __call__(self, text: str) -> str | None:
        data = normalize_for_hash(text).encode("utf-8", "surrogatepass")
        key = hashlib.blake2b(data, digest_size=16).digest()
        if key in self.seen:
            return None
        self.seen.add(key)
        return text


def _tokens(text: str) -> np.ndarray:
    """32-bit hashes of the words, or of the characters when the text has (almost) no spaces."""
    text = text.lower()
    words = text.split()
    if len(words) * 12 < len(text):  # average "word" over 12 characters: Chinese, Japanese, Thai, ...
        chars = "".join(words)
        return np.frombuffer(chars.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)
    return np.fromiter((zlib.crc32(w.encode("utf-8", "surrogatepass")) for w in words), dtype=np.uint64,
                       count=len(words))


class MinHasher:
    """MinHash signatures of P permutations over k-token shingles, computed with numpy."""

    def __init__(self, num_perm: int = 128, shingle_size: int = 5, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        self.num_perm, self.k = num_perm, shingle_size
        self.a = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.b = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64)
        # Odd 64-bit multipliers mix the k token hashes of a shingle into one value.
        self.mix = rng.integers(0, 1 << 63, size=shingle_size, dtype=np.uint64) * np.uint64(2) + np.uint64(1)

    def shingles(self, text: str) -> np.ndarray:
        tok = _tokens(text)
        if len(tok) == 0:
            return np.zeros(1, dtype=np.uint64)
        k = min(self.k, len(tok))
        n = len(tok) - k + 1
        h = np.zeros(n, dtype=np.uint64)
        for j in range(k):
            h += tok[j:j + n] * self.mix[j]  # wraps mod 2^64 on purpose
        return np.unique((h ^ (h >> np.uint64(32))) & _MAX32)  # (S,)

    def signature(self, text: str) -> np.ndarray:
        sh = self.shingles(text)
        sig = np.full(self.num_perm, _MAX32, dtype=np.uint64)
        for start in range(0, len(sh), _BLOCK):
            block = sh[start:start + _BLOCK, None]  # (S, 1)
            perm = (block * self.a + self.b) >> np.uint64(32)  # (S, P), wraps mod 2^64 on purpose
            np.minimum(sig, perm.min(axis=0), out=sig)
        return sig


class NearDedup(Stage):
    """Drop a document whose estimated Jaccard similarity to a kept one reaches the threshold."""

    name = "dedup_near"

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, shingle_size: int = 5) -> None:
        super().__init__()
        try:
            from datasketch import LeanMinHash, MinHashLSH
        except ImportError:
            raise LmforgeError("near-duplicate removal needs datasketch: pip install 'lmforge[dedup]', "
                               "or turn it off with --set corpus.dedup_near=false") from None
        self.threshold = threshold
        self.hasher = MinHasher(num_perm, shingle_size)
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._lean = LeanMinHash
        self.kept: list[np.ndarray] = []

    def __call__(self, text: str) -> str | None:
        sig = self.hasher.signature(text)
        # The scheme is only a label the index checks for consistency; ours is an affine 32-bit one.
        minhash = self._lean(seed=1, hashvalues=sig, scheme="affine32")
        for key in self.lsh.query(minhash):
            if np.mean(self.kept[key] == sig) >= self.threshold:
                self._count("lsh_confirmed")
                return None
            self._count("lsh_rejected")
        self.lsh.insert(len(self.kept), minhash, check_duplication=False)
        self.kept.append(sig.astype(np.uint32))
        return text
