"""Fine-tuning throughput: `lmforge finetune` against HF `Trainer` + `BertForSequenceClassification`.

Both sides start from the same weights (a BERT run exported with `lmforge export`), read the same
seeded SST-2 subset, tokenize it with the same WordPiece tokenizer, cut at the same max length, pad
each batch to its longest example (HF: the standard `DataCollatorWithPadding`), and train with AdamW
in fp32 for the same number of steps of the same batch size, then evaluate the same small dev file
once. Each run is its own process, alternated A B A B, with the same torch thread count.

Reported per run: steady-state examples/s (per-step timestamps from step `--skip` to the last) and
whole-process examples/s (train examples over the wall time of the process: interpreter start,
imports, reading, tokenizing, model build, training, the dev evaluation; lmforge also writes its
checkpoint and results). HF `Trainer` needs `accelerate` (`pip install accelerate`; not an lmforge
dependency).

Usage: python bench/bench_finetune_hf.py [--run BERT_RUN] [--data ../shared/data/sst2] [--steps 150] [--rounds 3]
BERT_RUN defaults to the random-init BERT of bench/sst2_pretrain_vs_scratch.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_subset(data: Path, out: Path, n_train: int, n_dev: int, seed: int) -> tuple[Path, Path]:
    """A seeded sample of SST-2 train and the first `n_dev` dev rows, as TSVs with the GLUE header."""
    rows = (data / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]
    pick = np.random.default_rng(seed).permutation(len(rows))[:n_train]
    train, dev = out / "train.tsv", out / "dev.tsv"
    train.write_text("sentence\tlabel\n" + "".join(rows[i] + "\n" for i in pick), encoding="utf-8")
    dev_rows = (data / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:n_dev + 1]
    dev.write_text("sentence\tlabel\n" + "".join(r + "\n" for r in dev_rows), encoding="utf-8")
    return train, dev


def read_tsv(path: Path) -> tuple[list[str], list[int]]:
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()[1:]]
    return [r[0].strip() for r in rows], [int(r[1]) for r in rows]


# ----------------------------------------------------------------------------------------------------
# The two workers (each runs in its own process)


def run_hf(a: argparse.Namespace) -> dict:
    import torch
    from datasets import Dataset
    from transformers import (
        AutoTokenizer,
        BertForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    torch.manual_seed(a.seed)
    tok = AutoTokenizer.from_pretrained(a.hf)
    model = BertForSequenceClassification.from_pretrained(a.hf, num_labels=2)

    def dataset(path: Path) -> Dataset:
        texts, labels = read_tsv(path)
        enc = tok(texts, truncation=True, max_length=a.max_length)
        return Dataset.from_dict({**enc, "labels": labels})

    train, dev = dataset(a.train), dataset(a.dev)
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    args = TrainingArguments(output_dir=a.out, max_steps=a.steps, per_device_train_batch_size=a.batch,
                             per_device_eval_batch_size=64, learning_rate=a.lr, weight_decay=0.01,
                             warmup_steps=a.steps // 10, lr_scheduler_type="linear", max_grad_norm=1.0,
                             logging_steps=10, eval_strategy="no", save_strategy="no", report_to="none",
                             disable_tqdm=True, seed=a.seed, use_cpu=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
                      data_collator=DataCollatorWithPadding(tok), callbacks=[Stamp()])
    trainer.train()
    acc = trainer.evaluate()
    return {"stamps": stamps, "optim": args.optim, "eval_loss": acc["eval_loss"]}


def run_lmforge(a: argparse.Namespace) -> dict:
    from lmforge.cli import main

    code = main(["finetune", "--from", a.run, "--train", str(a.train), "--dev", str(a.dev), "--out", a.out,
                 "--overwrite", "--quiet", "--max_steps", str(a.steps), "--per_device_train_batch_size",
                 str(a.batch), "--learning_rate", str(a.lr), "--weight_decay", "0.01", "--warmup_steps",
                 str(a.steps // 10), "--eval_steps", str(a.steps), "--logging_steps", "10",
                 "--max_length", str(a.max_length), "--seed", str(a.seed)])
    logs = [json.loads(x) for x in (Path(a.out) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = {x["step"]: x["elapsed"] for x in logs if "elapsed" in x}
    return {"exit": code, "logged": steps}


# ----------------------------------------------------------------------------------------------------
# The driver


def steady(result: dict, skip: int, steps: int, batch: int) -> float:
    if "stamps" in result:
        s = result["stamps"]
        return (steps - skip) * batch / (s[steps - 1] - s[skip - 1])
    t = {int(k): v for k, v in result["logged"].items()}
    return (steps - skip) * batch / (t[steps] - t[skip])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="bench/_work/ft-sst2/bert-scratch", help="BERT run folder (lmforge)")
    p.add_argument("--data", default="../shared/data/sst2", type=Path)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--skip", type=int, default=20, help="steps left out of the steady-state rate")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--train-examples", type=int, default=8000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "1")))
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--worker", choices=["hf", "lmforge"], help=argparse.SUPPRESS)
    p.add_argument("--hf", help=argparse.SUPPRESS)
    p.add_argument("--train", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--dev", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        import torch

        torch.set_num_threads(a.threads)
        res = run_hf(a) if a.worker == "hf" else run_lmforge(a)
        a.result.write_text(json.dumps(res))
        return
    if a.skip >= a.steps or a.skip % 10:
        sys.exit("--skip must be a multiple of 10 below --steps (lmforge logs every 10 steps)")
    if not (Path(a.run) / "config.toml").is_file():
        sys.exit(f"{a.run} is not a run folder: run bench/sst2_pretrain_vs_scratch.sh first, or give --run")
    from lmforge.interop.runs import export_hf

    tmp = Path(tempfile.mkdtemp(prefix="bench-ft-"))
    hf_dir = export_hf(a.run, tmp / "hf")
    train, dev = write_subset(a.data, tmp, a.train_examples, 128, a.seed)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "TOKENIZERS_PARALLELISM": "false"}
    try:
        rows = measure(a, tmp, hf_dir, train, dev, env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for i, name in ((2, "steady"), (3, "whole-process")):
        ours = np.median([x[i] for x in rows if x[0] == "lmforge"])
        theirs = np.median([x[i] for x in rows if x[0] == "hf"])
        print(f"{name}: lmforge {ours:.1f} ex/s, HF Trainer {theirs:.1f} ex/s, ratio {ours / theirs:.2f}")


def measure(a: argparse.Namespace, tmp: Path, hf_dir: Path, train: Path, dev: Path, env: dict) -> list[tuple]:
    """Alternate the two sides, each in a fresh process: (side, round, steady, whole-process, wall s)."""
    rows = []
    for r in range(a.rounds):
        for side in ("lmforge", "hf"):
            out, result = tmp / f"{side}-{r}", tmp / f"{side}-{r}.json"
            cmd = [sys.executable, __file__, "--worker", side, "--run", a.run, "--hf", str(hf_dir), "--train",
                   str(train), "--dev", str(dev), "--out", str(out), "--result", str(result), "--steps",
                   str(a.steps), "--batch", str(a.batch), "--max-length", str(a.max_length), "--lr", str(a.lr),
                   "--threads", str(a.threads), "--seed", str(a.seed)]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            res = json.loads(result.read_text())
            rows.append((side, r, steady(res, a.skip, a.steps, a.batch), a.steps * a.batch / wall, wall))
            print(f"{side:8s} round {r}: steady {rows[-1][2]:7.1f} ex/s, whole process {rows[-1][3]:6.1f} ex/s "
                  f"({wall:.1f} s)" + (f", optim {res['optim']}" if "optim" in res else ""), flush=True)
    return rows


if __name__ == "__main__":
    main()
