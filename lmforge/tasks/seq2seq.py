"""Sequence to sequence: translation, summarization, any text -> text, by fine-tuning a whole encoder-decoder.

Pairs come from .tsv/.csv/.jsonl files (data/pairs.py: columns guessed and reported), each source after
an optional prefix ("translate English to Chinese: "). The model is the pretrained T5 itself, trained
by teacher forcing (cross-entropy over the target tokens, padding ignored) in the one loop. During
training the dev loss (and, when `metric_for_best_model` is bleu, chrf or rougeL, the metrics of
decoded dev outputs) picks the best checkpoint; at the end the best checkpoint decodes dev and test
with the run's decoding settings (beam search by default) and eval_results.json gets BLEU and chrF
(sacrebleu) and ROUGE-1/2/L (rouge-score) with their signatures, how many sources were truncated and
how many outputs reached max_new_tokens. Inference: `lmforge generate RUN --input TEXT`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from lmforge import runs
from lmforge.config import check, check_ranges
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
class Seq2SeqArgs(FinetuneConfig):
    """[finetune] of a seq2seq run: the shared settings plus its columns, prefix, lengths and decoding."""

    learning_rate: float = 3e-4
    """Peak learning rate (T5 fine-tuning takes a larger one than an encoder classifier)."""
    source_column: str = ""
    """Column (or JSON key) of the source; empty guesses source, src, input, text, document, ..."""
    target_column: str = ""
    """Column of the target; empty takes the guessed source column's partner (target, tgt, output, summary)."""
    header: Literal["auto", "yes", "no"] = "auto"
    source_prefix: str = ""
    """Text put before every source, e.g. "translate English to Chinese: " (also when generating)."""
    max_target_length: int = 128
    """Target tokens per pair, end-of-text included (longer targets are cut and counted)."""
    metric_for_best_model: Literal["loss", "bleu", "chrf", "rougeL"] = "loss"
    """Dev metric that picks the best checkpoint: loss, or one that decodes the dev set at every evaluation."""
    num_beams: int = 4
    """Decoding of the evaluations and the run's default for `lmforge generate` (1: greedy)."""
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    early_stopping: bool = False
    """Beam search ends a source once it has num_beams finished hypotheses."""
    max_new_tokens: int = 0
    """Most tokens per decoded output; 0 means max_target_length."""
    bleu_tokenize: Literal["auto", "13a", "zh", "intl", "char", "none"] = "auto"
    """sacrebleu's tokenizer; auto: zh when the references are Chinese, else 13a."""
    rouge_tokenize: Literal["auto", "words", "chars"] = "auto"
    """ROUGE units; auto: characters when the references are Chinese, else stemmed words."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.max_target_length >= 2, "finetune.max_target_length", "must be >= 2")
        check(self.num_beams >= 1, "finetune.num_beams", "must be >= 1 (1: greedy)")
        check_ranges(self, "finetune", non_negative="no_repeat_ngram_size max_new_tokens")
        check(self.layerwise_lr_decay == 1.0, "finetune.layerwise_lr_decay",
              "is for encoders with a head; a seq2seq run trains its encoder and decoder at one rate (leave it 1)")

    def decoding(self):
        from lmforge.generate_seq2seq import Decoding

        return Decoding(self.max_new_tokens or self.max_target_length, self.num_beams, self.length_penalty,
                        self.no_repeat_ngram_size, self.early_stopping)


@dataclass(frozen=True)
class Seq2SeqConfig(FinetuneRunConfig):
    finetune: Seq2SeqArgs = field(default_factory=Seq2SeqArgs)


def _read(path: str, ft: Seq2SeqArgs, need_targets: bool = True):
    from lmforge.data.pairs import read_pairs

    return read_pairs(path, ft.source_column, ft.target_column, ft.header, need_targets)


def _encode(pairs, tok, cfg: Seq2SeqConfig, say):
    from lmforge.data.pairs import encode_pairs

    ft = cfg.finetune
    enc = encode_pairs(tok, pairs, ft.source_prefix, max_length_of(cfg), ft.max_target_length)
    cut = [f"{enc.truncated_sources} sources truncated to {max_length_of(cfg)} tokens"] if enc.truncated_sources else []
    cut += [f"{enc.truncated_targets} targets to {ft.max_target_length}"] if enc.truncated_targets else []
    say(pairs.describe() + (f"; {', '.join(cut)}" if cut else ""))
    return enc


def _check_model(cfg: Seq2SeqConfig) -> None:
    from lmforge.models import MODELS

    if MODELS[cfg.model.kind].decoding != "encoder_decoder":
        raise LmforgeError(f"--task seq2seq fine-tunes an encoder-decoder (t5), and {cfg.finetune.from_run} is a "
                           f"{cfg.model.kind} run: pretrain a t5 (`--config t5-tiny`) or import a "
                           "T5ForConditionalGeneration (hf:DIR)")


def measure(model, tok, cfg: Seq2SeqConfig, pairs, enc, runtime: Runtime, generate: bool) -> dict:
    """Teacher-forced loss, perplexity and token accuracy of a split; with `generate`, its decoded outputs'
    BLEU, chrF and ROUGE too (every process decodes the whole split, so all agree on the metrics)."""
    from lmforge.data.pairs import pair_batches
    from lmforge.evaluate import evaluate_lm, text_metrics
    from lmforge.objectives import seq2seq_loss

    ft = cfg.finetune
    batches = runtime.even_batches(pair_batches(enc, ft.per_device_eval_batch_size, tok.pad_id, runtime.rank,
                                                runtime.world_size))
    out = evaluate_lm(runtime.unwrap(model), seq2seq_loss, batches, runtime)
    out = {"loss": out["loss"], "perplexity": out["perplexity"], "token_accuracy": out["accuracy"],
           "pairs": len(pairs)}
    if generate:
        outputs = decode_all(runtime.unwrap(model), tok, pairs.sources, cfg)
        out.update(text_metrics([o.text for o in outputs], pairs.targets, ft.bleu_tokenize, ft.rouge_tokenize))
        d = ft.decoding()
        out["decoding"] = {"max_new_tokens": d.max_new_tokens, "num_beams": d.num_beams, "length_penalty":
                           d.length_penalty, "no_repeat_ngram_size": d.no_repeat_ngram_size, "early_stopping":
                           d.early_stopping, "source_prefix": ft.source_prefix}
        out["outputs_at_max_new_tokens"] = sum(o.hit_limit for o in outputs)
        out["sources_truncated"] = sum(o.source_truncated for o in outputs)
        out["_outputs"] = [o.text for o in outputs]
    return out


def decode_all(model, tok, sources: list[str], cfg: Seq2SeqConfig, decoding=None, progress: bool = False):
    from lmforge.generate_seq2seq import translate

    ft = cfg.finetune
    return translate(model, tok, sources, decoding or ft.decoding(), ft.source_prefix, max_length_of(cfg),
                     ft.per_device_eval_batch_size, progress)


def prepare(cfg: Seq2SeqConfig, runtime: Runtime, run_dir: Path, resume: bool, source: Source | None,
            say) -> TaskData:
    from lmforge.data.pairs import PairBatches
    from lmforge.extras import require
    from lmforge.objectives import seq2seq_loss

    cfg = absolute_paths(cfg) if not resume else cfg
    ft = cfg.finetune
    check_files(ft)
    _check_model(cfg)
    require("sacrebleu", "seq2seq metrics (BLEU, chrF)")
    require("rouge_score", "seq2seq metrics (ROUGE)")
    generate_during = ft.metric_for_best_model != "loss"
    if generate_during and runtime.parallel == "fsdp":
        raise LmforgeError(f"finetune.metric_for_best_model={ft.metric_for_best_model!r} decodes the dev set at "
                           "every evaluation, which a sharded (FSDP) model does not do: use loss (the final "
                           "metrics are still decoded), or DDP")
    tok = runs.load_tokenizer(run_dir if resume else source.run)
    train = _read(ft.train_file, ft)
    train_enc = _encode(train, tok, cfg, say)
    splits = {"dev": _read(ft.dev_file, ft)}
    if ft.test_file:
        splits["test"] = _read(ft.test_file, ft)
    encoded = {name: _encode(pairs, tok, cfg, say) for name, pairs in splits.items()}
    cfg = with_loop(cfg, len(train), runtime.world_size)
    batches = PairBatches(train_enc, cfg.train.batch_size, ft.seed, tok.pad_id,
                          ft.train_sampling_strategy == "group_by_length")

    def during(model) -> dict:
        m = measure(model, tok, cfg, splits["dev"], encoded["dev"], runtime, generate_during)
        shown = f", {ft.metric_for_best_model} {m[ft.metric_for_best_model]:.2f}" if generate_during else ""
        say(f"dev loss {m['loss']:.4f}, perplexity {m['perplexity']:.2f}{shown}")
        return {k: v for k, v in m.items() if not k.startswith("_") and k != "decoding"}

    def final(model) -> dict:
        results = {}
        for name, pairs in splits.items():
            m = measure(model, tok, cfg, pairs, encoded[name], runtime, True)
            outputs = m.pop("_outputs")
            if runtime.is_main:
                _write_predictions(run_dir / f"predictions-{name}.jsonl", pairs, outputs)
            say(f"{name}: BLEU {m['bleu']:.2f}, chrF {m['chrf']:.2f}, ROUGE-L {m['rougeL']:.2f}, loss "
                f"{m['loss']:.4f} ({m['pairs']} pairs; {m['outputs_at_max_new_tokens']} outputs reached "
                f"max_new_tokens={ft.decoding().max_new_tokens}); {m['bleu_signature']}")
            results[name] = m
        return results

    links = {"tensorboard": ft.logging_dir} if ft.logging_dir else {}
    return TaskData(cfg, tok, batches, seq2seq_loss, early_stopping(ft, ft.metric_for_best_model, run_dir, during),
                    f"{cfg.train.batch_size} pairs ({len(train)} train pairs)", links=links, final=final)


def _write_predictions(path: Path, pairs, outputs: list[str]) -> None:
    from lmforge.atomic import write_text

    rows = [json.dumps({"source": s, "target": t, "output": o}, ensure_ascii=False)
            for s, t, o in zip(pairs.sources, pairs.targets, outputs)]
    write_text(path, "".join(r + "\n" for r in rows))


def run_decoding(run: LoadedRun, max_new_tokens: int = 100):
    """How an encoder-decoder run decodes a source: (Decoding, source prefix, longest source in tokens). A
    seq2seq run's own [finetune] settings; a span-corruption run greedy over its context, `max_new_tokens`
    new tokens."""
    from lmforge.generate_seq2seq import Decoding

    if run.task.name == "seq2seq":
        ft = run.config.finetune
        return ft.decoding(), ft.source_prefix, max_length_of(run.config)
    return Decoding(max_new_tokens=max_new_tokens, num_beams=1), "", run.config.model.context_len


def build(cfg: Seq2SeqConfig, files: dict) -> torch.nn.Module:
    from lmforge.models import build_model

    model = build_model(cfg.model)
    if cfg.finetune.freeze_encoder:  # the shared embedding stays trainable: the decoder reads it too
        for name, p in model.named_parameters():
            if name.startswith(("encoder.", "enc_norm.")):
                p.requires_grad_(False)
    return model


def evaluate(run: LoadedRun, data: str | None, split: str | None, max_batches: int, runtime: Runtime) -> dict:
    """`lmforge eval RUN --data FILE`: loss and decoded metrics of a file of pairs, as the run decodes."""
    from lmforge.data.pairs import encode_pairs

    path = eval_file(run, data, split, max_batches, "pairs in .tsv, .csv or .jsonl")
    ft = run.config.finetune
    pairs = _read(str(path), ft)
    enc = encode_pairs(run.tokenizer, pairs, ft.source_prefix, max_length_of(run.config), ft.max_target_length)
    m = measure(run.model, run.tokenizer, run.config, pairs, enc, runtime, True)
    m.pop("_outputs")
    return {"checkpoint": run.checkpoint.name, "data": str(path), **m}


TASK = Task(
    name="seq2seq", summary="text to text (translation, summarization) with an encoder-decoder",
    config_class=Seq2SeqConfig, prepare=prepare, build_model=build, evaluate=evaluate, inference="generate",
    finetunes=True)
