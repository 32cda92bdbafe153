"""Resuming continues exactly: after Ctrl-C in-process, and after `kill -9` of a CLI run (CPU: bit for
bit the losses of a run never stopped)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lmforge.checkpoint import list_checkpoints
from lmforge.data.loaders import ArrayTokens, CausalLMBatches
from lmforge.models import GPTConfig, build_model
from lmforge.objectives import causal_lm_loss
from lmforge.optim import OptimConfig, ScheduleConfig
from lmforge.runtime import RuntimeConfig, setup_runtime
from lmforge.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]


def _losses(run: Path, killed: bool = False) -> dict[int, float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    if killed and lines and not lines[-1].endswith("}"):
        lines = lines[:-1]  # kill -9 may cut the last line short; resuming drops it
    records = [json.loads(line) for line in lines]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def _run(run_dir: Path, objective=causal_lm_loss, resume=False, init_seed=0):
    torch.manual_seed(init_seed)
    cfg = GPTConfig(vocab_size=40, context_len=16, n_layer=2, n_head=2, d_model=32, dropout=0.1)
    model = build_model(cfg)
    rng = np.random.default_rng(0)
    data = ArrayTokens((np.arange(3000) * 7 + rng.integers(0, 3, 3000)) % 40)
    return train(model, objective, CausalLMBatches(data, 16, 8, seed=1), optim_cfg=OptimConfig(lr=3e-3),
                 schedule_cfg=ScheduleConfig(warmup_steps=3),
                 train_cfg=TrainConfig(max_steps=12, batch_size=8, micro_batch_size=4, log_every=1,
                                       save_every=4, progress=False),
                 runtime=setup_runtime(RuntimeConfig(device="cpu")), run_dir=run_dir, resume=resume)


def test_resume_after_ctrl_c_is_exact(tmp_path):
    _run(tmp_path / "a")

    def interrupting(model, batch, calls=[0]):  # noqa: B006
        calls[0] += 1
        if calls[0] == 13:  # micro-step 1 of step 7 (2 micro-steps per step)
            os.kill(os.getpid(), signal.SIGINT)
        return causal_lm_loss(model, batch)

    stopped = _run(tmp_path / "b", objective=interrupting)
    assert stopped.stopped == "interrupted" and stopped.step == 7
    resumed = _run(tmp_path / "b", resume=True, init_seed=99)  # the init is replaced by the checkpoint
    assert resumed.step == 12
    assert _losses(tmp_path / "b") == _losses(tmp_path / "a")  # exactly equal, dropout included


def test_resume_after_kill_9_is_exact(tmp_path, tiny_shards, cli):
    config = tmp_path / "run.toml"
    config.write_text("""
[model]
kind = "gpt"
n_layer = 2
n_head = 2
d_model = 64
context_len = 64
dropout = 0.1

[train]
max_steps = 150
batch_size = 16
log_every = 1
eval_every = 50
eval_batches = 2
save_every = 10
progress = false

[runtime]
device = "cpu"
num_threads = 1
""")
    common = ["--config", config, "--data", tiny_shards]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "lmforge", "pretrain", *map(str, common), "--out", str(tmp_path / "killed")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    deadline = time.time() + 60
    while not list_checkpoints(tmp_path / "killed") and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()
    time.sleep(0.3)  # let it log some steps past the checkpoint: those must be redone identically
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(_losses(tmp_path / "killed", killed=True))
    assert killed_at < 150

    code, _, err = cli("pretrain", "--resume", tmp_path / "killed")
    assert code == 0, err
    code, _, err = cli("pretrain", *common, "--out", tmp_path / "whole")
    assert code == 0, err
    assert _losses(tmp_path / "killed") == _losses(tmp_path / "whole")
    assert len(_losses(tmp_path / "whole")) == 150
