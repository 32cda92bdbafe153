"""Labeled text for classification: read TSV/CSV/JSONL, map labels to ids, encode, batch.

Reading: TSV lines are split on tabs with no quoting at all (real TSVs hold stray `"`), CSV goes through
the csv module, JSONL is one object per line. Column names are guessed when not given (`sentence`,
`text`, `text_a`, ... ; `label`, ...) and the guess is reported. A header line is recognised by known
column names; without one, columns are named by their 0-based index. Empty texts are skipped and
counted; a line with another number of columns than the first is an error naming file and line.

Encoding, by the model's `input_format`: "cls_sep" (BERT) reads one text as `[CLS] a [SEP]` and a
pair as `[CLS] a [SEP] b [SEP]` (with token_type_ids 0 then 1 when the model has segments);
"cls_sep_sep" (RoBERTa) joins a pair as `<s> a </s></s> b </s>`; "plain" (GPT, RNN) reads `a` and
`a <sep> b`. Examples longer than `max_length` are cut,
longest text first, and counted.

Batches are pure functions of (seed, step): global example g = step * B + i is position g % N of the
permutation of epoch g // N, drawn from `np.random.default_rng([seed, epoch])`. Each (process,
micro-step) takes its own slice of that global batch, padded on the right to its longest example.

Dimension letters: B examples in a micro-batch, T longest example in it.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lmforge.corpus.columns import KNOWN, LABEL_NAMES, PAIR_NAMES, TEXT_NAMES
from lmforge.errors import LmforgeError

FORMATS = (".tsv", ".csv", ".jsonl")


@dataclass
class LabeledData:
    """Rows of one file: texts (and second texts of pairs) with their labels as strings."""

    path: Path
    texts: list[str]
    pairs: list[str] | None
    labels: list[str] | None
    lines: list[int]
    """1-based line of each row in the file (for error messages)."""
    columns: dict[str, str] = field(default_factory=dict)
    """role (text, pair, label) -> column used."""
    guessed: list[str] = field(default_factory=list)
    """Roles whose column was guessed."""
    skipped_empty: int = 0

    def __len__(self) -> int:
        return len(self.texts)

    def describe(self) -> str:
        cols = ", ".join(f"{role} column {name!r}" for role, name in self.columns.items())
        guess = f" (guessed {', '.join(self.guessed)}; set finetune.text_column/label_column to choose)" \
            if self.guessed else ""
        empty = f"; skipped {self.skipped_empty} empty texts" if self.skipped_empty else ""
        return f"{self.path}: {len(self)} examples, {cols}{guess}{empty}"


def _read_rows(path: Path, header: str, known: frozenset[str] = KNOWN
               ) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Column names and (line, row) pairs; JSON values are turned into strings. With header "auto", a first
    row naming any `known` column is the header."""
    if path.suffix not in FORMATS:
        raise LmforgeError(f"{path}: unknown format {path.suffix!r}: give a .tsv, .csv or .jsonl file")
    if not path.is_file():
        raise LmforgeError(f"{path} not found")
    raw = path.read_bytes()
    if b"\0" in raw[:8192]:
        raise LmforgeError(f"{path}: binary file (NUL bytes): give a text .tsv, .csv or .jsonl file")
    text = raw.decode("utf-8-sig", errors="replace")
    if path.suffix == ".jsonl":
        return _read_jsonl(path, text)
    if path.suffix == ".tsv":
        records = [(i + 1, line.rstrip("\r").split("\t")) for i, line in enumerate(text.split("\n"))]
    else:  # strict: an unterminated quote is an error, not one field holding the rest of the file
        reader = csv.reader(text.splitlines(keepends=True), strict=True)
        try:
            records = [(reader.line_num, row) for row in reader]
        except csv.Error as e:
            raise LmforgeError(f"{path}:{reader.line_num}: malformed CSV ({e}): close the quote that opens "
                               "on or before this line, or fix the row") from None
    records = [(n, r) for n, r in records if any(c.strip() for c in r)]
    if not records:
        raise LmforgeError(f"{path} is empty")
    first = records[0][1]
    has_header = header == "yes" or (header == "auto" and any(c.strip().lower() in known for c in first))
    names = [c.strip() for c in first] if has_header else [str(i) for i in range(len(first))]
    rows = []
    for n, r in records[1:] if has_header else records:
        if len(r) != len(names):
            first_line = "the header" if has_header else f"line {records[0][0]}"
            raise LmforgeError(f"{path}:{n}: {len(r)} columns, but {first_line} has {len(names)}: fix the "
                               "line (a stray tab or delimiter in the text?)")
        rows.append((n, dict(zip(names, r))))
    return names, rows


def _read_jsonl(path: Path, text: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    rows, names = [], {}
    for i, line in enumerate(text.split("\n")):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise LmforgeError(f"{path}:{i + 1}: not valid JSON ({e.msg}): one object per line") from None
        if not isinstance(obj, dict):
            raise LmforgeError(f"{path}:{i + 1}: expected a JSON object, got {type(obj).__name__}")
        names.update(dict.fromkeys(obj))
        rows.append((i + 1, {k: v if isinstance(v, str) else json.dumps(v) for k, v in obj.items()}))
    if not rows:
        raise LmforgeError(f"{path} is empty")
    return list(names), rows


def _pick(path: Path, names: list[str], given: str, candidates: tuple[str, ...], role: str,
          required: bool) -> tuple[str | None, bool]:
    """The column for `role`: the given one (checked), else the first known name present."""
    if given:
        if given not in names:
            raise LmforgeError(f"{path}: no column {given!r} (set by finetune.{role}_column); the columns "
                               f"found are {', '.join(map(repr, names))}")
        return given, False
    lower = {n.lower(): n for n in names}
    for c in candidates:
        if c in lower:
            return lower[c], True
    if required:
        raise LmforgeError(f"{path}: no {role} column found among {', '.join(map(repr, names))}: name it "
                           f"with --{role}_column (or --set finetune.{role}_column=NAME)")
    return None, False


def _guess_headerless(names: list[str], rows: list[tuple[int, dict[str, str]]]) -> tuple[str, str | None]:
    """Without a header: the text is the column with the longest values, the label the shortest."""
    sample = [r for _, r in rows[:200]]
    mean_len = {n: sum(len(r[n]) for r in sample) / max(len(sample), 1) for n in names}
    ordered = sorted(names, key=mean_len.get)
    return ordered[-1], ordered[0] if len(names) > 1 else None


def _looks_like_header(rows: list[tuple[int, dict[str, str]]], label_col: str) -> bool:
    """A first row whose label occurs nowhere else while the other labels repeat (a few classes)."""
    rest = {r[label_col].strip() for _, r in rows[1:]}
    return len(rows) >= 3 and len(rest) <= max(2, (len(rows) - 1) // 2) and rows[0][1][label_col].strip() not in rest


def read_labeled(path: str | Path, text_column: str = "", label_column: str = "", pair_column: str = "",
                 header: str = "auto", need_labels: bool = True) -> LabeledData:
    """Read a labeled (or, with need_labels=False, maybe unlabeled) TSV/CSV/JSONL file."""
    path = Path(path)
    names, rows = _read_rows(path, header)
    guessed = []
    if names and names[0] == "0" and not (set(names) & KNOWN):  # no header
        guess_text, guess_label = _guess_headerless(names, rows)
        text_col = text_column or guess_text
        label_col = label_column or (guess_label if need_labels else "")
        guessed = [r for r, g in (("text", text_column), ("label", label_column)) if not g]
        for role, col in (("text", text_col), ("label", label_col)):
            if col and col not in names:
                raise LmforgeError(f"{path}: no column {col!r} (set by finetune.{role}_column); the file has "
                                   f"no header, its columns are {', '.join(map(repr, names))}")
        pair_col = pair_column or None
        if header == "auto" and label_col and _looks_like_header(rows, label_col):
            raise LmforgeError(f"{path}:{rows[0][0]}: the first line ({' | '.join(rows[0][1].values())}) looks like "
                               "a header, but names no known column: pass --header yes and name the columns "
                               "(--text_column, --label_column), or --header no if it is an example")
    else:
        text_col, g1 = _pick(path, names, text_column, TEXT_NAMES, "text", True)
        pair_col, g2 = _pick(path, names, pair_column, PAIR_NAMES, "text_pair", False)
        label_col, g3 = _pick(path, names, label_column, LABEL_NAMES, "label", need_labels)
        guessed = [r for r, g in (("text", g1), ("text_pair", g2), ("label", g3)) if g]
    texts, pairs, labels, lines, empty = [], [], [], [], 0
    for n, row in rows:
        text = row[text_col].strip()
        pair = row[pair_col].strip() if pair_col else ""
        if not text or (pair_col and not pair):
            empty += 1
            continue
        label = row[label_col].strip() if label_col else None
        if label_col and not label:
            raise LmforgeError(f"{path}:{n}: empty label in column {label_col!r}: fill it in or drop the "
                               "line")
        texts.append(text)
        pairs.append(pair)
        labels.append(label)
        lines.append(n)
    columns = {"text": text_col, **({"text_pair": pair_col} if pair_col else {}),
               **({"label": label_col} if label_col else {})}
    return LabeledData(path, texts, pairs if pair_col else None, labels if label_col else None, lines,
                       columns, guessed, empty)


# ----------------------------------------------------------------------------------------------------
# Label maps


def build_label_map(data: LabeledData) -> list[str]:
    """Labels of the training data, sorted (numerically when they all are integers): index = id."""
    if data.labels is None:
        raise LmforgeError(f"{data.path} has no label column")
    counts = Counter(data.labels)
    if len(counts) < 2:
        only = next(iter(counts), "none")
        raise LmforgeError(f"{data.path}: the label column {data.columns.get('label')!r} holds one class "
                           f"only ({only!r}): a classifier needs at least two; check the label column")
    keys = list(counts)
    if all(_is_int(k) for k in keys):
        return sorted(keys, key=int)
    return sorted(keys)


def _is_int(s: str) -> bool:
    try:
        int(s)
        return True
    except ValueError:
        return False


def label_ids(data: LabeledData, labels: list[str]) -> np.ndarray:
    """Ids of `data`'s labels under the training label map; a label never seen in training is an error."""
    index = {lab: i for i, lab in enumerate(labels)}
    ids = np.empty(len(data), dtype=np.int64)
    for i, (lab, line) in enumerate(zip(data.labels or [], data.lines)):
        if lab not in index:
            raise LmforgeError(f"{data.path}:{line}: label {lab!r} never occurs in the training data "
                               f"(labels: {', '.join(map(repr, labels))}): fix it or add examples of it to "
                               "train")
        ids[i] = index[lab]
    return ids


# ----------------------------------------------------------------------------------------------------
# Encoding


@dataclass
class Encoded:
    """Token ids of each example (variable length) and, for BERT pairs, where the second segment starts."""

    ids: list[np.ndarray]
    segment_starts: np.ndarray
    """Index of the first token of segment 1 (= len when there is none)."""
    truncated: int


def encode_examples(tokenizer, texts: list[str], pairs: list[str] | None, input_format: str,
                    max_length: int) -> Encoded:
    """Encode (pairs of) texts in the model's `input_format`, cut to `max_length`."""
    a = tokenizer.encode_batch(texts)
    b = tokenizer.encode_batch(pairs) if pairs is not None else None
    cls_sep, seps = input_format != "plain", 2 if input_format == "cls_sep_sep" else 1
    special = (2 + seps if b is not None else 2) if cls_sep else (1 if b is not None else 0)
    budget = max_length - special
    if budget < 2:
        raise LmforgeError(f"finetune.max_length={max_length} leaves no room for text: raise it")
    ids, starts, truncated = [], np.empty(len(a), dtype=np.int64), 0
    for i, x in enumerate(a):
        y = b[i] if b is not None else []
        if len(x) + len(y) > budget:
            truncated += 1
            x, y = _truncate(x, y, budget)
        if cls_sep:
            seq = [tokenizer.cls_id, *x, tokenizer.sep_id]
            starts[i] = len(seq)
            if b is not None:
                seq += [tokenizer.sep_id] * (seps - 1) + [*y, tokenizer.sep_id]
        else:
            seq = list(x) if b is None else [*x, tokenizer.sep_id, *y]
            starts[i] = len(seq)
        ids.append(np.asarray(seq, dtype=np.int64))
    return Encoded(ids, starts, truncated)


def _truncate(x: list[int], y: list[int], budget: int) -> tuple[list[int], list[int]]:
    """Cut the longer of the two texts first until both fit (transformers' 'longest_first')."""
    nx, ny = len(x), len(y)
    while nx + ny > budget:
        if nx >= ny:
            nx -= 1
        else:
            ny -= 1
    return x[:nx], y[:ny]


def pad_right(seqs: list[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Sequences padded on the right to the longest: ids and attention mask (1 on real tokens), (B, T) each."""
    T = max(len(x) for x in seqs)
    ids = np.full((len(seqs), T), pad_id, dtype=np.int64)  # (B, T)
    mask = np.zeros((len(seqs), T), dtype=np.int64)  # (B, T)
    for r, x in enumerate(seqs):
        ids[r, :len(x)] = x
        mask[r, :len(x)] = 1
    return ids, mask


def collate(enc: Encoded, index: np.ndarray, labels: np.ndarray | None, pad_id: int,
            token_types: bool) -> dict[str, torch.Tensor]:
    """Examples `index` padded on the right to the longest: input_ids, attention_mask (B, T), labels (B,)."""
    ids, mask = pad_right([enc.ids[i] for i in index], pad_id)
    T = ids.shape[1]
    batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    if token_types:
        types = (np.arange(T)[None, :] >= enc.segment_starts[index][:, None]) & (mask == 1)  # (B, T)
        batch["token_type_ids"] = torch.from_numpy(types.astype(np.int64))
    if labels is not None:
        batch["labels"] = torch.from_numpy(labels[index].copy())  # (B,)
    return batch


class EpochOrder:
    """Which examples each step's (global) batch holds: a seeded permutation per epoch, sliced by step.

    With `lengths` (group_by_length), each window of GROUP batches of the permutation is sorted longest
    first, so a batch holds examples of like lengths and pads less. A pure function of (seed, step).
    """

    GROUP = 50

    def __init__(self, n: int, batch_size: int, seed: int, lengths: np.ndarray | None = None) -> None:
        self.n, self.batch_size, self.seed, self.lengths = n, batch_size, seed, lengths
        self._epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:  # cached: consecutive steps share an epoch
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            if self.lengths is not None:
                window = self.GROUP * self.batch_size
                perm = np.concatenate([w[np.argsort(-self.lengths[w], kind="stable")]
                                       for w in np.split(perm, range(window, self.n, window))])
            self._perm, self._epoch = perm, epoch
        return self._perm

    def indices(self, step: int) -> np.ndarray:
        g = step * self.batch_size + np.arange(self.batch_size)
        out = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(g // self.n):
            sel = g // self.n == epoch
            out[sel] = self._permutation(int(epoch))[g[sel] % self.n]
        return out

    def share(self, step: int, micro: int, rank: int, world: int, micro_batch: int | None) -> np.ndarray:
        """The examples of one micro-batch of one process: micro-batch k = micro * world + rank of the step."""
        b = micro_batch or self.batch_size // world
        k = micro * world + rank
        if (k + 1) * b > self.batch_size:
            raise ValueError(f"micro-batch {micro} of rank {rank} lies outside a batch of {self.batch_size}")
        return self.indices(step)[k * b:(k + 1) * b]


class IndexedBatches:
    """Training batches of n items (windows of NER sentences, of QA contexts): `collate(index)` of the
    items EpochOrder picks for each micro-batch."""

    def __init__(self, n: int, batch_size: int, seed: int, collate_fn) -> None:
        self.collate = collate_fn
        self.order = EpochOrder(n, batch_size, seed)

    def get(self, step: int, micro: int = 0, rank: int = 0, world: int = 1,
            micro_batch: int | None = None) -> dict[str, torch.Tensor]:
        return self.collate(self.order.share(step, micro, rank, world, micro_batch))


class LabeledBatches:
    """Training batches of labeled examples (see the module docstring and EpochOrder)."""

    def __init__(self, enc: Encoded, labels: np.ndarray, batch_size: int, seed: int, pad_id: int,
                 token_types: bool, group_by_length: bool = False) -> None:
        self.enc, self.labels, self.pad_id, self.token_types = enc, labels, pad_id, token_types
        lengths = np.array([len(x) for x in enc.ids]) if group_by_length else None
        self.order = EpochOrder(len(labels), batch_size, seed, lengths)

    def get(self, step: int, micro: int = 0, rank: int = 0, world: int = 1,
            micro_batch: int | None = None) -> dict[str, torch.Tensor]:
        return collate(self.enc, self.order.share(step, micro, rank, world, micro_batch), self.labels, self.pad_id,
                       self.token_types)


def eval_batches(enc: Encoded, labels: np.ndarray | None, batch_size: int, pad_id: int, token_types: bool,
                 rank: int = 0, world: int = 1):
    """Every example once, in file order (sorted batches would pad less, but the order is the output's).

    Process `rank` of `world` takes batches rank, rank + world, ...: the processes cover the data
    once between them, in the very batches one process would make.
    """
    for start in range(rank * batch_size, len(enc.ids), world * batch_size):
        index = np.arange(start, min(start + batch_size, len(enc.ids)))
        yield collate(enc, index, labels, pad_id, token_types)
