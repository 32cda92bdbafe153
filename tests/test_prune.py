"""Structured pruning (`lmforge.compress.prune`): heads and FFN neurons physically removed.

The proof that removal is right: a pruned model computes what the original computes with the removed
units' contributions zeroed (their output-projection columns), to 1e-5. The rest: taylor importance
finds a head made useless on purpose, sparsity zeroes the asked fraction, runs (pretrained and a
fine-tuned classifier, with and without recovery) load back, bad input is refused with nothing written,
and export goes to Llama with head_dim (logits checked by transformers) but is refused for GPT-2/BERT.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmforge.compress.prune import magnitude_scores, prune, sparsify
from lmforge.config import to_dict
from lmforge.errors import LmforgeError
from lmforge.models import BertConfig, GPTConfig, RNNConfig, build_model
from lmforge.models.pruning import layout, pruned_config, shrink_state
from lmforge.runs import save_run
from lmforge.tasks import config_from, load_run, read_config

GPT2 = GPTConfig(vocab_size=50, context_len=16, n_layer=2, n_head=4, d_model=32)
LLAMA = GPTConfig(vocab_size=50, context_len=16, n_layer=2, n_head=4, d_model=32, pos="rope", norm="rmsnorm",
                  mlp="swiglu", bias=False, tie_embeddings=False)
BERT = BertConfig(vocab_size=50, context_len=16, n_layer=2, n_head=4, d_model=32, dropout=0.0, attn_dropout=0.0)
TINY = ('[model]\nkind = "{kind}"\ncontext_len = 32\nn_layer = 2\nn_head = 4\nd_model = 32\n{extra}'
        "[train]\nmax_steps = 2\nbatch_size = 8\neval_every = 2\neval_batches = 1\nsave_every = 2\nprogress = false\n"
        "[schedule]\nwarmup_steps = 1\n[runtime]\ndevice = \"cpu\"\n")


def perturbed(cfg, seed: int = 0) -> torch.nn.Module:
    """A model whose biases and norms are off their 0/1 init, so that a wrong row or column shows."""
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * (0.1 if p.ndim == 1 else 0.05))
    return model


# ----------------------------------------------------------------------------------------------------
# Removal: shapes shrink, outputs equal the masked original


@pytest.mark.parametrize("cfg", [GPT2, LLAMA, BERT], ids=["gpt2", "llama", "bert"])
def test_pruned_model_equals_the_masked_original(cfg):
    model, hs, width = perturbed(cfg), cfg.head_size(), cfg.ff_width()
    keep_heads, rng = [[0, 2], [1, 3]], random.Random(0)
    keep_ffn = [sorted(rng.sample(range(width), width // 2)) for _ in range(cfg.n_layer)]
    new_cfg = pruned_config(cfg, 2, width // 2)
    assert (new_cfg.n_head, new_cfg.head_dim, new_cfg.d_ff) == (2, hs, width // 2)
    pruned = build_model(new_cfg).eval()
    pruned.load_state_dict(shrink_state(model.state_dict(), layout(cfg, heads=True), keep_heads, keep_ffn))

    masked = copy.deepcopy(model)
    with torch.no_grad():
        for i, block in enumerate(masked.blocks):
            attn_out, ffn_out = (block.attn.c_proj, block.mlp.c_proj) if cfg.kind == "gpt" else \
                (block.attn.out, block.mlp.fc2)
            for h in set(range(cfg.n_head)) - set(keep_heads[i]):
                attn_out.weight[:, h * hs:(h + 1) * hs] = 0.0
            ffn_out.weight[:, sorted(set(range(width)) - set(keep_ffn[i]))] = 0.0
    ids = torch.randint(0, cfg.vocab_size, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # BERT: padding, so the unpadded path runs too
    out = (lambda m: m.hidden(ids, mask)) if cfg.kind == "bert" else (lambda m: m(ids))
    with torch.no_grad():
        want = out(masked)
        assert (out(pruned) - want).abs().max().item() < 1e-5
        assert (out(model) - want).abs().max().item() > 1e-3  # the removed units did contribute
    blk = pruned.blocks[0]
    if cfg.kind == "gpt":
        assert blk.attn.c_attn.weight.shape == (3 * 2 * hs, 32) and blk.attn.c_proj.weight.shape == (32, 2 * hs)
        assert blk.mlp.c_fc.weight.shape == (width // 2, 32) and blk.mlp.c_proj.weight.shape == (32, width // 2)
    else:
        assert blk.attn.query.weight.shape == (2 * hs, 32) and blk.attn.out.weight.shape == (32, 2 * hs)
        assert blk.mlp.fc1.weight.shape == (width // 2, 32) and blk.mlp.fc2.weight.shape == (32, width // 2)
    assert pruned.num_params() < model.num_params()


def test_head_dim_default_is_unchanged_and_kv_cache_follows_it():
    torch.manual_seed(0)
    a = build_model(LLAMA)
    torch.manual_seed(0)
    b = build_model(dataclasses.replace(LLAMA, head_dim=8))  # the default, written out
    ids = torch.randint(0, 50, (2, 10))
    assert torch.equal(a(ids), b(ids)) and a.flops_per_token(16) == b.flops_per_token(16)
    narrow = perturbed(dataclasses.replace(LLAMA, n_head=2, head_dim=8))  # attention 16 wide, d_model 32
    with torch.no_grad():
        full = narrow(ids[:1])  # (1, T, V)
        cache = narrow.new_kv_cache(1)
        narrow(ids[:1, :6], kv_cache=cache)
        step = narrow(ids[:1, 6:7], kv_cache=cache)
    assert (step[0, -1] - full[0, 6]).abs().max().item() < 1e-5
    with pytest.raises(LmforgeError, match="model.d_model"):
        GPTConfig(d_model=30, n_head=4)


def test_magnitude_ranks_the_smallest_unit_last_and_sparsity_zeroes_the_fraction():
    model = perturbed(GPT2)
    with torch.no_grad():
        attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
        for j in range(3):  # head 3's q, k, v rows and its output columns
            attn.c_attn.weight[j * 32 + 24:j * 32 + 32] *= 0.01
        attn.c_proj.weight[:, 24:32] *= 0.01
        mlp.c_fc.weight[5] *= 0.01
        mlp.c_proj.weight[:, 5] *= 0.01
    heads, ffn = magnitude_scores(model.state_dict(), layout(GPT2, heads=True))
    assert heads[0].argmin().item() == 3 and ffn[0].argmin().item() == 5 and heads[1].argmin().item() != 3
    before = [m.weight.detach().abs().clone() for m in model.blocks.modules() if isinstance(m, torch.nn.Linear)]
    zeroed = sparsify(model.blocks, 0.3)
    linears = [m for m in model.blocks.modules() if isinstance(m, torch.nn.Linear)]
    assert zeroed == sum(round(0.3 * m.weight.numel()) for m in linears)
    for m, old in zip(linears, before):
        gone = m.weight == 0
        assert gone.sum().item() == round(0.3 * m.weight.numel())
        assert old[gone].max() <= old[~gone].min()  # the smallest went


# ----------------------------------------------------------------------------------------------------
# Runs


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """Tiny GPT and BERT pretraining runs (word tokenizer), a BERT classifier fine-tuned from the latter."""
    from conftest import make_english, make_shards
    from test_finetune import _rows, _write_tsv

    from lmforge.pipeline import finetune, finetune_config, pretrain
    from lmforge.tasks import load_config
    from lmforge.tokenizer import TokenizerConfig

    root = tmp_path_factory.mktemp("prune")
    shards = make_shards(root, make_english(120, seed=1), 12,
                         TokenizerConfig(kind="word", vocab_size=200, min_frequency=1))
    out = {"root": root, "shards": shards}
    for kind in ("gpt", "bert"):
        extra = "dropout = 0.0\nattn_dropout = 0.0\n" if kind == "bert" else ""
        (root / f"{kind}.toml").write_text(TINY.format(kind=kind, extra=extra))
        cfg = load_config(root / f"{kind}.toml", [f"data.path={shards}"])
        out[kind] = pretrain(cfg, root / f"run_{kind}")
    train, dev = _write_tsv(root / "train.tsv", _rows(48, 0)), _write_tsv(root / "dev.tsv", _rows(16, 1))
    flags = {"train_file": str(train), "dev_file": str(dev), "max_steps": 2, "per_device_train_batch_size": 8}
    finetune(finetune_config("classify", out["bert"], flags=flags), root / "clf")
    out["clf"] = root / "clf"
    return out


def _info(run: Path) -> dict:
    return json.loads((run / "compression.json").read_text())


def _first_batch_loss(model, cfg) -> float:
    from lmforge.data.loaders import CausalLMBatches
    from lmforge.data.shards import TokenShards

    batch = CausalLMBatches(TokenShards.open(Path(cfg.data.path)), cfg.seq_len(), cfg.train.batch_size,
                            cfg.train.seed).get(0, micro_batch=cfg.train.batch_size)
    with torch.no_grad():
        logits = model(batch["input_ids"])
    return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100).item()


def test_gpt_run_pruned_by_taylor_then_recovered(made, tmp_path):
    src = load_run(made["gpt"])
    out = prune(made["gpt"], tmp_path / "p", heads=0.5, ffn=0.5, score_batches=2, say=lambda m: None)
    run = load_run(out)
    m = run.config.model
    assert (m.n_head, m.head_dim, m.d_ff) == (2, 8, 64) and run.tokenizer.fingerprint == src.tokenizer.fingerprint
    info = _info(out)
    assert info["method"] == "prune" and info["importance"] == "taylor" and info["from"] == str(made["gpt"])
    assert [len(k) for k in info["kept_heads"]] == [2, 2] and info["kept_ffn"] == [64, 64]
    assert info["params_after"] == run.model.num_params() < info["params_before"] == src.model.num_params()
    from lmforge.pipeline import evaluate_run

    assert evaluate_run(out, max_batches=1)["loss"] > 0

    # recovery through the loop: its first logged loss is the pruned model's (the weights were loaded)
    rec = prune(made["gpt"], tmp_path / "r", heads=0.5, ffn=0.5, score_batches=2, recover_steps=2,
                overrides=["train.log_every=1"], say=lambda m: None)
    logged = [json.loads(ln) for ln in (rec / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln]
    assert [x["step"] for x in logged if "lr" in x] == [1, 2]
    assert logged[0]["loss"] == pytest.approx(_first_batch_loss(run.model, run.config), rel=1e-5)
    again = load_run(rec)
    assert again.step == 2 and again.config.model == m and _info(rec)["recover_steps"] == 2
    assert not (rec / "init_from.json").exists() and not list(tmp_path.glob(".r.pruned-*"))
    with pytest.raises(LmforgeError, match="--heads 0"):
        from lmforge.interop import export_hf

        export_hf(out, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_taylor_ranks_a_useless_head_last(made, tmp_path):
    src = load_run(made["gpt"])
    with torch.no_grad():  # heads 1 (layer 0) and 2 (layer 1) write nothing
        src.model.blocks[0].attn.c_proj.weight[:, 8:16] = 0.0
        src.model.blocks[1].attn.c_proj.weight[:, 16:24] = 0.0
    save_run(tmp_path / "dead", src.model, src.tokenizer, src.config, step=2)
    out = prune(tmp_path / "dead", tmp_path / "p", heads=0.25, score_batches=2, say=lambda m: None)
    assert _info(out)["kept_heads"] == [[0, 2, 3], [0, 1, 3]]


def test_sparsity_only_keeps_the_shape_and_says_so(made, tmp_path):
    out = prune(made["gpt"], tmp_path / "s", sparsity=0.5, say=lambda m: None)
    run = load_run(out)
    assert run.config.model == read_config(made["gpt"]).model
    info = _info(out)
    assert "same size and speed unless a sparse kernel is used" in info["note"] and info["importance"] is None
    for mod in run.model.blocks.modules():
        if isinstance(mod, torch.nn.Linear):
            assert (mod.weight == 0).float().mean().item() == pytest.approx(0.5, abs=1e-3)


def test_bert_classifier_pruned_and_recovered(made, tmp_path):
    out = prune(made["clf"], tmp_path / "c", heads=0.5, ffn=0.25, score_batches=2, recover_steps=2,
                say=lambda m: None)
    run = load_run(out)
    assert run.task.name == "classify" and run.config.model.n_head == 2 and run.config.model.d_ff == 96
    assert run.files["label_map.json"] == load_run(made["clf"]).files["label_map.json"]
    assert (out / "eval_results.json").is_file() and _info(out)["recover_steps"] == 2
    from lmforge.tasks.classify import classify

    assert classify(run, ["gains quickly"])[0]["label"] in ("positive", "negative")
    # magnitude, no recovery: the masked-LM run too
    mlm = prune(made["bert"], tmp_path / "m", heads=0.25, ffn=0.5, method="magnitude", say=lambda m: None)
    assert load_run(mlm).config.model.n_head == 3 and _info(mlm)["score_batches"] == 0


def _saved(path: Path, cfg, tok_dir: Path, meta: dict | None = None) -> Path:
    from lmforge.tokenizer import load_tokenizer

    tok = load_tokenizer(tok_dir)
    model = perturbed(dataclasses.replace(cfg, vocab_size=tok.vocab_size))
    return save_run(path, model, tok, config_from({"model": to_dict(model.config)}), step=1, meta=meta)


def test_bad_input_is_refused_and_nothing_written(made, tmp_path):
    gpt, out, tok_dir = made["gpt"], tmp_path / "out", made["root"] / "tok"
    cases = [
        (gpt, dict(heads=1.0), "--heads 1.0: give the fraction"),
        (gpt, dict(heads=0.9), "would remove all 4 heads"),
        (gpt, dict(heads=0.1), "removes none of the 4 heads"),
        (gpt, dict(ffn=0.9999), "would remove all 128 FFN neurons"),
        (gpt, dict(), "nothing to prune"),
        (gpt, dict(heads=0.5, method="random"), "not one of taylor, magnitude"),
        (gpt, dict(sparsity=0.5, recover_steps=2), "fill the zeroed weights back in"),
        (gpt, dict(heads=0.5, overrides=["model.n_layer=1"]), "--set model.n_layer"),
        (gpt, dict(heads=0.5, overrides=["train.no_such_key=1"]), "no_such_key"),
        (made["clf"], dict(heads=0.5, overrides=["optim.lr=0.1"]), "finetune.learning_rate"),
        (_saved(tmp_path / "rnn", RNNConfig(d_embed=16, d_hidden=16, n_layer=1), tok_dir), dict(ffn=0.5),
         "model.kind = 'rnn'"),
        (_saved(tmp_path / "gqa", dataclasses.replace(LLAMA, n_kv_head=2), tok_dir), dict(heads=0.5),
         "prune --ffn only"),
        (_saved(tmp_path / "q", GPT2, tok_dir, meta={"quantization": {"scheme": "int8-dynamic"}}), dict(ffn=0.5),
         "quantized"),
    ]
    for run, kwargs, message in cases:
        with pytest.raises(LmforgeError, match=message):
            prune(run, out, say=lambda m: None, **kwargs)
        assert not out.exists(), message
    out.mkdir()
    with pytest.raises(LmforgeError, match="already exists"):
        prune(gpt, out, ffn=0.5, method="magnitude")
    gqa = prune(tmp_path / "gqa", tmp_path / "gqa_ffn", ffn=0.5, method="magnitude", say=lambda m: None)
    assert load_run(gqa).config.model.n_kv_head == 2


# ----------------------------------------------------------------------------------------------------
# Export


def test_export_llama_with_head_dim_and_gpt2_ffn_only(made, tmp_path):
    transformers = pytest.importorskip("transformers")
    from lmforge.interop import export_hf, import_hf

    tok_dir = made["root"] / "tok"
    cases = [(LLAMA, dict(heads=0.5, ffn=0.25), "LlamaForCausalLM"), (GPT2, dict(ffn=0.5), "GPT2LMHeadModel")]
    for cfg, kwargs, arch in cases:
        src = _saved(tmp_path / f"src_{arch}", cfg, tok_dir)
        out = prune(src, tmp_path / f"p_{arch}", method="magnitude", say=lambda m: None, **kwargs)
        export_hf(out, tmp_path / f"hf_{arch}")
        hf_cfg = json.loads((tmp_path / f"hf_{arch}" / "config.json").read_text())
        if arch.startswith("Llama"):
            assert (hf_cfg["num_attention_heads"], hf_cfg["head_dim"], hf_cfg["intermediate_size"]) == (2, 8, 96)
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / f"hf_{arch}").eval()
        assert type(hf_model).__name__ == arch
        ours = load_run(out).model
        ids = torch.randint(0, ours.config.vocab_size, (2, 12))
        with torch.no_grad():
            diff = (hf_model(ids).logits - ours(ids)).abs().max().item()
        assert diff < 1e-4, f"{arch}: max abs logit diff {diff}"
        if arch.startswith("Llama"):  # and back: head_dim is read from config.json
            back = load_run(import_hf(tmp_path / f"hf_{arch}", tmp_path / "back"))
            assert back.config.model == ours.config
