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


def _silent(msg: str) -> None:
    """`_say` of the processes other than rank 0."""


# ----------------------------------------------------------------------------------------------------
# Building the pieces


def loop_sections(ft: FinetuneConfig, n_train: int, progress: bool = True, world: int = 1
                  ) -> tuple[TrainConfig, OptimConfig, ScheduleConfig]:
    """The loop's sections for `ft`, a training set of `n_train` examples and `world` processes.

    A step is per_device_train_batch_size examples whatever the number of processes (each takes its
    share), so a run gives the same steps, and resumes exactly, on any number of processes.
    """
    batch, accum = ft.per_device_train_batch_size, ft.gradient_accumulation_steps
    if batch % (accum * world):
        raise LmforgeError(f"finetune.per_device_train_batch_size={batch} does not split into {world} "
                           f"processes x {accum} gradient_accumulation_steps: make it a multiple of "
                           f"{accum * world}")
    steps_per_epoch = max(1, math.ceil(n_train / batch))
    max_steps = ft.max_steps or max(1, math.ceil(ft.num_train_epochs * steps_per_epoch))
    eval_every = ft.eval_steps or steps_per_epoch
    train = TrainConfig(max_steps=max_steps, batch_size=batch,
                        micro_batch_size=batch // (accum * world), grad_clip=ft.max_grad_norm,
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


def _encode(data, tok, cfg: FinetuneRunConfig, labels: list[str] | None, name: str, say=_say):
    from lmforge.data.labeled import encode_examples, label_ids

    enc = encode_examples(tok, data.texts, data.pairs, cfg.model.kind, max_length_of(cfg))
    cut = f"; truncated {enc.truncated} to {max_length_of(cfg)} tokens" if enc.truncated else ""
    say(data.describe() + cut)
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
    """Fine-tune `cfg.finetune.from_run` as `cfg` says into run folder `out`; return the final metrics.

    Under torchrun every process runs this: they split each step's batch and the dev/test sets, and
    only rank 0 writes files and prints.
    """
    from lmforge.runtime import setup_runtime

    ft = cfg.finetune
    if not ft.train_file or not ft.dev_file:
        raise LmforgeError("finetune needs --train FILE and --dev FILE (finetune.train_file, "
                           "finetune.dev_file)")
    if ft.logging_dir:  # asked for by name: refused up front rather than silently left empty
        from lmforge.extras import require

        require("tensorboard", f"finetune.logging_dir = {ft.logging_dir!r} (TensorBoard logs)")
    runtime = setup_runtime(cfg.runtime)
    try:
        return _finetune(cfg, Path(out), runtime, resume, overwrite, progress)
    finally:
        runtime.close()


def _finetune(cfg: FinetuneRunConfig, out: Path, runtime, resume: bool, overwrite: bool,
              progress: bool) -> dict[str, Any]:
    from lmforge.checkpoint import find_checkpoint, load_weights
    from lmforge.data.labeled import LabeledBatches, StopTraining, build_label_map
    from lmforge.evaluate import evaluate_classifier
    from lmforge.objectives import classification_loss
    from lmforge.train import train

    ft, say = cfg.finetune, _say if runtime.is_main else _silent
    tok = _load_tokenizer(Path(out if resume else ft.from_run), resume)
    train_data = _read(ft.train_file, ft)
    labels = json.loads((out / LABEL_MAP).read_text())["labels"] if resume else build_label_map(train_data)
    train_enc, train_ids = _encode(train_data, tok, cfg, labels, "train", say)
    dev = _encode(_read(ft.dev_file, ft), tok, cfg, labels, "dev", say)
    test = _encode(_read(ft.test_file, ft), tok, cfg, labels, "test", say) if ft.test_file else None
    for split in (dev, test) if test else (dev,):
        _check_eval_split(split[0], ft, runtime)
    tr, optim, schedule = loop_sections(ft, len(train_data), progress, runtime.world_size)
    cfg = dataclasses.replace(cfg, train=tr, optim=optim, schedule=schedule)
    torch.manual_seed(ft.seed)
    model = build_classifier(cfg, len(labels))
    if not resume:
        load_weights(find_checkpoint(Path(ft.from_run), ft.from_checkpoint), model.backbone)
    freeze_unused(model)
    if runtime.is_main:
        _write_folder(cfg, out, tok, labels, train_data.columns, resume, overwrite)
    runtime.barrier()  # the other processes read the folder (its checkpoints) only once it is ready
    weights = _balanced_weights(train_ids, len(labels)) if ft.class_weights == "balanced" else None
    objective = functools.partial(classification_loss, class_weights=weights)
    bert = cfg.model.kind == "bert"
    batches = LabeledBatches(train_enc, train_ids, tr.batch_size, ft.seed, tok.pad_id, bert)
    evaluate_fn = _make_evaluate(ft, dev, labels, tok.pad_id, bert, objective, runtime, batches, out, say)
    n_params = sum(p.numel() for p in model.parameters())
    over = f" over {runtime.world_size} processes" if runtime.world_size > 1 else ""
    say(f"{cfg.model.kind} classifier, {len(labels)} labels, {n_params / 1e6:.2f}M parameters on "
        f"{runtime.device}: {tr.max_steps} steps of {tr.batch_size} examples{over} ({len(train_data)} train "
        f"examples) -> {out}")
    stopped = "done"
    try:
        result = train(model, objective, batches, optim_cfg=optim, schedule_cfg=schedule, train_cfg=tr,
                       runtime=runtime, run_dir=out, evaluate_fn=evaluate_fn, resume=resume)
        stopped = result.stopped
    except StopTraining as e:  # raised on every process at the same step: the metrics it read agree
        stopped = "early_stopping"
        say(str(e))
    if stopped == "interrupted":
        say(f"stopped by Ctrl-C; continue with `lmforge finetune --resume {out}`")
        return {}
    best = find_checkpoint(out, "best")
    if runtime.parallel == "fsdp":  # the trained model is sharded: evaluate a plain copy of the best
        model = build_classifier(cfg, len(labels)).to(runtime.device)
    load_weights(best, model, runtime.device)
    results = {"checkpoint": best.name, "stopped": stopped}
    for name, (enc, ids) in (("dev", dev), ("test", test)) if test else (("dev", dev),):
        batches_ = _eval_batches(enc, ids, ft, tok.pad_id, bert, runtime)
        results[name] = evaluate_classifier(model, objective, batches_, runtime, labels)
        _report(name, results[name], say)
    if runtime.is_main:
        from lmforge.atomic import write_json

        write_json(out / RESULTS, results)
    say(f"best checkpoint {best.name}; metrics in {out / RESULTS}")
    return results


def _write_folder(cfg: FinetuneRunConfig, out: Path, tok, labels: list[str], columns: dict[str, str],
                  resume: bool, overwrite: bool) -> None:
    """The run folder's tokenizer, label map and config (rank 0 only)."""
    from lmforge.atomic import write_json
    from lmforge.config import save_config
    from lmforge.run import _prepare_folder

    if not resume:
        _prepare_folder(out, overwrite)
        tok.save(out / "tokenizer")
        write_json(out / LABEL_MAP, label_map_json(labels, columns))
        _link_logging_dir(out, cfg.finetune.logging_dir)
    save_config(cfg, out / "config.toml")


LM_HEADS = {"gpt": ("lm_head.",), "bert": ("head_dense.", "head_norm.", "decoder."), "rnn": ("decoder.",)}
"""Backbone parameters of the LM head, which classification never runs. A head weight tied to the
embedding is named (and trained) as the embedding, so only the head's own parameters match."""


def freeze_unused(model: nn.Module) -> None:
    """requires_grad=False on what the classifier never runs (the LM head; BERT's pooler unless pooling
    is cls): DDP must not wait for gradients that never come, and the optimizer leaves them out."""
    unused = LM_HEADS.get(model.kind, ())
    if model.kind == "bert" and model.pooling != "cls":
        unused += ("pooler.",)
    for name, p in model.backbone.named_parameters():
        if name.startswith(unused):
            p.requires_grad_(False)


def _eval_batches(enc, ids, ft: FinetuneConfig, pad_id: int, bert: bool, runtime):
    """This process's share of a labeled split's batches (as many on every process under FSDP)."""
    from lmforge.data.labeled import eval_batches

    return runtime.even_batches(eval_batches(enc, ids, ft.per_device_eval_batch_size, pad_id, bert,
                                             runtime.rank, runtime.world_size))


def _check_eval_split(enc, ft: FinetuneConfig, runtime) -> None:
    n_batches = math.ceil(len(enc.ids) / ft.per_device_eval_batch_size)
    if runtime.parallel == "fsdp" and n_batches < runtime.world_size:
        raise LmforgeError(f"{len(enc.ids)} evaluation examples make {n_batches} batches of "
                           f"finetune.per_device_eval_batch_size={ft.per_device_eval_batch_size}, fewer than "
                           f"the {runtime.world_size} processes FSDP needs busy: lower it")


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


def _make_evaluate(ft: FinetuneConfig, dev, labels, pad_id, bert, objective, runtime, batches, out, say):
    """evaluate_fn for the loop: dev metrics, the select_loss of the chosen metric, early stopping.

    The metrics are reduced over all processes, so each process takes the same early-stopping decision.
    """
    from lmforge.checkpoint import list_checkpoints, read_meta
    from lmforge.evaluate import evaluate_classifier

    seen = [read_meta(c).get("val_loss") for c in list_checkpoints(out)]
    state = {"best": min((s for s in seen if s is not None), default=None), "waited": 0}

    def evaluate(model: nn.Module) -> dict[str, float]:
        # DDP's wrapper is left out (forwards without gradients need no reduction, and the processes may
        # run different numbers of batches); FSDP's stays: its forwards gather the shards
        batches_ = _eval_batches(*dev, ft, pad_id, bert, runtime)
        m = evaluate_classifier(runtime.unwrap(model), objective, batches_, runtime, labels)
        metric = ft.metric_for_best_model
        select = m["loss"] if metric == "loss" else -m[metric]
        if state["best"] is None or select < state["best"]:
            state["best"], state["waited"] = select, 0
        else:
            state["waited"] += 1
        say(f"dev loss {m['loss']:.4f}, accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}")
        if ft.early_stopping_patience and state["waited"] >= ft.early_stopping_patience:
            batches.stop = (f"early stopping: dev {metric} did not improve in {state['waited']} evaluations")
        return {"loss": m["loss"], "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                "select_loss": select, "confusion": m["confusion"]}

    return evaluate


def _report(name: str, m: dict, say=_say) -> None:
    from lmforge.evaluate import format_confusion

    per = "; ".join(f"{lab}: P {v['precision']:.3f} R {v['recall']:.3f}" for lab, v in m["per_class"].items())
    say(f"{name}: accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}, loss {m['loss']:.4f} "
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
