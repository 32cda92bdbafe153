"""Readers: turn every kind of input into a stream of raw document strings.

An input is a file (.txt and anything else read as text, .jsonl, .csv, .tsv, .parquet, each optionally
.gz/.zst/.xz), a folder (read recursively, sorted), `hf:NAME[:CONFIG]:SPLIT` (a Hugging Face dataset,
or a folder made by `Dataset.save_to_disk`) or `builtin:python-docs`.

Text is decoded with `surrogateescape`, so bytes that are not UTF-8 survive as lone surrogates
(U+DC80..U+DCFF) and the `utf8` cleaning stage decides what to do with them. Readers are generators:
nothing holds more than one document (or one parquet row group) at a time.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import lzma
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from lmforge.corpus.config import CorpusConfig
from lmforge.corpus.store import TRUNCATED, CheckedZstd, damaged
from lmforge.errors import LmforgeError

COMPRESSED = (".gz", ".zst", ".xz")
SNIFF_BYTES = 8192


@dataclass
class ReadStats:
    files: int = 0
    binary_skipped: list[str] = field(default_factory=list)


class BinaryFile(Exception):
    """Raised by `_open_text` for a file with NUL bytes in its first block."""


def check_inputs(inputs: list[str]) -> None:
    """Fail before any work on an input that cannot exist (a missing path, a malformed hf: name)."""
    if not inputs:
        raise LmforgeError("no inputs: give files, folders, hf:NAME[:CONFIG]:SPLIT or builtin:python-docs")
    for spec in inputs:
        if spec.startswith("hf:"):
            from lmforge.corpus.hf import parse_spec

            parse_spec(spec)
        elif spec.startswith("builtin:"):
            if spec != "builtin:python-docs":
                raise LmforgeError(f"unknown builtin corpus {spec!r}: "
                                   "the one builtin corpus is builtin:python-docs")
        elif not Path(spec).exists():
            raise LmforgeError(f"input {spec} not found: give an existing file or folder, "
                               "hf:NAME[:CONFIG]:SPLIT, or builtin:python-docs")


def check_extras(inputs: list[str], cfg: CorpusConfig) -> None:
    """Refuse before any work when an input, a stage or the output format needs a missing extra."""
    from lmforge.extras import require

    if any(spec.startswith("hf:") for spec in inputs):
        require("datasets", f"input {next(s for s in inputs if s.startswith('hf:'))}")
    parquet = next((p for p in _input_files(inputs, cfg) if _kind(p) == "parquet"), None)
    if parquet is not None:
        require("pyarrow", f"reading {parquet}")
    if cfg.format == "parquet":
        require("pyarrow", "corpus.format = 'parquet'")
    if cfg.dedup_near:
        require("datasketch", "near-duplicate removal (corpus.dedup_near; set it to false to skip)")


def _input_files(inputs: list[str], cfg: CorpusConfig) -> Iterator[Path]:
    for spec in inputs:
        path = Path(spec)
        if spec.startswith(("hf:", "builtin:")):
            continue
        yield from _folder_files(path, cfg) if path.is_dir() else [path]


def iter_inputs(inputs: list[str], cfg: CorpusConfig, stats: ReadStats) -> Iterator[str]:
    for spec in inputs:
        if spec.startswith("builtin:"):
            stats.files += 1
            yield from _builtin(spec)
        elif spec.startswith("hf:"):
            from lmforge.corpus.hf import iter_hf

            stats.files += 1
            yield from iter_hf(spec, cfg.text_field)
        else:
            path = Path(spec)
            if path.is_dir():
                yield from _iter_folder(path, cfg, stats)
            elif path.is_file():
                stats.files += 1
                try:
                    yield from iter_file(path, cfg)
                except BinaryFile:
                    raise LmforgeError(f"{path}: binary file (NUL bytes in its first {SNIFF_BYTES} bytes): "
                                       "give text, JSONL, CSV/TSV or parquet files") from None
                except TRUNCATED as e:
                    raise damaged(path, e) from None
            else:
                raise LmforgeError(f"input {spec} not found: give an existing file or folder, "
                                   "hf:NAME[:CONFIG]:SPLIT, or builtin:python-docs")


def _builtin(spec: str) -> Iterator[str]:
    check_inputs([spec])
    from lmforge.corpus.pydocs import iter_python_docs

    yield from iter_python_docs()


def _iter_folder(folder: Path, cfg: CorpusConfig, stats: ReadStats) -> Iterator[str]:
    """Every matching file under `folder` in sorted order; binary files are skipped and counted."""
    for path in _folder_files(folder, cfg):
        try:
            yield from iter_file(path, cfg)
            stats.files += 1
        except BinaryFile:
            stats.binary_skipped.append(str(path))
        except TRUNCATED as e:
            raise damaged(path, e) from None


def _folder_files(folder: Path, cfg: CorpusConfig) -> list[Path]:
    """The files of an input folder that `corpus.glob` matches, hidden ones left out, sorted."""
    return sorted(p for p in folder.glob(cfg.glob) if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _kind(path: Path) -> str:
    """The format of a file from its suffixes, compression aside: txt, jsonl, csv, tsv or parquet."""
    name = path.name.lower()
    for ext in COMPRESSED:
        if name.endswith(ext):
            name = name[: -len(ext)]
    for kind, exts in (("jsonl", (".jsonl", ".ndjson")), ("csv", (".csv",)), ("tsv", (".tsv",)),
                       ("parquet", (".parquet",))):
        if name.endswith(exts):
            return kind
    return "txt"


def iter_file(path: Path, cfg: CorpusConfig) -> Iterator[str]:
    kind = _kind(path)
    if kind == "parquet":
        yield from _iter_parquet(path, cfg.text_field)
        return
    with _open_text(path) as f:
        if kind == "jsonl":
            yield from _iter_jsonl(f, path, cfg.text_field)
        elif kind in ("csv", "tsv"):
            yield from _iter_csv(f, path, cfg.text_column, kind)
        else:
            yield from _iter_txt(f, cfg.txt_mode)


def _open_binary(path: Path) -> IO[bytes]:
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".xz"):
        return lzma.open(path, "rb")
    if name.endswith(".zst"):
        return CheckedZstd(path)
    return path.open("rb")


def _open_text(path: Path) -> IO[str]:
    raw = io.BufferedReader(_open_binary(path), buffer_size=1 << 16)
    try:
        head = raw.peek(SNIFF_BYTES)[:SNIFF_BYTES]
    except TRUNCATED as e:
        raw.close()
        raise damaged(path, e) from None
    if b"\0" in head:
        raw.close()
        raise BinaryFile(str(path))
    return io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="")


def _iter_txt(f: IO[str], mode: str) -> Iterator[str]:
    if mode == "file":
        yield f.read()
    elif mode == "line":
        for line in f:
            yield line.rstrip("\r\n")
    else:
        para: list[str] = []
        for line in f:
            if line.strip():
                para.append(line)
            elif para:
                yield "".join(para)
                para = []
        if para:
            yield "".join(para)


def _iter_jsonl(f: IO[str], path: Path, text_field: str) -> Iterator[str]:
    for lineno, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise LmforgeError(f"{path}:{lineno}:{e.colno}: not valid JSON ({e.msg}): fix or delete that line"
                               ) from None
        if not isinstance(record, dict) or text_field not in record:
            found = ", ".join(record) if isinstance(record, dict) else type(record).__name__
            raise LmforgeError(f"{path}:{lineno}: no field '{text_field}' (found: {found}): "
                               f"pass --set corpus.text_field=NAME")
        text = record[text_field]
        if text is None:
            continue
        if not isinstance(text, str):
            raise LmforgeError(f"{path}:{lineno}: field '{text_field}' holds a {type(text).__name__}, "
                               "not a string: pick the text field with --set corpus.text_field=NAME")
        yield text


def _iter_csv(f: IO[str], path: Path, column: str, kind: str) -> Iterator[str]:
    from lmforge.corpus.columns import TEXT_NAMES, is_header, text_column

    csv.field_size_limit(2**31 - 1)
    # Real TSVs contain bare quotes (e.g. 12" records): quoting would glue lines together. A CSV is read
    # strictly: an unterminated quote is an error, not one field holding the rest of the file.
    reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if kind == "tsv" else csv.reader(f, strict=True)
    first_line = 1
    if column.isdigit():
        index = int(column)
    else:
        header = next(reader, None)
        if header is None:
            return
        header = [h.strip() for h in header]
        if column:
            if column not in header:
                raise LmforgeError(f"{path}:1: no column '{column}' (columns: {', '.join(header)}): pass --set "
                                   "corpus.text_column=NAME (a 0-based index if there is no header)")
            index = header.index(column)
        elif is_header(header) and text_column(header) is not None:
            index = text_column(header)
        else:
            raise LmforgeError(f"{path}:1: no text column among {', '.join(map(repr, header))} (known names: "
                               f"{', '.join(TEXT_NAMES)}): name it with --set corpus.text_column=NAME, or give "
                               "its 0-based index when the file has no header")
        first_line = 2
    try:
        for row in reader:
            if not row:
                continue
            if index >= len(row):
                raise LmforgeError(f"{path}:{reader.line_num}: row has {len(row)} columns, the text column "
                                   f"is index {index}: fix the row or --set corpus.text_column")
            yield row[index]
    except csv.Error as e:
        raise LmforgeError(f"{path}:{max(reader.line_num, first_line)}: malformed {kind.upper()} ({e}): "
                           "fix the quoting of that row") from None


def _iter_parquet(path: Path, text_field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise LmforgeError(f"{path}: reading parquet needs pyarrow: pip install 'lmforge[parquet]'") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise LmforgeError(f"{path}: not a readable parquet file ({e})") from None
    names = pf.schema_arrow.names
    if text_field not in names:
        raise LmforgeError(f"{path}: no column '{text_field}' (columns: {', '.join(names)}): "
                           "pass --set corpus.text_field=NAME")
    for group in range(pf.num_row_groups):
        for text in pf.read_row_group(group, columns=[text_field]).column(0).to_pylist():
            if text is not None:
                yield text if isinstance(text, str) else str(text)
