"""SequenceClassifier: padding invariance, pair truncation, and logits equal to transformers' heads."""

from __future__ import annotations

import pytest
import torch

from lmforge.models import BertConfig, GPTConfig, RNNConfig
from lmforge.models.heads import SequenceClassifier

CONFIGS = {
    "gpt": GPTConfig(vocab_size=50, context_len=16, n_layer=2, n_head=2, d_model=16),
    "bert": BertConfig(vocab_size=50, context_len=16, n_layer=2, n_head=2, d_model=16),
    "rnn": RNNConfig(vocab_size=50, n_layer=2, d_embed=16, d_hidden=16),
}


@pytest.mark.parametrize("kind", list(CONFIGS))
@pytest.mark.parametrize("pooling", ["auto", "mean"])
def test_padding_does_not_change_logits(kind, pooling):
    torch.manual_seed(0)
    model = SequenceClassifier(CONFIGS[kind], 3, pooling).eval()
    ids = torch.randint(5, 50, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    logits = model(ids, mask)  # (2, 3)
    alone = model(ids[1:, :6], mask[1:, :6])
    torch.testing.assert_close(logits[1], alone[0], atol=1e-5, rtol=1e-5)
    assert set(k.split(".")[0] for k in model.state_dict()) == {"backbone", "head"}


def test_gpt_head_matches_transformers():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = SequenceClassifier(CONFIGS["gpt"], 3).eval()
    hf = transformers.GPT2ForSequenceClassification(
        transformers.GPT2Config(
            vocab_size=50,
            n_positions=16,
            n_embd=16,
            n_layer=2,
            n_head=2,
            num_labels=3,
            pad_token_id=0,
            activation_function="gelu_new",
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    ).eval()
    sd = {}
    for k, v in model.backbone.state_dict().items():
        if k == "lm_head.weight":
            continue
        name = k.replace("blocks.", "h.")
        sd["transformer." + name] = (
            v.t() if any(name.endswith(s) for s in ("c_attn.weight", "c_proj.weight", "c_fc.weight")) else v
        )
    sd["score.weight"] = model.head.weight
    hf.load_state_dict(sd, strict=False)
    ids = torch.randint(5, 50, (2, 8))
    ids[1, 5:] = 0  # right padding with the pad id
    mask = (ids != 0).long()
    torch.testing.assert_close(model(ids, mask), hf(ids, attention_mask=mask).logits, atol=1e-5, rtol=1e-4)


def test_bert_head_matches_transformers():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = SequenceClassifier(CONFIGS["bert"], 3).eval()
    hf = transformers.BertForSequenceClassification(
        transformers.BertConfig(
            vocab_size=50,
            max_position_embeddings=16,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=3,
            layer_norm_eps=1e-12,
        )
    ).eval()
    renames = [
        ("word_embeddings", "embeddings.word_embeddings"),
        ("position_embeddings", "embeddings.position_embeddings"),
        ("token_type_embeddings", "embeddings.token_type_embeddings"),
        ("emb_norm", "embeddings.LayerNorm"),
        ("attn.query", "attention.self.query"),
        ("attn.key", "attention.self.key"),
        ("attn.value", "attention.self.value"),
        ("attn.out", "attention.output.dense"),
        ("ln_attn", "attention.output.LayerNorm"),
        ("mlp.fc1", "intermediate.dense"),
        ("mlp.fc2", "output.dense"),
        ("ln_mlp", "output.LayerNorm"),
        ("pooler", "pooler.dense"),
        ("blocks.", "encoder.layer."),
    ]
    sd = {}
    for k, v in model.backbone.state_dict().items():
        if k.startswith(("head_", "decoder")):
            continue
        for a, b in renames:
            k = k.replace(a, b) if not k.startswith(b) else k
        sd["bert." + k] = v
    sd["classifier.weight"], sd["classifier.bias"] = model.head.weight, model.head.bias
    missing, _ = hf.load_state_dict(sd, strict=False)
    assert not [m for m in missing if "position_ids" not in m], missing
    ids = torch.randint(5, 50, (2, 8))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    types = torch.zeros_like(ids)
    types[:, 4:] = 1
    torch.testing.assert_close(
        model(ids, mask, types),
        hf(ids, attention_mask=mask, token_type_ids=types).logits,
        atol=1e-5,
        rtol=1e-4,
    )


def test_lr_scales_decay_with_depth():
    model = SequenceClassifier(CONFIGS["gpt"], 2)
    model.layerwise_lr_decay = 0.5
    scales = model.lr_scales()
    assert scales["head.weight"] == 1.0 and scales["backbone.ln_f.weight"] == 1.0
    assert scales["backbone.blocks.1.attn.c_attn.weight"] == 0.5
    assert scales["backbone.blocks.0.attn.c_attn.weight"] == 0.25 and scales["backbone.wte.weight"] == 0.125
