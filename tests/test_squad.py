"""Extractive QA: reading SQuAD JSON / JSONL, windows and training positions, answer picking, EM/F1."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from conftest import SHARED_DATA

from lmforge.data.squad import QAExample, best_answers, make_features, read_qa, split_by_article
from lmforge.errors import LmforgeError
from lmforge.evaluate import cmrc_metrics, qa_metrics, squad_metrics

SQUAD_DEV = SHARED_DATA / "qa" / "squad-v1.1" / "dev-v1.1.json"
WORDS = ("river bank money stone north city green valley council bridge market winter harbor tower "
         "garden mountain school station forest castle island museum village").split()
HANZI = "北京上海长江黄河大学图书馆城市历史文化经济发展人民政府山水"


def squad_json(articles: dict[str, list[tuple[str, list[tuple[str, str, str]]]]]) -> dict:
    """{title: [(context, [(id, question, answer)])]} -> SQuAD JSON, answers found in their context."""
    return {"version": "1.1", "data": [
        {"title": title, "paragraphs": [
            {"context": ctx, "qas": [{"id": qid, "question": q, "answers": [{"text": a, "answer_start": ctx.index(a)}]}
                                     for qid, q, a in qas]} for ctx, qas in paras]}
        for title, paras in articles.items()]}


def test_squad_metrics_as_the_official_script():
    # (prediction, golds, EM, F1), worked out by hand from the v1.1 normalization
    cases = [
        ("the Denver Broncos", ["Denver Broncos"], 1, 1.0),  # articles go
        ("Broncos!", ["broncos"], 1, 1.0),  # punctuation and case go
        ("U.S.", ["US"], 1, 1.0),  # punctuation inside a word goes too
        ("theater", ["the theater"], 1, 1.0),  # "the" only as a whole word
        ("Denver", ["Carolina Panthers", "Denver Broncos"], 0, 2 / 3),  # p 1, r 1/2; best gold
        ("cat in the hat", ["the big cat"], 0, 0.4),  # cat in hat / big cat: 1 common, p 1/3, r 1/2
        ("x x y", ["x y y"], 0, 2 / 3),  # Counter overlap: one x, one y
        ("", ["the"], 1, 0.0),  # both normalize to "": EM 1, but v1.1 F1 of no common token is 0
        ("Paris", ["London"], 0, 0.0),
    ]
    for pred, golds, em, f1 in cases:
        m = squad_metrics([pred], [golds])
        assert m["exact_match"] == 100 * em and m["f1"] == pytest.approx(100 * f1), pred
    m = squad_metrics([c[0] for c in cases], [c[1] for c in cases])
    assert m["exact_match"] == pytest.approx(100 * 5 / 9)
    assert m["f1"] == pytest.approx(100 * (4 + 2 / 3 + 0.4 + 2 / 3) / 9)
    with pytest.raises(LmforgeError, match="2 predictions for 1 questions"):
        squad_metrics(["a", "b"], [["a"]])


def test_cmrc_metrics_characters_and_longest_common_substring():
    cases = [
        ("北京市", ["北京"], 0, 0.8),  # lcs 2: p 2/3, r 1
        ("《红楼梦》", ["红楼梦"], 1, 1.0),  # Chinese punctuation goes
        ("1990年", ["1990年代"], 0, 0.8),  # digits run as one token: [1990, 年] in [1990, 年, 代]
        ("甲乙丙丁", ["甲丙丁"], 0, 4 / 7),  # substring 丙丁 (2), not subsequence 甲丙丁 (3): p 1/2, r 2/3
        ("GDP增长", ["gdp增长率"], 0, 6 / 7),  # lower case; p 1, r 3/4
        ("上海", ["北京", "上海。"], 1, 1.0),  # best gold
    ]
    for pred, golds, em, f1 in cases:
        m = cmrc_metrics([pred], [golds])
        assert m["exact_match"] == 100 * em and m["f1"] == pytest.approx(100 * f1), pred
    zh = qa_metrics(["北京市"], [["北京"]])
    assert zh["metric_style"] == "cmrc2018" and zh["f1"] == pytest.approx(80)
    en = qa_metrics(["Denver"], [["Denver Broncos"]])
    assert en["metric_style"] == "squad-v1.1" and en["f1"] == pytest.approx(100 * 2 / 3)
    assert qa_metrics(["北京市"], [["北京"]], language="en")["metric_style"] == "squad-v1.1"


def test_read_squad_json_and_jsonl_in_both_answer_styles(tmp_path):
    f = tmp_path / "dev.json"
    f.write_text(json.dumps(squad_json({
        "Denver": [("The Denver Broncos won Super Bowl 50.", [("q1", "Who won?", "Denver Broncos"),
                                                              ("q2", "Which Super Bowl?", "Super Bowl 50")])],
        "Paris": [("Paris is the capital of France.", [("q3", "What is the capital?", "Paris")])]})))
    d = read_qa(f)
    assert [e.id for e in d.examples] == ["q1", "q2", "q3"] and d.examples[0].starts == [4]
    assert d.examples[2].title == "Paris" and d.examples[0].answers == ["Denver Broncos"]
    assert d.describe() == f"{f}: 3 questions, 2 contexts, 2 articles (SQuAD v1.1 JSON)"
    ctx = "长江是中国最长的河流。"
    lines = [json.dumps({"question": "最长的河流?", "context": ctx, "answers": {"text": ["长江", "长江"],
                                                                       "answer_start": [0, 0]}}, ensure_ascii=False),
             "",
             json.dumps({"id": "x7", "title": "T", "question": "what?", "context": "a b c",
                         "answers": [{"text": "b", "answer_start": 2}]})]
    f = tmp_path / "dev.jsonl"
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    d = read_qa(f)
    assert [(e.id, e.answers, e.starts, e.title) for e in d.examples] == [
        ("1", ["长江", "长江"], [0, 0], ""), ("x7", ["b"], [2], "T")]
    assert d.describe().endswith("2 questions, 2 contexts, 1 articles (JSONL)")
    hf = tmp_path / "hf.json"  # datasets' to_json writes JSON lines under .json
    hf.write_text(lines[2] + "\n")
    assert read_qa(hf).format == "JSONL" and read_qa(hf).examples[0].id == "x7"


def test_reading_refuses_v2_mismatches_and_empties(tmp_path):
    data = squad_json({"A": [("Some context here.", [("q1", "What?", "context")])]})
    qa = data["data"][0]["paragraphs"][0]["qas"][0]
    f = tmp_path / "v2.json"

    def refused(match: str, **kw):
        f.write_text(json.dumps(data))
        with pytest.raises(LmforgeError, match=match):
            read_qa(f, **kw)

    qa.update(is_impossible=True, answers=[])
    refused(r"v2.json: question 'q1' is unanswerable.*SQuAD v1.1.*drop the unanswerable")
    del qa["is_impossible"]
    refused("question 'q1' is unanswerable")
    f.write_text(json.dumps(data))
    assert read_qa(f, need_answers=False).examples[0].answers == []
    qa["answers"] = [{"text": "context", "answer_start": 3}]
    refused(r"question 'q1': answer 'context' does not match the context at answer_start 3 \('e conte'\)")
    qa["answers"] = [{"text": "context", "answer_start": 5}]
    data["data"][0]["paragraphs"][0]["context"] = "  "
    refused("question 'q1': empty context")
    j = tmp_path / "a.jsonl"
    j.write_text("\n" + json.dumps({"id": "z", "question": "q?", "context": "abc",
                                    "answers": {"text": ["b"], "answer_start": [0]}}) + "\n")
    with pytest.raises(LmforgeError, match=r"a.jsonl:2: question 'z': answer 'b' does not match .* \('a'\)"):
        read_qa(j)
    j.write_text(json.dumps({"question": "", "context": "abc", "answers": []}) + "\n")
    with pytest.raises(LmforgeError, match=r"a.jsonl:1: question '1': empty question"):
        read_qa(j)
    j.write_text("\n\n")
    with pytest.raises(LmforgeError, match="a.jsonl is empty"):
        read_qa(j)


def test_split_by_article_is_disjoint_whole_and_seeded():
    examples = [QAExample(f"{t}-{i}", "q", f"context {t}", ["context"], [0], title=f"article {t}")
                for t in range(20) for i in range(t % 4 + 1)]
    train, test = split_by_article(examples, [0.75, 0.25], seed=1)
    assert len(train) + len(test) == len(examples)
    assert not {e.title for e in train} & {e.title for e in test}
    assert abs(len(test) - len(examples) / 4) <= 4
    again = split_by_article(examples, [0.75, 0.25], seed=1)
    assert [e.id for e in again[1]] == [e.id for e in test]
    other = split_by_article(examples, [0.75, 0.25], seed=2)
    assert [e.id for e in other[1]] != [e.id for e in test]
    with pytest.raises(LmforgeError, match="cannot be split"):
        split_by_article(examples[:1], [0.5, 0.5], seed=0)


# ----------------------------------------------------------------------------------------------------
# Features and answers


def make_examples(n: int, seed: int, chinese: bool = False) -> list[QAExample]:
    """Contexts of 20-120 words (CJK characters) with punctuation and odd spacing, answers of 1-3 words."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if chinese:
            words = [rng.choice(HANZI) for _ in range(rng.randint(20, 120))]
            k = rng.randint(0, len(words) - 3)
            context, answer, start = "".join(words) + "。", "".join(words[k:k + 3]), k
        else:
            words = [rng.choice(WORDS) + rng.choice(["", "", "", ",", "."]) for _ in range(rng.randint(20, 120))]
            k = rng.randint(1, len(words) - 3)
            words[k:k + 3] = [w.strip(",.") for w in words[k:k + 3]]
            seps = [rng.choice([" ", " ", " ", "  ", "\n"]) for _ in words]
            context = "".join(w + s for w, s in zip(words, seps)).strip()
            start = len("".join(w + s for w, s in zip(words[:k], seps[:k])))
            answer = "".join(w + s for w, s in zip(words[k:k + 3], seps[k:k + 3])).strip()
        question = f"in which {rng.choice(WORDS)} is the {rng.choice(WORDS)} found?"
        out.append(QAExample(str(i), question, context, [answer], [start]))
    return out


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    from lmforge.corpus.store import write_file
    from lmforge.tokenizer import TokenizerConfig, train_tokenizer

    root = tmp_path_factory.mktemp("qa_tok")
    (root / "corpus").mkdir()
    texts = [e.context + " " + e.question for e in make_examples(60, 9) + make_examples(30, 9, chinese=True)]
    write_file(root / "corpus" / "train-00000.jsonl.zst", texts)
    return {kind: train_tokenizer(root / "corpus", root / kind, TokenizerConfig(kind=kind, vocab_size=400,
                                                                             min_frequency=1), progress=False)
            for kind in ("bpe", "wordpiece")}


@pytest.mark.parametrize("kind,input_format", [("bpe", "plain"), ("bpe", "cls_sep_sep"), ("wordpiece", "cls_sep")])
def test_training_positions_round_trip_and_windows_overlap(tokenizers, kind, input_format):
    tok = tokenizers[kind]
    examples = make_examples(40, 1) + (make_examples(20, 2, chinese=True) if kind == "wordpiece" else [])
    stride, max_length = 8, 48
    feats = make_features(tok, examples, max_length, stride, input_format, max_query_length=6)
    assert feats.truncated_questions > 0 and len(feats) > len(examples)  # long contexts take several windows
    held = np.zeros(len(examples), dtype=bool)
    for f in range(len(feats)):
        e, ids, off, seg = examples[feats.example[f]], feats.ids[f], feats.offsets[f], feats.segment_starts[f]
        assert len(ids) <= max_length and ids[seg - 1] == tok.sep_id and (off[:seg] == -1).all()
        if input_format != "plain":
            assert ids[0] == tok.cls_id and ids[-1] == tok.sep_id and (off[-1] == -1).all()
        if input_format == "cls_sep_sep":
            assert ids[seg - 2] == tok.sep_id
        s, t = feats.start_positions[f], feats.end_positions[f]
        if s:
            assert e.context[off[s, 0]:off[t, 1]] == e.answers[0]
            held[feats.example[f]] = True
        else:
            assert t == 0
    assert held.all()  # answers of 3 words fit in every window overlap
    for i, e in enumerate(examples):  # windows cover the context, overlapping by `stride` tokens
        windows = [feats.offsets[f][feats.offsets[f][:, 0] >= 0] for f in np.flatnonzero(feats.example == i)]
        whole = windows[0]
        for prev, nxt in zip(windows, windows[1:]):
            assert (nxt[:stride] == prev[-stride:]).all()
            whole = np.concatenate([whole, nxt[stride:]])
        ids, offsets = tok.encode_offsets([e.context])[0]
        assert len(whole) == len(ids) and (whole[:, 1] == np.asarray(offsets)[:, 1]).all()


def test_max_length_too_short_names_the_keys(tokenizers):
    with pytest.raises(LmforgeError, match=r"finetune.max_length=40 with finetune.max_query_length=32 leaves 5"):
        make_features(tokenizers["bpe"], make_examples(1, 0), 40, 2, "cls_sep", max_query_length=32)
    with pytest.raises(LmforgeError, match=r"finetune.doc_stride=30"):
        make_features(tokenizers["bpe"], make_examples(1, 0), 64, 30, "cls_sep", max_query_length=32)


def test_best_answers_finds_the_span_planted_in_the_second_window(tokenizers):
    tok = tokenizers["wordpiece"]
    words = [WORDS[i % len(WORDS)] for i in range(100)]
    context = " ".join(words)
    lo = len(" ".join(words[:70])) + 1  # the span planted: words 70-72
    hi = lo + len(" ".join(words[70:73]))
    e = QAExample("0", "what is there?", context, [], [])
    feats = make_features(tok, [e], 64, 16, "cls_sep", max_query_length=16, with_positions=False)
    assert len(feats) >= 3 and len(feats.start_positions) == 0
    f = next(f for f in range(len(feats)) if lo in feats.offsets[f][:, 0] and hi in feats.offsets[f][:, 1])
    assert f >= 1
    off = feats.offsets[f]
    s, t = int(np.flatnonzero(off[:, 0] == lo)[0]), int(np.flatnonzero(off[:, 1] == hi)[0])
    start = [np.zeros(len(ids)) for ids in feats.ids]
    end = [np.zeros(len(ids)) for ids in feats.ids]
    start[0][0] = end[0][0] = 50.0  # [CLS]: not a context token, never an answer
    start[f][s], end[f][t] = 9.0, 9.0
    assert off[t + 1, 0] >= 0
    start[f][t + 1], end[f][s] = 12.0, 3.0  # a likelier start after the likeliest end: only poor spans
    (best,) = best_answers([e], feats, start, end, n_best_size=5, max_answer_length=10)
    assert best["text"] == " ".join(words[70:73]) and context[best["start"]:best["end"]] == best["text"]
    assert 0 < best["score"] < 1 and len(best["n_best"]) == 5
    scores = [c["score"] for c in best["n_best"]]
    assert scores == sorted(scores, reverse=True) and len({(c["start"], c["end"]) for c in best["n_best"]}) == 5
    (short,) = best_answers([e], feats, start, end, max_answer_length=2)
    assert short["text"] != best["text"]


@pytest.mark.skipif(not SQUAD_DEV.is_file(), reason="no SQuAD v1.1 dev set in ../shared/data")
def test_official_squad_dev_set_reads():
    d = read_qa(SQUAD_DEV)
    assert len(d) == 10570 and d.describe().endswith("10570 questions, 2067 contexts, 48 articles "
                                                     "(SQuAD v1.1 JSON)")
    train, test = split_by_article(d, [0.8, 0.2], seed=0)
    assert not {e.title for e in train} & {e.title for e in test} and len(train) + len(test) == len(d)
