"""Model registry: `build_model(cfg)` picks the class from `cfg.kind`.

Every model is a plain `nn.Module` with `.config`, `num_params(non_embedding=False)` and
`flops_per_token(seq_len)`; compile and parallel wrappers are applied to it afterwards.
"""

from __future__ import annotations

import torch.nn as nn

from lmforge.config import ModelConfig
from lmforge.errors import LmforgeError
from lmforge.models.bert import Bert
from lmforge.models.gpt import GPT, KVCache
from lmforge.models.rnn import RNNLM

MODELS: dict[str, type[nn.Module]] = {"gpt": GPT, "bert": Bert, "rnn": RNNLM}

__all__ = ["MODELS", "GPT", "Bert", "RNNLM", "KVCache", "build_model"]


def build_model(cfg: ModelConfig) -> nn.Module:
    """A freshly initialised model for `cfg` (seed torch first for reproducible weights)."""
    if cfg.kind not in MODELS:
        raise LmforgeError(f"config key 'model.kind' = {cfg.kind!r} is not one of {', '.join(MODELS)}")
    if cfg.vocab_size <= 0:
        raise LmforgeError("config key 'model.vocab_size' is 0: set it, or build the model from a run whose "
                           "tokenizer fills it in")
    return MODELS[cfg.kind](cfg)
