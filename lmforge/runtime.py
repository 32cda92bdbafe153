"""Where a model runs: device, precision, compile, DDP/FSDP wrapping of a finished model; rank info.

The loop talks to a `Runtime` instead of testing flags: `runtime.autocast()`, `runtime.wrap(model)`,
`runtime.no_sync(model, last)`, `runtime.all_reduce_sum(x)`, `runtime.full_state(model, optimizer)`.
With one process these are no-ops; under `torchrun` (RANK/WORLD_SIZE/LOCAL_RANK in the environment)
`setup_runtime` joins the process group and `wrap` applies DDP or FSDP2, so neither the loop nor the
models ever test `if ddp:`.

Gradients are SUMMED across processes, not averaged: the loop already divides every loss by the
target count of the whole step (all micro-batches, all processes), so the sum is the gradient of one
big batch, whatever the number of processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from lmforge import runtime_auto
from lmforge.config import check_ranges
from lmforge.errors import LmforgeError
from lmforge.runtime_auto import CompileChooser, keep_freed_memory, settle_precision


@dataclass(frozen=True)
class RuntimeConfig:
    device: str = "auto"
    """auto (cuda, then mps, then cpu), or a torch device string."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto: bf16 autocast on a GPU with bfloat16; on a CPU with bf16 units (AMX, AVX-512 BF16) bf16 when a
    timed step of this model is faster than fp32, else fp32; fp32 on any other CPU (the start-up line says
    which and why). bf16/fp16: autocast with fp32 weights and optimizer state; fp16 uses a gradient scaler."""
    compile: bool | Literal["auto"] = "auto"
    """torch.compile the model. auto: the loop times its first eager steps and compiles once the rest of
    the run is long enough to repay a compile, then keeps the compiled model only if its steps are faster
    (on a CPU only where a C++ compiler is installed). Compiled graphs are cached on disk, so the next run
    of the same model compiles in seconds."""
    tf32: bool = True
    """Allow TF32 matmuls on CUDA."""
    parallel: Literal["none", "ddp", "fsdp"] = "none"
    """Data parallelism across torchrun processes."""
    num_threads: int = 0
    """CPU threads for torch; 0 leaves torch's default."""
    timeout_s: int = 600
    """Seconds a process waits in a collective (all-reduce, barrier) before the job fails instead of hanging."""
    activation_checkpointing: bool = False
    """Keep only each layer's input in training and recompute the layer in backward: less activation
    memory for about a third more compute (`lmforge plan` says how much of each)."""

    def __post_init__(self):
        check_ranges(self, "runtime", positive="timeout_s", non_negative="num_threads")


# Dense (no sparsity) peak throughput per GPU, FLOP/s, by precision: the MFU denominator.
PEAK_FLOPS = {
    "A100": {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12},
    "H100": {"bf16": 989e12, "fp16": 989e12, "tf32": 494e12},
    "H200": {"bf16": 989e12, "fp16": 989e12, "tf32": 494e12},
}

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


FAULT_ENV = "LMFORGE_TEST_FAULT"
"""`RANK:STEP` makes that rank raise at that step: how the tests check that one failing process ends the job."""


@dataclass
class Runtime:
    cfg: RuntimeConfig
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    precision_reason: str = "set in the config"
    """Why the run uses its precision: what the start-up line prints after it."""

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

    @property
    def precision_label(self) -> str:
        return f"{self.cfg.precision}: {self.precision_reason}"

    def settle_precision(self, step: Callable[[contextlib.AbstractContextManager], None], what: str) -> None:
        """Settle precision "auto" on a CPU with bf16 units by timing `step(autocast)` (one forward, or one
        forward and backward, of the real model and batch) in fp32 and in bf16; the faster one stays.

        Every process takes rank 0's choice. A no-op when the precision is already settled.
        """
        if self.cfg.precision != "auto":
            return
        fp32 = runtime_auto.best_time(step, contextlib.nullcontext)
        bf16 = runtime_auto.best_time(step, lambda: torch.autocast(device_type=self.device.type, dtype=torch.bfloat16))
        faster = self.sum_count(int(bf16 < fp32) if self.is_main else 0) > 0
        self.cfg = dataclasses.replace(self.cfg, precision="bf16" if faster else "fp32")
        ratio = fp32 / bf16
        self.precision_reason = (f"{self.precision_reason}; a timed {what} ran {ratio:.2f}x as fast in bf16 as in "
                                 f"fp32 with {torch.get_num_threads()} threads")

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A scaler that is a pass-through unless the run trains in fp16."""
        return torch.amp.GradScaler(self.device.type, enabled=self.cfg.precision == "fp16")

    @property
    def parallel(self) -> str:
        return self.cfg.parallel

    def wrap(self, model: nn.Module) -> nn.Module:
        """Move a finished model to the device, make its layers recompute in backward (activation
        checkpointing, when asked), then apply DDP or FSDP2, then compile.

        Parameters with `requires_grad=False` are left out of DDP's gradient reduction: that is how
        a task says which parts its objective never runs (BERT's pooler in masked-LM pretraining).
        """
        model = model.to(self.device)
        if self.cfg.activation_checkpointing:
            _checkpoint_layers(model)
        if self.parallel == "ddp":
            from torch.nn.parallel import DistributedDataParallel as DDP

            # models hold only constant buffers (RoPE tables): nothing to broadcast on every forward
            model = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                        forward_sync_buffers=False)
            model.register_comm_hook(None, _sum_hook)
        elif self.parallel == "fsdp":
            _fully_shard(model, self.amp_dtype)
        if self.cfg.compile is True:
            model = runtime_auto.compile_model(model)
        return model

    def compile_chooser(self, say: Callable[[str], None]) -> CompileChooser | None:
        """What decides `compile = "auto"` as the run goes; None when the config decides."""
        if self.cfg.compile != "auto":
            return None
        if self.device.type == "cpu" and not (shutil.which("g++") or shutil.which("c++")):
            say("runtime.compile=auto: eager (torch.compile on a CPU needs a C++ compiler: none on PATH)")
            return None
        return CompileChooser(self.device.type, say)

    @staticmethod
    def unwrap(model: nn.Module) -> nn.Module:
        """The plain module under compile/DDP wrappers (what state_dict() must be taken from).

        FSDP2 keeps the module itself (its parameters become shards): `full_state` gathers them.
        """
        while True:
            inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
            if not isinstance(inner, nn.Module):
                return model
            model = inner

    def no_sync(self, model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
        """Skip the gradient reduction on every micro-step but the last (`sync=False` skips)."""
        if sync or self.world_size == 1:
            return contextlib.nullcontext()
        if self.parallel == "fsdp":
            return _fsdp_no_sync(self.unwrap(model))
        return model.no_sync() if hasattr(model, "no_sync") else contextlib.nullcontext()

    def full_state(self, model: nn.Module, optimizer: Any) -> tuple[dict | None, dict | None]:
        """(model, optimizer) state dicts gathered whole on rank 0 (CPU), under FSDP; else (None, None).

        Every process must call it (it gathers the shards). The optimizer state comes back in the
        format of `optimizer.state_dict()` (parameters numbered in group order), so a checkpoint
        saved under FSDP resumes with any number of processes and any `runtime.parallel`.
        """
        if self.parallel != "fsdp":
            return None, None
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        raw = self.unwrap(model)
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(raw, options=options)
        optim_state = get_optimizer_state_dict(raw, optimizer, options=options)
        if not self.is_main:
            return None, None
        return model_state, _numbered(optim_state, _param_names(raw, optimizer))

    def load_optimizer_state(self, model: nn.Module, optimizer: Any, state: dict) -> None:
        """Load a saved `optimizer.state_dict()` into an optimizer over the (possibly sharded) model."""
        if self.parallel != "fsdp":
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        raw = self.unwrap(model)
        named = _named(state, _param_names(raw, optimizer))
        set_optimizer_state_dict(raw, optimizer, named, options=StateDictOptions(full_state_dict=True))

    def even_batches(self, batches: Iterable[dict[str, torch.Tensor]]) -> Iterator[dict[str, torch.Tensor]]:
        """The same number of evaluation batches on every process (FSDP forwards are collective).

        A process that runs out first repeats its last batch with no targets (labels all ignored),
        which adds nothing to the sums the evaluation reduces.
        """
        if self.parallel != "fsdp" or self.world_size == 1:
            yield from batches
            return
        it, last = iter(batches), None
        while True:
            batch = next(it, None)
            more = torch.tensor(int(batch is not None), device=self.device)
            all_reduce(more, torch.distributed.ReduceOp.MAX)
            if not more.item():
                return
            if batch is None:
                if last is None:
                    raise LmforgeError(f"the validation split gives fewer batches than {self.world_size} "
                                       "processes: hold out more data or lower train.micro_batch_size")
                batch = {**last, "labels": torch.full_like(last["labels"], -100)}
            last = batch
            yield batch

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            all_reduce(x, torch.distributed.ReduceOp.SUM)
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

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        """Leave the process group (if this process joined one)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def fault_point(self, step: int) -> None:
        """Raise here when FAULT_ENV names this rank and step (tests of failure handling only)."""
        fault = os.environ.get(FAULT_ENV)
        if fault and fault == f"{self.rank}:{step}":
            raise RuntimeError(f"{FAULT_ENV}: rank {self.rank} fails at step {step} as asked")


def all_reduce(x: torch.Tensor, op: Any = None, patience_s: float = 5.0) -> None:
    """A blocking all-reduce that returns only once the backend's worker thread has let go of `x`.

    Gloo wakes the caller first and drops its own reference to the finished work (and so to `x`) a
    moment later, on its worker thread. If that reference is the last one (the Python tensor is gone)
    and the process has begun exiting meanwhile (on a loaded CPU the worker can lag that long), the
    worker needs the GIL of a finalizing interpreter, Python ends the thread inside a C++ destructor,
    and the process aborts: "terminate called without an active exception". torch 2.13 keeps gloo's
    threads alive past destroy_process_group() (FSDP's mesh holds the group), so they cannot be joined.
    Normally the loop below never spins.
    """
    before = x._use_count()
    torch.distributed.all_reduce(x, op=torch.distributed.ReduceOp.SUM if op is None else op)
    deadline = time.monotonic() + patience_s
    while x._use_count() > before and time.monotonic() < deadline:
        time.sleep(0.0005)


def _sum_hook(state, bucket):  # no annotations: DDP checks them, and these would be strings
    """DDP communication hook: all-reduce SUM (DDP's default divides by the world size)."""
    work = torch.distributed.all_reduce(bucket.buffer(), async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def _layers(model: nn.Module) -> list[nn.Module]:
    """A model's layers: the members of its `nn.ModuleList`s (the backbone contract, models/__init__.py)."""
    return [layer for m in model.modules() if isinstance(m, nn.ModuleList) for layer in m]


def _checkpoint_layers(model: nn.Module) -> None:
    """Activation checkpointing: each layer's forward, in training with gradients on, keeps only its inputs
    and runs again in backward (non-reentrant, with the RNG state restored, so dropout draws the same)."""
    from torch.utils.checkpoint import checkpoint

    layers = _layers(model)
    if not layers:
        raise LmforgeError(f"runtime.activation_checkpointing=true: {type(model).__name__} has no layers to "
                           "recompute: set it to false")

    def recomputed(layer: nn.Module, forward, *args, **kwargs):
        if layer.training and torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    for layer in layers:
        if "forward" not in vars(layer):  # not wrapped yet by an earlier wrap() of the same model
            layer.forward = functools.partial(recomputed, layer, layer.forward)


def _fully_shard(model: nn.Module, amp_dtype: torch.dtype | None) -> None:
    """FSDP2: one shard group per layer (each member of an `nn.ModuleList` of layers: a transformer's
    `blocks`, T5's `encoder` and `decoder`), then the root."""
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=amp_dtype, reduce_dtype=torch.float32)
    for layer in _layers(model):
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)  # a sum: see the module docstring
            module.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no PREMUL_SUM)


@contextlib.contextmanager
def _fsdp_no_sync(model: nn.Module) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def _param_names(model: nn.Module, optimizer: Any) -> list[str]:
    """Names of the optimizer's parameters in the numbering of `optimizer.state_dict()`."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def _numbered(named_state: dict, names: list[str]) -> dict:
    """A name-keyed optimizer state dict (torch.distributed.checkpoint) -> `optimizer.state_dict()` form."""
    index = {n: i for i, n in enumerate(names)}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in named_state["param_groups"]]
    return {"state": {index[n]: s for n, s in named_state["state"].items()}, "param_groups": groups}


def _named(state: dict, names: list[str]) -> dict:
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]
    return {"state": {names[int(i)]: s for i, s in state["state"].items()}, "param_groups": groups}


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
    """Pick the device and precision settings; under torchrun, join the process group.

    Several processes with `parallel="none"` train with DDP (a log line says so). Without torchrun a
    `parallel` of ddp/fsdp runs as one plain process, so a run resumes anywhere.
    """
    launched = "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ
    world_size = int(os.environ.get("WORLD_SIZE", "1")) if launched else 1
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    parallel = cfg.parallel
    if world_size > 1 and parallel == "none":
        parallel = "ddp"
        if rank == 0:
            print(f"lmforge: {world_size} processes and runtime.parallel='none': training with DDP "
                  "(set runtime.parallel=fsdp to shard parameters and optimizer state)", flush=True)
    if not launched:
        parallel, rank, local_rank = "none", 0, 0
    device = resolve_device(cfg.device)
    if parallel != "none" and device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if device.type == "cpu":
        keep_freed_memory()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
    precision, reason = settle_precision(cfg.precision, device)
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise LmforgeError("runtime.precision=bf16 but this GPU has no bfloat16: use runtime.precision=fp16")
    if parallel != "none" and not torch.distributed.is_initialized():
        if parallel == "fsdp" and precision == "fp16":
            raise LmforgeError("runtime.parallel=fsdp with runtime.precision=fp16 is not supported: "
                               "use runtime.precision=bf16")
        # a process that fails is noticed by torchrun, which ends the others; the timeout covers the rest
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                             timeout=datetime.timedelta(seconds=cfg.timeout_s))
    return Runtime(dataclasses.replace(cfg, parallel=parallel, precision=precision), device, rank, world_size,
                   local_rank, reason)
