"""Hugging Face export of fine-tuned classifiers: BertForSequenceClassification and
GPT2ForSequenceClassification with the run's labels, logit parity, the text-classification pipeline."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from test_interop import BERT, GPT2, perturb, toks  # noqa: F401 - toks is a fixture

from lmforge.errors import LmforgeError
from lmforge.interop import export_hf, save_run
from lmforge.tokenizer import load_tokenizer

transformers = pytest.importorskip("transformers")
LABELS = ["negative", "neutral", "positive"]
TEXTS = ["the model reads text", "我们今天学习语言模型", "small steps add up to large gains"]


def make_classifier_run(out, cfg, tok_dir, pooling="auto"):
    from lmforge.config import FinetuneConfig, FinetuneRunConfig, save_config
    from lmforge.finetune import label_map_json
    from lmforge.models.classifier import SequenceClassifier

    tok = load_tokenizer(tok_dir)
    cfg = dataclasses.replace(cfg, vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    model = perturb(SequenceClassifier(cfg, len(LABELS), pooling=pooling))
    save_run(out, model, tok, step=4)
    run_cfg = FinetuneRunConfig(model=cfg, finetune=FinetuneConfig(pooling=pooling))
    save_config(run_cfg, out / "config.toml")
    save_config(run_cfg, out / "checkpoints" / "step-000004" / "config.toml")
    (out / "label_map.json").write_text(json.dumps(label_map_json(LABELS, {})))
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
