"""Extractive question answering: the answer is a span of the context, found by start and end logits.

Questions come from SQuAD v1.1 JSON or JSONL files (data/squad.py). Each question + context becomes one
or more windows (features): the context cut into pieces of at most `max_length` tokens that overlap by
`doc_stride` tokens, as transformers' run_qa does; a window that holds the (first) answer is trained to
point at it, the others at position 0 ([CLS]). The model is `SpanScorer` (models/heads.py); the objective
the mean of the start and end cross-entropies. Post-processing takes the best span over all windows of a
context (`n_best_size` starts and ends per window, at most `max_answer_length` tokens). Metrics: exact
match and F1 as the official SQuAD v1.1 script computes them, or CMRC 2018's character F1 for Chinese
(`qa_metric_style`). Inference: `lmforge qa`.

Dimensions: B windows, T tokens.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class QAArgs(FinetuneConfig):
    """[finetune] of extractive QA: the shared settings plus windows and answer post-processing."""

    learning_rate: float = 3e-5
    """Peak learning rate (run_qa's SQuAD setting)."""
    doc_stride: int = -1
    """Context tokens shared by consecutive windows of a long context; -1: run_qa's 128, or half the context
    tokens a window holds when that is less (a small model's short windows)."""
    max_query_length: int = 64
    """Question tokens kept (longer questions are cut and counted)."""
    n_best_size: int = 20
    """Start and end candidates per window."""
    max_answer_length: int = 30
    """Longest answer, in tokens."""
    qa_metric_style: Literal["auto", "squad", "cmrc"] = "auto"
    """squad: SQuAD v1.1 exact match / word F1; cmrc: CMRC 2018 character F1; auto: cmrc for Chinese answers."""
    metric_for_best_model: Literal["f1", "exact_match", "loss"] = "f1"

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.doc_stride >= -1, "finetune.doc_stride", "must be >= 0 (or -1: automatic)")
        check(self.max_query_length > 0, "finetune.max_query_length", "must be positive")
        check(self.n_best_size > 0, "finetune.n_best_size", "must be positive")
        check(self.max_answer_length > 0, "finetune.max_answer_length", "must be positive")


@dataclass(frozen=True)
class QAConfig(FinetuneRunConfig):
    finetune: QAArgs = field(default_factory=QAArgs)


def _check_model(cfg: QAConfig) -> None:
    from lmforge.models import MODELS

    if MODELS[cfg.model.kind].decoding == "encoder_decoder":
        raise LmforgeError(f"--task qa puts a span head on an encoder or decoder (bert, gpt); "
                           f"{cfg.finetune.from_run} is a {cfg.model.kind} run")


WINDOW = 384
"""Tokens per window when finetune.max_length is 0 (run_qa's max_seq_length), or the model's context if shorter."""


def window_length(cfg: QAConfig) -> int:
    return max_length_of(cfg) if cfg.finetune.max_length else min(max_length_of(cfg), WINDOW)


def features_of(examples, tok, cfg: QAConfig, with_positions: bool):
    from lmforge.data.squad import make_features

    ft = cfg.finetune
    return make_features(tok, examples, window_length(cfg), doc_stride(cfg), cfg.model.input_format,
                         ft.max_query_length, with_positions)


def doc_stride(cfg: QAConfig) -> int:
    from lmforge.data.squad import SPECIALS

    if cfg.finetune.doc_stride >= 0:
        return cfg.finetune.doc_stride
    room = window_length(cfg) - cfg.finetune.max_query_length - SPECIALS[cfg.model.input_format]
    return max(0, min(128, room // 2))


def collate(feats, index: np.ndarray, pad_id: int, token_types: bool, positions: bool) -> dict[str, torch.Tensor]:
    """Windows `index` padded on the right: input_ids, attention_mask (B, T), start/end positions (B,)."""
    from lmforge.data.labeled import pad_right

    ids, mask = pad_right([feats.ids[i] for i in index], pad_id)
    T = ids.shape[1]
    batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    if token_types:
        types = (np.arange(T)[None, :] >= feats.segment_starts[index][:, None]) & (mask == 1)  # (B, T)
        batch["token_type_ids"] = torch.from_numpy(types.astype(np.int64))
    if positions:
        batch["start_positions"] = torch.from_numpy(feats.start_positions[index].astype(np.int64))
        batch["end_positions"] = torch.from_numpy(feats.end_positions[index].astype(np.int64))
    return batch


@torch.no_grad()
def span_logits(model, feats, batch_size: int, pad_id: int, token_types: bool, runtime: Runtime | None,
                positions: bool) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """Start and end logits of every window (every process runs them all), and the summed loss."""
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    starts, ends, loss = [], [], 0.0
    for first in range(0, len(feats.ids), batch_size):
        index = np.arange(first, min(first + batch_size, len(feats.ids)))
        batch = {k: v.to(device) for k, v in collate(feats, index, pad_id, token_types, positions).items()}
        with runtime.autocast() if runtime is not None else torch.autocast("cpu", enabled=False):
            s, e = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        s, e = s.float(), e.float()
        if positions:
            loss += float(F.cross_entropy(s, batch["start_positions"], reduction="sum")
                          + F.cross_entropy(e, batch["end_positions"], reduction="sum")) / 2
        for r, i in enumerate(index):
            n = len(feats.ids[i])
            starts.append(s[r, :n].cpu().numpy())
            ends.append(e[r, :n].cpu().numpy())
    model.train(was_training)
    return starts, ends, loss


def score(model, examples, feats, ft: QAArgs, pad_id: int, token_types: bool, runtime: Runtime | None
          ) -> tuple[dict, list[dict]]:
    """Exact match and F1 of a split's best answers (and the window loss); and the answers."""
    from lmforge.data.squad import best_answers
    from lmforge.evaluate import qa_metrics

    starts, ends, loss = span_logits(model, feats, ft.per_device_eval_batch_size, pad_id, token_types, runtime,
                                     True)
    answers = best_answers(examples, feats, starts, ends, ft.n_best_size, ft.max_answer_length)
    style = {"auto": "auto", "squad": "en", "cmrc": "zh"}[ft.qa_metric_style]
    m = qa_metrics([a["text"] for a in answers], [e.answers for e in examples], style)
    m["loss"] = loss / max(len(feats.ids), 1)
    m["questions"], m["windows"] = len(examples), len(feats.ids)
    return m, answers


def _describe(data, feats, cfg: QAConfig) -> str:
    longer = int((np.bincount(feats.example, minlength=len(data)) > 1).sum())
    cut = f"; {feats.truncated_questions} questions cut to {cfg.finetune.max_query_length} tokens" \
        if feats.truncated_questions else ""
    return (f"{data.describe()}; {len(feats.ids)} windows of at most {window_length(cfg)} tokens ({longer} contexts "
            f"split, doc_stride {doc_stride(cfg)}){cut}")


def prepare(cfg: QAConfig, runtime: Runtime, run_dir: Path, resume: bool, source: Source | None,
            say) -> TaskData:
    from lmforge.data.labeled import IndexedBatches
    from lmforge.data.squad import read_qa
    from lmforge.objectives import span_loss

    cfg = absolute_paths(cfg) if not resume else cfg
    ft = cfg.finetune
    check_files(ft)
    _check_model(cfg)
    tok = runs.load_tokenizer(run_dir if resume else source.run)
    train = read_qa(ft.train_file)
    train_feats = features_of(train.examples, tok, cfg, True)
    say(_describe(train, train_feats, cfg))
    splits = {}
    for name, path in (("dev", ft.dev_file), ("test", ft.test_file)):
        if path:
            data = read_qa(path)
            feats = features_of(data.examples, tok, cfg, True)
            say(_describe(data, feats, cfg))
            splits[name] = (data, feats)
    cfg = with_loop(cfg, len(train_feats.ids), runtime.world_size)
    types = cfg.model.token_types
    batches = IndexedBatches(len(train_feats.ids), cfg.train.batch_size, ft.seed,
                             lambda index: collate(train_feats, index, tok.pad_id, types, True))

    def during(model) -> dict:
        data, feats = splits["dev"]
        m, _ = score(runtime.unwrap(model), data.examples, feats, ft, tok.pad_id, types, runtime)
        say(f"dev loss {m['loss']:.4f}, exact match {m['exact_match']:.2f}, F1 {m['f1']:.2f}")
        return {k: m[k] for k in ("loss", "exact_match", "f1")}

    def final(model) -> dict:
        import json

        from lmforge.atomic import write_text

        results = {}
        for name, (data, feats) in splits.items():
            m, answers = score(runtime.unwrap(model), data.examples, feats, ft, tok.pad_id, types, runtime)
            results[name] = m
            say(f"{name}: exact match {m['exact_match']:.2f}, F1 {m['f1']:.2f} ({m['questions']} questions, "
                f"{m['metric_style']})")
            if runtime.is_main:
                write_text(run_dir / f"predictions-{name}.json", json.dumps(
                    {e.id: a["text"] for e, a in zip(data.examples, answers)}, ensure_ascii=False, indent=1))
        return results

    links = {"tensorboard": ft.logging_dir} if ft.logging_dir else {}
    return TaskData(cfg, tok, batches, span_loss, early_stopping(ft, ft.metric_for_best_model, run_dir, during),
                    f"{cfg.train.batch_size} windows ({len(train)} train questions)", links=links, final=final)


def build(cfg: QAConfig, files: dict) -> torch.nn.Module:
    from lmforge.models.heads import SpanScorer

    ft = cfg.finetune
    model = SpanScorer(cfg.model)
    model.layerwise_lr_decay = ft.layerwise_lr_decay
    if ft.freeze_encoder:
        model.freeze_backbone()
    model.freeze_unused()
    return model


# ----------------------------------------------------------------------------------------------------
# Inference


def qa(run: LoadedRun, questions: list[str], contexts: list[str], batch_size: int = 64) -> list[dict]:
    """The best answer to each question in its context: {"answer", "score", "start", "end"} (characters)."""
    from lmforge.data.squad import QAExample, best_answers

    if run.task.name != "qa":
        raise LmforgeError(f"{run.run_dir} is a {run.task.name} run, not a question answerer: qa needs the --out "
                           "folder of `lmforge finetune --task qa`")
    for i, (q, c) in enumerate(zip(questions, contexts)):
        if not q.strip() or not c.strip():
            raise LmforgeError(f"question {i + 1}: the {'question' if not q.strip() else 'context'} is empty")
    examples = [QAExample(str(i), q, c, [], []) for i, (q, c) in enumerate(zip(questions, contexts))]
    feats = features_of(examples, run.tokenizer, run.config, False)
    ft = run.config.finetune
    starts, ends, _ = span_logits(run.model, feats, batch_size, run.tokenizer.pad_id, run.config.model.token_types,
                                  None, False)
    best = best_answers(examples, feats, starts, ends, ft.n_best_size, ft.max_answer_length)
    return [{"answer": b["text"], "score": b["score"], "start": b["start"], "end": b["end"]} for b in best]


def evaluate_file(run: LoadedRun, path: Path) -> dict:
    """Exact match and F1 of a SQuAD-format or JSONL file (`lmforge eval RUN --data FILE`)."""
    from lmforge.data.squad import read_qa

    data = read_qa(path)
    feats = features_of(data.examples, run.tokenizer, run.config, True)
    m, _ = score(run.model, data.examples, feats, run.config.finetune, run.tokenizer.pad_id,
                 run.config.model.token_types, None)
    return {"checkpoint": run.checkpoint.name, "data": str(path), **m}


def evaluate(run: LoadedRun, data: str | None, split: str | None, max_batches: int, runtime: Runtime) -> dict:
    return evaluate_file(run, eval_file(run, data, split, max_batches, "SQuAD v1.1 .json or .jsonl"))


TASK = Task(
    name="qa", summary="answer spans in a context (extractive QA)", config_class=QAConfig, prepare=prepare,
    build_model=build, evaluate=evaluate, inference="qa", head=True, finetunes=True)
