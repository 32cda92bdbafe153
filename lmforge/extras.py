"""Optional packages (the extras in pyproject.toml), asked for before the work that needs them starts.

A command either refuses at once, naming the install line (`require`), when the missing package is
what the user asked for; or it does its whole job and leaves out the optional part with one line
saying so (`available` + `skipped`), when that part is a side product (a plot, TensorBoard files).
Nothing may fail *after* its work because an extra is missing.
"""

from __future__ import annotations

import importlib.util

from lmforge.errors import LmforgeError

EXTRA_OF = {"matplotlib": "plot", "tensorboard": "tensorboard", "transformers": "hf", "datasets": "hf",
            "huggingface_hub": "hf", "pyarrow": "parquet", "datasketch": "dedup",
            "sacrebleu": "seq2seq", "rouge_score": "seq2seq", "seqeval": "ner", "torchao": "compress",
            "fastapi": "serve", "uvicorn": "serve"}
"""Optional top-level package -> the lmforge extra that installs it."""


def available(package: str) -> bool:
    """Whether `package` (a top-level name in EXTRA_OF) can be imported, without importing it."""
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a broken install, or a module without a spec
        return False


def install_line(package: str) -> str:
    return f"pip install 'lmforge[{EXTRA_OF[package]}]'"


def require(package: str, what: str) -> None:
    """Refuse `what` (e.g. "reading parquet") up front when `package` is missing."""
    if not available(package):
        raise LmforgeError(f"{what} needs {package}, which is not installed: {install_line(package)}")


def skipped(package: str, what: str) -> str:
    """The one line that says an optional part was left out, and how to get it."""
    return f"{what} skipped: {package} is not installed ({install_line(package)})"


def import_torchao():
    """torchao without its start-up noise: it logs every optional GPU kernel it cannot load on a CPU
    machine, and warns about compile caching of its int8 tensors on each compile."""
    import logging
    import warnings

    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        import torchao
        import torchao.prototype.safetensors.safetensors_support  # noqa: F401 - both register types on import
        import torchao.quantization  # noqa: F401
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    warnings.filterwarnings("ignore", message=r".*_stable_hash_for_caching")
    return torchao
