"""metrics.jsonl (one JSON object per log/eval event, appended and flushed per line) and, when tensorboard
is installed, TensorBoard scalars beside it: what the training loop records, and a resumed run's
history cut back to its checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lmforge.atomic import write_text, writing
from lmforge.extras import available, skipped


class MetricsLog:
    """metrics.jsonl (appended, flushed per line) plus TensorBoard scalars when available."""

    def __init__(self, run_dir: Path, resume_step: int | None, enabled: bool = True) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.file = self.tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            # a killed run may have logged past its last checkpoint: those steps will be redone
            kept = [ln for ln in self.path.read_text().splitlines() if step_of(ln) <= resume_step]
            write_text(self.path, "".join(ln + "\n" for ln in kept))
        self.file = self.path.open("a")
        if not available("tensorboard"):  # a side product: metrics.jsonl has every figure
            print(f"lmforge: {skipped('tensorboard', 'TensorBoard logging')}", flush=True)
            return
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=resume_step)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with writing(self.path):  # a full disk mid-run: one line; the checkpoints so far stay whole
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, record["step"])

    def say(self, message: str) -> None:
        """One line for people (rank 0 only), printed above the progress bar."""
        if self.enabled:
            tqdm.write(f"lmforge: {message}")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def step_of(line: str) -> float:
    """The step of a metrics line; a line cut short by a kill (only ever the last) counts as past the end."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf
