"""Llama and Qwen2: lmforge's GPT with RoPE, RMSNorm and SwiGLU (grouped-query attention through
`model.n_kv_head`; Qwen2's q/k/v biases through `model.qkv_bias`) <-> LlamaForCausalLM / Qwen2ForCausalLM.

A `head_dim` other than hidden_size / num_attention_heads maps to `model.head_dim` both ways. What
lmforge cannot compute exactly is refused by name: rope scaling variants, a sliding window shorter
than the context, other activations.
"""

from __future__ import annotations

from typing import Any

from lmforge.errors import LmforgeError
from lmforge.interop.family import Family, Row, SpecialIds, require, toml
from lmforge.models import GPTConfig

KEYS: list[Row] = [
    ("model.embed_tokens.weight", "wte.weight", "", ""),
    ("model.norm.weight", "ln_f.weight", "", ""),
    ("lm_head.weight", "lm_head.weight", "", "untied"),
]
LAYER_KEYS: list[Row] = [
    ("model.layers.{i}.input_layernorm.weight", "blocks.{i}.ln_1.weight", "", ""),
    ("model.layers.{i}.post_attention_layernorm.weight", "blocks.{i}.ln_2.weight", "", ""),
    *[(f"model.layers.{{i}}.self_attn.{qkv}_proj.{k}", f"blocks.{{i}}.attn.c_attn.{k}", qkv,
       "" if k == "weight" else "qkv_bias") for qkv in "qkv" for k in ("weight", "bias")],
    *[(f"model.layers.{{i}}.{hf}.{k}", f"blocks.{{i}}.{ours}.{k}", "", "" if k == "weight" else "bias")
      for hf, ours in (("self_attn.o_proj", "attn.c_proj"), ("mlp.gate_proj", "mlp.c_gate"),
                       ("mlp.up_proj", "mlp.c_fc"), ("mlp.down_proj", "mlp.c_proj"))
      for k in ("weight", "bias")],
]


def _rope(cfg: GPTConfig) -> dict[str, Any]:
    return {"rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            "rope_theta": cfg.rope_theta}  # the latter for transformers 4.x


def _common(cfg: GPTConfig, ids: SpecialIds) -> dict[str, Any]:
    return {"hidden_size": cfg.d_model, "intermediate_size": cfg.ff_width(), "num_hidden_layers": cfg.n_layer,
            "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.kv_heads(),
            "head_dim": cfg.head_size(), "hidden_act": "silu", "max_position_embeddings": cfg.context_len,
            "rms_norm_eps": cfg.norm_eps, **_rope(cfg), "attention_dropout": cfg.dropout,
            "bos_token_id": ids.bos, "eos_token_id": ids.eos}


def llama_config(cfg: GPTConfig, ids: SpecialIds) -> dict[str, Any]:
    return {**_common(cfg, ids), "attention_bias": cfg.bias, "mlp_bias": cfg.bias}


def qwen2_config(cfg: GPTConfig, ids: SpecialIds) -> dict[str, Any]:
    return {**_common(cfg, ids), "use_sliding_window": False, "sliding_window": cfg.context_len,
            "max_window_layers": cfg.n_layer}


def _shared(hf: dict[str, Any], source: str) -> dict[str, Any]:
    heads = hf["num_attention_heads"]
    require(hf, "hidden_act", "silu", source, "silu")
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    head_dim = 0 if head_dim * heads == hf["hidden_size"] else head_dim  # 0: the default, d_model // n_head
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        kind = toml(rope.get("rope_type", rope.get("type")))
        raise LmforgeError(f"{source}: config.json has rope_type = {kind}: lmforge only has plain RoPE "
                           "(rope_type = \"default\"): import is not possible")
    kv = hf.get("num_key_value_heads") or heads
    return dict(vocab_size=hf["vocab_size"], context_len=hf.get("max_position_embeddings", 2048),
                n_layer=hf["num_hidden_layers"], n_head=heads, n_kv_head=0 if kv == heads else kv,
                d_model=hf["hidden_size"], head_dim=head_dim, d_ff=hf["intermediate_size"], pos="rope",
                rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 1e4))), norm="rmsnorm",
                norm_eps=hf.get("rms_norm_eps", 1e-6), mlp="swiglu", dropout=hf.get("attention_dropout", 0.0),
                init_std=hf.get("initializer_range", 0.02))


def llama_from(hf: dict[str, Any], source: str) -> GPTConfig:
    require(hf, "mlp_bias", hf.get("attention_bias", False), source, False)
    return GPTConfig(**_shared(hf, source), bias=bool(hf.get("attention_bias", False)),
                     tie_embeddings=hf.get("tie_word_embeddings", False))


def qwen2_from(hf: dict[str, Any], source: str) -> GPTConfig:
    window, context = hf.get("sliding_window"), hf.get("max_position_embeddings", 2048)
    if hf.get("use_sliding_window", False) and window is not None and window < context:
        raise LmforgeError(f"{source}: config.json has use_sliding_window = true with sliding_window = {window} "
                           f"< max_position_embeddings = {context}: lmforge attends over the whole context: "
                           "import is not possible")
    return GPTConfig(**_shared(hf, source), bias=False, qkv_bias=True,
                     tie_embeddings=hf.get("tie_word_embeddings", False))


LLAMA = Family(
    model_type="llama", lm="LlamaForCausalLM", classifier="LlamaForSequenceClassification", base_prefix="model.",
    keys=KEYS, layer_keys=LAYER_KEYS, classifier_head=[("score.weight", "head.weight", "", "")], pooling="last",
    to_config=llama_config, from_config=llama_from,
    default_specials={"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})

QWEN2 = Family(
    model_type="qwen2", lm="Qwen2ForCausalLM", classifier="Qwen2ForSequenceClassification", base_prefix="model.",
    keys=KEYS, layer_keys=LAYER_KEYS, classifier_head=[("score.weight", "head.weight", "", "")], pooling="last",
    to_config=qwen2_config, from_config=qwen2_from,
    default_specials={"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"})
