"""Parameter groups, optimizers and learning-rate schedules.

Weight decay: tensors with ndim >= 2 (weight matrices) are decayed; biases, norm gains and embedding
tables (`nn.Embedding` weights, and so an output head tied to them) are not. nanoGPT decays embeddings
too; we follow BERT/T5/most recent recipes, which leave them out, so a token seldom seen is not pulled
to zero between its rare updates.

Every optimizer takes the same `OptimConfig`. The schedule is a pure function `lr_at(step, ...)` of
the step; the loop writes `base_lr * factor` into each group, so groups may carry their own `base_lr`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from lmforge.config import check, check_ranges
from lmforge.errors import LmforgeError


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["adamw", "adam", "sgd", "lamb", "muon", "adagrad", "rmsprop"] = "adamw"
    lr: float = 1e-3
    """Peak learning rate (after warmup)."""
    weight_decay: float = 0.1
    """Applied to matrices only; biases, norms and embeddings are in the no-decay group."""
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    momentum: float = 0.9
    """SGD/Muon/RMSprop momentum."""
    nesterov: bool = False
    fused: bool = True
    """Use fused AdamW/Adam kernels where the device supports them."""

    def __post_init__(self) -> None:
        check_ranges(self, "optim", positive="lr eps", non_negative="weight_decay", fraction="momentum")
        check(all(0 <= b < 1 for b in self.betas), "optim.betas", f"must both be in [0, 1), got {self.betas}")


@dataclass(frozen=True)
class ScheduleConfig:
    name: Literal["cosine", "linear", "constant", "wsd", "plateau"] = "cosine"
    """Decay after warmup: cosine, linear, constant, warmup-stable-decay, or plateau (constant, cut by
    plateau_factor after each evaluation whose loss is no better than the best so far)."""
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    """Final learning rate as a share of the peak."""
    decay_fraction: float = 0.2
    """wsd: share of the steps spent decaying at the end."""
    plateau_factor: float = 0.25
    """plateau: the learning rate is multiplied by this when validation stops improving (the classic
    word-level LSTM recipe divides it by 4)."""

    def __post_init__(self) -> None:
        check(0.0 < self.plateau_factor <= 1.0, "schedule.plateau_factor", "must be in (0, 1]")
        check_ranges(self, "schedule", non_negative="warmup_steps")
        check(0 <= self.min_lr_ratio <= 1 and 0 <= self.decay_fraction <= 1, "schedule.min_lr_ratio",
              "and schedule.decay_fraction must be in [0, 1]")


# ----------------------------------------------------------------------------------------------------
# Learning-rate schedules


def lr_at(step: int, max_steps: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the peak learning rate at `step` (0-based): linear warmup, then the decay."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    floor = cfg.min_lr_ratio
    if cfg.name in ("constant", "plateau"):  # `Schedule` cuts plateau's rate after evaluations
        return 1.0
    if cfg.name == "wsd":
        decay_steps = max(1, round(cfg.decay_fraction * max_steps))
        start = max(cfg.warmup_steps, max_steps - decay_steps)
        if step < start:
            return 1.0
        progress = min(1.0, (step - start) / max(1, max_steps - start))
        return 1.0 - (1.0 - floor) * progress
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps))
    if cfg.name == "linear":
        return 1.0 - (1.0 - floor) * progress
    return floor + 0.5 * (1.0 - floor) * (1.0 + math.cos(math.pi * progress))  # cosine


class Schedule:
    """The learning-rate multiplier of each step: `lr_at`, times the plateau cuts made so far.

    The plateau rule's state (its cut and the best evaluation it has seen) lives here, and
    `state_dict()` goes into checkpoints, so a resumed run continues the same schedule.
    """

    def __init__(self, cfg: ScheduleConfig, max_steps: int) -> None:
        self.cfg, self.max_steps = cfg, max_steps
        self.scale, self.best = 1.0, None

    def factor(self, step: int) -> float:
        return lr_at(step, self.max_steps, self.cfg) * self.scale

    def observe(self, val_loss: float) -> None:
        """An evaluation's loss (lower is better): `plateau` cuts the rate when it is no better."""
        if self.cfg.name == "plateau" and self.best is not None and val_loss >= self.best:
            self.scale *= self.cfg.plateau_factor
        self.best = val_loss if self.best is None else min(self.best, val_loss)

    def state_dict(self) -> dict:
        return {"lr_scale": self.scale, "plateau_best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.scale = state.get("lr_scale", 1.0)
        self.best = state.get("plateau_best", state.get("best_val_loss"))  # older checkpoints


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


# ----------------------------------------------------------------------------------------------------
# Parameter groups


def _embedding_params(model: nn.Module) -> set[int]:
    return {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}


def param_groups(model: nn.Module, cfg: OptimConfig, skip: frozenset[int] = frozenset()) -> list[dict]:
    """Two groups: decayed matrices, and everything else (biases, norms, embeddings) without decay.

    Tensors whose id is in `skip` are left out (another optimizer owns them). A model with
    `lr_scales() -> {name: multiplier}` (layer-wise lr decay when fine-tuning) gets each pair of groups
    once per multiplier, with `base_lr = cfg.lr * multiplier`.
    """
    embeddings = _embedding_params(model)
    scales = model.lr_scales() if hasattr(model, "lr_scales") else {}
    groups: dict[tuple[float, bool], list] = {}
    for name, p in model.named_parameters():  # yields a tied tensor once
        if not p.requires_grad or id(p) in skip:
            continue
        decayed = p.ndim >= 2 and id(p) not in embeddings
        groups.setdefault((scales.get(name, 1.0), decayed), []).append(p)
    return [{"params": params, "weight_decay": cfg.weight_decay if decayed else 0.0,
             "base_lr": cfg.lr * scale}
            for (scale, decayed), params in sorted(groups.items(), key=lambda kv: (-kv[0][0], not kv[0][1]))]


def _is_hidden_matrix(name: str, p: torch.Tensor, embeddings: set[int]) -> bool:
    """Muon orthogonalises hidden 2-D weights only; embeddings and output heads stay with AdamW."""
    module_name = name.rpartition(".")[0].rpartition(".")[2]
    return p.ndim == 2 and id(p) not in embeddings and "head" not in module_name


# ----------------------------------------------------------------------------------------------------
# Optimizers


def build_optimizer(model: nn.Module, cfg: OptimConfig, device_type: str = "cpu",
                    skip: frozenset[int] = frozenset()) -> torch.optim.Optimizer:
    """The optimizer named by `cfg.name`, over `param_groups(model, cfg)`.

    Fused kernels on CUDA (one launch for all tensors) and CPU (several times faster than foreach
    there), foreach (multi-tensor) elsewhere.
    """
    if cfg.name == "muon":
        return _build_muon(model, cfg, device_type)
    groups = param_groups(model, cfg, skip)
    fast = {"fused": True} if cfg.fused and device_type in ("cuda", "cpu") else {"foreach": True}
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **fast)
    if cfg.name == "adam":
        # Adam's weight decay is L2 added to the gradient (the original recipe), unlike AdamW's
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **fast)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               foreach=True)
    if cfg.name == "lamb":
        return Lamb(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    if cfg.name == "adagrad":
        return torch.optim.Adagrad(groups, lr=cfg.lr, eps=cfg.eps, foreach=True)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, eps=cfg.eps, momentum=cfg.momentum, foreach=True)
    raise LmforgeError(f"config key 'optim.name' = {cfg.name!r} is not a known optimizer")


def _build_muon(model: nn.Module, cfg: OptimConfig, device_type: str) -> MultiOptimizer:
    if not hasattr(torch.optim, "Muon"):
        raise LmforgeError(f"optim.name='muon' needs torch >= 2.9 (this is {torch.__version__}): "
                           "upgrade torch or choose optim.name='adamw'")
    embeddings = _embedding_params(model)
    hidden = {id(p): p for name, p in model.named_parameters()
              if p.requires_grad and _is_hidden_matrix(name, p, embeddings)}
    # match_rms_adamw scales Muon's update to AdamW's RMS, so one peak lr serves both optimizers;
    # Nesterov momentum is part of Muon's recipe (optim.nesterov is for SGD)
    muon = torch.optim.Muon(list(hidden.values()), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            momentum=cfg.momentum, nesterov=True, adjust_lr_fn="match_rms_adamw")
    muon.param_groups[0]["base_lr"] = cfg.lr
    adamw_cfg = dataclasses.replace(cfg, name="adamw")
    adamw = build_optimizer(model, adamw_cfg, device_type, skip=frozenset(hidden))
    return MultiOptimizer([muon, adamw])


class MultiOptimizer:
    """Several optimizers stepped as one (Muon for hidden matrices + AdamW for the rest).

    It exposes the parts of the `Optimizer` interface the loop, the gradient scaler and checkpoints use.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    @property
    def state(self) -> dict:
        return {k: v for opt in self.optimizers for k, v in opt.state.items()}

    def step(self, closure=None) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for opt, s in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(s)


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning"), Algorithm 2.

    Per tensor: the Adam direction with bias correction plus decoupled weight decay,
    u = m_hat / (sqrt(v_hat) + eps) + wd * w, scaled by the trust ratio ||w|| / ||u|| (1 when either
    norm is 0): w <- w - lr * ratio * u.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"].item()
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(p.grad, 1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                update = (m / (1 - beta1 ** t)) / ((v / (1 - beta2 ** t)).sqrt_().add_(group["eps"]))
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                w_norm, u_norm = p.norm(), update.norm()
                ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                p.add_(update * ratio, alpha=-group["lr"])
        return loss
