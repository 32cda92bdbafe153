"""Tagged words for token classification (NER): read CoNLL/JSONL files, convert their tags to IOB2, build
and check tag sets. Aligning the words with tokens and windows: data/word_tokens.py.

Reading: CoNLL-style files hold one word per line (word in column 0, tag in `tag_column`), a blank line
between sentences, `-DOCSTART-` lines skipped; JSONL holds `{"tokens": [...], "tags": [...]}` per line.
Tags are read in IOB1, IOB2, BIOES or BMES (detected, or given and checked) and converted to IOB2.

Dimensions: S sentences, L tags.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.tokenizer.core import _is_cjk

SCHEMES = ("iob1", "iob2", "bioes", "bmes")
PREFIXES = {"iob1": "BI", "iob2": "BI", "bioes": "BIES", "bmes": "BMES"}
_TAG = re.compile(r"([BIESM])-(\S+)")


@dataclass
class TaggedData:
    """Sentences of one file: their words and (IOB2) tags."""

    path: Path
    words: list[list[str]]
    tags: list[list[str]] | None
    """Per sentence, per word, in IOB2; None when the file has no tags (inference)."""
    lines: list[int]
    """1-based line of each sentence's first word in the file."""
    scheme: str
    """The scheme the file was in, detected or given: one of SCHEMES."""
    joiner: str
    """" " between words; "" when the words are single characters, mostly CJK (Chinese char-per-line data)."""
    detected: bool = False

    def __len__(self) -> int:
        return len(self.words)

    def word_line(self, s: int, i: int) -> int:
        """Line of word i of sentence s (a CoNLL file has one word per line)."""
        return self.lines[s] + (0 if self.path.suffix == ".jsonl" else i)

    def describe(self) -> str:
        unit, how = ("characters", "joined without spaces") if self.joiner == "" else ("words", "joined by spaces")
        tags = "no tags" if self.tags is None else f"tags {self.scheme.upper()}" + \
            (" (detected)" if self.detected else "") + (", converted to IOB2" if self.scheme != "iob2" else "")
        return f"{self.path}: {len(self)} sentences, {sum(map(len, self.words))} {unit} ({how}); {tags}"


def _read_conll(path: Path, text: str, tag_column: int, need_tags: bool):
    sentences, ncols, first = [], 0, 0
    words, tags, start = [], [], 0
    for n, line in enumerate(text.split("\n"), 1):
        # split on ASCII blanks only: a full-width space (U+3000) is a character of Chinese data
        cols = re.split(r"[ \t]+", line.strip(" \t\r\n"))
        if not line.strip() or cols[0] == "-DOCSTART-":
            if words:
                sentences.append((start, words, tags))
            words, tags = [], []
            continue
        if not ncols:
            ncols, first = len(cols), n
            if ncols == 1 and need_tags:
                raise LmforgeError(f"{path}:{n}: one column only, no tags: a tagged file has the word first and "
                                   "its tag in another column (separated by spaces or tabs)")
            if ncols > 1 and not -ncols <= tag_column < ncols:
                raise LmforgeError(f"{path}:{n}: tag_column={tag_column}, but the lines have {ncols} columns: "
                                   f"set finetune.tag_column between 0 and {ncols - 1} (-1: the last)")
        elif len(cols) != ncols:
            raise LmforgeError(f"{path}:{n}: {len(cols)} columns, but line {first} (the first word) has "
                               f"{ncols}: every line holds a word and the same columns (a space in a word?)")
        if not words:
            start = n
        words.append(cols[0])
        tags.append(cols[tag_column] if ncols > 1 else None)
    if words:
        sentences.append((start, words, tags))
    return sentences, ncols > 1


def _read_jsonl(path: Path, text: str, need_tags: bool):
    sentences, has_tags = [], None
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise LmforgeError(f"{path}:{n}: not valid JSON ({e.msg}): one object per line") from None
        words = obj.get("tokens") if isinstance(obj, dict) else None
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise LmforgeError(f"{path}:{n}: expected an object with \"tokens\": a list of strings (and \"tags\")")
        key = "tags" if "tags" in obj else "ner_tags" if "ner_tags" in obj else None
        if has_tags is None:
            has_tags = key is not None
        if need_tags and key is None:
            raise LmforgeError(f"{path}:{n}: no \"tags\" (nor \"ner_tags\"): give each line its tags")
        if has_tags != (key is not None):
            raise LmforgeError(f"{path}:{n}: some lines have tags, others not: tag every line or none")
        tags = obj[key] if key else [None] * len(words)
        if key and (not isinstance(tags, list) or not all(isinstance(t, str) for t in tags)):
            raise LmforgeError(f"{path}:{n}: {key!r} must be a list of tag names (strings); integer ids need "
                               "their names (HF datasets: features['ner_tags'].feature.int2str)")
        if len(tags) != len(words):
            raise LmforgeError(f"{path}:{n}: {len(words)} tokens but {len(tags)} {key}: give one tag per token")
        if words:
            sentences.append((n, words, tags))
    return sentences, bool(has_tags)


def detect_scheme(tags: list[list[str]]) -> str:
    """bmes/bioes by their prefixes; iob1 when chunks start with I- more often than B- starts a chunk
    that does not follow the same type (in IOB1, B- only separates adjacent entities of one type)."""
    prefixes = {t[0] for sent in tags for t in sent if t != "O"}
    if "M" in prefixes:
        return "bmes"
    if prefixes & {"E", "S"}:
        return "bioes"
    i_starts = b_starts = 0
    for sent in tags:
        prev = "O"
        for t in sent:
            opens = t != "O" and (prev == "O" or prev[2:] != t[2:])
            i_starts += opens and t[0] == "I"
            b_starts += opens and t[0] == "B"
            prev = t
    return "iob1" if i_starts > b_starts else "iob2"


def to_iob2(tags: list[str], scheme: str) -> list[str]:
    """One sentence's tags in IOB2."""
    if scheme == "iob1":  # an I-X that starts a chunk becomes B-X
        return [f"B-{t[2:]}" if t[0] == "I" and (i == 0 or tags[i - 1] == "O" or tags[i - 1][2:] != t[2:])
                else t for i, t in enumerate(tags)]
    if scheme in ("bioes", "bmes"):
        new = {"S": "B", "E": "I", "M": "I"}
        return [t if t == "O" else f"{new.get(t[0], t[0])}{t[1:]}" for t in tags]
    return list(tags)


def iob2_to(tags: list[str], scheme: str) -> list[str]:
    """One sentence's IOB2 tags in `scheme` (the inverse of to_iob2 on well-formed tags)."""
    if scheme == "iob2":
        return list(tags)
    out = []
    for i, t in enumerate(tags):
        prev, nxt = tags[i - 1] if i else "O", tags[i + 1] if i + 1 < len(tags) else "O"
        if t == "O":
            out.append(t)
        elif scheme == "iob1":  # B- only right after a chunk of the same type
            out.append(t if t[0] == "B" and prev != "O" and prev[2:] == t[2:] else f"I{t[1:]}")
        else:
            ends = nxt != f"I-{t[2:]}"
            inner = "M" if scheme == "bmes" else "I"
            out.append(f"{('S' if ends else 'B') if t[0] == 'B' else ('E' if ends else inner)}{t[1:]}")
    return out


def read_tagged(path: str | Path, tag_column: int = -1, scheme: str = "auto", need_tags: bool = True
                ) -> TaggedData:
    """Read a CoNLL-style (any extension but .jsonl) or JSONL tagged file; tags come back in IOB2."""
    path = Path(path)
    if scheme != "auto" and scheme not in SCHEMES:
        raise ValueError(f"scheme must be auto or one of {SCHEMES}, got {scheme!r}")
    if not path.is_file():
        raise LmforgeError(f"{path} not found")
    raw = path.read_bytes()
    if b"\0" in raw[:8192]:
        raise LmforgeError(f"{path}: binary file (NUL bytes): give a CoNLL-style text file or .jsonl")
    text = raw.decode("utf-8-sig", errors="replace")
    sentences, has_tags = _read_jsonl(path, text, need_tags) if path.suffix == ".jsonl" else \
        _read_conll(path, text, tag_column, need_tags)
    if not sentences:
        raise LmforgeError(f"{path} holds no sentences")
    lines, words, tags = (list(x) for x in zip(*sentences))
    chars = [w for sent in words for w in sent]
    joiner = "" if all(len(w) == 1 for w in chars) and 2 * sum(map(_is_cjk, chars)) > len(chars) else " "
    data = TaggedData(path, words, tags if has_tags else None, lines, "iob2" if scheme == "auto" else scheme,
                      joiner, scheme == "auto" and has_tags)
    if has_tags:
        if scheme == "auto":
            _check(data, None)
            data.scheme = detect_scheme(tags)
        _check(data, data.scheme)
        data.tags = [to_iob2(t, data.scheme) for t in tags]
    return data


def _check(data: TaggedData, scheme: str | None) -> None:
    """Every tag is O or PREFIX-TYPE, with a prefix of `scheme` (when known); the first bad one is an error."""
    allowed = PREFIXES.get(scheme, "BIESM")
    for s, sent in enumerate(data.tags):
        for i, t in enumerate(sent):
            where = f"{data.path}:{data.word_line(s, i)}"
            if t != "O" and not _TAG.fullmatch(t):
                raise LmforgeError(f"tag {t!r} at {where} is neither O nor a prefix B-, I-, E-, S- or M- and a type "
                                   "(schemes read: IOB1, IOB2, BIOES, BMES): fix the tag (or finetune.tag_column, "
                                   "if this is not the tag column)")
            if t != "O" and t[0] not in allowed:
                how = "detected" if data.detected else "given"
                prefixes = ", ".join(f"{p}-" for p in allowed)
                raise LmforgeError(f"tag {t!r} at {where} is not {scheme.upper()} (the {how} scheme: O, {prefixes}): "
                                   "fix the tag, or set finetune.tag_scheme to the file's scheme")


def build_tag_set(data: TaggedData) -> list[str]:
    """The training file's tags, index = id: "O", then by type, B- before I-. Each type gets both B- and
    I- (a type seen only in one-word entities still needs I- for later subwords and dev files)."""
    if data.tags is None:
        raise LmforgeError(f"{data.path} has no tags: the training file needs a tag per word")
    types = sorted({t[2:] for sent in data.tags for t in sent if t != "O"})
    return ["O"] + [f"{p}-{typ}" for typ in types for p in "BI"]


def check_tags(data: TaggedData, labels: list[str], name: str) -> None:
    """Every tag of `data` (the `name` file: dev, test, ...) must be one of the training file's `labels`."""
    known = set(labels)
    for s, sent in enumerate(data.tags or []):
        for i, t in enumerate(sent):
            if t not in known:
                raise LmforgeError(f"tag {t!r} at {data.path}:{data.word_line(s, i)} ({name} file) is not in the "
                                   f"training file's tags ({', '.join(labels)}): fix it, or add sentences with "
                                   "it to the training file")
