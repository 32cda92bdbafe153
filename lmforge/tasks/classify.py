"""Sequence classification: one label per text (or text pair), a head on a pretrained backbone.

Examples come from labeled .tsv/.csv/.jsonl files (data/labeled.py: columns guessed and reported), the
label map from the training labels (label_map.json, id = index). The model is `SequenceClassifier`
(models/heads.py) on the pretrained run's weights; the objective is cross-entropy (optionally
class-weighted); metrics are accuracy, macro-F1, per-class precision/recall and the confusion matrix,
on dev during training (picking the best checkpoint by `metric_for_best_model`, with early stopping)
and on dev and test for the best checkpoint at the end (eval_results.json). Inference: `classify`.
"""

from __future__ import annotations

import functools
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

LABEL_MAP = "label_map.json"


@dataclass(frozen=True)
class ClassifyArgs(FinetuneConfig):
    """[finetune] of a classifier: the shared settings plus its columns, pooling and head."""

    text_column: str = ""
    """Column (or JSON key) of the text; empty guesses sentence, text, text_a, ... (a 0-based index without
    a header)."""
    text_pair_column: str = ""
    """Column of the second text of a pair (NLI); empty guesses text_b, sentence2, hypothesis if present."""
    label_column: str = ""
    """Column of the label; empty guesses label, labels, class, ... (strings or integers)."""
    header: Literal["auto", "yes", "no"] = "auto"
    """Whether TSV/CSV files start with a header line; auto looks for known column names."""
    pooling: Literal["auto", "last", "mean", "cls"] = "auto"
    """auto: the backbone's own ([CLS] pooler for BERT, last real token for GPT and RNN)."""
    classifier_dropout: float = 0.1
    """Dropout before the head (BERT and RNN; GPT-2's head has none)."""
    metric_for_best_model: Literal["accuracy", "macro_f1", "loss"] = "accuracy"
    """Dev metric that picks the best checkpoint and drives early stopping."""
    class_weights: Literal["none", "balanced"] = "none"
    """balanced weighs each class's loss by n_examples / (n_classes * n_in_class) (imbalanced data)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0.0 <= self.classifier_dropout < 1.0, "finetune.classifier_dropout", "must be in [0, 1)")


@dataclass(frozen=True)
class ClassifyConfig(FinetuneRunConfig):
    finetune: ClassifyArgs = field(default_factory=ClassifyArgs)


def label_map_json(labels: list[str], columns: dict[str, str]) -> dict:
    return {"labels": labels, "id2label": {str(i): lab for i, lab in enumerate(labels)},
            "label2id": {lab: i for i, lab in enumerate(labels)}, "columns": columns}


def _read(path: str, ft: ClassifyArgs, need_labels: bool = True):
    from lmforge.data.labeled import read_labeled

    return read_labeled(path, ft.text_column, ft.label_column, ft.text_pair_column, ft.header, need_labels)


def _encode(data, tok, cfg: ClassifyConfig, labels: list[str] | None, name: str, say):
    from lmforge.data.labeled import encode_examples, label_ids

    enc = encode_examples(tok, data.texts, data.pairs, cfg.model.input_format, max_length_of(cfg))
    cut = f"; truncated {enc.truncated} to {max_length_of(cfg)} tokens" if enc.truncated else ""
    say(data.describe() + cut)
    ids = label_ids(data, labels) if labels is not None and data.labels is not None else None
    if not len(data):
        raise LmforgeError(f"{data.path} ({name}) holds no examples")
    return enc, ids


def _token_types(cfg) -> bool:
    return cfg.model.token_types


def _eval_batches(enc, ids, cfg, pad_id: int, runtime: Runtime):
    """This process's share of a labeled split's batches (as many on every process under FSDP)."""
    from lmforge.data.labeled import eval_batches

    return runtime.even_batches(eval_batches(enc, ids, cfg.finetune.per_device_eval_batch_size, pad_id,
                                             _token_types(cfg), runtime.rank, runtime.world_size))


def _check_eval_split(enc, ft: ClassifyArgs, runtime: Runtime) -> None:
    n_batches = -(-len(enc.ids) // ft.per_device_eval_batch_size)
    if runtime.parallel == "fsdp" and n_batches < runtime.world_size:
        raise LmforgeError(f"{len(enc.ids)} evaluation examples make {n_batches} batches of "
                           f"finetune.per_device_eval_batch_size={ft.per_device_eval_batch_size}, fewer than "
                           f"the {runtime.world_size} processes FSDP needs busy: lower it")


def prepare(cfg: ClassifyConfig, runtime: Runtime, run_dir: Path, resume: bool, source: Source | None,
            say) -> TaskData:
    from lmforge.data.labeled import LabeledBatches, build_label_map
    from lmforge.evaluate import evaluate_classifier
    from lmforge.objectives import classification_loss

    cfg = absolute_paths(cfg) if not resume else cfg
    ft = cfg.finetune
    check_files(ft)
    tok = runs.load_tokenizer(run_dir if resume else source.run)
    train_data = _read(ft.train_file, ft)
    labels = runs.read_json(run_dir, LABEL_MAP)["labels"] if resume else build_label_map(train_data)
    train_enc, train_ids = _encode(train_data, tok, cfg, labels, "train", say)
    splits = {"dev": _encode(_read(ft.dev_file, ft), tok, cfg, labels, "dev", say)}
    if ft.test_file:
        splits["test"] = _encode(_read(ft.test_file, ft), tok, cfg, labels, "test", say)
    for enc, _ in splits.values():
        _check_eval_split(enc, ft, runtime)
    cfg = with_loop(cfg, len(train_data), runtime.world_size)
    weights = None
    if ft.class_weights == "balanced":
        counts = np.bincount(train_ids, minlength=len(labels))
        weights = torch.tensor(len(train_ids) / (len(labels) * np.maximum(counts, 1)), dtype=torch.float32)
    objective = functools.partial(classification_loss, class_weights=weights)
    batches = LabeledBatches(train_enc, train_ids, cfg.train.batch_size, ft.seed, tok.pad_id, _token_types(cfg),
                             ft.train_sampling_strategy == "group_by_length")

    def measure(model, split: str = "dev") -> dict:
        # DDP's wrapper is left out (forwards without gradients need no reduction, and the processes may
        # run different numbers of batches); FSDP's stays: its forwards gather the shards
        m = evaluate_classifier(runtime.unwrap(model), objective, _eval_batches(*splits[split], cfg, tok.pad_id,
                                                                                  runtime), runtime, labels)
        return m

    def during(model) -> dict:
        m = measure(model)
        say(f"dev loss {m['loss']:.4f}, accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}")
        return {k: m[k] for k in ("loss", "accuracy", "macro_f1", "confusion")}

    def final(model) -> dict:
        results = {name: measure(model, name) for name in splits}
        for name, m in results.items():
            _report(name, m, say)
        return results

    links = {"tensorboard": ft.logging_dir} if ft.logging_dir else {}
    return TaskData(cfg, tok, batches, objective, early_stopping(ft, ft.metric_for_best_model, run_dir, during),
                    f"{cfg.train.batch_size} examples ({len(train_data)} train examples, {len(labels)} labels)",
                    files={LABEL_MAP: label_map_json(labels, train_data.columns)}, links=links, final=final)


def build(cfg: ClassifyConfig, files: dict) -> torch.nn.Module:
    from lmforge.models.heads import SequenceClassifier

    ft = cfg.finetune
    model = SequenceClassifier(cfg.model, len(files[LABEL_MAP]["labels"]), ft.pooling, ft.classifier_dropout)
    model.layerwise_lr_decay = ft.layerwise_lr_decay
    if ft.freeze_encoder:
        model.freeze_backbone()
    model.freeze_unused()
    return model


def _report(name: str, m: dict, say) -> None:
    from lmforge.evaluate import format_confusion

    per = "; ".join(f"{lab}: P {v['precision']:.3f} R {v['recall']:.3f}" for lab, v in m["per_class"].items())
    say(f"{name}: accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}, loss {m['loss']:.4f} "
        f"({m['examples']} examples); {per}\n{format_confusion(m)}")


# ----------------------------------------------------------------------------------------------------
# Inference


def labels_of(run: LoadedRun) -> list[str]:
    return run.files[LABEL_MAP]["labels"]


@torch.no_grad()
def classify(run: LoadedRun, texts: Sequence[str], pairs: Sequence[str] | None = None, batch_size: int = 64,
             progress: bool = False) -> list[dict]:
    """Predict each text (or pair) with a loaded classifier run: [{"label", "probs": {label: p}}] in order."""
    from tqdm.auto import tqdm

    from lmforge.data.labeled import collate, encode_examples

    if run.task.name != "classify":
        raise LmforgeError(f"{run.run_dir} is a {run.task.name} run, not a classifier: classify needs the --out "
                           "folder of `lmforge finetune --task classify`")
    if isinstance(texts, str):
        texts = [texts]
    cfg, labels, device = run.config, labels_of(run), next(run.model.parameters()).device
    enc = encode_examples(run.tokenizer, list(texts), list(pairs) if pairs is not None else None,
                          cfg.model.input_format, max_length_of(cfg))
    # longest first in each batch pads less; results go back to input order
    order = np.argsort([-len(x) for x in enc.ids], kind="stable")
    probs = np.empty((len(texts), len(labels)), dtype=np.float32)
    for start in tqdm(range(0, len(order), batch_size), disable=not progress, unit="batch"):
        index = order[start:start + batch_size]
        batch = collate(enc, index, None, run.tokenizer.pad_id, _token_types(cfg))
        batch = {k: v.to(device) for k, v in batch.items()}
        probs[index] = torch.softmax(run.model(**batch).float(), dim=-1).cpu().numpy()
    return [{"label": labels[int(p.argmax())], "probs": {lab: float(v) for lab, v in zip(labels, p)}}
            for p in probs]


def read_inputs(run: LoadedRun, path: Path, text_column: str = "", pair_column: str = ""):
    """Texts (and pairs) of a file to classify: .txt (one per line), or a .tsv/.csv/.jsonl file."""
    from lmforge.data.labeled import read_labeled

    if path.suffix == ".txt":
        if not path.is_file():
            raise LmforgeError(f"{path} not found")
        raw = path.read_bytes()
        if b"\0" in raw[:8192]:
            raise LmforgeError(f"{path}: binary file (NUL bytes): give texts, one per line, or a .tsv/.csv/.jsonl")
        text = raw.decode("utf-8", errors="replace")
        return [ln.strip() for ln in text.splitlines() if ln.strip()], None, ""
    ft = run.config.finetune
    data = read_labeled(path, text_column or ft.text_column, "", pair_column or ft.text_pair_column, ft.header,
                        need_labels=False)
    return data.texts, data.pairs, data.describe()


def evaluate_file(run: LoadedRun, path: Path, batch_size: int = 64) -> dict:
    """Classification metrics of a labeled file (`lmforge eval RUN --data FILE`)."""
    from lmforge.data.labeled import label_ids, read_labeled
    from lmforge.evaluate import classification_metrics

    ft, labels = run.config.finetune, labels_of(run)
    data = read_labeled(path, ft.text_column, ft.label_column, ft.text_pair_column, ft.header)
    gold = label_ids(data, labels)
    preds = classify(run, data.texts, data.pairs, batch_size)
    predicted = [labels.index(p["label"]) for p in preds]
    probs = np.array([[p["probs"][lab] for lab in labels] for p in preds])
    loss = float(-np.log(np.clip(probs[np.arange(len(gold)), gold], 1e-12, None)).mean())
    return {"checkpoint": run.checkpoint.name, "data": str(path), "loss": loss,
            **classification_metrics(predicted, gold.tolist(), labels)}


def evaluate(run: LoadedRun, data: str | None, split: str | None, max_batches: int, runtime: Runtime) -> dict:
    return evaluate_file(run, eval_file(run, data, split, max_batches, "a labeled .tsv, .csv or .jsonl"))


TASK = Task(
    name="classify", summary="one label per text or text pair", config_class=ClassifyConfig,
    prepare=prepare, build_model=build, evaluate=evaluate, inference="classify", files=(LABEL_MAP,), head=True,
    finetunes=True)
