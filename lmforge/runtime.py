"""Where a model runs: device, precision, compile, and (later) data-parallel wrapping; rank info.

The loop talks to a `Runtime` instead of testing flags: `runtime.autocast()`, `runtime.wrap(model)`,
`runtime.no_sync(model, last)`, `runtime.all_reduce_sum(x)`. With one process these are no-ops;
a DDP/FSDP runtime fills them in without touching the loop. RANK/WORLD_SIZE/LOCAL_RANK are read from
the environment so `torchrun` works.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
from torch import nn

from lmforge.config import RuntimeConfig
from lmforge.errors import LmforgeError

# Dense (no sparsity) peak throughput per GPU, FLOP/s, by precision: the MFU denominator.
PEAK_FLOPS = {
    "A100": {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12},
    "H100": {"bf16": 989e12, "fp16": 989e12, "tf32": 494e12},
    "H200": {"bf16": 989e12, "fp16": 989e12, "tf32": 494e12},
}

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Runtime:
    cfg: RuntimeConfig
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return _DTYPES.get(self.cfg.precision)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A scaler that is a pass-through unless the run trains in fp16."""
        return torch.amp.GradScaler(self.device.type, enabled=self.cfg.precision == "fp16")

    def wrap(self, model: nn.Module) -> nn.Module:
        """Move a finished model to the device and apply compile (and, later, DDP/FSDP) to it."""
        model = model.to(self.device)
        if self.cfg.compile:
            model = torch.compile(model)
        return model

    @staticmethod
    def unwrap(model: nn.Module) -> nn.Module:
        """The plain module under compile/DDP/FSDP wrappers (what state_dict() must be taken from)."""
        while True:
            inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
            if not isinstance(inner, nn.Module):
                return model
            model = inner

    def no_sync(self, model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
        """Skip the gradient all-reduce on every micro-step but the last (`sync=False` skips)."""
        if sync or self.world_size == 1 or not hasattr(model, "no_sync"):
            return contextlib.nullcontext()
        return model.no_sync()

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            torch.distributed.all_reduce(x, op=torch.distributed.ReduceOp.SUM)
        return x

    def sum_count(self, n: int) -> int:
        """A host-side count summed over processes (a no-op, and no sync, with one process)."""
        if self.world_size == 1:
            return n
        return int(self.all_reduce_sum(torch.tensor(n, device=self.device, dtype=torch.int64)).item())

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Host batch -> device; on CUDA through pinned memory so the copy overlaps compute."""
        if self.device.type == "cuda":
            return {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in batch.items()}
        return {k: v.to(self.device) for k, v in batch.items()}

    def peak_flops(self) -> float | None:
        """Peak FLOP/s of one device at this precision, or None when unknown (then no MFU)."""
        if self.device.type != "cuda":
            return None
        name = torch.cuda.get_device_name(self.device)
        kind = self.cfg.precision if self.amp_dtype is not None else ("tf32" if self.cfg.tf32 else None)
        for gpu, table in PEAK_FLOPS.items():
            if gpu in name and kind in table:
                return table[kind]
        return None

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LmforgeError(f"config key 'runtime.device' = {name!r} is not a device: use auto, cpu, cuda, "
                           "cuda:1 or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LmforgeError("runtime.device is cuda but torch sees no CUDA GPU: "
                           "set runtime.device=cpu or auto")
    return device


def setup_runtime(cfg: RuntimeConfig) -> Runtime:
    """Pick the device and precision settings; read the process's rank from the environment."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if world_size > 1 or cfg.parallel != "none":
        raise LmforgeError(f"runtime.parallel={cfg.parallel!r} with WORLD_SIZE={world_size}: data-parallel "
                           "training is not available yet; run one process with runtime.parallel='none'")
    device = resolve_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
    if cfg.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise LmforgeError("runtime.precision=bf16 but this GPU has no bfloat16: use runtime.precision=fp16")
    return Runtime(cfg, device, rank, world_size, local_rank)
