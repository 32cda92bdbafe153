"""The playground page (`GET /`) in a real headless browser: Debian's Chromium driven by Playwright,
against a server on 127.0.0.1 started in the test.

What the page shows is compared with the server's or the library's own answer on the same tiny runs
(conftest `serve_runs`). Without a `chromium` on PATH the tests skip, unless LMFORGE_REQUIRE_BROWSER=1
(CI), where they fail. Nothing is downloaded: never `playwright install`.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from importlib import resources

import httpx
import pytest

from lmforge.generate import fill_mask
from lmforge.serve.app import Limits, create_app
from lmforge.tasks import load_run
from lmforge.tasks.classify import classify
from tests.conftest import ServerThread

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the `browser` fixture skips, or fails under LMFORGE_REQUIRE_BROWSER=1
    expect = sync_playwright = None

CSP = "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def chromium() -> str:
    """The system Chromium; skip (or fail under LMFORGE_REQUIRE_BROWSER=1) when it or Playwright is missing."""
    path = shutil.which("chromium")
    if path is None or sync_playwright is None:
        why = "needs Playwright (pip install playwright) and a `chromium` on PATH (apt-get install chromium)"
        if os.environ.get("LMFORGE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"LMFORGE_REQUIRE_BROWSER=1 but the browser tests cannot run: {why}")
        pytest.skip(why)
    return path


@pytest.fixture(scope="module")
def browser():
    executable = chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def runs(serve_runs):
    return {name: load_run(path) for name, path in serve_runs.items()}


def throttled(app, delay_s: float = 0.02):
    """`app` with each streamed body chunk sent `delay_s` after the last, as from a bigger model: the tiny
    runs are so fast that a whole answer can reach the browser in one read, and a stream that cannot be
    told from a single reply tests nothing."""

    async def wrapped(scope, receive, send):
        async def send_slowly(message):
            if message["type"] == "http.response.body" and message.get("more_body"):
                await asyncio.sleep(delay_s)
            await send(message)

        await app(scope, receive, send_slowly)

    return wrapped


@pytest.fixture(scope="module")
def url(runs):
    with ServerThread(throttled(create_app(runs, Limits(max_tokens=40)))) as url:
        yield url


@pytest.fixture
def page(browser):
    """A fresh page (own localStorage); `page.requests` lists every URL it asked for."""
    context = browser.new_context()
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.requests = []
    page.on("request", lambda r: page.requests.append(r.url))
    yield page
    context.close()


def load(page, url: str, model: str) -> None:
    page.goto(url)
    page.wait_for_selector(f"#model option[value='{model}']", state="attached")
    page.select_option("#model", model)


def screenshot(page, tmp_path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 5_000


def test_page_title(page, url):
    page.goto(url)
    assert page.title() == "lmforge playground"


@pytest.mark.parametrize("temperature, seed", [("0", ""), ("1", "7")], ids=["greedy", "seeded"])
def test_completion_streams_in_and_equals_the_api(page, url, tmp_path, temperature, seed):
    """The streamed text equals the whole answer for the same settings. The tiny runs' greedy text is all
    spaces, so a seeded sample checks visible text too."""
    load(page, url, "gpt")
    page.fill("#prompt", "the model reads")
    page.fill("#max-tokens", "40")
    page.fill("#temperature", temperature)
    page.fill("#seed", seed)
    # #output's length at every DOM change: a streamed answer is seen part-way.
    page.evaluate("""() => { const out = document.getElementById("output"); window.seen = [];
        new MutationObserver(() => window.seen.push(out.textContent.length))
            .observe(out, {childList: true, characterData: true, subtree: true}); }""")
    page.click("#run")
    expect(page.locator("#status")).to_have_text("finish_reason: length")
    shown = page.text_content("#output")
    body = {"model": "gpt", "prompt": "the model reads", "max_tokens": 40, "temperature": float(temperature),
            "top_p": 1, "top_k": 0, **({"seed": int(seed)} if seed else {})}
    whole = httpx.post(url + "/v1/completions", json=body, timeout=30).json()
    assert shown == whole["choices"][0]["text"] and shown
    if seed:
        assert shown.strip()
    assert any(0 < n < len(shown) for n in page.evaluate("window.seen")), "the text came in one piece"
    screenshot(page, tmp_path, "completion")


def test_stop_ends_the_stream(page, url):
    load(page, url, "gpt")
    page.fill("#max-tokens", "40")
    page.click("#run")
    page.wait_for_function("() => document.getElementById('output').textContent.length > 2")
    page.click("#stop")
    expect(page.locator("#status")).to_have_text("stopped")
    assert 2 < len(page.text_content("#output")) < 40
    expect(page.locator("#run")).to_be_enabled()
    expect(page.locator("#stop")).to_be_disabled()


def test_fill_mask_shows_the_top_tokens(page, url, runs, tmp_path):
    run = runs["bert"]
    text = f"the model {run.tokenizer.id_to_piece(run.tokenizer.mask_id)} text"
    load(page, url, "bert")
    page.fill("#mask-input", text)
    page.fill("#mask-top-k", "3")
    page.click("#run")
    expect(page.locator(".bar")).to_have_count(3)
    top = fill_mask(run.model, run.tokenizer, text, 3)[0][0][0]
    assert page.locator(".scored .label").first.text_content() == top
    assert page.locator(".scored.top .label").text_content() == top
    screenshot(page, tmp_path, "fill-mask")


def test_classify_highlights_the_predicted_label(page, url, runs, tmp_path):
    text = "the model reads good text"
    load(page, url, "clf")
    page.fill("#text", text)
    page.click("#run")
    want = classify(runs["clf"], [text])[0]
    expect(page.locator(".scored.top .label")).to_have_text(want["label"])
    assert page.locator(".bar").count() == len(want["probs"])
    assert page.text_content("#status") == f"predicted: {want['label']}"
    screenshot(page, tmp_path, "classify")


def test_errors_show_the_server_message(page, url, runs):
    load(page, url, "gpt")
    page.fill("#max-tokens", "41")  # the server allows 40
    page.click("#run")
    expect(page.locator("#status.error")).to_contain_text("max_tokens: must be 1 to 40 (the server's limit), got 41")
    assert page.text_content("#output") == ""
    page.select_option("#model", "bert")
    page.fill("#mask-input", "no mask here")
    page.click("#run")
    mask = runs["bert"].tokenizer.id_to_piece(runs["bert"].tokenizer.mask_id)
    expect(page.locator("#status.error")).to_contain_text(f"the text has no {mask} token")


def test_api_key_is_sent_and_kept(page, runs):
    with ServerThread(create_app({"gpt": runs["gpt"]}, api_key="s3cret")) as url:
        page.goto(url)
        expect(page.locator("#status.error")).to_contain_text("missing or wrong API key")
        page.fill("#api-key", "s3cret")
        page.locator("#api-key").blur()  # "change": stored, models loaded again with the key
        expect(page.locator("#model option")).to_have_count(1)
        page.fill("#max-tokens", "4")
        page.click("#run")
        expect(page.locator("#status")).to_have_text("finish_reason: length")
        page.reload()
        expect(page.locator("#api-key")).to_have_value("s3cret")
        expect(page.locator("#model option")).to_have_count(1)


def test_ner_and_qa_render_text_not_html(page):
    """NER and QA have no tiny run here: their answers are stubbed in the browser (page.route). Offsets
    are code points (Python's), so an emoji before the span must not shift it; markup stays text."""
    text = "Hi 👋 <b>Ada Lovelace</b> wrote code"
    start = text.index("Ada")
    answers = {
        "/v1/models": {"data": [{"id": "ner", "task": "ner", "endpoint": "/v1/ner"},
                                {"id": "qa", "task": "qa", "endpoint": "/v1/qa"}]},
        "/v1/ner": {"data": [{"index": 0, "entities": [
            {"entity": "PER", "text": "Ada Lovelace", "start": start, "end": start + 12, "score": 0.9}]}]},
        "/v1/qa": {"data": [{"index": 0, "answer": "Ada Lovelace", "score": 0.8, "start": start, "end": start + 12}]},
    }
    page_html = resources.files("lmforge.serve").joinpath("playground.html").read_text(encoding="utf-8")

    def serve(route):
        path = route.request.url.removeprefix("http://playground.test")
        if path == "/":
            return route.fulfill(body=page_html, content_type="text/html", headers={"Content-Security-Policy": CSP})
        route.fulfill(json=answers[path])

    page.route("http://playground.test/**", serve)
    page.goto("http://playground.test/")
    page.wait_for_selector("#model option[value='qa']", state="attached")
    page.select_option("#model", "ner")
    page.fill("#text", text)
    page.click("#run")
    expect(page.locator("#output mark")).to_have_text("Ada LovelacePER")
    assert page.locator("#output b").count() == 0 and "<b>" in page.text_content("#output")
    assert page.text_content("#output li") == "PER: Ada Lovelace (0.900)"
    page.select_option("#model", "qa")
    page.fill("#question", "Who wrote code?")
    page.fill("#context", text)
    page.click("#run")
    expect(page.locator("#output mark")).to_have_text("Ada Lovelace")
    assert page.text_content("#output h3") == "Ada Lovelace"
    assert page.text_content("#status") == "score 0.800"


def test_the_page_asks_only_its_own_server(page, url):
    html = httpx.get(url + "/").text
    assert not re.search(r"https?://|\b(src|href|action)\s*=|@import|url\(", html, re.I)
    problems = []
    page.on("console", lambda m: m.type == "error" and problems.append(m.text))  # a CSP refusal is logged here
    page.on("pageerror", lambda e: problems.append(str(e)))
    load(page, url, "clf")
    page.fill("#text", "the model reads bad text")
    page.click("#run")
    page.wait_for_selector(".scored.top")
    assert page.requests and all(r.startswith(url + "/") for r in page.requests), page.requests
    assert problems == []
