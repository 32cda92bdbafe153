"""Token shards: the binary format, the parallel writer and the memory-mapped reader.

A shard file (llm.c style) is a fixed 128-byte little-endian header, then the tokens, then the
document start offsets:

    magic b"LMFSHARD" | version u32 | dtype code u32 (1: uint16, 2: uint32) | tokens u64 | docs u64 |
    tokenizer fingerprint 16 ascii | crc32 of tokens+offsets u32 | header size u32 | zero padding
    tokens  (N,)       uint16/uint32, each document followed by the eot token
    offsets (D + 1,)   uint64 local document starts; the last one is N

Documents are never split across shards. A shards folder holds `{split}-{index:05d}.bin` files,
`manifest.json` (counts, checksums, text bytes per split for bits-per-byte, the corpus folder it was built
from), `tokenizer/` and
`config.toml`.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lmforge.config import check_ranges, dumps_toml
from lmforge.errors import LmforgeError


@dataclass(frozen=True)
class ShardConfig:
    shard_tokens: int = 100_000_000
    """Tokens per shard file (the last one holds the rest)."""
    num_workers: int = 0
    """Encoding processes; 0 means one per core."""
    batch_docs: int = 1024
    """Documents handed to a worker at a time."""

    def __post_init__(self) -> None:
        check_ranges(self, "shards", positive="shard_tokens batch_docs", non_negative="num_workers")


MAGIC = b"LMFSHARD"
VERSION = 1
HEADER_SIZE = 128
_HEADER = struct.Struct("<8sIIQQ16sII")
DTYPES = {1: np.dtype("<u2"), 2: np.dtype("<u4")}
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")  # test only when the corpus has one (corpus build --test-input)


def dtype_code(vocab_size: int) -> int:
    return 1 if vocab_size <= 65535 else 2


def pack_header(code: int, n_tokens: int, n_docs: int, fingerprint: str, crc: int) -> bytes:
    fp = fingerprint.encode("ascii")[:16].ljust(16, b"0")
    head = _HEADER.pack(MAGIC, VERSION, code, n_tokens, n_docs, fp, crc, HEADER_SIZE)
    return head.ljust(HEADER_SIZE, b"\0")


# ----------------------------------------------------------------------------------------------------
# Writing


class ShardWriter:
    """Appends documents to `{split}-NNNNN.bin` files, starting a new one past `shard_tokens`."""

    def __init__(self, folder: Path, split: str, vocab_size: int, fingerprint: str,
                 shard_tokens: int) -> None:
        self.folder, self.split, self.fingerprint = folder, split, fingerprint
        self.code = dtype_code(vocab_size)
        self.dtype = DTYPES[self.code]
        self.shard_tokens = shard_tokens
        self.shards: list[dict] = []
        self._f = None

    def _open(self) -> None:
        self._path = self.folder / f"{self.split}-{len(self.shards):05d}.bin"
        self._f = self._path.open("wb")
        self._f.write(b"\0" * HEADER_SIZE)
        self._crc, self._n = 0, 0
        self._starts: list[np.ndarray] = []

    def add(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Add a batch: `tokens` is the concatenation of documents whose token counts are `lengths`."""
        pos = 0
        while pos < len(lengths):
            if self._f is None:
                self._open()
            room = self.shard_tokens - self._n
            ends = np.cumsum(lengths[pos:])
            take = int(np.searchsorted(ends, room, side="right"))
            if take == 0 and self._n == 0:
                take = 1  # a document longer than a shard gets a shard of its own
            if take == 0:
                self._close()
                continue
            n_tok = int(ends[take - 1])
            first = int(ends[0] - lengths[pos])
            chunk = tokens[first:first + n_tok].astype(self.dtype, copy=False)
            data = chunk.tobytes()
            self._f.write(data)
            self._crc = zlib.crc32(data, self._crc)
            self._starts.append(self._n + np.concatenate([[0], ends[: take - 1] - first]).astype(np.uint64))
            self._n += n_tok
            tokens = tokens[first + n_tok:]
            lengths = lengths[pos + take:]
            pos = 0

    def _close(self) -> None:
        offsets = np.concatenate([*self._starts, np.array([self._n], dtype=np.uint64)]).astype("<u8")
        raw = offsets.tobytes()
        crc = zlib.crc32(raw, self._crc)
        n_docs = len(offsets) - 1
        self._f.write(raw)
        self._f.seek(0)
        self._f.write(pack_header(self.code, self._n, n_docs, self.fingerprint, crc))
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        self._f = None
        self.shards.append({"file": self._path.name, "tokens": self._n, "docs": n_docs, "crc32": crc})

    def finish(self) -> list[dict]:
        if self._f is not None:
            self._close()
        return self.shards


_WORKER_TOK = None


def _init_worker(tokenizer_dir: str) -> None:
    global _WORKER_TOK
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from lmforge.tokenizer import load_tokenizer

    _WORKER_TOK = load_tokenizer(Path(tokenizer_dir))


def _encode_batch(job: tuple[str | None, int, bytes | list[str]]) -> tuple[np.ndarray, np.ndarray, int]:
    """(tokens with an eot after each document, per-document lengths, UTF-8 bytes of the texts).

    `job` is (file, first line number, raw jsonl lines) or (None, 0, texts): the worker, not the main
    process, decodes and parses the records, so the main process only decompresses and writes.
    """
    from lmforge.corpus.store import parse_record

    path, first, payload = job
    if path is None:
        texts = payload
    else:
        texts = [parse_record(line, path, first + i) for i, line in enumerate(payload.splitlines())]
    tok = _WORKER_TOK
    rows = tok.encode_batch(texts)
    lengths = np.fromiter((len(r) + 1 for r in rows), dtype=np.int64, count=len(rows))
    flat: list[int] = []
    for r in rows:  # list.extend runs at C speed; a per-token generator would not
        flat.extend(r)
        flat.append(tok.eot_id)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    return np.array(flat, dtype=np.uint32), lengths, n_bytes


def _batches(corpus_dir: Path, split: str, batch_docs: int) -> Iterator[tuple]:
    """Jobs of `batch_docs` documents in corpus order: raw lines of jsonl files, texts of parquet ones."""
    from itertools import islice

    from lmforge.corpus.store import TRUNCATED, damaged, open_jsonl, read_file, split_files

    for path in split_files(corpus_dir, split):
        if path.name.endswith(".parquet"):
            texts = read_file(path)
            while batch := list(islice(texts, batch_docs)):
                yield None, 0, batch
            continue
        try:
            with open_jsonl(path) as f:
                lineno = 1
                while lines := list(islice(f, batch_docs)):  # lines split at C speed, left unparsed
                    yield str(path), lineno, b"".join(lines)
                    lineno += len(lines)
        except TRUNCATED as e:
            raise damaged(path, e) from None


def _ordered_map(pool, batches: Iterator[tuple], depth: int) -> Iterator[tuple]:
    """pool.imap, but with at most `depth` batches in flight, so memory stays constant."""
    pending: deque = deque()
    for batch in batches:
        pending.append(pool.apply_async(_encode_batch, (batch,)))
        if len(pending) >= depth:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _workers(cfg: ShardConfig) -> int:
    if cfg.num_workers:
        return cfg.num_workers
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def build_shards(corpus_dir: Path, tokenizer_dir: Path, out: Path, cfg: ShardConfig,
                 overwrite: bool = False, progress: bool = True) -> dict:
    """Encode every split of a corpus folder into token shards in `out`; returns the manifest."""
    import multiprocessing as mp

    from tqdm import tqdm

    from lmforge.atomic import output_dir, write_json, write_text
    from lmforge.corpus import split_files
    from lmforge.tokenizer import find_tokenizer_dir, load_tokenizer

    corpus_dir, out = Path(corpus_dir), Path(out)
    tok = load_tokenizer(Path(tokenizer_dir))
    tok_dir = find_tokenizer_dir(Path(tokenizer_dir))
    if not split_files(corpus_dir, "train"):
        raise LmforgeError(f"corpus {corpus_dir} has no train split: rebuild it with `lmforge corpus build`")
    n_workers = _workers(cfg)
    manifest = {"format_version": VERSION, "tokenizer_fingerprint": tok.fingerprint,
                "vocab_size": tok.vocab_size, "dtype": DTYPES[dtype_code(tok.vocab_size)].name,
                "eot_id": tok.eot_id, "corpus": str(Path(corpus_dir).resolve()), "splits": {}}
    t0 = time.perf_counter()
    with output_dir(out, overwrite=overwrite) as tmp:
        shutil.copytree(tok_dir, tmp / "tokenizer")
        # spawn, not fork: a forked copy of a process that ran tokenizers' thread pool can deadlock.
        ctx = mp.get_context("spawn")
        pool = ctx.Pool(n_workers, _init_worker, (str(tok_dir),)) if n_workers > 1 else None
        if pool is None:
            _init_worker(str(tok_dir))
        try:
            for split in SPLITS:
                if not split_files(corpus_dir, split):
                    continue
                writer = ShardWriter(tmp, split, tok.vocab_size, tok.fingerprint, cfg.shard_tokens)
                batches = _batches(corpus_dir, split, cfg.batch_docs)
                results = _ordered_map(pool, batches, 2 * n_workers) if pool else map(_encode_batch, batches)
                n_bytes = 0
                with tqdm(desc=f"shards {split}", unit=" tok", unit_scale=True, disable=not progress) as bar:
                    for tokens, lengths, nb in results:
                        writer.add(tokens, lengths)
                        n_bytes += nb
                        bar.update(len(tokens))
                shards = writer.finish()
                manifest["splits"][split] = {
                    "tokens": sum(s["tokens"] for s in shards), "docs": sum(s["docs"] for s in shards),
                    "text_bytes": n_bytes, "shards": shards}
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
        write_json(tmp / MANIFEST, manifest)
        write_text(tmp / "config.toml", dumps_toml({"shards": asdict(cfg)}))
    _print_summary(manifest, time.perf_counter() - t0, out)
    return manifest


def _print_summary(manifest: dict, seconds: float, out: Path) -> None:
    tokens = sum(s["tokens"] for s in manifest["splits"].values())
    n_bytes = sum(s["text_bytes"] for s in manifest["splits"].values())
    parts = ", ".join(f"{k}: {v['tokens']:,} tokens / {v['docs']:,} docs in {len(v['shards'])} shard(s)"
                      for k, v in manifest["splits"].items())
    print(f"shards: {parts}; {n_bytes / 1e6 / seconds:.1f} MB/s, {tokens / seconds:,.0f} tokens/s -> {out}")


# ----------------------------------------------------------------------------------------------------
# Reading


class _Shard:
    def __init__(self, path: Path, verify: bool) -> None:
        if not path.is_file():
            raise LmforgeError(f"shard {path} is missing: rebuild with `lmforge shards build`")
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(HEADER_SIZE)
        if len(head) < HEADER_SIZE or head[:8] != MAGIC:
            raise LmforgeError(f"{path} is not an lmforge shard (bad magic): "
                               "rebuild with `lmforge shards build`")
        _, version, code, n_tok, n_docs, fp, crc, header_size = _HEADER.unpack(head[: _HEADER.size])
        if version != VERSION or code not in DTYPES or header_size != HEADER_SIZE:
            raise LmforgeError(f"{path} has shard format version {version} (dtype code {code}); this "
                               f"lmforge reads version {VERSION}: rebuild with `lmforge shards build` "
                               "or upgrade lmforge")
        dtype = DTYPES[code]
        expected = HEADER_SIZE + n_tok * dtype.itemsize + (n_docs + 1) * 8
        if size != expected:
            raise LmforgeError(f"{path} is truncated or damaged ({size} bytes, header says {expected}): "
                               "rebuild with `lmforge shards build`")
        self.path, self.n_tokens, self.n_docs, self.fingerprint = path, n_tok, n_docs, fp.decode("ascii")
        self.tokens = np.memmap(path, dtype=dtype, mode="r", offset=HEADER_SIZE, shape=(n_tok,))
        self.offsets = np.memmap(path, dtype="<u8", mode="r", offset=HEADER_SIZE + n_tok * dtype.itemsize,
                                 shape=(n_docs + 1,))
        if verify and self._crc() != crc:
            raise LmforgeError(f"{path} fails its checksum (the file is corrupt): "
                               "rebuild with `lmforge shards build`")

    def _crc(self) -> int:
        with self.path.open("rb") as f:
            f.seek(HEADER_SIZE)
            crc = 0
            while chunk := f.read(1 << 24):
                crc = zlib.crc32(chunk, crc)
        return crc


class TokenShards:
    """One split of a shards folder as a single token sequence, memory-mapped."""

    def __init__(self, folder: Path, split: str, shards: list[_Shard], manifest: dict) -> None:
        self.folder, self.split, self._shards = folder, split, shards
        self.vocab_size = int(manifest["vocab_size"])
        self.fingerprint = manifest["tokenizer_fingerprint"]
        self.text_bytes = int(manifest["splits"][split]["text_bytes"])
        self.num_docs = sum(s.n_docs for s in shards)
        self._starts = np.cumsum([0] + [s.n_tokens for s in shards]).astype(np.int64)
        self.num_tokens = int(self._starts[-1])

    @classmethod
    def open(cls, folder: Path, split: str = "train", expect_fingerprint: str | None = None,
             verify: bool = True) -> TokenShards:
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            raise LmforgeError(f"{folder} is not a shards folder (no {MANIFEST}): build one with "
                               "`lmforge shards build`")
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if manifest.get("format_version") != VERSION:
            raise LmforgeError(f"{path}: shard format version {manifest.get('format_version')}, "
                               f"this lmforge reads {VERSION}: rebuild with `lmforge shards build`")
        fp = manifest["tokenizer_fingerprint"]
        if expect_fingerprint is not None and fp != expect_fingerprint:
            raise LmforgeError(f"shards in {folder} were built with tokenizer {fp}, the model expects "
                               f"{expect_fingerprint}: rebuild them with "
                               "lmforge shards build --tokenizer RUN/tokenizer")
        if split not in manifest["splits"]:
            have = ", ".join(manifest["splits"]) or "none"
            raise LmforgeError(f"{folder} has no '{split}' split (it has {have}): "
                               "rebuild from a corpus with that split")
        shards = [_Shard(folder / s["file"], verify) for s in manifest["splits"][split]["shards"]]
        for s in shards:
            if s.fingerprint != fp:
                raise LmforgeError(f"{s.path} was built with tokenizer {s.fingerprint}, the manifest says "
                                   f"{fp}: "
                                   "rebuild the folder with `lmforge shards build`")
        return cls(folder, split, shards, manifest)

    def __len__(self) -> int:
        return self.num_tokens

    def tokens(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) as an int64 copy; may cross shard boundaries."""
        if not 0 <= start <= stop <= self.num_tokens:
            raise IndexError(f"tokens [{start}, {stop}) out of range [0, {self.num_tokens})")
        parts = []
        k = int(np.searchsorted(self._starts, start, side="right")) - 1
        while start < stop:
            base = int(self._starts[k])
            end = min(stop, int(self._starts[k + 1]))
            parts.append(self._shards[k].tokens[start - base:end - base])
            start, k = end, k + 1
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)

    def doc_offsets(self) -> np.ndarray:
        """Global document starts, num_docs + 1 entries (the last is num_tokens)."""
        parts = [np.asarray(s.offsets[:-1], dtype=np.int64) + base
                 for s, base in zip(self._shards, self._starts)]
        return np.concatenate([*parts, np.array([self.num_tokens], dtype=np.int64)])

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """Rows of `length` tokens beginning at `starts`: (n, length) int64."""
        starts = np.asarray(starts, dtype=np.int64)
        if starts.size and (starts.min() < 0 or starts.max() + length > self.num_tokens):
            raise IndexError(f"windows of {length} tokens must start in [0, {self.num_tokens - length}]")
        out = np.empty((len(starts), length), dtype=np.int64)
        shard = np.searchsorted(self._starts, starts, side="right") - 1
        inside = starts + length <= self._starts[shard + 1]
        steps = np.arange(length)
        for k in np.unique(shard[inside]):
            rows = np.nonzero(inside & (shard == k))[0]
            local = starts[rows] - self._starts[k]
            out[rows] = self._shards[k].tokens[local[:, None] + steps]  # (n, length)
        for r in np.nonzero(~inside)[0]:
            out[r] = self.tokens(int(starts[r]), int(starts[r]) + length)
        return out
