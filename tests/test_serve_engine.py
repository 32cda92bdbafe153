"""The server's batched generation: requests that share decode steps get exactly what each would alone.

Models are tiny and random (seeded): greedy continuations of several prompts of different lengths, run
together through one `Engine` (joining and leaving between steps), must equal `generate_ids` run on each
prompt alone, for GPT (learned positions; RoPE with grouped KV heads) and RNN (LSTM, GRU).
"""

from __future__ import annotations

import queue
import threading

import pytest
import torch

from lmforge.generate import generate_ids
from lmforge.models import GPT, RNNLM, GPTConfig, RNNConfig
from lmforge.serve.engine import Engine, Request, Sampling

MODELS = {
    "gpt-learned": lambda: GPT(GPTConfig(vocab_size=50, context_len=48, n_layer=2, n_head=2, d_model=16)),
    "gpt-rope-gqa": lambda: GPT(GPTConfig(vocab_size=50, context_len=48, n_layer=2, n_head=4, n_kv_head=2,
                                          d_model=32, pos="rope", norm="rmsnorm", mlp="swiglu", bias=False)),
    "lstm": lambda: RNNLM(RNNConfig(vocab_size=50, n_layer=2, d_embed=16, d_hidden=16, cell="lstm")),
    "gru": lambda: RNNLM(RNNConfig(vocab_size=50, n_layer=1, d_embed=16, d_hidden=16, cell="gru")),
}


def collect(requests_args, engine) -> list[tuple[list[int], str]]:
    """Submit every (ids, sampling) at once; wait for each to finish; (tokens, finish reason) per request."""
    events: queue.Queue = queue.Queue()
    for i, (ids, sampling) in enumerate(requests_args):
        engine.submit(Request(ids, sampling, lambda kind, value, i=i: events.put((i, kind, value))))
    out = [([], None) for _ in requests_args]
    done = 0
    while done < len(requests_args):
        i, kind, value = events.get(timeout=30)
        assert kind != "error", value
        if kind == "token":
            out[i][0].append(value)
        else:
            out[i] = (out[i][0], value)
            done += 1
    return out


@pytest.mark.parametrize("name", list(MODELS))
def test_batched_greedy_equals_one_at_a_time(name):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10, 11], [12, 13], [7, 7, 7, 7], [3, 1]]
    lengths = [10, 3, 8, 15, 1, 6]  # requests leave at different steps, others take their rows
    expected = [generate_ids(model, p, max_new_tokens=n, greedy=True) for p, n in zip(prompts, lengths)]
    engine = Engine(model, eot_id=None, max_batch=3)  # fewer rows than requests: some wait for a row
    try:
        got = collect([(p, Sampling(max_tokens=n, temperature=0)) for p, n in zip(prompts, lengths)], engine)
    finally:
        engine.close()
    assert [tokens for tokens, _ in got] == expected
    assert all(reason == "length" for _, reason in got)
    assert engine.stats()["active"] == 0 and engine.steps < sum(lengths)  # steps were shared


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch():
    torch.manual_seed(0)
    model = MODELS["gpt-learned"]().eval()
    s = Sampling(max_tokens=12, temperature=0.9, top_k=20, top_p=0.95, repetition_penalty=1.2, seed=5)
    engine = Engine(model, eot_id=None, max_batch=4)
    try:
        alone = collect([([1, 2, 3], s)], engine)[0][0]
        crowd = collect([([9, 8], Sampling(max_tokens=5, temperature=1.0, seed=1)), ([1, 2, 3], s),
                         ([4, 4, 4], Sampling(max_tokens=20, temperature=0))], engine)
    finally:
        engine.close()
    assert crowd[1][0] == alone
    assert crowd[0][0] == generate_ids(model, [9, 8], max_new_tokens=5, temperature=1.0, seed=1)  # shared softmax
    assert alone == generate_ids(model, [1, 2, 3], max_new_tokens=12, temperature=0.9, top_k=20, top_p=0.95,
                                 repetition_penalty=1.2, seed=5)


def test_end_of_text_and_context_end_finish_requests():
    torch.manual_seed(0)
    model = MODELS["gpt-learned"]().eval()
    greedy = generate_ids(model, [1, 2], max_new_tokens=6, greedy=True)
    engine = Engine(model, eot_id=greedy[3], max_batch=2)
    try:
        (tokens, reason), (long_tokens, long_reason) = collect(
            [([1, 2], Sampling(max_tokens=20, temperature=0)), (list(range(1, 46)), Sampling(max_tokens=20,
                                                                                              temperature=0))],
            engine)
    finally:
        engine.close()
    assert tokens == greedy[:greedy.index(greedy[3])] and reason == "stop"
    # 45 prompt tokens in a 48-position context: 3 more are fed, the 4th new token ends it
    assert len(long_tokens) == 4 and long_reason == "length"


def test_cancelled_requests_free_their_rows():
    torch.manual_seed(0)
    model = MODELS["gpt-learned"]().eval()
    engine = Engine(model, eot_id=None, max_batch=2)
    started = threading.Event()
    hog = Request([1, 2], Sampling(max_tokens=10_000, temperature=0), lambda kind, value: started.set())
    try:
        engine.submit(hog)
        assert started.wait(10)
        hog.cancel()
        got = collect([([3], Sampling(max_tokens=4, temperature=0)), ([4], Sampling(max_tokens=4, temperature=0))],
                      engine)
    finally:
        engine.close()
    assert [len(t) for t, _ in got] == [4, 4] and engine.stats()["active"] == 0 and hog.generated < 10_000
