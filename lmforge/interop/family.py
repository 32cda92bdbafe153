"""What a Hugging Face model family is to lmforge: a declarative key map and two config translations.

A key map is rows of (HF name, lmforge name, how, when), with `{i}` standing for the layer index.
`how` says how a tensor changes on the way out (the inverse is applied on the way in): "" copies it,
"T" transposes it (GPT-2 stores linear weights as Conv1D, (in, out)), and "q", "k", "v" take that
part of lmforge's fused c_attn along the output dimension. `when` names the config condition under
which the row exists ("bias", "qkv_bias", "untied", "types"), or is "" for always.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lmforge.errors import LmforgeError

Row = tuple[str, str, str, str]  # (hf name, lmforge name, how, when)


@dataclass(frozen=True)
class SpecialIds:
    bos: int
    eos: int
    pad: int


@dataclass(frozen=True)
class Family:
    model_type: str
    """config.json's model_type, read and written."""
    lm: str
    """The architecture an lmforge language model exports as (GPT2LMHeadModel, ...)."""
    classifier: str
    """Its *ForSequenceClassification architecture."""
    base_prefix: str
    """The base model's name prefix inside a *For... checkpoint ("transformer.", "model.", "bert.")."""
    keys: list[Row]
    layer_keys: list[Row]
    classifier_head: list[Row]
    pooling: str
    """The pooling its sequence classifier uses (lmforge's name for it: "cls" or "last")."""
    to_config: Callable[[Any, SpecialIds], dict[str, Any]]
    from_config: Callable[[dict[str, Any], str], Any]
    special_names: str = "causal"
    """Which special-token names its tokenizer files carry: "causal" (bos/eos) or "bert" (cls/sep/mask)."""
    default_specials: dict[str, str] = field(default_factory=dict)
    """Token strings its tokenizer classes use when a folder does not name them."""
    head_roots: tuple[str, ...] = ("lm_head.", "cls.")
    """HF name prefixes of the language-model head (absent from bare and classifier checkpoints)."""
    layer_rows: Callable[[Any], list[Row]] | None = None
    """The per-layer rows for a config, when `layer_keys` x n_layer does not say it (T5's two stacks)."""
    tied_copies: dict[str, str] = field(default_factory=dict)
    """HF tensor -> the tensor it equals when a save leaves it out as tied (and lmforge keeps it apart)."""
    not_exported: tuple[str, ...] = ()
    """lmforge name prefixes of tensors the HF architecture has no place for and does not need (ELECTRA's
    generator, which served pretraining only): export leaves them out rather than refusing."""


def toml(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else json.dumps(v)


def require(hf: dict[str, Any], key: str, ok: Any, source: str, default: Any = None) -> None:
    """Refuse a config.json value lmforge cannot reproduce exactly, by name."""
    value = hf.get(key, default)
    allowed = ok if isinstance(ok, tuple) else (ok,)
    if value not in allowed:
        needs = " or ".join(map(toml, allowed))
        raise LmforgeError(f"{source}: config.json has {key} = {toml(value)}, which lmforge's "
                           f"{hf.get('model_type')} cannot reproduce (needs {needs}): import is not possible")
