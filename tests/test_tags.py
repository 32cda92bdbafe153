"""Tagged files for NER: reading, schemes, tag sets, word/token alignment round trips, windows."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from conftest import SHARED_DATA

from lmforge.data.tags import build_tag_set, check_tags, detect_scheme, iob2_to, read_tagged, to_iob2
from lmforge.data.word_tokens import (
    IGNORE,
    Aligned,
    align,
    make_windows,
    merge_windows,
    text_words,
    token_labels,
    word_predictions,
    words_to_text,
)
from lmforge.errors import LmforgeError

CONLL = """-DOCSTART- -X- O O

EU NNP I-NP I-ORG
rejects VBZ I-VP O
German\tJJ I-NP\tI-MISC
call NN I-NP O

Peter NNP I-NP I-PER
Blackburn NNP I-NP I-PER
Smith NNP I-NP B-PER

-DOCSTART- -X- O O

BRUSSELS NNP I-NP I-LOC
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_conll_docstart_iob1(tmp_path):
    data = read_tagged(write(tmp_path, "eng.train", CONLL))
    assert data.words == [["EU", "rejects", "German", "call"], ["Peter", "Blackburn", "Smith"], ["BRUSSELS"]]
    assert data.lines == [3, 8, 14] and data.scheme == "iob1" and data.joiner == " "
    assert data.tags == [["B-ORG", "O", "B-MISC", "O"], ["B-PER", "I-PER", "B-PER"], ["B-LOC"]]
    assert "3 sentences, 8 words" in data.describe() and "IOB1 (detected), converted to IOB2" in data.describe()
    assert build_tag_set(data) == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


def test_ragged_and_bad_columns(tmp_path):
    path = write(tmp_path, "bad.txt", "EU NNP B-ORG\nrejects O\n")
    with pytest.raises(LmforgeError, match=r"bad.txt:2: 2 columns, but line 1 .* has 3"):
        read_tagged(path)
    with pytest.raises(LmforgeError, match="tag_column=5"):
        read_tagged(write(tmp_path, "a.txt", "EU B-ORG\n"), tag_column=5)
    words = write(tmp_path, "words.txt", "EU\nrejects\n\nGerman\n")
    with pytest.raises(LmforgeError, match="one column only"):
        read_tagged(words)
    data = read_tagged(words, need_tags=False)
    assert data.tags is None and data.words == [["EU", "rejects"], ["German"]] and "no tags" in data.describe()


def test_jsonl(tmp_path):
    rows = [{"tokens": ["John", "lives", "in", "New", "York"], "tags": ["B-PER", "O", "O", "B-LOC", "I-LOC"]},
            {"tokens": ["Hi"], "ner_tags": ["O"]}]
    data = read_tagged(write(tmp_path, "d.jsonl", "\n".join(map(json.dumps, rows)) + "\n\n"))
    assert data.words[1] == ["Hi"] and data.tags[0][3:] == ["B-LOC", "I-LOC"] and data.lines == [1, 2]
    bad = write(tmp_path, "bad.jsonl", json.dumps(rows[0]) + "\n" + json.dumps({"tokens": ["a", "b"], "tags": ["O"]}))
    with pytest.raises(LmforgeError, match=r"bad.jsonl:2: 2 tokens but 1 tags"):
        read_tagged(bad)
    ids = write(tmp_path, "ids.jsonl", json.dumps({"tokens": ["a"], "ner_tags": [0]}))
    with pytest.raises(LmforgeError, match="int2str"):
        read_tagged(ids)
    plain = write(tmp_path, "plain.jsonl", json.dumps({"tokens": ["a", "b"]}))
    assert read_tagged(plain, need_tags=False).tags is None
    with pytest.raises(LmforgeError, match="plain.jsonl:1: no \"tags\""):
        read_tagged(plain)


def test_chinese_characters_join_without_spaces(tmp_path):
    text = "我 O\n在 O\n北 B-LOC\n京 I-LOC\n1 O\n\n张 B-PER\n三 E-PER\n好 S-LOC\n"
    path = write(tmp_path, "c.txt", text)
    with pytest.raises(LmforgeError, match=r"'E-PER' at .*c.txt:8 is not IOB2 \(the given scheme"):
        read_tagged(path, scheme="iob2")
    data = read_tagged(path)
    assert data.joiner == "" and data.scheme == "bioes"
    assert data.tags == [["O", "O", "B-LOC", "I-LOC", "O"], ["B-PER", "I-PER", "B-LOC"]]
    assert words_to_text(data.words[0], data.joiner) == ("我在北京1", [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)])


@pytest.mark.parametrize(("tags", "scheme"), [
    (["I-PER", "I-PER", "O", "I-LOC", "B-LOC"], "iob1"),
    (["B-PER", "I-PER", "O", "B-LOC", "B-LOC"], "iob2"),
    (["S-PER", "O", "B-LOC", "I-LOC", "E-LOC"], "bioes"),
    (["S-PER", "O", "B-LOC", "M-LOC", "E-LOC"], "bmes"),
])
def test_schemes(tags, scheme):
    assert detect_scheme([tags, ["O"]]) == scheme
    iob2 = to_iob2(tags, scheme)
    assert iob2[0] == "B-PER" and all(t[:2] in ("O", "B-", "I-") for t in iob2)
    assert iob2_to(iob2, scheme) == tags


def test_conversions():
    assert to_iob2(["I-PER", "B-PER", "I-LOC", "I-PER", "O", "I-PER"], "iob1") == \
        ["B-PER", "B-PER", "B-LOC", "B-PER", "O", "B-PER"]
    assert to_iob2(["B-A", "M-A", "M-A", "E-A", "S-B"], "bmes") == ["B-A", "I-A", "I-A", "I-A", "B-B"]
    assert to_iob2(["B-A", "I-A", "E-A", "S-A", "O"], "bioes") == ["B-A", "I-A", "I-A", "B-A", "O"]
    assert iob2_to(["B-A", "I-A", "B-A", "O", "B-B", "I-B", "I-B"], "bioes") == \
        ["B-A", "E-A", "S-A", "O", "B-B", "I-B", "E-B"]


def test_scheme_errors(tmp_path):
    path = write(tmp_path, "t.txt", "a B-LOC\nb M-LOC\n\nc X-PER\n")
    with pytest.raises(LmforgeError, match=r"'M-LOC' at .*t.txt:2 is not IOB2"):
        read_tagged(path, scheme="iob2")
    with pytest.raises(LmforgeError, match=r"'X-PER' at .*t.txt:4 is neither O nor"):
        read_tagged(path)


def test_unseen_dev_tag(tmp_path):
    train = read_tagged(write(tmp_path, "train.txt", "a B-PER\nb O\n"))
    dev = read_tagged(write(tmp_path, "dev.txt", "a B-PER\n\nb O\nc B-MISC\n"))
    labels = build_tag_set(train)
    with pytest.raises(LmforgeError, match=r"tag 'B-MISC' at .*dev.txt:4 \(dev file\) is not in the training"):
        check_tags(dev, labels, "dev")
    check_tags(train, labels, "dev")


def test_text_words():
    text = "The U.S. didn't sell 3.5% of state-of-the-art iPhone在北京, ok?"
    assert [text[s:e] for s, e in text_words(text)] == \
        ["The", "U.S.", "didn't", "sell", "3.5", "%", "of", "state-of-the-art", "iPhone", "在", "北", "京", ",",
         "ok", "?"]


# ----------------------------------------------------------------------------------------------------
# Alignment

NAMES = ["John Smith", "Mary", "Acme Corp", "New York", "U.S.", "Berlin"]
TYPES = ["PER", "PER", "ORG", "LOC", "LOC", "LOC"]
ZH = ["张三", "北京", "上海", "李四", "清华大学"]
ZH_TYPES = ["PER", "LOC", "LOC", "PER", "ORG"]


def sentences(seed: int, n: int) -> list[tuple[list[str], list[str], str]]:
    """(words, tags, joiner): English, Chinese characters, and mixed words."""
    rng, out = random.Random(seed), []
    filler = "the model reads text , and learns about it don't stop".split()
    zh_filler = "我们今天在学习语言模型的时候去了"
    for _ in range(n):
        words, tags = [], []
        for _ in range(rng.randint(3, 8)):
            if rng.random() < 0.3:
                k = rng.randrange(len(NAMES))
                parts = NAMES[k].split()
                words += parts
                tags += [f"B-{TYPES[k]}"] + [f"I-{TYPES[k]}"] * (len(parts) - 1)
            else:
                words.append(rng.choice(filler))
                tags.append("O")
        out.append((words, tags, " "))
        chars, ctags = [], []
        for _ in range(rng.randint(3, 8)):
            if rng.random() < 0.3:
                k = rng.randrange(len(ZH))
                chars += list(ZH[k])
                ctags += [f"B-{ZH_TYPES[k]}"] + [f"I-{ZH_TYPES[k]}"] * (len(ZH[k]) - 1)
            else:
                chars += list(rng.choice(zh_filler) * rng.randint(1, 2))
                ctags += ["O"] * (len(chars) - len(ctags))
        out.append((chars, ctags, ""))
        mixed = [("Apple", "B-ORG"), ("在", "O"), ("北京", "B-LOC"), ("开", "O"), ("iPhone", "B-MISC"),
                 ("店", "O"), ("。", "O")]
        rng.shuffle(mixed)
        out.append(([w for w, _ in mixed], [t for _, t in mixed], " "))
    return out


@pytest.fixture(scope="module")
def tokenizers():
    from lmforge.tokenizer.core import Tokenizer, special_tokens_for
    from lmforge.tokenizer.train import TokenizerConfig, _build_backend

    texts = [words_to_text(w, j)[0] for w, _, j in sentences(0, 300)]
    out = {}
    for kind, lowercase in (("bpe", False), ("wordpiece", True)):
        cfg = TokenizerConfig(kind=kind, vocab_size=600, lowercase=lowercase, min_frequency=2)
        out[kind] = Tokenizer(_build_backend(kind, cfg, texts, False), kind, special_tokens_for(kind), lowercase)
    return out


def token_consistent(a: Aligned, tags: list[str]) -> list[str]:
    """Tags where an entity never starts or ends inside a token (what a model that sees tokens can learn)."""
    out = list(tags)
    for w in range(len(tags)):
        if a.shares(w):  # inside a token begun by word w - 1: tag it as that word's continuation
            prev = out[w - 1]
            out[w] = "O" if prev == "O" else f"I-{prev[2:]}"
    return out


@pytest.mark.parametrize("kind", ["bpe", "wordpiece"])
def test_alignment_round_trip(tokenizers, kind):
    tok, data = tokenizers[kind], sentences(1, 40)
    labels = ["O"] + [f"{p}-{t}" for t in ("LOC", "MISC", "ORG", "PER") for p in "BI"]
    texts, spans = zip(*[words_to_text(w, j) for w, _, j in data])
    shared = 0
    for a, (words, tags, joiner), sp in zip(align(tok, list(texts), list(spans)), data, spans):
        assert len(a.first_token_of_word) == len(words) and min(a.first_token_of_word) >= 0
        for w, t in enumerate(a.first_token_of_word):  # a word's first token starts inside it
            start, end = a.offsets[t]
            assert start < sp[w][1] and end > sp[w][0]
        shared += sum(a.shares(w) for w in range(len(words)))
        if joiner == " " or kind == "wordpiece":
            assert not any(a.shares(w) for w in range(len(words)))
        tags = token_consistent(a, tags)
        ids = [labels.index(t) for t in tags]
        per_token = token_labels(a, ids, labels)
        preds = np.where(per_token == IGNORE, labels.index("B-MISC"), per_token)  # never read
        assert [labels[i] for i in word_predictions(a, preds.tolist(), labels)] == tags
        every = token_labels(a, ids, labels, all_subwords=True)
        assert (every[per_token != IGNORE] == per_token[per_token != IGNORE]).all()
        assert all(labels[i][0] != "B" for i in every[(per_token == IGNORE) & (every != IGNORE)])
        assert ((every == IGNORE) == (np.array(a.word_of_token) < 0)).all()
    if kind == "bpe":
        assert shared > 0  # BPE merged Chinese characters: the shared-token rule was exercised
        a = align(tok, ["Apple 龍"], [[(0, 5), (6, 7)]])[0]
        assert -1 in a.word_of_token  # a byte-level "Ġ" before a CJK character is whitespace only


def test_word_without_token():
    class Stub:  # a normalizer that drops U+200B: words 1 and 2 get no token
        def encode_offsets(self, texts):
            return [([5, 6], [(0, 1), (3, 4)])]

    a = align(Stub(), ["a \u200b b"], [[(0, 1), (2, 3), (4, 5)]])[0]
    assert a.first_token_of_word == [0, -1, -1] and a.word_of_token == [0, -1]
    assert word_predictions(a, [3, 4]) == [3, 0, 0]


# ----------------------------------------------------------------------------------------------------
# Windows


def fake(n: int) -> Aligned:
    return Aligned("", list(range(100, 100 + n)), [], [], [])


@pytest.mark.parametrize("input_format", ["cls_sep", "plain"])
@pytest.mark.parametrize(("max_length", "stride"), [(8, 0), (8, 3), (9, 5), (12, 2), (20, 10)])
def test_windows_round_trip(input_format, max_length, stride):
    lengths = [0, 3, 17, 40, 6]
    aligned = [fake(n) for n in lengths]
    labels = [np.arange(n) for n in lengths]
    w = make_windows(aligned, labels, max_length, stride, input_format, 1, 2)
    p = w.prefix
    assert p == (input_format != "plain")
    budget = max_length - 2 * p
    assert w.split == sum(n > budget for n in lengths)
    assert np.bincount(w.sentence).tolist() == [1 if n <= budget else len(range(0, n - budget, budget - stride)) + 1
                                                 for n in lengths]
    for k, ids in enumerate(w.ids):
        assert len(ids) <= max_length and len(w.labels[k]) == len(ids)
        if p:
            assert ids[0] == 1 and ids[-1] == 2 and w.labels[k][0] == w.labels[k][-1] == IGNORE
        s, f = w.sentence[k], w.first[k]
        assert (ids[p:len(ids) - p] - 100 == np.arange(f, f + len(ids) - 2 * p)).all()
        if k and w.sentence[k - 1] == s:  # consecutive windows share at least `stride` tokens
            assert w.first[k - 1] + len(w.ids[k - 1]) - 2 * p - f >= stride
    text_rows = [ids[p:len(ids) - p] - 100 for ids in w.ids]
    merged = merge_windows(w, text_rows, lengths)
    assert all((m == np.arange(n)).all() for m, n in zip(merged, lengths))
    scores = [np.eye(60)[np.where(ids >= 100, ids - 100, 0)] for ids in w.ids]  # (len(ids), 60): specials too
    merged = merge_windows(w, scores, lengths)
    assert all(m.shape == (n, 60) and (m.argmax(-1) == np.arange(n)).all() for m, n in zip(merged, lengths))


def test_windows_take_most_context():
    w = make_windows([fake(10)], None, 6, 2, "cls_sep", 1, 2)  # text windows [0,4) [2,6) [4,8) [6,10)
    assert w.labels is None and w.first.tolist() == [0, 2, 4, 6]
    merged = merge_windows(w, [np.full(4, k) for k in range(4)], [10])[0]
    assert merged.tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3, 3]
    with pytest.raises(LmforgeError, match="finetune.stride=4"):
        make_windows([fake(10)], None, 6, 4, "cls_sep", 1, 2)


@pytest.mark.skipif(not (SHARED_DATA / "ner" / "conll2003" / "eng.train").is_file(), reason="no CoNLL-2003")
def test_conll2003():
    data = read_tagged(SHARED_DATA / "ner" / "conll2003" / "eng.train")
    assert len(data) == 14041 and sum(map(len, data.words)) == 203621 and data.scheme == "iob1"
    assert build_tag_set(data) == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
