"""`runtime.precision`: "auto" (the default) and the forced settings, in training and in inference.

A CPU's bf16 units are simulated by patching torch's own detection, and the timing by patching
`best_time`, so each branch of the choice is tested on any machine; one test times for real.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmforge import runtime_auto as rt
from lmforge.data.loaders import ArrayTokens, CausalLMBatches
from lmforge.errors import LmforgeError
from lmforge.models import build_model
from lmforge.models.gpt import GPTConfig
from lmforge.objectives import causal_lm_loss
from lmforge.optim import OptimConfig, ScheduleConfig
from lmforge.runtime import RuntimeConfig, setup_runtime
from lmforge.runtime_auto import planned_precision
from lmforge.train import TrainConfig, train


def _units(monkeypatch, present: bool) -> None:
    """This CPU has (or lacks) bf16 units, whatever it really has."""
    monkeypatch.delenv(rt.CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: present)


def _timed(monkeypatch, fp32_s: float, bf16_s: float) -> list[str]:
    """Timing that reports `fp32_s` / `bf16_s`; still runs the step once (it must leave the run untouched)."""
    seen = []

    def best_time(step, autocast, repeats=3):
        ctx = autocast()
        seen.append("bf16" if isinstance(ctx, torch.autocast) else "fp32")
        step(ctx)
        return bf16_s if seen[-1] == "bf16" else fp32_s

    monkeypatch.setattr(rt, "best_time", best_time)
    return seen


def _tokens(n: int = 3000) -> ArrayTokens:
    return ArrayTokens((np.arange(n) * 7) % 40)  # a learnable pattern


def _train(tmp_path, precision: str = "auto"):
    torch.manual_seed(0)
    model = build_model(GPTConfig(vocab_size=40, context_len=16, n_layer=2, n_head=2, d_model=32, dropout=0.1))
    runtime = setup_runtime(RuntimeConfig(device="cpu", precision=precision))
    train(model, causal_lm_loss, CausalLMBatches(_tokens(), 16, 4, seed=3), optim_cfg=OptimConfig(lr=3e-3),
          schedule_cfg=ScheduleConfig(warmup_steps=1),
          train_cfg=TrainConfig(max_steps=4, batch_size=4, log_every=1, progress=False, save_every=0),
          runtime=runtime, run_dir=tmp_path)
    import json

    losses = [json.loads(ln)["loss"] for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return runtime, losses


def test_auto_on_a_cpu_without_bf16_units_is_fp32_untimed(monkeypatch):
    _units(monkeypatch, present=False)
    seen = _timed(monkeypatch, 1.0, 0.1)
    runtime = setup_runtime(RuntimeConfig(device="cpu"))
    assert RuntimeConfig().precision == "auto"
    assert runtime.cfg.precision == "fp32" and runtime.amp_dtype is None and not seen
    assert runtime.precision_label == "fp32: auto on a CPU without bf16 units (AMX, AVX-512 BF16)"
    assert planned_precision("auto", cuda=False) == "fp32" and planned_precision("auto", cuda=True) == "bf16"


def test_the_environment_can_say_there_are_no_units(monkeypatch):
    _units(monkeypatch, present=True)
    monkeypatch.setenv(rt.CPU_BF16_ENV, "0")
    assert setup_runtime(RuntimeConfig(device="cpu")).cfg.precision == "fp32"
    monkeypatch.setenv(rt.CPU_BF16_ENV, "yes")
    with pytest.raises(LmforgeError, match="LMFORGE_CPU_BF16='yes' in the environment: set it to 0"):
        setup_runtime(RuntimeConfig(device="cpu"))


@pytest.mark.parametrize("fp32_s, bf16_s, chosen", [(1.0, 0.5, "bf16"), (0.5, 1.0, "fp32")])
def test_auto_with_bf16_units_keeps_the_faster_of_two_timed_steps(monkeypatch, tmp_path, fp32_s, bf16_s, chosen):
    _units(monkeypatch, present=True)
    seen = _timed(monkeypatch, fp32_s, bf16_s)
    runtime = setup_runtime(RuntimeConfig(device="cpu"))
    assert runtime.cfg.precision == "auto"  # undecided until the model and a batch are there
    runtime, losses = _train(tmp_path, "auto")
    assert seen == ["fp32", "bf16"] and runtime.cfg.precision == chosen
    assert f"{fp32_s / bf16_s:.2f}x as fast in bf16 as in fp32" in runtime.precision_label
    assert (runtime.amp_dtype is torch.bfloat16) == (chosen == "bf16")
    if chosen == "fp32":  # the timing touched nothing: the same losses as a run forced to fp32
        _, forced = _train(tmp_path / "forced", "fp32")
        assert losses == forced


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_forced_precisions_both_train_and_are_what_runs(monkeypatch, tmp_path, precision):
    _units(monkeypatch, present=True)
    seen = _timed(monkeypatch, 1.0, 0.5)
    runtime, losses = _train(tmp_path, precision)
    assert not seen and runtime.cfg.precision == precision and runtime.precision_label.endswith("set in the config")
    assert len(losses) == 4 and all(np.isfinite(losses)) and losses[-1] < losses[0]
    with runtime.autocast():
        out = torch.nn.Linear(4, 4)(torch.ones(1, 4))
    assert out.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)


def test_real_timing_when_the_units_are_assumed(monkeypatch, tmp_path):
    """LMFORGE_CPU_BF16=1 times bf16 on any CPU: the choice is whichever was faster here."""
    monkeypatch.setenv(rt.CPU_BF16_ENV, "1")
    times = []
    real = rt.best_time
    monkeypatch.setattr(rt, "best_time", lambda step, autocast, repeats=3: times.append(
        real(step, autocast, repeats)) or times[-1])
    runtime, _ = _train(tmp_path, "auto")
    assert len(times) == 2 and runtime.cfg.precision == ("bf16" if times[1] < times[0] else "fp32")
    assert "a timed training micro-step ran" in runtime.precision_label


def test_inference_takes_the_same_choice(monkeypatch, tmp_path, tiny_shards):
    """A loaded run's forward runs under the settled precision and hands back fp32 logits."""
    from lmforge.cli import main
    from lmforge.tasks import load_run

    config = tmp_path / "gpt.toml"
    config.write_text("[model]\nkind = \"gpt\"\ncontext_len = 32\nn_layer = 1\nn_head = 2\nd_model = 16\n"
                      "[train]\nmax_steps = 2\nbatch_size = 4\neval_every = 0\nsave_every = 2\nprogress = false\n"
                      "[runtime]\ndevice = \"cpu\"\n")
    assert main(["pretrain", "--config", str(config), "--data", str(tiny_shards), "--out", str(tmp_path / "r")]) == 0
    ids = torch.randint(0, 50, (2, 12))
    plain = load_run(tmp_path / "r")
    assert plain.precision.startswith("fp32: auto on a CPU without bf16 units")
    _units(monkeypatch, present=True)
    seen = _timed(monkeypatch, 1.0, 0.5)
    fast = load_run(tmp_path / "r")
    assert seen == ["fp32", "bf16"] and fast.precision.startswith("bf16: auto on a CPU with AVX-512 BF16")
    with torch.no_grad():
        want, got = plain.model(ids), fast.model(ids)
    assert got.dtype == torch.float32 and not torch.equal(got, want)  # computed in bf16, handed back in fp32
    torch.testing.assert_close(got, want, atol=0.05, rtol=0.05)
