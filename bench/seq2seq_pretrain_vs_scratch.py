"""Does span-corruption pretraining pay for a small T5? Fine-tuned from scratch vs after pretraining.

Datasets (../shared/data, see its README):
- `cmn`: Tatoeba English -> Chinese (translation/cmn-eng/cmn.txt), split 90/5/5 by a permutation seeded
  with 0; metrics: test BLEU (sacrebleu, zh tokenizer) and chrF.
- `lcsts`: LCSTS part III Chinese short-text summarization (summarization/lcsts-part3/PART_III.txt),
  its 1,106 documents split 90/10 by a permutation seeded with 0; the training part's pairs with a
  human relevance score >= 3 train (a twentieth of them is the dev set), the held-out part's pairs with
  score >= 3 test (as LCSTS results are reported); metric: ROUGE-L on characters (also ROUGE-1/2).

Both arms use one tokenizer (byte-level BPE with 100 sentinels, trained on the training split's
sources and targets) and the `t5-tiny` preset. The pretrained arm first runs span corruption on that
same monolingual text (sources and targets of the training split as documents, plus `--extra-text`
files if given); the scratch arm starts from a random initialisation (seeded per seed). Each arm is then
fine-tuned with the same settings and seeds (`lmforge finetune --task seq2seq`), and its best
checkpoint by dev loss decodes the test set with beam search (4 beams).

Usage: python bench/seq2seq_pretrain_vs_scratch.py --dataset cmn [--seeds 1 2 3] [--pretrain-steps 4000]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
PREFIX = {"cmn": "translate English to Chinese: ", "lcsts": "summarize: "}


def write_tsv(path: Path, pairs: list[tuple[str, str]]) -> Path:
    clean = [(s.replace("\t", " ").strip(), t.replace("\t", " ").strip()) for s, t in pairs]
    path.write_text("source\ttarget\n" + "".join(f"{s}\t{t}\n" for s, t in clean if s and t), encoding="utf-8")
    return path


def split_cmn(work: Path) -> dict[str, Path]:
    rows = [line.split("\t")[:2] for line in (DATA / "translation/cmn-eng/cmn.txt").read_text(
        encoding="utf-8").splitlines() if line.strip()]
    order = np.random.default_rng(0).permutation(len(rows))
    n5 = len(rows) // 20
    parts = {"test": order[:n5], "dev": order[n5:2 * n5], "train": order[2 * n5:]}
    return {name: write_tsv(work / f"{name}.tsv", [tuple(rows[i]) for i in idx]) for name, idx in parts.items()}


def lcsts_docs() -> list[tuple[int, str, str]]:
    text = (DATA / "summarization/lcsts-part3/PART_III.txt").read_text(encoding="utf-8")
    docs = re.findall(r"<human_label>(\d+)</human_label>\s*<summary>(.*?)</summary>\s*<short_text>(.*?)</short_text>",
                      text, re.S)
    return [(int(score), short.strip(), summary.strip()) for score, summary, short in docs]


def split_lcsts(work: Path) -> dict[str, Path]:
    docs = lcsts_docs()
    order = np.random.default_rng(0).permutation(len(docs))
    held = set(order[: len(docs) // 10].tolist())
    train = [(d[1], d[2]) for i, d in enumerate(docs) if i not in held and d[0] >= 3]
    test = [(d[1], d[2]) for i, d in enumerate(docs) if i in held and d[0] >= 3]
    n_dev = max(1, len(train) // 20)
    return {"train": write_tsv(work / "train.tsv", train[n_dev:]), "dev": write_tsv(work / "dev.tsv", train[:n_dev]),
            "test": write_tsv(work / "test.tsv", test)}


def lmforge(*args, log: Path) -> None:
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\n$ lmforge {' '.join(map(str, args))}\n")
        f.flush()
        done = subprocess.run([sys.executable, "-m", "lmforge", *map(str, args)], stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"lmforge {args[0]} failed: see {log}")


def monolingual(split: Path, extra: list[Path], out: Path) -> Path:
    """Sources and targets of the training pairs, one document per line, then the extra files."""
    lines = []
    for row in split.read_text(encoding="utf-8").splitlines()[1:]:
        lines += [x for x in row.split("\t") if x.strip()]
    for path in extra:
        lines += [x.strip() for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def scratch_run(tok_dir: Path, out: Path, seed: int) -> Path:
    """A t5-tiny run folder holding a random initialisation (what fine-tuning 'from scratch' starts from)."""
    import dataclasses

    import torch

    from lmforge.models import build_model
    from lmforge.runs import save_run
    from lmforge.tasks import load_config
    from lmforge.tokenizer import load_tokenizer

    if out.exists():
        return out
    tok = load_tokenizer(tok_dir)
    cfg = load_config("t5-tiny")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=tok.vocab_size))
    torch.manual_seed(seed)
    save_run(out, build_model(cfg.model), tok, cfg)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=["cmn", "lcsts"], default="cmn")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--pretrain-steps", type=int, default=4000)
    p.add_argument("--epochs", type=float, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-target-length", type=int, default=64)
    p.add_argument("--extra-text", type=Path, nargs="*", default=[], help="more monolingual text for pretraining")
    p.add_argument("--work", type=Path)
    args = p.parse_args()
    work = args.work or ROOT / "bench" / "_work" / f"seq2seq-{args.dataset}"
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    splits = split_cmn(work) if args.dataset == "cmn" else split_lcsts(work)
    for name, path in splits.items():
        print(f"{name}: {len(path.read_text(encoding='utf-8').splitlines()) - 1} pairs ({path})")
    t0 = time.time()
    if not (work / "shards").exists():
        mono = monolingual(splits["train"], args.extra_text, work / "mono.txt")
        keep = ["txt_mode=line", "min_chars=1", "min_letter_ratio=0", "dedup_exact=false", "dedup_near=false",
                "scrub_pii=false", "nfkc=false"]  # the text as fine-tuning will read it
        lmforge("corpus", "build", "--input", mono, "--out", work / "corpus",
                *[x for k in keep for x in ("--set", f"corpus.{k}")], log=log)
        lmforge("tokenizer", "train", "--corpus", work / "corpus", "--kind", "bpe", "--vocab-size", args.vocab_size,
                "--set", "tokenizer.extra_ids=100", "--out", work / "tok", log=log)
        lmforge("shards", "build", "--corpus", work / "corpus", "--tokenizer", work / "tok", "--out", work / "shards",
                log=log)
    if not (work / "pretrained").exists():
        lmforge("pretrain", "--config", "t5-tiny", "--data", work / "shards", "--out", work / "pretrained", "--set",
                f"train.max_steps={args.pretrain_steps}", "--set", "train.progress=false", log=log)
    print(f"data, tokenizer and pretraining: {time.time() - t0:.0f} s")
    n_train = len(splits["train"].read_text(encoding="utf-8").splitlines()) - 1
    steps = int(args.epochs * -(-n_train // args.batch_size))
    warmup = 200 if steps >= 1000 else steps // 10  # a short run (LCSTS) warms up for a tenth of it
    results: dict[str, list[dict]] = {"scratch": [], "pretrained": []}
    for seed in args.seeds:
        for arm in results:
            source = work / "pretrained" if arm == "pretrained" else scratch_run(work / "tok", work / f"init-{seed}",
                                                                                 seed)
            out = work / f"{arm}-{seed}"
            t1 = time.time()
            if not (out / "eval_results.json").exists():
                lmforge("finetune", "--task", "seq2seq", "--from", source, "--train", splits["train"], "--dev",
                        splits["dev"], "--test", splits["test"], "--out", out, "--overwrite", "--seed", seed,
                        "--num_train_epochs", args.epochs, "--learning_rate", args.lr, "--warmup_steps", warmup,
                        "--per_device_train_batch_size", args.batch_size, "--max_target_length",
                        args.max_target_length, "--source_prefix", PREFIX[args.dataset], "--num_beams", 4,
                        "--quiet", log=log)
            test = json.loads((out / "eval_results.json").read_text())["test"]
            results[arm].append(test)
            print(f"seed {seed} {arm:10s}: BLEU {test['bleu']:6.2f}  chrF {test['chrf']:6.2f}  ROUGE-L "
                  f"{test['rougeL']:6.2f}  loss {test['loss']:.3f}  ({time.time() - t1:.0f} s)", flush=True)
    print(f"\n{args.dataset}: mean (sd) over seeds {args.seeds}")
    for arm, rows in results.items():
        cells = []
        for key in ("bleu", "chrf", "rouge1", "rouge2", "rougeL"):
            values = [r[key] for r in rows]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{key} {statistics.mean(values):.2f} ({sd:.2f})")
        print(f"{arm:10s}: " + ", ".join(cells))
    print(f"signatures: {results['scratch'][0]['bleu_signature']}; {results['scratch'][0]['rouge_signature']}")


if __name__ == "__main__":
    main()
