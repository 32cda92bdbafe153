"""`lmforge serve`: the real `openai` client and httpx against a server on 127.0.0.1 started in the test.

Tiny trained runs (conftest `serve_runs`); what the server answers is compared with the library's own
generate / fill_mask / classify on the same run, so a test fails when the server changes a result.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from lmforge.generate import fill_mask, generate
from lmforge.tasks import load_run
from lmforge.tasks.classify import classify
from tests.conftest import ServerThread

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def runs(serve_runs, tmp_path_factory):
    """conftest's gpt, rnn, bert and classifier, plus ner and qa heads on that bert and a tiny t5."""
    from conftest import make_english, make_shards

    from lmforge.cli import main
    from lmforge.tokenizer import TokenizerConfig

    root = tmp_path_factory.mktemp("serve_more")
    people, places = ["Alice Smith", "Bob Jones", "Carol White"], ["Paris", "New York", "Berlin"]
    conll, paragraphs = [], []
    for i in range(60):
        person, place = people[i % 3].split(), places[i % 3].split()
        words = [*person, "flew", "to", *place, "today"]
        tags = ["I-PER"] * len(person) + ["O", "O"] + ["I-LOC"] * len(place) + ["O"]
        conll += [f"{w} NNP I-NP {t}" for w, t in zip(words, tags)] + [""]
        context = f"The story is short. {people[i % 3]} lives in {places[i % 3]} now."
        answer = {"text": places[i % 3], "answer_start": context.index(places[i % 3])}
        question = {"id": f"q{i}", "question": f"Where does {people[i % 3]} live?", "answers": [answer]}
        paragraphs.append({"context": context, "qas": [question]})
    (root / "ner.txt").write_text("\n".join(conll) + "\n")
    (root / "squad.json").write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}))
    for task, data, extra in (("ner", "ner.txt", []), ("qa", "squad.json", ["--max_query_length", "16"])):
        assert main([str(a) for a in ["finetune", "--task", task, "--from", serve_runs["bert"], "--train", root / data,
                                      "--dev", root / data, "--out", root / task, "--max_steps", "6", "--quiet",
                                      *extra]]) == 0
    (root / "t5data").mkdir()
    shards = make_shards(root / "t5data", make_english(120, seed=5), 12, TokenizerConfig(kind="bpe", vocab_size=300,
                                                                                         extra_ids=10))
    assert main([str(a) for a in ["pretrain", "--config", "t5-tiny", "--data", shards, "--out", root / "t5",
                                  "--set", "train.max_steps=4", "--set", "train.batch_size=4", "--set",
                                  "data.seq_len=32", "--set", "train.eval_every=0", "--set", "train.save_every=4",
                                  "--set", "train.progress=false"]]) == 0
    paths = {**serve_runs, "ner": root / "ner", "qa": root / "qa", "t5": root / "t5"}
    return {name: load_run(path) for name, path in paths.items()}


@pytest.fixture(scope="module")
def server(runs):
    from lmforge.serve.app import Limits, create_app

    app = create_app(runs, Limits(max_tokens=40, max_n=4, max_body_bytes=20_000, max_batch=8))
    with ServerThread(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0)


def expected(run, prompt: str, n: int, **kw) -> str:
    return generate(run.model, run.tokenizer, prompt, max_new_tokens=n, **kw)


@pytest.mark.parametrize("model", ["gpt", "rnn"])
def test_completion_equals_the_library(client, runs, model):
    r = client.completions.create(model=model, prompt="the model reads", max_tokens=12, temperature=0)
    assert r.choices[0].text == expected(runs[model], "the model reads", 12, greedy=True)
    assert r.choices[0].finish_reason == "length" and r.object == "text_completion" and r.model == model
    assert r.usage.prompt_tokens == len(runs[model].tokenizer.encode("the model reads"))
    assert r.usage.completion_tokens == 12 and r.usage.total_tokens == r.usage.prompt_tokens + 12


def test_streaming_joins_to_the_whole_answer(client, runs):
    chunks = list(client.completions.create(model="gpt", prompt="data flows", max_tokens=20, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == expected(runs["gpt"], "data flows", 20, greedy=True) and len(chunks) > 3
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20


def test_sampling_settings_n_prompts_and_seed(client, runs):
    kw = dict(model="gpt", max_tokens=10, temperature=0.8, top_p=0.9, seed=3, n=2,
              extra_body={"top_k": 20, "repetition_penalty": 1.2})
    a = client.completions.create(prompt=["the model", "small steps"], **kw)
    b = client.completions.create(prompt=["the model", "small steps"], **kw)
    assert [c.text for c in a.choices] == [c.text for c in b.choices] and [c.index for c in a.choices] == [0, 1, 2, 3]
    run = runs["gpt"]
    for i, (prompt, seed) in enumerate([("the model", 3), ("the model", 4), ("small steps", 3), ("small steps", 4)]):
        assert a.choices[i].text == expected(run, prompt, 10, temperature=0.8, top_p=0.9, top_k=20,
                                             repetition_penalty=1.2, seed=seed)


def test_stop_strings_cut_the_text(client, runs):
    full = expected(runs["gpt"], "the model reads", 30, temperature=1.0, seed=7)
    stop = next(full[i:i + 2] for i in range(6, len(full) - 2) if full[i:i + 2].strip())
    kw = dict(model="gpt", prompt="the model reads", max_tokens=30, temperature=1.0, seed=7, stop=[stop])
    r = client.completions.create(**kw)
    assert r.choices[0].text == full[:full.find(stop)] and r.choices[0].finish_reason == "stop"
    streamed = client.completions.create(**kw, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == r.choices[0].text


def test_openai_errors(client):
    with pytest.raises(openai.NotFoundError, match="'nope' is not served"):
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="max_tokens: must be 1 to 40"):
        client.completions.create(model="gpt", prompt="x", max_tokens=41)
    with pytest.raises(openai.BadRequestError, match="n: must be 1 to 4"):
        client.completions.create(model="gpt", prompt="x", max_tokens=2, n=5)
    with pytest.raises(openai.BadRequestError, match="context is 64 tokens"):
        client.completions.create(model="gpt", prompt="the model reads " * 5, max_tokens=40)
    with pytest.raises(openai.BadRequestError, match="'echo' is not supported"):
        client.completions.create(model="gpt", prompt="x", max_tokens=2, echo=True)
    with pytest.raises(openai.BadRequestError, match="is a classify run: call /v1/classify"):
        client.completions.create(model="clf", prompt="x", max_tokens=2)


def post(url: str, path: str, body, **kw) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(url + path, content=content, headers={"content-type": "application/json"}, timeout=30, **kw)


@pytest.mark.parametrize("body, status, says", [
    (b"{not json", 400, "not valid JSON"),
    ({"model": "gpt", "prompt": "x", "max_tokens": "5"}, 400, "max_tokens: Input should be a valid integer"),
    ({"model": "gpt", "prompt": "x", "temprature": 0.5}, 400, "temprature: is not a field of this endpoint"),
    ({"model": "gpt"}, 400, "prompt: is required"),
    ({"model": "gpt", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop: give at most 4"),
    ({"model": "gpt", "prompt": ["x"] * 40}, 400, "prompt: give 1 to 32 prompts"),
    ({"model": "gpt", "prompt": "x" * 30_000}, 413, "larger than the server's limit of 20000 bytes"),
    ([1, 2], 400, "Input should be a valid dictionary"),
])
def test_bad_requests_get_4xx_with_an_openai_error(server, body, status, says):
    r = post(server[0], "/v1/completions", body)
    assert r.status_code == status and says in r.json()["error"]["message"], r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_no_path_reads_other_files(server):
    url = server[0]
    assert "<title>lmforge playground</title>" in httpx.get(url + "/").text
    for path in ("/../../etc/passwd", "/static/../app.py", "/%2e%2e/%2e%2e/etc/passwd", "/playground.html",
                 "/serve/app.py", "/v1/../../pyproject.toml"):
        r = httpx.get(url + path)
        assert r.status_code == 404 and "root:" not in r.text and "error" in r.json(), path


def test_api_key(runs):
    from lmforge.serve.app import create_app

    with ServerThread(create_app({"gpt": runs["gpt"]}, api_key="s3cret")) as url:
        with pytest.raises(openai.AuthenticationError, match="API key"):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert [m.id for m in good.models.list().data] == ["gpt"]
        assert httpx.get(url + "/health").json()["status"] == "ok"  # not under /v1: no key needed
        assert httpx.post(url + "/v1/completions", json={"model": "gpt", "prompt": "x"}).status_code == 401


def test_models_and_health(client, server, runs):
    models = {m.id: m for m in client.models.list().data}
    assert {k: m.task for k, m in models.items()} == {"gpt": "causal_lm", "rnn": "bptt", "bert": "masked_lm",
                                                      "clf": "classify", "ner": "ner", "qa": "qa",
                                                      "t5": "span_corruption"}
    assert models["bert"].endpoint == "/v1/fill-mask" and models["gpt"].context_length == 64
    assert models["bert"].mask_token == runs["bert"].tokenizer.id_to_piece(runs["bert"].tokenizer.mask_id)
    health = httpx.get(server[0] + "/health").json()
    assert health["status"] == "ok" and health["models"]["gpt"]["active"] == 0


def test_fill_mask_and_classify_equal_the_library(server, runs):
    url = server[0]
    mask = runs["bert"].tokenizer.id_to_piece(runs["bert"].tokenizer.mask_id)
    text = f"the model {mask} text"
    r = post(url, "/v1/fill-mask", {"model": "bert", "input": text, "top_k": 3}).json()
    want = fill_mask(runs["bert"].model, runs["bert"].tokenizer, text, 3)
    assert [[(c["token"], round(c["score"], 5)) for c in m["candidates"]] for m in r["data"]] == \
        [[(t, round(p, 5)) for t, p in m] for m in want]
    texts = ["the model reads good text", "the model reads bad text"]
    r = post(url, "/v1/classify", {"model": "clf", "input": texts}).json()
    want = classify(runs["clf"], texts)
    assert [d["label"] for d in r["data"]] == [w["label"] for w in want]
    assert r["data"][0]["scores"] == pytest.approx(want[0]["probs"], abs=1e-6)
    bad = post(url, "/v1/fill-mask", {"model": "bert", "input": "no mask here"})
    assert bad.status_code == 400 and mask in bad.json()["error"]["message"]
    bad = post(url, "/v1/classify", {"model": "clf", "input": ["a", "b"], "input_pair": ["c"]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input_pair"


def test_ner_qa_and_t5_equal_the_library(server, runs, client):
    from lmforge.generate_seq2seq import Decoding, translate
    from lmforge.tasks.ner import ner
    from lmforge.tasks.qa import qa

    url = server[0]
    texts = ["Alice Smith flew to Berlin today", "Bob Jones flew to Paris today"]
    r = post(url, "/v1/ner", {"model": "ner", "input": texts}).json()
    assert [d["entities"] for d in r["data"]] == ner(runs["ner"], texts)
    question, context = "Where does Carol White live?", "The story is short. Carol White lives in Berlin now."
    r = post(url, "/v1/qa", {"model": "qa", "question": question, "context": context}).json()
    assert {k: v for k, v in r["data"][0].items() if k != "index"} == qa(runs["qa"], [question], [context])[0]
    t5 = runs["t5"]
    r = client.completions.create(model="t5", prompt="the model reads text", max_tokens=8)
    want = translate(t5.model, t5.tokenizer, ["the model reads text"], Decoding(max_new_tokens=8), "",
                     t5.config.model.context_len)[0]
    assert r.choices[0].text == want.text and r.usage.completion_tokens == want.tokens
    with pytest.raises(openai.BadRequestError, match="stop: is not supported for encoder-decoder"):
        client.completions.create(model="t5", prompt="x", max_tokens=4, stop=["a"])


def test_a_client_that_leaves_mid_stream_frees_its_row(server):
    url, app = server
    engine = app.state.served["gpt"].engine
    with httpx.stream("POST", url + "/v1/completions", json={"model": "gpt", "prompt": "the", "max_tokens": 40,
                                                               "temperature": 1.0, "stream": True}) as r:
        first = next(r.iter_lines())
        assert first.startswith("data: ")
    for _ in range(200):
        if engine.stats()["active"] == 0:
            break
        asyncio.run(asyncio.sleep(0.05))
    assert engine.stats()["active"] == 0 and engine.stats()["waiting"] == 0


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def test_load_16_clients_x_8_streams(server):
    """Bounded load: 16 concurrent clients, 8 streamed requests each: no errors, every stream complete,
    shared decode steps, and the server's memory (this process) flat once warm."""
    url, app = server
    engine = app.state.served["gpt"].engine

    async def one_client(client: httpx.AsyncClient, c: int) -> list[tuple[str, str | None, bool]]:
        out = []
        for i in range(8):
            text, reason, done = "", None, False
            body = {"model": "gpt", "prompt": f"document {c} {i}", "max_tokens": 16, "temperature": 0.9,
                    "seed": c * 8 + i, "stream": True}
            async with client.stream("POST", url + "/v1/completions", json=body) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if line == "data: [DONE]":
                        done = True
                    elif line.startswith("data: "):
                        chunk = json.loads(line[6:])
                        assert "error" not in chunk, chunk
                        text += chunk["choices"][0]["text"]
                        reason = chunk["choices"][0]["finish_reason"] or reason
            out.append((text, reason, done))
        return out

    async def load() -> list:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(one_client(client, c) for c in range(16)))

    asyncio.run(load())  # warm: allocations, first-call paths
    before, steps, tokens = rss_mb(), engine.steps, engine.tokens
    results = [r for client in asyncio.run(load()) for r in client]
    after = rss_mb()
    assert len(results) == 128 and all(done and reason in ("stop", "length") for _, reason, done in results)
    made = engine.tokens - tokens
    assert engine.steps - steps < made / 4, "concurrent requests should share decode steps"
    assert after - before < 40, f"server memory grew {after - before:.1f} MB under load"
    assert engine.stats()["active"] == 0
