"""Hugging Face interop: lmforge runs <-> `transformers` folders. The only module that knows HF names.

Each family is a declarative key map: rows of (HF name, lmforge name, how, when), with `{i}` standing
for the layer index. `how` says how a tensor changes on the way out (the inverse is applied on the way
in): "" copies it, "T" transposes it (GPT-2 stores linear weights as Conv1D, (in, out)), and "q", "k",
"v" take one third of lmforge's fused c_attn along the output dimension. `when` names the config
condition under which the row exists ("bias", "untied", "swiglu", "types"), or is "" for always.

| lmforge model                                             | HF class                          |
| --------------------------------------------------------- | --------------------------------- |
| gpt, pos=learned, norm=layernorm, mlp=gelu, bias=true     | GPT2LMHeadModel                   |
| gpt, pos=rope, norm=rmsnorm, mlp=swiglu                    | LlamaForCausalLM                  |
| bert, pre_norm=false                                      | BertForMaskedLM                   |

Fine-tuned classifiers map to the same families' *ForSequenceClassification, both ways: the backbone's
rows under `backbone.` (no LM head) plus the classification head, id2label <-> label_map.json.

Anything else has no exact HF equivalent and is refused with the option named: an export that
silently changed the model's function would be worse than none.

Dimensions: C d_model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmforge.errors import LmforgeError
from lmforge.models import BertConfig, GPTConfig

Row = tuple[str, str, str, str]  # (hf name, lmforge name, how, when)

GPT2_KEYS: list[Row] = [
    ("transformer.wte.weight", "wte.weight", "", ""),
    ("transformer.wpe.weight", "wpe.weight", "", ""),
    ("transformer.ln_f.weight", "ln_f.weight", "", ""),
    ("transformer.ln_f.bias", "ln_f.bias", "", ""),
    ("lm_head.weight", "lm_head.weight", "", "untied"),
]
GPT2_LAYER_KEYS: list[Row] = [
    *[(f"transformer.h.{{i}}.{p}.{k}", f"blocks.{{i}}.{p}.{k}", "", "")
      for p in ("ln_1", "ln_2") for k in ("weight", "bias")],
    *[(f"transformer.h.{{i}}.{p}.weight", f"blocks.{{i}}.{p}.weight", "T", "")
      for p in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")],
    *[(f"transformer.h.{{i}}.{p}.bias", f"blocks.{{i}}.{p}.bias", "", "")
      for p in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")],
]

LLAMA_KEYS: list[Row] = [
    ("model.embed_tokens.weight", "wte.weight", "", ""),
    ("model.norm.weight", "ln_f.weight", "", ""),
    ("lm_head.weight", "lm_head.weight", "", "untied"),
]
LLAMA_LAYER_KEYS: list[Row] = [
    ("model.layers.{i}.input_layernorm.weight", "blocks.{i}.ln_1.weight", "", ""),
    ("model.layers.{i}.post_attention_layernorm.weight", "blocks.{i}.ln_2.weight", "", ""),
    *[(f"model.layers.{{i}}.self_attn.{qkv}_proj.{k}", f"blocks.{{i}}.attn.c_attn.{k}", qkv,
       "" if k == "weight" else "bias") for qkv in "qkv" for k in ("weight", "bias")],
    *[(f"model.layers.{{i}}.{hf}.{k}", f"blocks.{{i}}.{ours}.{k}", "", "" if k == "weight" else "bias")
      for hf, ours in (("self_attn.o_proj", "attn.c_proj"), ("mlp.gate_proj", "mlp.c_gate"),
                       ("mlp.up_proj", "mlp.c_fc"), ("mlp.down_proj", "mlp.c_proj"))
      for k in ("weight", "bias")],
]

BERT_KEYS: list[Row] = [
    ("bert.embeddings.word_embeddings.weight", "word_embeddings.weight", "", ""),
    ("bert.embeddings.position_embeddings.weight", "position_embeddings.weight", "", ""),
    ("bert.embeddings.token_type_embeddings.weight", "token_type_embeddings.weight", "", "types"),
    ("bert.embeddings.LayerNorm.weight", "emb_norm.weight", "", ""),
    ("bert.embeddings.LayerNorm.bias", "emb_norm.bias", "", ""),
    ("bert.pooler.dense.weight", "pooler.weight", "", ""),
    ("bert.pooler.dense.bias", "pooler.bias", "", ""),
    ("cls.predictions.transform.dense.weight", "head_dense.weight", "", ""),
    ("cls.predictions.transform.dense.bias", "head_dense.bias", "", ""),
    ("cls.predictions.transform.LayerNorm.weight", "head_norm.weight", "", ""),
    ("cls.predictions.transform.LayerNorm.bias", "head_norm.bias", "", ""),
    ("cls.predictions.bias", "decoder.bias", "", ""),
    ("cls.predictions.decoder.weight", "decoder.weight", "", "untied"),
]
BERT_LAYER_KEYS: list[Row] = [
    *[(f"bert.encoder.layer.{{i}}.{hf}.{k}", f"blocks.{{i}}.{ours}.{k}", "", "")
      for hf, ours in (("attention.self.query", "attn.query"), ("attention.self.key", "attn.key"),
                       ("attention.self.value", "attn.value"), ("attention.output.dense", "attn.out"),
                       ("attention.output.LayerNorm", "ln_attn"), ("intermediate.dense", "mlp.fc1"),
                       ("output.dense", "mlp.fc2"), ("output.LayerNorm", "ln_mlp"))
      for k in ("weight", "bias")],
]

FAMILIES: dict[str, dict[str, Any]] = {
    "gpt2": {"keys": GPT2_KEYS, "layer_keys": GPT2_LAYER_KEYS, "lm": "GPT2LMHeadModel",
             "base_prefix": "transformer."},
    "llama": {"keys": LLAMA_KEYS, "layer_keys": LLAMA_LAYER_KEYS, "lm": "LlamaForCausalLM",
              "base_prefix": "model."},
    "bert": {"keys": BERT_KEYS, "layer_keys": BERT_LAYER_KEYS, "lm": "BertForMaskedLM",
             "base_prefix": "bert."},
}

# Tensors a HF checkpoint may hold that lmforge derives or does not have (buffers, the NSP head).
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq", "embeddings.position_ids",
                    "cls.seq_relationship.weight", "cls.seq_relationship.bias",
                    "cls.predictions.decoder.bias")
# Tensors an HF save may leave out; lmforge keeps its fresh initialisation for them.
OPTIONAL_ON_IMPORT = ("pooler.weight", "pooler.bias")


# ----------------------------------------------------------------------------------------------------
# Which family


def family_for(cfg: GPTConfig | BertConfig) -> str:
    """The HF family that computes exactly what `cfg` does, or a LmforgeError naming the option."""
    if cfg.kind == "bert":
        if cfg.pre_norm:
            raise LmforgeError("model.pre_norm = true has no Hugging Face equivalent for BERT "
                               "(BertForMaskedLM is post-norm): export is not possible; retrain with "
                               "pre_norm = false")
        return "bert"
    if cfg.kind != "gpt":
        raise LmforgeError(f"model.kind = {cfg.kind!r} has no Hugging Face export: only gpt and bert runs "
                           "can be exported")
    if cfg.pos == "learned":
        family, need = "GPT-2", {"norm": "layernorm", "mlp": "gelu", "bias": True}
    else:
        family, need = "Llama", {"norm": "rmsnorm", "mlp": "swiglu"}
    for key, value in need.items():
        got = getattr(cfg, key)
        if got != value:
            other = "Llama" if family == "GPT-2" else "GPT-2"
            raise LmforgeError(f"model.{key} = {_toml(got)} has no Hugging Face equivalent for {family} "
                               f"(model.pos = {_toml(cfg.pos)}) or {other}: export is not possible; "
                               f"retrain with {key} = {_toml(value)}")
    return "gpt2" if family == "GPT-2" else "llama"


def _toml(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else json.dumps(v)


def _active(when: str, cfg: GPTConfig | BertConfig) -> bool:
    if when == "bias":
        return bool(getattr(cfg, "bias", True))
    if when == "untied":
        return not cfg.tie_embeddings
    if when == "types":
        return True  # BERT always has the table in HF; lmforge's type_vocab_size=0 maps to one zero row
    return True


def key_map(family: str, cfg: GPTConfig | BertConfig) -> list[Row]:
    """The rows of `family` that exist for `cfg`, with layer indices filled in."""
    spec = FAMILIES[family]
    rows = [r for r in spec["keys"] if _active(r[3], cfg)]
    for i in range(cfg.n_layer):
        rows += [(hf.format(i=i), ours.format(i=i), how, when)
                 for hf, ours, how, when in spec["layer_keys"] if _active(when, cfg)]
    return rows


# Sequence classifiers (lmforge.models.classifier): the base model's rows under `backbone.`, the
# language-model head left out (HF classifiers have none), and the classification head.
CLASSIFIER_HEADS: dict[str, list[Row]] = {
    "gpt2": [("score.weight", "head.weight", "", "")],
    "llama": [("score.weight", "head.weight", "", "")],
    "bert": [("classifier.weight", "head.weight", "", ""), ("classifier.bias", "head.bias", "", "")],
}
CLASSIFIER_POOLING = {"gpt2": "last", "llama": "last", "bert": "cls"}
LM_HEAD_ROOTS = ("lm_head.", "cls.")


def classifier_key_map(family: str, cfg: GPTConfig | BertConfig) -> list[Row]:
    base = [(hf, f"backbone.{ours}", how, when) for hf, ours, how, when in key_map(family, cfg)
            if not hf.startswith(LM_HEAD_ROOTS)]
    return base + CLASSIFIER_HEADS[family]


def is_classifier(hf_cfg: dict[str, Any]) -> bool:
    """Whether a config.json describes a *ForSequenceClassification checkpoint."""
    return any(str(a).endswith("ForSequenceClassification") for a in hf_cfg.get("architectures") or ())


def classifier_labels(hf_cfg: dict[str, Any], num_rows: int, source: str) -> list[str]:
    """The label names in id order, from id2label (HF's LABEL_i when absent), checked against the head."""
    if hf_cfg.get("problem_type") not in (None, "single_label_classification"):
        raise LmforgeError(f"{source}: config.json has problem_type = {_toml(hf_cfg['problem_type'])}: lmforge "
                           "classifiers pick one label per text (single_label_classification): import "
                           "is not possible")
    if num_rows < 2:
        raise LmforgeError(f"{source}: the classification head has {num_rows} output(s): lmforge classifiers "
                           "need at least 2 labels (regression heads cannot be imported)")
    raw = hf_cfg.get("id2label") or {str(i): f"LABEL_{i}" for i in range(num_rows)}
    try:
        by_id = {int(k): str(v) for k, v in raw.items()}
    except (AttributeError, ValueError):
        raise LmforgeError(f"{source}: config.json id2label must map label ids (\"0\", \"1\", ...) to "
                           "names") from None
    if sorted(by_id) != list(range(num_rows)):
        raise LmforgeError(f"{source}: config.json id2label has ids {sorted(by_id)} but the classification "
                           f"head has {num_rows} outputs: give one name for each id 0..{num_rows - 1}")
    labels = [by_id[i] for i in range(num_rows)]
    if len(set(labels)) != len(labels):
        raise LmforgeError(f"{source}: config.json id2label repeats a label name ({labels}): make the "
                           "names unique")
    return labels


def classifier_arch(family: str) -> str:
    return FAMILIES[family]["lm"].replace("LMHeadModel", "ForSequenceClassification").replace(
        "ForCausalLM", "ForSequenceClassification").replace("ForMaskedLM", "ForSequenceClassification")


# ----------------------------------------------------------------------------------------------------
# State dicts


def to_hf_state(state: dict[str, torch.Tensor], cfg: GPTConfig | BertConfig,
                family: str, rows: list[Row] | None = None) -> dict[str, torch.Tensor]:
    """lmforge state dict -> HF tensors (tied matrices once, under the name HF keeps)."""
    out: dict[str, torch.Tensor] = {}
    for hf, ours, how, _ in rows if rows is not None else key_map(family, cfg):
        if ours.endswith("token_type_embeddings.weight") and cfg.type_vocab_size == 0:
            t = torch.zeros(1, cfg.d_model, dtype=state["word_embeddings.weight"].dtype)  # adds nothing
        else:
            t = state[ours]
        if how == "T":
            t = t.t()
        elif how in ("q", "k", "v"):
            t = t.chunk(3, dim=0)["qkv".index(how)]
        out[hf] = t.detach().contiguous().clone()
    return out


def from_hf_state(tensors: dict[str, torch.Tensor], cfg: GPTConfig | BertConfig, family: str,
                  source: str, rows: list[Row] | None = None, arch: str = "") -> dict[str, torch.Tensor]:
    """HF tensors -> lmforge state dict (by `rows`, default the LM's); missing tensors are named."""
    tensors = _normalise_names(tensors, family)
    state: dict[str, torch.Tensor] = {}
    fused: dict[str, list[torch.Tensor | None]] = {}
    for hf, ours, how, _ in rows if rows is not None else key_map(family, cfg):
        if ours.endswith("token_type_embeddings.weight") and cfg.type_vocab_size == 0:
            continue
        if hf not in tensors:
            if ours.endswith(OPTIONAL_ON_IMPORT):
                continue
            raise LmforgeError(f"{source}: tensor {hf!r} is missing; is this a complete "
                               f"{arch or FAMILIES[family]['lm']} checkpoint?")
        t = tensors[hf]
        if how == "T":
            state[ours] = t.t().contiguous()
        elif how in ("q", "k", "v"):
            fused.setdefault(ours, [None, None, None])["qkv".index(how)] = t
        else:
            state[ours] = t
    for ours, parts in fused.items():
        state[ours] = torch.cat(parts, dim=0)
    return state


def _normalise_names(tensors: dict[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """Accept checkpoints saved from the bare base model (no `transformer.` prefix) and old gamma/beta."""
    prefix = FAMILIES[family]["base_prefix"]
    head_roots = ("lm_head.", "cls.", "score.", "classifier.")
    out = {}
    for name, t in tensors.items():
        if name.endswith(".gamma"):
            name = name[: -len("gamma")] + "weight"
        elif name.endswith(".beta"):
            name = name[: -len("beta")] + "bias"
        if not name.startswith(prefix) and not name.startswith(head_roots):
            name = prefix + name
        out[name] = t
    return out


def unused_tensors(tensors: dict[str, torch.Tensor], cfg: GPTConfig | BertConfig, family: str,
                   rows: list[Row] | None = None) -> list[str]:
    """HF tensors that no row of the key map (`rows`, default the LM's) reads, known buffers aside."""
    known = {r[0] for r in (rows if rows is not None else key_map(family, cfg))}
    names = _normalise_names(tensors, family)
    return sorted(n for n in names if n not in known and not n.endswith(IGNORED_SUFFIXES))


# ----------------------------------------------------------------------------------------------------
# Configs


@dataclass(frozen=True)
class SpecialIds:
    bos: int
    eos: int
    pad: int


def to_hf_config(cfg: GPTConfig | BertConfig, family: str, ids: SpecialIds) -> dict[str, Any]:
    """config.json for the exported folder."""
    common = {"architectures": [FAMILIES[family]["lm"]], "model_type": family, "vocab_size": cfg.vocab_size,
              "initializer_range": cfg.init_std, "tie_word_embeddings": cfg.tie_embeddings,
              "pad_token_id": ids.pad, "dtype": "float32"}
    if family == "gpt2":
        return {**common, "n_positions": cfg.context_len, "n_embd": cfg.d_model, "n_layer": cfg.n_layer,
                "n_head": cfg.n_head, "n_inner": cfg.ff_width(), "activation_function": "gelu_new",
                "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
                "layer_norm_epsilon": cfg.norm_eps, "scale_attn_weights": True,
                "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
                "bos_token_id": ids.bos, "eos_token_id": ids.eos}
    if family == "llama":
        rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
        return {**common, "hidden_size": cfg.d_model, "intermediate_size": cfg.ff_width(),
                "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
                "num_key_value_heads": cfg.n_head, "head_dim": cfg.d_model // cfg.n_head,
                "hidden_act": "silu",
                "max_position_embeddings": cfg.context_len, "rms_norm_eps": cfg.norm_eps,
                "rope_parameters": rope, "rope_theta": cfg.rope_theta,  # the latter for transformers 4.x
                "attention_bias": cfg.bias, "mlp_bias": cfg.bias, "attention_dropout": cfg.dropout,
                "bos_token_id": ids.bos, "eos_token_id": ids.eos}
    return {**common, "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layer,
            "num_attention_heads": cfg.n_head, "intermediate_size": cfg.ff_width(), "hidden_act": "gelu",
            "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.attn_dropout,
            "max_position_embeddings": cfg.context_len, "type_vocab_size": max(1, cfg.type_vocab_size),
            "layer_norm_eps": cfg.norm_eps, "position_embedding_type": "absolute", "is_decoder": False}


def _require(hf: dict[str, Any], key: str, ok: Any, source: str, default: Any = None) -> None:
    value = hf.get(key, default)
    allowed = ok if isinstance(ok, tuple) else (ok,)
    if value not in allowed:
        needs = " or ".join(map(_toml, allowed))
        raise LmforgeError(f"{source}: config.json has {key} = {_toml(value)}, which lmforge's "
                           f"{hf.get('model_type')} cannot reproduce (needs {needs}): import is not possible")


def from_hf_config(hf: dict[str, Any], source: str) -> tuple[str, GPTConfig | BertConfig]:
    """(family, lmforge model config) for a config.json, refusing options lmforge cannot reproduce."""
    family = hf.get("model_type")
    if family == "gpt2":
        _require(hf, "activation_function", ("gelu_new", "gelu_pytorch_tanh"), source, "gelu_new")
        _require(hf, "scale_attn_by_inverse_layer_idx", False, source, False)
        _require(hf, "scale_attn_weights", True, source, True)
        _require(hf, "add_cross_attention", False, source, False)
        return family, GPTConfig(
            vocab_size=hf["vocab_size"], context_len=hf.get("n_positions", 1024), n_layer=hf["n_layer"],
            n_head=hf["n_head"], d_model=hf["n_embd"], d_ff=hf.get("n_inner") or 0, pos="learned",
            norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5), mlp="gelu", bias=True,
            dropout=hf.get("resid_pdrop", 0.0), tie_embeddings=hf.get("tie_word_embeddings", True),
            init_std=hf.get("initializer_range", 0.02))
    if family == "llama":
        heads = hf["num_attention_heads"]
        _require(hf, "hidden_act", "silu", source, "silu")
        _require(hf, "num_key_value_heads", heads, source, heads)
        _require(hf, "head_dim", hf["hidden_size"] // heads, source, hf["hidden_size"] // heads)
        _require(hf, "mlp_bias", hf.get("attention_bias", False), source, False)
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            kind = _toml(rope.get("rope_type", rope.get("type")))
            raise LmforgeError(f"{source}: config.json has rope_type = {kind}: lmforge only has plain RoPE "
                               "(rope_type = \"default\"): import is not possible")
        return family, GPTConfig(
            vocab_size=hf["vocab_size"], context_len=hf.get("max_position_embeddings", 2048),
            n_layer=hf["num_hidden_layers"], n_head=heads, d_model=hf["hidden_size"],
            d_ff=hf["intermediate_size"], pos="rope",
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 1e4))),
            norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6), mlp="swiglu",
            bias=bool(hf.get("attention_bias", False)), dropout=hf.get("attention_dropout", 0.0),
            tie_embeddings=hf.get("tie_word_embeddings", False), init_std=hf.get("initializer_range", 0.02))
    if family == "bert":
        _require(hf, "position_embedding_type", "absolute", source, "absolute")
        _require(hf, "hidden_act", "gelu", source, "gelu")
        _require(hf, "is_decoder", False, source, False)
        _require(hf, "add_cross_attention", False, source, False)
        return family, BertConfig(
            vocab_size=hf["vocab_size"], context_len=hf.get("max_position_embeddings", 512),
            n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"], d_model=hf["hidden_size"],
            d_ff=hf["intermediate_size"], type_vocab_size=hf.get("type_vocab_size", 2), pre_norm=False,
            norm_eps=hf.get("layer_norm_eps", 1e-12), dropout=hf.get("hidden_dropout_prob", 0.1),
            attn_dropout=hf.get("attention_probs_dropout_prob", 0.1),
            tie_embeddings=hf.get("tie_word_embeddings", True), init_std=hf.get("initializer_range", 0.02))
    raise LmforgeError(f"{source}: config.json has model_type = {_toml(family)}: lmforge imports gpt2, llama "
                       "and bert checkpoints only")


def read_hf_config(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise LmforgeError(f"{folder} has no config.json: give a folder saved by transformers' "
                           "save_pretrained")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LmforgeError(f"{path}: invalid JSON ({e})") from None
