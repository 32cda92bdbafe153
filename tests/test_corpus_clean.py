"""Cleaning stages, PII scrubbing, dedup and the shuffle/split, one behaviour per test."""

from __future__ import annotations

import numpy as np
import pytest

from lmforge.corpus.clean import (
    InvalidUtf8,
    Junk,
    Length,
    Nfkc,
    NormalizeWhitespace,
    StripControl,
    StripHtml,
    letter_ratio,
)
from lmforge.corpus.dedup import ExactDedup, MinHasher, NearDedup
from lmforge.corpus.pii import ScrubPii
from lmforge.corpus.split import assign_splits, shuffle


def test_invalid_utf8_replace_counts_each_byte_and_skip_drops() -> None:
    stage = InvalidUtf8("replace")
    assert stage("caf\udce9 \udcff\udcfe") == "caf\ufffd \ufffd\ufffd"
    assert stage.counts == {"invalid_bytes": 3}
    assert stage("clean") == "clean"
    assert InvalidUtf8("skip")("bad\udce9") is None


def test_nfkc_control_whitespace_html() -> None:
    assert Nfkc()("ﬁne ＡＢＣ １２") == "fine ABC 12"
    assert StripControl()("a\x00b\x1bc\r\nd\ufeff\ufffd\te") == "abc\nd\te"
    assert NormalizeWhitespace()("  a \t b  \n   c\n\n\n\n d  ") == "a b\nc\n\nd"
    html = "<html><style>p{}</style><p>Fish &amp; chips</p><script>x()</script><br>done &lt;3</html>"
    assert NormalizeWhitespace()(StripHtml()(html)) == "Fish & chips\n\ndone <3"


def test_length_and_junk_filters() -> None:
    length = Length(5, 10)
    assert length("1234") is None and length("12345") == "12345" and length("x" * 11) is None
    assert length.counts == {"too_short": 1, "too_long": 1}
    assert letter_ratio("我们今天学习语言模型。") > 0.9  # Han characters are letters
    junk = Junk(0.5)
    assert junk("Привет мир, hello world") is not None
    assert junk("|| 12 34 ## $$ 99 -- ++") is None


def test_exact_dedup_ignores_case_and_spacing() -> None:
    stage = ExactDedup()
    assert stage("Hello  World") == "Hello  World"
    assert stage("hello world") is None
    assert stage("hello world!") == "hello world!"


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


def test_minhash_estimates_jaccard() -> None:
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in rng.integers(0, 5000, size=400)]
    a, b = " ".join(words), " ".join(words[:300] + [f"x{i}" for i in range(100)])
    mh = MinHasher(num_perm=256, shingle_size=1)
    est = float(np.mean(mh.signature(a) == mh.signature(b)))
    true = _jaccard(set(a.split()), set(b.split()))
    assert abs(est - true) < 0.08
    # Text without spaces is shingled by characters, so two unrelated Chinese texts do not collide.
    zh1, zh2 = "我们今天学习语言模型训练数据清洗" * 3, "分词器预测下一个字的概率这是例子" * 3
    assert np.mean(mh.signature(zh1) == mh.signature(zh2)) < 0.2


def test_near_dedup_drops_near_copies_only(english_docs: list[str]) -> None:
    stage = NearDedup(threshold=0.8, num_perm=128, shingle_size=3)
    base = english_docs[0] + " " + english_docs[1]
    assert stage(base) == base
    assert stage(base.replace("Document 0.", "Document zero.")) is None  # one word changed
    kept = [d for d in english_docs[2:60] if stage(d) is not None]
    assert len(kept) == 58  # generated documents differ enough to all survive
    assert stage.counts.get("lsh_confirmed") == 1


def test_pii_scrubbed_and_numbers_kept() -> None:
    stage = ScrubPii()
    text = ("Mail jane.doe+news@example.co.uk or call (555) 123-4567 / +44 20 7946 0958. "
            "Server 192.168.1.20 and fe80::1ff:fe23:4567:890a. "
            "Python 3.11.2, version 1.2.3.4, 1,000,000 people in 2011 2012, pi 3.14159, "
            "on 2010-07-04 12:15:58, std::vector, ISBN 978-3-16-148410-0.")
    out = stage(text)
    assert out.count("<EMAIL>") == 1 and out.count("<PHONE>") == 2 and out.count("<IP>") == 2
    for kept in ("3.11.2", "1.2.3.4", "1,000,000", "2011 2012", "3.14159", "2010-07-04 12:15:58",
                 "std::vector", "978-3-16-148410-0"):
        assert kept in out
    assert stage.counts == {"emails": 1, "phones": 2, "ips": 2}


def test_shuffle_is_a_seeded_permutation_with_bounded_buffer() -> None:
    docs = [str(i) for i in range(1000)]
    a = list(shuffle(docs, 64, seed=1))
    assert sorted(a, key=int) == docs and a != docs
    assert a == list(shuffle(docs, 64, seed=1)) and a != list(shuffle(docs, 64, seed=2))
    # Bounded: nothing is emitted more than buffer_size places before it was read.
    assert all(int(d) <= i + 64 for i, d in enumerate(a))


@pytest.mark.parametrize("n", [2, 3, 10])
def test_split_gives_val_at_least_one(n: int) -> None:
    out = list(assign_splits([str(i) for i in range(n)], 0.01, seed=0))
    val = [t for s, t in out if s == "val"]
    assert len(out) == n and len(val) >= 1 and len(val) < n


def test_split_fraction_and_determinism() -> None:
    docs = [str(i) for i in range(5000)]
    out = list(assign_splits(docs, 0.1, seed=3))
    n_val = sum(s == "val" for s, _ in out)
    assert 400 < n_val < 600
    assert out == list(assign_splits(docs, 0.1, seed=3))
    assert list(assign_splits(["a"], 0.5, seed=0)) == [("train", "a")]
    assert all(s == "train" for s, _ in assign_splits(docs[:10], 0.0, seed=0))
