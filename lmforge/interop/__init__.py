"""Interoperability with other toolkits: Hugging Face `transformers` folders (export and import)."""

from lmforge.interop.runs import cache_root, export_hf, import_hf, read_weights, resolve_run

__all__ = ["cache_root", "export_hf", "import_hf", "read_weights", "resolve_run"]
