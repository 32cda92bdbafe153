"""`lmforge serve` as a user starts it: a real process, then `curl`-style calls; and its refusals."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from lmforge.cli.serve import named_runs
from lmforge.errors import LmforgeError
from tests.conftest import free_port


def test_names(tmp_path):
    assert named_runs(["runs/gpt", "small=runs/gpt", "hf:models/MiniLM/"]) == {
        "gpt": "runs/gpt", "small": "runs/gpt", "MiniLM": "hf:models/MiniLM/"}
    with pytest.raises(LmforgeError, match="two runs would be served as 'gpt'"):
        named_runs(["a/gpt", "b/gpt"])
    with pytest.raises(LmforgeError, match="may not be empty or hold spaces"):
        named_runs(["my model=runs/gpt"])


def test_refusals_are_one_line(cli, serve_runs, tmp_path):
    code, _, err = cli("serve", serve_runs["gpt"], f"x={serve_runs['gpt']}", "--max-batch", "0")
    assert code == 2 and err.strip() == "lmforge: error: --max-batch must be >= 1"
    code, _, err = cli("serve", tmp_path / "missing")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "missing" in err


def test_the_command_serves_until_stopped(serve_runs):
    port = free_port()
    cmd = [sys.executable, "-m", "lmforge", "serve", f"tiny={serve_runs['gpt']}", serve_runs["clf"], "--port",
           str(port), "--api-key", "k", "--device", "cpu"]
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "the server did not answer within 60 s"
            time.sleep(0.2)
        auth = {"Authorization": "Bearer k"}
        r = httpx.post(url + "/v1/completions", headers=auth, json={"model": "tiny", "prompt": "the", "max_tokens": 5})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 5
        r = httpx.post(url + "/v1/classify", headers=auth, json={"model": "clf", "input": "the model reads good text"})
        assert r.status_code == 200 and r.json()["data"][0]["label"] in ("positive", "negative")
        assert httpx.get(url + "/v1/models").status_code == 401
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "serving tiny (causal_lm" in err and f"playground at http://127.0.0.1:{port}/" in err
