"""The T5 encoder-decoder: shapes, masking, caches, and equality with `transformers` (logits both ways,
greedy and beam search: same tokens, same scores)."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.generate_seq2seq import Decoding, banned_by_ngrams, decode_batch
from lmforge.models import T5, T5Config

V = 40


def tiny(**kw) -> T5:
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=V, n_layer=2, n_head=4, d_model=32, d_ff=48, relative_buckets=8,
                   relative_max_distance=20, dropout=0.0, **kw)
    return T5(cfg).eval()


def test_shapes_and_parameter_layout():
    model = tiny(n_decoder_layer=3)
    src, dec = torch.randint(2, V, (3, 7)), torch.randint(2, V, (3, 5))
    assert model(src, dec).shape == (3, 5, V)
    assert model.encode(src).shape == (3, 7, 32)
    assert len(model.encoder) == 2 and len(model.decoder) == 3
    # relative-position tables only in the first layer of each stack; no biases anywhere
    tables = [n for n, _ in model.named_parameters() if "relative_attention_bias" in n]
    assert tables == ["encoder.0.attn.relative_attention_bias.weight",
                      "decoder.0.self_attn.relative_attention_bias.weight"]
    assert not [n for n, _ in model.named_parameters() if n.endswith(".bias")]
    relu = tiny(feed_forward="relu", tie_embeddings=True)
    assert relu.lm_head.weight is relu.shared.weight and hasattr(relu.encoder[0].ff, "wi")


def test_decoder_is_causal_and_padding_changes_nothing():
    model = tiny()
    src, dec = torch.randint(2, V, (2, 6)), torch.randint(2, V, (2, 5))
    with torch.no_grad():
        base = model(src, dec)
        changed = dec.clone()
        changed[:, 3] = (changed[:, 3] + 1) % V
        after = model(src, changed)
        assert torch.allclose(base[:, :3], after[:, :3], atol=1e-6)  # earlier positions never see later ones
        assert not torch.allclose(base[:, 3:], after[:, 3:], atol=1e-3)
        # the same sources padded on the right with a mask give the same logits
        padded = torch.cat([src, torch.zeros(2, 4, dtype=torch.long)], dim=1)
        mask = torch.cat([torch.ones(2, 6), torch.zeros(2, 4)], dim=1).long()
        assert torch.allclose(model(padded, dec, attention_mask=mask), base, atol=1e-5)


def test_cached_decoding_equals_full_recomputation():
    model = tiny()
    src, dec = torch.randint(2, V, (2, 6)), torch.randint(2, V, (2, 7))
    with torch.no_grad():
        full = model(src, dec)
        memory = model.encode(src)
        cache = model.new_cache(memory)
        steps = [model.decode(dec[:, :3], memory, None, cache)] + [model.decode(dec[:, t:t + 1], memory, None, cache)
                                                                    for t in range(3, 7)]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_ngram_bans_follow_the_last_tokens():
    seqs = torch.tensor([[0, 5, 6, 7, 5], [0, 1, 2, 3, 4]])
    banned = banned_by_ngrams(seqs, 2)
    assert sorted(t for t in banned[0].tolist() if t >= 0) == [6]  # "5 6" exists, the row ends with 5
    assert all(t < 0 for t in banned[1].tolist())


# ----------------------------------------------------------------------------------------------------
# Against transformers

transformers = pytest.importorskip("transformers")


def hf_t5(ff: str = "gated-gelu", tied: bool = False, eos_boost: float = 0.0, decoder_layers: int = 3):
    """A random T5ForConditionalGeneration with T5's own initialisation, its eos row raised by `eos_boost`
    so that beams end at different lengths."""
    torch.manual_seed(1)
    cfg = transformers.T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2,
                                num_decoder_layers=decoder_layers, num_heads=4, relative_attention_num_buckets=8,
                                relative_attention_max_distance=20,
                                feed_forward_proj=ff, tie_word_embeddings=tied, dropout_rate=0.0,
                                pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    model = transformers.T5ForConditionalGeneration(cfg).eval()
    if not tied:  # v1.1 checkpoints keep a separate output layer
        model.lm_head.weight = torch.nn.Parameter(torch.randn(V, 32) * 32 ** -0.5)
    with torch.no_grad():
        model.lm_head.weight[1] += eos_boost
    return model


def save_hf(model, folder):
    model.save_pretrained(folder)
    # the importer reads a tokenizer too: a word-level one over V ids is enough for tensor checks
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"w{i}": i for i in range(3, V)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="<pad>",
                                               unk_token="<unk>")
    tok.save_pretrained(folder)


def _batch():
    torch.manual_seed(5)
    ids = torch.randint(2, V, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:], mask[2, 4:] = 0, 0
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("ff,tied", [("gated-gelu", False), ("relu", True)])
def test_logits_equal_transformers_both_ways(tmp_path, ff, tied):
    from lmforge.interop import export_hf, import_hf
    from lmforge.tasks import load_run

    hf = hf_t5(ff, tied)
    save_hf(hf, tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert run.config.model.feed_forward == ff and run.config.model.n_decoder_layer == 3
    ids, mask = _batch()
    dec = torch.randint(2, V, (3, 6))
    dec[:, 0] = 0
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        ours = run.model(ids, dec, attention_mask=mask)
    assert (ours - want).abs().max().item() < 1e-4
    export_hf(tmp_path / "run", tmp_path / "back")
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert config["architectures"] == ["T5ForConditionalGeneration"] and config["feed_forward_proj"] == ff
    back = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        again = back(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    assert (again - ours).abs().max().item() < 1e-4


def test_import_refuses_an_activation_it_cannot_reproduce(tmp_path):
    from lmforge.errors import LmforgeError
    from lmforge.interop import import_hf

    save_hf(hf_t5("gated-silu"), tmp_path / "hf")
    with pytest.raises(LmforgeError, match='feed_forward_proj = "gated-silu"'):
        import_hf(tmp_path / "hf", tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("settings", [
    dict(num_beams=1),
    dict(num_beams=3),
    dict(num_beams=4, length_penalty=0.6, no_repeat_ngram_size=2),
    dict(num_beams=3, length_penalty=2.0, early_stopping=True),
])
def test_decoding_equals_transformers_generate(settings):
    """Same tokens and (beam search) the same sequence scores within 1e-4, some beams ending with
    end-of-text and some at the length limit."""
    hf = hf_t5(eos_boost=2.0, decoder_layers=2)  # transformers' generate cache breaks with unequal depths
    model = T5(T5Config(vocab_size=V, n_layer=2, n_head=4, d_model=32, d_ff=48,
                        relative_buckets=8, relative_max_distance=20, dropout=0.0)).eval()
    from lmforge.interop import hf as hfmap  # the importer's own mapping

    model.load_state_dict(hfmap.from_hf_state(hf.state_dict(), model.config, hfmap.FAMILIES["t5"], "test"))
    ids, mask = _batch()
    d = Decoding(max_new_tokens=8, **settings)
    ours = decode_batch(model, ids, mask, d, eos=1, pad=0)
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                          return_dict_in_generate=True, output_scores=True, **settings)
    ended = 0
    for b, o in enumerate(ours):
        row = out.sequences[b, 1:].tolist()
        assert row[:len(o.ids)] == o.ids
        if o.hit_limit:
            assert len(o.ids) == 8
        else:
            assert row[len(o.ids)] == 1
            ended += 1
        if settings["num_beams"] > 1:
            assert abs(o.score - float(out.sequences_scores[b])) < 1e-4
    assert 0 < ended  # the end-of-text path is exercised
