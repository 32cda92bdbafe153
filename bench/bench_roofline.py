"""How far each training path is from this CPU's limit: achieved FLOP/s against the measured matmul peak.

The peak is the best of `F.linear` on square fp32 and bf16 matrices (512 to 2048) with the same
number of threads. Each path is a short `lmforge pretrain` of its preset; its achieved FLOP/s is the
model's own `flops_per_token(seq_len)` (what the loop's MFU uses: 6 x parameters plus attention) times
the steady-state tokens/s of its log (median of the logged intervals after the first).

    python bench/bench_roofline.py --threads 1 2 --steps 60
    python bench/bench_roofline.py --paths char --precisions fp32 bf16 --threads 1   # bf16 where it pays

Paths: `char` nanoGPT's CPU recipe (gpt-shakespeare-char on tiny Shakespeare), `tiny` the quickstart's
gpt-tiny on the Python docs, `mlm` bert-tiny on WikiText-2, `lstm` the 2 x 200 LSTM recipe on word-level
WikiText-2 (`--lstm-shards`, made by bench/bench_lstm_wlm.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_bf16_quality import LMFORGE, REPO, prepare  # noqa: E402

LSTM_SETS = ["model.d_embed=200", "model.d_hidden=200", "model.dropout=0.2"]
PATHS = {"char": ("gpt-shakespeare-char", []), "tiny": ("gpt-tiny", []), "mlm": ("bert-tiny", []),
         "lstm": ("rnn-lstm-wt2", LSTM_SETS)}


def matmul_peak(threads: int) -> dict[str, float]:
    """Best FLOP/s of square `F.linear` (the models' matmul: oneDNN's kernels for bf16, where a plain
    bf16 `a @ b` takes a slower path) in fp32 and bf16 with `threads` threads."""
    torch.set_num_threads(threads)
    peak = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        best = 0.0
        for n in (512, 1024, 2048):
            a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
            F.linear(a, b)
            start, calls = time.perf_counter(), 0
            while calls < 2 or time.perf_counter() - start < 0.5:
                F.linear(a, b)
                calls += 1
            best = max(best, 2 * n ** 3 * calls / (time.perf_counter() - start))
            if name == "bf16" and best < 20e9:  # emulated bf16 (no bf16 units): larger sizes take minutes
                break
        peak[name] = best
    return peak


def quickstart_shards(work: Path) -> Path:
    shards = work / "tiny-shards"
    if not (shards / "manifest.json").is_file():
        for cmd in (["corpus", "build", "--input", "builtin:python-docs", "--out", work / "tiny-corpus"],
                    ["tokenizer", "train", "--corpus", work / "tiny-corpus", "--kind", "bpe", "--vocab-size", "4096",
                     "--out", work / "tiny-tok"],
                    ["shards", "build", "--corpus", work / "tiny-corpus", "--tokenizer", work / "tiny-tok",
                     "--out", shards]):
            subprocess.run([str(c) for c in LMFORGE + cmd + ["--overwrite", "--quiet"]], check=True)
    return shards


def achieved(path: str, shards: Path, out: Path, threads: int, precision: str, steps: int) -> dict:
    preset, sets = PATHS[path]
    overrides = [*sets, f"train.max_steps={steps}", "train.log_every=5", f"train.eval_every={steps}",
                 "train.eval_batches=1", f"train.save_every={steps}", "train.progress=false",
                 f"runtime.num_threads={threads}", f"runtime.precision={precision!r}", "runtime.compile=false"]
    cmd = LMFORGE + ["pretrain", "--config", preset, "--data", shards, "--out", out, "--overwrite"]
    subprocess.run([str(c) for c in cmd + [a for o in overrides for a in ("--set", o)]], check=True,
                   stdout=subprocess.DEVNULL)
    from lmforge.tasks import load_run

    run = load_run(out, "latest")
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    speed = statistics.median([r["tokens_per_s"] for r in rows if "tokens_per_s" in r][1:])
    per_token = run.model.flops_per_token(run.config.seq_len())
    if path == "mlm":  # the LM head runs at the masked positions only, not at every token as counted there
        per_token -= 6.0 * run.model.decoder.weight.numel() * (1 - run.config.mlm.mask_prob)
    flops = per_token * speed
    loss = [r["loss"] for r in rows if "loss" in r][-1]
    return {"tokens_per_s": speed, "flops_per_s": flops, "loss": loss}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=REPO / "bench" / "_work" / "roofline")
    p.add_argument("--paths", nargs="+", default=["char", "tiny", "mlm"], choices=list(PATHS))
    p.add_argument("--lstm-shards", type=Path, help="word-level WikiText-2 shards for the lstm path")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=60)
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    shards = {**prepare(args.work.parent / "bf16"), "tiny": quickstart_shards(args.work)}
    if "lstm" in args.paths:
        if args.lstm_shards is None:
            p.error("the lstm path needs --lstm-shards (word-level WikiText-2 shards)")
        shards["lstm"] = args.lstm_shards
    lines = ["| path | threads | precision | tokens/s | achieved GFLOP/s | matmul peak GFLOP/s | % of peak | "
             "last loss |", "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for threads in args.threads:
        peak = matmul_peak(threads)
        print(f"{threads} thread(s): matmul peak fp32 {peak['fp32'] / 1e9:.1f}, bf16 {peak['bf16'] / 1e9:.1f} GFLOP/s",
              flush=True)
        for path in args.paths:
            for precision in args.precisions:
                r = achieved(path, shards[path], args.work / f"{path}-{precision}-t{threads}", threads, precision,
                             args.steps)
                lines.append(f"| {PATHS[path][0]} | {threads} | {precision} | {r['tokens_per_s']:,.0f} | "
                             f"{r['flops_per_s'] / 1e9:.1f} | {peak[precision] / 1e9:.1f} | "
                             f"{100 * r['flops_per_s'] / peak[precision]:.0f}% | {r['loss']:.3f} |")
                print(lines[-1], flush=True)
    text = f"`python bench/bench_roofline.py {' '.join(sys.argv[1:])}`\n\n" + "\n".join(lines) + "\n"
    (args.work / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
