"""Span corruption: an encoder-decoder learns to fill sentinel-marked gaps (T5 pretraining on token shards).

Inputs are packed runs of the stream with 15% of their tokens (spans of mean length 3) replaced by
sentinels; the decoder writes each sentinel and what it replaced (data/span.py). The tokenizer must
have the sentinels (`tokenizer train --set tokenizer.extra_ids=100`). Validation scores fixed spans of
the held-out split: loss, perplexity and accuracy over the span targets. Inference: `lmforge generate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmforge.data.span import VAL_SEED, SpanConfig, SpanCorruptionBatches
from lmforge.errors import LmforgeError
from lmforge.models import ModelConfig, T5Config, build_model
from lmforge.runs import PretrainConfig
from lmforge.tasks import pretraining
from lmforge.tasks.task import Task


@dataclass(frozen=True)
class SpanCorruptionConfig(PretrainConfig):
    model: ModelConfig = field(default_factory=T5Config)
    span: SpanConfig = field(default_factory=SpanConfig)


def parts(cfg: SpanCorruptionConfig, tok, train_src, val_src, runtime) -> pretraining.LMParts:
    from lmforge.objectives import seq2seq_loss

    if not tok.sentinel_ids:
        raise LmforgeError("span corruption needs sentinel tokens (<extra_id_0>, ...), and this tokenizer has "
                           "none: train one with `lmforge tokenizer train ... --set tokenizer.extra_ids=100`")
    world, seq_len, micro = runtime.world_size, cfg.seq_len(), cfg.train.micro_batch(runtime.world_size)
    common = dict(cfg=cfg.span, sentinels=tok.sentinel_ids, eos=tok.eot_id, pad=tok.pad_id)
    batches = None
    if train_src is not None:
        batches = SpanCorruptionBatches(train_src, seq_len, cfg.train.batch_size, cfg.train.seed, **common)
    make_eval = None
    if val_src is not None:
        val = SpanCorruptionBatches(val_src, seq_len, micro, VAL_SEED, shuffle=False, **common)
        make_eval = lambda n: val.eval_batches(micro, pretraining.eval_count(cfg, n, world), runtime.rank, world)
    return pretraining.LMParts(seq2seq_loss, batches, make_eval, None)


def build(cfg: SpanCorruptionConfig, files: dict) -> object:
    return build_model(cfg.model)


TASK = Task(
    name="span_corruption", summary="sentinel-span infilling on token shards (T5)", config_class=SpanCorruptionConfig,
    prepare=lambda *a: pretraining.prepare(parts, *a), build_model=build,
    evaluate=lambda *a: pretraining.evaluate(parts, *a), inference="generate")
