"""`lmforge quickstart`: the whole pipeline on text every Python installation carries, offline, on CPU.

builtin:python-docs -> corpus -> byte-level BPE -> shards -> gpt-tiny pretraining -> validation
perplexity before and after -> generated samples -> a plot (when matplotlib is installed: the core
install has no plotting, and the quickstart says so in one line). Each stage writes its own folder under
OUT; a stage whose folder already exists is reused (every stage writes atomically, so an existing
folder is complete), so a second quickstart only trains again.
"""

from __future__ import annotations

import re
from pathlib import Path

from lmforge.corpus.config import CorpusConfig
from lmforge.data.shards import ShardConfig
from lmforge.tasks.task import LoadedRun
from lmforge.tokenizer import TokenizerConfig

PROMPTS = ("The list", "A dictionary is", "To open a file")


def _stage(name: str, folder: Path, fresh: bool) -> bool:
    """True when the stage must run; prints what is reused otherwise."""
    if folder.exists() and not fresh:
        print(f"quickstart: {name}: reusing {folder}")
        return False
    print(f"quickstart: {name} -> {folder}")
    return True


def untrained_metrics(cfg, tok) -> dict[str, float]:
    """Validation metrics of the freshly initialised model (the run's own init: same seed), measured
    as the run's own evaluations are."""
    import torch

    from lmforge.runtime import setup_runtime
    from lmforge.tasks import get_task

    runtime = setup_runtime(cfg.runtime)
    task = get_task(cfg.task)
    torch.manual_seed(cfg.train.seed)
    model = task.build_model(cfg, {}).to(runtime.device)
    run = LoadedRun(model, tok, cfg, run_dir=Path("untrained"), step=0, checkpoint=Path("untrained"), task=task)
    return task.evaluate(run, None, cfg.data.val_split, cfg.train.eval_batches, runtime)


def quickstart(out: Path, config: str = "gpt-tiny", overrides: tuple[str, ...] = (), vocab_size: int = 4096,
               fresh: bool = False, samples: int = 3) -> Path:
    from lmforge.corpus.build import build_corpus
    from lmforge.data.shards import build_shards
    from lmforge.extras import available, skipped
    from lmforge.generate import generate
    from lmforge.pipeline import evaluate_run, pretrain
    from lmforge.tasks import load_config, load_run
    from lmforge.tokenizer import load_tokenizer, train_tokenizer

    out = Path(out)
    corpus, tok_dir, shards, run_dir = out / "corpus", out / "tokenizer", out / "shards", out / "run"
    if _stage("corpus from builtin:python-docs", corpus, fresh):
        build_corpus(["builtin:python-docs"], corpus, CorpusConfig(), overwrite=True)
    if _stage(f"byte-level BPE tokenizer ({vocab_size} tokens)", tok_dir, fresh):
        train_tokenizer(corpus, tok_dir, TokenizerConfig(kind="bpe", vocab_size=vocab_size), overwrite=True)
    if _stage("token shards", shards, fresh or not tok_dir.exists()):
        build_shards(corpus, tok_dir, shards, ShardConfig(), overwrite=True)

    tok = load_tokenizer(shards / "tokenizer")
    cfg = load_config(config, [f"data.path={str(shards)!r}", *overrides]).with_vocab(tok.vocab_size)
    before = untrained_metrics(cfg, tok)
    print(f"quickstart: pretraining {config} -> {run_dir}")
    pretrain(cfg, run_dir, overwrite=True)
    after = evaluate_run(run_dir, shards, "val", device=cfg.runtime.device)

    # the plot is a side product: without matplotlib (a core install) everything else is still shown
    plot = run_dir / "plot.png" if available("matplotlib") else None
    if plot is not None:
        from lmforge.plot import plot_runs

        plot_runs([run_dir], plot)
    run = load_run(run_dir)
    print("\nquickstart: samples (temperature 0.8, top-k 40)")
    for i, prompt in enumerate(PROMPTS[:samples]):
        text = generate(run.model, run.tokenizer, prompt, max_new_tokens=60, temperature=0.8, top_k=40, seed=i)
        shown = re.sub(r"\n\s*\n+", "\n", prompt + text).strip()  # docstrings are full of blank lines
        print(f"  --- {prompt!r}\n  " + shown.replace("\n", "\n  "))
    print(f"\nquickstart: validation perplexity {before['perplexity']:,.1f} before training -> "
          f"{after['perplexity']:,.1f} after ({after.get('bits_per_byte', float('nan')):.3f} bits per byte)")
    print(f"quickstart: run folder {run_dir} (checkpoints, metrics.jsonl, config.toml, tokenizer/); "
          + (f"plot {plot}" if plot else skipped("matplotlib", "the plot")))
    print(f"quickstart: next: lmforge generate {run_dir} --prompt 'The list'  |  "
          f"lmforge eval {run_dir}  |  lmforge export {run_dir} --format hf --out {out / 'hf'}")
    return run_dir

