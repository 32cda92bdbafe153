"""The shard workers read the corpus records themselves: the same tokens as encoding the texts
directly, in corpus order, across jsonl.zst, jsonl.gz and parquet files, and bad records still name
their file and line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from lmforge.corpus import iter_corpus
from lmforge.corpus.store import write_file
from lmforge.data.shards import ShardConfig, TokenShards, build_shards
from lmforge.errors import LmforgeError
from lmforge.tokenizer import TokenizerConfig, train_tokenizer


@pytest.fixture
def mixed(tmp_path, english_docs, chinese_docs) -> tuple[Path, Path]:
    """A train split of three files in three formats, and a tokenizer."""
    d = tmp_path / "corpus"
    d.mkdir()
    docs = english_docs[:60] + chinese_docs[:30]
    write_file(d / "train-00000.jsonl.zst", docs[:40])
    write_file(d / "train-00001.parquet", docs[40:65], fmt="parquet")
    write_file(d / "train-00002.jsonl.gz", docs[65:], fmt="jsonl.gz")
    tok = tmp_path / "tok"
    train_tokenizer(d, tok, TokenizerConfig(kind="bpe", vocab_size=300), progress=False)
    return d, tok


@pytest.mark.parametrize("workers", [1, 2])
def test_tokens_equal_encoding_the_texts_in_order(tmp_path, mixed, workers):
    corpus, tok_dir = mixed
    man = build_shards(corpus, tok_dir, tmp_path / "s", ShardConfig(num_workers=workers, batch_docs=6),
                       progress=False)
    ts = TokenShards.open(tmp_path / "s")
    from lmforge.tokenizer import load_tokenizer

    tok = load_tokenizer(tok_dir)
    texts = list(iter_corpus(corpus, "train"))
    want = np.concatenate([np.array([*tok.encode(t), tok.eot_id]) for t in texts])
    assert np.array_equal(ts.tokens(0, ts.num_tokens), want)
    assert man["splits"]["train"]["docs"] == len(texts)
    assert man["splits"]["train"]["text_bytes"] == sum(len(t.encode("utf-8")) for t in texts)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_bad_record_names_its_file_and_line(tmp_path, mixed, workers):
    corpus, tok_dir = mixed
    lines = [json.dumps({"text": f"document number {i} is fine"}) for i in range(20)]
    lines[13] = '{"txt": "no text key"}'  # line 14, in the third batch of 6
    with gzip.open(corpus / "train-00002.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    with pytest.raises(LmforgeError, match=r"train-00002\.jsonl\.gz:14: not a corpus record"):
        build_shards(corpus, tok_dir, tmp_path / "s", ShardConfig(num_workers=workers, batch_docs=6),
                     progress=False)
    assert not (tmp_path / "s").exists()
