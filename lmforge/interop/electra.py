"""ELECTRA pretraining runs -> HF ElectraForPreTraining: the discriminator with its replaced-token head.

HF's ElectraModel is BERT's encoder under `electra.` without a pooler; with embedding_size =
hidden_size it has no `embeddings_project`, which is lmforge's discriminator exactly (its embeddings are
the generator's too). `discriminator_predictions` is lmforge's replaced-token head (`rtd_dense`,
`rtd_out`). The generator served pretraining only and is left out, as are the discriminator's idle BERT
MLM head and pooler. Export only: an ElectraForPreTraining folder holds no generator to pretrain on with,
and fine-tuning reads lmforge's own runs.
"""

from __future__ import annotations

from typing import Any

from lmforge.errors import LmforgeError
from lmforge.interop.bert import BERT_SPECIALS, _bert_common, _encoder_keys
from lmforge.interop.family import Family, Row, SpecialIds

_BASE, _LAYERS = _encoder_keys("electra.")
_HEAD: list[Row] = [(f"discriminator_predictions.{hf}.{k}", f"{ours}.{k}", "", "")
                    for hf, ours in (("dense", "rtd_dense"), ("dense_prediction", "rtd_out"))
                    for k in ("weight", "bias")]


def _discriminator(rows: list[Row]) -> list[Row]:
    return [(hf, f"discriminator.{ours}", how, when) for hf, ours, how, when in rows if ".pooler." not in hf]


def electra_config(cfg, ids: SpecialIds) -> dict[str, Any]:
    return {**_bert_common(cfg), "embedding_size": cfg.d_model, "max_position_embeddings": cfg.context_len,
            "type_vocab_size": max(1, cfg.type_vocab_size)}


def _no_import(hf: dict[str, Any], source: str):
    raise LmforgeError(f"{source}: lmforge exports ELECTRA discriminators but does not import them")


ELECTRA = Family(
    model_type="electra", lm="ElectraForPreTraining", classifier="ElectraForSequenceClassification",
    base_prefix="electra.", keys=_discriminator(_BASE) + _HEAD, layer_keys=_discriminator(_LAYERS),
    classifier_head=[], pooling="cls", to_config=electra_config, from_config=_no_import, special_names="bert",
    default_specials=BERT_SPECIALS, head_roots=("discriminator_predictions.",),
    not_exported=("generator.", *(f"discriminator.{p}" for p in ("pooler.", "head_dense.", "head_norm.",
                                                                  "decoder."))))


def family_for(cfg) -> Family:
    """ELECTRA, or a LmforgeError naming the discriminator option that HF's ELECTRA cannot reproduce."""
    refused = {"pre_norm": (cfg.pre_norm, "ElectraModel is post-norm: retrain with pre_norm = false"),
               "position_offset": (cfg.position_offset, "ElectraModel counts positions from 0"),
               "pair_style": (cfg.pair_style != "bert", "ElectraModel joins pairs as BERT does")}
    for key, (bad, why) in refused.items():
        if bad:
            raise LmforgeError(f"model.{key} = {getattr(cfg, key)!r} has no Hugging Face equivalent for "
                               f"ElectraForPreTraining ({why}): export is not possible")
    return ELECTRA
