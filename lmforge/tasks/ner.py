"""Token classification (named entities): one tag per word, a per-token head on a pretrained backbone.

Sentences come from CoNLL-style or JSONL files (data/tags.py), their tags converted to IOB2 (CoNLL-2003
is IOB1), the tag set from the training file (tag_map.json). Words are joined into text and aligned with
tokens through the tokenizer's offsets; the label goes on the first token of each word (or on every
token: `label_all_subwords`), the rest are ignored. Sentences longer than the model are split into
overlapping windows, each token predicted in the window where it has the most context. The model is
`TokenClassifier` (models/heads.py); the objective is cross-entropy over the labeled tokens. Metrics:
entity precision / recall / F1 with `seqeval` in strict IOB2 mode (per type and overall; it differs
from conlleval's lenient counting, which accepts an entity starting with I-) and word accuracy. The
best checkpoint by `metric_for_best_model` is scored on dev and test at the end. Inference: `lmforge ner`.

Dimensions: B windows, T tokens, L tags.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from lmforge import runs
from lmforge.config import check
from lmforge.errors import LmforgeError
from lmforge.runtime import Runtime
from lmforge.tasks.finetuning import (
    FinetuneConfig,
    FinetuneRunConfig,
    absolute_paths,
    check_files,
    early_stopping,
    eval_file,
    max_length_of,
    with_loop,
)
from lmforge.tasks.task import LoadedRun, Source, Task, TaskData

TAG_MAP = "tag_map.json"


@dataclass(frozen=True)
class NerArgs(FinetuneConfig):
    """[finetune] of token classification: the shared settings plus the file layout, alignment and windows."""

    tag_column: int = -1
    """Column of the tag in CoNLL-style files (0-based; -1: the last)."""
    tag_scheme: Literal["auto", "iob1", "iob2", "bioes", "bmes"] = "auto"
    """The files' tagging scheme (auto detects it); tags are converted to IOB2 for training and scoring."""
    label_all_subwords: bool = False
    """Train on every token of a word (later ones tagged I-), not only the first."""
    stride: int = -1
    """Tokens shared by consecutive windows of a sentence longer than max_length; -1: 32, or half of a
    window's text tokens when that is less (a small model's short windows)."""
    classifier_dropout: float = 0.1
    metric_for_best_model: Literal["f1", "accuracy", "loss"] = "f1"
    """Dev metric that picks the best checkpoint: entity F1 (seqeval, strict IOB2), word accuracy or loss."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.stride >= -1, "finetune.stride", "must be >= 0 (or -1: automatic)")
        check(0.0 <= self.classifier_dropout < 1.0, "finetune.classifier_dropout", "must be in [0, 1)")


@dataclass(frozen=True)
class NerConfig(FinetuneRunConfig):
    finetune: NerArgs = field(default_factory=NerArgs)


@dataclass
class Split:
    """A file's sentences, aligned with tokens and cut into windows."""

    data: object  # tags.TaggedData
    aligned: list
    windows: object  # word_tokens.Windows
    gold: list[list[str]] | None


def _check_model(cfg: NerConfig) -> None:
    from lmforge.models import MODELS

    if MODELS[cfg.model.kind].decoding == "encoder_decoder":
        raise LmforgeError(f"--task ner puts a head on an encoder or decoder (bert, gpt, rnn); "
                           f"{cfg.finetune.from_run} is a {cfg.model.kind} run")


def encode(data, tok, cfg: NerConfig, labels: list[str] | None, say=None) -> Split:
    from lmforge.data.word_tokens import align, make_windows, token_labels, words_to_text

    ft = cfg.finetune
    texts, spans = zip(*[words_to_text(w, data.joiner) for w in data.words]) if len(data) else ((), ())
    aligned = align(tok, list(texts), list(spans))
    per_token = None
    if labels is not None and data.tags is not None:
        index = {t: i for i, t in enumerate(labels)}
        per_token = [token_labels(a, [index[t] for t in tags], labels, ft.label_all_subwords)
                     for a, tags in zip(aligned, data.tags)]
    length = max_length_of(cfg)
    windows = make_windows(aligned, per_token, length, stride_of(cfg), cfg.model.input_format, tok.cls_id,
                           tok.sep_id)
    if say is not None:
        split = np.bincount(windows.sentence, minlength=len(data))
        longer = int((split > 1).sum())
        say(data.describe() + (f"; {longer} sentence{'s' if longer > 1 else ''} longer than {length} tokens split "
                               "into overlapping windows"
                               if longer else ""))
    return Split(data, aligned, windows, data.tags)


def stride_of(cfg: NerConfig) -> int:
    if cfg.finetune.stride >= 0:
        return cfg.finetune.stride
    text_tokens = max_length_of(cfg) - (0 if cfg.model.input_format == "plain" else 2)
    return min(32, text_tokens // 2)


def collate(windows, index: np.ndarray, pad_id: int, token_types: bool) -> dict[str, torch.Tensor]:
    """Windows `index` padded on the right: input_ids, attention_mask (B, T), labels (B, T) when known."""
    from lmforge.data.labeled import pad_right
    from lmforge.objectives import IGNORE

    ids, mask = pad_right([windows.ids[i] for i in index], pad_id)
    batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    if token_types:
        batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    if windows.labels is not None:
        labels = np.full(ids.shape, IGNORE, dtype=np.int64)  # (B, T)
        for r, i in enumerate(index):
            labels[r, :len(windows.labels[i])] = windows.labels[i]
        batch["labels"] = torch.from_numpy(labels)
    return batch


@torch.no_grad()
def window_logits(model, split: Split, batch_size: int, pad_id: int, token_types: bool, runtime: Runtime | None
                  ) -> tuple[list[np.ndarray], float, int]:
    """Every window's per-token log-probabilities over its text tokens (specials dropped), (T, L) each, and
    the summed loss and count of the labeled tokens. Every process runs every window (all then agree)."""
    import torch.nn.functional as F

    from lmforge.objectives import IGNORE

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out, loss, count, w = [], 0.0, 0, split.windows
    for start in range(0, len(w.ids), batch_size):
        index = np.arange(start, min(start + batch_size, len(w.ids)))
        batch = {k: v.to(device) for k, v in collate(w, index, pad_id, token_types).items()}
        with runtime.autocast() if runtime is not None else torch.autocast("cpu", enabled=False):
            logits = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")).float()
        if "labels" in batch:
            loss += float(F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE,
                                          reduction="sum"))
            count += int((batch["labels"] != IGNORE).sum())
        logp = torch.log_softmax(logits, -1).cpu().numpy()
        for r, i in enumerate(index):
            n = len(w.ids[i]) - w.prefix - (1 if w.prefix else 0)  # text tokens: no [CLS] ... [SEP]
            out.append(logp[r, w.prefix:w.prefix + n])
    model.train(was_training)
    return out, loss, count


def word_tags(split: Split, logp: list[np.ndarray], labels: list[str]) -> tuple[list[list[str]], list[list[float]]]:
    """Each sentence's predicted tag per word (its first token's) and that tag's probability."""
    from lmforge.data.word_tokens import merge_windows, word_predictions

    merged = merge_windows(split.windows, logp, [len(a.ids) for a in split.aligned])
    tags, probs = [], []
    for a, scores in zip(split.aligned, merged):
        best = scores.argmax(-1) if len(scores) else np.zeros(0, dtype=np.int64)
        ids = word_predictions(a, best.tolist(), labels)
        firsts = [max(t, 0) for t in a.first_token_of_word]
        tags.append([labels[i] for i in ids])
        probs.append([float(np.exp(scores[t].max())) if len(scores) else 0.0 for t in firsts])
    return tags, probs


def score(model, split: Split, labels: list[str], ft: NerArgs, pad_id: int, token_types: bool,
          runtime: Runtime | None) -> tuple[dict, list[list[str]]]:
    """seqeval metrics (strict IOB2), word accuracy and the token loss of a labeled split; and its predictions."""
    from lmforge.evaluate import entity_metrics

    logp, loss, count = window_logits(model, split, ft.per_device_eval_batch_size, pad_id, token_types, runtime)
    predicted, _ = word_tags(split, logp, labels)
    m = entity_metrics(split.gold, predicted)
    m["loss"] = loss / max(count, 1)
    m["sentences"], m["windows"] = len(split.aligned), len(split.windows.ids)
    return m, predicted


def prepare(cfg: NerConfig, runtime: Runtime, run_dir: Path, resume: bool, source: Source | None,
            say) -> TaskData:
    from lmforge.data.labeled import IndexedBatches
    from lmforge.data.tags import build_tag_set, check_tags, read_tagged
    from lmforge.extras import require
    from lmforge.objectives import token_classification_loss

    require("seqeval", "--task ner (entity F1 is scored with seqeval)")
    cfg = absolute_paths(cfg) if not resume else cfg
    ft = cfg.finetune
    check_files(ft)
    _check_model(cfg)
    tok = runs.load_tokenizer(run_dir if resume else source.run)
    train = read_tagged(ft.train_file, ft.tag_column, ft.tag_scheme)
    labels = runs.read_json(run_dir, TAG_MAP)["labels"] if resume else build_tag_set(train)
    if len(labels) < 2:
        raise LmforgeError(f"{ft.train_file}: every word is tagged {labels[0]!r}: token classification needs "
                           "at least two tags")
    train_split = encode(train, tok, cfg, labels, say)
    splits = {}
    for name, path in (("dev", ft.dev_file), ("test", ft.test_file)):
        if path:
            data = read_tagged(path, ft.tag_column, ft.tag_scheme)
            check_tags(data, labels, name)
            splits[name] = encode(data, tok, cfg, labels, say)
    cfg = with_loop(cfg, len(train_split.windows.ids), runtime.world_size)
    types = cfg.model.token_types
    batches = IndexedBatches(len(train_split.windows.ids), cfg.train.batch_size, ft.seed,
                             lambda index: collate(train_split.windows, index, tok.pad_id, types))

    def during(model) -> dict:
        m, _ = score(runtime.unwrap(model), splits["dev"], labels, ft, tok.pad_id, types, runtime)
        say(f"dev loss {m['loss']:.4f}, entity F1 {m['f1']:.4f} (P {m['precision']:.4f} R {m['recall']:.4f}), "
            f"word accuracy {m['accuracy']:.4f}")
        return {k: m[k] for k in ("loss", "f1", "precision", "recall", "accuracy")}

    def final(model) -> dict:
        from lmforge.atomic import write_text

        results = {}
        for name, split in splits.items():
            m, predicted = score(runtime.unwrap(model), split, labels, ft, tok.pad_id, types, runtime)
            results[name] = m
            per = "; ".join(f"{t} {v['f1']:.3f}" for t, v in m["per_type"].items())
            say(f"{name}: entity F1 {m['f1']:.4f} (P {m['precision']:.4f} R {m['recall']:.4f}), word accuracy "
                f"{m['accuracy']:.4f} ({m['sentences']} sentences; seqeval strict IOB2); per type F1: {per}")
            if runtime.is_main:
                write_text(run_dir / f"predictions-{name}.conll", "".join(
                    "".join(f"{w} {g} {p}\n" for w, g, p in zip(words, gold, pred)) + "\n"
                    for words, gold, pred in zip(split.data.words, split.gold, predicted)))
        return results

    files = {TAG_MAP: {"labels": labels, "id2label": {str(i): t for i, t in enumerate(labels)},
                       "scheme_read": train.scheme, "scheme": "iob2"}}
    links = {"tensorboard": ft.logging_dir} if ft.logging_dir else {}
    return TaskData(cfg, tok, batches, token_classification_loss,
                    early_stopping(ft, ft.metric_for_best_model, run_dir, during),
                    f"{cfg.train.batch_size} windows ({len(train)} train sentences, {len(labels)} tags)",
                    files=files, links=links, final=final)


def build(cfg: NerConfig, files: dict) -> torch.nn.Module:
    from lmforge.models.heads import TokenClassifier

    ft = cfg.finetune
    model = TokenClassifier(cfg.model, len(files[TAG_MAP]["labels"]), ft.classifier_dropout)
    model.layerwise_lr_decay = ft.layerwise_lr_decay
    if ft.freeze_encoder:
        model.freeze_backbone()
    model.freeze_unused()
    return model


# ----------------------------------------------------------------------------------------------------
# Inference


def tags_of(run: LoadedRun) -> list[str]:
    return run.files[TAG_MAP]["labels"]


def _entities(tags: list[str], spans: list[tuple[int, int]], probs: list[float], text: str) -> list[dict]:
    """IOB2 tags of consecutive units (words or tokens) -> entities with character spans and mean scores."""
    out, current = [], None
    for tag, (s, e), p in zip(tags, spans, probs):
        kind = tag[2:] if tag[:2] in ("B-", "I-") else None
        if current is not None and (kind is None or tag.startswith("B-") or kind != current["entity"]):
            out.append(current)
            current = None
        if kind is None:
            continue
        if current is None:
            current = {"entity": kind, "start": s, "end": e, "scores": []}
        current["end"] = e
        current["scores"].append(p)
    if current is not None:
        out.append(current)
    return [{"entity": c["entity"], "text": text[c["start"]:c["end"]], "start": c["start"], "end": c["end"],
             "score": float(np.mean(c["scores"]))} for c in out]


@torch.no_grad()
def ner(run: LoadedRun, texts: Sequence[str], aggregation: Literal["first", "simple"] = "first",
        batch_size: int = 64) -> list[list[dict]]:
    """Entities of each raw text: [{"entity", "text", "start", "end", "score"}] with character spans.

    first: words (data/word_tokens.text_words: letter/digit runs, each other symbol and each CJK character) take
    the tag of their first token, as training labels them. simple: each token its own tag, grouped as
    transformers' token-classification pipeline does with aggregation_strategy="simple".
    """
    from lmforge.data.word_tokens import Aligned, align, make_windows, text_words

    if run.task.name != "ner":
        raise LmforgeError(f"{run.run_dir} is a {run.task.name} run, not a token classifier: ner needs the --out "
                           "folder of `lmforge finetune --task ner`")
    if isinstance(texts, str):
        texts = [texts]
    cfg, labels, tok = run.config, tags_of(run), run.tokenizer
    spans = [text_words(t) for t in texts]
    aligned: list[Aligned] = align(tok, list(texts), spans)
    length = max_length_of(cfg)
    windows = make_windows(aligned, None, length, stride_of(cfg), cfg.model.input_format, tok.cls_id, tok.sep_id)
    split = Split(None, aligned, windows, None)
    logp, _, _ = window_logits(run.model, split, batch_size, tok.pad_id, cfg.model.token_types, None)
    if aggregation == "first":
        tags, probs = word_tags(split, logp, labels)
        return [_entities(t, s, p, text) for t, s, p, text in zip(tags, spans, probs, texts)]
    from lmforge.data.word_tokens import merge_windows

    out = []
    for a, scores, text in zip(aligned, merge_windows(windows, logp, [len(a.ids) for a in aligned]), texts):
        best = scores.argmax(-1)
        tags = [labels[i] for i in best]
        # the pipeline reads "I-X" after another type as a continuation of nothing: a new entity, like B-X
        token_spans = [_strip(text, s, e) for s, e in a.offsets]
        out.append(_entities(tags, token_spans, np.exp(scores.max(-1)).tolist(), text))
    return out


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    """A byte-level token's span without the space it carries in front."""
    while start < end and text[start].isspace():
        start += 1
    return start, end


def evaluate_file(run: LoadedRun, path: Path, batch_size: int = 64) -> dict:
    """seqeval metrics of a tagged file (`lmforge eval RUN --data FILE`)."""
    from lmforge.data.tags import check_tags, read_tagged
    from lmforge.extras import require

    require("seqeval", "scoring entities")
    ft, labels = run.config.finetune, tags_of(run)
    data = read_tagged(path, ft.tag_column, ft.tag_scheme)
    check_tags(data, labels, "eval")
    split = encode(data, run.tokenizer, run.config, labels)
    m, _ = score(run.model, split, labels, ft, run.tokenizer.pad_id, run.config.model.token_types, None)
    return {"checkpoint": run.checkpoint.name, "data": str(path), **m}


def evaluate(run: LoadedRun, data: str | None, split: str | None, max_batches: int, runtime: Runtime) -> dict:
    return evaluate_file(run, eval_file(run, data, split, max_batches, "a CoNLL-style or .jsonl tagged file"))


TASK = Task(
    name="ner", summary="one tag per word (named entities)", config_class=NerConfig, prepare=prepare,
    build_model=build, evaluate=evaluate, inference="ner", files=(TAG_MAP,), head=True, finetunes=True)
