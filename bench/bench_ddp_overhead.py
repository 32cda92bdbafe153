"""Overhead of DDP and FSDP wrapping against a plain model, on one device, in tokens per second.

Run under torchrun (one process measures the wrappers' own cost; more processes add communication):

    torchrun --nproc_per_node 1 bench/bench_ddp_overhead.py --preset gpt2-small --batch 8 --seq-len 1024

The three models (plain, DDP, FSDP2 through `Runtime.wrap`) are built from the same seed and trained
on the same random batch; their timed rounds are interleaved so clock drift and thermal changes hit
all of them alike. Reports the median tokens/s of each and the overhead against the plain model.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from lmforge.models import build_model
from lmforge.objectives import causal_lm_loss
from lmforge.optim import build_optimizer
from lmforge.runs import RunConfig
from lmforge.runtime import Runtime, setup_runtime
from lmforge.tasks import load_config


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="gpt-tiny", help="model config preset or TOML (a GPT)")
    p.add_argument("--batch", type=int, default=8, help="sequences per process per step")
    p.add_argument("--seq-len", type=int, default=0, help="tokens per sequence (default: context_len)")
    p.add_argument("--vocab", type=int, default=50304)
    p.add_argument("--steps", type=int, default=5, help="optimizer steps per timed round")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per mode (after one warm-up)")
    p.add_argument("--precision", default="auto", help="fp32, bf16 or auto (bf16 on CUDA)")
    p.add_argument("--device", default="auto")
    return p.parse_args()


def make(mode: str, cfg: RunConfig, base: Runtime) -> tuple[Runtime, torch.nn.Module, torch.optim.Optimizer]:
    runtime = dataclasses.replace(base, cfg=dataclasses.replace(base.cfg, parallel=mode))
    torch.manual_seed(0)
    raw = build_model(cfg.model)
    model = runtime.wrap(raw)
    return runtime, model, build_optimizer(raw, cfg.optim, runtime.device.type)


def train_steps(runtime: Runtime, model, optimizer, batch: dict, steps: int) -> None:
    n_targets = batch["labels"].numel() * runtime.world_size
    for _ in range(steps):
        with runtime.autocast():
            loss_sum, _, _ = causal_lm_loss(model, batch)
        (loss_sum / n_targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def main() -> None:
    args = parse_args()
    cfg = load_config(args.preset, [f"model.vocab_size={args.vocab}"])
    precision = args.precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() else "fp32"
    # parallel="ddp" makes setup_runtime join torchrun's process group; each mode is wrapped below
    base = setup_runtime(dataclasses.replace(cfg.runtime, device=args.device, precision=precision,
                                             parallel="ddp", compile=False))
    if base.world_size == 1 and not torch.distributed.is_initialized():
        raise SystemExit("run under torchrun: torchrun --nproc_per_node 1 bench/bench_ddp_overhead.py")
    seq_len = args.seq_len or cfg.model.context_len
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.model.vocab_size, (args.batch, seq_len + 1), generator=g)
    batch = base.to_device({"input_ids": ids[:, :-1].contiguous(), "labels": ids[:, 1:].contiguous()})
    modes = {m: make(m, cfg, base) for m in ("none", "ddp", "fsdp")}
    speeds: dict[str, list[float]] = {m: [] for m in modes}
    for round_ in range(args.rounds + 1):
        for mode, (runtime, model, optimizer) in modes.items():
            runtime.synchronize()
            t = time.perf_counter()
            train_steps(runtime, model, optimizer, batch, args.steps)
            runtime.synchronize()
            if round_:  # the first round warms up kernels and allocators
                speeds[mode].append(args.steps * args.batch * seq_len / (time.perf_counter() - t))
    if base.is_main:
        device = torch.cuda.get_device_name(base.device) if base.device.type == "cuda" else "CPU"
        print(f"{args.preset}: {args.batch} x {seq_len} tokens per step, {precision}, {device}, "
              f"{base.world_size} process(es), median of {args.rounds} rounds of {args.steps} steps")
        plain = statistics.median(speeds["none"])
        for mode, values in speeds.items():
            med = statistics.median(values)
            print(f"  {mode:5s} {med:12,.0f} tokens/s  overhead {100 * (plain - med) / plain:+6.2f}%")
    base.close()


if __name__ == "__main__":
    main()
