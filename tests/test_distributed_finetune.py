"""`lmforge finetune` with two gloo processes on CPU: the same steps, metrics and files as one process.

Each step's batch is split between the processes and the dev/test sets are evaluated in disjoint parts
whose counts are summed, so with dropout 0 a 2-process run must log the losses and dev metrics of a
1-process run at the same batch size, write its files once, and resume on another number of processes.
The backbones' LM heads are never run by a classifier: DDP fails at the second step unless they are
left out of its reduction.
"""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import _WORDS, make_english, make_shards
from test_distributed import _lmforge as launch

TOL = 1e-5
POS, NEG = ("gains", "quickly"), ("before", "decays")
FILL = [w for w in _WORDS if w not in (*POS, *NEG)]


def _write_rows(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    lines = ["sentence\tlabel"]
    for _ in range(n):
        positive = rng.random() < 0.5
        words = [rng.choice(FILL) for _ in range(rng.randint(3, 8))]
        words.insert(rng.randint(0, len(words)), rng.choice(POS if positive else NEG))
        lines.append(f"{' '.join(words)}\t{'positive' if positive else 'negative'}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny pretrained BERT run (dropout 0), labeled files, and a 4-step 1-process fine-tuning of it."""
    from lmforge.cli import main
    from lmforge.tokenizer import TokenizerConfig

    root = tmp_path_factory.mktemp("dist_ft")
    make_shards(root, make_english(120, seed=4), 10, TokenizerConfig(kind="word", vocab_size=200, min_frequency=1))
    (root / "bert.toml").write_text(
        '[model]\nkind = "bert"\ncontext_len = 32\nn_layer = 1\nn_head = 2\nd_model = 32\ndropout = 0.0\n'
        "attn_dropout = 0.0\n[train]\nmax_steps = 2\nbatch_size = 8\neval_every = 2\neval_batches = 1\n"
        'save_every = 2\nprogress = false\n[runtime]\ndevice = "cpu"\n')
    out = {"bert": root / "run_bert", "train": _write_rows(root / "train.tsv", 160, 0),
           "dev": _write_rows(root / "dev.tsv", 70, 1),  # 5 batches of 16: 3 on rank 0, 2 on rank 1
           "test": _write_rows(root / "test.tsv", 33, 2)}
    assert main(["pretrain", "--config", str(root / "bert.toml"), "--data", str(root / "shards"),
                 "--out", str(out["bert"])]) == 0
    out["single"] = root / "single"
    assert main([str(a) for a in _args(out, out["single"])]) == 0
    return out


def _lmforge(nproc: int, *args) -> subprocess.CompletedProcess:
    """`lmforge ARGS` as one plain process (nproc 0) or under torchrun; it must succeed."""
    proc = launch(nproc, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _args(runs, out: Path, max_steps: int = 4) -> list:
    return ["finetune", "--from", runs["bert"], "--train", runs["train"], "--dev", runs["dev"], "--test",
            runs["test"], "--out", out, "--max_steps", max_steps, "--eval_steps", 2, "--logging_steps", 1,
            "--per_device_train_batch_size", 8, "--per_device_eval_batch_size", 16, "--learning_rate", "5e-3",
            "--classifier_dropout", 0.0, "--quiet",
            "--lr_scheduler_type", "constant"]  # a decaying lr depends on max_steps: resuming with more would not match


def _metrics(run: Path) -> tuple[dict[int, float], dict[int, dict]]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r["loss"] for r in records if "loss" in r}
    val = {r["step"]: r for r in records if "val_loss" in r}
    return train, val


def _same_run(a: Path, b: Path, steps: list[int]) -> None:
    (train_a, val_a), (train_b, val_b) = _metrics(a), _metrics(b)
    assert sorted(train_b) == steps and sorted(val_b) == [s for s in steps if s % 2 == 0]
    for step in steps:
        assert abs(train_a[step] - train_b[step]) < TOL, (step, train_a[step], train_b[step])
    for step in val_b:
        assert abs(val_a[step]["val_loss"] - val_b[step]["val_loss"]) < TOL, step
        assert val_a[step]["val_confusion"] == val_b[step]["val_confusion"], step
        assert val_a[step]["val_accuracy"] == val_b[step]["val_accuracy"], step


def _same_results(a: Path, b: Path) -> None:
    ra, rb = (json.loads((r / "eval_results.json").read_text()) for r in (a, b))
    assert ra["checkpoint"] == rb["checkpoint"]
    for split, n in (("dev", 70), ("test", 33)):
        assert rb[split]["examples"] == n and rb[split]["confusion"] == ra[split]["confusion"], split
        assert abs(ra[split]["loss"] - rb[split]["loss"]) < TOL, split
        assert ra[split]["macro_f1"] == rb[split]["macro_f1"], split


def test_ddp_finetune_reproduces_one_process(runs, tmp_path):
    one, two = runs["single"], tmp_path / "two"
    proc = _lmforge(0, *_args(runs, two), "--nproc", 2)
    assert "over 2 processes" in proc.stderr + proc.stdout
    assert (proc.stdout + proc.stderr).count("best checkpoint") == 1  # rank 0 alone speaks
    _same_run(one, two, [1, 2, 3, 4])
    _same_results(one, two)
    assert json.loads((two / "label_map.json").read_text())["labels"] == ["negative", "positive"]
    val = _metrics(one)[1]
    assert val[2]["val_loss"] != val[4]["val_loss"]  # the weights moved: the comparison is not of constants


def test_one_process_resumed_on_two_with_fsdp(runs, tmp_path):
    """2 steps on 1 process, resumed by 2 FSDP processes to step 4: the 1-process run's steps and metrics."""
    from lmforge.cli import main

    grown = tmp_path / "grown"
    assert main([str(a) for a in _args(runs, grown, max_steps=2)]) == 0
    _lmforge(2, "finetune", "--resume", grown, "--max_steps", 4, "--quiet", "--set", "runtime.parallel=fsdp")
    _same_run(runs["single"], grown, [1, 2, 3, 4])
    _same_results(runs["single"], grown)


def test_batch_must_split_over_the_processes():
    from lmforge.errors import LmforgeError
    from lmforge.tasks.classify import ClassifyArgs, ClassifyConfig
    from lmforge.tasks.finetuning import with_loop

    cfg = ClassifyConfig(finetune=ClassifyArgs(per_device_train_batch_size=6, gradient_accumulation_steps=3))
    train = with_loop(cfg, 60, world=2).train
    assert train.micro_batch(2) == 1 and train.grad_accum_steps(2) == 3
    with pytest.raises(LmforgeError, match="per_device_train_batch_size=6 does not split into 4 processes"):
        with_loop(cfg, 60, world=4)


def test_classifier_leaves_out_the_lm_heads():
    from lmforge.models import BertConfig, GPTConfig
    from lmforge.models.heads import SequenceClassifier

    for kind, pooling, frozen in (("gpt", "auto", {"lm_head.weight"}),
                                  ("bert", "cls", {"head_dense.weight", "head_dense.bias", "head_norm.weight",
                                                   "head_norm.bias", "decoder.bias"}),
                                  ("bert", "mean", {"pooler.weight", "pooler.bias"})):
        config = (BertConfig if kind == "bert" else GPTConfig)(vocab_size=50, context_len=8, n_layer=1, n_head=2,
                                                               d_model=8, d_ff=16, tie_embeddings=kind == "bert")
        model = SequenceClassifier(config, 2, pooling)
        model.freeze_unused()
        off = {n for n, p in model.backbone.named_parameters() if not p.requires_grad}
        assert frozen <= off and (kind == "gpt" or {"decoder.bias"} <= off), kind
        ids = torch.randint(0, 50, (2, 8))
        model(ids).sum().backward()
        for name, p in model.named_parameters():  # exactly the parameters the forward never reaches
            assert (p.grad is not None) == p.requires_grad, (kind, pooling, name)


def test_fsdp_needs_an_eval_batch_on_every_process():
    from types import SimpleNamespace

    from lmforge.data.labeled import Encoded
    from lmforge.errors import LmforgeError
    from lmforge.tasks.classify import ClassifyArgs, _check_eval_split

    enc = Encoded([torch.zeros(3)] * 20, torch.zeros(20), 0)
    ft = ClassifyArgs(per_device_eval_batch_size=8)  # 3 batches
    _check_eval_split(enc, ft, SimpleNamespace(parallel="ddp", world_size=4))  # DDP evaluates unevenly
    _check_eval_split(enc, ft, SimpleNamespace(parallel="fsdp", world_size=3))
    with pytest.raises(LmforgeError, match="20 evaluation examples make 3 batches of finetune.per_device_eval"):
        _check_eval_split(enc, ft, SimpleNamespace(parallel="fsdp", world_size=4))
