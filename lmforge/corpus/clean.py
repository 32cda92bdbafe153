"""Cleaning stages: each takes a document's text and returns the new text, or None to drop it.

A stage is a small callable with a `name`; the builder runs them in order and counts, per stage, the
documents removed or changed and the characters in and out. Stages that count something of their own
(invalid bytes, PII kinds) keep it in `self.counts`.
"""

from __future__ import annotations

import html
import re
import unicodedata


class Stage:
    name = "stage"

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, text: str) -> str | None:
        raise NotImplementedError

    def _count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n


# Readers decode with surrogateescape: each undecodable byte is one lone surrogate U+DC80..U+DCFF.
_INVALID = re.compile("[\udc80-\udcff]+")


class InvalidUtf8(Stage):
    """Bytes that were not UTF-8: replace each with U+FFFD, or drop the document."""

    name = "invalid_utf8"

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def __call__(self, text: str) -> str | None:
        if not _INVALID.search(text):
            return text
        n = sum(len(m) for m in _INVALID.findall(text))
        self._count("invalid_bytes", n)
        if self.mode == "skip":
            return None
        return _INVALID.sub(lambda m: "\ufffd" * len(m.group()), text)


_DROP_BLOCKS = re.compile(r"<(script|style|noscript)\b.*?</\1\s*>|<!--.*?-->", re.S | re.I)
_BLOCK_TAGS = re.compile(r"</?(p|div|br|li|ul|ol|h[1-6]|tr|table|section|article|pre|blockquote)\b[^>]*>",
                         re.I)
_TAG = re.compile(r"</?[A-Za-z][^<>]*>")


class StripHtml(Stage):
    """Drop scripts, styles and comments, turn block tags into line breaks, remove tags, unescape."""

    name = "strip_html"

    def __call__(self, text: str) -> str:
        if "<" not in text and "&" not in text:
            return text
        text = _DROP_BLOCKS.sub(" ", text)
        text = _BLOCK_TAGS.sub("\n", text)
        return html.unescape(_TAG.sub("", text))


class Nfkc(Stage):
    name = "nfkc"

    def __call__(self, text: str) -> str:
        return text if unicodedata.is_normalized("NFKC", text) else unicodedata.normalize("NFKC", text)


def _control_table() -> dict[int, str | None]:
    table: dict[int, str | None] = {c: None for c in (*range(0x00, 0x20), *range(0x7F, 0xA0))}
    table.pop(ord("\t"))
    table[ord("\n")] = "\n"
    table[ord("\r")] = "\n"
    for c in (0xFFFD, 0xFEFF, 0x200B, 0x00AD, 0xFFFE, 0xFFFF):  # replacement char, BOM, invisible marks
        table[c] = None
    return table


class StripControl(Stage):
    """Remove control characters (tabs and newlines stay), U+FFFD, BOMs and soft hyphens."""

    name = "strip_control"

    def __init__(self) -> None:
        super().__init__()
        self.table = _control_table()

    def __call__(self, text: str) -> str:
        return text.replace("\r\n", "\n").translate(self.table)


_SPACES = re.compile(r"[^\S\n]+")
_EDGE = re.compile(r" *\n *")
_BLANKS = re.compile(r"\n{3,}")


class NormalizeWhitespace(Stage):
    """One space for every run of spaces/tabs, no spaces at line ends, at most one blank line."""

    name = "normalize_whitespace"

    def __call__(self, text: str) -> str:
        text = _EDGE.sub("\n", _SPACES.sub(" ", text))
        return _BLANKS.sub("\n\n", text).strip()


class Length(Stage):
    name = "length"

    def __init__(self, min_chars: int, max_chars: int) -> None:
        super().__init__()
        self.min_chars, self.max_chars = min_chars, max_chars

    def __call__(self, text: str) -> str | None:
        if len(text) < self.min_chars:
            self._count("too_short")
            return None
        if len(text) > self.max_chars:
            self._count("too_long")
            return None
        return text


def letter_ratio(text: str) -> float:
    """Share of letters (any script: Latin, Han, Cyrillic, ...) among the non-space characters."""
    visible = len(text) - sum(map(str.isspace, text))
    return sum(map(str.isalpha, text)) / visible if visible else 0.0


class Junk(Stage):
    """Drop documents that are mostly digits, symbols or markup."""

    name = "junk"

    def __init__(self, min_letter_ratio: float) -> None:
        super().__init__()
        self.min_letter_ratio = min_letter_ratio

    def __call__(self, text: str) -> str | None:
        return text if letter_ratio(text) >= self.min_letter_ratio else None
