"""Hugging Face interop: export parity, import parity, round trips, pipelines, refusals, CLI.

Every model here is tiny and random; biases and norms are perturbed so that a wrong name map shows.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from lmforge.config import to_dict
from lmforge.errors import LmforgeError
from lmforge.interop import export_hf, import_hf, resolve_run
from lmforge.models import BertConfig, GPTConfig, build_model
from lmforge.runs import save_run
from lmforge.tasks import config_from, load_run
from lmforge.tokenizer import load_tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = ["The model reads text and learns to predict the next token.", "我们今天学习语言模型训练数据。",
         "Small steps add up: 42 tokens, then 7 more!"]
GPT2 = GPTConfig(context_len=64, n_layer=2, n_head=4, d_model=32)
LLAMA = GPTConfig(context_len=64, n_layer=2, n_head=4, d_model=32, pos="rope", norm="rmsnorm", mlp="swiglu",
                  bias=False, tie_embeddings=False, rope_theta=500.0)
LLAMA_BIAS = dataclasses.replace(LLAMA, bias=True, tie_embeddings=True)
GPT2_ERF = dataclasses.replace(GPT2, mlp="gelu_exact")  # HF's activation_function = "gelu"
BERT = BertConfig(context_len=64, n_layer=2, n_head=4, d_model=32, d_ff=48)


@pytest.fixture(scope="module")
def toks(tmp_path_factory) -> dict[str, Path]:
    """Trained bpe and wordpiece tokenizer folders (English + Chinese)."""
    from conftest import make_chinese, make_english

    from lmforge.corpus.store import write_file
    from lmforge.tokenizer import TokenizerConfig, train_tokenizer

    root = tmp_path_factory.mktemp("interop_toks")
    (root / "corpus").mkdir()
    write_file(root / "corpus" / "train-00000.jsonl.zst", make_english(150) + make_chinese(60))
    for kind in ("bpe", "wordpiece"):
        cfg = TokenizerConfig(kind=kind, vocab_size=400, min_frequency=1)
        train_tokenizer(root / "corpus", root / kind, cfg, progress=False)
    return {"bpe": root / "bpe", "wordpiece": root / "wordpiece"}


def perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Shift vectors off HF's 0/1 init, and grow matrices so that activations leave GELU's linear zone
    (with 0.02-std weights, gelu and gelu_new would agree to 1e-5 and the check would see nothing)."""
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
            else:
                p.mul_(8.0)
    return model.eval()


def make_run(out: Path, cfg, tok_dir: Path) -> tuple[torch.nn.Module, object]:
    tok = load_tokenizer(tok_dir)
    torch.manual_seed(0)
    model = perturb(build_model(dataclasses.replace(cfg, vocab_size=tok.vocab_size)))
    save_run(out, model, tok, config_from({"model": to_dict(model.config)}), step=5)
    return model, tok


def ids_for(tok, text: str, bert: bool) -> list[int]:
    ids = tok.encode(text)
    return [tok.cls_id, *ids, tok.sep_id] if bert else ids


def hf_auto(family_bert: bool):
    return transformers.AutoModelForMaskedLM if family_bert else transformers.AutoModelForCausalLM


# ----------------------------------------------------------------------------------------------------
# Export: AutoTokenizer/AutoModel on the folder give lmforge's tokens and logits


@pytest.mark.parametrize("cfg,arch", [(GPT2, "GPT2LMHeadModel"), (GPT2_ERF, "GPT2LMHeadModel"),
                                      (LLAMA, "LlamaForCausalLM"),
                                      (LLAMA_BIAS, "LlamaForCausalLM"), (BERT, "BertForMaskedLM")])
def test_export_matches_lmforge_tokens_and_logits(tmp_path, toks, cfg, arch):
    bert = cfg.kind == "bert"
    model, tok = make_run(tmp_path / "run", cfg, toks["wordpiece" if bert else "bpe"])
    export_hf(tmp_path / "run", tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == [arch] and config["vocab_size"] == tok.vocab_size
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    hf_model = hf_auto(bert).from_pretrained(tmp_path / "hf").eval()
    assert type(hf_model).__name__ == arch
    for text in TEXTS:
        want = ids_for(tok, text, bert)
        assert hf_tok(text)["input_ids"] == want
        assert hf_tok(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    batch = hf_tok(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        got = hf_model(**batch).logits
        real = batch["attention_mask"].bool()
        for row, text in enumerate(TEXTS):
            ours = model(torch.tensor([ids_for(tok, text, bert)]))[0]  # (T, V)
            diff = (got[row][real[row]] - ours).abs().max().item()
            assert diff < 1e-4, f"{arch}: max abs logit diff {diff}"
    assert hf_tok.pad_token_id == tok.pad_id
    if bert:
        assert hf_tok.mask_token_id == tok.mask_id
    else:
        assert hf_model.generation_config.eos_token_id == tok.eot_id


BERT_NO_TYPES = dataclasses.replace(BERT, type_vocab_size=0, tie_embeddings=False)


@pytest.mark.parametrize("cfg", [GPT2, GPT2_ERF, LLAMA, BERT_NO_TYPES])
def test_round_trip_gives_identical_weights_and_tokenizer(tmp_path, toks, cfg):
    model, tok = make_run(tmp_path / "run", cfg, toks["wordpiece" if cfg.kind == "bert" else "bpe"])
    export_hf(tmp_path / "run", tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "back")
    back = load_run(tmp_path / "back")
    assert back.config.model == model.config
    assert back.tokenizer.fingerprint == tok.fingerprint
    assert back.tokenizer.specials == tok.specials and back.tokenizer.kind == tok.kind
    ours, theirs = model.state_dict(), back.model.state_dict()
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name


def test_export_is_atomic_and_refuses_existing_folder(tmp_path, toks):
    make_run(tmp_path / "run", GPT2, toks["bpe"])
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("x")
    with pytest.raises(LmforgeError, match="already exists"):
        export_hf(tmp_path / "run", tmp_path / "hf")
    export_hf(tmp_path / "run", tmp_path / "hf", overwrite=True)
    assert not (tmp_path / "hf" / "keep.txt").exists()
    assert [p.name for p in tmp_path.glob(".hf.*")] == [".hf.lock"]  # no temporary folder, the lock file stays


# ----------------------------------------------------------------------------------------------------
# Pipelines on the exported folders


def test_text_generation_pipeline_continues_greedily_like_lmforge(tmp_path, toks):
    model, tok = make_run(tmp_path / "run", GPT2, toks["bpe"])
    export_hf(tmp_path / "run", tmp_path / "hf")
    gen = transformers.pipeline("text-generation", model=str(tmp_path / "hf"), device="cpu")
    prompt = "The model reads"
    out = gen(prompt, max_new_tokens=6, do_sample=False, return_full_text=False)[0]["generated_text"]
    ids = tok.encode(prompt)
    with torch.no_grad():
        for _ in range(6):
            nxt = int(model(torch.tensor([ids]))[0, -1].argmax())
            if nxt == tok.eot_id:
                break
            ids.append(nxt)
    assert out == tok.decode(ids[len(tok.encode(prompt)):])


def test_fill_mask_pipeline_matches_lmforge_fill_mask(tmp_path, toks):
    from lmforge.generate import fill_mask

    model, tok = make_run(tmp_path / "run", BERT, toks["wordpiece"])
    export_hf(tmp_path / "run", tmp_path / "hf")
    fill = transformers.pipeline("fill-mask", model=str(tmp_path / "hf"), device="cpu", top_k=3)
    text = "the model [MASK] text"
    got = fill(text)
    want = fill_mask(model, tok, text, top_k=3)[0]
    assert [round(r["score"], 5) for r in got] == [round(p, 5) for _, p in want]


# ----------------------------------------------------------------------------------------------------
# Import: tiny HF models saved by transformers itself


def hf_tokenizer(tok_dir: Path, bert: bool):
    tok = load_tokenizer(tok_dir)
    if bert:
        return transformers.PreTrainedTokenizerFast(
            tokenizer_object=tok.backend, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
            cls_token="[CLS]", mask_token="[MASK]")
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok.backend, eos_token="<|endoftext|>",
                                                bos_token="<|endoftext|>", unk_token="<|endoftext|>")


def tiny_hf(kind: str, vocab: int, **extra):
    torch.manual_seed(1)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                      **extra)
        return perturb(transformers.GPT2LMHeadModel(cfg))
    if kind == "llama":
        cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=40,
                                       num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                                       **extra)
        return perturb(transformers.LlamaForCausalLM(cfg))
    cfg = transformers.BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=48, max_position_embeddings=64,
                                  **extra)
    return perturb(transformers.BertForMaskedLM(cfg))


@pytest.mark.parametrize("kind", ["gpt2", "llama", "bert"])
def test_import_matches_hf_logits(tmp_path, toks, kind):
    bert = kind == "bert"
    hf_tok = hf_tokenizer(toks["wordpiece" if bert else "bpe"], bert)
    hf_model = tiny_hf(kind, len(hf_tok) + 3)  # a model vocabulary padded past the tokenizer's
    hf_model.save_pretrained(tmp_path / "hf")
    hf_tok.save_pretrained(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert run.config.model.vocab_size == len(hf_tok) + 3
    tok = run.tokenizer
    if bert:
        ours = (tok.cls_id, tok.sep_id, tok.mask_id, tok.pad_id)
        assert ours == (hf_tok.cls_token_id, hf_tok.sep_token_id, hf_tok.mask_token_id, hf_tok.pad_token_id)
    else:
        assert tok.eot_id == hf_tok.eos_token_id
    for text in TEXTS:
        ids = ids_for(tok, text, bert)
        with torch.no_grad():
            got, want = run.model(torch.tensor([ids])), hf_model(torch.tensor([ids])).logits
        assert (got - want).abs().max().item() < 1e-4


def test_import_reads_pytorch_model_bin_and_bare_base_model_names(tmp_path, toks):
    hf_tok = hf_tokenizer(toks["bpe"], bert=False)
    hf_model = tiny_hf("gpt2", len(hf_tok))
    hf_model.config.save_pretrained(tmp_path / "hf")
    hf_tok.save_pretrained(tmp_path / "hf")
    # GPT2Model names (no `transformer.` prefix), as in the original gpt2 checkpoint; .bin, not safetensors
    state = hf_model.state_dict()
    bare = {k.removeprefix("transformer."): v for k, v in state.items() if k != "lm_head.weight"}
    torch.save(bare, tmp_path / "hf" / "pytorch_model.bin")
    import_hf(tmp_path / "hf", tmp_path / "run")
    run = load_run(tmp_path / "run")
    ids = torch.tensor([run.tokenizer.encode(TEXTS[0])])
    with torch.no_grad():
        torch.testing.assert_close(run.model(ids), hf_model(ids).logits, atol=1e-4, rtol=1e-4)


def test_hf_path_is_accepted_wherever_a_run_is(tmp_path, toks, monkeypatch):
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache"))
    hf_tok = hf_tokenizer(toks["wordpiece"], bert=True)
    hf_model = tiny_hf("bert", len(hf_tok))
    hf_model.save_pretrained(tmp_path / "hf")
    hf_tok.save_pretrained(tmp_path / "hf")
    run = load_run(resolve_run(f"hf:{tmp_path / 'hf'}"))  # resolved at the boundary (CLI, server)
    assert run.config.model.kind == "bert" and run.run_dir.parent == tmp_path / "cache" / "hf-runs"
    assert resolve_run(f"hf:{tmp_path / 'hf'}") == run.run_dir  # imported once, then reused
    with pytest.raises(LmforgeError, match="resolve hf: references first"):
        load_run(f"hf:{tmp_path / 'hf'}")
    assert resolve_run(tmp_path / "plain") == tmp_path / "plain"


def test_hub_name_offline_says_so(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    with pytest.raises(LmforgeError, match="could not download bert-base-uncased: no network; download it "
                                           "elsewhere and pass the folder"):
        resolve_run("hf:bert-base-uncased")


# ----------------------------------------------------------------------------------------------------
# Refusals name the option


@pytest.mark.parametrize("change,match", [
    (dict(mlp="relu2"), 'model.mlp = "relu2" has no Hugging Face equivalent for GPT-2'),
    (dict(norm="rmsnorm"), 'model.norm = "rmsnorm" has no Hugging Face equivalent for GPT-2'),
    (dict(bias=False), "model.bias = false has no Hugging Face equivalent"),
    (dict(pos="rope", mlp="gelu", norm="rmsnorm"),
     'model.mlp = "gelu" has no Hugging Face equivalent for Llama'),
])
def test_export_refuses_options_without_hf_equivalent(tmp_path, toks, change, match):
    make_run(tmp_path / "run", dataclasses.replace(GPT2, **change), toks["bpe"])
    with pytest.raises(LmforgeError, match=match):
        export_hf(tmp_path / "run", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_export_refuses_pre_norm_bert(tmp_path, toks):
    make_run(tmp_path / "run", dataclasses.replace(BERT, pre_norm=True), toks["wordpiece"])
    with pytest.raises(LmforgeError, match="model.pre_norm = true"):
        export_hf(tmp_path / "run", tmp_path / "hf")


@pytest.mark.parametrize("kind,extra,match", [
    ("gpt2", dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx = true"),
    ("gpt2", dict(activation_function="relu"), 'activation_function = "relu"'),
    ("bert", dict(position_embedding_type="relative_key"), 'position_embedding_type = "relative_key"'),
    ("llama", dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), 'rope_type = "linear"'),
])
def test_import_refuses_unsupported_options(tmp_path, toks, kind, extra, match):
    bert = kind == "bert"
    hf_tok = hf_tokenizer(toks["wordpiece" if bert else "bpe"], bert)
    tiny_hf(kind, len(hf_tok), **extra).save_pretrained(tmp_path / "hf")
    hf_tok.save_pretrained(tmp_path / "hf")
    with pytest.raises(LmforgeError, match=match):
        import_hf(tmp_path / "hf", tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_import_refuses_missing_pieces(tmp_path, toks):
    with pytest.raises(LmforgeError, match="has no config.json"):
        import_hf(tmp_path, tmp_path / "run")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "bart"}))
    with pytest.raises(LmforgeError, match='model_type = "bart"'):
        import_hf(tmp_path / "hf", tmp_path / "run")
    with pytest.raises(LmforgeError, match="not found"):
        import_hf("./no/such/folder", tmp_path / "run")


# ----------------------------------------------------------------------------------------------------
# End to end through the CLI on a real (tiny) pretraining run


def test_cli_pretrain_export_import(tmp_path, tiny_shards, cli):
    run = tmp_path / "run"
    config = _tiny_gpt_config(tmp_path)
    code, _, err = cli("pretrain", "--config", config, "--data", tiny_shards, "--out", run)
    assert code == 0, err
    code, out, err = cli("export", run, "--format", "hf", "--out", tmp_path / "hf")
    assert code == 0 and "GPT2LMHeadModel" in out, err
    loaded = load_run(run)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    text = "the model reads text"
    ids = loaded.tokenizer.encode(text)
    assert hf_tok(text)["input_ids"] == ids
    with torch.no_grad():
        diff = (hf_model(torch.tensor([ids])).logits - loaded.model(torch.tensor([ids]))).abs().max().item()
    assert diff < 1e-4
    code, _, err = cli("import-hf", tmp_path / "hf", "--out", tmp_path / "back")
    assert code == 0, err
    back = load_run(tmp_path / "back")
    assert all(torch.equal(v, back.model.state_dict()[k]) for k, v in loaded.model.state_dict().items())
    code, _, err = cli("export", run, "--out", tmp_path / "hf")
    assert code == 2 and "already exists" in err
    shutil.rmtree(tmp_path / "hf")
    code, _, err = cli("export", tmp_path / "nope", "--out", tmp_path / "hf")
    assert code == 2 and "not a run folder" in err


def _tiny_gpt_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text("[model]\nkind = \"gpt\"\ncontext_len = 32\nn_layer = 1\nn_head = 2\nd_model = 16\n\n"
                    "[train]\nmax_steps = 3\nbatch_size = 4\neval_every = 0\neval_batches = 1\n"
                    "save_every = 3\n"
                    "log_every = 1\nprogress = false\n\n[schedule]\nwarmup_steps = 1\n\n"
                    "[runtime]\ndevice = \"cpu\"\n")
    return path
