"""What each CPU change is worth on a bare training step: glibc's freed-memory reuse and the erf GELU.

Times forward + backward + clip + fused AdamW of a GPT preset's model on a random batch, one thread,
in fresh processes alternated A B A B (so drift hits both), for each variant:

- `allocator`: with `runtime.keep_freed_memory()` (what every lmforge CPU run does) against glibc's
  defaults (each large tensor a fresh mmap, faulted in page by page every step);
- `gelu`: `mlp = "gelu_exact"` against GPT-2's tanh GELU (`mlp = "gelu"`), both with the allocator fix.

    python bench/bench_cpu_step.py --preset gpt-tiny --rounds 3
    python bench/bench_cpu_step.py --preset gpt-shakespeare-char --vocab 65 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def worker(preset: str, vocab: int, mlp: str, keep: bool, steps: int) -> dict:
    import dataclasses

    import torch

    from lmforge.models import build_model
    from lmforge.objectives import causal_lm_loss
    from lmforge.runtime import keep_freed_memory
    from lmforge.tasks import load_config

    torch.set_num_threads(1)
    if keep:
        keep_freed_memory()
    cfg = load_config(preset).with_vocab(vocab)
    model = build_model(dataclasses.replace(cfg.model, mlp=mlp))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    B, T = cfg.train.batch_size, cfg.seq_len()
    batch = {"input_ids": torch.randint(0, vocab, (B, T)), "labels": torch.randint(0, vocab, (B, T))}

    def step():
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
    p.add_argument("--worker", nargs=3, metavar=("MLP", "KEEP", "PRESET"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        mlp, keep, preset = a.worker
        print(json.dumps(worker(preset, a.vocab, mlp, keep == "1", a.steps)))
        return
    variants = {"allocator kept": ("gelu_exact", "1"), "glibc default": ("gelu_exact", "0"),
                "tanh GELU": ("gelu", "1")}
    ms = {name: [] for name in variants}
    for _ in range(a.rounds):
        for name, (mlp, keep) in variants.items():
            cmd = [sys.executable, __file__, "--worker", mlp, keep, a.preset, "--vocab", str(a.vocab),
                   "--steps", str(a.steps)]
            ms[name].append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)["ms"])
    base = statistics.median(ms["allocator kept"])
    print(f"`python bench/bench_cpu_step.py --preset {a.preset} --vocab {a.vocab} --rounds {a.rounds}` "
          f"(median ms per step, one thread)\n")
    print("| variant | ms per step (rounds) | median | step time / lmforge's |\n| --- | --- | ---: | ---: |")
    for name, values in ms.items():
        print(f"| {name} | {', '.join(f'{v:.1f}' for v in values)} | {statistics.median(values):.1f} | "
              f"{statistics.median(values) / base:.2f} |")


if __name__ == "__main__":
    main()
