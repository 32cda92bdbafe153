"""Masked language modelling: predict masked tokens from both sides (BERT pretraining on token shards).

Each document is cut into `[CLS] tokens [SEP]` sequences, masked afresh at every visit, seeded by
(seed, step) so resuming stays exact (data/mlm.py); validation masks are fixed (VAL_MASK_SEED), so
`val_loss`, `val_perplexity` and `val_accuracy` compare across evaluations and runs. The [CLS] pooler
belongs to fine-tuning and is frozen here. Inference: `lmforge fill-mask`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmforge.data.mlm import MaskingConfig
from lmforge.models import BertConfig, ModelConfig, build_model
from lmforge.runs import PretrainConfig
from lmforge.tasks import pretraining
from lmforge.tasks.task import Task


@dataclass(frozen=True)
class MaskedLMConfig(PretrainConfig):
    model: ModelConfig = field(default_factory=BertConfig)
    mlm: MaskingConfig = field(default_factory=MaskingConfig)


def parts(cfg: MaskedLMConfig, tok, train_src, val_src, runtime) -> pretraining.LMParts:
    from lmforge.data.mlm import MaskedLMBatches
    from lmforge.objectives import masked_lm_loss

    return masked_parts(cfg, tok, train_src, val_src, runtime, MaskedLMBatches, masked_lm_loss)


def masked_parts(cfg, tok, train_src, val_src, runtime, batches_class, objective,
                 measure=None) -> pretraining.LMParts:
    """Training and validation batches of `batches_class` (data/mlm.py's masking, `cfg.mlm`) for
    `objective`; replaced-token detection uses it with its own batches, objective and `measure`."""
    from lmforge.data.mlm import VAL_MASK_SEED, SpecialTokens

    specials, seq_len, world = SpecialTokens.from_tokenizer(tok), cfg.seq_len(), runtime.world_size
    micro = cfg.train.micro_batch(world)
    word_starts = tok.word_starts if cfg.mlm.whole_word else None
    batches = None
    if train_src is not None:
        batches = batches_class(train_src, specials, seq_len, cfg.train.batch_size, cfg.train.seed, cfg.mlm,
                                word_starts)
    make_eval = None
    if val_src is not None:
        val = batches_class(val_src, specials, seq_len, micro, VAL_MASK_SEED, cfg.mlm, word_starts, shuffle=False)
        make_eval = lambda n: val.eval_batches(micro, pretraining.eval_count(cfg, n, world), runtime.rank, world)
    return pretraining.LMParts(objective, batches, make_eval, None, measure)  # bits per byte mean nothing here


def build(cfg: MaskedLMConfig, files: dict) -> object:
    model = build_model(cfg.model)
    for name, p in model.named_parameters():
        if name.startswith(model.pooler_prefixes):
            p.requires_grad_(False)  # never run by the objective: not trained, left out of DDP's reduction
    return model


TASK = Task(
    name="masked_lm", summary="masked-token prediction on token shards", config_class=MaskedLMConfig,
    prepare=lambda *a: pretraining.prepare(parts, *a), build_model=build,
    evaluate=lambda *a: pretraining.evaluate(parts, *a), inference="fill-mask")
