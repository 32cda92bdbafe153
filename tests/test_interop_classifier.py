"""Hugging Face interop of fine-tuned classifiers: BertForSequenceClassification and
GPT2ForSequenceClassification with the run's labels, logit parity, the text-classification pipeline;
import of such folders as fine-tuned runs that load_run, `classify` and `eval` take as is."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from test_interop import BERT, GPT2, hf_tokenizer, perturb, toks  # noqa: F401 - toks is a fixture

from lmforge.errors import LmforgeError
from lmforge.interop import export_hf, import_hf
from lmforge.runs import save_run
from lmforge.tasks import load_run
from lmforge.tasks.classify import classify, labels_of
from lmforge.tokenizer import load_tokenizer

transformers = pytest.importorskip("transformers")
LABELS = ["negative", "neutral", "positive"]
TEXTS = ["the model reads text", "我们今天学习语言模型", "small steps add up to large gains"]


def make_classifier_run(out, cfg, tok_dir, pooling="auto"):
    from lmforge.models.heads import SequenceClassifier
    from lmforge.tasks.classify import LABEL_MAP, ClassifyArgs, ClassifyConfig, label_map_json

    tok = load_tokenizer(tok_dir)
    cfg = dataclasses.replace(cfg, vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    model = perturb(SequenceClassifier(cfg, len(LABELS), pooling=pooling))
    run_cfg = ClassifyConfig(task="classify", model=cfg, finetune=ClassifyArgs(pooling=pooling))
    save_run(out, model, tok, run_cfg, step=4, files={LABEL_MAP: label_map_json(LABELS, {})})
    return model, tok


@pytest.mark.parametrize("cfg,arch", [(GPT2, "GPT2ForSequenceClassification"),
                                      (BERT, "BertForSequenceClassification")])
def test_classifier_export_matches_logits_labels_and_pipeline(tmp_path, toks, cfg, arch):  # noqa: F811
    bert = cfg.kind == "bert"
    model, tok = make_classifier_run(tmp_path / "run", cfg, toks["wordpiece" if bert else "bpe"])
    export_hf(tmp_path / "run", tmp_path / "hf")
    hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    assert type(hf_model).__name__ == arch and hf_model.config.id2label == dict(enumerate(LABELS))
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    batch = hf_tok(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        got = hf_model(**batch).logits
        want = model(batch["input_ids"], batch["attention_mask"])
    assert (got - want).abs().max().item() < 1e-4
    classify = transformers.pipeline("text-classification", model=str(tmp_path / "hf"), device="cpu")
    best = [LABELS[i] for i in want.argmax(-1).tolist()]
    assert [r["label"] for r in classify(TEXTS)] == best


def test_classifier_export_refuses_mean_pooling(tmp_path, toks):  # noqa: F811
    make_classifier_run(tmp_path / "run", GPT2, toks["bpe"], pooling="mean")
    with pytest.raises(LmforgeError, match='finetune.pooling = "mean" has no Hugging Face equivalent'):
        export_hf(tmp_path / "run", tmp_path / "hf")


# ----------------------------------------------------------------------------------------------------
# Import: tiny *ForSequenceClassification folders saved by transformers itself


def tiny_hf_classifier(kind: str, vocab: int, labels=LABELS, **extra):
    torch.manual_seed(1)
    names = {"id2label": dict(enumerate(labels)), "label2id": {lab: i for i, lab in enumerate(labels)}}
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                      **names, **extra)
        return perturb(transformers.GPT2ForSequenceClassification(cfg))
    cfg = transformers.BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=48, max_position_embeddings=64, **names, **extra)
    return perturb(transformers.BertForSequenceClassification(cfg))


def save_hf_classifier(folder, toks, kind: str, labels=LABELS, **extra):  # noqa: F811
    bert = kind == "bert"
    hf_tok = hf_tokenizer(toks["wordpiece" if bert else "bpe"], bert)
    hf_model = tiny_hf_classifier(kind, len(hf_tok) + 3, labels, **extra)
    hf_model.save_pretrained(folder)
    hf_tok.save_pretrained(folder)
    return hf_model


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_import_classifier_matches_hf_logits_and_labels_through_the_cli(tmp_path, toks, kind, cli):  # noqa: F811
    from lmforge.data.labeled import encode_examples

    hf_model = save_hf_classifier(tmp_path / "hf", toks, kind)
    code, out, err = cli("import-hf", tmp_path / "hf", "--out", tmp_path / "run")
    assert code == 0 and "3 labels" in out, err
    clf = load_run(tmp_path / "run")
    assert labels_of(clf) == LABELS and clf.config.model.kind == ("bert" if kind == "bert" else "gpt")
    assert clf.model.pooling == ("cls" if kind == "bert" else "last")
    enc = encode_examples(clf.tokenizer, TEXTS, None, clf.config.model.input_format, 64)
    with torch.no_grad():
        want = torch.cat([hf_model(torch.as_tensor(ids)[None]).logits for ids in enc.ids])  # (N, L)
        got = torch.cat([clf.model(torch.as_tensor(ids)[None]) for ids in enc.ids])  # (N, L)
    assert (got - want).abs().max().item() < 1e-4
    # batched with right padding, as classify and eval run it
    preds = classify(clf, TEXTS)
    probs = torch.tensor([[p["probs"][lab] for lab in LABELS] for p in preds])
    assert (probs - want.softmax(-1)).abs().max().item() < 1e-4
    best = [LABELS[i] for i in want.argmax(-1).tolist()]
    assert [p["label"] for p in preds] == best
    code, out, err = cli("classify", tmp_path / "run", *TEXTS)
    assert code == 0 and [json.loads(line)["label"] for line in out.splitlines()] == best, err
    data = tmp_path / "dev.tsv"
    gold = [best[0], best[1], LABELS[(LABELS.index(best[2]) + 1) % 3]]  # two right, one wrong
    data.write_text("sentence\tlabel\n" + "".join(f"{t}\t{g}\n" for t, g in zip(TEXTS, gold)))
    code, out, err = cli("eval", tmp_path / "run", "--data", data)
    assert code == 0 and json.JSONDecoder().raw_decode(out)[0]["accuracy"] == pytest.approx(2 / 3), err


@pytest.mark.parametrize("cfg", [GPT2, BERT], ids=["gpt2", "bert"])
def test_classifier_round_trip_gives_identical_weights(tmp_path, toks, cfg):  # noqa: F811
    bert = cfg.kind == "bert"
    model, _ = make_classifier_run(tmp_path / "run", cfg, toks["wordpiece" if bert else "bpe"])
    export_hf(tmp_path / "run", tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "back")
    back = load_run(tmp_path / "back")
    assert labels_of(back) == LABELS and back.config.model == model.config
    assert back.model.pooling == model.pooling and back.model.drop.p == model.drop.p
    lm_head = tuple(f"backbone.{p}" for p in model.backbone.lm_head_prefixes)  # HF classifiers have none
    ours, theirs = model.state_dict(), back.model.state_dict()
    kept = [k for k in ours if not k.startswith(lm_head) or (cfg.tie_embeddings and k.endswith(
        ("lm_head.weight", "decoder.weight")))]
    assert len(kept) > 10 and set(ours) == set(theirs)
    for k in kept:
        assert torch.equal(ours[k], theirs[k]), k


def test_import_classifier_refuses_what_lmforge_cannot_classify(tmp_path, toks):  # noqa: F811
    save_hf_classifier(tmp_path / "hf", toks, "bert")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    for change, match in (({"problem_type": "multi_label_classification"}, "problem_type"),
                          ({"id2label": {"0": "a", "1": "b"}}, r"has ids \[0, 1\] but the classification head has 3"),
                          ({"id2label": {"0": "a", "1": "a", "2": "b"}}, "repeats a label name")):
        (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(LmforgeError, match=match):
            import_hf(tmp_path / "hf", tmp_path / "run")
    save_hf_classifier(tmp_path / "reg", toks, "bert", labels=["score"])
    with pytest.raises(LmforgeError, match="at least 2 labels"):
        import_hf(tmp_path / "reg", tmp_path / "run")
    assert not (tmp_path / "run").exists()
