"""Data parallelism with two gloo processes on CPU, launched through torchrun as a user would.

Two processes at the same global batch see the same sequences as one, so DDP and FSDP must log the
same losses step by step; checkpoints resume on another number of processes; a failing process ends
the job with its message.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-5

GPT = ["--config", "gpt-tiny", "--set", "model.n_layer=2", "--set", "model.d_model=32", "--set", "model.n_head=2",
       "--set", "model.context_len=32", "--set", "train.batch_size=8", "--set", "train.max_steps=4",
       "--set", "train.eval_every=2", "--set", "train.eval_batches=3", "--set", "train.save_every=2",
       "--set", "train.keep_last=5", "--set", "train.log_every=1", "--set", "train.progress=false",
       "--set", "runtime.device=cpu", "--set", "schedule.name=constant", "--set", "schedule.warmup_steps=1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lmforge(nproc: int, *args, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    """`lmforge ARGS` as one plain process (nproc 0) or under torchrun with `nproc` processes. Run once:
    a crash is a failure (runtime.all_reduce closes the gloo exit race that used to abort a worker)."""
    args = [str(a) for a in args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(_free_port()), "-m", "lmforge", *args]
    else:
        cmd = [sys.executable, "-m", "lmforge", *args]
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


def _metrics(run: Path) -> tuple[dict[int, float], dict[int, float]]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r["loss"] for r in records if "loss" in r}
    val = {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
    return train, val


def _same(a: dict[int, float], b: dict[int, float], steps) -> None:
    for step in steps:
        assert abs(a[step] - b[step]) < TOL, (step, a[step], b[step])


@pytest.fixture(scope="module")
def single(tiny_shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist") / "single"
    _ok(_lmforge(0, "pretrain", *GPT, "--data", tiny_shards, "--out", out))
    return out


def test_ddp_through_nproc_reproduces_one_process(single, tiny_shards, tmp_path):
    out = tmp_path / "ddp"
    proc = _lmforge(0, "pretrain", "--nproc", 2, *GPT, "--data", tiny_shards, "--out", out)
    _ok(proc)
    assert "training with DDP" in proc.stdout and proc.stdout.count("finished step 4") == 1  # rank 0 only
    (train1, val1), (train2, val2) = _metrics(single), _metrics(out)
    assert sorted(train2) == [1, 2, 3, 4] and sorted(val2) == [2, 4]
    _same(train1, train2, [1, 2, 3, 4])
    _same(val1, val2, [2, 4])  # validation covers the same windows, reduced over both processes
    assert train1[4] < train1[1]


def test_fsdp_run_and_resume_on_one_process(single, tiny_shards, tmp_path):
    """FSDP on 2 processes for 2 steps, then the same run resumed by 1 plain process to step 4."""
    out = tmp_path / "fsdp"
    _ok(_lmforge(2, "pretrain", *GPT, "--data", tiny_shards, "--out", out, "--set", "train.max_steps=2",
                 "--set", "runtime.parallel=fsdp"))
    _ok(_lmforge(0, "pretrain", "--resume", out, "--set", "train.max_steps=4"))
    (train1, val1), (train2, val2) = _metrics(single), _metrics(out)
    _same(train1, train2, [1, 2, 3, 4])
    _same(val1, val2, [2, 4])


def test_one_process_resumed_on_two(single, tiny_shards, tmp_path):
    out = tmp_path / "grow"
    _ok(_lmforge(0, "pretrain", *GPT, "--data", tiny_shards, "--out", out, "--set", "train.max_steps=2"))
    _ok(_lmforge(2, "pretrain", "--resume", out, "--set", "train.max_steps=4",
                 "--set", "runtime.parallel=fsdp"))  # the saved optimizer state loads into shards
    _same(_metrics(single)[0], _metrics(out)[0], [1, 2, 3, 4])


def test_failing_rank_ends_the_job_with_its_message(tiny_shards, tmp_path):
    proc = _lmforge(2, "pretrain", *GPT, "--data", tiny_shards, "--out", tmp_path / "fail",
                    env={"LMFORGE_TEST_FAULT": "1:2"}, timeout=90)
    assert proc.returncode != 0
    assert "rank 1 fails at step 2 as asked" in proc.stderr
    assert not (tmp_path / "fail" / "checkpoints" / "step-000004").exists()


def test_nproc_refused_under_torchrun(monkeypatch):
    from lmforge.errors import LmforgeError
    from lmforge.launch import relaunch, torchrun_command

    cmd = torchrun_command(2, ["pretrain", "--nproc", "2", "--out", "r", "--nproc=3"])
    assert cmd[-5:] == ["-m", "lmforge", "pretrain", "--out", "r"] and "--nproc_per_node" in cmd
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(LmforgeError, match="drop --nproc"):
        relaunch(2, ["pretrain"])
    with pytest.raises(LmforgeError, match="1 or more"):
        relaunch(0, ["pretrain"])


def test_bert_masked_lm_ddp_reproduces_one_process(tmp_path):
    """BERT's pooler is never run by masked-LM pretraining: DDP must not wait for its gradient."""
    from conftest import make_english

    from lmforge.corpus.store import write_file
    from lmforge.data.shards import ShardConfig, build_shards
    from lmforge.tokenizer import TokenizerConfig, train_tokenizer

    (tmp_path / "corpus").mkdir()
    docs = make_english(200, seed=2)
    write_file(tmp_path / "corpus" / "train-00000.jsonl.zst", docs[:-20])
    write_file(tmp_path / "corpus" / "val-00000.jsonl.zst", docs[-20:])
    train_tokenizer(tmp_path / "corpus", tmp_path / "tok", TokenizerConfig(kind="wordpiece", vocab_size=300),
                    progress=False)
    build_shards(tmp_path / "corpus", tmp_path / "tok", tmp_path / "shards", ShardConfig(num_workers=1),
                 progress=False)
    bert = ["pretrain", "--config", "bert-tiny", "--data", tmp_path / "shards", *[
        x for kv in ("model.n_layer=1", "model.d_model=32", "model.d_ff=64", "model.context_len=32",
                     "data.seq_len=32", "train.batch_size=8", "train.max_steps=3", "train.log_every=1",
                     "train.eval_every=3", "train.eval_batches=2", "train.save_every=3", "train.progress=false",
                     "runtime.device=cpu", "model.dropout=0", "model.attn_dropout=0") for x in ("--set", kv)]]
    _ok(_lmforge(0, *bert, "--out", tmp_path / "one"))
    _ok(_lmforge(2, *bert, "--out", tmp_path / "two"))
    (train1, val1), (train2, val2) = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    _same(train1, train2, [1, 2, 3])
    _same(val1, val2, [3])


def test_t5_span_corruption_fsdp_reproduces_one_process(tmp_path):
    """FSDP shards each layer of both T5 stacks; two processes log the losses of one."""
    from conftest import make_english, make_shards

    from lmforge.tokenizer import TokenizerConfig

    shards = make_shards(tmp_path, make_english(200, seed=4), 20, TokenizerConfig(kind="bpe", vocab_size=320,
                                                                                    extra_ids=10))
    t5 = ["pretrain", "--config", "t5-tiny", "--data", shards, *[
        x for kv in ("model.d_model=32", "model.d_ff=64", "data.seq_len=32", "train.batch_size=8",
                     "train.max_steps=3", "train.log_every=1", "train.eval_every=3", "train.eval_batches=2",
                     "train.save_every=3", "train.progress=false", "runtime.device=cpu", "model.dropout=0")
        for x in ("--set", kv)]]
    _ok(_lmforge(0, *t5, "--out", tmp_path / "one"))
    _ok(_lmforge(2, *t5, "--out", tmp_path / "two", "--set", "runtime.parallel=fsdp"))
    (train1, val1), (train2, val2) = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    _same(train1, train2, [1, 2, 3])
    _same(val1, val2, [3])
