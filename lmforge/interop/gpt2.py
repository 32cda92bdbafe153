"""GPT-2: lmforge's GPT with learned positions, LayerNorm, GELU and biases <-> GPT2LMHeadModel."""

from __future__ import annotations

from typing import Any

from lmforge.interop.family import Family, Row, SpecialIds, require
from lmforge.models import GPTConfig

KEYS: list[Row] = [
    ("transformer.wte.weight", "wte.weight", "", ""),
    ("transformer.wpe.weight", "wpe.weight", "", ""),
    ("transformer.ln_f.weight", "ln_f.weight", "", ""),
    ("transformer.ln_f.bias", "ln_f.bias", "", ""),
    ("lm_head.weight", "lm_head.weight", "", "untied"),
]
LAYER_KEYS: list[Row] = [
    *[(f"transformer.h.{{i}}.{p}.{k}", f"blocks.{{i}}.{p}.{k}", "", "")
      for p in ("ln_1", "ln_2") for k in ("weight", "bias")],
    *[(f"transformer.h.{{i}}.{p}.weight", f"blocks.{{i}}.{p}.weight", "T", "")
      for p in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")],
    *[(f"transformer.h.{{i}}.{p}.bias", f"blocks.{{i}}.{p}.bias", "", "")
      for p in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")],
]


def to_config(cfg: GPTConfig, ids: SpecialIds) -> dict[str, Any]:
    return {"n_positions": cfg.context_len, "n_embd": cfg.d_model, "n_layer": cfg.n_layer,
            "n_head": cfg.n_head, "n_inner": cfg.ff_width(),
            "activation_function": "gelu" if cfg.mlp == "gelu_exact" else "gelu_new",
            "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
            "layer_norm_epsilon": cfg.norm_eps, "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
            "bos_token_id": ids.bos, "eos_token_id": ids.eos}


def from_config(hf: dict[str, Any], source: str) -> GPTConfig:
    require(hf, "activation_function", ("gelu_new", "gelu_pytorch_tanh", "gelu"), source, "gelu_new")
    require(hf, "scale_attn_by_inverse_layer_idx", False, source, False)
    require(hf, "scale_attn_weights", True, source, True)
    require(hf, "add_cross_attention", False, source, False)
    return GPTConfig(
        vocab_size=hf["vocab_size"], context_len=hf.get("n_positions", 1024), n_layer=hf["n_layer"],
        n_head=hf["n_head"], d_model=hf["n_embd"], d_ff=hf.get("n_inner") or 0, pos="learned",
        norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        mlp="gelu_exact" if hf.get("activation_function") == "gelu" else "gelu", bias=True,
        dropout=hf.get("resid_pdrop", 0.0), tie_embeddings=hf.get("tie_word_embeddings", True),
        init_std=hf.get("initializer_range", 0.02))


FAMILY = Family(
    model_type="gpt2", lm="GPT2LMHeadModel", classifier="GPT2ForSequenceClassification",
    base_prefix="transformer.", keys=KEYS, layer_keys=LAYER_KEYS,
    classifier_head=[("score.weight", "head.weight", "", "")], pooling="last", to_config=to_config,
    from_config=from_config,
    default_specials={"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"})
