"""Tokenizers of every kind: round trips, special tokens, word starts, HF loading, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.corpus.store import write_file
from lmforge.tokenizer import ROLES, TokenizerConfig, load_tokenizer, train_tokenizer

SAMPLES = ["Hello  world\n\n\ttabs here ", " leading space", "émoji 😀 中文 ok", "我们今天学习语言模型。"]
VOCAB = {"bpe": 500, "wordpiece": 300, "unigram": 600, "char": 200, "word": 200}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from conftest import make_chinese, make_english

    d = tmp_path_factory.mktemp("corpus")
    docs = make_english() + make_chinese() + ["Hello  world\n\n\ttabs here <unk> ok"]
    write_file(d / "train-00000.jsonl.zst", docs)
    write_file(d / "val-00000.jsonl.zst", make_english(10, seed=1) + make_chinese(5, seed=1))
    return d


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = {}
    for kind, vocab in VOCAB.items():
        path = tmp_path_factory.mktemp(kind) / "tok"
        cfg = TokenizerConfig(kind=kind, vocab_size=vocab)
        out[kind] = (train_tokenizer(corpus, path, cfg, progress=False), path)
    return out


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_lossless_round_trip(trained, kind):
    tok, _ = trained[kind]
    for text in SAMPLES + ["never seen: ẞ Ω ☃ \r\n", ""]:
        assert tok.decode(tok.encode(text)) == text


def test_char_round_trip_and_alphabet(trained, corpus):
    from lmforge.corpus import iter_corpus

    tok, _ = trained["char"]
    chars = {c for t in iter_corpus(corpus) for c in t}
    assert tok.vocab_size == len(chars) + len(ROLES)
    for text in iter_corpus(corpus, "train"):
        assert tok.decode(tok.encode(text)) == text
    assert all(len(tok.id_to_piece(i)) == 1 for i in tok.encode("the model 我们"))


def test_word_kind(trained):
    tok, _ = trained["word"]
    ids = tok.encode("the model  <unk> reads zzzunseen")
    assert ids[2] == tok.unk_id and ids[-1] == tok.unk_id and tok.id_to_piece(tok.unk_id) == "<unk>"
    assert tok.decode(ids[:2]) == "the model"
    assert tok.word_starts(ids) == [True] * len(ids)


@pytest.mark.parametrize("kind", list(VOCAB))
def test_special_tokens_and_saved_files(trained, kind):
    tok, path = trained[kind]
    ids = [getattr(tok, f"{r}_id") for r in ROLES]
    assert tok.special_ids == frozenset(ids) and max(ids) < len(ROLES)  # lowest ids
    assert all(i not in tok.special_ids - {tok.unk_id} for t in SAMPLES for i in tok.encode(t))  # never added
    meta = json.loads((path / "lmforge_tokenizer.json").read_text())
    assert meta["kind"] == kind and meta["fingerprint"] == tok.fingerprint
    assert {r: meta["special_tokens"][r]["id"] for r in ROLES} == dict(zip(ROLES, ids))
    assert len(tok.fingerprint) == 16 and int(tok.fingerprint, 16) >= 0
    report = json.loads((path / "report.json").read_text())
    assert report["bytes_per_token"] > 1 and 0 <= report["unk_share"] <= 1 and report["sample_tokens"]
    assert "[tokenizer]" in (path / "config.toml").read_text()
    again = load_tokenizer(path)
    assert again.fingerprint == tok.fingerprint and again.encode(SAMPLES[2]) == tok.encode(SAMPLES[2])
    pad = tok.encode("the")[:1] + [tok.pad_id]
    assert tok.decode(pad) == tok.decode(pad[:1])  # pad is skipped


@pytest.mark.parametrize("kind", list(VOCAB))
def test_transformers_loads_same_ids(trained, kind):
    transformers = pytest.importorskip("transformers")
    tok, path = trained[kind]
    hf = transformers.AutoTokenizer.from_pretrained(path)
    for text in SAMPLES:
        assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    assert (hf.eos_token_id, hf.pad_token_id, hf.mask_token_id, hf.cls_token_id, hf.sep_token_id) == \
        (tok.eot_id, tok.pad_id, tok.mask_id, tok.cls_id, tok.sep_id)


def test_word_starts(trained):
    bpe, _ = trained["bpe"]
    ids = bpe.encode("the model reads 我们")
    starts = bpe.word_starts(ids)
    words = []
    for i, s in zip(ids, starts):
        words.append([i]) if s else words[-1].append(i)
    # a lone space token counts as a word of its own
    texts = [bpe.decode(w).strip() for w in words]
    assert [t for t in texts if t] == ["the", "model", "reads", "我", "们"]
    wp, _ = trained["wordpiece"]
    ids = wp.encode("the modelling 中文")
    assert wp.word_starts(ids) == [not wp.id_to_piece(i).startswith("##") for i in ids]
    uni, _ = trained["unigram"]
    ids = uni.encode("the model")
    assert sum(uni.word_starts(ids)) == 2


def test_load_from_parent_folder(trained, tmp_path):
    import shutil

    _, path = trained["bpe"]
    shutil.copytree(path, tmp_path / "run" / "tokenizer")
    assert load_tokenizer(tmp_path / "run").fingerprint == trained["bpe"][0].fingerprint


def test_bad_inputs(corpus, tmp_path, cli):
    code, _, err = cli("tokenizer", "train", "--corpus", corpus, "--vocab-size", 100, "--out", tmp_path / "t")
    assert code == 2 and "too small" in err and "262" in err
    code, _, err = cli("tokenizer", "train", "--corpus", tmp_path / "nope", "--out", tmp_path / "t")
    assert code == 2 and "not found" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    write_file(empty / "train-00000.jsonl.zst", [])
    code, _, err = cli("tokenizer", "train", "--corpus", empty, "--out", tmp_path / "t")
    assert code == 2 and "no training text" in err
    (tmp_path / "exists").mkdir()
    code, _, err = cli("tokenizer", "train", "--corpus", corpus, "--kind", "char",
                       "--out", tmp_path / "exists")
    assert code == 2 and "--overwrite" in err
    code, _, err = cli("tokenizer", "encode", tmp_path / "nope", "hi")
    assert code == 2 and "not found" in err


def test_cli_encode_decode(trained, cli):
    tok, path = trained["bpe"]
    code, out, _ = cli("tokenizer", "encode", path, "the model")
    assert code == 0 and [int(x) for x in out.split()] == tok.encode("the model")
    code, out, _ = cli("tokenizer", "decode", path, *out.split())
    assert code == 0 and out == "the model\n"


def test_wordpiece_normalises_raw_text_like_the_corpus(tmp_path):
    """corpus build applies NFKC; a WordPiece vocabulary must meet raw text the same way, so the
    full-width comma of raw Chinese text is the ASCII comma it was trained on, not [UNK]."""
    import unicodedata

    from lmforge.corpus.store import write_file
    from lmforge.tokenizer import TokenizerConfig, train_tokenizer

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    texts = [unicodedata.normalize("NFKC", "酒店很好，服务一般，下次还来。") for _ in range(50)]
    write_file(corpus / "train-00000.jsonl.zst", texts)
    tok = train_tokenizer(corpus, tmp_path / "tok", TokenizerConfig(kind="wordpiece", vocab_size=200),
                          progress=False)
    ids = tok.encode("酒店很好，服务一般")  # raw: U+FF0C
    assert tok.unk_id not in ids
    assert ids == tok.encode("酒店很好,服务一般")
