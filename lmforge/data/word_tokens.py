"""Words and tokens for token classification: align words with the tokenizer's character offsets, put word
labels on tokens and read word predictions back, cut long sentences into overlapping windows and merge
their predictions.

Alignment: words are joined into one text per sentence (`joiner`), the tokenizer's character offsets
say which word each token starts in, and a word's label goes on its first token. One token may cover
several words (a BPE token over several Chinese characters): the token belongs to the first, and the
later words share it; their prediction is the token's, read as a continuation (B-X becomes I-X).

Dimensions: N tokens of a sentence, W windows, L tags.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from lmforge.errors import LmforgeError

IGNORE = -100  # = lmforge.objectives.IGNORE (data sits below objectives in the import order)

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
