"""Extractive question answering (SQuAD v1.1): read questions, cut contexts into windows, pick answers.

Reading: SQuAD JSON (`{"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question",
"answers": [{"text", "answer_start"}]}]}]}]}`) or JSONL (as .jsonl, or as the .json that HF datasets'
`to_json` writes), one question per line with `question`, `context`, `answers` (`{"text": [...],
"answer_start": [...]}` as in HF datasets, or `[{"text", "answer_start"}]`) and optional `id` (default:
the line number) and `title`. Every answer must be the context's text at its offset; unanswerable
questions (SQuAD v2) are refused.

Features, as transformers' run_qa: the question (cut to max_query_length tokens) and one window of the
context per feature, in the model's input_format:

    cls_sep      [CLS] question [SEP] window [SEP]       (BERT)
    cls_sep_sep  <s> question </s></s> window </s>       (RoBERTa)
    plain        question <sep> window                   (GPT, no [CLS])

Consecutive windows overlap by doc_stride tokens. A training position points at the first answer's first
and last token when the window holds all of it, else at index 0, "not in this window": the [CLS] token,
or with "plain" the first question token (never an answer either, so index 0 means the same).

Answers: per window, softmax of the start and of the end logits over its context tokens; a span scores
p_start * p_end (as transformers' question-answering pipeline); the best span of all windows wins.

Dimension letters: T tokens of one feature, N context tokens of one example.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmforge.errors import LmforgeError

FORMATS = {".json": "SQuAD v1.1 JSON", ".jsonl": "JSONL"}
SPECIALS = {"cls_sep": 3, "cls_sep_sep": 4, "plain": 1}
"""Special tokens around question and window, per input_format."""
MIN_CONTEXT = 8
"""Fewest context tokens a window may hold: fewer and most answers would never fit in one."""


@dataclass
class QAExample:
    id: str
    question: str
    context: str
    answers: list[str]
    """Gold answer texts (may repeat: several annotators gave the same one)."""
    starts: list[int]
    """Character offset of each answer in `context`."""
    title: str = ""
    """The article the context comes from (splits keep an article's questions together)."""


@dataclass
class QAData:
    path: Path
    examples: list[QAExample]
    format: str = ""
    """What the file was read as: a value of FORMATS."""

    def __len__(self) -> int:
        return len(self.examples)

    def describe(self) -> str:
        contexts = len({e.context for e in self.examples})
        titles = {e.title for e in self.examples if e.title}
        articles = f"{len(titles)} articles" if titles else "no article titles"
        return f"{self.path}: {len(self)} questions, {contexts} contexts, {articles} ({self.format})"


def read_qa(path: str | Path, need_answers: bool = True) -> QAData:
    """Read SQuAD v1.1 JSON (.json) or JSONL (.jsonl); with need_answers=False a question may lack answers."""
    path = Path(path)
    if path.suffix not in FORMATS:
        raise LmforgeError(f"{path}: unknown format {path.suffix!r}: give SQuAD v1.1 JSON (.json) or JSONL "
                           "(.jsonl, one question per line)")
    if not path.is_file():
        raise LmforgeError(f"{path} not found")
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
    if not text.strip():
        raise LmforgeError(f"{path} is empty")
    jsonl = path.suffix == ".jsonl" or _first_line_is_question(text)  # HF `to_json` writes JSONL as .json
    records = _jsonl_records(path, text) if jsonl else _squad_records(path, text)
    examples, seen = [], set()
    for where, raw in records:
        e = _example(where, raw, need_answers)
        if e.id in seen:  # predictions are keyed by id
            raise LmforgeError(f"{where}: the id occurs twice: give every question its own id")
        seen.add(e.id)
        examples.append(e)
    if not examples:
        raise LmforgeError(f"{path} holds no questions")
    return QAData(path, examples, FORMATS[".jsonl" if jsonl else ".json"])


def _first_line_is_question(text: str) -> bool:
    try:
        first = json.loads(text.lstrip().split("\n", 1)[0])
    except json.JSONDecodeError:
        return False
    return isinstance(first, dict) and "question" in first


def _squad_records(path: Path, text: str):
    """(where, raw question) for each question of SQuAD JSON; `where` names it in messages."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise LmforgeError(f"{path}:{e.lineno}: not valid JSON ({e.msg}): give SQuAD v1.1 JSON, or JSONL as "
                           "a .jsonl file") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
        raise LmforgeError(f'{path}: no top-level "data" list of articles: give SQuAD v1.1 JSON, or one '
                           "question per line as a .jsonl file")
    for article in obj["data"]:
        for para in _dicts(path, article.get("paragraphs", []) if isinstance(article, dict) else None):
            for qa in _dicts(path, para.get("qas", [])):
                qid = str(qa.get("id", ""))
                yield f"{path}: question {qid!r}", {**qa, "id": qid, "context": para.get("context"),
                                                    "title": article.get("title", "")}


def _dicts(path: Path, items) -> list[dict]:
    if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
        raise LmforgeError(f'{path}: malformed SQuAD JSON: "data" holds articles with a "paragraphs" list, '
                           'each with a "context" and a "qas" list of questions')
    return items


def _jsonl_records(path: Path, text: str):
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise LmforgeError(f"{path}:{n}: not valid JSON ({e.msg}): one object per line") from None
        if not isinstance(obj, dict):
            raise LmforgeError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
        qid = str(obj.get("id", n))
        yield f"{path}:{n}: question {qid!r}", {**obj, "id": qid}


def _example(where: str, raw: dict, need_answers: bool) -> QAExample:
    question, context = raw.get("question"), raw.get("context")
    for name, value in (("question", question), ("context", context)):
        if not isinstance(value, str) or not value.strip():
            raise LmforgeError(f"{where}: empty {name}: fill it in or drop the question")
    pairs = _answer_pairs(where, raw.get("answers", []))
    if raw.get("is_impossible") or (need_answers and not pairs):
        raise LmforgeError(f"{where} is unanswerable (SQuAD v2 style): lmforge qa handles SQuAD v1.1, where "
                           "every question has an answer in its context: drop the unanswerable questions")
    for text, start in pairs:
        found = context[start:start + len(text)] if start >= 0 else ""
        if not text.strip() or found != text:
            raise LmforgeError(f"{where}: answer {text!r} does not match the context at answer_start {start} "
                               f"({found!r}): fix answer_start or the answer text")
    return QAExample(raw["id"], question.strip(), context, [t for t, _ in pairs], [s for _, s in pairs],
                     str(raw.get("title") or ""))


def _answer_pairs(where: str, answers) -> list[tuple[str, int]]:
    """(text, answer_start) of each answer, from either answer layout."""
    if isinstance(answers, dict):  # HF datasets: parallel lists
        texts, starts = answers.get("text", []), answers.get("answer_start", [])
        pairs = list(zip(texts, starts)) if isinstance(texts, list) and isinstance(starts, list) \
            and len(texts) == len(starts) else None
    elif isinstance(answers, list) and all(isinstance(a, dict) for a in answers):
        pairs = [(a.get("text"), a.get("answer_start")) for a in answers]
    else:
        pairs = None
    if pairs is None or not all(isinstance(t, str) and type(s) is int for t, s in pairs):
        raise LmforgeError(f'{where}: malformed "answers": give {{"text": [...], "answer_start": [...]}} or a '
                           'list of {"text": ..., "answer_start": CHARACTER_OFFSET}')
    return pairs


def split_by_article(data: QAData | Sequence[QAExample], fractions: Sequence[float],
                     seed: int) -> list[list[QAExample]]:
    """Disjoint parts holding about `fractions` of the questions each, whole articles at a time.

    An article's paragraphs share facts and wording, so splitting one between train and test would leak
    answers. Articles are shuffled by `seed` and dealt out in that order, each to the part its middle
    question falls in; fractions summing below 1 leave the rest out. Untitled questions are grouped by
    context. Examples keep file order within a part.
    """
    examples = data.examples if isinstance(data, QAData) else list(data)
    if not fractions or min(fractions) <= 0 or sum(fractions) > 1 + 1e-9:
        raise LmforgeError(f"split fractions {list(fractions)}: each must be above 0 and their sum at most 1")
    groups: dict[tuple[str, str], list[int]] = {}
    for i, e in enumerate(examples):
        groups.setdefault(("title", e.title) if e.title else ("context", e.context), []).append(i)
    keys = list(groups)
    bounds = np.cumsum(fractions) * len(examples)
    parts: list[list[int]] = [[] for _ in fractions]
    done = 0
    for k in np.random.default_rng(seed).permutation(len(keys)):
        members = groups[keys[k]]
        part = int(np.searchsorted(bounds, done + len(members) / 2, side="right"))
        done += len(members)
        if part < len(parts):
            parts[part].extend(members)
    if not all(parts):
        raise LmforgeError(f"{len(keys)} articles cannot be split into parts of {list(fractions)}: a part would "
                           "be empty; use fewer or larger parts, or more data")
    return [[examples[i] for i in sorted(p)] for p in parts]


# ----------------------------------------------------------------------------------------------------
# Features: question + context window


@dataclass
class QAFeatures:
    """One row per window ("feature"); an example with a long context has several."""

    ids: list[np.ndarray]
    """Input ids of each feature, with the model's special tokens."""
    segment_starts: np.ndarray
    """Index of the first context token (token type 1 starts here for BERT)."""
    example: np.ndarray
    """Example index of each feature."""
    offsets: list[np.ndarray]
    """(T, 2) character span in the example's context of each token, leading whitespace left out; (-1, -1)
    for question and special tokens."""
    start_positions: np.ndarray
    """Token index of the first answer's start, 0 when the window does not hold all of it; empty when made
    with with_positions=False."""
    end_positions: np.ndarray
    truncated_questions: int
    """Questions cut to max_query_length tokens."""

    def __len__(self) -> int:
        return len(self.ids)


def make_features(tokenizer, examples: Sequence[QAExample], max_length: int, doc_stride: int, input_format: str,
                  max_query_length: int = 64, with_positions: bool = True) -> QAFeatures:
    """Windows of every example's context after its question (see the module docstring)."""
    if input_format not in SPECIALS:
        raise ValueError(f"input_format {input_format!r} is not one of {', '.join(SPECIALS)}")
    room = max_length - max_query_length - SPECIALS[input_format]
    if room < MIN_CONTEXT:
        raise LmforgeError(f"finetune.max_length={max_length} with finetune.max_query_length={max_query_length} "
                           f"leaves {room} tokens for the context (at least {MIN_CONTEXT}): raise max_length or "
                           "lower max_query_length")
    if not 0 <= doc_stride < room:
        raise LmforgeError(f"finetune.doc_stride={doc_stride}: windows overlap by doc_stride tokens, which must "
                           f"be at least 0 and below the {room} context tokens a window may hold "
                           "(finetune.max_length - finetune.max_query_length - special tokens): lower it")
    questions = tokenizer.encode_batch([e.question.strip() for e in examples])
    unique = list(dict.fromkeys(e.context for e in examples))  # SQuAD asks ~5 questions per context
    encoded = {c: (ids, _trim(c, offs)) for c, (ids, offs) in zip(unique, tokenizer.encode_offsets(unique))}
    cls, sep = tokenizer.cls_id, tokenizer.sep_id
    tail = [] if input_format == "plain" else [sep]
    ids, seg, owner, offsets, starts, ends, truncated = [], [], [], [], [], [], 0
    for i, (e, q) in enumerate(zip(examples, questions)):
        if len(q) > max_query_length:
            q, truncated = q[:max_query_length], truncated + 1
        head = {"cls_sep": [cls, *q, sep], "cls_sep_sep": [cls, *q, sep, sep], "plain": [*q, sep]}[input_format]
        ctx_ids, ctx_offsets = encoded[e.context]
        width = max_length - len(head) - len(tail)
        first, last = _answer_tokens(e, ctx_offsets) if with_positions else (0, -1)
        for lo in window_starts(len(ctx_ids), width, doc_stride):
            hi = min(lo + width, len(ctx_ids))
            ids.append(np.asarray([*head, *ctx_ids[lo:hi], *tail], dtype=np.int64))
            off = np.full((len(ids[-1]), 2), -1, dtype=np.int64)  # (T, 2)
            off[len(head):len(head) + hi - lo] = ctx_offsets[lo:hi]
            offsets.append(off)
            seg.append(len(head))
            owner.append(i)
            inside = lo <= first <= last < hi
            starts.append(len(head) + first - lo if inside else 0)
            ends.append(len(head) + last - lo if inside else 0)
    if not with_positions:
        starts, ends = [], []
    return QAFeatures(ids, np.asarray(seg, dtype=np.int64), np.asarray(owner, dtype=np.int64), offsets,
                      np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64), truncated)


def window_starts(n: int, width: int, stride: int) -> list[int]:
    """First context token of each window of `width` tokens over `n`, overlapping by `stride` (as the
    overflowing tokens of HF tokenizers: the last window ends at the last token, maybe short)."""
    starts = [0]
    while starts[-1] + width < n:
        starts.append(starts[-1] + width - stride)
    return starts


def _trim(context: str, offsets: list[tuple[int, int]]) -> np.ndarray:
    """(N, 2) token spans without the space a byte-level token carries in front (a pure-space token keeps
    an empty span at its end), so a span's text is the answer's."""
    out = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    for row in out:
        while row[0] < row[1] and context[row[0]].isspace():
            row[0] += 1
    return out


def _answer_tokens(e: QAExample, offsets: np.ndarray) -> tuple[int, int]:
    """First and last context token of the first answer (as run_qa), or (0, -1) when no token covers it."""
    if not e.answers:
        raise LmforgeError(f"question {e.id!r} has no answer to train on: give every training question one")
    a0 = e.starts[0]
    a1 = a0 + len(e.answers[0])
    first = int(np.searchsorted(offsets[:, 1], a0, side="right"))  # first token ending after a0
    last = int(np.searchsorted(offsets[:, 0], a1, side="left")) - 1  # last token starting before a1
    return (first, last) if first <= last else (0, -1)


# ----------------------------------------------------------------------------------------------------
# Predictions


def best_answers(examples: Sequence[QAExample], features: QAFeatures, start_logits: list[np.ndarray],
                 end_logits: list[np.ndarray], n_best_size: int = 20, max_answer_length: int = 30) -> list[dict]:
    """Per example {"text", "score", "start", "end", "n_best"}: the best span over its windows.

    In each window the top n_best_size start and end tokens among the context tokens pair into spans of
    at most max_answer_length tokens. Spans are ranked over all windows by start logit + end logit, as
    the original BERT SQuAD script and transformers' run_qa post-processing do (ranking by p_start * p_end
    per window instead scored 6 F1 points lower on our SQuAD split: BENCHMARKS.md). `score` is the span's
    p_start * p_end in its window: softmax over the window's context tokens and position 0 (as
    transformers' QA pipeline keeps [CLS] unmasked). `start`/`end` are character offsets into the
    context; the same span seen by two overlapping windows keeps its better rank. An example with no
    span gets text "" and score 0.
    """
    if not len(start_logits) == len(end_logits) == len(features):
        raise ValueError(f"{len(start_logits)} start and {len(end_logits)} end logits for {len(features)} features")
    spans: list[dict[tuple[int, int], tuple[float, float]]] = [{} for _ in examples]  # (logit sum, score)
    for f, off in enumerate(features.offsets):
        context = off[:, 0] >= 0  # (T,)
        if not context.any():
            continue
        starts = np.asarray(start_logits[f], dtype=np.float64)[:len(off)]
        ends = np.asarray(end_logits[f], dtype=np.float64)[:len(off)]
        scored = context.copy()
        scored[0] = True  # the "no answer here" position takes its share of the probability
        p_start, p_end = _softmax(starts, scored), _softmax(ends, scored)
        where = np.flatnonzero(context)
        s = where[np.argsort(-starts[where], kind="stable")[:n_best_size]]
        e = where[np.argsort(-ends[where], kind="stable")[:n_best_size]]
        length = e[None, :] - s[:, None] + 1  # (S, E) tokens
        rank = starts[s][:, None] + ends[e][None, :]  # (S, E)
        score = p_start[s][:, None] * p_end[e][None, :]  # (S, E)
        found = spans[int(features.example[f])]
        for a, b in zip(*np.nonzero((length >= 1) & (length <= max_answer_length))):
            key = (int(off[s[a], 0]), int(off[e[b], 1]))
            if key not in found or rank[a, b] > found[key][0]:
                found[key] = (float(rank[a, b]), float(score[a, b]))
    out = []
    for ex, found in zip(examples, spans):
        ranked = [_span(ex.context, lo, hi, score)
                  for (lo, hi), (_, score) in sorted(found.items(), key=lambda kv: -kv[1][0])]
        n_best = [r for r in ranked if r["text"]][:n_best_size]  # a lone whitespace token is no answer
        top = n_best[0] if n_best else {"text": "", "score": 0.0, "start": 0, "end": 0}
        out.append({**top, "n_best": n_best})
    return out


def _softmax(logits: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Softmax over the `keep` positions; the others get probability 0."""
    x = np.where(keep, logits, -np.inf)
    x = np.exp(x - x[keep].max())
    return x / x.sum()


def _span(context: str, lo: int, hi: int, score: float) -> dict:
    text = context[lo:hi]
    lo += len(text) - len(text.lstrip())
    hi -= len(text) - len(text.rstrip())
    return {"text": context[lo:hi], "score": score, "start": lo, "end": hi}
