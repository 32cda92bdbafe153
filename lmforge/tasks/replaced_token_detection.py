"""Replaced-token detection: ELECTRA pretraining (Clark et al., 2020) on token shards.

A small generator, a masked LM, predicts the masked tokens of each sequence; a token sampled from its
prediction replaces each of them, and the discriminator (a BERT with a one-logit head) learns which
tokens of the result were replaced (models/electra.py). The loss is the generator's cross-entropy plus
`electra.disc_weight` times the discriminator's (objectives.replaced_token_detection_loss).

Masking is the masked LM's (data/mlm.py) with ELECTRA's defaults: 15% of the tokens, 85% of those
[MASK] and the rest left as they are (no random tokens: the generator's samples are the replacements).
The draws that pick the samples come with each batch, seeded by (seed, step) like its masks, so resuming
stays exact and validation (fixed masks, VAL_MASK_SEED) sees the same replacements every time.
Validation reports the loss (per masked token, as training logs it) and its parts: `gen_loss` and
`gen_accuracy` over the masked tokens, `disc_loss` and `disc_accuracy` over the real tokens, and
`replaced`, the share of real tokens the generator changed (the discriminator's positive rate).

The discriminator is what the run is for: `lmforge finetune --from RUN` fine-tunes it as a BERT
(`models.finetuned_part`) and `lmforge export` writes it as ElectraForPreTraining. No inference command
reads the pretrained run itself.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from lmforge.config import check
from lmforge.data.mlm import MaskingConfig
from lmforge.models import ElectraConfig, build_model
from lmforge.runs import PretrainConfig
from lmforge.tasks import masked_lm, pretraining
from lmforge.tasks.task import Task


@dataclass(frozen=True)
class ElectraObjectiveConfig:
    disc_weight: float = 50.0
    """Weight of the discriminator's loss against the generator's (the paper's lambda, 50)."""

    def __post_init__(self) -> None:
        check(self.disc_weight > 0, "electra.disc_weight", "must be positive")


@dataclass(frozen=True)
class ReplacedTokenConfig(PretrainConfig):
    model: ElectraConfig = field(default_factory=ElectraConfig)
    mlm: MaskingConfig = field(default_factory=lambda: MaskingConfig(mask_token_prob=0.85, random_token_prob=0.0))
    electra: ElectraObjectiveConfig = field(default_factory=ElectraObjectiveConfig)


METRICS = ("gen_loss", "correct", "disc_loss", "disc_correct", "replaced", "real")
"""The objective's extras that validation sums (objectives.replaced_token_detection_loss)."""


@torch.no_grad()
def measure(model, objective, batches, runtime, bytes_per_token: float | None = None) -> dict[str, float]:
    """The loss and its parts over `batches` (sums over every batch and process, then the ratios)."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(2 + len(METRICS), dtype=torch.float64, device=runtime.device)
    for batch in batches:
        with runtime.autocast():
            loss_sum, n_targets, extras = objective(model, runtime.to_device(batch))
        totals += torch.stack([loss_sum.double(), n_targets.double(), *(extras[k].double() for k in METRICS)])
    model.train(was_training)
    loss, masked, gen, correct, disc, disc_correct, replaced, real = runtime.all_reduce_sum(totals).tolist()
    if masked == 0:
        raise ValueError("evaluation saw no targets")
    return {"loss": loss / masked, "gen_loss": gen / masked, "gen_accuracy": correct / masked,
            "disc_loss": disc / real, "disc_accuracy": disc_correct / real, "replaced": replaced / real,
            "tokens": int(masked)}


def parts(cfg: ReplacedTokenConfig, tok, train_src, val_src, runtime) -> pretraining.LMParts:
    from lmforge.data.mlm import ReplacementBatches
    from lmforge.objectives import replaced_token_detection_loss

    objective = functools.partial(replaced_token_detection_loss, disc_weight=cfg.electra.disc_weight,
                                  mask_prob=cfg.mlm.mask_prob)
    return masked_lm.masked_parts(cfg, tok, train_src, val_src, runtime, ReplacementBatches, objective, measure)


def build(cfg: ReplacedTokenConfig, files: dict) -> torch.nn.Module:
    model = build_model(cfg.model)
    for name, p in model.named_parameters():
        if name.startswith(model.idle_prefixes):
            p.requires_grad_(False)  # never run by the objective: not trained, left out of DDP's reduction
    return model


TASK = Task(
    name="replaced_token_detection", summary="ELECTRA: a generator's replacements, spotted token by token",
    config_class=ReplacedTokenConfig, prepare=lambda *a: pretraining.prepare(parts, *a), build_model=build,
    evaluate=lambda *a: pretraining.evaluate(parts, *a), inference="finetune")
