import math

import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.models import GPT, BertConfig, GPTConfig, build_model

VARIANTS = [
    dict(),
    dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False),
    dict(pos="rope", mlp="relu2", tie_embeddings=False),
]


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(**{**dict(vocab_size=61, context_len=24, n_layer=2, n_head=4, d_model=32), **kw})
    return build_model(cfg).eval()


def test_gpt2_small_parameter_count():
    cfg = GPTConfig(vocab_size=50257, context_len=1024, n_layer=12, n_head=12, d_model=768)
    with torch.device("meta"):
        model = GPT(cfg)
    assert model.num_params() == 124_439_808
    assert model.num_params(non_embedding=True) == 124_439_808 - 50257 * 768 - 1024 * 768


def randomise_vectors(model: torch.nn.Module) -> None:
    """HF inits biases to 0 and norms to 1: perturb them so a wrong name map would show."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)


def test_matches_hf_gpt2():
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.GPT2Config(vocab_size=61, n_positions=24, n_embd=32, n_layer=2, n_head=4,
                                     activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0, layer_norm_epsilon=1e-5, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(1)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    randomise_vectors(hf)
    ours = tiny()
    # HF GPT-2 stores linear weights as Conv1D (in, out): transpose them
    name_map = {"transformer.wte.weight": "wte.weight", "transformer.wpe.weight": "wpe.weight",
                "transformer.ln_f.weight": "ln_f.weight", "transformer.ln_f.bias": "ln_f.bias"}
    for i in range(2):
        for part in ("ln_1", "ln_2", "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            for kind in ("weight", "bias"):
                name_map[f"transformer.h.{i}.{part}.{kind}"] = f"blocks.{i}.{part}.{kind}"
    hf_state = hf.state_dict()
    ours_state = {}
    for hf_name, our_name in name_map.items():
        t = hf_state[hf_name]
        transpose = t.ndim == 2 and ".h." in hf_name
        ours_state[our_name] = t.t() if transpose else t
    missing, unexpected = ours.load_state_dict(ours_state, strict=False)
    assert missing == ["lm_head.weight"] and not unexpected  # tied to wte
    ids = torch.randint(0, 61, (3, 24))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kw", VARIANTS)
def test_kv_cache_matches_full_recompute(kw):
    model = tiny(**kw)
    ids = torch.randint(0, 61, (2, 20))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_kv_cache(batch_size=2)
        # prefill 7, then a chunk of 3 (mask path), then one token at a time
        pieces = [model(ids[:, :7], cache), model(ids[:, 7:10], cache)]
        pieces += [model(ids[:, t:t + 1], cache) for t in range(10, 20)]
    assert cache.pos == 20
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", VARIANTS)
def test_causal_and_all_parameters_learn(kw):
    model = tiny(**kw, dropout=0.1).train()
    ids = torch.randint(0, 61, (2, 12))
    changed = ids.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % 61
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model(ids)[:, :8], model(changed)[:, :8])
        assert not torch.allclose(model(ids)[:, 8:], model(changed)[:, 8:])
    model.train()
    model(ids).logsumexp(-1).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_too_long_input_and_cache_overflow_are_clear():
    model = tiny()
    with pytest.raises(ValueError, match="context_len=24"):
        model(torch.zeros(1, 25, dtype=torch.long))
    cache = model.new_kv_cache(1, max_len=4)
    with pytest.raises(ValueError, match="holds 4 positions"):
        model(torch.zeros(1, 5, dtype=torch.long), cache)


def test_tying_init_and_counts():
    tied, untied = tiny(), tiny(tie_embeddings=False)
    assert tied.lm_head.weight is tied.wte.weight
    assert untied.num_params() - tied.num_params() == 61 * 32
    std = tied.blocks[0].mlp.c_proj.weight.std().item()
    assert math.isclose(std, 0.02 / math.sqrt(4), rel_tol=0.2)
    assert math.isclose(tied.blocks[0].mlp.c_fc.weight.std().item(), 0.02, rel_tol=0.2)
    assert tiny(mlp="swiglu", d_model=48, n_head=4).blocks[0].mlp.c_fc.out_features == 128


def test_flops_per_token_counts_matmuls():
    model = tiny()
    L, C, V, T = 2, 32, 61, 24
    per_layer = 3 * C * C + C * C + 2 * 4 * C * C  # qkv, out, mlp weights
    matmul_params = L * per_layer + V * C
    # biases and norms are small extras inside N
    extras = model.num_params(non_embedding=True) - L * per_layer
    assert model.flops_per_token(T) == 6 * (matmul_params + extras) + 12 * L * T * C


def test_build_model_errors():
    with pytest.raises(LmforgeError, match="model.vocab_size"):
        build_model(GPTConfig())
    assert build_model(BertConfig(vocab_size=10)).config.kind == "bert"
