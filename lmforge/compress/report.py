"""Size, speed and quality of a compressed run against the run it came from: report.json and a table.

Measured for each run, in this process, one after the other: parameters, the checkpoint's weight file
size, CPU latency of one forward over B x T random tokens (B = 1 and 32, T = min(128, context); the
median of at least 5 forwards and 2 s, after warm-up, which includes a quantized run's compilation) as
milliseconds per example and tokens per second, and the task's own metrics from `lmforge eval` on the
run's held-out data (its shards' val split, a fine-tuned run's dev file; or `data`).
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

HEADLINE = ("accuracy", "macro_f1", "f1", "exact_match", "perplexity", "loss")
"""Metrics shown in the table when the task reports them (all scalar metrics go to report.json)."""


def measure(run_dir: str | Path, *, batch_sizes: tuple[int, ...] = (1, 32), seq_len: int = 128,
            repeats: int = 5, min_seconds: float = 2.0, data: str | Path | None = None,
            max_batches: int = 0) -> dict:
    from lmforge.compress.quantize import sample_batch, seconds_per_forward
    from lmforge.pipeline import evaluate_run
    from lmforge.tasks import load_run

    threads = torch.get_num_threads()  # evaluate_run below sets the run's runtime.num_threads: time with ours
    run = load_run(run_dir, device="cpu")
    speed = {}
    for B in batch_sizes:
        batch = sample_batch(run.model, B, seq_len)
        seconds = seconds_per_forward(run.model, batch, repeats, warmup=3 if run.quantization else 2,
                                      min_seconds=min_seconds)
        speed[str(B)] = {"ms_per_example": 1e3 * seconds / B, "tokens_per_s": batch["input_ids"].numel() / seconds,
                         "seq_len": batch["input_ids"].shape[1]}
    finetune = getattr(run.config, "finetune", None)
    if finetune is not None:  # a fine-tuned run: its dev file, whole (max_batches counts token-shard batches)
        data, max_batches = data or finetune.dev_file, 0
    metrics = evaluate_run(run_dir, data, max_batches=max_batches, device="cpu")
    torch.set_num_threads(threads)
    return {"run": str(run_dir), "checkpoint": run.checkpoint.name,
            "parameters": sum(p.numel() for p in run.model.parameters()),
            "file_bytes": (run.checkpoint / "model.safetensors").stat().st_size,
            "speed": speed, "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}}


def compare(before: str | Path, after: str | Path, **kwargs) -> dict:
    """Measure both runs and write `after`/report.json (atomically); returns the report."""
    from lmforge import runs
    from lmforge.atomic import write_json

    b, a = measure(before, **kwargs), measure(after, **kwargs)
    speedup = {B: b["speed"][B]["ms_per_example"] / a["speed"][B]["ms_per_example"] for B in a["speed"]}
    report = {"method": runs.read_json(after, runs.COMPRESSION).get("method"), "before": b, "after": a,
              "parameters_ratio": a["parameters"] / b["parameters"], "file_ratio": a["file_bytes"] / b["file_bytes"],
              "speedup": speedup, "machine": {"cpu": platform.processor() or platform.machine(),
                                              "threads": torch.get_num_threads(), "torch": torch.__version__}}
    write_json(Path(after) / "report.json", report)
    return report


def format_table(report: dict) -> str:
    b, a = report["before"], report["after"]
    rows = [("parameters", f"{b['parameters']:,}", f"{a['parameters']:,}", f"{report['parameters_ratio']:.2f}x"),
            ("weights file", _mb(b["file_bytes"]), _mb(a["file_bytes"]), f"{report['file_ratio']:.2f}x")]
    for B, s in a["speed"].items():
        rows.append((f"ms / example (batch {B})", f"{b['speed'][B]['ms_per_example']:.2f}",
                     f"{s['ms_per_example']:.2f}", f"{report['speedup'][B]:.2f}x speed"))
        rows.append((f"tokens / s (batch {B})", f"{b['speed'][B]['tokens_per_s']:,.0f}", f"{s['tokens_per_s']:,.0f}",
                     ""))
    for name in HEADLINE:
        if name in b["metrics"] and name in a["metrics"]:
            diff = a["metrics"][name] - b["metrics"][name]
            rows.append((name, f"{b['metrics'][name]:.4f}", f"{a['metrics'][name]:.4f}", f"{diff:+.4f}"))
    widths = [max(len(r[i]) for r in rows + [("", "before", "after", "change")]) for i in range(4)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(("", "before", "after", "change"), widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"
