"""T5: lmforge's T5 (v1.1 layout) <-> T5ForConditionalGeneration.

Feed-forward `gated-gelu` (T5 v1.1, mT5, Flan-T5) or `relu` (the original T5); any other
`feed_forward_proj` is refused by name. The decoder starts from the pad token, as in T5.
"""

from __future__ import annotations

from typing import Any

from lmforge.interop.family import Family, Row, SpecialIds, require
from lmforge.models import T5Config

_ATTN = ("q", "k", "v", "o")

KEYS: list[Row] = [
    ("shared.weight", "shared.weight", "", ""),
    ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
     "encoder.0.attn.relative_attention_bias.weight", "", ""),
    ("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
     "decoder.0.self_attn.relative_attention_bias.weight", "", ""),
    ("encoder.final_layer_norm.weight", "enc_norm.weight", "", ""),
    ("decoder.final_layer_norm.weight", "dec_norm.weight", "", ""),
    ("lm_head.weight", "lm_head.weight", "", "untied"),
]
ENCODER_LAYER: list[Row] = [
    *[(f"encoder.block.{{i}}.layer.0.SelfAttention.{p}.weight", f"encoder.{{i}}.attn.{p}.weight", "", "")
      for p in _ATTN],
    ("encoder.block.{i}.layer.0.layer_norm.weight", "encoder.{i}.ln_attn.weight", "", ""),
    *[(f"encoder.block.{{i}}.layer.1.DenseReluDense.{p}.weight", f"encoder.{{i}}.ff.{p}.weight", "", p)
      for p in ("wi_0", "wi_1", "wi", "wo")],
    ("encoder.block.{i}.layer.1.layer_norm.weight", "encoder.{i}.ln_ff.weight", "", ""),
]
DECODER_LAYER: list[Row] = [
    *[(f"decoder.block.{{i}}.layer.0.SelfAttention.{p}.weight", f"decoder.{{i}}.self_attn.{p}.weight", "", "")
      for p in _ATTN],
    ("decoder.block.{i}.layer.0.layer_norm.weight", "decoder.{i}.ln_self.weight", "", ""),
    *[(f"decoder.block.{{i}}.layer.1.EncDecAttention.{p}.weight", f"decoder.{{i}}.cross_attn.{p}.weight", "", "")
      for p in _ATTN],
    ("decoder.block.{i}.layer.1.layer_norm.weight", "decoder.{i}.ln_cross.weight", "", ""),
    *[(f"decoder.block.{{i}}.layer.2.DenseReluDense.{p}.weight", f"decoder.{{i}}.ff.{p}.weight", "", p)
      for p in ("wi_0", "wi_1", "wi", "wo")],
    ("decoder.block.{i}.layer.2.layer_norm.weight", "decoder.{i}.ln_ff.weight", "", ""),
]


def _present(ff: str, cfg: T5Config) -> bool:
    """Whether a feed-forward row ("wi_0", "wi_1", "wi"; "" and "wo" always) exists for `cfg`."""
    return ff in ("", "wo") or (ff == "wi") == (cfg.feed_forward == "relu")


def layer_rows(cfg: T5Config) -> list[Row]:
    """The per-layer rows of both stacks (their depths may differ)."""
    rows = [(hf.format(i=i), ours.format(i=i), how, "") for i in range(cfg.n_layer)
            for hf, ours, how, when in ENCODER_LAYER if _present(when, cfg)]
    return rows + [(hf.format(i=i), ours.format(i=i), how, "") for i in range(cfg.decoder_layers())
                   for hf, ours, how, when in DECODER_LAYER if _present(when, cfg)]


def to_config(cfg: T5Config, ids: SpecialIds) -> dict[str, Any]:
    return {"d_model": cfg.d_model, "d_kv": cfg.head_size(), "d_ff": cfg.ff_width(), "num_layers": cfg.n_layer,
            "num_decoder_layers": cfg.decoder_layers(), "num_heads": cfg.n_head,
            "relative_attention_num_buckets": cfg.relative_buckets,
            "relative_attention_max_distance": cfg.relative_max_distance, "dropout_rate": cfg.dropout,
            "layer_norm_epsilon": cfg.norm_eps, "initializer_factor": cfg.init_std,
            "feed_forward_proj": cfg.feed_forward, "tie_word_embeddings": cfg.tie_embeddings,
            "is_encoder_decoder": True, "eos_token_id": ids.eos,
            "decoder_start_token_id": ids.pad, "n_positions": cfg.context_len}


def from_config(hf: dict[str, Any], source: str) -> T5Config:
    require(hf, "feed_forward_proj", ("gated-gelu", "relu"), source, "relu")
    ff = hf.get("feed_forward_proj", "relu")
    require(hf, "is_encoder_decoder", True, source, True)
    require(hf, "decoder_start_token_id", hf.get("pad_token_id", 0), source, hf.get("pad_token_id", 0))
    layers = hf["num_layers"]
    return T5Config(
        vocab_size=hf["vocab_size"], context_len=hf.get("n_positions", 512), n_layer=layers,
        n_decoder_layer=0 if hf.get("num_decoder_layers", layers) == layers else hf["num_decoder_layers"],
        n_head=hf["num_heads"], d_model=hf["d_model"],
        d_kv=0 if hf["d_kv"] * hf["num_heads"] == hf["d_model"] else hf["d_kv"], d_ff=hf["d_ff"],
        relative_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_max_distance=hf.get("relative_attention_max_distance", 128),
        feed_forward=ff, norm_eps=hf.get("layer_norm_epsilon", 1e-6), dropout=hf.get("dropout_rate", 0.1),
        tie_embeddings=_scaled(hf), init_std=hf.get("initializer_factor", 1.0))


def _scaled(hf: dict[str, Any]) -> bool:
    """Whether the decoder output is scaled by d_model**-0.5 before a tied output layer (the original T5).

    transformers 5 always ties the output layer in memory and records the scale on its own
    (`scale_decoder_outputs`); older versions say both with `tie_word_embeddings`. lmforge ties exactly
    when it scales, so an unscaled tied model imports untied, its output layer a copy of the embedding
    (`tied_copies`)."""
    return bool(hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True)))


FAMILY = Family(
    model_type="t5", lm="T5ForConditionalGeneration", classifier="", base_prefix="", keys=KEYS, layer_keys=[],
    classifier_head=[], pooling="mean", to_config=to_config, from_config=from_config, special_names="t5",
    default_specials={"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}, head_roots=("lm_head.",),
    layer_rows=layer_rows, tied_copies={"lm_head.weight": "shared.weight"})
