"""`lmforge plot`: training loss, validation loss, learning rate and throughput of runs side by side."""

from __future__ import annotations

import io
import json
from pathlib import Path

from lmforge.errors import LmforgeError

FORMATS = ("png", "svg", "pdf", "jpg", "jpeg")

_PANELS = [("loss", "train loss"), ("val_loss", "validation loss"), ("lr", "learning rate"),
           ("tokens_per_s", "throughput (tokens/s)")]


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise LmforgeError(f"{run_dir} has no metrics.jsonl: give run folders made by `lmforge pretrain`")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_runs(run_dirs: list[Path], out: Path) -> None:
    from lmforge.extras import require

    kind = Path(out).suffix.lstrip(".").lower()
    if kind not in FORMATS:
        raise LmforgeError(f"--out {out}: plots are written as {', '.join('.' + f for f in FORMATS)}; name the "
                           "file with one of them")
    require("matplotlib", "plotting")
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    from lmforge.atomic import write_bytes

    runs = [(Path(r).name or str(r), read_metrics(r)) for r in run_dirs]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    for ax, (key, title) in zip(axes.flat, _PANELS):
        for name, records in runs:
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, label=name, marker="o" if key == "val_loss" else None, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if key in ("loss", "val_loss") and ax.has_data():
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(ScalarFormatter())  # 4.5, not 4.5 x 10^0
            ax.yaxis.set_minor_formatter(ScalarFormatter())
            plain = matplotlib.ticker.FormatStrFormatter("%.2f")  # not 4 x 10^0
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
        if ax.has_data():
            ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format=kind, dpi=110)
    plt.close(fig)
    write_bytes(out, buf.getvalue())
