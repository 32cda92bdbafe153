"""SIGKILL at 20 random moments of a tiny run (folder creation, training, checkpoint writing and pruning
alike: it saves and prunes every step), then resume: every resumed run must end with weights bit-identical
to a run never interrupted."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG = ("[model]\nkind = \"gpt\"\ncontext_len = 32\nn_layer = 1\nn_head = 2\nd_model = 16\n\n"
          "[train]\nmax_steps = 40\nbatch_size = 4\neval_every = 10\neval_batches = 1\nsave_every = 1\n"
          "keep_last = 1\nlog_every = 1\nprogress = false\n\n[schedule]\nwarmup_steps = 2\n\n"
          "[runtime]\ndevice = \"cpu\"\n")
KILLS = 20


def _cmd(config: Path, shards: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "lmforge", "pretrain", "--config", str(config), "--data", str(shards), "--out",
            str(out)]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _weights(run: Path) -> dict:
    from safetensors.torch import load_file

    final = sorted((run / "checkpoints").glob("step-*"))[-1]
    assert final.name == "step-000040", final
    return load_file(str(final / "model.safetensors"))


def _trial(config: Path, shards: Path, out: Path, delay: float) -> tuple[float, str]:
    proc = subprocess.Popen(_cmd(config, shards, out), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if (out / "config.toml").is_file():  # killed after the folder appeared: resume it
        again = [sys.executable, "-m", "lmforge", "pretrain", "--resume", str(out)]
    else:  # killed before: the same command again (a half-made folder never shows under its name)
        again = _cmd(config, shards, out)
    done = subprocess.run(again, cwd=REPO, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, f"after a kill at {delay:.2f} s: {done.stderr[-2000:]}"
    return delay, "resumed" if "--resume" in again else "restarted"


@pytest.mark.slow
def test_twenty_kills_all_resume_bit_identical(tiny_shards, tmp_path):
    import torch

    config = tmp_path / "tiny.toml"
    config.write_text(CONFIG)
    t0 = time.perf_counter()  # two at a time, as the trials run
    def start(name: str) -> subprocess.CompletedProcess:
        return subprocess.run(_cmd(config, tiny_shards, tmp_path / name), cwd=REPO, env=_env(), capture_output=True,
                              text=True)

    with ThreadPoolExecutor(2) as pool:
        refs = list(pool.map(start, ["ref", "ref2"]))
    span = time.perf_counter() - t0
    ref = refs[0]
    assert ref.returncode == 0, ref.stderr
    want = _weights(tmp_path / "ref")
    rng = random.Random(7)
    delays = sorted(rng.uniform(0.2, span) for _ in range(KILLS))
    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda k: _trial(config, tiny_shards, tmp_path / f"run{k}", delays[k]), range(KILLS)))
    identical = 0
    for k in range(KILLS):
        got = _weights(tmp_path / f"run{k}")
        identical += all(torch.equal(got[name], want[name]) for name in want) and got.keys() == want.keys()
        assert not list((tmp_path / f"run{k}" / "checkpoints").glob(".*")), "a leftover temporary folder"
    print(f"\n{identical} of {KILLS} bit-identical; kills at {[round(d, 2) for d, _ in outcomes]} s of a "
          f"{span:.1f} s run; {sum(o == 'resumed' for _, o in outcomes)} resumed, "
          f"{sum(o == 'restarted' for _, o in outcomes)} restarted")
    assert identical == KILLS
