"""Encoders: lmforge's BERT <-> BERT, RoBERTa / XLM-RoBERTa and DistilBERT checkpoints.

All three are post-norm BERT encoders with learned positions and the same masked-LM head (dense, GELU,
LayerNorm, decoder tied to the embeddings). RoBERTa counts positions from its padding id + 1
(`model.position_offset`), has one token type and joins pairs as `<s> a </s></s> b </s>`
(`model.pair_style`); its classifier's dense layer is lmforge's [CLS] pooler. DistilBERT has no token
types and its classifier's `pre_classifier` is the pooler, with ReLU (`model.pooler_activation`).
"""

from __future__ import annotations

from typing import Any

from lmforge.errors import LmforgeError
from lmforge.interop.family import Family, Row, SpecialIds, require
from lmforge.models import BertConfig

_LAYER = (("attention.self.query", "attn.query"), ("attention.self.key", "attn.key"),
          ("attention.self.value", "attn.value"), ("attention.output.dense", "attn.out"),
          ("attention.output.LayerNorm", "ln_attn"), ("intermediate.dense", "mlp.fc1"),
          ("output.dense", "mlp.fc2"), ("output.LayerNorm", "ln_mlp"))


def _encoder_keys(prefix: str) -> tuple[list[Row], list[Row]]:
    keys = [
        (f"{prefix}embeddings.word_embeddings.weight", "word_embeddings.weight", "", ""),
        (f"{prefix}embeddings.position_embeddings.weight", "position_embeddings.weight", "", ""),
        (f"{prefix}embeddings.token_type_embeddings.weight", "token_type_embeddings.weight", "", "types"),
        (f"{prefix}embeddings.LayerNorm.weight", "emb_norm.weight", "", ""),
        (f"{prefix}embeddings.LayerNorm.bias", "emb_norm.bias", "", ""),
        (f"{prefix}pooler.dense.weight", "pooler.weight", "", ""),
        (f"{prefix}pooler.dense.bias", "pooler.bias", "", ""),
    ]
    layers = [(f"{prefix}encoder.layer.{{i}}.{hf}.{k}", f"blocks.{{i}}.{ours}.{k}", "", "")
              for hf, ours in _LAYER for k in ("weight", "bias")]
    return keys, layers


def _head(dense: str, norm: str, bias: str, decoder: str) -> list[Row]:
    return [(f"{dense}.weight", "head_dense.weight", "", ""), (f"{dense}.bias", "head_dense.bias", "", ""),
            (f"{norm}.weight", "head_norm.weight", "", ""), (f"{norm}.bias", "head_norm.bias", "", ""),
            (bias, "decoder.bias", "", ""), (f"{decoder}.weight", "decoder.weight", "", "untied")]


BERT_BASE, BERT_LAYERS = _encoder_keys("bert.")
ROBERTA_BASE, ROBERTA_LAYERS = _encoder_keys("roberta.")
DISTIL_LAYERS: list[Row] = [
    (f"distilbert.transformer.layer.{{i}}.{hf}.{k}", f"blocks.{{i}}.{ours}.{k}", "", "")
    for hf, ours in (("attention.q_lin", "attn.query"), ("attention.k_lin", "attn.key"),
                     ("attention.v_lin", "attn.value"), ("attention.out_lin", "attn.out"),
                     ("sa_layer_norm", "ln_attn"), ("ffn.lin1", "mlp.fc1"), ("ffn.lin2", "mlp.fc2"),
                     ("output_layer_norm", "ln_mlp"))
    for k in ("weight", "bias")]
DISTIL_BASE: list[Row] = [
    ("distilbert.embeddings.word_embeddings.weight", "word_embeddings.weight", "", ""),
    ("distilbert.embeddings.position_embeddings.weight", "position_embeddings.weight", "", ""),
    ("distilbert.embeddings.LayerNorm.weight", "emb_norm.weight", "", ""),
    ("distilbert.embeddings.LayerNorm.bias", "emb_norm.bias", "", ""),
]


def _bert_common(cfg: BertConfig) -> dict[str, Any]:
    return {"hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
            "intermediate_size": cfg.ff_width(), "hidden_act": "gelu", "hidden_dropout_prob": cfg.dropout,
            "attention_probs_dropout_prob": cfg.attn_dropout, "layer_norm_eps": cfg.norm_eps,
            "position_embedding_type": "absolute", "is_decoder": False}


def bert_config(cfg: BertConfig, ids: SpecialIds) -> dict[str, Any]:
    return {**_bert_common(cfg), "max_position_embeddings": cfg.context_len,
            "type_vocab_size": max(1, cfg.type_vocab_size)}


def roberta_config(cfg: BertConfig, ids: SpecialIds) -> dict[str, Any]:
    if cfg.position_offset != ids.pad + 1:
        raise LmforgeError(f"model.position_offset = {cfg.position_offset} but the tokenizer's pad id is {ids.pad}: "
                           "RoBERTa counts positions from its pad id + 1: export is not possible")
    return {**_bert_common(cfg), "max_position_embeddings": cfg.context_len + cfg.position_offset,
            "type_vocab_size": max(1, cfg.type_vocab_size), "bos_token_id": ids.bos, "eos_token_id": ids.eos}


def distilbert_config(cfg: BertConfig, ids: SpecialIds) -> dict[str, Any]:
    return {"dim": cfg.d_model, "n_layers": cfg.n_layer, "n_heads": cfg.n_head, "hidden_dim": cfg.ff_width(),
            "max_position_embeddings": cfg.context_len, "dropout": cfg.dropout,
            "attention_dropout": cfg.attn_dropout, "activation": "gelu", "sinusoidal_pos_embds": False,
            "tie_weights_": cfg.tie_embeddings}


def _check_bert_like(hf: dict[str, Any], source: str) -> None:
    require(hf, "position_embedding_type", "absolute", source, "absolute")
    require(hf, "hidden_act", "gelu", source, "gelu")
    require(hf, "is_decoder", False, source, False)
    require(hf, "add_cross_attention", False, source, False)


def _bert_like(hf: dict[str, Any], **extra: Any) -> BertConfig:
    return BertConfig(
        vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
        d_model=hf["hidden_size"], d_ff=hf["intermediate_size"], type_vocab_size=hf.get("type_vocab_size", 2),
        pre_norm=False, norm_eps=hf.get("layer_norm_eps", 1e-12), dropout=hf.get("hidden_dropout_prob", 0.1),
        attn_dropout=hf.get("attention_probs_dropout_prob", 0.1),
        tie_embeddings=hf.get("tie_word_embeddings", True), init_std=hf.get("initializer_range", 0.02), **extra)


def bert_from(hf: dict[str, Any], source: str) -> BertConfig:
    _check_bert_like(hf, source)
    return _bert_like(hf, context_len=hf.get("max_position_embeddings", 512))


def roberta_from(hf: dict[str, Any], source: str) -> BertConfig:
    _check_bert_like(hf, source)
    offset = hf.get("pad_token_id", 1) + 1
    return _bert_like(hf, context_len=hf.get("max_position_embeddings", 514) - offset, position_offset=offset,
                      pair_style="roberta")


def distilbert_from(hf: dict[str, Any], source: str) -> BertConfig:
    require(hf, "sinusoidal_pos_embds", False, source, False)
    require(hf, "activation", "gelu", source, "gelu")
    return BertConfig(
        vocab_size=hf["vocab_size"], context_len=hf.get("max_position_embeddings", 512), n_layer=hf["n_layers"],
        n_head=hf["n_heads"], d_model=hf["dim"], d_ff=hf["hidden_dim"], type_vocab_size=0, pre_norm=False,
        norm_eps=1e-12, dropout=hf.get("dropout", 0.1), attn_dropout=hf.get("attention_dropout", 0.1),
        tie_embeddings=hf.get("tie_weights_", True), init_std=hf.get("initializer_range", 0.02),
        pooler_activation="relu")


BERT_SPECIALS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                 "mask_token": "[MASK]"}
ROBERTA_SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
                    "pad_token": "<pad>", "cls_token": "<s>", "mask_token": "<mask>"}

BERT = Family(
    model_type="bert", lm="BertForMaskedLM", classifier="BertForSequenceClassification", base_prefix="bert.",
    keys=BERT_BASE + _head("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm",
                           "cls.predictions.bias", "cls.predictions.decoder"),
    layer_keys=BERT_LAYERS,
    classifier_head=[("classifier.weight", "head.weight", "", ""), ("classifier.bias", "head.bias", "", "")],
    pooling="cls", to_config=bert_config, from_config=bert_from, special_names="bert",
    default_specials=BERT_SPECIALS)

ROBERTA = Family(
    model_type="roberta", lm="RobertaForMaskedLM", classifier="RobertaForSequenceClassification",
    base_prefix="roberta.",
    keys=ROBERTA_BASE + _head("lm_head.dense", "lm_head.layer_norm", "lm_head.bias", "lm_head.decoder"),
    layer_keys=ROBERTA_LAYERS,
    classifier_head=[("classifier.dense.weight", "backbone.pooler.weight", "", ""),
                     ("classifier.dense.bias", "backbone.pooler.bias", "", ""),
                     ("classifier.out_proj.weight", "head.weight", "", ""),
                     ("classifier.out_proj.bias", "head.bias", "", "")],
    pooling="cls", to_config=roberta_config, from_config=roberta_from, special_names="roberta",
    default_specials=ROBERTA_SPECIALS)

XLM_ROBERTA = Family(**{**ROBERTA.__dict__, "model_type": "xlm-roberta", "lm": "XLMRobertaForMaskedLM",
                        "classifier": "XLMRobertaForSequenceClassification"})

DISTILBERT = Family(
    model_type="distilbert", lm="DistilBertForMaskedLM", classifier="DistilBertForSequenceClassification",
    base_prefix="distilbert.",
    keys=DISTIL_BASE + _head("vocab_transform", "vocab_layer_norm", "vocab_projector.bias", "vocab_projector"),
    layer_keys=DISTIL_LAYERS,
    classifier_head=[("pre_classifier.weight", "backbone.pooler.weight", "", ""),
                     ("pre_classifier.bias", "backbone.pooler.bias", "", ""),
                     ("classifier.weight", "head.weight", "", ""), ("classifier.bias", "head.bias", "", "")],
    pooling="cls", to_config=distilbert_config, from_config=distilbert_from, special_names="bert",
    default_specials=BERT_SPECIALS, head_roots=("vocab_transform.", "vocab_layer_norm.", "vocab_projector."))
