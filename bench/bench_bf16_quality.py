"""Does bf16 autocast train as well as fp32? Loss curves of two CPU recipes, 3 seeds each, both ways.

- `char`: nanoGPT's CPU recipe (`gpt-shakespeare-char`: 4 x 128, context 64, batch 12) on tiny
  Shakespeare at the character level.
- `mlm`: `bert-tiny` masked-LM pretraining (2 x 128, seq 128, batch 32) on WikiText-2 (WordPiece 8k).

Each (recipe, seed) is trained twice, `runtime.precision=fp32` and `=bf16`, with the same seed (same
initial weights and batches). Reported: validation loss at every evaluation, per precision the mean
and standard deviation over seeds, and the paired bf16 - fp32 difference against the seed-to-seed
standard deviation of fp32 (the noise a precision change must stay within).

    python bench/bench_bf16_quality.py --work bench/_work/bf16 --steps 300 --seeds 1 2 3

Runs that finished are reused (their metrics.jsonl), so a stopped benchmark continues. Each run uses
one thread; two runs go at once (`--jobs`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
LMFORGE = [sys.executable, "-m", "lmforge"]
RECIPES = {"char": "gpt-shakespeare-char", "mlm": "bert-tiny"}


def _run(cmd: list[str]) -> None:
    subprocess.run([str(c) for c in cmd], check=True, stdout=subprocess.DEVNULL)


def prepare(work: Path) -> dict[str, Path]:
    """Character shards of tiny Shakespeare (nanoGPT's 90/10 split) and WordPiece shards of WikiText-2
    (its train and valid files, one document per line), made once."""
    from lmforge.corpus.store import write_file

    text = (DATA / "tinyshakespeare.txt").read_text()
    wiki = {part: [ln for ln in (DATA / "wikitext-2" / f"{part}.txt").read_text().splitlines() if ln.strip()]
            for part in ("train", "valid")}
    sources = {"char": ([text[:int(len(text) * 0.9)]], [text[int(len(text) * 0.9):]], ["--kind", "char",
                                                                                       "--vocab-size", "256"]),
               "mlm": (wiki["train"], wiki["valid"], ["--kind", "wordpiece", "--vocab-size", "8192"])}
    shards = {}
    for name, (train_docs, val_docs, kind) in sources.items():
        shards[name] = work / f"{name}-shards"
        if (shards[name] / "manifest.json").is_file():
            continue
        corpus = work / f"{name}-corpus"
        corpus.mkdir(parents=True, exist_ok=True)
        write_file(corpus / "train-00000.jsonl.zst", train_docs)
        write_file(corpus / "val-00000.jsonl.zst", val_docs)
        _run(LMFORGE + ["tokenizer", "train", "--corpus", corpus, *kind, "--out", work / f"{name}-tok",
                        "--overwrite", "--quiet"])
        _run(LMFORGE + ["shards", "build", "--corpus", corpus, "--tokenizer", work / f"{name}-tok",
                        "--out", shards[name], "--overwrite", "--quiet"])
    return shards


def train(recipe: str, shards: Path, out: Path, seed: int, precision: str, steps: int, eval_every: int) -> Path:
    if (out / "metrics.jsonl").is_file() and _curve(out) and max(_curve(out)) == steps:
        return out
    _run(LMFORGE + ["pretrain", "--config", RECIPES[recipe], "--data", shards, "--out", out, "--overwrite",
                    "--set", f"train.max_steps={steps}", "--set", f"train.seed={seed}",
                    "--set", f"runtime.precision={precision!r}", "--set", "runtime.num_threads=1",
                    "--set", "runtime.compile=false",
                    "--set", f"train.eval_every={eval_every}", "--set", f"train.save_every={steps}",
                    "--set", "train.progress=false", "--set", "train.log_every=50"])
    return out


def _curve(run: Path) -> dict[int, float]:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=REPO / "bench" / "_work" / "bf16")
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    shards = prepare(args.work)
    jobs = [(r, s, prec) for r in args.recipes for s in args.seeds for prec in ("fp32", "bf16")]
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = dict(zip(jobs, pool.map(lambda j: train(j[0], shards[j[0]], args.work / f"{j[0]}-{j[2]}-s{j[1]}",
                                                       j[1], j[2], args.steps, args.eval_every), jobs)))
    lines = [f"`python bench/bench_bf16_quality.py --recipes {' '.join(args.recipes)} --steps {args.steps} "
             f"--seeds {' '.join(map(str, args.seeds))}`",
             "", "| recipe | step | fp32 val loss (mean ± sd) | bf16 val loss (mean ± sd) "
             "| bf16 - fp32 (paired mean ± sd) | within fp32 seed sd? |", "| --- | ---: | ---: | ---: | ---: | --- |"]
    for recipe in args.recipes:
        curves = {(s, prec): _curve(runs[(recipe, s, prec)]) for s in args.seeds for prec in ("fp32", "bf16")}
        for step in sorted(curves[(args.seeds[0], "fp32")]):
            fp32 = [curves[(s, "fp32")][step] for s in args.seeds]
            bf16 = [curves[(s, "bf16")][step] for s in args.seeds]
            diff = [b - f for b, f in zip(bf16, fp32)]
            noise = statistics.stdev(fp32) if len(fp32) > 1 else float("nan")
            mean_diff = statistics.mean(diff)
            lines.append(f"| {RECIPES[recipe]} | {step} | {statistics.mean(fp32):.4f} ± {noise:.4f} | "
                         f"{statistics.mean(bf16):.4f} ± {statistics.stdev(bf16) if len(bf16) > 1 else 0:.4f} | "
                         f"{mean_diff:+.4f} ± {statistics.stdev(diff) if len(diff) > 1 else 0:.4f} | "
                         f"{'yes' if abs(mean_diff) <= noise else 'no'} |")
    text = "\n".join(lines) + "\n"
    (args.work / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
