"""The corpus folder format, shared by the corpus builder (writer) and the tokenizer and shard
builder (readers).

A corpus folder holds `{split}-{index:05d}.{format}` files, one JSON object per document with a
`text` field (`jsonl.zst`, `jsonl.gz`) or a parquet table with a `text` column, plus `report.json`
and `config.toml`. Splits are `train` and `val`.
"""

from __future__ import annotations

import gzip
import io
import json
import lzma
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from lmforge.errors import LmforgeError

FORMATS = ("jsonl.zst", "jsonl.gz", "parquet")


def split_files(corpus_dir: str | os.PathLike, split: str) -> list[Path]:
    """The files of one split, in order. Raises if the folder is not a corpus."""
    corpus_dir = Path(corpus_dir)
    if not corpus_dir.is_dir():
        raise LmforgeError(f"corpus folder {corpus_dir} not found: build one with `lmforge corpus build`")
    files = sorted(p for fmt in FORMATS for p in corpus_dir.glob(f"{split}-[0-9]*.{fmt}"))
    if any(p.name.endswith(".parquet") for p in files):
        from lmforge.extras import require

        require("pyarrow", f"reading the parquet corpus {corpus_dir}")
    if not files and not any(corpus_dir.glob(f"*-[0-9]*.{fmt}") for fmt in FORMATS):
        raise LmforgeError(f"{corpus_dir} holds no corpus files (train-00000.jsonl.zst, ...): "
                           "build it with `lmforge corpus build`")
    return files


def iter_corpus(corpus_dir: str | os.PathLike, split: str = "train") -> Iterator[str]:
    """Stream the texts of one split, one document at a time."""
    for path in split_files(corpus_dir, split):
        yield from read_file(path)


def read_file(path: Path) -> Iterator[str]:
    name = path.name
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(columns=["text"]):
            yield from batch.column(0).to_pylist()
        return
    try:
        with open_jsonl(path) as f:
            for lineno, line in enumerate(f, 1):
                yield parse_record(line, path, lineno)
    except TRUNCATED as e:
        raise damaged(path, e) from None


class DamagedStream(Exception):
    """Compressed data that is corrupt or ends inside a frame."""


class CheckedZstd(io.RawIOBase):
    """The decompressed bytes of a .zst file, frame after frame. Unlike zstandard's stream reader, a
    file cut short inside a frame raises DamagedStream instead of ending quietly (a partly copied shard
    would otherwise read as a shorter corpus)."""

    def __init__(self, path: Path) -> None:
        import zstandard

        self._new, self._error = zstandard.ZstdDecompressor().decompressobj, zstandard.ZstdError
        self._f, self._d, self._buf, self._pending, self._in_frame = path.open("rb"), self._new(), b"", b"", False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buf:
            data, self._pending = self._pending or self._f.read(1 << 16), b""
            if not data:
                if self._in_frame:
                    raise DamagedStream("the compressed data ends inside a frame")
                return 0
            if self._d.eof:  # another frame follows
                self._d = self._new()
            try:
                self._buf = self._d.decompress(data)
            except self._error as e:
                raise DamagedStream(str(e)) from None
            self._in_frame = not self._d.eof
            if self._d.eof:
                self._pending = self._d.unused_data
        n = min(len(b), len(self._buf))
        b[:n], self._buf = self._buf[:n], self._buf[n:]
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


TRUNCATED = (DamagedStream, EOFError, gzip.BadGzipFile, lzma.LZMAError)
"""What reading a damaged or cut-short compressed file raises."""


def damaged(path: Path | str, e: BaseException) -> LmforgeError:
    return LmforgeError(f"{path}: cannot decompress ({str(e) or type(e).__name__}): the file is damaged or "
                        "cut short (a partial copy?); copy it again")


def open_jsonl(path: Path) -> io.BufferedIOBase:
    """The decompressed bytes of a jsonl.zst / jsonl.gz corpus file, one record per line."""
    if path.name.endswith(".zst"):
        return io.BufferedReader(CheckedZstd(path), 1 << 20)
    return gzip.open(path, "rb")


def parse_record(line: bytes | str, path: Path | str, lineno: int) -> str:
    """The text of one jsonl corpus line; a line that is not a record names the file and line."""
    try:
        return json.loads(line)["text"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise LmforgeError(f"{path}:{lineno}: not a corpus record ({{\"text\": ...}}): "
                           "rebuild the corpus with `lmforge corpus build`") from None


def write_file(path: Path, texts: Iterable[str], fmt: str = "jsonl.zst") -> int:
    """Write documents to one corpus file (the caller makes it atomic); returns the count."""
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        texts = list(texts)
        pq.write_table(pa.table({"text": texts}), path, compression="zstd")
        return len(texts)
    if fmt == "jsonl.zst":
        import zstandard

        raw = zstandard.ZstdCompressor(level=3).stream_writer(path.open("wb"))
    elif fmt == "jsonl.gz":
        raw = gzip.open(path, "wb", compresslevel=6)
    else:
        raise LmforgeError(f"corpus format {fmt!r} is not one of {', '.join(FORMATS)}")
    n = 0
    with io.TextIOWrapper(raw, encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
            n += 1
    return n


class SplitWriter:
    """Stream one split's documents into `{split}-{index:05d}.{fmt}` files of `docs_per_file` each.

    Memory holds one parquet row group at most (jsonl formats stream). The caller writes into a
    temporary folder (`lmforge.atomic.output_dir`), which makes the whole corpus atomic.
    """

    def __init__(self, folder: Path, split: str, fmt: str = "jsonl.zst", docs_per_file: int = 50_000) -> None:
        if fmt not in FORMATS:
            raise LmforgeError(f"corpus format {fmt!r} is not one of {', '.join(FORMATS)}")
        self.folder, self.split, self.fmt, self.docs_per_file = Path(folder), split, fmt, docs_per_file
        self.files: list[Path] = []
        self.documents = self.characters = 0
        self._in_file = 0
        self._pending: list[str] = []
        self._sink = None

    def add(self, text: str) -> None:
        if self._in_file == 0:
            self.files.append(self.folder / f"{self.split}-{len(self.files):05d}.{self.fmt}")
        self._pending.append(text)
        self._in_file += 1
        self.documents += 1
        self.characters += len(text)
        if self._in_file == self.docs_per_file:
            self._flush(close=True)
        elif len(self._pending) >= 10_000:
            self._flush(close=False)

    def close(self) -> None:
        if self._in_file:
            self._flush(close=True)

    def _flush(self, close: bool) -> None:
        texts, self._pending = self._pending, []
        if self._sink is None:
            self._sink = self._open(self.files[-1])
        if self.fmt == "parquet":
            import pyarrow as pa

            self._sink.write_table(pa.table({"text": pa.array(texts, pa.string())}))
        else:
            self._sink.writelines(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts)
        if close:
            self._sink.close()
            self._sink = None
            self._in_file = 0

    def _open(self, path: Path):
        if self.fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            return pq.ParquetWriter(path, pa.schema([("text", pa.string())]), compression="zstd")
        if self.fmt == "jsonl.zst":
            import zstandard

            raw = zstandard.ZstdCompressor(level=3).stream_writer(path.open("wb"))
        else:
            raw = gzip.open(path, "wb", compresslevel=6)
        return io.TextIOWrapper(raw, encoding="utf-8")
