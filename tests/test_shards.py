"""Shard format round trip, checksums, fingerprints, cross-shard reads, and the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmforge.corpus.store import write_file
from lmforge.data.shards import HEADER_SIZE, ShardConfig, ShardWriter, TokenShards, build_shards
from lmforge.errors import LmforgeError
from lmforge.tokenizer import TokenizerConfig, load_tokenizer, train_tokenizer


def _write_split(folder: Path, docs: list[np.ndarray], shard_tokens: int,
                 fp: str = "a1b2c3d4e5f60718") -> None:
    """A shards folder written straight from token arrays (no tokenizer needed)."""
    writer = ShardWriter(folder, "train", 1000, fp, shard_tokens)
    for i in range(0, len(docs), 3):  # batches of 3 documents
        batch = docs[i:i + 3]
        writer.add(np.concatenate(batch), np.array([len(d) for d in batch]))
    shards = writer.finish()
    manifest = {"format_version": 1, "tokenizer_fingerprint": fp, "vocab_size": 1000, "dtype": "uint16",
                "splits": {"train": {"tokens": sum(s["tokens"] for s in shards), "docs": len(docs),
                                     "text_bytes": 123, "shards": shards}}}
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def docs() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(1, 1000, size=rng.integers(1, 40)) for _ in range(50)]


def test_round_trip_across_shards(tmp_path, docs):
    _write_split(tmp_path, docs, shard_tokens=100)
    ts = TokenShards.open(tmp_path)
    flat = np.concatenate(docs)
    assert len(ts._shards) > 3 and ts.num_tokens == len(flat) and ts.num_docs == len(docs)
    assert np.array_equal(ts.tokens(0, ts.num_tokens), flat)
    assert np.array_equal(ts.doc_offsets(), np.concatenate([[0], np.cumsum([len(d) for d in docs])]))
    # every shard holds whole documents and at most shard_tokens unless one document is bigger
    assert all(s.n_tokens <= 100 or s.n_docs == 1 for s in ts._shards)
    starts = np.arange(0, ts.num_tokens - 17, 7)
    w = ts.windows(starts, 17)
    assert w.dtype == np.int64 and w.shape == (len(starts), 17)
    assert np.array_equal(w, np.stack([flat[s:s + 17] for s in starts]))
    assert ts.text_bytes == 123


def test_document_longer_than_a_shard(tmp_path):
    docs = [np.arange(1, 6), np.arange(1, 300), np.arange(1, 4)]
    _write_split(tmp_path, docs, shard_tokens=50)
    ts = TokenShards.open(tmp_path)
    assert [s.n_docs for s in ts._shards] == [1, 1, 1]
    assert np.array_equal(ts.tokens(0, ts.num_tokens), np.concatenate(docs))


def test_flipped_byte_is_refused(tmp_path, docs):
    _write_split(tmp_path, docs, shard_tokens=10_000)
    path = tmp_path / "train-00000.bin"
    data = bytearray(path.read_bytes())
    data[HEADER_SIZE + 5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(LmforgeError, match="checksum"):
        TokenShards.open(tmp_path)
    TokenShards.open(tmp_path, verify=False)  # the caller may skip the check


def test_bad_magic_version_and_truncation(tmp_path, docs):
    _write_split(tmp_path, docs, shard_tokens=10_000)
    path = tmp_path / "train-00000.bin"
    good = path.read_bytes()
    path.write_bytes(good[:-3])
    with pytest.raises(LmforgeError, match="truncated"):
        TokenShards.open(tmp_path)
    path.write_bytes(b"NOTSHARD" + good[8:])
    with pytest.raises(LmforgeError, match="magic"):
        TokenShards.open(tmp_path)
    path.write_bytes(good[:8] + (99).to_bytes(4, "little") + good[12:])
    with pytest.raises(LmforgeError, match="version 99"):
        TokenShards.open(tmp_path)


def test_fingerprint_mismatch_and_missing_split(tmp_path, docs):
    _write_split(tmp_path, docs, shard_tokens=10_000)
    with pytest.raises(LmforgeError, match="a1b2c3d4e5f60718, the model expects ffff.*--tokenizer"):
        TokenShards.open(tmp_path, expect_fingerprint="ffffffffffffffff")
    assert TokenShards.open(tmp_path, expect_fingerprint="a1b2c3d4e5f60718").num_docs == len(docs)
    with pytest.raises(LmforgeError, match="no 'val' split"):
        TokenShards.open(tmp_path, split="val")
    with pytest.raises(LmforgeError, match="not a shards folder"):
        TokenShards.open(tmp_path / "nowhere")


@pytest.fixture
def corpus(tmp_path, english_docs, chinese_docs) -> Path:
    d = tmp_path / "corpus"
    d.mkdir()
    docs = [t for pair in zip(english_docs, chinese_docs) for t in pair] + english_docs[len(chinese_docs):]
    write_file(d / "train-00000.jsonl.zst", docs[:-30])
    write_file(d / "train-00001.jsonl.zst", docs[-30:-10])
    write_file(d / "val-00000.jsonl.zst", docs[-10:])
    return d


def test_parallel_output_equals_serial(tmp_path, corpus):
    tok_dir = tmp_path / "tok"
    tok = train_tokenizer(corpus, tok_dir, TokenizerConfig(kind="bpe", vocab_size=400), progress=False)
    one = build_shards(corpus, tok_dir, tmp_path / "s1",
                       ShardConfig(num_workers=1, batch_docs=7, shard_tokens=3000), progress=False)
    two = build_shards(corpus, tok_dir, tmp_path / "s2",
                       ShardConfig(num_workers=2, batch_docs=7, shard_tokens=3000), progress=False)
    assert one["splits"] == two["splits"] and len(one["splits"]["train"]["shards"]) > 1
    for s in one["splits"]["train"]["shards"]:
        assert (tmp_path / "s1" / s["file"]).read_bytes() == (tmp_path / "s2" / s["file"]).read_bytes()
    ts = TokenShards.open(tmp_path / "s2", expect_fingerprint=tok.fingerprint)
    from lmforge.corpus import iter_corpus

    texts = list(iter_corpus(corpus, "train"))
    offsets = ts.doc_offsets()
    assert ts.num_docs == len(texts) and ts.text_bytes == sum(len(t.encode()) for t in texts)
    for i in (0, 1, len(texts) - 1):
        ids = ts.tokens(int(offsets[i]), int(offsets[i + 1]))
        assert ids[-1] == tok.eot_id and tok.decode(ids[:-1]) == texts[i]


def test_test_split_is_encoded_when_the_corpus_has_one(tmp_path, corpus):
    tok_dir = tmp_path / "tok"
    tok = train_tokenizer(corpus, tok_dir, TokenizerConfig(kind="char", vocab_size=300), progress=False)
    build_shards(corpus, tok_dir, tmp_path / "s0", ShardConfig(num_workers=1), progress=False)
    with pytest.raises(LmforgeError, match="no 'test' split"):
        TokenShards.open(tmp_path / "s0", "test")
    held_out = ["a test document", "another one"]
    write_file(corpus / "test-00000.jsonl.zst", held_out)
    build_shards(corpus, tok_dir, tmp_path / "s1", ShardConfig(num_workers=1), progress=False)
    test = TokenShards.open(tmp_path / "s1", "test", expect_fingerprint=tok.fingerprint)
    offsets = test.doc_offsets()
    assert [tok.decode(test.tokens(int(a), int(b) - 1)) for a, b in zip(offsets[:-1], offsets[1:])] == held_out
    assert test.text_bytes == sum(len(t.encode()) for t in held_out)


@pytest.mark.parametrize("kind,vocab", [("bpe", 500), ("unigram", 600), ("char", 300), ("wordpiece", 300),
                                        ("word", 200)])
def test_cli_end_to_end(tmp_path, corpus, cli, kind, vocab):
    tok_dir, shards_dir = tmp_path / "tok", tmp_path / "shards"
    code, out, err = cli("tokenizer", "train", "--corpus", corpus, "--kind", kind, "--vocab-size", vocab,
                         "--out", tok_dir, "--quiet")
    assert code == 0, err
    code, out, err = cli("shards", "build", "--corpus", corpus, "--tokenizer", tok_dir, "--out", shards_dir,
                         "--workers", 1, "--quiet")
    assert code == 0, err
    assert "tokens/s" in out
    tok = load_tokenizer(shards_dir)  # the copy inside the shards folder
    val = TokenShards.open(shards_dir, "val", expect_fingerprint=tok.fingerprint)
    from lmforge.corpus import iter_corpus

    texts = list(iter_corpus(corpus, "val"))
    offsets = val.doc_offsets()
    decoded = [tok.decode(val.tokens(int(a), int(b) - 1)) for a, b in zip(offsets[:-1], offsets[1:])]
    if kind in ("bpe", "unigram", "char"):
        assert decoded == texts
    else:
        assert len(decoded) == len(texts) and all(decoded)
    code, _, err = cli("shards", "build", "--corpus", corpus, "--tokenizer", tok_dir, "--out", shards_dir)
    assert code == 2 and "--overwrite" in err


def test_cli_bad_inputs(tmp_path, corpus, cli):
    code, _, err = cli("shards", "build", "--corpus", corpus, "--tokenizer", tmp_path / "none", "--out",
                       tmp_path / "o")
    assert code == 2 and "not found" in err
    code, _, err = cli("shards", "build", "--corpus", tmp_path / "none", "--tokenizer", tmp_path / "none",
                       "--out", tmp_path / "o")
    assert code == 2 and "not found" in err and not (tmp_path / "o").exists()
