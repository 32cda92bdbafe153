"""Shard building speed and memory.

Throughput (default): WikiText-2 train as a corpus folder (a document per non-empty line, no
cleaning), a byte-level BPE of 8192 tokens trained once, then alternating A/B runs:
  A  `build_shards` on all cores (reads the corpus, encodes, writes shards)
  B  the tokenizer's own `encode_batch` on the same texts already in memory (tokenizers' threads)
and the ratio A/B of their throughputs.

Memory (`--rss-gb 1`): a corpus made by repeating the file up to 0.25, 0.5, ... GB, shards built in
a fresh process each time; peak RSS of that process and of its workers (getrusage) at each size.

    python bench/bench_shards.py [PATH] [--repeats 3] [--rss-gb 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmforge.corpus.store import write_file  # noqa: E402
from lmforge.data.shards import ShardConfig, build_shards  # noqa: E402
from lmforge.tokenizer import TokenizerConfig, load_tokenizer, train_tokenizer  # noqa: E402


def read_docs(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def make_corpus(folder: Path, docs: list[str], target_bytes: int = 0) -> int:
    """Write docs (repeated until `target_bytes`, if given) as a corpus folder; returns text bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    size = sum(len(d.encode("utf-8")) for d in docs)
    copies = max(1, -(-target_bytes // size)) if target_bytes else 1
    for i in range(copies):
        write_file(folder / f"train-{i:05d}.jsonl.zst", docs)
    return size * copies


def throughput(work: Path, docs: list[str], tok_dir: Path, repeats: int) -> None:
    corpus = work / "corpus"
    n_bytes = make_corpus(corpus, docs)
    tok = load_tokenizer(tok_dir)
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    rows = []
    for r in range(repeats):
        t0 = time.perf_counter()
        man = build_shards(corpus, tok_dir, work / "shards", ShardConfig(num_workers=0), overwrite=True,
                           progress=False)
        a = time.perf_counter() - t0
        n_tok = man["splits"]["train"]["tokens"] - man["splits"]["train"]["docs"]  # without eot
        t0 = time.perf_counter()
        b_tok = sum(len(e.ids) for e in tok.backend.encode_batch_fast(docs, add_special_tokens=False))
        b = time.perf_counter() - t0
        assert b_tok == n_tok, (b_tok, n_tok)
        rows.append((a, b))
        print(f"round {r}: A build_shards {n_bytes / a / 1e6:6.2f} MB/s {n_tok / a:12,.0f} tok/s | "
              f"B encode_batch {n_bytes / b / 1e6:6.2f} MB/s {n_tok / b:12,.0f} tok/s | A/B {b / a:.2f}")
    a, b = min(r[0] for r in rows), min(r[1] for r in rows)
    print(f"best of {repeats}: A {n_bytes / a / 1e6:.2f} MB/s, B {n_bytes / b / 1e6:.2f} MB/s, "
          f"A/B = {b / a:.2f} ({n_bytes / 1e6:.1f} MB, {n_tok:,} tokens, {os.cpu_count()} cores)")


def rss_child(corpus: Path, tok_dir: Path, out: Path) -> None:
    build_shards(corpus, tok_dir, out, ShardConfig(num_workers=0), overwrite=True, progress=False)
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"self_mb": self_kb / 1024, "max_worker_mb": child_kb / 1024}))


def rss(work: Path, docs: list[str], tok_dir: Path, max_gb: float) -> None:
    sizes = [s for s in (0.25, 0.5, 1.0, 2.0, 4.0) if s <= max_gb + 1e-9]
    for gb in sizes:
        corpus = work / f"corpus-{gb}gb"
        n_bytes = make_corpus(corpus, docs, int(gb * 1e9))
        t0 = time.perf_counter()
        cmd = [sys.executable, __file__, "--rss-child", str(corpus), str(tok_dir), str(work / "shards-rss")]
        res = subprocess.run(cmd, check=True, capture_output=True, text=True)
        secs = time.perf_counter() - t0
        stats = json.loads(res.stdout.strip().splitlines()[-1])
        n_workers = os.cpu_count()
        print(f"{n_bytes / 1e9:.2f} GB: main process peak {stats['self_mb']:.0f} MB, "
              f"largest worker "
              f"{stats['max_worker_mb']:.0f} MB, tree upper bound (main + {n_workers} workers) "
              f"{stats['self_mb'] + n_workers * stats['max_worker_mb']:.0f} MB, "
              f"{n_bytes / secs / 1e6:.1f} MB/s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", nargs="?", default=str(ROOT.parent / "shared/data/wikitext-2/train.txt"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rss-gb", type=float, default=0.0, help="memory mode up to this corpus size")
    p.add_argument("--work", default=str(ROOT / "bench/_work/shards"))
    p.add_argument("--rss-child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rss_child:
        rss_child(*map(Path, args.rss_child))
        return
    work = Path(args.work)
    docs = read_docs(Path(args.path))
    tok_dir = work / "tokenizer"
    if not tok_dir.exists():
        make_corpus(work / "corpus", docs)
        cfg = TokenizerConfig(kind="bpe", vocab_size=8192)
        train_tokenizer(work / "corpus", tok_dir, cfg, progress=False)
    if args.rss_gb:
        rss(work, docs, tok_dir, args.rss_gb)
    else:
        throughput(work, docs, tok_dir, args.repeats)


if __name__ == "__main__":
    main()
