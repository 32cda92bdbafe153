import pytest
import torch

from lmforge.models import Bert, BertConfig, build_model

# HF bert-base-uncased: 109,482,240 in BertModel (pooler included), plus the MLM head's dense, norm, bias
BERT_BASE_PARAMS = 109_482_240 + 768 * 768 + 768 + 2 * 768 + 30522


def tiny(**kw) -> Bert:
    torch.manual_seed(0)
    base = dict(vocab_size=53, context_len=20, n_layer=2, n_head=4, d_model=32, d_ff=48)
    cfg = BertConfig(**{**base, **kw})
    return build_model(cfg).eval()


def hf_name_map(n_layer: int) -> dict[str, str]:
    """HF BertForMaskedLM name -> ours."""
    m = {"bert.embeddings.word_embeddings.weight": "word_embeddings.weight",
         "bert.embeddings.position_embeddings.weight": "position_embeddings.weight",
         "bert.embeddings.token_type_embeddings.weight": "token_type_embeddings.weight",
         "cls.predictions.bias": "decoder.bias",
         "cls.predictions.transform.dense.weight": "head_dense.weight",
         "cls.predictions.transform.dense.bias": "head_dense.bias"}
    for kind in ("weight", "bias"):
        m[f"bert.embeddings.LayerNorm.{kind}"] = f"emb_norm.{kind}"
        m[f"cls.predictions.transform.LayerNorm.{kind}"] = f"head_norm.{kind}"
        for i in range(n_layer):
            hf, us = f"bert.encoder.layer.{i}.", f"blocks.{i}."
            for part in ("query", "key", "value"):
                m[f"{hf}attention.self.{part}.{kind}"] = f"{us}attn.{part}.{kind}"
            m[f"{hf}attention.output.dense.{kind}"] = f"{us}attn.out.{kind}"
            m[f"{hf}attention.output.LayerNorm.{kind}"] = f"{us}ln_attn.{kind}"
            m[f"{hf}intermediate.dense.{kind}"] = f"{us}mlp.fc1.{kind}"
            m[f"{hf}output.dense.{kind}"] = f"{us}mlp.fc2.{kind}"
            m[f"{hf}output.LayerNorm.{kind}"] = f"{us}ln_mlp.{kind}"
    return m


def randomise_vectors(model: torch.nn.Module) -> None:
    """HF inits biases to 0 and norms to 1: perturb them so a wrong name map would show."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)


def test_matches_hf_bert_for_masked_lm():
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.BertConfig(vocab_size=53, max_position_embeddings=20, hidden_size=32,
                                     num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(1)
    hf = transformers.BertForMaskedLM(hf_cfg).eval()
    randomise_vectors(hf)
    ours = tiny()
    hf_state = hf.state_dict()
    state = {ours_name: hf_state[hf_name] for hf_name, ours_name in hf_name_map(2).items()}
    missing, unexpected = ours.load_state_dict(state, strict=False)
    assert sorted(missing) == ["decoder.weight", "pooler.bias", "pooler.weight"] and not unexpected
    ids = torch.randint(0, 53, (3, 20))
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[1, 15:] = 0
    types = (torch.arange(20) >= 9).long().expand(3, 20)
    with torch.no_grad():
        got = ours(ids, attention_mask=mask, token_type_ids=types)
        want = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_right_padding_does_not_change_real_positions(pre_norm):
    model = tiny(pre_norm=pre_norm)
    ids = torch.randint(5, 53, (2, 11))
    padded = torch.cat([ids, torch.zeros(2, 6, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(2, 11), torch.zeros(2, 6)], dim=1).long()
    with torch.no_grad():
        plain = model(ids)
        with_pad = model(padded, attention_mask=mask)
        unmasked = model(padded)
    torch.testing.assert_close(with_pad[:, :11], plain, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(unmasked[:, :11], plain, atol=1e-3)  # the mask is what makes them equal


def test_bidirectional_pool_and_gradients():
    model = tiny(dropout=0.0, attn_dropout=0.0)
    ids = torch.randint(5, 53, (2, 10))
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 53
    with torch.no_grad():
        assert not torch.allclose(model(ids)[:, 0], model(changed)[:, 0])  # the first token sees the last
    hidden = model.hidden(ids)
    assert hidden.shape == (2, 10, 32) and model.pool(hidden).shape == (2, 32)
    model.train()
    (model(ids).logsumexp(-1).mean() + model.pool(model.hidden(ids)).sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_tying_counts_and_segments():
    tied, untied = tiny(), tiny(tie_embeddings=False)
    assert tied.decoder.weight is tied.word_embeddings.weight
    assert untied.num_params() - tied.num_params() == 53 * 32
    assert tied.num_params() - tied.num_params(non_embedding=True) == (53 + 20 + 2) * 32
    no_segments = tiny(type_vocab_size=0)
    assert no_segments.token_type_embeddings is None
    with pytest.raises(ValueError, match="type_vocab_size"):
        no_segments(torch.zeros(1, 4, dtype=torch.long), token_type_ids=torch.zeros(1, 4, dtype=torch.long))
    L, C, T = 2, 32, 20
    assert tied.flops_per_token(T) == 6 * (tied.num_params(True) + 53 * 32) + 12 * L * T * C


def test_bert_base_size():
    cfg = BertConfig(vocab_size=30522, context_len=512, n_layer=12, n_head=12, d_model=768, d_ff=3072)
    with torch.device("meta"):
        model = Bert(cfg)
    assert model.num_params() == BERT_BASE_PARAMS


@pytest.mark.parametrize("preset, layers, width", [("bert-tiny", 2, 128), ("bert-mini", 4, 256),
                                                   ("bert-base", 12, 768)])
def test_presets_load_and_build(preset, layers, width):
    from lmforge.tasks import load_config

    cfg = load_config(preset, ["model.vocab_size=30522"])
    assert isinstance(cfg.model, BertConfig) and (cfg.model.n_layer, cfg.model.d_model) == (layers, width)
    with torch.device("meta"):
        model = build_model(cfg.model)
    assert cfg.seq_len() <= cfg.model.context_len and model.num_params() > 0
    if preset == "bert-base":
        assert cfg.model.context_len == 512 and model.num_params() == BERT_BASE_PARAMS
