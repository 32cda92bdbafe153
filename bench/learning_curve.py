#!/usr/bin/env python
"""Learning curves: dev accuracy against the number of labelled training examples, for several
pretrained run folders (and their scratch twins) fine-tuned with `lmforge finetune`.

Each cell (run, size, seed) fine-tunes RUN on a seeded subset of `size` rows of the training set and
evaluates dev once, after the last step (no checkpoint is picked on dev). The subsets are fixed by
(size, seed) and shared by every run: the first `size` rows of one `numpy.random.default_rng(seed)`
permutation of the training rows, so for one seed the subsets are nested (500 of them are in the 1000).
`all` is the whole training file. A subset is written in the dataset's own format, header kept, lines
copied byte for byte (SST-2 `sentence<TAB>label`, ChnSentiCorp `label<TAB>text_a`; no CSV quoting).
The fine-tuning seed is the cell's seed, so a seed fixes both the subset and the run's randomness.

Step rule (the same for every run at a size; batch 32, lr 5e-4, linear decay, warmup 10% of the steps,
weight decay 0.01, inputs cut to 128 tokens):

    steps(n) = max(MIN, min(ceil(EPOCHS * n / batch), max(ceil(n / batch), CAP)))   EPOCHS, MIN, CAP = 10, 300, 1000

that is: 10 epochs, but at least 300 steps (tiny sets would otherwise get a handful of updates), and at
most 1000 steps unless one epoch is longer, in which case one epoch. SST-2 (67,349 rows): 500 -> 300
(19 epochs), 1000 -> 313, 2000 -> 625 (10 epochs), 8000 -> 1000 (4 epochs), all -> 2105 (1 epoch).
ChnSentiCorp (9,600 rows): the same up to 8000, all -> 1000 (3.3 epochs). `--epochs-rule 10,300,1000`
changes the constants, `--steps SIZE=STEPS` (repeatable; SIZE may be `all`) sets a size's steps outright.

Cells whose eval_results.json exists are not run again, so the bench resumes and extends (more sizes,
seeds or runs into the same --work); a cell run with other settings (steps, lr, batch, max length, run
folder) is refused rather than mixed in. After a cell is read, its checkpoints (the weights) are deleted;
eval_results.json, metrics.jsonl, config.toml and cell.json (settings, wall time) stay.

Outputs in WORK: results.tsv (one row per cell, every dataset and run ever run into WORK; dev accuracy as a
fraction), summary.md (rows = sizes, columns = runs, "mean ± standard error (n seeds)" of dev accuracy in
%, and for each pair PRE / PRE-scratch, or --pair PRE=SCRATCH, the paired difference PRE - SCRATCH in
points, mean ± s.e. over the seeds both have), learning_curve.png (one per dataset, named
learning_curve-DATASET.png when WORK holds several). `--report-only` rebuilds these from results.tsv.

`--make-scratch PRE=OUT` first saves PRE's step-0 weights (a BERT or GPT run: the model built after
`torch.manual_seed(cfg.train.seed)`, as pretraining built it) as the run folder OUT, as
bench/sst2_pretrain_vs_scratch.sh does; an existing OUT is kept.

Example:
    python bench/learning_curve.py --dataset sst2 --data ../shared/data/sst2 --work bench/_work/lc-sst2 \\
        --make-scratch W/bert-pre=W/bert-scratch --run bert=W/bert-pre --run bert-scratch=W/bert-scratch \\
        --sizes 500 1000 2000 8000 all --seeds 1 2 3 --jobs 2

Threads: each fine-tune runs with OMP_NUM_THREADS=--threads (default 1); --jobs N runs N at once. Wall
times of concurrent cells include their contention.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DATASETS = {  # the header each file must have; the label column is read to check a subset's classes
    "sst2": {"train": ["sentence", "label"], "dev": ["sentence", "label"]},
    "chnsenticorp": {"train": ["label", "text_a"], "dev": ["qid", "label", "text_a"]},
}
COLUMNS = ["dataset", "run", "size", "seed", "labels", "steps", "dev_accuracy", "dev_macro_f1", "wall_s"]
SETTINGS = ("run_dir", "dev", "steps", "batch_size", "lr", "max_length")  # a reused cell must match these


class BenchError(Exception):
    pass


# --- data -------------------------------------------------------------------------------------------


def read_lines(path: Path) -> list[str]:
    """Lines without their newline. Split on "\\n" only: str.splitlines would also split at U+2028, \\x1c,
    ... that may sit inside a text."""
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def check_header(path: Path, lines: list[str], dataset: str, which: str) -> None:
    want = DATASETS[dataset][which]
    got = lines[0].rstrip("\r").split("\t") if lines else []
    if [c.strip() for c in got] != want:
        raise BenchError(f"{path}: header {got!r}, but --dataset {dataset} {which} files start with {want!r}")


def write_atomic(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    if isinstance(data, str):
        tmp.write_text(data, encoding="utf-8")
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)


class TrainSet:
    """The training file's lines and the seeded subsets of them."""

    def __init__(self, path: Path, dataset: str, subset_dir: Path):
        self.path, self.dataset, self.subset_dir = path, dataset, subset_dir
        lines = read_lines(path)
        check_header(path, lines, dataset, "train")
        self.header = lines[0]
        self.rows = [x for x in lines[1:] if x.strip()]
        self.label_col = DATASETS[dataset]["train"].index("label")
        self._perms: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def n_labels(self, size: str) -> int:
        return len(self) if size == "all" else int(size)

    def subset(self, size: str, seed: int) -> Path:
        """The file with the first `size` rows of seed's permutation (in file order); `all`: the file."""
        if size == "all":
            return self.path
        n = int(size)
        out = self.subset_dir / self.dataset / f"seed{seed}-n{n}.tsv"
        if out.is_file():
            return out
        if seed not in self._perms:
            self._perms[seed] = np.random.default_rng(seed).permutation(len(self.rows))
        pick = np.sort(self._perms[seed][:n])
        rows = [self.rows[i] for i in pick]
        classes = {r.split("\t")[self.label_col].strip() for r in rows}
        if len(classes) < 2:
            print(f"warning: {out.name} holds one class only ({classes}); its fine-tunes cannot learn much",
                  file=sys.stderr)
        write_atomic(out, "\n".join([self.header, *rows]) + "\n")
        return out


# --- the step rule ----------------------------------------------------------------------------------


def rule_steps(n: int, batch: int, epochs: float = 10, floor: int = 300, cap: int = 1000) -> int:
    """`epochs` epochs, at least `floor` steps, at most `cap` steps unless one epoch is longer (then one)."""
    per_epoch = math.ceil(n / batch)
    return max(floor, min(math.ceil(epochs * n / batch), max(per_epoch, cap)))


def parse_rule(text: str) -> tuple[float, int, int]:
    try:
        epochs, floor, cap = text.split(",")
        return float(epochs), int(floor), int(cap)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--epochs-rule {text!r}: give EPOCHS,MIN_STEPS,CAP_STEPS, e.g. 10,300,1000") from None


def parse_size(text: str) -> str:
    if text == "all":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"size {text!r}: a positive number of labels, or all")
    return str(int(text))


def key_value(text: str, what: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"{text!r}: give {what}")
    return key, value


def size_order(size: str) -> tuple[int, int]:
    return (1, 0) if size == "all" else (0, int(size))


# --- scratch twins ----------------------------------------------------------------------------------


def make_scratch(pre_run: str | Path, out: str | Path) -> Path:
    """Save `pre_run`'s step-0 weights as the run folder `out`: its model built after
    torch.manual_seed(cfg.train.seed), as pretraining built it, with its tokenizer and config (BERT and
    GPT runs, as bench/sst2_pretrain_vs_scratch.sh does)."""
    import torch

    from lmforge.models import build_model
    from lmforge.runs import save_run
    from lmforge.tasks import read_config
    from lmforge.tokenizer import load_tokenizer

    cfg = read_config(pre_run)
    if cfg.model.kind not in ("bert", "gpt"):
        raise BenchError(f"{pre_run}: a {cfg.model.kind} run; make_scratch rebuilds BERT and GPT runs only")
    torch.manual_seed(cfg.train.seed)  # the seed pretraining initialised with
    model = build_model(cfg.model)
    return save_run(out, model, load_tokenizer(f"{pre_run}/tokenizer"), cfg, meta={"random_init": True})


# --- fine-tuning cells ------------------------------------------------------------------------------


def cell_dir(work: Path, dataset: str, run: str, size: str, seed: int) -> Path:
    return work / "ft" / dataset / run / f"n{size}-seed{seed}"


def read_cell(out: Path) -> tuple[dict, dict]:
    dev = json.loads((out / "eval_results.json").read_text())["dev"]
    meta_path = out / "cell.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return dev, meta


def run_cell(job: dict, threads: int) -> dict:
    """Fine-tune one cell, read its dev metrics, delete its weights, record its settings and wall time."""
    out: Path = job["out"]
    log = out.with_name(out.name + ".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    steps = job["steps"]
    cmd = [sys.executable, "-m", "lmforge", "finetune", "--from", job["run_dir"], "--train", str(job["train"]),
           "--dev", str(job["dev"]), "--out", str(out), "--overwrite", "--quiet", "--seed", str(job["seed"]),
           "--max_steps", str(steps), "--per_device_train_batch_size", str(job["batch_size"]),
           "--learning_rate", str(job["lr"]), "--warmup_steps", str(steps // 10), "--weight_decay", "0.01",
           "--eval_steps", str(steps), "--logging_steps", "50", "--max_length", str(job["max_length"])]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    t0 = time.time()
    with open(log, "w", encoding="utf-8") as f:
        f.write(" ".join(cmd) + "\n\n")
        f.flush()
        rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    wall = time.time() - t0
    if rc != 0 or not (out / "eval_results.json").is_file():
        tail = "\n".join(read_lines(log)[-5:])
        raise BenchError(f"exit {rc}; log {log}:\n{tail}")
    dev = json.loads((out / "eval_results.json").read_text())["dev"]
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    meta = {k: job[k] for k in ("dataset", "run", "size", "seed", "labels", *SETTINGS)}
    meta.update(wall_s=round(wall, 1), dev_accuracy=dev["accuracy"], dev_macro_f1=dev.get("macro_f1"))
    write_atomic(out / "cell.json", json.dumps(meta, indent=2) + "\n")
    return row_of(job, dev, wall)


def row_of(job: dict, dev: dict, wall: float | None) -> dict:
    return {"dataset": job["dataset"], "run": job["run"], "size": job["size"], "seed": str(job["seed"]),
            "labels": str(job["labels"]), "steps": str(job["steps"]), "dev_accuracy": f"{dev['accuracy']:.6f}",
            "dev_macro_f1": f"{dev['macro_f1']:.6f}" if dev.get("macro_f1") is not None else "",
            "wall_s": "" if wall is None else f"{wall:.1f}"}


# --- results.tsv ------------------------------------------------------------------------------------


def row_key(row: dict) -> tuple:
    return row["dataset"], row["run"], row["size"], row["seed"]


def load_results(path: Path) -> dict[tuple, dict]:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return {row_key(r): r for r in rows}


def save_results(path: Path, results: dict[tuple, dict]) -> None:
    runs_seen: dict[str, int] = {}
    for r in results.values():
        runs_seen.setdefault(r["run"], len(runs_seen))
    rows = sorted(results.values(), key=lambda r: (r["dataset"], size_order(r["size"]), runs_seen[r["run"]],
                                                   int(r["seed"])))
    lines = ["\t".join(COLUMNS)] + ["\t".join(r.get(c, "") for c in COLUMNS) for r in rows]
    write_atomic(path, "\n".join(lines) + "\n")


# --- summary and plot -------------------------------------------------------------------------------


def mean_se(values: list[float]) -> tuple[float, float, int]:
    a = np.asarray(values, dtype=float)
    se = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else float("nan")
    return float(a.mean()), se, len(a)


def fmt(m: float, se: float, n: int, signed: bool = False) -> str:
    s = f"{m:+.1f}" if signed else f"{m:.1f}"
    return f"{s} ± {se:.1f} ({n})" if n > 1 else f"{s} ± – ({n})"


def run_order(rows: list[dict], preferred: list[str]) -> list[str]:
    present = list(dict.fromkeys(r["run"] for r in rows))
    return [r for r in preferred if r in present] + [r for r in present if r not in preferred]


def find_pairs(runs: list[str], explicit: list[tuple[str, str]]) -> list[tuple[str, str]]:
    pairs = [(p, s) for p, s in explicit if p in runs and s in runs]
    pairs += [(r, f"{r}-scratch") for r in runs if f"{r}-scratch" in runs and (r, f"{r}-scratch") not in pairs]
    return pairs


def curves(rows: list[dict]) -> dict[str, dict[str, dict[int, float]]]:
    """run -> size -> seed -> dev accuracy in %."""
    out: dict[str, dict[str, dict[int, float]]] = {}
    for r in rows:
        out.setdefault(r["run"], {}).setdefault(r["size"], {})[int(r["seed"])] = 100 * float(r["dev_accuracy"])
    return out


def size_label(size: str, labels: dict[str, int]) -> str:
    return f"all ({labels[size]:,})" if size == "all" else f"{int(size):,}"


def summary_section(dataset: str, rows: list[dict], runs: list[str], pairs: list[tuple[str, str]]) -> str:
    acc = curves(rows)
    sizes = sorted({r["size"] for r in rows}, key=size_order)
    labels = {r["size"]: int(r["labels"]) for r in rows}
    head = ["labels", "steps", *runs, *(f"{p} − {s} (points)" for p, s in pairs)]
    out = [f"## {dataset}", "",
           "Dev accuracy (%), mean ± standard error over seeds (n seeds); differences are paired by seed "
           "(same subset and fine-tuning seed).", "",
           "| " + " | ".join(head) + " |", "| " + " | ".join("---:" for _ in head) + " |"]
    for size in sizes:
        steps = sorted({int(r["steps"]) for r in rows if r["size"] == size})
        cells = [size_label(size, labels), "/".join(map(str, steps))]
        for run in runs:
            vals = list(acc.get(run, {}).get(size, {}).values())
            cells.append(fmt(*mean_se(vals)) if vals else "")
        for pre, scr in pairs:
            a, b = acc[pre].get(size, {}), acc[scr].get(size, {})
            diffs = [a[s] - b[s] for s in sorted(set(a) & set(b))]
            cells.append(fmt(*mean_se(diffs), signed=True) if diffs else "")
        out.append("| " + " | ".join(cells) + " |")
    walls = [float(r["wall_s"]) for r in rows if r.get("wall_s")]
    out += ["", f"{len(rows)} cells, {sum(walls) / 3600:.2f} h of fine-tuning wall time "
                f"(mean {np.mean(walls) if walls else float('nan'):.0f} s per cell).", ""]
    return "\n".join(out)


def plot(dataset: str, rows: list[dict], runs: list[str], pairs: list[tuple[str, str]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    acc = curves(rows)
    labels = {r["size"]: int(r["labels"]) for r in rows}
    sizes = sorted(labels, key=lambda s: labels[s])
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    style: dict[str, tuple[str, str]] = {}
    for i, (pre, scr) in enumerate(pairs):
        style.setdefault(pre, (colors[i % len(colors)], "-"))
        style.setdefault(scr, (colors[i % len(colors)], "--"))
    free = iter(colors[len(pairs):] + colors[:len(pairs)])
    for run in runs:
        if run not in style:
            style[run] = (next(free, "k"), "-")
    fig, ax = plt.subplots(figsize=(7.5, 5), constrained_layout=True)
    for i, run in enumerate(runs):
        shift = 10 ** (0.012 * (i - (len(runs) - 1) / 2))  # spread the error bars of one size apart
        pts = [(labels[s], *mean_se(list(acc[run][s].values()))) for s in sizes if acc[run].get(s)]
        if not pts:
            continue
        x, m, se, _ = zip(*pts)
        color, ls = style[run]
        ax.errorbar(np.asarray(x) * shift, m, yerr=np.nan_to_num(se), label=run, color=color, linestyle=ls,
                    marker="o", markersize=4, capsize=3)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator([labels[s] for s in sizes]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([size_label(s, labels).replace(" (", "\n(") for s in sizes])
    ax.set_xlabel("labelled training examples (log scale)")
    ax.set_ylabel("dev accuracy (%)")
    ax.set_title(f"{dataset}: dev accuracy vs labels (mean ± s.e. over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def report(work: Path, results: dict[tuple, dict], preferred: list[str], explicit: list[tuple[str, str]]) -> None:
    rows = list(results.values())
    if not rows:
        raise BenchError(f"{work / 'results.tsv'} holds no cells yet")
    datasets = sorted({r["dataset"] for r in rows})
    parts = ["# Learning curves", ""]
    for ds in datasets:
        sub = [r for r in rows if r["dataset"] == ds]
        runs = run_order(sub, preferred)
        pairs = find_pairs(runs, explicit)
        parts.append(summary_section(ds, sub, runs, pairs))
        png = work / ("learning_curve.png" if len(datasets) == 1 else f"learning_curve-{ds}.png")
        plot(ds, sub, runs, pairs, png)
        parts.append(f"![{ds}]({png.name})\n")
    if len(datasets) > 1 and (work / "learning_curve.png").is_file():
        (work / "learning_curve.png").unlink()  # from when WORK held one dataset
    write_atomic(work / "summary.md", "\n".join(parts))
    print((work / "summary.md").read_text(encoding="utf-8"))


# --- main -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter,
                                epilog="Details (step rule, outputs): see the module docstring.")
    p.add_argument("--dataset", choices=sorted(DATASETS), help="the layout of the data files")
    p.add_argument("--data", type=Path, help="folder with train.tsv and dev.tsv")
    p.add_argument("--dev", type=Path, help="dev file (default: DATA/dev.tsv)")
    p.add_argument("--run", action="extend", nargs="+", default=[], metavar="NAME=RUN_DIR",
                   help="run folders to fine-tune (repeatable)")
    p.add_argument("--pair", action="extend", nargs="+", default=[], metavar="PRE=SCRATCH",
                   help="compare these two runs (NAME and NAME-scratch are paired anyway)")
    p.add_argument("--make-scratch", action="extend", nargs="+", default=[], metavar="PRE_DIR=OUT_DIR",
                   help="first save PRE_DIR's step-0 weights as the run folder OUT_DIR (kept if it exists)")
    p.add_argument("--sizes", nargs="+", type=parse_size, default=["500", "1000", "2000", "8000", "all"],
                   help="numbers of labelled training rows, or all (default 500 1000 2000 8000 all)")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3],
                   help="each seed draws the subsets and seeds fine-tuning (default 1 2 3)")
    p.add_argument("--work", type=Path, required=True, help="folder for subsets, fine-tunes and results")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (default 5e-4)")
    p.add_argument("--batch-size", type=int, default=32, help="examples per step (default 32)")
    p.add_argument("--epochs-rule", type=parse_rule, default=(10.0, 300, 1000), metavar="EPOCHS,MIN,CAP",
                   help="steps = max(MIN, min(EPOCHS epochs, max(1 epoch, CAP))); default 10,300,1000")
    p.add_argument("--steps", action="extend", nargs="+", default=[], metavar="SIZE=STEPS",
                   help="a size's steps outright, instead of the rule")
    p.add_argument("--max-length", type=int, default=128, help="tokens per input (default 128)")
    p.add_argument("--jobs", type=int, default=1, help="fine-tunes at once (default 1)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each fine-tune (default 1)")
    p.add_argument("--report-only", action="store_true", help="rebuild summary.md and the plot from results.tsv")
    a = p.parse_args(argv)
    try:
        return bench(a, p)
    except BenchError as e:
        print(f"learning_curve: {e}", file=sys.stderr)
        return 1


def bench(a: argparse.Namespace, p: argparse.ArgumentParser) -> int:
    runs = dict(key_value(x, "NAME=RUN_DIR") for x in a.run)
    if len(runs) != len(a.run):
        p.error("--run names must differ")
    pairs = [key_value(x, "PRE=SCRATCH") for x in a.pair]
    results_path = a.work / "results.tsv"
    if a.report_only:
        report(a.work, load_results(results_path), list(runs), pairs)
        return 0

    for spec in a.make_scratch:
        pre, out = key_value(spec, "PRE_DIR=OUT_DIR")
        if Path(out).exists():
            print(f"scratch: {out} exists, kept")
        else:
            make_scratch(pre, out)
            print(f"scratch: {out} = step-0 weights of {pre}")
    if not runs:
        if a.make_scratch:
            return 0
        p.error("give at least one --run NAME=RUN_DIR (or --report-only)")
    if not a.dataset or not a.data:
        p.error("--dataset and --data are needed to fine-tune")
    for name, d in runs.items():
        if not name or any(c in name for c in "/\t\n=") or name.startswith("."):
            p.error(f"--run {name}=...: a name without / = or tabs")
        if not (Path(d) / "config.toml").is_file():
            p.error(f"--run {name}={d}: not a run folder (no config.toml)")
    overrides = {parse_size(k): int(v) for k, v in (key_value(x, "SIZE=STEPS") for x in a.steps)}

    train = TrainSet(a.data / "train.tsv", a.dataset, a.work / "subsets")
    dev = a.dev or a.data / "dev.tsv"
    check_header(dev, read_lines(dev)[:1], a.dataset, "dev")
    sizes = sorted(dict.fromkeys(a.sizes), key=size_order)
    for s in sizes:
        if s != "all" and int(s) > len(train):
            p.error(f"size {s}: the training file has {len(train):,} rows")
    epochs, floor, cap = a.epochs_rule
    steps = {s: overrides.get(s) or rule_steps(train.n_labels(s), a.batch_size, epochs, floor, cap) for s in sizes}
    print(f"{a.dataset}: {len(train):,} train rows; dev {dev}")
    for s in sizes:
        n = train.n_labels(s)
        print(f"  {s:>6}: {n:>7,} labels, {steps[s]:>5} steps of {a.batch_size} "
              f"({steps[s] * a.batch_size / n:.2f} epochs){' (--steps)' if s in overrides else ''}")

    results = load_results(results_path)
    jobs: list[dict] = []
    for size in sizes:
        for seed in a.seeds:
            for name, run_dir in runs.items():
                job = {"dataset": a.dataset, "run": name, "run_dir": str(Path(run_dir).resolve()), "size": size,
                       "seed": seed, "labels": train.n_labels(size), "steps": steps[size],
                       "batch_size": a.batch_size, "lr": a.lr, "max_length": a.max_length, "dev": str(dev.resolve()),
                       "out": cell_dir(a.work, a.dataset, name, size, seed)}
                if (job["out"] / "eval_results.json").is_file():
                    shutil.rmtree(job["out"] / "checkpoints", ignore_errors=True)  # a run stopped before it did
                    dev_m, meta = read_cell(job["out"])
                    diff = [k for k in SETTINGS if k in meta and meta[k] != job[k]]
                    if diff:
                        raise BenchError(f"{job['out']} was run with " + ", ".join(
                            f"{k}={meta[k]} (now {job[k]})" for k in diff) + ": delete it or use another --work")
                    row = row_of(job, dev_m, meta.get("wall_s"))
                    results[row_key(row)] = row
                    continue
                job["train"] = train.subset(size, seed).resolve()
                jobs.append(job)
    save_results(results_path, results)
    print(f"{len(jobs)} cells to run, {len(results)} done; {a.jobs} at a time, {a.threads} thread(s) each")

    failed = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        futures = {pool.submit(run_cell, job, a.threads): job for job in jobs}
        for i, fut in enumerate(concurrent.futures.as_completed(futures), 1):
            job = futures[fut]
            what = f"[{i}/{len(jobs)}] {job['run']} n={job['size']} seed={job['seed']}"
            try:
                row = fut.result()
            except Exception as e:  # one failed cell does not stop the others
                failed += 1
                print(f"{what}: FAILED {e}", file=sys.stderr)
                continue
            results[row_key(row)] = row
            save_results(results_path, results)
            print(f"{what}: {row['steps']} steps, dev accuracy {100 * float(row['dev_accuracy']):.2f}%, "
                  f"{row['wall_s']} s", flush=True)
    report(a.work, results, list(runs), pairs)
    if failed:
        print(f"learning_curve: {failed} cell(s) failed; rerun to retry them", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
