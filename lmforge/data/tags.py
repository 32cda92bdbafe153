"""Tagged words for token classification (NER): read CoNLL/JSONL, convert tags to IOB2, align words with
tokens, cut long sentences into overlapping windows and merge their predictions back.

Reading: CoNLL-style files hold one word per line (word in column 0, tag in `tag_column`), a blank line
between sentences, `-DOCSTART-` lines skipped; JSONL holds `{"tokens": [...], "tags": [...]}` per line.
Tags are read in IOB1, IOB2, BIOES or BMES (detected, or given and checked) and converted to IOB2.

Alignment: words are joined into one text per sentence (`joiner`), the tokenizer's character offsets
say which word each token starts in, and a word's label goes on its first token. One token may cover
several words (a BPE token over several Chinese characters): the token belongs to the first, and the
later words share it; their prediction is the token's, read as a continuation (B-X becomes I-X).

Dimensions: S sentences, N tokens of a sentence, W windows, L tags.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.tokenizer.core import _is_cjk

SCHEMES = ("iob1", "iob2", "bioes", "bmes")
PREFIXES = {"iob1": "BI", "iob2": "BI", "bioes": "BIES", "bmes": "BMES"}
IGNORE = -100  # = lmforge.objectives.IGNORE (data sits below objectives in the import order)
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


# ----------------------------------------------------------------------------------------------------
# Words and tokens

_CJK = "\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef\U00020000-\U0002fa1f"
_ALNUM = rf"[^\W_{_CJK}]"
_LETTER = rf"[^\W\d_{_CJK}]"
# "U.S." keeps its last dot; "don't", "1.5", "state-of-the-art" stay whole
_WORD = re.compile(rf"(?:{_LETTER}\.){{2,}}|{_ALNUM}+(?:['’\-.]{_ALNUM}+)*|\S")


def text_words(text: str) -> list[tuple[int, int]]:
    """Word spans of raw text: runs of letters and digits (with inner ' - .), each other non-space
    character alone, each CJK character alone."""
    return [m.span() for m in _WORD.finditer(text)]


def words_to_text(words: list[str], joiner: str) -> tuple[str, list[tuple[int, int]]]:
    """The sentence as text and each word's (start, end) in it."""
    spans, pos = [], 0
    for i, w in enumerate(words):
        pos += len(joiner) if i else 0
        spans.append((pos, pos + len(w)))
        pos += len(w)
    return joiner.join(words), spans


@dataclass
class Aligned:
    """One text's tokens (no special tokens) and how they map onto its words."""

    text: str
    ids: list[int]
    offsets: list[tuple[int, int]]
    word_of_token: list[int]
    """Word whose span holds the token's first non-space character; -1 for a token on whitespace only."""
    first_token_of_word: list[int]
    """Per word, its first token. A word inside a token that began in an earlier word gets that token
    (shared: its prediction is the token's); -1 for a word with no token at all (dropped by the
    normalizer, or blank)."""

    def shares(self, w: int) -> bool:
        """Whether word w has no token of its own but lies inside one begun by an earlier word."""
        t = self.first_token_of_word[w]
        return t >= 0 and self.word_of_token[t] != w


def align(tokenizer, texts: list[str], word_spans: list[list[tuple[int, int]]]) -> list[Aligned]:
    """Tokenize each text and map tokens to the words of `word_spans` through the character offsets."""
    out = []
    for text, spans, (ids, offsets) in zip(texts, word_spans, tokenizer.encode_offsets(texts)):
        word_at = [-1] * len(text)  # word of each character
        for w, (s, e) in enumerate(spans):
            word_at[s:e] = [w] * (e - s)
        word_of = []
        for s, e in offsets:
            while s < e and (word_at[s] < 0 or text[s].isspace()):  # a byte-level token's leading space
                s += 1
            word_of.append(word_at[s] if s < e else -1)
        first = [-1] * len(spans)
        for t, w in reversed(list(enumerate(word_of))):
            if w >= 0:
                first[w] = t
        token_at = [-1] * len(text)  # first token covering each character
        for t in range(len(offsets) - 1, -1, -1):
            s, e = offsets[t]
            token_at[s:e] = [t] * (e - s)
        for w, (s, e) in enumerate(spans):
            if first[w] < 0:
                first[w] = next((token_at[p] for p in range(s, e) if token_at[p] >= 0), -1)
        out.append(Aligned(text, list(ids), [tuple(o) for o in offsets], word_of, first))
    return out


def _b_to_i(labels: list[str]) -> dict[int, int]:
    index = {t: i for i, t in enumerate(labels)}
    return {i: index[f"I-{t[2:]}"] for i, t in enumerate(labels) if t.startswith("B-") and f"I-{t[2:]}" in index}


def token_labels(aligned: Aligned, word_label_ids: list[int], labels: list[str] | None = None,
                 all_subwords: bool = False) -> np.ndarray:
    """Per token: its word's label on the word's first token; IGNORE on the others, or with
    `all_subwords` the word's label with B- turned into I- (`labels` names the ids)."""
    if all_subwords and labels is None:
        raise ValueError("all_subwords needs the label list (to turn B- into I-)")
    b_to_i = _b_to_i(labels) if all_subwords else {}
    out = np.full(len(aligned.ids), IGNORE, dtype=np.int64)  # (N,)
    for t, w in enumerate(aligned.word_of_token):
        if w < 0:
            continue
        if aligned.first_token_of_word[w] == t:
            out[t] = word_label_ids[w]
        elif all_subwords:
            out[t] = b_to_i.get(word_label_ids[w], word_label_ids[w])
    return out


def word_predictions(aligned: Aligned, token_pred_ids: list[int], labels: list[str] | None = None,
                     outside: int = 0) -> list[int]:
    """Per word, its first token's prediction; a word sharing a token begun by an earlier word continues
    that word's entity (B-X read as I-X, with `labels` given); a word with no token gets `outside` (O)."""
    b_to_i = _b_to_i(labels) if labels is not None else {}
    out = []
    for w, t in enumerate(aligned.first_token_of_word):
        p = int(token_pred_ids[t]) if t >= 0 else outside
        out.append(b_to_i.get(p, p) if aligned.shares(w) else p)
    return out


# ----------------------------------------------------------------------------------------------------
# Windows


@dataclass
class Windows:
    """Sentences cut into windows of at most max_length ids, consecutive windows sharing `stride` tokens."""

    ids: list[np.ndarray]
    """Each window's input ids, special tokens included ("plain": none; else [CLS] ... [SEP])."""
    labels: list[np.ndarray] | None
    """Same lengths as ids; IGNORE on special tokens."""
    sentence: np.ndarray
    """(W,) sentence of each window."""
    first: np.ndarray
    """(W,) index (into the sentence's tokens) of the window's first text token."""
    prefix: int
    """Special tokens before the text (1 or 0); as many follow it."""
    split: int = 0
    """Sentences that needed more than one window."""


def make_windows(aligned: list[Aligned], token_labels: list[np.ndarray] | None, max_length: int, stride: int,
                 input_format: str, cls_id: int, sep_id: int) -> Windows:
    """Windows of every sentence; one per sentence that fits."""
    prefix = 0 if input_format == "plain" else 1
    budget = max_length - 2 * prefix
    if budget < 1:
        raise LmforgeError(f"finetune.max_length={max_length} leaves no room for text: raise it")
    if not 0 <= stride < budget:
        raise LmforgeError(f"finetune.stride={stride} must be below the text tokens per window ({budget}): "
                           "lower it or raise finetune.max_length")
    head, tail = ([cls_id], [sep_id]) if prefix else ([], [])
    ids, labels, sentence, first, split = [], [] if token_labels is not None else None, [], [], 0
    for s, a in enumerate(aligned):
        n = len(a.ids)
        starts = [0] if n <= budget else [*range(0, n - budget, budget - stride), n - budget]
        split += len(starts) > 1
        for f in starts:
            ids.append(np.asarray(head + a.ids[f:f + budget] + tail, dtype=np.int64))
            if labels is not None:
                pad = np.full(prefix, IGNORE, dtype=np.int64)
                labels.append(np.concatenate([pad, token_labels[s][f:f + budget], pad]))
            sentence.append(s)
            first.append(f)
    return Windows(ids, labels, np.asarray(sentence, dtype=np.int64), np.asarray(first, dtype=np.int64),
                   prefix, split)


def merge_windows(windows: Windows, logits_or_preds: list[np.ndarray], n_tokens: list[int]) -> list[np.ndarray]:
    """Per sentence, one row per token (scores (N, L) or predicted ids (N,)), each from the window where
    the token has the most context: the largest distance to the nearer edge of the window's text (an
    edge that is the sentence's own counts as far). Window rows cover its text tokens, or all its ids."""
    template = logits_or_preds[0] if logits_or_preds else np.zeros(0, dtype=np.int64)
    out = [np.zeros((n, *template.shape[1:]), dtype=template.dtype) for n in n_tokens]
    best = [np.full(n, -1, dtype=np.int64) for n in n_tokens]
    for k, rows in enumerate(logits_or_preds):
        if len(rows) == len(windows.ids[k]) and windows.prefix:  # special tokens included: drop them
            rows = rows[windows.prefix:len(rows) - windows.prefix]
        s, f, m = int(windows.sentence[k]), int(windows.first[k]), len(rows)
        j = np.arange(m)
        left = j if f > 0 else np.full(m, m)
        right = m - 1 - j if f + m < n_tokens[s] else np.full(m, m)
        context = np.minimum(left, right)  # (m,)
        better = context > best[s][f:f + m]
        out[s][f:f + m][better] = rows[better]
        best[s][f:f + m][better] = context[better]
    for s, b in enumerate(best):
        if (b < 0).any():
            raise ValueError(f"sentence {s}: tokens {np.flatnonzero(b < 0)[:5].tolist()} are in no window")
    return out
