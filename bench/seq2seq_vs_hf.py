"""lmforge vs `transformers` Seq2SeqTrainer on English -> Chinese (Tatoeba cmn-eng), side by side.

Both sides fine-tune the same `t5-tiny` architecture from the same random initialisation (an lmforge
run exported with `lmforge export`, which `T5ForConditionalGeneration.from_pretrained` loads), on the
same training pairs tokenized by the same tokenizer (lmforge's, and `AutoTokenizer` on the export),
for the same steps with AdamW (betas 0.9/0.999, no weight decay), linear decay after the same warmup,
gradient clipping at 1.0, dropout 0.1, fp32, batches padded to their longest pair, one process each,
alternated per seed. Each then decodes dev and test with beam search (4 beams, at most 64 new tokens),
as its own trainer does at the end (lmforge's `finetune`; HF's `Seq2SeqTrainer.predict` with
`predict_with_generate`). Reported per run: steady-state training pairs/s (from step `--skip` on),
whole-process wall time, test BLEU (sacrebleu zh) and chrF.

Then decoding alone: the lmforge-trained model, and its export loaded by `transformers`, decode the
test set with beam search (4 beams) in the same batches (sorted by length, `--gen-batch` sources),
timed in one process; the outputs are compared too.

Data: the split, tokenizer and `init-SEED` runs of bench/seq2seq_pretrain_vs_scratch.py (run it first,
or let this script make them in the same work folder).
Usage: python bench/seq2seq_vs_hf.py [--seeds 1 2 3] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_real_checkpoint import steady  # noqa: E402
from seq2seq_pretrain_vs_scratch import PREFIX, lmforge, scratch_run, split_cmn  # noqa: E402


def read_pairs(path: Path) -> tuple[list[str], list[str]]:
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()[1:]]
    return [r[0] for r in rows], [r[1] for r in rows]


# ----------------------------------------------------------------------------------------------------
# Workers (each in its own process)


def run_hf(a: argparse.Namespace) -> dict:
    import torch
    from datasets import Dataset
    from transformers import (
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
        T5ForConditionalGeneration,
        TrainerCallback,
    )

    from lmforge.evaluate import text_metrics

    tok = AutoTokenizer.from_pretrained(a.source)
    model = T5ForConditionalGeneration.from_pretrained(a.source)

    def dataset(path: Path) -> Dataset:
        sources, targets = read_pairs(path)
        enc = tok([PREFIX["cmn"] + s for s in sources], truncation=True, max_length=256)
        enc["labels"] = tok(text_target=targets, truncation=True, max_length=a.max_target_length)["input_ids"]
        return Dataset.from_dict(dict(enc))

    train, splits = dataset(a.train), {"dev": dataset(a.dev), "test": dataset(a.test)}
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    args = Seq2SeqTrainingArguments(
        output_dir=a.out, max_steps=a.steps, per_device_train_batch_size=a.batch, per_device_eval_batch_size=64,
        learning_rate=a.lr, weight_decay=0.0, warmup_steps=a.warmup, lr_scheduler_type="linear", max_grad_norm=1.0,
        logging_steps=50, eval_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True, seed=a.seed,
        use_cpu=True, dataloader_num_workers=0, predict_with_generate=True)
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=train, callbacks=[Stamp()],
                             data_collator=DataCollatorForSeq2Seq(tok, model=model, label_pad_token_id=-100))
    torch.manual_seed(a.seed)
    trainer.train()
    out = {"stamps": stamps, "steps": len(stamps)}
    for name, data in splits.items():
        pred = trainer.predict(data, num_beams=4, max_new_tokens=64)
        ids = [[t for t in row if t >= 0] for row in pred.predictions.tolist()]
        hyps = tok.batch_decode(ids, skip_special_tokens=True)
        out[name] = text_metrics(hyps, read_pairs(getattr(a, name))[1])
    return out


def run_lmforge(a: argparse.Namespace) -> dict:
    from lmforge.cli import main

    code = main(["finetune", "--task", "seq2seq", "--from", a.source, "--train", str(a.train), "--dev", str(a.dev),
                 "--test", str(a.test), "--out", a.out, "--overwrite", "--quiet", "--max_steps", str(a.steps),
                 "--per_device_train_batch_size", str(a.batch), "--learning_rate", str(a.lr), "--warmup_steps",
                 str(a.warmup), "--eval_steps", str(a.steps), "--logging_steps", "50", "--max_target_length",
                 str(a.max_target_length), "--source_prefix", PREFIX["cmn"], "--num_beams", "4", "--max_new_tokens",
                 "64", "--seed", str(a.seed)])
    logs = [json.loads(x) for x in (Path(a.out) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    results = json.loads((Path(a.out) / "eval_results.json").read_text())
    return {"exit": code, "logged": {x["step"]: x["elapsed"] for x in logs if "elapsed" in x}, "steps": a.steps,
            "dev": results["dev"], "test": results["test"]}


def decode_speed(a: argparse.Namespace) -> dict:
    """Beam-4 decoding of the test set by lmforge and by transformers on the same weights and batches."""
    import torch
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    from lmforge.data.pairs import encode_sources
    from lmforge.generate_seq2seq import Decoding, translate
    from lmforge.interop import export_hf
    from lmforge.tasks import load_run

    run = load_run(a.source)
    hf_dir = Path(a.out)
    if not hf_dir.exists():
        export_hf(a.source, hf_dir)
    hf = T5ForConditionalGeneration.from_pretrained(hf_dir).eval()
    tok = AutoTokenizer.from_pretrained(hf_dir)
    sources = read_pairs(a.test)[0]
    ids, _ = encode_sources(run.tokenizer, sources, PREFIX["cmn"], 256)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # the batches lmforge makes
    d = Decoding(max_new_tokens=64, num_beams=4)
    t0 = time.perf_counter()
    ours = translate(run.model, run.tokenizer, sources, d, PREFIX["cmn"], 256, batch_size=a.gen_batch)
    t_ours = time.perf_counter() - t0
    theirs = [""] * len(sources)
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(order), a.gen_batch):
            index = order[start:start + a.gen_batch]
            batch = tok([PREFIX["cmn"] + sources[i] for i in index], return_tensors="pt", padding=True)
            out = hf.generate(**batch, num_beams=4, max_new_tokens=64, do_sample=False)
            for i, text in zip(index, tok.batch_decode(out, skip_special_tokens=True)):
                theirs[i] = text
    t_hf = time.perf_counter() - t0
    same = sum(o.text == t for o, t in zip(ours, theirs))
    return {"lmforge_s": t_ours, "hf_s": t_hf, "sources": len(sources), "same_outputs": same}


# ----------------------------------------------------------------------------------------------------
# Driver


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--max-target-length", type=int, default=64)
    p.add_argument("--gen-batch", type=int, default=64)
    p.add_argument("--skip", type=int, default=50, help="steps left out of the steady-state rate")
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    p.add_argument("--work", type=Path, default=ROOT / "bench" / "_work" / "seq2seq-cmn")
    p.add_argument("--worker", choices=["hf", "lmforge", "decode"], help=argparse.SUPPRESS)
    for name in ("source", "out"):
        p.add_argument(f"--{name}", help=argparse.SUPPRESS)
    for name in ("train", "dev", "test", "result"):
        p.add_argument(f"--{name}", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        import torch

        torch.set_num_threads(a.threads)
        work = {"hf": run_hf, "lmforge": run_lmforge, "decode": decode_speed}[a.worker]
        a.result.write_text(json.dumps(work(a)))
        return
    a.work.mkdir(parents=True, exist_ok=True)
    log = a.work / "log.txt"
    splits = split_cmn(a.work)
    if not (a.work / "tok").exists():
        sys.exit(f"no tokenizer in {a.work}: run bench/seq2seq_pretrain_vs_scratch.py --work {a.work} first")
    n_train = len(read_pairs(splits["train"])[0])
    steps = int(a.epochs * -(-n_train // a.batch))
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    print(f"{n_train} training pairs, {steps} steps of {a.batch} ({a.epochs} epochs), {a.threads} threads", flush=True)
    rows = []
    for seed in a.seeds:
        init = scratch_run(a.work / "tok", a.work / f"init-{seed}", seed)
        hf_init = a.work / f"init-{seed}-hf"
        if not hf_init.exists():
            lmforge("export", init, "--format", "hf", "--out", hf_init, log=log)
        for side in ("lmforge", "hf") if seed % 2 else ("hf", "lmforge"):
            out, result = a.work / f"vs-{side}-{seed}", a.work / f"vs-{side}-{seed}.json"
            cmd = [sys.executable, __file__, "--worker", side, "--source", str(hf_init if side == "hf" else init),
                   "--out", str(out), "--train", str(splits["train"]), "--dev", str(splits["dev"]), "--test",
                   str(splits["test"]), "--result", str(result), "--steps", str(steps), "--seed", str(seed),
                   "--batch", str(a.batch), "--lr", str(a.lr), "--warmup", str(a.warmup), "--max-target-length",
                   str(a.max_target_length), "--threads", str(a.threads)]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            r = json.loads(result.read_text())
            rows.append({"side": side, "seed": seed, "wall": wall, "rate": steady(r, a.skip, a.batch),
                         "bleu": r["test"]["bleu"], "chrf": r["test"]["chrf"]})
            print(f"seed {seed} {side:8s}: {rows[-1]['rate']:7.1f} pairs/s steady, {wall:6.0f} s whole process, "
                  f"test BLEU {rows[-1]['bleu']:.2f} chrF {rows[-1]['chrf']:.2f}", flush=True)
    by = {side: [r for r in rows if r["side"] == side] for side in ("lmforge", "hf")}
    ratio = statistics.median(x["rate"] / y["rate"] for x, y in zip(by["lmforge"], by["hf"]))
    wall = statistics.median(y["wall"] / x["wall"] for x, y in zip(by["lmforge"], by["hf"]))
    print(f"\ntraining throughput lmforge/HF (median over seeds): {ratio:.2f}x steady, {wall:.2f}x whole process")
    for side, rs in by.items():
        bleu = [r["bleu"] for r in rs]
        sd = statistics.stdev(bleu) if len(bleu) > 1 else 0.0
        print(f"{side:8s} test BLEU {statistics.mean(bleu):.2f} (sd {sd:.2f}), chrF "
              f"{statistics.mean(r['chrf'] for r in rs):.2f}")
    result, trained = a.work / "decode.json", a.work / f"vs-lmforge-{a.seeds[0]}"
    subprocess.run([sys.executable, __file__, "--worker", "decode", "--source", str(trained), "--out",
                    f"{trained}-hf", "--test", str(splits["test"]), "--result", str(result), "--gen-batch",
                    str(a.gen_batch), "--threads", str(a.threads)], check=True, env=env)
    d = json.loads(result.read_text())
    print(f"beam-4 decoding of {d['sources']} test sources in batches of {a.gen_batch}: lmforge "
          f"{d['lmforge_s']:.1f} s, transformers {d['hf_s']:.1f} s: {d['hf_s'] / d['lmforge_s']:.2f}x; "
          f"{d['same_outputs']} outputs identical")


if __name__ == "__main__":
    main()
