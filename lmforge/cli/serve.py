"""`lmforge serve RUN [NAME=RUN ...]`: an OpenAI-compatible API and a playground page (lmforge/serve/)."""

from __future__ import annotations

import argparse
import sys

from lmforge.cli.args import add_checkpoint, add_device, run_path
from lmforge.errors import LmforgeError


def named_runs(specs: list[str]) -> dict[str, str]:
    """{name: run reference}: NAME=RUN, else the folder's name (hf:DIR: the directory's name)."""
    from pathlib import Path

    out: dict[str, str] = {}
    for spec in specs:
        name, sep, ref = spec.partition("=")
        if not sep or ref == "" or name.startswith("hf:"):
            name, ref = Path(spec.removeprefix("hf:").rstrip("/")).name, spec
        if not name or any(c in name for c in " /?#"):
            raise LmforgeError(f"{spec!r}: a model name may not be empty or hold spaces, '/', '?' or '#': "
                               "name it with NAME=RUN")
        if name in out:
            raise LmforgeError(f"two runs would be served as {name!r} ({out[name]} and {ref}): name one with NAME=RUN")
        out[name] = ref
    return out


def load_runs(specs: list[str], checkpoint: str, device: str) -> dict:
    """Every run loaded, refused up front (one line, nothing started) when one cannot be served."""
    from lmforge.serve.app import ENDPOINTS
    from lmforge.tasks import load_run

    runs = {}
    for name, ref in named_runs(specs).items():
        run = load_run(run_path(ref), checkpoint, device)
        if run.task.inference not in ENDPOINTS:
            raise LmforgeError(f"{ref} is a {run.task.name} run, which no endpoint serves: use it with "
                               f"`lmforge {run.task.inference} --from {ref}`")
        fresh = run.untrained_lm_head() if run.task.inference in ("generate", "fill-mask") else []
        if fresh:
            raise LmforgeError(f"{ref} was imported without its language-model head ({fresh[0]}, ... are a fresh "
                               "initialisation): serving it would return noise; train the head first")
        runs[name] = run
    return runs


def cmd_serve(args: argparse.Namespace) -> int:
    from lmforge.extras import require

    require("fastapi", "lmforge serve")
    require("uvicorn", "lmforge serve")
    import uvicorn

    from lmforge.serve.app import Limits, create_app

    limits = Limits(max_tokens=args.max_tokens, max_n=args.max_n, max_prompts=args.max_prompts,
                    max_prompt_tokens=args.max_prompt_tokens, max_inputs=args.max_inputs,
                    max_body_bytes=args.max_body_bytes, max_batch=args.max_batch)
    for name in ("max_tokens", "max_n", "max_prompts", "max_prompt_tokens", "max_inputs", "max_body_bytes",
                 "max_batch"):
        if getattr(limits, name) < 1:
            raise LmforgeError(f"--{name.replace('_', '-')} must be >= 1")
    runs = load_runs(args.runs, args.checkpoint, args.device)
    app = create_app(runs, limits, args.api_key)
    for name, run in runs.items():
        print(f"lmforge: serving {name} ({run.task.name}, {run.run_dir}, step {run.step}; {run.precision})",
              file=sys.stderr)
    open_ = "" if args.host in ("127.0.0.1", "localhost", "::1") else " (reachable from other machines)"
    key = "; /v1 needs the API key" if args.api_key else ""
    print(f"lmforge: playground at http://{args.host}:{args.port}/ {open_}{key}", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def register(sub) -> None:
    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP API and a playground page for runs")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (or hf:DIR), each NAME=RUN to name it "
                                                          "(default: the folder's name)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every /v1 call")
    p.add_argument("--max-batch", type=int, default=16, help="generation rows per model; more requests wait")
    p.add_argument("--max-tokens", type=int, default=512, help="largest max_tokens a request may ask for")
    p.add_argument("--max-n", type=int, default=8, help="largest n (choices per prompt)")
    p.add_argument("--max-prompts", type=int, default=32, help="prompts per completion request")
    p.add_argument("--max-prompt-tokens", type=int, default=4096, help="longest prompt in tokens")
    p.add_argument("--max-inputs", type=int, default=64, help="texts per classify / ner / qa request")
    p.add_argument("--max-body-bytes", type=int, default=1_000_000, help="largest request body")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    add_checkpoint(p)
    add_device(p)
    p.set_defaults(func=cmd_serve)
