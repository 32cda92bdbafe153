"""Hugging Face datasets as corpus inputs: `hf:NAME[:CONFIG]:SPLIT`.

NAME is a Hub dataset, a local folder of data files (both streamed with `datasets.load_dataset`), or a
folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (read with `load_from_disk`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from lmforge.errors import LmforgeError


def parse_spec(spec: str) -> tuple[str, str | None, str]:
    parts = spec[len("hf:"):].split(":")
    if len(parts) == 2 and all(parts):
        return parts[0], None, parts[1]
    if len(parts) == 3 and all(parts):
        return parts[0], parts[1], parts[2]
    raise LmforgeError(f"input {spec!r}: write Hugging Face datasets as hf:NAME:SPLIT or "
                       "hf:NAME:CONFIG:SPLIT, e.g. hf:wikitext:wikitext-2-raw-v1:train")


def iter_hf(spec: str, text_field: str) -> Iterator[str]:
    name, config, split = parse_spec(spec)
    try:
        import datasets
    except ImportError:
        raise LmforgeError(f"input {spec}: reading Hugging Face datasets needs `datasets`: "
                           "pip install 'lmforge[hf]'") from None
    path = Path(name)
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise LmforgeError(f"input {spec}: no split '{split}' in {path} (splits: {', '.join(ds)})")
            ds = ds[split]
    else:
        try:
            ds = datasets.load_dataset(name, config, split=split, streaming=True)
        except (FileNotFoundError, ValueError, ConnectionError, OSError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise LmforgeError(f"input {spec}: cannot load dataset '{name}' ({first}): check the name, "
                               "config and split, or that you are online") from None
    columns = list(ds.column_names or []) if ds.column_names is not None else None
    if columns is not None and text_field not in columns:
        raise LmforgeError(f"input {spec}: no field '{text_field}' (fields: {', '.join(columns)}): "
                           "pass --set corpus.text_field=NAME")
    for row in ds:
        if text_field not in row:
            raise LmforgeError(f"input {spec}: no field '{text_field}' (fields: {', '.join(row)}): "
                               "pass --set corpus.text_field=NAME")
        text = row[text_field]
        if isinstance(text, str):
            yield text
