"""`lmforge plan`: what a pretraining config would cost (size, compute, data, memory, time) before it runs."""

from __future__ import annotations

import argparse
import dataclasses
import json

from lmforge.cli.args import add_config_args, run_path
from lmforge.errors import LmforgeError


def cmd_plan(args: argparse.Namespace) -> int:
    import torch

    from lmforge.plan import GiB, Target, cpu_matmul_flops, cpu_target, make_plan, parse_gpus, shard_tokens
    from lmforge.plan_timing import time_cpu_steps
    from lmforge.runs import PretrainConfig
    from lmforge.runtime_auto import planned_precision
    from lmforge.tasks import load_config, read_config

    if bool(args.config) == bool(args.run):
        raise LmforgeError("plan needs --config CONFIG|PRESET or --run RUN (a run's config and measured MFU)")
    if args.gpus and args.device:
        raise LmforgeError("give --gpus NxGPU or --device cpu, not both")
    cfg = read_config(run_path(args.run), args.overrides) if args.run else load_config(args.config, args.overrides)
    if not isinstance(cfg, PretrainConfig):
        raise LmforgeError(f"plan takes a pretraining config (task {cfg.task!r} fine-tunes): causal_lm, masked_lm, "
                           "bptt or span_corruption")
    data = args.data or (cfg.data.path if cfg.data.path and (run_path(cfg.data.path) / "manifest.json").is_file()
                         else None)
    shards = shard_tokens(data, cfg.data.train_split) if data else None
    target = parse_gpus(args.gpus) if args.gpus else cpu_target()
    if args.memory:
        target = Target(target.name, target.processes, args.memory * GiB, target.cuda)
    if cfg.runtime.num_threads:
        torch.set_num_threads(cfg.runtime.num_threads)
    flops = cpu_matmul_flops(cfg.model.hidden_size, 4 * cfg.model.hidden_size)
    rate = flops["fp32" if planned_precision(cfg.runtime.precision, cuda=False) == "fp32" else "bf16"]
    with_data = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(data))) if data else None
    cpu = {"flops": flops, "timed": time_cpu_steps(with_data, rate) if data else None}
    plan = make_plan(cfg, target, shards=shards, mfu=args.mfu, run_dir=run_path(args.run) if args.run else None,
                     cpu=cpu)
    print(json.dumps(plan, indent=2) if args.json else format_plan(plan))
    return 0


def _gib(x: float) -> str:
    return f"{x / 2 ** 30:.2f}"


def _size(x: float, unit: str) -> str:
    return f"{x / 2 ** (30 if unit == 'GiB' else 20):.2f}"


def _n(x: float) -> str:
    """1.23M, 4.5B, 812K."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _duration(s: float | None) -> str:
    if s is None:
        return "-"
    for unit, scale in (("y", 365 * 86400), ("d", 86400), ("h", 3600), ("min", 60), ("s", 1), ("ms", 1e-3)):
        if s >= scale:
            return f"{s / scale:,.3g} {unit}"
    return f"{s * 1e6:.3g} us"


def format_plan(p: dict) -> str:
    c, d, r, t, mem = p["compute"], p["data"], p["run"], p["target"], p["memory"]
    where = f"{t['processes']} x {t['name']}" if t["name"] != "CPU" else "CPU"
    ratio = d["tokens_per_param"]
    per_param = f"{ratio:,.0f}" if ratio >= 100 else f"{ratio:.3g}"
    lines = [f"lmforge plan: {p['model']['kind']} ({p['model']['task']}) on {where}, {_gib(t['memory'])} GiB per "
             f"process; {r['precision']}, {r['parallel']}, {r['optimizer']}, micro-batch {r['micro_batch']} x "
             f"{p['model']['seq_len']} tokens, {r['accum']} micro-step(s) a step"]
    lines += [f"note: {n}" for n in p["notes"]]
    lines += ["", f"size     {_n(c['params'])} parameters: {_n(c['non_embedding'])} non-embedding, "
                  f"{_n(c['embedding'])} embedding",
              f"compute  {c['flops_per_token']:.3g} FLOPs a token (6N {c['flops_6n']:.3g} + attention "
              f"{c['flops_attention']:.3g}); {c['flops_per_step']:.3g} a step; {c['flops_total']:.3g} in "
              f"{r['max_steps']:,} steps",
              f"data     {_n(d['tokens_seen'])} tokens seen ({c['tokens_per_step']:,} a step)"
              + (f"; the shards hold {_n(d['shard_tokens'])}: {d['epochs']:.3g} epochs" if "epochs" in d else ""),
              f"         {per_param} tokens per parameter (~20 is compute-optimal): {d['verdict']}",
              f"         balanced: {_n(d['balanced_params'])} parameters on {_n(d['balanced_tokens'])} tokens at "
              f"this compute; this model wants {_n(d['tokens_for_this_model'])} tokens"
              + (f"; these shards (one epoch) suit {_n(d['params_for_these_shards'])} parameters"
                 if "epochs" in d else ""), ""]
    unit = "GiB" if max(m["peak"] for m in mem["table"]) >= 2 ** 30 else "MiB"
    lines.append(f"memory per process, {unit} (micro-batch {r['micro_batch']})")
    head = ["", "weights", "grads", "optim", "16-bit w", "activ.", "backward", "peak", "fits"]
    rows = [[f"{m['precision']} {m['parallel']}" + (" +ckpt" if m["checkpointing"] else "")]
            + [_size(m[k], unit) for k in ("weights", "gradients", "optimizer", "autocast_copies", "activations",
                                           "backward", "peak")] + ["yes" if m["fits"] else "NO"] for m in mem["table"]]
    lines += _table(head, rows)
    states = ", ".join(f"{k} {_size(v, unit)}" for k, v in mem["optimizers"].items())
    conf = mem["configured"]
    lines += [f"optimizer state by optimizer, {unit}: {states}",
              f"this run ({r['precision']} {r['parallel']}"
              + (" +ckpt" if r["activation_checkpointing"] else "") + f"): peak {_size(conf['peak'], unit)} {unit}, "
              + ("fits" if conf["fits"] else "does NOT fit")
              + f"; largest micro-batch that fits {conf['largest_micro_batch']} "
              f"(that divides the per-process batch: {conf['largest_dividing_micro_batch']})", ""]
    lines.append(f"time for {r['max_steps']:,} steps")
    rows = [[f"{x['processes']} x {x['accelerator']}" if x["accelerator"] != "CPU" else "CPU (here)",
             f"{x['peak_flops'] / 1e12:.3g}" if x["peak_flops"] else "-", f"{x['mfu']:.2f} {x['mfu_source']}",
             _duration(x["step_s"]), _duration(x["total_s"])] for x in p["time"]]
    lines += _table(["", "peak TFLOP/s", "MFU", "step", "total"], rows)
    lines += [f"warning: {w}" for w in p["warnings"]]
    return "\n".join(lines)


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(row[i])) for row in [head, *rows]) for i in range(len(head))]
    fmt = lambda row: "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w)  # noqa: E731
                                for i, (v, w) in enumerate(zip(row, widths)))
    return [fmt(head), *[fmt(row) for row in rows]]


def register(sub) -> None:
    p = sub.add_parser("plan", help="parameters, FLOPs, tokens, memory per process and wall time of a "
                                    "pretraining config, before running it")
    add_config_args(p, "TOML run config or preset name (gpt-tiny, gpt2-small, bert-base, ...)")
    p.add_argument("--run", help="a run folder: its config, and the MFU it measured")
    p.add_argument("--data", help="shards folder: its token count (epochs) and vocabulary")
    p.add_argument("--gpus", metavar="NxGPU", help="plan for N GPUs of a kind: A100, H100, H200 (e.g. 8xH100)")
    p.add_argument("--device", choices=["cpu"], help="plan for this CPU (the default)")
    p.add_argument("--memory", type=float, metavar="GIB", help="memory per process (default: the GPU's, or the "
                                                               "memory available now)")
    p.add_argument("--mfu", type=float, help="model FLOPs utilisation to assume on every accelerator")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=cmd_plan)
