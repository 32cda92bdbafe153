"""lmforge's LSTM against PyTorch's own `word_language_model` example on WikiText-2, on CPU.

The recipe is the example's defaults with tied embeddings: 2 layers of 200 units, embeddings 200,
dropout 0.2, batch 20, BPTT 35, plain SGD at lr 20, gradient clipping 0.25, lr / 4 after an epoch
whose validation loss does not improve. lmforge runs the rnn-lstm-wt2 preset scaled to that size.
Both read the same text files (`--data`): the example with its own reader, lmforge through word-level
shards built here from the text exactly as given (as bench/wikitext2_lm.sh does; its vocabulary
holds 4 unused special tokens besides the example's 33,278 words).

Two measurements:

- `--steps N` (default): N training steps of each, with `--threads` torch threads (each value in
  turn). Steady-state ms per step comes from each program's own log (the example's "ms/batch" per
  log interval, lmforge's tokens_per_s per log interval): the median interval after the first. The
  example trains whole epochs, so it is stopped once its log passes step N. lmforge runs with its
  defaults (runtime.compile=auto may compile it during the run); `--lmforge-set
  runtime.compile=false` runs it eager, as the example runs.
- `--epochs E`: E whole epochs of each (2,983 steps each; the example runs a last short window of 25
  tokens that lmforge's streams drop), then validation perplexity over the whole validation split
  read as 10 streams of BPTT 35 (the example's protocol, and lmforge's for recurrent models), and
  the same on the test split.

When two runs fit the cores (2 x threads <= CPUs) both run AT THE SAME TIME, so both see whatever load
the machine carries, and only the intervals logged while both were training count (the faster one
then evaluates, or ends, and the other runs alone); otherwise they alternate A B A B for `--rounds`.
Compare the ratio of one invocation, not figures across machines.

    python bench/bench_lstm_wlm.py --reference WLM_DIR --threads 1 2 --steps 300 --rounds 2
    python bench/bench_lstm_wlm.py --reference WLM_DIR --threads 1 --epochs 1

WLM_DIR is the `word_language_model` folder of a pytorch/examples checkout (its main.py is run as is).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
LMFORGE = [PYTHON, "-m", "lmforge"]
TOKENS_PER_STEP = 20 * 35
RECIPE = ["model.d_embed=200", "model.d_hidden=200", "model.dropout=0.2", "train.batch_size=20",
          "data.seq_len=35", "optim.lr=20", "train.grad_clip=0.25", "train.save_every=0", "train.progress=false"]
"""rnn-lstm-wt2 (650 units, dropout 0.5) scaled to the example's defaults; the rest is the preset's."""
CORPUS_TOML = """[corpus]
txt_mode = "line"
nfkc = false
strip_control = false
normalize_whitespace = false
strip_html = false
min_chars = 0
max_chars = 1000000000
min_letter_ratio = 0.0
dedup_exact = false
dedup_near = false
scrub_pii = false
shuffle_buffer = 1
"""
"""The text as given, one document per line, blank lines kept (each is one <eos>), order kept."""


def prepare(data: Path, work: Path) -> Path:
    shards = work / "shards"
    if (shards / "manifest.json").is_file():
        return shards
    work.mkdir(parents=True, exist_ok=True)
    (work / "corpus.toml").write_text(CORPUS_TOML)
    _run(LMFORGE + ["corpus", "build", "--input", str(data / "train.txt"), "--val-input", str(data / "valid.txt"),
                    "--test-input", str(data / "test.txt"), "--out", str(work / "corpus"), "--config",
                    str(work / "corpus.toml"), "--overwrite", "--quiet"])
    _run(LMFORGE + ["tokenizer", "train", "--corpus", str(work / "corpus"), "--kind", "word", "--vocab-size",
                    "100000", "--set", "tokenizer.min_frequency=1", "--out", str(work / "tok"), "--overwrite",
                    "--quiet"])
    _run(LMFORGE + ["shards", "build", "--corpus", str(work / "corpus"), "--tokenizer", str(work / "tok"),
                    "--out", str(shards), "--overwrite", "--quiet"])
    return shards


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print(f"$ {' '.join(cmd)}", flush=True)
    return subprocess.run(cmd, check=True, cwd=REPO, **kw)


def _env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "PYTHONUNBUFFERED": "1"}


# ----------------------------------------------------------------------------------------------------
# One run of each program: {"intervals": [(seconds since launch when logged, ms per step)], "val_ppl",
# "test_ppl"}


def _watch(cmd: list[str], cwd: Path, threads: int, console: Path, intervals, stop_after: int = 0) -> tuple:
    """Run `cmd`, noting when each log interval (`intervals(console text) -> [(step, ms per step)]`)
    appears (polled every 0.5 s); stop it once an interval reaches step `stop_after` (0: let it end)."""
    print(f"$ {' '.join(cmd)}", flush=True)
    seen: list[tuple[float, float]] = []
    t0 = time.perf_counter()
    with open(console, "w") as f:
        proc = subprocess.Popen(cmd, cwd=cwd, env=_env(threads), stdout=f, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            time.sleep(0.5)
            logged = intervals(console)
            seen += [(time.perf_counter() - t0, ms) for _, ms in logged[len(seen):]]
            if stop_after and logged and logged[-1][0] >= stop_after:
                proc.terminate()
                proc.wait()
                return seen, 0
    logged = intervals(console)
    seen += [(time.perf_counter() - t0, ms) for _, ms in logged[len(seen):]]
    return seen, proc.returncode


def run_lmforge(a: argparse.Namespace, shards: Path, out: Path, threads: int) -> dict:
    per_epoch = 2983
    steps = a.epochs * per_epoch if a.epochs else a.steps
    sets = RECIPE + [f"runtime.num_threads={threads}", f"train.max_steps={steps}", f"train.log_every={a.log_every}",
                     f"train.seed={a.seed}", "train.eval_batches=0",
                     f"train.eval_every={per_epoch if a.epochs else 0}", *a.lmforge_set]
    cmd = LMFORGE + ["pretrain", "--config", "rnn-lstm-wt2", "--data", str(shards), "--out", str(out), "--overwrite"]
    cmd += [x for kv in sets for x in ("--set", kv)]
    metrics = out / "metrics.jsonl"

    def intervals(console: Path) -> list[tuple[int, float]]:
        # the loop restarts its clock after each evaluation, so each rate covers training alone
        records = [json.loads(x) for x in metrics.read_text().splitlines() if x.endswith("}")] \
            if metrics.is_file() else []
        return [(r["step"], 1000 * TOKENS_PER_STEP / r["tokens_per_s"]) for r in records if "tokens_per_s" in r]

    out.parent.mkdir(parents=True, exist_ok=True)
    # the console goes beside the run: --overwrite replaces the run folder
    seen, code = _watch(cmd, REPO, threads, out.with_suffix(".console.txt"), intervals)
    if code:
        raise SystemExit(f"lmforge failed ({code}); see {out.with_suffix('.console.txt')}")
    records = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    result = {"intervals": seen, "val_ppl": [r["val_perplexity"] for r in records if "val_perplexity" in r][-1]}
    if a.epochs:
        test = out / "eval-test.json"
        subprocess.run(LMFORGE + ["eval", str(out), "--split", "test", "--out", str(test)], cwd=REPO,
                       env=_env(threads), check=True, stdout=subprocess.DEVNULL)
        result["test_ppl"] = json.loads(test.read_text())["perplexity"]
    return result


BATCH = re.compile(r"\|\s*(\d+)/\s*\d+ batches \|.*?ms/batch\s+([\d.]+)")
VALID = re.compile(r"valid ppl\s+([\d.]+)")
TEST = re.compile(r"test ppl\s+([\d.]+)")


def run_reference(a: argparse.Namespace, out: Path, threads: int) -> dict:
    """The example's main.py as is; stopped after `a.steps` steps unless whole epochs were asked for."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [PYTHON, str(Path(a.reference) / "main.py"), "--data", str(a.data), "--tied", "--epochs",
           str(a.epochs or 1), "--log-interval", str(a.log_every), "--seed", str(a.seed), "--save",
           str(out / "model.pt")]

    def intervals(console: Path) -> list[tuple[int, float]]:
        return [(int(m[1]), float(m[2])) for m in BATCH.finditer(console.read_text())]

    seen, code = _watch(cmd, out, threads, out / "console.txt", intervals, stop_after=0 if a.epochs else a.steps)
    if code:
        raise SystemExit(f"{cmd[1]} failed ({code}); see {out / 'console.txt'}")
    result = {"intervals": seen}
    if a.epochs:
        text = (out / "console.txt").read_text()
        result["val_ppl"] = float(VALID.findall(text)[-1])
        result["test_ppl"] = float(TEST.findall(text)[-1])
    return result


def steady(intervals: list[tuple[float, float]], until: float = math.inf) -> float:
    """Median ms per step of the log intervals after the first (warm-up) that were logged by `until`
    (when the other program of a run side by side stopped training: after that this one ran alone). The
    median: an interval that holds a compile (lmforge's runtime.compile=auto) does not move it."""
    kept = [ms for t, ms in intervals[1:] if t <= until + 1.0] or [ms for _, ms in intervals[1:]]
    if not kept:
        raise SystemExit("a run logged fewer than two intervals: raise --steps or lower --log-every")
    return statistics.median(kept)


# ----------------------------------------------------------------------------------------------------
# The driver


def measure(a: argparse.Namespace, shards: Path, threads: int) -> list[dict]:
    together = 2 * threads <= (os.cpu_count() or 1)
    rows = []
    for r in range(a.rounds):
        folder = Path(a.work) / f"t{threads}-r{r}"
        load = os.getloadavg()[0]
        if together:
            with ThreadPoolExecutor(2) as pool:
                fa = pool.submit(run_lmforge, a, shards, folder / "lmforge", threads)
                fb = pool.submit(run_reference, a, folder / "reference", threads)
                ours, theirs = fa.result(), fb.result()
        else:  # alternate, so that a change of load hits both
            ours, theirs = run_lmforge(a, shards, folder / "lmforge", threads), run_reference(a, folder / "reference",
                                                                                              threads)
        load = max(load, os.getloadavg()[0])
        # side by side, only the intervals both trained through count (the faster one then evaluates)
        until = min(ours["intervals"][-1][0], theirs["intervals"][-1][0]) if together else math.inf
        row = {"threads": threads, "round": r, "together": together, "load": load,
               "lmforge_ms": steady(ours["intervals"], until), "reference_ms": steady(theirs["intervals"], until),
               "lmforge_val_ppl": ours["val_ppl"], "reference_val_ppl": theirs.get("val_ppl"),
               "lmforge_test_ppl": ours.get("test_ppl"), "reference_test_ppl": theirs.get("test_ppl")}
        row["speedup"] = row["reference_ms"] / row["lmforge_ms"]
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reference", required=True, help="word_language_model folder of pytorch/examples")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "wikitext-2",
                   help="folder with train.txt, valid.txt, test.txt")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "lmforge-bench-lstm-wlm"))
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--epochs", type=int, default=0, help="whole epochs instead of --steps (with perplexities)")
    p.add_argument("--log-every", type=int, default=50, help="steps per log interval of both programs")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--seed", type=int, default=1111, help="the example's default seed, given to both")
    p.add_argument("--lmforge-set", nargs="*", default=[], help="extra K=V overrides for lmforge, e.g. "
                   "runtime.compile=false (eager, as the example runs)")
    a = p.parse_args()
    if not (Path(a.reference) / "main.py").is_file():
        p.error(f"--reference {a.reference} has no main.py: give the word_language_model folder")
    if not a.epochs and a.steps < 2 * a.log_every:
        p.error("--steps must cover at least two log intervals (--log-every): the first is warm-up")
    shards = prepare(a.data, Path(a.work) / "data")
    rows = [row for threads in a.threads for row in measure(a, shards, threads)]
    Path(a.work, "results.json").write_text(json.dumps(rows, indent=1))
    what = f"{a.epochs} epoch(s)" if a.epochs else f"{a.steps} steps"
    print(f"\n{what}, batch 20 x BPTT 35; ms/step steady state; speedup = reference ms / lmforge ms")
    print(f"{'threads':>7} {'lmforge ms':>10} {'ref ms':>8} {'speedup':>7} {'val ppl lmf/ref':>16} "
          f"{'test ppl lmf/ref':>17} {'load':>5}")
    for threads in a.threads:
        mine = [r for r in rows if r["threads"] == threads]
        med = {k: statistics.median(r[k] for r in mine) for k in ("lmforge_ms", "reference_ms", "speedup", "load")}
        last = mine[-1]
        print(f"{threads:>7} {med['lmforge_ms']:>10.1f} {med['reference_ms']:>8.1f} {med['speedup']:>7.2f} "
              f"{_fmt(last['lmforge_val_ppl']):>7} / {_fmt(last['reference_val_ppl']):>6} "
              f"{_fmt(last['lmforge_test_ppl']):>8} / {_fmt(last['reference_test_ppl']):>6} {med['load']:>5.2f}")


if __name__ == "__main__":
    main()
