"""Serving throughput and latency: `lmforge serve` against transformers' simplest route, side by side.

The same GPT is served two ways, one server at a time on this machine, each in its own process:
  lmforge       `python -m lmforge serve RUN` (requests batched: they join and leave a running batch)
  transformers  the run exported with `lmforge export --format hf`, `pipeline("text-generation")` behind
                a FastAPI app (written below), one request at a time: what a user writes first
Clients (httpx, asyncio, in this process) send non-streamed completions, C at a time for C in --clients,
--requests each; prompts are seeded WikiText-2 / generated lines, sampling at temperature 1 with a seed per
request, max_tokens --max-tokens on both sides. Reported per server and C: generated tokens per second
(the usage counts of all answers over the wall time of the round), p50 / p95 latency of one request, and
the ratios asked for: lmforge at 16 clients against lmforge at 1, and against transformers at 16.

Usage:
  python bench/serve_bench.py [--run RUN] [--clients 1 4 16] [--requests 8] [--max-tokens 64] [--threads 2]
Without --run, `lmforge quickstart --out WORK/quickstart` makes the GPT (gpt-tiny, about two minutes).
Rows go to WORK/results.json (WORK: --work, default bench/_work/serve).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the model reads text and learns to predict the next token from every one before it while data "
         "flows through a tokenizer into shards that training reads quickly on any machine").split()


def hf_app(model_dir: str):
    """transformers' route: a text-generation pipeline behind FastAPI, one request at a time."""
    import threading

    import torch
    from fastapi import FastAPI
    from transformers import pipeline, set_seed

    generator = pipeline("text-generation", model=model_dir, device="cpu")
    lock = threading.Lock()
    app = FastAPI()

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.post("/v1/completions")
    def complete(body: dict):  # a sync endpoint: FastAPI runs it in a thread; the lock keeps one at a time
        with lock, torch.inference_mode():
            set_seed(body.get("seed", 0))
            out = generator(body["prompt"], max_new_tokens=body["max_tokens"], do_sample=True,
                            temperature=body.get("temperature", 1.0), return_full_text=False)
            text = out[0]["generated_text"]
        tokens = len(generator.tokenizer(text)["input_ids"])
        return {"choices": [{"text": text, "index": 0}], "usage": {"completion_tokens": tokens}}

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], port: int, env: dict, log: Path) -> subprocess.Popen:
    import httpx

    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.3)
    raise SystemExit(f"server did not start: see {log}")


def prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(n)]


async def round_(url: str, model: str, clients: int, requests: int, max_tokens: int) -> dict:
    import httpx

    texts = prompts(clients * requests, seed=clients)
    latencies, tokens = [], 0

    async def client(http: httpx.AsyncClient, c: int) -> None:
        nonlocal tokens
        for i in range(requests):
            body = {"model": model, "prompt": texts[c * requests + i], "max_tokens": max_tokens,
                    "temperature": 1.0, "seed": c * requests + i}
            t0 = time.perf_counter()
            r = await http.post(url + "/v1/completions", json=body)
            latencies.append(time.perf_counter() - t0)
            r.raise_for_status()
            tokens += r.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(timeout=600) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http, c) for c in range(clients)))
        wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=20, method="inclusive")
    return {"clients": clients, "requests": len(latencies), "tokens": tokens, "wall": wall,
            "tokens_per_s": tokens / wall, "p50": statistics.median(latencies), "p95": q[18]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", help="a GPT run folder (default: made by lmforge quickstart)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=8, help="requests per client in each round")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="torch threads of each server")
    p.add_argument("--work", type=Path, default=ROOT / "bench" / "_work" / "serve")
    p.add_argument("--hf-server", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.hf_server:
        import torch
        import uvicorn

        torch.set_num_threads(a.threads)
        uvicorn.run(hf_app(a.hf_server), host="127.0.0.1", port=a.port, log_level="warning")
        return
    a.work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1"}
    lm = [sys.executable, "-m", "lmforge"]
    run = Path(a.run) if a.run else a.work / "quickstart" / "run"
    if not a.run and not (run / "config.toml").is_file():
        subprocess.run(lm + ["quickstart", "--out", str(a.work / "quickstart"), "--fresh"], check=True, env=env)
    export = a.work / "hf-export"
    if not (export / "config.json").is_file():
        subprocess.run(lm + ["export", str(run), "--format", "hf", "--out", str(export), "--overwrite"], check=True,
                       env=env, stdout=subprocess.DEVNULL)
    servers = {"lmforge": lambda port: lm + ["serve", f"gpt={run}", "--port", str(port), "--device", "cpu",
                                             "--max-batch", str(max(a.clients))],
               "transformers": lambda port: [sys.executable, __file__, "--hf-server", str(export), "--port", str(port),
                                             "--threads", str(a.threads)]}
    rows = []
    for name, command in servers.items():
        port = free_port()
        proc = start(command(port), port, env, a.work / f"{name}.log")
        try:
            url = f"http://127.0.0.1:{port}"
            asyncio.run(round_(url, "gpt", 2, 2, a.max_tokens))  # warm-up, not reported
            for c in a.clients:
                row = {"server": name, **asyncio.run(round_(url, "gpt", c, a.requests, a.max_tokens))}
                rows.append(row)
                print(f"{name:12s} {c:3d} clients: {row['tokens_per_s']:8.1f} tokens/s, p50 {row['p50']:6.2f} s, "
                      f"p95 {row['p95']:6.2f} s ({row['requests']} requests, {row['tokens']} tokens, "
                      f"{row['wall']:.1f} s)", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    by = {(r["server"], r["clients"]): r["tokens_per_s"] for r in rows}
    top, low = max(a.clients), min(a.clients)
    print(f"lmforge {top} clients / lmforge {low} client(s): {by['lmforge', top] / by['lmforge', low]:.2f}x; "
          f"lmforge {top} / transformers {top}: {by['lmforge', top] / by['transformers', top]:.2f}x")
    (a.work / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()},
                                                     "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
