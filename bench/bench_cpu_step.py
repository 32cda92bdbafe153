"""What each CPU change is worth on a bare training step: glibc's freed-memory reuse, the erf GELU and
the fused output layer.

Times forward + backward + clip + fused AdamW of a GPT preset's model on a random batch (`--threads`,
default one), in fresh processes alternated A B A B (so drift hits both), for each variant:

- `allocator`: with `runtime_auto.keep_freed_memory()` (what every lmforge CPU run does) against glibc's
  defaults (each large tensor a fresh mmap, faulted in page by page every step);
- `gelu`: `mlp = "gelu_exact"` against GPT-2's tanh GELU (`mlp = "gelu"`), both with the allocator fix;
- `logits`: the loss through the whole (B*T, V) logits and `F.cross_entropy` against the GPT's own
  summed loss (on a CPU in fp32: the output layer and cross-entropy in chunks, models/linear_ce.py).

    python bench/bench_cpu_step.py --preset gpt-tiny --rounds 3
    python bench/bench_cpu_step.py --preset gpt-shakespeare-char --vocab 65 --rounds 3
    python bench/bench_cpu_step.py --preset gpt-tiny --rounds 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def worker(preset: str, vocab: int, mlp: str, keep: bool, head: str, steps: int, threads: int) -> dict:
    import dataclasses

    import torch
    import torch.nn.functional as F

    from lmforge.models import build_model
    from lmforge.objectives import causal_lm_loss
    from lmforge.runtime_auto import keep_freed_memory
    from lmforge.tasks import load_config

    torch.set_num_threads(threads)
    if keep:
        keep_freed_memory()
    cfg = load_config(preset).with_vocab(vocab)
    model = build_model(dataclasses.replace(cfg.model, mlp=mlp))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    B, T = cfg.train.batch_size, cfg.seq_len()
    batch = {"input_ids": torch.randint(0, vocab, (B, T)), "labels": torch.randint(0, vocab, (B, T))}

    def step():
        if head == "logits":
            logits, labels = model(batch["input_ids"]), batch["labels"]
            loss, n = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum"), labels.numel()
        else:
            loss, n, _ = causal_lm_loss(model, batch)
        (loss / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(5):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"ms": 1e3 * statistics.median(times), "tokens_per_step": B * T}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="gpt-tiny")
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--worker", nargs=4, metavar=("MLP", "KEEP", "HEAD", "PRESET"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        mlp, keep, head, preset = a.worker
        print(json.dumps(worker(preset, a.vocab, mlp, keep == "1", head, a.steps, a.threads)))
        return
    variants = {"lmforge": ("gelu_exact", "1", "fused"), "glibc default": ("gelu_exact", "0", "fused"),
                "tanh GELU": ("gelu", "1", "fused"), "logits + F.cross_entropy": ("gelu_exact", "1", "logits")}
    ms = {name: [] for name in variants}
    for _ in range(a.rounds):
        for name, (mlp, keep, head) in variants.items():
            cmd = [sys.executable, __file__, "--worker", mlp, keep, head, a.preset, "--vocab", str(a.vocab),
                   "--steps", str(a.steps), "--threads", str(a.threads)]
            ms[name].append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)["ms"])
    base = statistics.median(ms["lmforge"])
    print(f"`python bench/bench_cpu_step.py --preset {a.preset} --vocab {a.vocab} --rounds {a.rounds} --threads "
          f"{a.threads}` (median ms per step)\n")
    print("| variant | ms per step (rounds) | median | step time / lmforge's |\n| --- | --- | ---: | ---: |")
    for name, values in ms.items():
        print(f"| {name} | {', '.join(f'{v:.1f}' for v in values)} | {statistics.median(values):.1f} | "
              f"{statistics.median(values) / base:.2f} |")


if __name__ == "__main__":
    main()
