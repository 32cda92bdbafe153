"""Fine-tuning for text classification, on the one training loop, and inference with the result.

`finetune(cfg, out)` reads labeled files, builds the label map from the training labels, puts a head
on the pretrained backbone (`SequenceClassifier`) and hands `classification_loss` and
`LabeledBatches` to `train.train`: the same loop, checkpoints, resume, metrics.jsonl and progress bar
as pretraining. [finetune] settings map onto it: epochs -> steps (ceil(N / batch) per epoch), eval and
checkpoint every `eval_steps` (default: each epoch), the best checkpoint by `metric_for_best_model`.

The run folder is a normal run folder plus label_map.json and eval_results.json (dev and test
metrics of the best checkpoint, confusion matrices included). `load_classifier` and `classify` read it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lmforge.config import FinetuneConfig, FinetuneRunConfig, OptimConfig, ScheduleConfig, TrainConfig
from lmforge.errors import LmforgeError
from lmforge.run import LoadedRun

LABEL_MAP = "label_map.json"
RESULTS = "eval_results.json"


def _say(msg: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(f"lmforge: {msg}")


# ----------------------------------------------------------------------------------------------------
# Building the pieces


def loop_sections(ft: FinetuneConfig, n_train: int, progress: bool = True
                  ) -> tuple[TrainConfig, OptimConfig, ScheduleConfig]:
    """The loop's sections for `ft` and a training set of `n_train` examples."""
    batch = ft.per_device_train_batch_size
    steps_per_epoch = max(1, math.ceil(n_train / batch))
    max_steps = ft.max_steps or max(1, math.ceil(ft.num_train_epochs * steps_per_epoch))
    eval_every = ft.eval_steps or steps_per_epoch
    train = TrainConfig(max_steps=max_steps, batch_size=batch,
                        micro_batch_size=batch // ft.gradient_accumulation_steps, grad_clip=ft.max_grad_norm,
                        seed=ft.seed, log_every=ft.logging_steps, eval_every=eval_every, eval_batches=0,
                        save_every=eval_every, keep_last=ft.save_total_limit, progress=progress)
    optim = OptimConfig(name="adamw", lr=ft.learning_rate, weight_decay=ft.weight_decay, betas=(0.9, 0.999))
    schedule = ScheduleConfig(name=ft.lr_scheduler_type, warmup_steps=ft.warmup_steps, min_lr_ratio=0.0)
    return train, optim, schedule


def build_classifier(cfg: FinetuneRunConfig, num_labels: int) -> nn.Module:
    from lmforge.models.classifier import SequenceClassifier

    ft = cfg.finetune
    model = SequenceClassifier(cfg.model, num_labels, ft.pooling, ft.classifier_dropout)
    model.layerwise_lr_decay = ft.layerwise_lr_decay
    if ft.freeze_encoder:
        model.freeze_backbone()
    return model


def max_length_of(cfg: FinetuneRunConfig) -> int:
    ctx = cfg.model.context_len
    if cfg.model.kind == "rnn":  # an RNN has no position table: its context_len is a BPTT window
        return cfg.finetune.max_length or 512
    if cfg.finetune.max_length > ctx:
        raise LmforgeError(f"finetune.max_length={cfg.finetune.max_length} exceeds the model's "
                           f"context_len={ctx}: lower it (or 0 for {ctx})")
    return cfg.finetune.max_length or ctx


def _read(path: str, ft: FinetuneConfig, need_labels: bool = True):
    from lmforge.data.labeled import read_labeled

    return read_labeled(path, ft.text_column, ft.label_column, ft.text_pair_column, ft.header, need_labels)


def _encode(data, tok, cfg: FinetuneRunConfig, labels: list[str] | None, name: str):
    from lmforge.data.labeled import encode_examples, label_ids

    enc = encode_examples(tok, data.texts, data.pairs, cfg.model.kind, max_length_of(cfg))
    cut = f"; truncated {enc.truncated} to {max_length_of(cfg)} tokens" if enc.truncated else ""
    _say(data.describe() + cut)
    ids = label_ids(data, labels) if labels is not None and data.labels is not None else None
    if not len(data):
        raise LmforgeError(f"{data.path} ({name}) holds no examples")
    return enc, ids


def _balanced_weights(ids: np.ndarray, k: int) -> torch.Tensor:
    counts = np.bincount(ids, minlength=k)
    return torch.tensor(len(ids) / (k * np.maximum(counts, 1)), dtype=torch.float32)


# ----------------------------------------------------------------------------------------------------
# finetune


def finetune(cfg: FinetuneRunConfig, out: Path, resume: bool = False, overwrite: bool = False,
             progress: bool = True) -> dict[str, Any]:
    """Fine-tune `cfg.finetune.from_run` as `cfg` says into run folder `out`; return the final metrics."""
    from lmforge.atomic import write_json
    from lmforge.checkpoint import find_checkpoint, load_weights
    from lmforge.config import save_config
    from lmforge.data.labeled import LabeledBatches, StopTraining, build_label_map, eval_batches
    from lmforge.evaluate import evaluate_classifier
    from lmforge.objectives import classification_loss
    from lmforge.run import _prepare_folder
    from lmforge.runtime import setup_runtime
    from lmforge.train import train

    out, ft = Path(out), cfg.finetune
    if not ft.train_file or not ft.dev_file:
        raise LmforgeError("finetune needs --train FILE and --dev FILE (finetune.train_file, "
                           "finetune.dev_file)")
    tok = _load_tokenizer(Path(out if resume else ft.from_run), resume)
    train_data = _read(ft.train_file, ft)
    if resume:
        labels = json.loads((out / LABEL_MAP).read_text())["labels"]
    else:
        labels = build_label_map(train_data)
    train_enc, train_ids = _encode(train_data, tok, cfg, labels, "train")
    dev_enc, dev_ids = _encode(_read(ft.dev_file, ft), tok, cfg, labels, "dev")
    tr, optim, schedule = loop_sections(ft, len(train_data), progress)
    cfg = dataclasses.replace(cfg, train=tr, optim=optim, schedule=schedule,
                              runtime=dataclasses.replace(cfg.runtime, parallel="none"))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise LmforgeError("lmforge finetune runs as one process: start it without torchrun")
    runtime = setup_runtime(cfg.runtime)
    torch.manual_seed(ft.seed)
    model = build_classifier(cfg, len(labels))
    if not resume:
        ckpt = find_checkpoint(Path(ft.from_run), ft.from_checkpoint)
        load_weights(ckpt, model.backbone)
        _prepare_folder(out, overwrite)
        tok.save(out / "tokenizer")
        write_json(out / LABEL_MAP, label_map_json(labels, train_data.columns))
        _link_logging_dir(out, ft.logging_dir)
    save_config(cfg, out / "config.toml")
    weights = _balanced_weights(train_ids, len(labels)) if ft.class_weights == "balanced" else None
    objective = functools.partial(classification_loss, class_weights=weights)
    bert = cfg.model.kind == "bert"
    batches = LabeledBatches(train_enc, train_ids, tr.batch_size, ft.seed, tok.pad_id, bert)
    evaluate_fn = _make_evaluate(ft, dev_enc, dev_ids, labels, tok.pad_id, bert, objective, runtime, batches,
                                 out)
    n_params = sum(p.numel() for p in model.parameters())
    _say(f"{cfg.model.kind} classifier, {len(labels)} labels, {n_params / 1e6:.2f}M parameters on "
         f"{runtime.device}: {tr.max_steps} steps of {tr.batch_size} examples ({len(train_data)} train "
         f"examples) -> {out}")
    stopped = "done"
    try:
        result = train(model, objective, batches, optim_cfg=optim, schedule_cfg=schedule, train_cfg=tr,
                       runtime=runtime, run_dir=out, evaluate_fn=evaluate_fn, resume=resume)
        stopped = result.stopped
    except StopTraining as e:
        stopped = "early_stopping"
        _say(str(e))
    if stopped == "interrupted":
        _say(f"stopped by Ctrl-C; continue with `lmforge finetune --resume {out}`")
        return {}
    best = find_checkpoint(out, "best")
    load_weights(best, model, runtime.device)
    results = {"checkpoint": best.name, "stopped": stopped}
    results["dev"] = evaluate_classifier(model, objective, eval_batches(
        dev_enc, dev_ids, ft.per_device_eval_batch_size, tok.pad_id, bert), runtime, labels)
    _report("dev", results["dev"])
    if ft.test_file:
        test_enc, test_ids = _encode(_read(ft.test_file, ft), tok, cfg, labels, "test")
        results["test"] = evaluate_classifier(model, objective, eval_batches(
            test_enc, test_ids, ft.per_device_eval_batch_size, tok.pad_id, bert), runtime, labels)
        _report("test", results["test"])
    write_json(out / RESULTS, results)
    _say(f"best checkpoint {best.name}; metrics in {out / RESULTS}")
    return results


def _load_tokenizer(run: Path, resume: bool):
    from lmforge.tokenizer import load_tokenizer

    if not (run / "tokenizer" / "tokenizer.json").is_file():
        what = "fine-tuned run" if resume else "pretrained run"
        raise LmforgeError(f"the {what} {run} has no tokenizer/ folder: copy the tokenizer it was trained "
                           f"with into {run / 'tokenizer'} (e.g. the shards' tokenizer/)")
    return load_tokenizer(run / "tokenizer")


def label_map_json(labels: list[str], columns: dict[str, str]) -> dict:
    return {"labels": labels, "id2label": {str(i): lab for i, lab in enumerate(labels)},
            "label2id": {lab: i for i, lab in enumerate(labels)}, "columns": columns}


def _link_logging_dir(out: Path, logging_dir: str) -> None:
    """TensorBoard writes to out/tensorboard; a logging_dir elsewhere is reached through a link."""
    if not logging_dir:
        return
    target = Path(logging_dir).resolve()
    if target == (out / "tensorboard").resolve():
        return
    target.mkdir(parents=True, exist_ok=True)
    os.symlink(target, out / "tensorboard", target_is_directory=True)


def _make_evaluate(ft: FinetuneConfig, enc, ids, labels, pad_id, bert, objective, runtime, batches, out):
    """evaluate_fn for the loop: dev metrics, the select_loss of the chosen metric, early stopping."""
    from lmforge.checkpoint import list_checkpoints, read_meta
    from lmforge.data.labeled import eval_batches
    from lmforge.evaluate import evaluate_classifier

    seen = [read_meta(c).get("val_loss") for c in list_checkpoints(out)]
    state = {"best": min((s for s in seen if s is not None), default=None), "waited": 0}

    def evaluate(model: nn.Module) -> dict[str, float]:
        batches_ = eval_batches(enc, ids, ft.per_device_eval_batch_size, pad_id, bert)
        m = evaluate_classifier(model, objective, batches_, runtime, labels)
        metric = ft.metric_for_best_model
        select = m["loss"] if metric == "loss" else -m[metric]
        if state["best"] is None or select < state["best"]:
            state["best"], state["waited"] = select, 0
        else:
            state["waited"] += 1
        _say(f"dev loss {m['loss']:.4f}, accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}")
        if ft.early_stopping_patience and state["waited"] >= ft.early_stopping_patience:
            batches.stop = (f"early stopping: dev {metric} did not improve in {state['waited']} evaluations")
        return {"loss": m["loss"], "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                "select_loss": select, "confusion": m["confusion"]}

    return evaluate


def _report(name: str, m: dict) -> None:
    from lmforge.evaluate import format_confusion

    per = "; ".join(f"{lab}: P {v['precision']:.3f} R {v['recall']:.3f}" for lab, v in m["per_class"].items())
    _say(f"{name}: accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}, loss {m['loss']:.4f} "
         f"({m['examples']} examples); {per}\n{format_confusion(m)}")


# ----------------------------------------------------------------------------------------------------
# Loading and inference


@dataclass
class LoadedClassifier(LoadedRun):
    """What `load_run` gives for a fine-tuned run: `model` is a `SequenceClassifier`."""

    labels: list[str] = dataclasses.field(default_factory=list)


def is_classifier_run(run_dir: Path) -> bool:
    return (Path(run_dir) / LABEL_MAP).is_file()


def load_classifier(run_dir: Path, checkpoint: str = "best", device: str = "cpu") -> LoadedClassifier:
    """A fine-tuned classifier with its tokenizer and labels, from a `lmforge finetune` run folder."""
    from lmforge.checkpoint import find_checkpoint, load_weights, read_meta
    from lmforge.config import load_config
    from lmforge.runtime import resolve_device
    from lmforge.tokenizer import load_tokenizer

    run_dir = Path(run_dir)
    if not is_classifier_run(run_dir):
        raise LmforgeError(f"{run_dir} has no {LABEL_MAP}: give the --out folder of `lmforge finetune`")
    cfg = load_config(FinetuneRunConfig, run_dir / "config.toml")
    labels = json.loads((run_dir / LABEL_MAP).read_text(encoding="utf-8"))["labels"]
    ckpt = find_checkpoint(run_dir, checkpoint)
    tok = load_tokenizer(ckpt / "tokenizer" if (ckpt / "tokenizer").is_dir() else run_dir / "tokenizer")
    model = build_classifier(cfg, len(labels)).to(resolve_device(device))
    load_weights(ckpt, model, next(model.parameters()).device)
    model.eval()
    return LoadedClassifier(model, tok, cfg, run_dir, int(read_meta(ckpt)["step"]), ckpt, labels=labels)


@torch.no_grad()
def classify(run_or_model: str | Path | LoadedClassifier, texts: Sequence[str],
             pairs: Sequence[str] | None = None, batch_size: int = 64, progress: bool = False) -> list[dict]:
    """Predict each text (or pair): [{"label": ..., "probs": {label: p, ...}}, ...] in input order."""
    from tqdm.auto import tqdm

    from lmforge.data.labeled import collate, encode_examples

    clf = run_or_model if isinstance(run_or_model, LoadedClassifier) else load_classifier(Path(run_or_model))
    if isinstance(texts, str):
        texts = [texts]
    cfg, device = clf.config, next(clf.model.parameters()).device
    enc = encode_examples(clf.tokenizer, list(texts), list(pairs) if pairs is not None else None,
                          cfg.model.kind, max_length_of(cfg))
    # longest first in each batch pads less; results go back to input order
    order = np.argsort([-len(x) for x in enc.ids], kind="stable")
    probs = np.empty((len(texts), len(clf.labels)), dtype=np.float32)
    for start in tqdm(range(0, len(order), batch_size), disable=not progress, unit="batch"):
        index = order[start:start + batch_size]
        batch = collate(enc, index, None, clf.tokenizer.pad_id, cfg.model.kind == "bert")
        batch = {k: v.to(device) for k, v in batch.items()}
        probs[index] = torch.softmax(clf.model(**batch).float(), dim=-1).cpu().numpy()
    return [{"label": clf.labels[int(p.argmax())], "probs": {lab: float(v) for lab, v in zip(clf.labels, p)}}
            for p in probs]


def evaluate_file(run_or_model: str | Path | LoadedClassifier, path: Path, batch_size: int = 64) -> dict:
    """`lmforge eval RUN --data FILE` for a classifier: classification metrics of a labeled file."""
    from lmforge.data.labeled import label_ids, read_labeled
    from lmforge.evaluate import classification_metrics

    clf = run_or_model if isinstance(run_or_model, LoadedClassifier) else load_classifier(Path(run_or_model))
    ft = clf.config.finetune
    data = read_labeled(path, ft.text_column, ft.label_column, ft.text_pair_column, ft.header)
    gold = label_ids(data, clf.labels)
    preds = classify(clf, data.texts, data.pairs, batch_size)
    predicted = [clf.labels.index(p["label"]) for p in preds]
    probs = np.array([[p["probs"][lab] for lab in clf.labels] for p in preds])
    loss = float(-np.log(np.clip(probs[np.arange(len(gold)), gold], 1e-12, None)).mean())
    return {"checkpoint": clf.checkpoint.name, "data": str(path), "loss": loss,
            **classification_metrics(predicted, gold.tolist(), clf.labels)}
