"""Memory of one training process (`lmforge plan`): weights, gradients, optimizer state, activations.

P counts parameters. Weights, gradients and optimizer state are fp32 (4P each, the optimizer's times
its state tensors); under FSDP over N processes each is a 1/N shard. The activations are
`plan_activations`. How they add up to a peak is `memory`'s docstring.
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.plan_activations import ACT_BYTES, activations

OPTIMIZER_STATE = {"adamw": 2, "adam": 2, "lamb": 2, "sgd": 1, "rmsprop": 1, "adagrad": 1, "muon": 1}
"""fp32 state tensors per parameter (SGD: its momentum buffer; RMSprop: square average, plus momentum)."""


def optimizer_state_bytes(model: nn.Module, optim_cfg, name: str | None = None) -> int:
    """Bytes of optimizer state for `model`'s trainable parameters under optimizer `name` (default: the
    config's): fp32 state tensors as `OPTIMIZER_STATE` counts them, plus a 4-byte step counter per tensor
    for those that keep one. Muon keeps one buffer for the hidden matrices and AdamW's two for the rest,
    split as `optim.build_optimizer` splits them."""
    from lmforge.optim import _embedding_params, _is_hidden_matrix

    name = name or optim_cfg.name
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if name == "muon":
        embeddings = _embedding_params(model)
        hidden = [p for n, p in params if _is_hidden_matrix(n, p, embeddings)]
        rest = [p for n, p in params if not _is_hidden_matrix(n, p, embeddings)]
        return 4 * sum(p.numel() for p in hidden) + _state(rest, 2, steps=True)
    per = OPTIMIZER_STATE[name]
    if name == "sgd":
        per = 1 if optim_cfg.momentum else 0
    elif name == "rmsprop":
        per = 1 + (1 if optim_cfg.momentum else 0)
    return _state([p for _, p in params], per, steps=name != "sgd")


def _state(params: list[torch.Tensor], per: int, steps: bool) -> int:
    return sum(4 * per * p.numel() + (4 if steps else 0) for p in params)


def layers(model: nn.Module) -> list[nn.Module]:
    """The model's layers (the members of its `nn.ModuleList`s), as FSDP and checkpointing see them."""
    return [layer for m in model.modules() if isinstance(m, nn.ModuleList) for layer in m]


def matmul_weights(model: nn.Module) -> int:
    """Elements of the weights that go through a matmul (the ones autocast copies to 16 bits)."""
    seen, n = set(), 0
    for m in model.modules():
        if isinstance(m, nn.Linear) and id(m.weight) not in seen:
            seen.add(id(m.weight))
            n += m.weight.numel()
    return n


def memory(model: nn.Module, cfg, optim_cfg, *, seq_len: int, targets: int, micro_batch: int, accum: int,
           precision: str, parallel: str, world: int, cuda: bool, checkpointing: bool) -> dict[str, float]:
    """Bytes per process of each part, and `peak`, for one configuration.

    weights: fp32 masters (FSDP: a 1/world shard, plus the unsharded root and the two layers gathered
    at a time, in the compute dtype). gradients: fp32 (DDP over several processes keeps a second copy
    in its all-reduce buckets; FSDP: a shard plus one layer unsharded). autocast_copies: the 16-bit
    copies of the matmul weights that autocast makes in forward and backward keeps (not under FSDP,
    whose gathered weights are 16-bit already). activations: what forward keeps for backward; backward:
    what backward's fullest moment adds (`plan_activations.activations`). peak: weights + optimizer
    state + the larger of (activations + backward + the autocast copies, plus the gradients when
    micro-steps accumulate them) and the gradients (end of backward, optimizer step).
    """
    n_all = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    fsdp, shard = parallel == "fsdp" and world > 1, world if parallel == "fsdp" else 1
    compute = ACT_BYTES[precision]
    weights, grads = 4 * n_all / shard, 4 * n_train / shard
    if fsdp:
        per_layer = [sum(p.numel() for p in layer.parameters()) for layer in layers(model)]
        root = n_all - sum(per_layer)
        weights += compute * (root + 2 * max(per_layer, default=0))
        grads += 4 * max(per_layer, default=0)
    elif parallel == "ddp" and world > 1:
        grads *= 2
    act = activations(cfg, seq_len, targets, precision, cuda, checkpointing)
    out = {"weights": weights, "gradients": grads,
           "optimizer": optimizer_state_bytes(model, optim_cfg) / shard,
           "autocast_copies": 0 if compute == 4 or fsdp else 2 * matmul_weights(model),
           "activations": micro_batch * act["saved"] + act["per_batch"],
           "backward": micro_batch * (act["peak"] - act["saved"])}
    forward = out["activations"] + out["backward"] + out["autocast_copies"] + (grads if accum > 1 else 0)
    out["peak"] = weights + out["optimizer"] + max(forward, grads)
    return out


def max_micro_batch(fits, limit: int) -> int:
    """The largest b in 1..limit with fits(b) true (fits is monotone: larger b, more memory); 0 if none."""
    if not fits(1):
        return 0
    lo, hi = 1, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo
