"""lmforge against nanoGPT on tiny Shakespeare, character level, on CPU.

Three benchmarks (results and commands in BENCHMARKS.md):

- `recipe`: nanoGPT's CPU recipe (4 layers, 4 heads, 128 wide, context 64, batch 12, 2000 steps) run
  by both programs, interleaved A B A B so a busy machine slows both alike. Reports steady-state
  tokens/s from each program's own per-step log (evaluation and checkpoint steps left out), whole-process
  wall time, and the validation loss at the end: each program's own estimate, and both final models
  over the whole validation split with the same sequential windows.
- `speedrun`: wall time until the validation loss is <= a target (1.88): lmforge with the
  gpt-shakespeare-speedrun preset against nanoGPT's recipe evaluated every 100 steps.
- `gpu-command`: prints the GPT-2 small (124M) commands for a CUDA machine (bf16, compile, MFU).

Both programs see the same split: the first 90% of the characters for training, the last 10% for
validation (nanoGPT's `prepare.py`). nanoGPT runs from a scratch copy in --work (its data is prepared
there); its model file is imported from that copy only to evaluate its checkpoint.

    python bench/bench_nanogpt.py prepare  --nanogpt NANOGPT_DIR
    python bench/bench_nanogpt.py recipe   --nanogpt NANOGPT_DIR --rounds 3
    python bench/bench_nanogpt.py speedrun --nanogpt NANOGPT_DIR --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
LMFORGE = [PYTHON, "-m", "lmforge"]

RECIPE = dict(steps=2000, block=64, batch=12, n_layer=4, n_head=4, n_embd=128)
NANOGPT_FLAGS = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
                 "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
                 "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0"]
SKIP_FIRST = 10
"""Steps left out of steady-state throughput at the start (allocator and thread-pool warmup)."""


# ----------------------------------------------------------------------------------------------------
# Data: the same 90/10 character split for both programs


def prepare(args: argparse.Namespace) -> None:
    work, text = Path(args.work), Path(args.data).read_text(encoding="utf-8")
    work.mkdir(parents=True, exist_ok=True)
    nano = work / "nanogpt"
    if not (nano / "train.py").is_file():
        shutil.copytree(Path(args.nanogpt), nano, ignore=shutil.ignore_patterns(".git", "out*"))
    data_dir = nano / "data" / "shakespeare_char"
    if not (data_dir / "val.bin").is_file():
        shutil.copyfile(args.data, data_dir / "input.txt")  # prepare.py downloads only when it is missing
        subprocess.run([PYTHON, "prepare.py"], cwd=data_dir, check=True)
    if (work / "shards" / "manifest.json").is_file():
        return
    from lmforge.corpus.store import write_file

    n = int(len(text) * 0.9)  # nanoGPT's split point
    corpus = work / "corpus"
    shutil.rmtree(corpus, ignore_errors=True)
    corpus.mkdir(parents=True)
    write_file(corpus / "train-00000.jsonl.zst", [text[:n]])
    write_file(corpus / "val-00000.jsonl.zst", [text[n:]])
    _run(LMFORGE + ["tokenizer", "train", "--corpus", str(corpus), "--kind", "char", "--vocab-size", "256",
                    "--out", str(work / "tokenizer"), "--overwrite", "--quiet"])
    _run(LMFORGE + ["shards", "build", "--corpus", str(corpus), "--tokenizer", str(work / "tokenizer"),
                    "--out", str(work / "shards"), "--workers", "1", "--overwrite", "--quiet"])


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("$", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run(cmd, check=True, **kw)


# ----------------------------------------------------------------------------------------------------
# One run of each program


def _timed(cmd: list[str], cwd: Path, log: Path, evals_of) -> tuple[float, dict[int, float]]:
    """Run `cmd`; return its wall time and, per evaluation step, the seconds from launch until its line
    appeared in `log` (polled every 0.1 s, so time-to-target includes startup and that evaluation)."""
    print("$", " ".join(str(c) for c in cmd), flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    seen: dict[int, float] = {}
    t0 = time.perf_counter()
    # the console output goes beside the run folder: lmforge's --overwrite replaces the folder itself
    console = log.parent.with_suffix(".console.txt")
    with open(console, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
        while proc.poll() is None:
            time.sleep(0.1)
            source = log if log.is_file() else console
            if source.is_file():
                for step, _ in evals_of(source.read_text()):
                    seen.setdefault(step, time.perf_counter() - t0)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}); see {console}")
    return wall, seen


def _lmforge_evals(text: str) -> list[tuple[int, float]]:
    records = [json.loads(ln) for ln in text.splitlines() if ln.endswith("}")]
    return [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]


def run_lmforge(work: Path, preset: str, out: Path, extra: list[str]) -> dict:
    cmd = LMFORGE + ["pretrain", "--config", preset, "--data", str(work / "shards"), "--out", str(out),
                     "--overwrite", "--set", "train.progress=false", *extra]
    shutil.rmtree(out, ignore_errors=True)
    wall, seen = _timed(cmd, REPO, out / "metrics.jsonl", _lmforge_evals)
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "tokens_per_s" in r]
    # the loop restarts its clock after evaluations and saves, so each rate covers training alone
    per_step = {r["step"]: (r["tokens"] - prev) / r["tokens_per_s"]
                for r, prev in zip(steps, [0] + [r["tokens"] for r in steps])}
    return {"wall_s": wall, "per_step_s": per_step, "evals": _lmforge_evals(
        (out / "metrics.jsonl").read_text()), "seen_s": seen}


ITER = re.compile(r"^iter (\d+): loss [\d.]+, time ([\d.]+)ms", re.M)
EVAL = re.compile(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)", re.M)


def _nanogpt_evals(text: str) -> list[tuple[int, float]]:
    return [(int(m[1]), float(m[3])) for m in EVAL.finditer(text)]


def run_nanogpt(work: Path, out: Path, extra: list[str]) -> dict:
    cmd = [PYTHON, "train.py", *NANOGPT_FLAGS, f"--out_dir={out}", *extra]
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    wall, seen = _timed(cmd, work / "nanogpt", out / "stdout", _nanogpt_evals)
    text = out.with_suffix(".console.txt").read_text()
    # iteration i is the (i+1)-th update; its time includes the evaluation nanoGPT runs before it
    per_step = {int(m[1]) + 1: float(m[2]) / 1000 for m in ITER.finditer(text)}
    return {"wall_s": wall, "per_step_s": per_step, "evals": _nanogpt_evals(text), "seen_s": seen}


def steady_tokens_per_s(per_step: dict[int, float], tokens_per_step: int, skip_every: int = 0) -> float:
    """Tokens over seconds of the training steps, leaving out warmup and (nanoGPT) the steps whose time
    includes an evaluation (every `skip_every`-th iteration, counted from 0)."""
    kept = [s for k, s in per_step.items() if k > SKIP_FIRST and not (skip_every and (k - 1) % skip_every == 0)]
    return tokens_per_step * len(kept) / sum(kept)


# ----------------------------------------------------------------------------------------------------
# Whole-split evaluation of nanoGPT's checkpoint (its model class, imported from the scratch copy)


def nanogpt_full_val(work: Path, out: Path, block: int = 64, batch: int = 64) -> float:
    import torch

    sys.path.insert(0, str(work / "nanogpt"))
    try:
        from model import GPT, GPTConfig  # nanoGPT's own model file
    finally:
        sys.path.pop(0)
    ckpt = torch.load(out / "ckpt.pt", map_location="cpu", weights_only=False)  # nanoGPT pickles its args
    model = GPT(GPTConfig(**ckpt["model_args"]))
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()})
    model.eval()
    val = np.fromfile(work / "nanogpt" / "data" / "shakespeare_char" / "val.bin", dtype=np.uint16).astype(np.int64)
    n_windows = (len(val) - 1) // block  # sequential non-overlapping windows, as `lmforge eval` reads
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, n_windows, batch):
            starts = np.arange(i, min(i + batch, n_windows)) * block
            w = torch.from_numpy(val[starts[:, None] + np.arange(block + 1)])  # (B, T+1)
            x, y = w[:, :-1].contiguous(), w[:, 1:].contiguous()
            logits, _ = model(x, y)  # (B, T, V)
            total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
            count += y.numel()
    return total / count


def lmforge_full_val(work: Path, run: Path, checkpoint: str = "latest") -> float:
    metrics = run / "full-val.json"
    _run(LMFORGE + ["eval", str(run), "--data", str(work / "shards"), "--checkpoint", checkpoint,
                    "--out", str(metrics)], stdout=subprocess.DEVNULL, cwd=REPO)
    return json.loads(metrics.read_text())["loss"]


# ----------------------------------------------------------------------------------------------------
# Benchmarks


def recipe(args: argparse.Namespace) -> None:
    work, tokens = Path(args.work), RECIPE["batch"] * RECIPE["block"]
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # nanoGPT's torch reads it
    steps = ["--set", f"train.max_steps={args.steps}", "--set", f"runtime.num_threads={args.threads}"]
    nano_steps = [f"--max_iters={args.steps}", f"--lr_decay_iters={args.steps}"]
    rows = []
    for r in range(args.rounds):  # A B A B: both programs share whatever load the machine carries
        a = run_lmforge(work, "gpt-shakespeare-char", work / f"lmforge-recipe-{r}", steps + args.lmforge_set)
        b = run_nanogpt(work, work / f"nanogpt-recipe-{r}", nano_steps)
        row = {"round": r,
               "lmforge_tok_s": steady_tokens_per_s(a["per_step_s"], tokens),
               "nanogpt_tok_s": steady_tokens_per_s(b["per_step_s"], tokens, skip_every=250),
               "lmforge_wall_s": a["wall_s"], "nanogpt_wall_s": b["wall_s"],
               "lmforge_val_own": a["evals"][-1][1], "nanogpt_val_own": b["evals"][-1][1]}
        if not args.no_full_val:
            row["lmforge_val_full"] = lmforge_full_val(work, work / f"lmforge-recipe-{r}")
            row["nanogpt_val_full"] = nanogpt_full_val(work, work / f"nanogpt-recipe-{r}")
        row["tok_s_ratio"] = row["lmforge_tok_s"] / row["nanogpt_tok_s"]
        row["wall_ratio"] = row["nanogpt_wall_s"] / row["lmforge_wall_s"]
        print(json.dumps(row), flush=True)
        rows.append(row)
    _summary(rows, work / "recipe.json")


def _first_at_or_below(evals: list[tuple[int, float]], target: float) -> int | None:
    return next((step for step, loss in evals if loss <= target), None)


def speedrun(args: argparse.Namespace) -> None:
    """Seconds from launch until the first evaluation at or below the target was written."""
    work, rows = Path(args.work), []
    for r in range(args.rounds):
        a = run_lmforge(work, args.preset, work / f"lmforge-speedrun-{r}", args.lmforge_set)
        b = run_nanogpt(work, work / f"nanogpt-speedrun-{r}", ["--eval_interval=100"])
        step_a = _first_at_or_below(a["evals"], args.target)
        step_b = _first_at_or_below(b["evals"], args.target)
        row = {"round": r, "lmforge_step": step_a, "nanogpt_step": step_b,
               "lmforge_best_val": min(v for _, v in a["evals"]), "nanogpt_best_val": min(v for _, v in b["evals"]),
               "lmforge_wall_s": a["wall_s"], "nanogpt_wall_s": b["wall_s"],
               "lmforge_s_to_target": a["seen_s"].get(step_a), "nanogpt_s_to_target": b["seen_s"].get(step_b)}
        if step_a is not None and step_b is not None:
            row["time_ratio"] = row["lmforge_s_to_target"] / row["nanogpt_s_to_target"]
        print(json.dumps(row), flush=True)
        rows.append(row)
    _summary(rows, work / "speedrun.json")


def together(args: argparse.Namespace) -> None:
    """All three runs at once, one thread each: on a machine shared with other work, runs side by side
    see the same load, where runs one after another may not. nanoGPT evaluates every 100 steps so its
    time to the target is resolved to 100 steps (that costs it 12 more evaluations of 20 batches)."""
    from concurrent.futures import ThreadPoolExecutor

    work, tokens, r = Path(args.work), RECIPE["batch"] * RECIPE["block"], args.round
    os.environ["OMP_NUM_THREADS"] = "1"  # nanoGPT's torch reads it; lmforge's presets set num_threads
    one = ["--set", "runtime.num_threads=1"]
    with ThreadPoolExecutor(3) as pool:
        fa = pool.submit(run_lmforge, work, "gpt-shakespeare-char", work / f"together-lmforge-recipe-{r}", one)
        fb = pool.submit(run_nanogpt, work, work / f"together-nanogpt-recipe-{r}", ["--eval_interval=100"])
        fs = pool.submit(run_lmforge, work, args.preset, work / f"together-lmforge-speedrun-{r}", one)
        a, b, sp = fa.result(), fb.result(), fs.result()
    step_s, step_b = _first_at_or_below(sp["evals"], args.target), _first_at_or_below(b["evals"], args.target)
    row = {"lmforge_tok_s": steady_tokens_per_s(a["per_step_s"], tokens),
           "nanogpt_tok_s": steady_tokens_per_s(b["per_step_s"], tokens, skip_every=100),
           "lmforge_wall_s": a["wall_s"], "nanogpt_wall_s": b["wall_s"],
           "lmforge_val_own": a["evals"][-1][1], "nanogpt_val_own": b["evals"][-1][1],
           "lmforge_val_full": lmforge_full_val(work, work / f"together-lmforge-recipe-{r}"),
           "nanogpt_val_full": nanogpt_full_val(work, work / f"together-nanogpt-recipe-{r}"),
           "speedrun_step": step_s, "speedrun_s_to_target": sp["seen_s"].get(step_s),
           "speedrun_wall_s": sp["wall_s"], "speedrun_evals": sp["evals"],
           "nanogpt_step_to_target": step_b, "nanogpt_s_to_target": b["seen_s"].get(step_b),
           "nanogpt_evals": b["evals"]}
    row["tok_s_ratio"] = row["lmforge_tok_s"] / row["nanogpt_tok_s"]
    row["wall_ratio"] = row["nanogpt_wall_s"] / row["lmforge_wall_s"]
    (work / f"together-{r}.json").write_text(json.dumps(row, indent=1))
    print(json.dumps(row, indent=1))


def _summary(rows: list[dict], path: Path) -> None:
    keys = [k for k in rows[0] if k != "round" and all(isinstance(r.get(k), (int, float)) for r in rows)]
    summary = {k: statistics.median(r[k] for r in rows) for k in keys}
    path.write_text(json.dumps({"rounds": rows, "median": summary}, indent=1))
    print("median over", len(rows), "rounds:", json.dumps(summary, indent=1))


GPU_COMMANDS = """\
# GPT-2 small (124M), bf16 autocast, torch.compile, one CUDA GPU; the same model and batch on both sides
# (12 x 1024 tokens per micro-batch, 40 micro-batches per step, no biases as nanoGPT's default).
# lmforge: SHARDS = any corpus encoded with GPT-2's BPE (`lmforge shards build`); MFU is in metrics.jsonl
python -m lmforge pretrain --config gpt2-small --data SHARDS --out runs/gpt2-small-bench --overwrite \\
    --set model.bias=false --set train.micro_batch_size=12 --set train.max_steps=100 \\
    --set train.log_every=10 --set train.eval_every=0 --set train.save_every=0
# nanoGPT (in its checkout, after data/openwebtext/prepare.py); it prints mfu per iteration
python train.py config/train_gpt2.py --max_iters=100 --eval_interval=100000 --log_interval=10
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("prepare", "recipe", "speedrun", "together", "gpu-command"):
        p = sub.add_parser(name)
        p.add_argument("--nanogpt", help="a nanoGPT checkout (copied into --work, never modified)")
        p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "tinyshakespeare.txt"))
        p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "lmforge-bench-nanogpt"))
        p.add_argument("--rounds", type=int, default=3)
        p.add_argument("--threads", type=int, default=1, help="recipe: torch threads of each program")
        p.add_argument("--steps", type=int, default=RECIPE["steps"])
        p.add_argument("--preset", default="gpt-shakespeare-speedrun")
        p.add_argument("--target", type=float, default=1.88)
        p.add_argument("--lmforge-set", nargs="*", default=[], help="extra `--set K=V` pairs for lmforge")
        p.add_argument("--no-full-val", action="store_true")
        p.add_argument("--round", type=int, default=0, help="together: index of this round's folders")
    args = parser.parse_args()
    args.lmforge_set = [x for kv in args.lmforge_set for x in ("--set", kv)]
    if args.command == "gpu-command":
        print(GPU_COMMANDS)
        return
    if not args.nanogpt:
        parser.error("--nanogpt DIR (a nanoGPT checkout) is required")
    prepare(args)
    {"prepare": lambda a: None, "recipe": recipe, "speedrun": speedrun, "together": together}[args.command](args)


if __name__ == "__main__":
    main()
