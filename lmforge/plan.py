"""The compute and memory planner behind `lmforge plan`: what a pretraining config costs before it runs.

- Size and compute: parameters from the model itself (built on the meta device: no memory), FLOPs per
  token from its `flops_per_token` (the formula the loop's MFU uses), per step and for `train.max_steps`.
- Data: tokens seen against the tokens in the shards (epochs) and against ~20 tokens per parameter
  (Hoffmann et al. 2022, parameters counted with the embeddings), with the balanced sizes at the same
  compute C = 6ND: N = sqrt(C / 120), D = 20N.
- Memory per process (`plan_memory`, `plan_activations`), for fp32 and bf16, DDP and FSDP, with and
  without activation checkpointing; the largest micro-batch that fits; a warning when it does not.
- Wall time = FLOPs per step / (processes x peak x MFU) for A100, H100, H200 (peaks from `runtime.
  PEAK_FLOPS`, MFU assumed or read from a run's metrics.jsonl) and this CPU, whose peak is a matmul of
  the model's MLP shape timed on the spot and whose speed, given shards, is a few training steps timed
  on the spot (`plan_timing`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.errors import LmforgeError
from lmforge.models import build_model, model_class
from lmforge.plan_memory import OPTIMIZER_STATE, layers, matmul_weights, max_micro_batch, memory, optimizer_state_bytes
from lmforge.runtime import PEAK_FLOPS
from lmforge.runtime_auto import planned_precision

GiB = 2 ** 30
GPU_MEMORY = {"A100": 80 * GiB, "H100": 80 * GiB, "H200": 140 * GiB}
"""Memory per GPU as torch reports it (A100 and H100: the 80 GB parts)."""
ASSUMED_MFU = 0.40
"""GPU MFU when no run says otherwise: what nanoGPT-style GPT-2 training reaches with bf16 and compile."""
CPU_MFU = 0.40
"""Share of the timed matmul rate a CPU training step of a small GPT reaches (0.37 to 0.66 in
bench/plan_vs_measured.py, fp32, one thread; BENCHMARKS.md): used when no steps can be timed."""
TOKENS_PER_PARAM = 20
FIT_FRACTION = 0.9
"""A plan fits when its peak is below this share of the memory: the rest is for the CUDA context and the
allocator's fragmentation (on CPU, the process's libraries and malloc's free lists)."""
DEFAULT_VOCAB = 50257
"""Planned vocabulary when the config leaves it to the tokenizer and no shards are given (GPT-2's)."""


@dataclass(frozen=True)
class Target:
    """Where a run would train: `processes` devices of one kind, `memory` bytes each."""

    name: str
    processes: int
    memory: float
    cuda: bool


def parse_gpus(spec: str) -> Target:
    """`8xH100`, `H100` (one), `2xA100` -> a Target; anything else is refused in one line."""
    m = re.fullmatch(r"(?:(\d+)\s*[xX]\s*)?([A-Za-z0-9]+)", spec.strip())
    name = m.group(2).upper() if m else ""
    if not m or name not in GPU_MEMORY or int(m.group(1) or 1) < 1:
        raise LmforgeError(f"--gpus {spec!r}: give N x GPU with GPU one of {', '.join(GPU_MEMORY)} "
                           "(e.g. --gpus 8xH100), or --device cpu")
    return Target(name, int(m.group(1) or 1), GPU_MEMORY[name], True)


def cpu_target(memory_bytes: float | None = None) -> Target:
    """One CPU process with `memory_bytes` (default: the memory Linux says is available now)."""
    if memory_bytes is None:
        info = Path("/proc/meminfo")
        found = re.search(r"MemAvailable:\s+(\d+) kB", info.read_text()) if info.is_file() else None
        memory_bytes = int(found.group(1)) * 1024 if found else 16 * GiB
    return Target("CPU", 1, float(memory_bytes), False)


def meta_model(model_cfg) -> torch.nn.Module:
    """The model of a [model] section on the meta device: shapes and counts, no memory."""
    with torch.device("meta"):
        return build_model(model_cfg)


def targets_per_sequence(cfg) -> int:
    """Positions the output layer runs at per sequence: every token, the masked ones (masked LM and
    ELECTRA's generator, the fixed width of data/mlm.py's positions), or the decoder's length (span
    corruption, data/span.py)."""
    T = cfg.seq_len()
    if cfg.task in ("masked_lm", "replaced_token_detection"):
        return 8 * math.ceil(math.ceil((T - 2) * cfg.mlm.mask_prob) / 8)
    if cfg.task == "span_corruption":
        from lmforge.data.span import lengths, raw_length

        return cfg.span.target_len or lengths(raw_length(T, cfg.span), cfg.span)[2][1]
    return T


def shard_tokens(folder: str | Path, split: str = "train") -> dict:
    """{"tokens", "vocab_size"} of a shards folder's split, from its manifest.json."""
    from lmforge.data.shards import MANIFEST

    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise LmforgeError(f"{folder} is not a shards folder (no {MANIFEST}): give the --out of `lmforge shards build`")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if split not in manifest["splits"]:
        raise LmforgeError(f"{folder} has no {split!r} split (it has {', '.join(manifest['splits'])})")
    return {"tokens": int(manifest["splits"][split]["tokens"]), "vocab_size": int(manifest["vocab_size"])}


def compute(model, seq_len: int, tokens_per_step: int, max_steps: int) -> dict:
    """Parameters and FLOPs: per token (6N + attention, `model.flops_per_token`), per step, in all."""
    per_token = model.flops_per_token(seq_len)
    six_n = model.flops_per_token(0)  # the attention term grows with seq_len; the rest is 6N
    top = matmul_weights(model) - sum(matmul_weights(layer) for layer in layers(model))
    total = model.num_params()
    return {"params": total, "non_embedding": model.num_params(non_embedding=True),
            "embedding": total - model.num_params(non_embedding=True), "flops_per_token": per_token,
            "flops_6n": six_n, "flops_attention": per_token - six_n, "tokens_per_step": tokens_per_step,
            "flops_per_step": per_token * tokens_per_step, "flops_total": per_token * tokens_per_step * max_steps,
            # activation checkpointing runs the layers' forward again: a third of their 6N and attention
            "recompute_per_token": max(0.0, per_token - 6 * top) / 3}


def data_budget(tokens_seen: float, params: int, shards: dict | None) -> dict:
    """Tokens seen against the shards (epochs) and against TOKENS_PER_PARAM, and the balanced sizes."""
    flops = 6.0 * params * tokens_seen
    balanced_n = math.sqrt(flops / (6 * TOKENS_PER_PARAM))
    ratio = tokens_seen / params
    out = {"tokens_seen": tokens_seen, "tokens_per_param": ratio, "balanced_params": balanced_n,
           "balanced_tokens": TOKENS_PER_PARAM * balanced_n, "tokens_for_this_model": TOKENS_PER_PARAM * params,
           "verdict": _verdict(ratio)}
    if shards is not None:
        out |= {"shard_tokens": shards["tokens"], "epochs": tokens_seen / shards["tokens"],
                "params_for_these_shards": shards["tokens"] / TOKENS_PER_PARAM}
    return out


def _verdict(ratio: float) -> str:
    if ratio < TOKENS_PER_PARAM / 2:
        return "too few tokens for the model (under-trained): a smaller model, or more steps, would be balanced"
    if ratio > TOKENS_PER_PARAM * 2:
        return ("more tokens than compute-optimal for the model (over-trained): a larger model would be "
                "balanced at this compute; fine when the model must be small to serve")
    return "about compute-optimal"


def memory_table(model, cfg, *, target: Target, micro_batch: int, accum: int, targets: int) -> list[dict]:
    """Peak memory per process for fp32/bf16 x DDP/FSDP (one process: plain) x checkpointing off/on."""
    world = target.processes
    parallels = ["ddp", "fsdp"] if world > 1 else ["none"]
    ckpts = [False, True] if model_class(cfg.model).recomputable_layers else [False]
    rows = []
    for precision in ("fp32", "bf16"):
        for parallel in parallels:
            for ckpt in ckpts:
                m = memory(model, cfg.model, cfg.optim, seq_len=cfg.seq_len(), targets=targets,
                           micro_batch=micro_batch, accum=accum, precision=precision, parallel=parallel,
                           world=world, cuda=target.cuda, checkpointing=ckpt)
                rows.append({"precision": precision, "parallel": parallel, "checkpointing": ckpt, **m,
                             "fits": m["peak"] <= FIT_FRACTION * target.memory})
    return rows


def fit(model, cfg, *, target: Target, targets: int, parallel: str) -> dict:
    """The configured run's memory, whether it fits, and the largest micro-batch that does."""
    world, per_process = target.processes, cfg.train.batch_size // target.processes
    precision = planned_precision(cfg.runtime.precision, target.cuda)

    def peak(b: int) -> float:
        return memory(model, cfg.model, cfg.optim, seq_len=cfg.seq_len(), targets=targets, micro_batch=b,
                      accum=max(1, per_process // b), precision=precision, parallel=parallel,
                      world=world, cuda=target.cuda,
                      checkpointing=cfg.runtime.activation_checkpointing)["peak"]

    def fits(b: int) -> bool:
        return peak(b) <= FIT_FRACTION * target.memory

    micro = cfg.train.micro_batch(world)
    largest = max_micro_batch(fits, max(1, per_process))
    dividing = max((b for b in range(1, largest + 1) if per_process % b == 0), default=0)
    return {"micro_batch": micro, "peak": peak(micro), "memory": target.memory, "fits": fits(micro),
            "largest_micro_batch": largest, "largest_dividing_micro_batch": dividing}


def cpu_matmul_flops(d_in: int, d_out: int, budget_s: float = 0.4) -> dict[str, float]:
    """FLOP/s of this CPU on the model's MLP matmul (rows x d_in x d_out) in fp32 and bf16, with torch's
    threads as they are set: the rows (16 to 1024) are sized from a first call so that the timed calls
    take about `budget_s` in all for each dtype (a CPU without bf16 units is ~50x slower there)."""
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        w = torch.randn(d_in, d_out, dtype=dtype)
        t = time.perf_counter()
        torch.randn(16, d_in, dtype=dtype) @ w
        rows = int(min(1024, max(16, 16 * budget_s / 4 / max(time.perf_counter() - t, 1e-6))))
        x, times = torch.randn(rows, d_in, dtype=dtype), []
        x @ w
        start = time.perf_counter()
        while len(times) < 3 or (time.perf_counter() - start < budget_s and len(times) < 50):
            t = time.perf_counter()
            x @ w
            times.append(time.perf_counter() - t)
        out[name] = 2.0 * rows * d_in * d_out / statistics.median(times)
    return out


def run_mfu(run_dir: str | Path, flops_per_token: float, cpu_flops: float | None) -> dict:
    """The MFU a run measured (median over its logged steps): `gpu` from its `mfu` records, `cpu` from its
    tokens/s against this CPU's timed peak (only meaningful if it ran here); None where it has none."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise LmforgeError(f"{run_dir} has no metrics.jsonl: give a run that has trained some steps")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    mfu = [r["mfu"] for r in records if "mfu" in r]
    speed = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][1:]  # the first includes start-up
    return {"gpu": statistics.median(mfu) if mfu else None,
            "cpu": statistics.median(speed) * flops_per_token / cpu_flops if speed and cpu_flops else None}


def wall_times(comp: dict, *, precision: str, tf32: bool, world: int, steps: int, checkpointing: bool,
               mfu: float | None, measured: dict, cpu: dict | None) -> list[dict]:
    """Step and total time on each known accelerator (`world` of each GPU; one CPU process).

    GPUs: FLOPs / (world x peak x MFU), the MFU given, else the run's, else ASSUMED_MFU. The CPU (`cpu`:
    {"flops": `cpu_matmul_flops`, "timed": `plan_timing.time_cpu_steps` or None}): the MFU given or the
    run's, else the timed steps' rate plus their optimizer step, else CPU_MFU of the timed matmul rate.
    """
    recompute = comp["recompute_per_token"] / comp["flops_per_token"] if checkpointing else 0.0
    work = comp["flops_per_step"] * (1 + recompute)
    kind = precision if precision != "fp32" else ("tf32" if tf32 else "fp32")
    rows = []
    for gpu, table in PEAK_FLOPS.items():
        use, source = _mfu(mfu, measured.get("gpu"), (ASSUMED_MFU, "assumed"))
        rows.append(_time_row(gpu, world, table.get(kind), use, source, work, steps))
    if cpu is not None:
        peak, timed = cpu["flops"]["fp32" if precision == "fp32" else "bf16"], cpu.get("timed")
        if timed and not (mfu or measured.get("cpu")):  # its rate already includes any recomputation
            step = comp["flops_per_step"] / timed["flops_per_s"] + timed["optimizer_s"]
            rows.append({"accelerator": "CPU", "processes": 1, "peak_flops": peak,
                         "mfu": timed["flops_per_s"] / peak, "mfu_source": "timed steps", "step_s": step,
                         "total_s": step * steps})
        else:
            use, source = _mfu(mfu, measured.get("cpu"), (CPU_MFU, "default"))
            rows.append(_time_row("CPU", 1, peak, use, source, work, steps))
    return rows


def _time_row(name: str, n: int, peak: float | None, mfu: float, source: str, work: float, steps: int) -> dict:
    step = work / (n * peak * mfu) if peak else None
    return {"accelerator": name, "processes": n, "peak_flops": peak, "mfu": mfu, "mfu_source": source,
            "step_s": step, "total_s": step * steps if step else None}


def _mfu(given: float | None, measured: float | None, default: tuple[float, str]) -> tuple[float, str]:
    if given:
        return given, "given"
    return (measured, "the run's") if measured else default


def optimizer_states(model, optim_cfg, shard: int) -> dict[str, float]:
    """Bytes of optimizer state per process for every optimizer lmforge has."""
    return {name: optimizer_state_bytes(model, optim_cfg, name) / shard for name in OPTIMIZER_STATE}


def make_plan(cfg, target: Target, *, shards: dict | None = None, mfu: float | None = None,
              run_dir: str | Path | None = None, cpu: dict | None = None) -> dict:
    """The whole plan of a pretraining config (a `runs.PretrainConfig`) on `target`, as plain data.

    `shards`: `shard_tokens` of its data; `mfu` overrides every MFU; `run_dir` a run whose measured MFU
    to use; `cpu`: this CPU's speed (`wall_times`; None leaves the CPU out of the time table).
    """
    notes = []
    vocab = shards["vocab_size"] if shards else cfg.model.vocab_size or DEFAULT_VOCAB
    if not shards and not cfg.model.vocab_size:
        notes.append(f"model.vocab_size is 0 (the tokenizer's): planned with {DEFAULT_VOCAB:,}; pass --data SHARDS "
                     "or --set model.vocab_size=N")
    cfg = cfg.with_vocab(vocab)
    precision = planned_precision(cfg.runtime.precision, target.cuda)  # "auto" as it would settle there
    cfg = dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, precision=precision))
    world = target.processes
    micro = cfg.train.micro_batch(world)
    accum = max(1, cfg.train.batch_size // world // max(micro, 1))
    parallel = cfg.runtime.parallel if world > 1 and cfg.runtime.parallel != "none" else \
        ("ddp" if world > 1 else "none")
    model, targets = meta_model(cfg.model), targets_per_sequence(cfg)
    comp = compute(model, cfg.seq_len(), cfg.train.batch_size * cfg.seq_len(), cfg.train.max_steps)
    cpu_peak = cpu["flops"]["fp32" if cfg.runtime.precision == "fp32" else "bf16"] if cpu else None
    measured = run_mfu(run_dir, comp["flops_per_token"], cpu_peak) if run_dir else {}
    configured = fit(model, cfg, target=target, targets=targets, parallel=parallel)
    configured |= memory(model, cfg.model, cfg.optim, seq_len=cfg.seq_len(), targets=targets,
                         micro_batch=configured["micro_batch"], accum=accum, precision=cfg.runtime.precision,
                         parallel=parallel, world=world, cuda=target.cuda,
                         checkpointing=cfg.runtime.activation_checkpointing)
    table = memory_table(model, cfg, target=target, micro_batch=configured["micro_batch"], accum=accum,
                         targets=targets)
    return {"model": {"kind": cfg.model.kind, "task": cfg.task, "seq_len": cfg.seq_len(), "targets": targets,
                      "vocab_size": vocab},
            "target": {"name": target.name, "processes": world, "memory": target.memory},
            "run": {"precision": cfg.runtime.precision, "parallel": parallel, "optimizer": cfg.optim.name,
                    "activation_checkpointing": cfg.runtime.activation_checkpointing,
                    "batch_size": cfg.train.batch_size, "micro_batch": configured["micro_batch"],
                    "accum": accum, "max_steps": cfg.train.max_steps},
            "compute": comp, "data": data_budget(comp["tokens_per_step"] * cfg.train.max_steps,
                                                 comp["params"], shards),
            "memory": {"configured": configured, "table": table,
                       "optimizers": optimizer_states(model, cfg.optim, world if parallel == "fsdp" else 1)},
            "time": wall_times(comp, precision=cfg.runtime.precision, tf32=cfg.runtime.tf32, world=world,
                               steps=cfg.train.max_steps, checkpointing=cfg.runtime.activation_checkpointing,
                               mfu=mfu, measured=measured, cpu=cpu),
            "notes": notes, "warnings": _warnings(configured, table, target, cfg, accum)}


def _warnings(configured: dict, table: list[dict], target: Target, cfg, accum: int) -> list[str]:
    out, micro, world = [], configured["micro_batch"], target.processes
    best = configured["largest_dividing_micro_batch"]
    if cfg.train.batch_size != micro * world * accum:
        out.append(f"train.batch_size={cfg.train.batch_size} is not a multiple of train.micro_batch_size={micro} "
                   f"x {world} processes, so the run would be refused"
                   + (f": --set train.micro_batch_size={best} fits and divides it" if best else ""))
    if not configured["fits"]:
        where = f"{world} x {target.name}" if target.cuda else "this CPU"
        fixes = [f"--set train.micro_batch_size={best}"] if best else []
        for row in table:  # the first other setting of this precision that fits at this micro-batch
            if row["fits"] and row["precision"] == cfg.runtime.precision:
                fixes.append(" ".join([f"--set runtime.parallel={row['parallel']}"] * (row["parallel"] != "none")
                                      + ["--set runtime.activation_checkpointing=true"] * row["checkpointing"]))
                break
        out.append(f"the run would not fit: {configured['peak'] / GiB:.1f} GiB per process at micro-batch {micro}, "
                   f"over {FIT_FRACTION * target.memory / GiB:.1f} GiB ({FIT_FRACTION:.0%} of {where}'s memory): "
                   + ("; or ".join(fixes) if fixes else "more processes, or a smaller model"))
    return out
