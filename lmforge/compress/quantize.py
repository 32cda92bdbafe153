"""Post-training int8 quantization for CPU inference, through torchao.

Schemes (torchao configs applied with `quantize_` to every `nn.Linear` at least 16 wide both ways):
  int8-dynamic   int8 weights (one scale per output row) and int8 activations quantized per token at
                 run time: the matmuls run in int8 (`Int8DynamicActivationInt8WeightConfig`).
  int8-weight    int8 weights dequantized inside the matmul, fp32 activations (`Int8WeightOnlyConfig`).
Embedding tables, norms and biases stay fp32; a tied output layer is quantized apart from its
embedding table (the tie is gone in the quantized run).

torchao's int8 kernels only pay on the CPU under `torch.compile` (eager, they run slower than fp32: see
BENCHMARKS.md), so `compile = "auto"` times the run's own model three ways on the spot (fp32 eager,
int8 eager, int8 compiled) and records the faster int8 way; `load_run` then compiles the model's forward
when the run says so. The checkpoint holds the int8 tensors and their scales (torchao's safetensors
layout: smaller files), its meta.json says "quantization", and the run stays a run of its task: eval,
generate, classify and the other inference commands load it. It cannot be trained, quantized again or
exported to transformers (which has no such layout): each refuses in one line.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from lmforge.errors import LmforgeError

SCHEMES = ("int8-dynamic", "int8-weight")
MIN_WIDTH = 16
"""Linear layers narrower than this (a two-label classifier) stay fp32: nothing to gain, accuracy to lose."""


def torchao_config(scheme: str):
    from lmforge.extras import import_torchao

    import_torchao()
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig

    if scheme not in SCHEMES:
        raise LmforgeError(f"--scheme {scheme!r} is not one of {', '.join(SCHEMES)}")
    return Int8DynamicActivationInt8WeightConfig() if scheme == "int8-dynamic" else Int8WeightOnlyConfig()


def quantize_model(model: nn.Module, scheme: str, skip: tuple[str, ...] = ()) -> int:
    """Quantize `model`'s linear layers in place (inference only), except those named under `skip` (parts a
    task head never runs: a classifier's unused LM head); returns how many were quantized."""
    from torchao.quantization import quantize_

    def wanted(m: nn.Module, fqn: str) -> bool:
        skipped = any(f"{fqn}.".startswith(prefix) for prefix in skip)
        return isinstance(m, nn.Linear) and min(m.weight.shape) >= MIN_WIDTH and not skipped

    chosen = [m for name, m in model.named_modules() if wanted(m, name)]
    for m in chosen:  # a tied output layer gets its own weight, quantized apart from the table
        m.weight = nn.Parameter(m.weight.detach().clone(), requires_grad=False)
    model.requires_grad_(False)
    quantize_(model, torchao_config(scheme), filter_fn=wanted)
    return len(chosen)


def sample_batch(model: nn.Module, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
    """Random token ids the model takes: (B, T) with T at most its context."""
    cfg = getattr(model, "config", None) or model.backbone.config
    vocab = int(cfg.vocab_size)
    T = min(seq_len, int(getattr(cfg, "max_positions", seq_len)))
    g = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(4, vocab, (batch_size, T), generator=g)}


@torch.inference_mode()
def seconds_per_forward(model: nn.Module, batch: dict[str, torch.Tensor], repeats: int = 5,
                        warmup: int = 2, min_seconds: float = 0.0) -> float:
    """Median wall time of one forward of `batch` (after `warmup` forwards: compilation, caches), over
    `repeats` forwards or more, until `min_seconds` have been spent timing (short forwards are noisy)."""
    for _ in range(warmup):
        model(**batch)
    times: list[float] = []
    while len(times) < repeats or (sum(times) < min_seconds and len(times) < 200):
        t = time.perf_counter()
        model(**batch)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def choose_compile(build, scheme: str, batch: dict[str, torch.Tensor], skip: tuple[str, ...] = ()) -> dict:
    """Time fp32 eager, int8 eager and int8 compiled on `batch`; `build()` makes a fresh fp32 model."""
    fp32 = seconds_per_forward(build(), batch)
    eager = build()
    quantize_model(eager, scheme, skip)
    int8_eager = seconds_per_forward(eager, batch)
    from lmforge.tasks import compile_forward

    compiled = compile_forward(build())
    quantize_model(compiled, scheme, skip)
    int8_compiled = seconds_per_forward(compiled, batch, warmup=3)
    return {"compile": int8_compiled < int8_eager, "seconds_fp32_eager": fp32, "seconds_int8_eager": int8_eager,
            "seconds_int8_compiled": int8_compiled, "batch": list(batch["input_ids"].shape)}


def quantize(run: str | Path, out: str | Path, *, scheme: str = "int8-dynamic",
             compile: Literal["auto", "yes", "no"] = "auto", checkpoint: str = "best", overwrite: bool = False,
             say=print) -> Path:
    """Quantize run `run`'s checkpoint into the new run folder `out`; returns `out`."""
    from lmforge.extras import import_torchao

    torchao_version = import_torchao().__version__
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

    from lmforge import runs
    from lmforge.tasks import load_run

    if compile not in ("auto", "yes", "no"):
        raise LmforgeError(f"--compile {compile!r} is not one of auto, yes, no")
    torchao_config(scheme)  # an unknown scheme: refused before anything loads
    run = Path(run)
    source = load_run(run, checkpoint)
    if source.quantization:
        raise LmforgeError(f"{run} is already quantized ({source.quantization['scheme']}): quantize the run it "
                           f"was made from ({source.quantization.get('from', 'see its compression.json')})")
    if isinstance(source.model, nn.Module) and not any(isinstance(m, nn.Linear) for m in source.model.modules()):
        raise LmforgeError(f"{run}: its model has no linear layers to quantize")

    # under a task head the backbone's LM head (and an unused pooler) never runs: left as it is (and tied)
    skip = tuple(f"backbone.{p}" for p in source.model.unused_prefixes()) if source.task.head else ()

    def build() -> nn.Module:
        model = source.task.build_model(source.config, source.files)
        model.load_state_dict(source.model.state_dict())
        return model.eval()

    timing = {"compile": compile == "yes"}
    if compile == "auto":
        say("timing fp32, int8 eager and int8 compiled on this CPU (compile: auto)")
        timing = choose_compile(build, scheme, sample_batch(source.model, 8, 128), skip)
        say(f"int8 eager {timing['seconds_int8_eager'] * 1e3:.1f} ms, int8 compiled "
            f"{timing['seconds_int8_compiled'] * 1e3:.1f} ms, fp32 {timing['seconds_fp32_eager'] * 1e3:.1f} ms a "
            f"forward of {timing['batch']}: {'compiled' if timing['compile'] else 'eager'}")
        if min(timing["seconds_int8_eager"], timing["seconds_int8_compiled"]) > timing["seconds_fp32_eager"]:
            say(f"warning: {scheme} is slower than fp32 for this model on this CPU: it still saves memory and disk"
                + (", but --scheme int8-dynamic is the faster one" if scheme != "int8-dynamic" else ""))
    model = build()
    n_linear = quantize_model(model, scheme, skip)
    once = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}  # a tied tensor once
    tensors, metadata = flatten_tensor_state_dict({k: v for k, v in model.state_dict().items() if k in once})
    how = {"scheme": scheme, "library": f"torchao {torchao_version}", "compile": bool(timing["compile"]),
           "linear_layers": n_linear, "from": str(run)}
    info = {"method": "quantize", "from": str(run), "checkpoint": source.checkpoint.name, **how, "timing": timing}
    runs.save_run(out, model, source.tokenizer, source.config, step=source.step, overwrite=overwrite,
                  meta={"quantization": how}, files={**source.files, runs.COMPRESSION: info},
                  tensors=({k: v.contiguous() for k, v in tensors.items()}, metadata))
    say(f"quantized {n_linear} linear layers ({scheme}, {how['library']}) -> {out}")
    return Path(out)
