"""Hugging Face interop of ner and qa runs: *ForTokenClassification and *ForQuestionAnswering with logit
parity, the token-classification and question-answering pipelines giving lmforge's entities and answers,
and import of such folders as runs that `ner`, `qa` and export take."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_interop import BERT, GPT2, perturb, toks  # noqa: F401 - toks is a fixture

from lmforge.interop import export_hf, import_hf
from lmforge.runs import save_run
from lmforge.tasks import load_run
from lmforge.tasks.ner import TAG_MAP, NerArgs, NerConfig, ner
from lmforge.tasks.qa import QAArgs, QAConfig, qa
from lmforge.tokenizer import load_tokenizer

transformers = pytest.importorskip("transformers")
TAGS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
TEXTS = ["Alice Smith flew to New York yesterday.", "我们今天在北京学习语言模型", "Paris, said Bob"]
CONTEXT = "The tiny model was trained in Paris in 2024 by students from Lyon."
QUESTIONS = ["Where was the model trained?", "Who trained it?", "When was it trained?"]


def make_run(out, cfg, tok_dir, task: str):
    from lmforge.models.heads import SpanScorer, TokenClassifier

    tok = load_tokenizer(tok_dir)
    cfg = dataclasses.replace(cfg, vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    if task == "ner":
        model = perturb(TokenClassifier(cfg, len(TAGS)))
        run_cfg, files = NerConfig(task="ner", model=cfg, finetune=NerArgs()), {TAG_MAP: {"labels": TAGS}}
    else:
        model, files = perturb(SpanScorer(cfg)), {}
        run_cfg = QAConfig(task="qa", model=cfg, finetune=QAArgs(max_query_length=16))
    save_run(out, model, tok, run_cfg, step=4, files=files)
    return model


@pytest.mark.parametrize("cfg,arch", [(GPT2, "GPT2ForTokenClassification"), (BERT, "BertForTokenClassification")])
def test_ner_export_matches_logits_and_pipeline(tmp_path, toks, cfg, arch):  # noqa: F811
    model = make_run(tmp_path / "run", cfg, toks["wordpiece" if cfg.kind == "bert" else "bpe"], "ner")
    export_hf(tmp_path / "run", tmp_path / "hf")
    hf_model = transformers.AutoModelForTokenClassification.from_pretrained(tmp_path / "hf").eval()
    assert type(hf_model).__name__ == arch and hf_model.config.id2label == dict(enumerate(TAGS))
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    batch = hf_tok(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        got = hf_model(**batch).logits
        want = model.eval()(batch["input_ids"], batch["attention_mask"])
    mask = batch["attention_mask"].bool()
    assert (got - want)[mask].abs().max().item() < 1e-4
    pipe = transformers.pipeline("token-classification", model=str(tmp_path / "hf"), aggregation_strategy="simple",
                                 device="cpu")
    ours = ner(load_run(tmp_path / "run"), TEXTS, aggregation="simple")
    for text, theirs, mine in zip(TEXTS, pipe(TEXTS), ours):
        # a byte-level token's span starts at the space before it: the pipeline keeps it, lmforge leaves it out
        starts = [e["start"] + len(text[e["start"]:e["end"]]) - len(text[e["start"]:e["end"]].lstrip())
                  for e in theirs]
        assert [(e["entity_group"], s, e["end"]) for e, s in zip(theirs, starts)] == \
               [(e["entity"], e["start"], e["end"]) for e in mine], text
        assert [round(float(e["score"]), 4) for e in theirs] == [round(e["score"], 4) for e in mine]
    assert any(ours), "the perturbed model should find some entity"


@pytest.mark.parametrize("cfg,arch", [(GPT2, "GPT2ForQuestionAnswering"), (BERT, "BertForQuestionAnswering")])
def test_qa_export_matches_logits_and_pipeline(tmp_path, toks, cfg, arch):  # noqa: F811
    model = make_run(tmp_path / "run", cfg, toks["wordpiece" if cfg.kind == "bert" else "bpe"], "qa")
    export_hf(tmp_path / "run", tmp_path / "hf")
    hf_model = transformers.AutoModelForQuestionAnswering.from_pretrained(tmp_path / "hf").eval()
    assert type(hf_model).__name__ == arch
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    batch = hf_tok(QUESTIONS, [CONTEXT] * 3, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = hf_model(**batch)
        start, end = model.eval()(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    mask = batch["attention_mask"].bool()
    assert (out.start_logits - start)[mask].abs().max().item() < 1e-4
    assert (out.end_logits - end)[mask].abs().max().item() < 1e-4
    if cfg.kind == "bert":
        # transformers 5 removed pipeline("question-answering"): its rule, written out over HF's own logits and
        # offsets (softmax over the context tokens and [CLS], which it keeps unmasked; the best start x end among
        # context tokens with end >= start, at most 30 tokens)
        ours = qa(load_run(tmp_path / "run"), QUESTIONS, [CONTEXT] * 3)
        enc = hf_tok(QUESTIONS, [CONTEXT] * 3, return_offsets_mapping=True)
        for i, mine in enumerate(ours):
            context = [t for t, sid in enumerate(enc.sequence_ids(i)) if sid == 1]
            n = len(enc["input_ids"][i])
            ps, pe = (torch.softmax(x[i, :n][[0] + context], -1)[1:] for x in (out.start_logits, out.end_logits))
            score, a, b = max((float(ps[x] * pe[y]), x, y) for x in range(len(context))
                              for y in range(x, min(x + 30, len(context))))
            offsets = enc["offset_mapping"][i]
            start, end = offsets[context[a]][0], offsets[context[b]][1]
            assert (start, end, CONTEXT[start:end]) == (mine["start"], mine["end"], mine["answer"]), (score, mine)
            assert abs(score - mine["score"]) < 1e-4


@pytest.mark.parametrize("task", ["ner", "qa"])
def test_export_import_round_trip(tmp_path, toks, task):  # noqa: F811
    model = make_run(tmp_path / "run", BERT, toks["wordpiece"], task)
    export_hf(tmp_path / "run", tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "back", quiet=True)
    back = load_run(tmp_path / "back")
    assert back.task.name == task
    mine, skip = model.state_dict(), tuple(f"backbone.{p}" for p in model.unused_prefixes())
    kept = [name for name in mine if not name.startswith(skip)]
    assert kept and all(torch.equal(back.model.state_dict()[name], mine[name]) for name in kept)
    if task == "ner":
        assert back.files[TAG_MAP]["labels"] == TAGS
        assert ner(back, TEXTS, "simple") == ner(load_run(tmp_path / "run"), TEXTS, "simple")
