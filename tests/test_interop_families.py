"""Checkpoints as users find them: every family and layout, saved by `transformers` itself, imported,
compared (logits, or hidden states for a headless encoder, within 1e-4; tokens equal AutoTokenizer's on
English, Chinese and mixed text), exported back and loaded by `transformers` as is."""

from __future__ import annotations

import json

import pytest
import torch
from test_interop import hf_tokenizer, perturb, toks  # noqa: F401 - toks is a fixture

from lmforge.errors import LmforgeError
from lmforge.interop import export_hf, import_hf
from lmforge.tasks import load_run

transformers = pytest.importorskip("transformers")
TEXTS = ["The model reads text and learns to predict the next token.", "我们今天学习语言模型训练数据。",
         "Mixed 混合 text: 42 tokens, then 7 more!"]
ENC = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)
DEC = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
           max_position_embeddings=64)


def roberta_tokenizer(tok_dir):
    """A BPE tokenizer in RoBERTa's clothes: <s> ... </s>, pad id 1 (its position offset comes from it)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    from lmforge.tokenizer import load_tokenizer

    ours = load_tokenizer(tok_dir)
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    for piece, _ in sorted(ours.backend.get_vocab().items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
        unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")


def bert_tokenizer(tok_dir):
    """Our WordPiece with BERT's template ([CLS] a [SEP]), as a real BERT tokenizer folder has it."""
    from tokenizers.processors import BertProcessing

    hf_tok = hf_tokenizer(tok_dir, bert=True)
    backend = hf_tok.backend_tokenizer
    backend.post_processor = BertProcessing(("[SEP]", hf_tok.sep_token_id), ("[CLS]", hf_tok.cls_token_id))
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]",
        mask_token="[MASK]")


def build(name: str, vocab: int):
    """(HF model, which tokenizer, bert-style input) for one family and class, random and perturbed."""
    torch.manual_seed(1)
    t = transformers
    if name in ("BertModel", "BertForPreTraining", "BertForMaskedLM"):
        return perturb(getattr(t, name)(t.BertConfig(vocab_size=vocab, max_position_embeddings=64, **ENC))), "wp"
    if name == "RobertaForMaskedLM":
        cfg = t.RobertaConfig(vocab_size=vocab, max_position_embeddings=66, pad_token_id=1, type_vocab_size=1, **ENC)
        return perturb(t.RobertaForMaskedLM(cfg)), "roberta"
    if name == "XLMRobertaModel":
        cfg = t.XLMRobertaConfig(vocab_size=vocab, max_position_embeddings=66, pad_token_id=1, type_vocab_size=1,
                                 **ENC)
        return perturb(t.XLMRobertaModel(cfg, add_pooling_layer=False)), "roberta"
    if name == "DistilBertForMaskedLM":
        cfg = t.DistilBertConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=4, hidden_dim=48,
                                 max_position_embeddings=64)
        return perturb(t.DistilBertForMaskedLM(cfg)), "wp"
    if name == "GPT2Model":
        return perturb(t.GPT2Model(t.GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2,
                                                n_head=4))), "bpe"
    if name == "LlamaForCausalLM(GQA)":
        cfg = t.LlamaConfig(vocab_size=vocab, num_key_value_heads=2, tie_word_embeddings=False, **DEC)
        return perturb(t.LlamaForCausalLM(cfg)), "bpe"
    if name == "Qwen2ForCausalLM":
        cfg = t.Qwen2Config(vocab_size=vocab, num_key_value_heads=2, tie_word_embeddings=True, **DEC)
        return perturb(t.Qwen2ForCausalLM(cfg)), "bpe"
    raise ValueError(name)


FAMILIES = ["BertModel", "BertForPreTraining", "BertForMaskedLM", "RobertaForMaskedLM", "XLMRobertaModel",
            "DistilBertForMaskedLM", "GPT2Model", "LlamaForCausalLM(GQA)", "Qwen2ForCausalLM"]


def _outputs(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=ids, attention_mask=mask)
    if hasattr(out, "prediction_logits"):
        return out.prediction_logits
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("name", FAMILIES)
def test_family_imports_with_parity_and_exports_back(tmp_path, toks, name):  # noqa: F811
    probe, style = build(name, 10)
    hf_tok = {"roberta": roberta_tokenizer, "wp": bert_tokenizer}.get(style, lambda d: hf_tokenizer(d, False))(
        toks["wordpiece" if style == "wp" else "bpe"])
    if hf_tok.pad_token is None:
        hf_tok.pad_token = hf_tok.eos_token
    model, _ = build(name, len(hf_tok))
    hidden_only = name in ("BertModel", "XLMRobertaModel", "GPT2Model")  # bare models: hidden states out
    headless = hidden_only and name != "GPT2Model"  # GPT-2's head is its (tied) embedding: nothing is new
    model.save_pretrained(tmp_path / "hf")
    hf_tok.save_pretrained(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert bool(run.untrained_lm_head()) == headless, run.untrained
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    encoder = style != "bpe"
    for text in TEXTS:
        ids = run.tokenizer.encode(text)
        assert auto(text, add_special_tokens=False)["input_ids"] == ids, text
        if encoder:
            ids = [run.tokenizer.cls_id, *ids, run.tokenizer.sep_id]
            assert auto(text)["input_ids"] == ids
    batch = auto(TEXTS, return_tensors="pt", padding=True, add_special_tokens=encoder)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        want = _outputs(model.eval(), ids, mask)
        ours = run.model.hidden(ids, mask) if hidden_only else (
            run.model(ids, attention_mask=mask) if encoder else run.model(ids))
    real = mask.bool()
    assert (ours[real] - want[real]).abs().max().item() < 1e-4
    export_hf(tmp_path / "run", tmp_path / "back")
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    auto_model = (transformers.AutoModelForMaskedLM if encoder else transformers.AutoModelForCausalLM)
    back = auto_model.from_pretrained(tmp_path / "back").eval()
    assert type(back).__name__ == config["architectures"][0]
    with torch.no_grad():
        logits = back(input_ids=ids, attention_mask=mask).logits
        mine = run.model(ids, attention_mask=mask) if encoder else run.model(ids)
    assert (logits[real] - mine[real]).abs().max().item() < 1e-4


def test_import_and_fine_tune_a_headless_encoder_from_hf_path(tmp_path, toks, cli, capsys, monkeypatch):  # noqa: F811
    """`--from hf:DIR` with no separate import step; fill-mask on the headless encoder says why not."""
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache"))
    hf_tok = bert_tokenizer(toks["wordpiece"])
    model, _ = build("BertModel", len(hf_tok))
    model.save_pretrained(tmp_path / "hf")
    hf_tok.save_pretrained(tmp_path / "hf")
    capsys.readouterr()  # transformers' own progress lines
    code, _, err = cli("fill-mask", f"hf:{tmp_path / 'hf'}", "the [MASK] reads text")
    assert code == 2 and "imported without its language-model head" in err and "\n" not in err.strip(), err
    rows = [("the model reads good text", "pos"), ("the data decays bad text", "neg")] * 10
    data = tmp_path / "train.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in rows))
    code, out, err = cli("finetune", "--from", f"hf:{tmp_path / 'hf'}", "--train", data, "--dev", data, "--out",
                         tmp_path / "ft", "--max_steps", "2", "--quiet")
    assert code == 0 and (tmp_path / "ft" / "eval_results.json").is_file(), err


def test_bad_checkpoints_get_one_line_and_leave_nothing(tmp_path, toks, cli, capsys):  # noqa: F811
    hf_tok = bert_tokenizer(toks["wordpiece"])
    model, _ = build("BertForMaskedLM", len(hf_tok))
    good = tmp_path / "good"
    model.save_pretrained(good)
    hf_tok.save_pretrained(good)
    cases = {}
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "readme.txt").write_text("hello")
    cases["notamodel"] = "has no config.json"
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"model_type": "mamba", "vocab_size": 10}))
    cases["unknown"] = 'model_type = "mamba"'
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    for f in good.iterdir():
        (truncated / f.name).write_bytes(f.read_bytes())
    data = (good / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    cases["truncated"] = "model.safetensors: unreadable weights"
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for f in good.iterdir():
        if f.name != "model.safetensors":
            (pickled / f.name).write_bytes(f.read_bytes())
    torch.save({"weights": model.state_dict(), "hook": print}, pickled / "pytorch_model.bin")
    cases["pickled"] = "pytorch_model.bin: unreadable weights"
    capsys.readouterr()  # transformers' own progress lines
    for name, message in cases.items():
        code, _, err = cli("import-hf", tmp_path / name, "--out", tmp_path / f"run-{name}")
        assert code == 2 and message in err and err.count("\n") == 1, (name, err)
        assert not (tmp_path / f"run-{name}").exists() and not list(tmp_path.glob(f".run-{name}*"))
    with pytest.raises(LmforgeError, match="sliding_window = 16"):
        hf = transformers.Qwen2Config(vocab_size=20, use_sliding_window=True, sliding_window=16, **DEC)
        transformers.Qwen2ForCausalLM(hf).save_pretrained(tmp_path / "window")
        hf_tokenizer(toks["bpe"], bert=False).save_pretrained(tmp_path / "window")
        import_hf(tmp_path / "window", tmp_path / "run-window")


@pytest.mark.parametrize("name", ["RobertaForSequenceClassification", "DistilBertForSequenceClassification"])
def test_encoder_classifiers_import_and_export_with_parity(tmp_path, toks, name):  # noqa: F811
    from lmforge.tasks.classify import classify, labels_of

    t = transformers
    hf_tok = roberta_tokenizer(toks["bpe"]) if name.startswith("Roberta") else bert_tokenizer(toks["wordpiece"])
    labels = {"0": "neg", "1": "neutral", "2": "pos"}
    torch.manual_seed(1)
    if name.startswith("Roberta"):
        cfg = t.RobertaConfig(vocab_size=len(hf_tok), max_position_embeddings=66, pad_token_id=1, type_vocab_size=1,
                              num_labels=3, id2label=labels, **ENC)
    else:
        cfg = t.DistilBertConfig(vocab_size=len(hf_tok), dim=32, n_layers=2, n_heads=4, hidden_dim=48,
                                 max_position_embeddings=64, num_labels=3, id2label=labels)
    model = perturb(getattr(t, name)(cfg)).eval()
    model.save_pretrained(tmp_path / "hf")
    hf_tok.save_pretrained(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert labels_of(run) == ["neg", "neutral", "pos"]
    batch = hf_tok(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        want = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    probs = torch.tensor([[p["probs"][lab] for lab in labels_of(run)] for p in classify(run, TEXTS)])
    assert (probs - want.softmax(-1)).abs().max().item() < 1e-4
    export_hf(tmp_path / "run", tmp_path / "back")
    back = t.AutoModelForSequenceClassification.from_pretrained(tmp_path / "back").eval()
    assert type(back).__name__ == name
    with torch.no_grad():
        again = back(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert (again - want).abs().max().item() < 1e-4


def test_sharded_safetensors_and_slow_tokenizer_files(tmp_path, toks):  # noqa: F811
    """An index of safetensors shards, and a tokenizer folder with only vocab.txt (cased, per its config)."""
    from lmforge.tokenizer import load_tokenizer

    vocab = [p for p, _ in sorted(load_tokenizer(toks["wordpiece"]).backend.get_vocab().items(), key=lambda kv: kv[1])]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    slow = transformers.BertTokenizer(str(tmp_path / "vocab.txt"), do_lower_case=False)
    model, _ = build("BertForMaskedLM", len(vocab))
    model.save_pretrained(tmp_path / "hf", max_shard_size="40KB")
    slow.save_pretrained(tmp_path / "hf")
    for extra in ("tokenizer.json",):
        (tmp_path / "hf" / extra).unlink(missing_ok=True)
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    import_hf(tmp_path / "hf", tmp_path / "run")
    run = load_run(tmp_path / "run")
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in [*TEXTS, "Upper Case Stays"]:
        assert auto(text)["input_ids"] == [run.tokenizer.cls_id, *run.tokenizer.encode(text), run.tokenizer.sep_id]
    ids = torch.tensor([auto(TEXTS[0])["input_ids"]])
    with torch.no_grad():
        assert (run.model(ids) - model.eval()(ids).logits).abs().max().item() < 1e-4


def test_a_tokenizer_json_that_pads_and_truncates_is_read_without_either(tmp_path, toks):  # noqa: F811
    """Hub tokenizer.json files often pad every text to a fixed length: lmforge pads its own batches."""
    hf_tok = bert_tokenizer(toks["wordpiece"])
    model, _ = build("BertModel", len(hf_tok))
    model.save_pretrained(tmp_path / "hf")
    hf_tok.save_pretrained(tmp_path / "hf")
    path = tmp_path / "hf" / "tokenizer.json"
    raw = json.loads(path.read_text())
    raw["padding"] = {"strategy": {"Fixed": 48}, "direction": "Right", "pad_to_multiple_of": None, "pad_id": 0,
                      "pad_type_id": 0, "pad_token": "[PAD]"}
    raw["truncation"] = {"max_length": 48, "strategy": "LongestFirst", "stride": 0, "direction": "Right"}
    path.write_text(json.dumps(raw))
    import_hf(tmp_path / "hf", tmp_path / "run")
    run = load_run(tmp_path / "run")
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    long = " ".join(TEXTS * 6)
    for text in [*TEXTS, long]:
        assert [run.tokenizer.cls_id, *run.tokenizer.encode(text), run.tokenizer.sep_id] == auto(text)["input_ids"]


def test_slow_tokenizer_files_vocab_merges_and_sentencepiece(tmp_path, toks):  # noqa: F811
    """vocab.json + merges.txt (GPT-2's slow files) and a SentencePiece model (XLM-R's) without tokenizer.json."""
    spm = pytest.importorskip("sentencepiece")
    from conftest import make_chinese, make_english

    texts = make_english(120) + make_chinese(40)
    # GPT-2 style: save a fast GPT-2 tokenizer's slow files only
    fast = hf_tokenizer(toks["bpe"], bert=False)
    model, _ = build("GPT2Model", len(fast))
    (tmp_path / "gpt").mkdir()
    model.save_pretrained(tmp_path / "gpt")
    vocab = fast.backend_tokenizer.get_vocab()
    model_json = json.loads(fast.backend_tokenizer.to_str())["model"]
    (tmp_path / "gpt" / "vocab.json").write_text(json.dumps(vocab))
    merges = model_json["merges"]
    lines = [" ".join(m) if isinstance(m, list) else m for m in merges]
    (tmp_path / "gpt" / "merges.txt").write_text("#version: 0.2\n" + "\n".join(lines) + "\n")
    (tmp_path / "gpt" / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}))
    # XLM-R style: a SentencePiece unigram model
    corpus = tmp_path / "spm.txt"
    corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=300,
                                   character_coverage=1.0, pad_id=1, unk_id=3, bos_id=0, eos_id=2)
    xlmr, _ = build("XLMRobertaModel", 302)  # XLM-R shifts the pieces by one and adds <mask>
    xlmr.save_pretrained(tmp_path / "xlmr")
    (tmp_path / "xlmr" / "sentencepiece.bpe.model").write_bytes((tmp_path / "sp.model").read_bytes())
    (tmp_path / "xlmr" / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "XLMRobertaTokenizer"}))
    for folder in ("gpt", "xlmr"):
        assert not (tmp_path / folder / "tokenizer.json").exists()
        import_hf(tmp_path / folder, tmp_path / f"run-{folder}")
        run = load_run(tmp_path / f"run-{folder}")
        auto = transformers.AutoTokenizer.from_pretrained(tmp_path / folder)
        for text in TEXTS:
            assert auto(text, add_special_tokens=False)["input_ids"] == run.tokenizer.encode(text), (folder, text)
