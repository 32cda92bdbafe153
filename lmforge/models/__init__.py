"""Model registry and the backbone contract: `build_model(cfg)` picks the class from `cfg.kind`.

Every model is a plain `nn.Module` built from its config (the dataclass beside it in its file);
compile and parallel wrappers are applied to it afterwards. What heads, tasks, generation and export
rely on is this contract, so no code outside `models/` (and `interop/`, which maps names) tests a
model's kind:

| member | what it is |
| --- | --- |
| `config.hidden_size`, `config.max_positions` | width of the hidden states; longest input (None: any) |
| `config.input_format`, `config.token_types` | how texts and pairs are laid out (data/labeled.py); token types? |
| `hidden(input_ids, attention_mask, token_type_ids)` | final hidden states (B, T, C), no LM head |
| `pretraining_task` | its pretraining task: causal_lm, masked_lm, bptt, span_corruption, replaced_token_detection |
| `decoding` | how it generates: "kv_cache", "recurrent", "encoder_decoder", or None (it cannot) |
| `default_pooling`, `pool(h)` | "cls" (its [CLS] pooler, `pool`) or "last" (the last real token) |
| `lm_head_prefixes`, `pooler_prefixes` | parameter-name prefixes of the LM head's and the pooler's own tensors |
| `classifier_bias`, `classifier_dropout` | the sequence-classification head of its HF family |
| `layer_of(name)` | depth of a parameter: 0 embeddings, 1..n_layer blocks, n_layer + 1 top |
| `blocks` (T5: `encoder`, `decoder`; ELECTRA: both models') | its layers, `nn.ModuleList`s (FSDP shards each) |
| `num_params(non_embedding)`, `flops_per_token(seq_len)` | size and training cost |
| `recomputable_layers` | whether `runtime.activation_checkpointing` may recompute its layers in backward |

Fine-tuning takes `finetuned_part(cfg)` of a pretrained model: the model itself, except an ELECTRA
(`electra.py`), whose discriminator is fine-tuned as the BERT it is and whose generator served
pretraining only.

`pruning.py` says where each attention head and FFN neuron of a GPT or BERT block lives, for structured
pruning (compress/prune.py). `linear_ce.py` sums an output layer's cross-entropy without materialising the
logits (an RNNLM given labels, and a GPT given labels on a CPU in fp32).
"""

from __future__ import annotations

import torch.nn as nn

from lmforge.errors import LmforgeError
from lmforge.models.bert import Bert, BertConfig
from lmforge.models.electra import Electra, ElectraConfig
from lmforge.models.gpt import GPT, GPTConfig
from lmforge.models.kv_cache import KVCache
from lmforge.models.rnn import RNNLM, RNNConfig
from lmforge.models.t5 import T5, T5Config

ModelConfig = GPTConfig | BertConfig | RNNConfig | T5Config | ElectraConfig
"""The [model] section: whichever config its `kind` names."""

MODELS: dict[str, type[nn.Module]] = {"gpt": GPT, "bert": Bert, "rnn": RNNLM, "t5": T5, "electra": Electra}

__all__ = ["MODELS", "GPT", "GPTConfig", "Bert", "BertConfig", "RNNLM", "RNNConfig", "T5", "T5Config", "KVCache",
           "Electra", "ElectraConfig", "ModelConfig", "build_model", "finetuned_part", "model_class"]


def model_class(cfg: ModelConfig) -> type[nn.Module]:
    """The class `cfg` builds: its contract attributes can be read before building it."""
    if cfg.kind not in MODELS:
        raise LmforgeError(f"config key 'model.kind' = {cfg.kind!r} is not one of {', '.join(MODELS)}")
    return MODELS[cfg.kind]


def build_model(cfg: ModelConfig) -> nn.Module:
    """A freshly initialised model for `cfg` (seed torch first for reproducible weights)."""
    cls = model_class(cfg)
    if cfg.vocab_size <= 0:
        raise LmforgeError("config key 'model.vocab_size' is 0: set it, or build the model from a run whose "
                           "tokenizer fills it in")
    return cls(cfg)


def finetuned_part(cfg: ModelConfig) -> tuple[ModelConfig, str]:
    """What fine-tuning takes from a pretrained model of `cfg`: the config of the model it builds, and the
    name prefix of that model's tensors in the pretrained checkpoints. An ELECTRA is fine-tuned as its
    discriminator, a BERT under `discriminator.`; any other model as itself."""
    if cfg.kind == "electra":
        return cfg.discriminator(), "discriminator."
    return cfg, ""
