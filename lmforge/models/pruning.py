"""Where each attention head and FFN neuron of a GPT or BERT block lives, for structured pruning.

Dimensions: C d_model, nh heads, hs head size, F FFN width (d_ff).

A unit group (`Units`) is `count` units of `size` consecutive output rows in each of its `rows`
projections (at an offset: GPT's fused c_attn holds q, k and v one after the other) and the same
consecutive input columns of its `cols` projection, whose input is the units' activations:

| group      | count x size | rows (output features)                   | cols (input features) |
| ---------- | ------------ | ---------------------------------------- | --------------------- |
| gpt heads  | nh x hs      | attn.c_attn at 0 (q), nh*hs (k), 2*nh*hs (v) | attn.c_proj       |
| gpt ffn    | F x 1        | mlp.c_fc, mlp.c_gate (swiglu)            | mlp.c_proj            |
| bert heads | nh x hs      | attn.query, attn.key, attn.value         | attn.out              |
| bert ffn   | F x 1        | mlp.fc1                                  | mlp.fc2               |

Removing units takes their rows (weights and biases) and columns out; the output projection's bias and
everything outside the blocks stay. compress/prune.py ranks the units; this file says where they are.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from lmforge.errors import LmforgeError
from lmforge.models.bert import BertConfig
from lmforge.models.gpt import GPTConfig


@dataclass(frozen=True)
class Units:
    count: int
    size: int
    rows: tuple[tuple[str, int], ...]
    """(module name, first row) of each projection that writes the units, in row order per module."""
    cols: str
    """The projection that reads the units' activations (its input columns)."""

    def kept_rows(self, keep: list[int]) -> dict[str, torch.Tensor]:
        """Module name -> the row indices of the kept units, in order."""
        rows: dict[str, list[int]] = {}
        for name, offset in self.rows:
            rows.setdefault(name, []).extend(offset + u * self.size + i for u in keep for i in range(self.size))
        return {name: torch.tensor(index) for name, index in rows.items()}

    def kept_cols(self, keep: list[int]) -> torch.Tensor:
        return torch.tensor([u * self.size + i for u in keep for i in range(self.size)])


@dataclass(frozen=True)
class BlockUnits:
    heads: Units
    ffn: Units


def layout(cfg: GPTConfig | BertConfig, heads: bool) -> list[BlockUnits]:
    """The unit groups of every block of a model built from `cfg`, names relative to the model.

    `heads`: whether heads will be removed (refused under grouped-query attention, where query heads
    share key/value heads). Models other than GPT and BERT are refused.
    """
    if cfg.kind not in ("gpt", "bert"):
        raise LmforgeError(f"model.kind = {cfg.kind!r}: structured pruning removes attention heads and FFN neurons "
                           "of gpt and bert models only")
    nh, hs, width = cfg.n_head, cfg.head_size(), cfg.ff_width()
    if cfg.kind == "gpt" and heads and cfg.kv_heads() != nh:
        raise LmforgeError(f"model.n_kv_head = {cfg.n_kv_head} < n_head = {nh} (grouped-query attention): query "
                           "heads share key/value heads, so heads cannot be removed one by one; prune --ffn only")
    blocks = []
    for i in range(cfg.n_layer):
        b = f"blocks.{i}"
        if cfg.kind == "gpt":
            qkv = tuple((f"{b}.attn.c_attn", j * nh * hs) for j in range(3))
            gates = (f"{b}.mlp.c_fc",) + ((f"{b}.mlp.c_gate",) if cfg.mlp == "swiglu" else ())
            blocks.append(BlockUnits(Units(nh, hs, qkv, f"{b}.attn.c_proj"),
                                     Units(width, 1, tuple((g, 0) for g in gates), f"{b}.mlp.c_proj")))
        else:
            qkv = tuple((f"{b}.attn.{p}", 0) for p in ("query", "key", "value"))
            blocks.append(BlockUnits(Units(nh, hs, qkv, f"{b}.attn.out"),
                                     Units(width, 1, ((f"{b}.mlp.fc1", 0),), f"{b}.mlp.fc2")))
    return blocks


def pruned_config(cfg: GPTConfig | BertConfig, n_head: int, d_ff: int) -> GPTConfig | BertConfig:
    """`cfg` with `n_head` heads of the same size and `d_ff` FFN neurons (what is unchanged stays as written)."""
    changes: dict = {}
    if n_head != cfg.n_head:
        changes.update(n_head=n_head, head_dim=cfg.head_size())
        if cfg.kind == "gpt" and cfg.n_kv_head:  # n_kv_head == n_head here: grouped-query heads are refused
            changes["n_kv_head"] = n_head
    if d_ff != cfg.ff_width():
        changes["d_ff"] = d_ff
    return dataclasses.replace(cfg, **changes)


def shrink_state(state: dict[str, torch.Tensor], blocks: list[BlockUnits], keep_heads: list[list[int]] | None,
                 keep_ffn: list[list[int]] | None, prefix: str = "") -> dict[str, torch.Tensor]:
    """`state` with only the kept units' rows and columns (keep_*[layer]: sorted unit indices; None keeps
    all); `prefix` is the model's name for the backbone ("backbone." under a task head)."""
    out = dict(state)
    for i, block in enumerate(blocks):
        for units, keep in ((block.heads, keep_heads), (block.ffn, keep_ffn)):
            if keep is None:
                continue
            for name, index in units.kept_rows(keep[i]).items():
                for part in ("weight", "bias"):
                    if f"{prefix}{name}.{part}" in state:
                        out[f"{prefix}{name}.{part}"] = state[f"{prefix}{name}.{part}"][index].clone()
            key = f"{prefix}{units.cols}.weight"
            out[key] = state[key][:, units.kept_cols(keep[i])].clone()
    return out
