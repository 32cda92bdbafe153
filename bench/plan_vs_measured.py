"""`lmforge plan` against real CPU training runs: planned and measured peak memory and step time.

    python bench/plan_vs_measured.py              # every case (a few minutes), the table in BENCHMARKS.md
    python bench/plan_vs_measured.py gpt-tiny     # the cases whose name contains one of these words

Data: the README's, built once into bench/_work/plan/ (the Python docs, a byte-level BPE of 8,192 tokens,
shards). Each case runs in a process of its own, one after the other (never two trainings at once), on
one thread (`runtime.num_threads=1`: torch's two threads collapse on a shared 2-core machine):

1. the task prepares its data and objective as `lmforge pretrain` does, and the model trains one step
   (a warm-up that loads torch's kernels and the loop's imports: process start-up, not the plan);
2. the memory that warm-up freed is handed back to the OS (`malloc_trim`), the RSS is read, and the peak
   RSS is reset (`/proc/self/clear_refs`);
3. a fresh model trains `--steps` steps through `lmforge.train.train`, one log line a step; after each
   step an evaluation hook reads the peak RSS (VmHWM) and resets it, before any checkpoint is written;
4. 1 to 3 again in a process started with glibc's mmap threshold fixed at 64 KiB
   (MALLOC_MMAP_THRESHOLD_), so that a freed tensor leaves the RSS at once, as it leaves
   `torch.cuda.memory_allocated` on a GPU: with the threshold as it is, malloc keeps freed blocks of up
   to 32 MiB on its lists, in the RSS, and hands them out again.

Measured peak = the largest VmHWM of the steps minus the RSS read in 2 (the model, its gradients,
optimizer state and activations, and what malloc keeps back); measured step = the median time between
step logs of 3 (malloc as it is), the first two left out. Planned = `lmforge.plan.make_plan` on the
same config, with the CPU's speed timed on the spot right after 3 (`plan_timing.time_cpu_steps`), as
`lmforge plan --data` does.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

WORK = Path(__file__).resolve().parent / "_work" / "plan"
COMMON = ["runtime.device=cpu", "runtime.num_threads=1", "train.progress=false"]
CASES = {
    "gpt-tiny b32": ("gpt-tiny", ["train.batch_size=32"]),
    "gpt-tiny b32 ckpt": ("gpt-tiny", ["train.batch_size=32", "runtime.activation_checkpointing=true"]),
    "gpt-tiny b32 accum 4": ("gpt-tiny", ["train.batch_size=32", "train.micro_batch_size=8"]),
    "gpt 6x256 T256 b8": ("gpt-tiny", ["model.n_layer=6", "model.d_model=256", "model.n_head=8",
                                       "model.context_len=256", "train.batch_size=8"]),
    "speedrun b32 muon": ("gpt-shakespeare-speedrun", ["train.batch_size=32", "optim.name=muon"]),
    "bert-tiny b32": ("bert-tiny", ["train.batch_size=32"]),
}


def rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def worker(spec: dict) -> dict:
    """One case (`spec["overrides"]` on `spec["config"]`), in this process: its planned and measured figures."""
    import torch

    from lmforge.plan import cpu_matmul_flops, cpu_target, make_plan, shard_tokens
    from lmforge.plan_timing import time_cpu_steps
    from lmforge.runtime import setup_runtime
    from lmforge.tasks import get_task, load_config
    from lmforge.train import Evaluation, train

    cfg = load_config(spec["config"], [*COMMON, *spec["overrides"], f"data.path={spec['data']}"])
    runtime = setup_runtime(cfg.runtime)
    task, seen = get_task(cfg.task), {}

    def hook(model):  # after every step (train.eval_every=1): that step's peak, then a new count
        seen.setdefault("steps", []).append(rss("VmHWM"))
        Path("/proc/self/clear_refs").write_text("5")
        return Evaluation({"loss": 0.0})

    with tempfile.TemporaryDirectory() as tmp:
        data = task.prepare(cfg, runtime, Path(tmp) / "run", False, None, lambda message: None)
        cfg = data.cfg

        def run(steps: int, name: str) -> Path:
            torch.manual_seed(0)
            model = task.build_model(cfg, data.files)
            train_cfg = dataclasses.replace(cfg.train, max_steps=steps, log_every=1, eval_every=1, save_every=0)
            train(model, data.objective, data.batches, optim_cfg=cfg.optim, schedule_cfg=cfg.schedule,
                  train_cfg=train_cfg, runtime=runtime, run_dir=Path(tmp) / name, evaluate_fn=hook)
            return Path(tmp) / name / "metrics.jsonl"

        run(1, "warm-up")
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        base = rss("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        log = run(spec["steps"], "measured")
        peak, steps = max(seen["steps"]) - base, [(hwm - base) / 2 ** 20 for hwm in seen["steps"]]
        elapsed = [r["elapsed"] for r in map(json.loads, log.read_text().splitlines()) if "elapsed" in r]
        step = statistics.median([b - a for a, b in zip(elapsed[1:], elapsed[2:])] or [float("nan")])
        cpu = None
        if spec["time"]:  # timed right after the run, under the same load
            flops = cpu_matmul_flops(cfg.model.hidden_size, 4 * cfg.model.hidden_size)
            cpu = {"flops": flops, "timed": time_cpu_steps(cfg, flops["fp32"])}
    plan = make_plan(cfg, cpu_target(), shards=shard_tokens(spec["data"]), cpu=cpu)
    out = {"planned_peak": plan["memory"]["configured"]["peak"], "measured_peak": peak, "measured_steps": steps,
           "measured_step": step}
    if cpu is not None:
        row = next(t for t in plan["time"] if t["accelerator"] == "CPU")
        out |= {"planned_step": row["step_s"], "planned_mfu": row["mfu"], "cpu_flops": row["peak_flops"],
                "achieved_mfu": plan["compute"]["flops_per_step"] / step / row["peak_flops"]}
    return out


def measure(config: str, variants: list[list[str]], data: Path, steps: int, malloc: str = "default",
            time: bool = True) -> list[dict]:
    """Run cases (each a list of overrides on `config`) one after the other in a fresh process (this file's
    --worker mode) and return their figures. `malloc="fixed"` starts it with glibc's mmap threshold fixed
    (MALLOC_MMAP_THRESHOLD_: set later, blocks freed to malloc's lists before would still be reused);
    `time` times the plan's CPU speed on the spot after each run."""
    specs = [{"config": config, "overrides": v, "data": str(data), "steps": steps, "time": time} for v in variants]
    env = {**os.environ, **({"MALLOC_MMAP_THRESHOLD_": "65536"} if malloc == "fixed" else {})}
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(specs)], capture_output=True, text=True,
                         env=env, check=False)
    if out.returncode:
        raise RuntimeError(f"case {config} {variants} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def build_data() -> Path:
    """The README's corpus, tokenizer and shards, once."""
    shards = WORK / "shards"
    if not (shards / "manifest.json").is_file():
        WORK.mkdir(parents=True, exist_ok=True)
        for args in (["corpus", "build", "--input", "builtin:python-docs", "--out", str(WORK / "corpus"),
                      "--set", "corpus.val_fraction=0.05", "--overwrite"],
                     ["tokenizer", "train", "--corpus", str(WORK / "corpus"), "--kind", "bpe", "--vocab-size", "8192",
                      "--out", str(WORK / "tok"), "--overwrite"],
                     ["shards", "build", "--corpus", str(WORK / "corpus"), "--tokenizer", str(WORK / "tok"),
                      "--out", str(shards), "--overwrite"]):
            subprocess.run([sys.executable, "-m", "lmforge", *args], check=True, capture_output=True)
    return shards


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cases", nargs="*", help="run only the cases whose name contains one of these")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps([worker(spec) for spec in json.loads(a.worker)]))
        return
    data = build_data()
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    print("| case | planned peak MiB | measured MiB, malloc fixed (steps: min-max) | planned / measured | "
          "measured MiB, malloc as is | planned / measured | planned step s | measured s | planned / measured | "
          "MFU planned / run |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |", flush=True)
    rows = []
    for name, (config, overrides) in CASES.items():
        if a.cases and not any(c in name for c in a.cases):
            continue
        r = measure(config, [overrides], data, a.steps)[0]
        fixed = measure(config, [overrides], data, a.steps, malloc="fixed", time=False)[0]
        rows.append(r)
        mib = 2 ** 20
        print(f"| {name} | {r['planned_peak'] / mib:.0f} | {fixed['measured_peak'] / mib:.0f} "
              f"({min(fixed['measured_steps']):.0f}-{max(fixed['measured_steps']):.0f}) | "
              f"{r['planned_peak'] / fixed['measured_peak']:.2f} | "
              f"{r['measured_peak'] / mib:.0f} | {r['planned_peak'] / r['measured_peak']:.2f} | "
              f"{r['planned_step']:.3f} | {r['measured_step']:.3f} | {r['planned_step'] / r['measured_step']:.2f} | "
              f"{r['planned_mfu']:.2f} / {r['achieved_mfu']:.2f} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}; CPU fp32 matmul rate (median of the cases) "
          f"{statistics.median(r['cpu_flops'] for r in rows) / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
