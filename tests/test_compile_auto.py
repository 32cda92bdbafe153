"""`runtime.compile = "auto"`: compile only when the rest of the run repays it, keep it only if faster."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lmforge import runtime as rt
from lmforge import runtime_auto
from lmforge.data.loaders import ArrayTokens, CausalLMBatches
from lmforge.models import build_model
from lmforge.models.gpt import GPTConfig
from lmforge.objectives import causal_lm_loss
from lmforge.optim import OptimConfig, ScheduleConfig
from lmforge.runtime import RuntimeConfig, setup_runtime
from lmforge.runtime_auto import CompileChooser
from lmforge.train import TrainConfig, train


def _feed(chooser: CompileChooser, model, step_s: float, steps_left: int):
    for _ in range(3 + runtime_auto.PROBE_STEPS):
        model = chooser.after_step(model, step_s, steps_left)
    return model


def test_a_short_run_stays_eager():
    said, model = [], torch.nn.Linear(2, 2)
    chooser = CompileChooser("cpu", said.append)
    assert _feed(chooser, model, 0.05, 1000) is model and chooser.done  # 1000 x 50 ms x 5% = 2.5 s < cost
    assert said == ["runtime.compile=auto: eager (1000 steps left at 50 ms are too few to repay a compile)"]


@pytest.mark.parametrize("compiled_s, kept", [(0.04, True), (0.06, False)])
def test_a_long_run_compiles_and_keeps_it_only_if_faster(compiled_s, kept):
    said, model = [], torch.nn.Linear(2, 2)
    chooser = CompileChooser("cpu", said.append)
    compiled = _feed(chooser, model, 0.05, 100_000)  # 100k x 50 ms x 5% = 250 s > cost
    assert compiled is not model and compiled._orig_mod is model and not chooser.done
    final = _feed(chooser, compiled, compiled_s, 99_000)
    assert chooser.done and final is (compiled if kept else model)
    assert said[-1].endswith("kept" if kept else "back to eager")
    assert chooser.after_step(final, 1.0, 1) is final  # decided once


def test_the_config_decides_unless_auto(monkeypatch):
    said = []
    assert setup_runtime(RuntimeConfig(device="cpu", compile=False)).compile_chooser(said.append) is None
    assert setup_runtime(RuntimeConfig(device="cpu", compile=True)).compile_chooser(said.append) is None
    monkeypatch.setattr(rt.shutil, "which", lambda name: None)
    assert setup_runtime(RuntimeConfig(device="cpu")).compile_chooser(said.append) is None
    assert said == ["runtime.compile=auto: eager (torch.compile on a CPU needs a C++ compiler: none on PATH)"]


def _run(tmp_path, compile, steps: int = 60):
    torch.manual_seed(0)
    model = build_model(GPTConfig(vocab_size=40, context_len=16, n_layer=2, n_head=2, d_model=32))
    train(model, causal_lm_loss, CausalLMBatches(ArrayTokens((np.arange(4000) * 7) % 40), 16, 4, seed=3),
          optim_cfg=OptimConfig(lr=3e-3), schedule_cfg=ScheduleConfig(warmup_steps=2),
          train_cfg=TrainConfig(max_steps=steps, batch_size=4, log_every=1, save_every=30, progress=False),
          runtime=setup_runtime(RuntimeConfig(device="cpu", precision="fp32", compile=compile)), run_dir=tmp_path)
    return [json.loads(ln)["loss"] for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def test_the_loop_switches_models_mid_run(monkeypatch, tmp_path, capsys):
    """With a zero compile cost the loop compiles after its probe steps (dynamo with the eager backend:
    no C++ compile in the test) and saves, evaluates and resumes as before."""
    monkeypatch.setattr(runtime_auto, "COMPILE_COST_S", 0.0)
    monkeypatch.setattr(runtime_auto, "compile_model", lambda model: torch.compile(model, backend="eager"))
    auto = _run(tmp_path / "auto", "auto")
    out = capsys.readouterr().out
    assert "runtime.compile=auto: compiling" in out and "runtime.compile=auto: compiled steps take" in out
    np.testing.assert_allclose(auto, _run(tmp_path / "eager", False), rtol=0, atol=1e-5)
    assert (tmp_path / "auto" / "checkpoints" / "step-000060").is_dir()
