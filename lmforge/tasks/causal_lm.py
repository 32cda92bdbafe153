"""Causal language modelling: predict each next token (GPT pretraining on token shards).

Training batches are random windows of `data.seq_len + 1` tokens, a pure function of (seed, step);
evaluation reads sequential non-overlapping windows of the held-out split, so every token is a
target once. Reported: loss, perplexity and bits per byte. Inference: `lmforge generate`.
"""

from __future__ import annotations

from lmforge.models import build_model
from lmforge.runs import PretrainConfig
from lmforge.tasks import pretraining
from lmforge.tasks.task import Task


def parts(cfg: PretrainConfig, tok, train_src, val_src, runtime) -> pretraining.LMParts:
    from lmforge.data.loaders import CausalLMBatches, bytes_per_token, eval_batches
    from lmforge.objectives import causal_lm_loss

    seq_len, micro, world = cfg.seq_len(), cfg.train.micro_batch(runtime.world_size), runtime.world_size
    batches = CausalLMBatches(train_src, seq_len, cfg.train.batch_size, cfg.train.seed) if train_src else None
    make_eval = None
    if val_src is not None:
        make_eval = lambda n: eval_batches(val_src, seq_len, micro, pretraining.eval_count(cfg, n, world),
                                           runtime.rank, world)
    return pretraining.LMParts(causal_lm_loss, batches, make_eval, bytes_per_token(val_src) if val_src else None)


def build(cfg: PretrainConfig, files: dict) -> object:
    return build_model(cfg.model)


TASK = Task(
    name="causal_lm", summary="next-token prediction on token shards", config_class=PretrainConfig,
    prepare=lambda *a: pretraining.prepare(parts, *a), build_model=build,
    evaluate=lambda *a: pretraining.evaluate(parts, *a), inference="generate")
