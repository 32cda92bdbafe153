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
    canaries: str = ""
    """Repetition counts of canaries (random secrets) to write into training documents, e.g. "1,5,20";
    recorded in canaries.json for `lmforge probe memorization` (corpus/canaries.py). Empty: none."""
    canaries_per_count: int = 1
    """Canaries made for each repetition count (more give a steadier exposure per count)."""
    canary_template: str = "{name}'s PIN is {secret}"
    """A canary's line: {secret} is canary_digits random digits separated by spaces, {name} a first name
    (another for each canary)."""
    canary_digits: int = 6
    """Digits of a secret: the probe ranks each canary among 10^canary_digits candidates."""
    canary_hosts: Literal["distinct", "copies"] = "distinct"
    """Where the repetitions go: each into another random training document, or one random document
    copied that many times (as a mirrored page: exact dedup then keeps one)."""

    def __post_init__(self) -> None:
        check(0.0 <= self.val_fraction < 1.0, "corpus.val_fraction", "must be in [0, 1)")
        check(0.0 < self.near_threshold <= 1.0, "corpus.near_threshold", "must be in (0, 1]")
        check_ranges(self, "corpus", positive="num_perm shingle_size shuffle_buffer docs_per_shard",
                     non_negative="min_chars min_letter_ratio")
        check(self.max_chars > self.min_chars, "corpus.max_chars", "must be larger than corpus.min_chars")
        check(1 <= self.canary_digits <= 18, "corpus.canary_digits", "must be in [1, 18]")
        check(self.canaries_per_count >= 1, "corpus.canaries_per_count", "must be >= 1")
        if self.canaries:
            from lmforge.corpus.canaries import check_template, parse_counts

            check_template(self.canary_template, len(parse_counts(self.canaries)) * self.canaries_per_count)
