import pytest
import torch
import torch.nn as nn

from lmforge.errors import LmforgeError
from lmforge.generate import (
    apply_repetition_penalty,
    fill_mask,
    filter_top_p,
    generate,
    generate_ids,
    sample_next,
)
from lmforge.models import BertConfig, GPTConfig, RNNConfig, build_model

SPECIALS = ["<eot>", "[PAD]", "[MASK]", "[CLS]", "[SEP]"]


class ByteTokenizer:
    """Stand-in tokenizer: 5 special tokens, then one id per byte (so characters can span tokens)."""

    eot_id, pad_id, mask_id, cls_id, sep_id = range(5)
    vocab_size = 5 + 256

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for i, part in enumerate(text.split("[MASK]")):
            ids += [self.mask_id] if i else []
            ids += [5 + b for b in part.encode("utf-8")]
        return ids

    def decode(self, ids) -> str:
        out, buf = [], bytearray()
        for i in ids:
            if i >= 5:
                buf.append(i - 5)
                continue
            out.append(buf.decode("utf-8", errors="replace") + SPECIALS[i])
            buf = bytearray()
        return "".join(out) + buf.decode("utf-8", errors="replace")

    def id_to_piece(self, i: int) -> str:
        return SPECIALS[i] if i < 5 else chr(i - 5)

    def token_to_id(self, piece: str) -> int | None:
        return SPECIALS.index(piece) if piece in SPECIALS else 5 + ord(piece)


class Scripted(nn.Module):
    """A 'model' that always predicts the next token of a fixed script (ends with end-of-text)."""

    decoding = "recurrent"  # generates as an RNN does (the backbone contract)

    def __init__(self, script: list[int]):
        super().__init__()
        self.config = RNNConfig(vocab_size=261)
        self.script, self.anchor = script, nn.Parameter(torch.zeros(1))

    def init_state(self, batch_size, device=None):
        return torch.zeros(1, dtype=torch.long)

    def forward(self, ids, state):
        seen = int(state) + ids.size(1)  # prompt tokens + tokens generated so far
        logits = torch.full((1, ids.size(1), 261), -10.0)
        logits[0, -1, self.script[min(seen - self.prompt_len, len(self.script) - 1)]] = 10.0
        return logits, state + ids.size(1)


def scripted(text: str, prompt_len: int) -> Scripted:
    model = Scripted(ByteTokenizer().encode(text) + [ByteTokenizer.eot_id])
    model.prompt_len = prompt_len
    return model


def tiny_gpt(**kw):
    torch.manual_seed(0)
    base = dict(vocab_size=261, context_len=16, n_layer=2, n_head=2, d_model=32)
    return build_model(GPTConfig(**{**base, **kw}))


def naive_greedy(model, ids: list[int], n: int, window: int | None) -> list[int]:
    ids = list(ids)
    model.eval()
    with torch.no_grad():
        for _ in range(n):
            x = torch.tensor([ids[-window:] if window else ids])
            out = model(x)
            logits = out[0] if isinstance(out, tuple) else out
            ids.append(int(logits[0, -1].argmax()))
    return ids[-n:]


@pytest.mark.parametrize("kw", [dict(), dict(pos="rope", norm="rmsnorm", mlp="swiglu")])
def test_gpt_cache_equals_recompute_past_the_context(kw):
    model = tiny_gpt(**kw)
    prompt = [7, 8, 9, 10, 11]
    cached = generate_ids(model, prompt, max_new_tokens=30, greedy=True)  # 35 > context_len 16
    recomputed = generate_ids(model, prompt, max_new_tokens=30, greedy=True, use_cache=False)
    assert cached == recomputed == naive_greedy(model, prompt, 30, window=16)
    long_prompt = list(range(5, 45))  # longer than the context: the last 16 tokens are read
    assert generate_ids(model, long_prompt, 5, greedy=True) == naive_greedy(model, long_prompt, 5, 16)


def test_rnn_state_equals_recompute():
    torch.manual_seed(0)
    model = build_model(RNNConfig(vocab_size=261, n_layer=2, d_embed=16, d_hidden=16)).train()
    ours = generate_ids(model, [9, 10, 11], 12, greedy=True)
    assert model.training  # dropout is off while generating, and the mode is restored after
    assert ours == naive_greedy(model, [9, 10, 11], 12, None)


def test_sampling_top_k_one_is_greedy_and_seeds_reproduce():
    model = tiny_gpt()
    greedy = generate_ids(model, [5, 6], 12, greedy=True)
    assert generate_ids(model, [5, 6], 12, top_k=1, temperature=1.5) == greedy
    assert generate_ids(model, [5, 6], 12, temperature=0) == greedy
    a = generate_ids(model, [5, 6], 20, seed=3, top_p=0.95)
    assert a == generate_ids(model, [5, 6], 20, seed=3, top_p=0.95)
    assert a != generate_ids(model, [5, 6], 20, seed=4, top_p=0.95)


def test_repetition_penalty_is_ctrl_style():
    logits = torch.tensor([2.0, -2.0, 1.0, 0.5])
    out = apply_repetition_penalty(logits, torch.tensor([0, 1]), 2.0)
    torch.testing.assert_close(out, torch.tensor([1.0, -4.0, 1.0, 0.5]))
    assert sample_next(torch.tensor([2.0, 1.5]), greedy=True) == 0
    assert sample_next(torch.tensor([2.0, 1.5]), greedy=True, repetition_penalty=2.0,
                       prev_ids=torch.tensor([0])) == 1


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.tensor([0.15, 0.5, 0.05, 0.3]).log()
    kept = lambda p: set(torch.nonzero(filter_top_p(logits, p) > float("-inf")).flatten().tolist())
    assert kept(0.5) == {1}
    assert kept(0.7) == {1, 3}
    assert kept(0.81) == {1, 3, 0}
    assert kept(1.0) == {0, 1, 2, 3}


def test_stream_keeps_multibyte_characters_whole_and_stops_at_eot():
    tok = ByteTokenizer()
    text = "héllo 世界, done"
    pieces: list[str] = []
    out = generate(scripted(text, 2), tok, "ab", max_new_tokens=100, stream=pieces.append)
    assert out == text and "".join(pieces) == text
    assert len(pieces) > 5 and not any("\ufffd" in p for p in pieces)
    no_eot = generate(scripted(text, 2), tok, "ab", max_new_tokens=100, stop_at_eot=False)
    assert no_eot.startswith(text + "<eot>")


def test_stop_strings_cut_the_text_and_are_never_streamed():
    tok = ByteTokenizer()
    text = "one two\n\nthree four"
    pieces: list[str] = []
    out = generate(scripted(text, 1), tok, "x", stop=["\n\n", "zzz"], stream=pieces.append)
    assert out == "one two" and "".join(pieces) == "one two"
    assert generate(scripted(text, 1), tok, "x", stop=["four"]) == "one two\n\nthree "
    assert generate(scripted(text, 1), tok, "x", max_new_tokens=3) == "one"


def test_generation_errors():
    tok = ByteTokenizer()
    with pytest.raises(LmforgeError, match="temperature"):
        generate(tiny_gpt(), tok, "hi", temperature=-1)
    with pytest.raises(LmforgeError, match="top_p"):
        generate_ids(tiny_gpt(), [5], top_p=0)
    with pytest.raises(LmforgeError, match="fill-mask for bert"):
        generate(build_model(BertConfig(vocab_size=261)), tok, "hi")
    assert len(generate_ids(tiny_gpt(), [], 3, greedy=True, eot_id=0)) <= 3
    with pytest.raises(LmforgeError, match="empty prompt"):
        generate_ids(tiny_gpt(), [], 3)


def test_fill_mask_ranks_each_mask():
    tok = ByteTokenizer()
    torch.manual_seed(0)
    model = build_model(BertConfig(vocab_size=261, context_len=32, n_layer=1, n_head=2, d_model=32))
    text = "ab [MASK] cd [MASK]"
    result = fill_mask(model, tok, text, top_k=4)
    assert len(result) == 2 and all(len(r) == 4 for r in result)
    model.eval()
    ids = [tok.cls_id, *tok.encode(text), tok.sep_id]
    with torch.no_grad():
        probs = model(torch.tensor([ids]))[0].softmax(-1)
    for row, pos in zip(result, [i for i, t in enumerate(ids) if t == tok.mask_id]):
        values = [p for _, p in row]
        assert values == sorted(values, reverse=True)
        assert values[0] == pytest.approx(probs[pos].max().item(), rel=1e-5)
        assert row[0][0] == tok.decode([int(probs[pos].argmax())]).strip()


def test_fill_mask_errors():
    tok = ByteTokenizer()
    bert = build_model(BertConfig(vocab_size=261, context_len=8, n_layer=1, n_head=2, d_model=16))
    with pytest.raises(LmforgeError, match=r"add \[MASK\] where a word should be predicted"):
        fill_mask(bert, tok, "no mask here")
    with pytest.raises(LmforgeError, match="at most 8"):
        fill_mask(bert, tok, "a long text with a [MASK] in it")
    with pytest.raises(LmforgeError, match="masked language model"):
        fill_mask(tiny_gpt(), tok, "a [MASK]")
