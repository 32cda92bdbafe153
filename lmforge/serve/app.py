"""`lmforge serve`: an OpenAI-compatible HTTP API over loaded runs, and the playground page.

| method, path | what |
| --- | --- |
| GET / | the playground: one static page (HTML + JS in the package, nothing fetched from outside) |
| GET /health | `{"status": "ok", "models": {name: {"task", "endpoint", "active", "waiting"}}}` |
| GET /v1/models | OpenAI's model list; each model also has its `task` and the `endpoint` that serves it |
| POST /v1/completions | GPT and RNN runs (batched), T5 runs (source -> output): completions.py |
| POST /v1/fill-mask | masked LMs: `{model, input, top_k}` -> the top tokens of each mask |
| POST /v1/classify | classifiers: `{model, input, input_pair?}` -> label and probabilities per text |
| POST /v1/ner | token classifiers: `{model, input, aggregation?}` -> entities with character spans |
| POST /v1/qa | extractive QA: `{model, question, context}` -> answer, score, span |

Errors are OpenAI's shape (errors.py). Only the page above is served: there is no static folder, so
no path can read anything else on disk.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse

from lmforge.errors import LmforgeError
from lmforge.serve.completions import complete
from lmforge.serve.engine import Engine
from lmforge.serve.errors import ApiError, Guard, check
from lmforge.serve.schemas import ClassifyRequest, CompletionRequest, FillMaskRequest, NerRequest, QARequest

log = logging.getLogger("lmforge.serve")

ENDPOINTS = {"generate": "/v1/completions", "fill-mask": "/v1/fill-mask", "classify": "/v1/classify",
             "ner": "/v1/ner", "qa": "/v1/qa"}
"""A run's inference (its task's `inference`) -> the endpoint that serves it."""


@dataclass(frozen=True)
class Limits:
    max_tokens: int = 512
    """Largest `max_tokens` a completion may ask for."""
    max_n: int = 8
    max_prompts: int = 32
    """Prompts in one completion request."""
    max_prompt_tokens: int = 4096
    """Longest prompt (GPT runs are also held to their context)."""
    max_inputs: int = 64
    """Texts (or questions) in one task request."""
    max_body_bytes: int = 1_000_000
    max_batch: int = 16
    """Rows of each model's generation batch: requests beyond it wait for a row."""


@dataclass
class Served:
    name: str
    run: object  # a LoadedRun
    endpoint: str
    engine: Engine | None  # GPT and RNN runs

    def describe(self) -> dict:
        stats = self.engine.stats() if self.engine else {"active": 0, "waiting": 0}
        return {"task": self.run.task.name, "endpoint": self.endpoint, "active": stats["active"],
                "waiting": stats["waiting"]}


def create_app(runs: dict, limits: Limits = Limits(), api_key: str | None = None) -> FastAPI:
    """The app serving `runs` ({name: LoadedRun}); engines start now and stop when the app shuts down."""
    served = {}
    for name, run in runs.items():
        endpoint = ENDPOINTS[run.task.inference]
        engine = None
        if endpoint == "/v1/completions" and run.model.decoding != "encoder_decoder":
            engine = Engine(run.model, run.tokenizer.eot_id, limits.max_batch, name)
        served[name] = Served(name, run, endpoint, engine)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app):
        yield
        for s in served.values():
            if s.engine:
                s.engine.close()

    app = FastAPI(title="lmforge", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.served, app.state.limits = served, limits
    app.add_middleware(Guard, api_key=api_key, max_body=limits.max_body_bytes)
    _handlers(app)
    page = resources.files("lmforge.serve").joinpath("playground.html").read_text(encoding="utf-8")

    def find(name: str, endpoint: str) -> Served:
        if name not in served:
            raise ApiError(404, f"model '{name}' is not served here; models: {', '.join(served)}", "model",
                           "model_not_found")
        s = served[name]
        if s.endpoint != endpoint:
            raise ApiError(400, f"model '{name}' is a {s.run.task.name} run: call {s.endpoint}, not {endpoint}",
                           "model", "wrong_endpoint")
        return s

    def texts(value, param: str) -> list[str]:
        items = [value] if isinstance(value, str) else list(value)
        check(1 <= len(items) <= limits.max_inputs, param, f"give 1 to {limits.max_inputs} texts (the server's "
              f"limit), got {len(items)}")
        return items

    @app.get("/", response_class=HTMLResponse)
    async def playground():
        return HTMLResponse(page, headers={"Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; "
                                                                      "script-src 'unsafe-inline'"})

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": {name: s.describe() for name, s in served.items()}}

    def card(name: str, s: Served) -> dict:
        out = {"id": name, "object": "model", "created": created, "owned_by": "lmforge", "task": s.run.task.name,
               "endpoint": s.endpoint, "context_length": getattr(s.run.model.config, "max_positions", None)}
        if s.endpoint == "/v1/fill-mask":
            out["mask_token"] = s.run.tokenizer.id_to_piece(s.run.tokenizer.mask_id)
        return out

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [card(name, s) for name, s in served.items()]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        return await complete(find(body.model, "/v1/completions"), body, limits)

    @app.post("/v1/fill-mask")
    async def fill_mask(body: FillMaskRequest):
        from lmforge.generate import fill_mask as fill

        s = find(body.model, "/v1/fill-mask")
        check(1 <= body.top_k <= 100, "top_k", "must be 1 to 100")
        masks = await run_in_threadpool(fill, s.run.model, s.run.tokenizer, body.input, body.top_k)
        return {"object": "fill_mask", "model": s.name, "mask_token": s.run.tokenizer.id_to_piece(
            s.run.tokenizer.mask_id), "data": [{"index": i, "candidates": [{"token": t, "score": p} for t, p in m]}
                                               for i, m in enumerate(masks)]}

    @app.post("/v1/classify")
    async def classify(body: ClassifyRequest):
        from lmforge.tasks.classify import classify as run_classify

        s = find(body.model, "/v1/classify")
        inputs = texts(body.input, "input")
        pairs = None if body.input_pair is None else texts(body.input_pair, "input_pair")
        check(pairs is None or len(pairs) == len(inputs), "input_pair", f"give one pair text per input "
              f"({len(inputs)}), got {len(pairs or [])}")
        preds = await run_in_threadpool(run_classify, s.run, inputs, pairs)
        return {"object": "classification", "model": s.name,
                "data": [{"index": i, "label": p["label"], "scores": p["probs"]} for i, p in enumerate(preds)]}

    @app.post("/v1/ner")
    async def ner(body: NerRequest):
        from lmforge.tasks.ner import ner as run_ner

        s = find(body.model, "/v1/ner")
        found = await run_in_threadpool(run_ner, s.run, texts(body.input, "input"), body.aggregation)
        return {"object": "entities", "model": s.name,
                "data": [{"index": i, "entities": e} for i, e in enumerate(found)]}

    @app.post("/v1/qa")
    async def qa(body: QARequest):
        from lmforge.tasks.qa import qa as run_qa

        s = find(body.model, "/v1/qa")
        questions, contexts = texts(body.question, "question"), texts(body.context, "context")
        check(len(questions) == len(contexts), "context", f"give one context per question ({len(questions)}), "
              f"got {len(contexts)}")
        answers = await run_in_threadpool(run_qa, s.run, questions, contexts)
        return {"object": "answers", "model": s.name, "data": [{"index": i, **a} for i, a in enumerate(answers)]}

    return app


def _handlers(app: FastAPI) -> None:
    def reply(error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return reply(e)

    @app.exception_handler(LmforgeError)
    async def lmforge_error(request: Request, e: LmforgeError):
        return reply(ApiError(400, str(e)))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        first = e.errors()[0]
        if first["type"] == "json_invalid":
            return reply(ApiError(400, f"the body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}",
                                  code="invalid_json"))
        param = ".".join(str(x) for x in first["loc"] if x != "body") or None
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "missing":
            message = "is required"
        elif first["type"] == "extra_forbidden":
            message = "is not a field of this endpoint (check its spelling)"
        return reply(ApiError(400, f"{param}: {message}" if param else message, param))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        what = f"no such endpoint: {request.method} {request.url.path}" if e.status_code in (404, 405) else e.detail
        return reply(ApiError(e.status_code, str(what)))

    @app.exception_handler(Exception)
    async def crash(request: Request, e: Exception):
        log.exception("request %s %s failed", request.method, request.url.path)
        return reply(ApiError(500, f"internal error ({type(e).__name__}); the server log has the details",
                              code="server_error"))
