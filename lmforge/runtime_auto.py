"""The run's automatic speed settings: `precision = "auto"` (is bf16 faster here?), `compile = "auto"`
(does compiling repay itself in this run?), and glibc's freed-memory reuse on CPU. `Runtime` applies them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lmforge.errors import LmforgeError

CPU_BF16_ENV = "LMFORGE_CPU_BF16"
"""`0` treats the CPU as having no bf16 units (precision auto is then fp32, untimed); `1` times bf16 anyway."""


COMPILE_GAIN = {"cpu": 0.05, "cuda": 0.25}
"""Fraction of an eager step that compiling is expected to save: on a CPU 0 to 12% measured on the
nanoGPT recipe (BENCHMARKS.md, "torch.compile on CPU"); on a GPU the usual figure for transformers."""
COMPILE_COST_S = 90.0
"""Seconds a first (uncached) compile of a small model's training graph may take on a slow machine."""
PROBE_STEPS = 20
"""Steps timed before deciding (after 3 untimed: the first ones build kernels and optimizer state)."""


@dataclass
class CompileChooser:
    """`runtime.compile = "auto"`, decided by timing: eager steps first; compile when the steps left,
    at the eager speed, would take more than COST / GAIN; then time the compiled steps and go back to
    eager if they are not faster. Results of a compiled model differ from eager ones by float rounding."""

    device_type: str
    say: Callable[[str], None]
    times: list[float] = field(default_factory=list)
    eager: nn.Module | None = None
    eager_step_s: float = 0.0
    done: bool = False

    def after_step(self, model: nn.Module, step_s: float, steps_left: int) -> nn.Module:
        """The model for the next step, given the time of the step just taken (training work only)."""
        if self.done:
            return model
        self.times.append(step_s)
        if len(self.times) < 3 + PROBE_STEPS:
            return model
        step_s = sorted(self.times[3:])[PROBE_STEPS // 2]  # the median: robust to a stray slow step
        self.times = []
        if self.eager is None:
            self.eager_step_s = step_s
            gain = COMPILE_GAIN.get(self.device_type, 0.0)
            if steps_left * step_s * gain < COMPILE_COST_S:
                self.done = True
                self.say(f"runtime.compile=auto: eager ({steps_left} steps left at {step_s * 1e3:.0f} ms are too "
                         "few to repay a compile)")
                return model
            self.eager = model
            self.say(f"runtime.compile=auto: compiling ({steps_left} steps left at {step_s * 1e3:.0f} ms)")
            return compile_model(model)
        self.done = True
        if step_s < self.eager_step_s:
            self.say(f"runtime.compile=auto: compiled steps take {step_s * 1e3:.0f} ms against "
                     f"{self.eager_step_s * 1e3:.0f} eager: kept")
            return model
        self.say(f"runtime.compile=auto: compiled steps take {step_s * 1e3:.0f} ms against "
                 f"{self.eager_step_s * 1e3:.0f} eager: back to eager")
        return self.eager


def compile_model(model: nn.Module) -> nn.Module:
    """torch.compile, with inductor's compiled graphs kept in the user's cache folder (its default, /tmp,
    is emptied on reboot): a second run of the same model compiles in seconds."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root / "lmforge" / "inductor"))
    return torch.compile(model)


def best_time(step: Callable[[contextlib.AbstractContextManager], None],
               autocast: Callable[[], contextlib.AbstractContextManager], repeats: int = 3) -> float:
    """The fastest of `repeats` timed calls of `step`, after one untimed call (oneDNN builds its kernels)."""
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        step(autocast())
        times.append(time.perf_counter() - start)
        if i == 1 and times[1] > 2.0:  # a slow step: one timed call is enough to compare
            break
    return min(times[1:])


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed blocks for reuse instead of returning them to the OS (Linux only).

    By default every tensor over a dynamic threshold (128 KiB at first, at most 32 MiB) is an mmap of its
    own, unmapped when freed, so each training step touches its logits, activations and gradients on
    fresh pages: one page fault per 4 KiB, a third of a gpt-tiny step on CPU. Raising the mmap and trim
    thresholds keeps those pages in the heap, where the next step reuses them (what tcmalloc/jemalloc
    preloading does); the process keeps its peak memory. Not done when the environment sets any of
    glibc's MALLOC_* tunables (then they decide). Returns whether it applied.
    """
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ):
        return False  # glibc tuned by the environment (MALLOC_MMAP_THRESHOLD_=...): that choice stands
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl): its allocator has no such thresholds
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


def cpu_bf16_units() -> str | None:
    """The CPU's bfloat16 matmul units ("AMX", "AVX-512 BF16"), or None: without them bf16 runs emulated,
    tens of times slower than fp32. `LMFORGE_CPU_BF16` overrides (0: none, 1: time bf16 anyway)."""
    forced = os.environ.get(CPU_BF16_ENV, "")
    if forced not in ("", "0", "1"):
        raise LmforgeError(f"{CPU_BF16_ENV}={forced!r} in the environment: set it to 0 (no bf16 units: precision "
                           "auto is fp32) or 1 (time bf16 anyway), or unset it")
    if forced == "0":
        return None
    if torch.cpu._is_amx_tile_supported():
        return "AMX"
    if torch.cpu._is_avx512_bf16_supported():
        return "AVX-512 BF16"
    return f"{CPU_BF16_ENV}=1" if forced == "1" else None


def settle_precision(precision: str, device: torch.device) -> tuple[str, str]:
    """(precision, why) for the config's `precision` on `device`, before any timing: "auto" stays "auto"
    only on a CPU with bf16 units, where `Runtime.settle_precision` times the real model."""
    if precision != "auto":
        return precision, "set in the config"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto on a GPU with bfloat16"
        return "fp32", "auto on a GPU without bfloat16 (runtime.precision=fp16 is the faster choice there)"
    if device.type != "cpu":
        return "fp32", f"auto on {device.type}"
    units = cpu_bf16_units()
    if units is None:
        return "fp32", "auto on a CPU without bf16 units (AMX, AVX-512 BF16)"
    return "auto", f"auto on a CPU with {units}"


def planned_precision(precision: str, cuda: bool) -> str:
    """The precision a run is expected to settle on, for plans made without running it."""
    if precision != "auto":
        return precision
    return "bf16" if cuda or cpu_bf16_units() is not None else "fp32"
