"""Column names of labeled and tabular text files, shared by `corpus build` and the fine-tuning readers,
so a header is recognised, and its text column picked, the same way everywhere."""

from __future__ import annotations

TEXT_NAMES = ("sentence", "text", "text_a", "sentence1", "premise", "question", "content", "review",
              "document")
PAIR_NAMES = ("text_b", "sentence2", "hypothesis")
LABEL_NAMES = ("label", "labels", "class", "category", "sentiment", "target", "y", "gold_label")
KNOWN = frozenset({*TEXT_NAMES, *PAIR_NAMES, *LABEL_NAMES, "qid", "id", "idx", "index"})


def is_header(row: list[str]) -> bool:
    """Whether a first row names columns: any cell is a known column name."""
    return any(c.strip().lower() in KNOWN for c in row)


def text_column(header: list[str]) -> int | None:
    """The index of the text column of a header (the first known text name, in TEXT_NAMES order)."""
    lower = [h.strip().lower() for h in header]
    return next((lower.index(n) for n in TEXT_NAMES if n in lower), None)

PAIR_COLUMNS = (("source", "target"), ("src", "tgt"), ("input", "output"), ("text", "summary"),
                ("document", "summary"), ("article", "highlights"), ("en", "zh"), ("question", "answer"))
"""(source, target) column names of sequence-to-sequence files, in the order they are guessed."""
KNOWN_PAIRS = frozenset(name for pair in PAIR_COLUMNS for name in pair)
