"""The [corpus] section: how `lmforge corpus build` reads, cleans, deduplicates and splits text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lmforge.config import check, check_ranges


@dataclass(frozen=True)
class CorpusConfig:
    txt_mode: Literal["file", "paragraph", "line"] = "paragraph"
    """How a .txt file is split into documents: the whole file, blank-line paragraphs, or lines."""
    text_field: str = "text"
    """JSONL/parquet/HF field that holds the text."""
    text_column: str = ""
    """CSV/TSV column that holds the text: a name, a 0-based index for files without a header, or empty
    to take the first known text column of the header (sentence, text, text_a, ...; as fine-tuning does)."""
    glob: str = "**/*"
    """Pattern of files to read inside an input folder (recursive)."""
    invalid_utf8: Literal["replace", "skip"] = "replace"
    """Bytes that are not UTF-8: replace them with U+FFFD (counted), or skip the whole document."""
    nfkc: bool = True
    """Unicode NFKC normalisation."""
    strip_control: bool = True
    """Remove control characters and U+FFFD replacement characters."""
    normalize_whitespace: bool = True
    """Collapse runs of spaces/tabs, trim lines, keep at most one blank line."""
    strip_html: bool = False
    """Remove HTML tags and unescape entities."""
    min_chars: int = 20
    """Drop documents shorter than this (after cleaning)."""
    max_chars: int = 1_000_000
    """Drop documents longer than this."""
    min_letter_ratio: float = 0.5
    """Drop documents whose share of letters (any script) among non-space characters is below this."""
    dedup_exact: bool = True
    """Drop documents whose normalised text was seen before."""
    dedup_near: bool = True
    """Drop near-duplicates (MinHash + LSH over word shingles)."""
    near_threshold: float = 0.8
    """Estimated Jaccard similarity above which a document is a near-duplicate."""
    num_perm: int = 128
    """MinHash permutations."""
    shingle_size: int = 5
    """Words (or characters, for text without spaces) per shingle."""
    scrub_pii: bool = True
    """Replace emails, phone numbers and IP addresses with placeholders."""
    val_fraction: float = 0.01
    """Share of documents held out for validation."""
    seed: int = 1234
    """Seed of the shuffle and the split."""
    shuffle_buffer: int = 100_000
    """Documents held at once for the seeded shuffle (memory stays bounded by this)."""
    docs_per_shard: int = 50_000
    """Documents per output shard file."""
    format: Literal["jsonl.zst", "jsonl.gz", "parquet"] = "jsonl.zst"
    """Output shard format."""

    def __post_init__(self) -> None:
        check(0.0 <= self.val_fraction < 1.0, "corpus.val_fraction", "must be in [0, 1)")
        check(0.0 < self.near_threshold <= 1.0, "corpus.near_threshold", "must be in (0, 1]")
        check_ranges(self, "corpus", positive="num_perm shingle_size shuffle_buffer docs_per_shard",
                     non_negative="min_chars min_letter_ratio")
        check(self.max_chars > self.min_chars, "corpus.max_chars", "must be larger than corpus.min_chars")
