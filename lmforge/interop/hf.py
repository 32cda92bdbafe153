"""Hugging Face interop: lmforge runs <-> `transformers` folders. The only place that knows HF names.

Each family (gpt2.py, llama.py, bert.py) is a declarative key map plus two config translations
(family.py). This module picks the family, renames state dicts both ways and reads config.json:

| lmforge model                                               | HF families                                |
| ----------------------------------------------------------- | ------------------------------------------ |
| gpt, pos=learned, norm=layernorm, mlp=gelu, bias=true       | GPT2LMHeadModel                            |
| gpt, pos=rope, norm=rmsnorm, mlp=swiglu (n_kv_head: GQA)    | LlamaForCausalLM; Qwen2 (qkv_bias)         |
| bert, post-norm                                             | BertForMaskedLM                            |
| bert, position_offset = pad + 1, pair_style = roberta       | (XLM-)RobertaForMaskedLM                   |
| bert, type_vocab_size = 0, pooler_activation = relu         | DistilBertForMaskedLM                      |
| t5 (gated-GELU, v1.1 layout)                                | T5ForConditionalGeneration                 |
| electra (the discriminator; export only)                    | ElectraForPreTraining                      |

Fine-tuned classifiers map to the same families' *ForSequenceClassification, both ways: the backbone's
rows under `backbone.` (no LM head) plus the classification head, id2label <-> label_map.json.
A checkpoint may come without its LM head (BertModel, GPT2Model, LlamaModel): the head is then
initialised, as `from_pretrained` does, and the import says which tensors are new.

Anything else has no exact HF equivalent and is refused with the option named: an export that
silently changed the model's function would be worse than none. A head size other than d_model / n_head
(`model.head_dim`, left by `lmforge compress prune --heads`) exports only to Llama and Qwen2, whose
configs carry `head_dim`; GPT-2 and the BERT family derive it from hidden_size / heads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lmforge.errors import LmforgeError
from lmforge.interop import electra
from lmforge.interop.bert import BERT, DISTILBERT, ROBERTA, XLM_ROBERTA
from lmforge.interop.family import Family, Row, SpecialIds, toml
from lmforge.interop.gpt2 import FAMILY as GPT2
from lmforge.interop.llama import LLAMA, QWEN2
from lmforge.interop.t5 import FAMILY as T5
from lmforge.models import BertConfig, GPTConfig

FAMILIES: dict[str, Family] = {f.model_type: f for f in (GPT2, LLAMA, QWEN2, BERT, ROBERTA, XLM_ROBERTA, DISTILBERT,
                                                         T5)}

__all__ = ["FAMILIES", "Family", "Row", "SpecialIds", "family_for", "key_map", "to_hf_state", "from_hf_state"]

DERIVED_HEAD_SIZE = ("gpt2", "bert", "roberta", "xlm-roberta", "distilbert", "electra")
"""Families whose head size is hidden_size / heads (no head_dim key in their config)."""

# Tensors a HF checkpoint may hold that lmforge derives or does not have (buffers, the NSP head, and the
# decoder biases that RoBERTa and BERT also keep under a second name).
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq", "embeddings.position_ids",
                    "embeddings.token_type_ids", "cls.seq_relationship.weight", "cls.seq_relationship.bias",
                    "cls.predictions.decoder.bias", "lm_head.decoder.bias", "encoder.embed_tokens.weight",
                    "decoder.embed_tokens.weight")
# Tensors an HF save may leave out; lmforge keeps its fresh initialisation for them.
OPTIONAL_ON_IMPORT = ("pooler.weight", "pooler.bias")


# ----------------------------------------------------------------------------------------------------
# Which family


def family_for(cfg: GPTConfig | BertConfig) -> Family:
    """The HF family that computes exactly what `cfg` does, or a LmforgeError naming the option."""
    family = _family_for(cfg)
    if family.model_type in DERIVED_HEAD_SIZE and cfg.n_head * cfg.head_size() != cfg.d_model:
        raise LmforgeError(f"model.head_dim = {cfg.head_dim} with n_head = {cfg.n_head} (attention "
                           f"{cfg.n_head * cfg.head_size()} wide, d_model {cfg.d_model}) has no Hugging Face "
                           f"equivalent for {family.lm}, which derives the head size from the hidden size / heads: "
                           "export is not possible; prune with --heads 0 (FFN neurons only)")
    return family


def _family_for(cfg: GPTConfig | BertConfig) -> Family:
    if cfg.kind == "bert":
        if cfg.pre_norm:
            raise LmforgeError("model.pre_norm = true has no Hugging Face equivalent for BERT "
                               "(BertForMaskedLM is post-norm): export is not possible; retrain with "
                               "pre_norm = false")
        if cfg.pair_style == "roberta":
            return ROBERTA
        if cfg.pooler_activation == "relu":
            return DISTILBERT
        if cfg.position_offset:
            raise LmforgeError(f"model.position_offset = {cfg.position_offset} has no Hugging Face equivalent "
                               "for BERT: export is not possible")
        return BERT
    if cfg.kind == "t5":
        return T5
    if cfg.kind == "electra":
        return electra.family_for(cfg)
    if cfg.kind != "gpt":
        raise LmforgeError(f"model.kind = {cfg.kind!r} has no Hugging Face export: only gpt, bert, t5 and electra "
                           "runs can be exported")
    if cfg.pos == "learned":
        family, need = "GPT-2", {"norm": "layernorm", "mlp": ("gelu", "gelu_exact"), "bias": True, "n_kv_head": 0}
    else:
        family, need = "Llama", {"norm": "rmsnorm", "mlp": "swiglu"}
    for key, value in need.items():
        got, allowed = getattr(cfg, key), value if isinstance(value, tuple) else (value,)
        if got not in allowed:
            other = "Llama" if family == "GPT-2" else "GPT-2"
            raise LmforgeError(f"model.{key} = {toml(got)} has no Hugging Face equivalent for {family} "
                               f"(model.pos = {toml(cfg.pos)}) or {other}: export is not possible; "
                               f"retrain with {key} = {toml(allowed[0])}")
    if family == "GPT-2":
        return GPT2
    if cfg.qkv_bias and not cfg.bias:
        return QWEN2
    return LLAMA


def _active(when: str, cfg: GPTConfig | BertConfig) -> bool:
    if when == "bias":
        return bool(getattr(cfg, "bias", True))
    if when == "qkv_bias":
        return bool(getattr(cfg, "bias", True) or getattr(cfg, "qkv_bias", False))
    if when == "untied":
        return not cfg.tie_embeddings
    return True  # "types": BERT always has the table in HF; type_vocab_size=0 maps to one zero row


def key_map(family: Family, cfg: GPTConfig | BertConfig) -> list[Row]:
    """The rows of `family` that exist for `cfg`, with layer indices filled in."""
    rows = [r for r in family.keys if _active(r[3], cfg)]
    if family.layer_rows is not None:
        return rows + [r for r in family.layer_rows(cfg) if _active(r[3], cfg)]
    for i in range(cfg.n_layer):
        rows += [(hf.format(i=i), ours.format(i=i), how, when)
                 for hf, ours, how, when in family.layer_keys if _active(when, cfg)]
    return rows


def classifier_key_map(family: Family, cfg: GPTConfig | BertConfig) -> list[Row]:
    """A sequence classifier's rows: the backbone's under `backbone.` without the LM head, then the head
    (which may own lmforge's pooler: RoBERTa's classifier.dense, DistilBERT's pre_classifier)."""
    owned = {ours for _, ours, _, _ in family.classifier_head}
    base = [(hf, f"backbone.{ours}", how, when) for hf, ours, how, when in key_map(family, cfg)
            if not hf.startswith(family.head_roots) and f"backbone.{ours}" not in owned]
    return base + family.classifier_head


def is_classifier(hf_cfg: dict[str, Any]) -> bool:
    """Whether a config.json describes a *ForSequenceClassification checkpoint."""
    return any(str(a).endswith("ForSequenceClassification") for a in hf_cfg.get("architectures") or ())


def classifier_labels(hf_cfg: dict[str, Any], num_rows: int, source: str) -> list[str]:
    """The label names in id order, from id2label (HF's LABEL_i when absent), checked against the head."""
    if hf_cfg.get("problem_type") not in (None, "single_label_classification"):
        raise LmforgeError(f"{source}: config.json has problem_type = {toml(hf_cfg['problem_type'])}: lmforge "
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


# ----------------------------------------------------------------------------------------------------
# State dicts


def _qkv_sizes(cfg: GPTConfig) -> list[int]:
    hs = cfg.head_size()
    return [cfg.n_head * hs, cfg.kv_heads() * hs, cfg.kv_heads() * hs]


def to_hf_state(state: dict[str, torch.Tensor], cfg: GPTConfig | BertConfig, family: Family,
                rows: list[Row] | None = None) -> dict[str, torch.Tensor]:
    """lmforge state dict -> HF tensors (tied matrices once, under the name HF keeps)."""
    out: dict[str, torch.Tensor] = {}
    for hf, ours, how, _ in rows if rows is not None else key_map(family, cfg):
        if ours.endswith("token_type_embeddings.weight") and cfg.type_vocab_size == 0:
            t = torch.zeros(1, cfg.d_model, dtype=state[ours.replace("token_type", "word")].dtype)  # adds nothing
        else:
            t = state[ours]
        if how == "T":
            t = t.t()
        elif how in ("q", "k", "v"):
            t = t.split(_qkv_sizes(cfg), dim=0)["qkv".index(how)]
        out[hf] = t.detach().contiguous().clone()
    return out


def from_hf_state(tensors: dict[str, torch.Tensor], cfg: GPTConfig | BertConfig, family: Family,
                  source: str, rows: list[Row] | None = None, arch: str = "") -> dict[str, torch.Tensor]:
    """HF tensors -> lmforge state dict (by `rows`, default the LM's); missing tensors are named.

    A checkpoint without any LM-head tensor (a bare BertModel, GPT2Model, ...) leaves the head out of
    the state: the model keeps its fresh initialisation there. Part of a head is an error.
    """
    tensors = normalise_names(tensors, family)
    rows = rows if rows is not None else key_map(family, cfg)
    for name, same in family.tied_copies.items():
        if name not in tensors and same in tensors and any(r[0] == name for r in rows):
            tensors = {**tensors, name: tensors[same]}
    head = [r for r in rows if r[0].startswith(family.head_roots)]
    if head and not any(r[0] in tensors for r in head):
        rows = [r for r in rows if r not in head]
    state: dict[str, torch.Tensor] = {}
    fused: dict[str, list[torch.Tensor | None]] = {}
    for hf, ours, how, _ in rows:
        if ours.endswith("token_type_embeddings.weight") and cfg.type_vocab_size == 0:
            continue
        if hf not in tensors:
            if ours.endswith(OPTIONAL_ON_IMPORT):
                continue
            raise LmforgeError(f"{source}: tensor {hf!r} is missing; is this a complete "
                               f"{arch or family.lm} checkpoint?")
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


def normalise_names(tensors: dict[str, torch.Tensor], family: Family) -> dict[str, torch.Tensor]:
    """Accept checkpoints saved from the bare base model (no `bert.`/`transformer.` prefix) and old
    gamma/beta names."""
    prefix = family.base_prefix
    roots = (*family.head_roots, "score.", "classifier.", "pre_classifier.", "qa_outputs.")
    out = {}
    for name, t in tensors.items():
        if name.endswith(".gamma"):
            name = name[: -len("gamma")] + "weight"
        elif name.endswith(".beta"):
            name = name[: -len("beta")] + "bias"
        if not name.startswith(prefix) and not name.startswith(roots):
            name = prefix + name
        out[name] = t
    return out


def unused_tensors(tensors: dict[str, torch.Tensor], cfg: GPTConfig | BertConfig, family: Family,
                   rows: list[Row] | None = None) -> list[str]:
    """HF tensors that no row of the key map (`rows`, default the LM's) reads, known buffers aside."""
    known = {r[0] for r in (rows if rows is not None else key_map(family, cfg))}
    names = normalise_names(tensors, family)
    return sorted(n for n in names if n not in known and not n.endswith(IGNORED_SUFFIXES))


# ----------------------------------------------------------------------------------------------------
# Configs


def to_hf_config(cfg: GPTConfig | BertConfig, family: Family, ids: SpecialIds) -> dict[str, Any]:
    """config.json for the exported folder."""
    common = {"architectures": [family.lm], "model_type": family.model_type, "vocab_size": cfg.vocab_size,
              "initializer_range": cfg.init_std, "tie_word_embeddings": cfg.tie_embeddings,
              "pad_token_id": ids.pad, "dtype": "float32"}
    return {**common, **family.to_config(cfg, ids)}


def from_hf_config(hf: dict[str, Any], source: str) -> tuple[Family, GPTConfig | BertConfig]:
    """(family, lmforge model config) for a config.json, refusing options lmforge cannot reproduce."""
    family = FAMILIES.get(hf.get("model_type"))
    if family is None:
        raise LmforgeError(f"{source}: config.json has model_type = {toml(hf.get('model_type'))}: lmforge imports "
                           f"{', '.join(FAMILIES)} checkpoints")
    try:
        return family, family.from_config(hf, source)
    except KeyError as e:
        raise LmforgeError(f"{source}: config.json has no {e.args[0]!r}: is it a complete {family.model_type} "
                           "config?") from None


def read_hf_config(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise LmforgeError(f"{folder} has no config.json: give a folder saved by transformers' "
                           "save_pretrained")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LmforgeError(f"{path}: invalid JSON ({e})") from None
