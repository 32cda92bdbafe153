"""`POST /v1/completions`: OpenAI's text completions over a served GPT, RNN (batched) or T5 run.

GPT and RNN requests go to the model's `Engine` (one request per prompt and choice) and come back as
token events, turned into text by `generate.TextStream` (stop strings, UTF-8 held back). With
`stream`, each piece is a server-sent event `data: {chunk}`, then `data: [DONE]`. The request's
sequences are cancelled whenever the handler ends: finished, stopped by a stop string, or the client
gone (a closed stream closes this generator), so its rows go to other requests at once.

Encoder-decoders (T5 runs) decode the prompt as a source, one request at a time in a worker thread,
as `lmforge generate` does: the run's own decoding (beam search or greedy) unless `temperature` > 0 is
given (then sampling); a stream sends the whole output as one chunk.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator

from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from lmforge.generate import TextStream
from lmforge.serve.engine import Request, Sampling
from lmforge.serve.errors import ApiError, check
from lmforge.serve.schemas import CompletionRequest

log = logging.getLogger("lmforge.serve")

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions
MAX_STOP = 4


async def complete(served, body: CompletionRequest, limits):
    prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
    max_tokens = DEFAULT_MAX_TOKENS if body.max_tokens is None else body.max_tokens
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    check(1 <= len(prompts) <= limits.max_prompts, "prompt", f"give 1 to {limits.max_prompts} prompts "
          f"(the server's limit), got {len(prompts)}")
    check(1 <= max_tokens <= limits.max_tokens, "max_tokens", f"must be 1 to {limits.max_tokens} (the server's "
          f"limit), got {max_tokens}")
    check(1 <= body.n <= limits.max_n, "n", f"must be 1 to {limits.max_n} (the server's limit), got {body.n}")
    check(body.temperature >= 0, "temperature", "must be >= 0 (0 means greedy)")
    check(0 < body.top_p <= 1, "top_p", "must be in (0, 1]")
    check(body.top_k >= 0, "top_k", "must be >= 0 (0 keeps every token)")
    check(body.repetition_penalty > 0, "repetition_penalty", "must be > 0 (1 means none)")
    check(len(stop) <= MAX_STOP and all(stop), "stop", f"give at most {MAX_STOP} non-empty stop strings")
    if body.stream_options is not None:
        check(body.stream, "stream_options", "is only allowed with stream: true")
    if served.engine is None:
        return await _seq2seq(served, body, prompts, max_tokens, stop)
    tok = served.run.tokenizer
    encoded = [tok.encode(p) or [tok.eot_id] for p in prompts]  # an empty prompt starts a new document
    ctx = served.engine.context_len
    for i, ids in enumerate(encoded):
        which = f"prompt {i}" if len(prompts) > 1 else "the prompt"
        check(len(ids) <= limits.max_prompt_tokens, "prompt", f"{which} is {len(ids)} tokens, the server's limit "
              f"is {limits.max_prompt_tokens}")
        if ctx is not None:
            check(len(ids) + max_tokens <= ctx, "max_tokens", f"this model's context is {ctx} tokens; {which} has "
                  f"{len(ids)} and max_tokens asks for {max_tokens} more: shorten the prompt or lower max_tokens")
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    jobs, streams = [], []
    for ids in encoded:
        for j in range(body.n):
            index = len(jobs)
            seed = None if body.seed is None else body.seed + j  # choices differ, and each is reproducible
            sampling = Sampling(max_tokens, body.temperature, body.top_k, body.top_p, body.repetition_penalty, seed)
            jobs.append(Request(ids, sampling, lambda kind, value, index=index:
                                loop.call_soon_threadsafe(events.put_nowait, (index, kind, value))))
            streams.append(TextStream(tok, ids, stop))
    reply = Reply(served.name, sum(len(ids) for ids in encoded), body)
    pieces = _pieces(served.engine, jobs, streams, events, reply)
    if body.stream:
        return StreamingResponse(_sse(pieces, reply), media_type="text/event-stream")
    texts, reasons = [""] * len(jobs), [None] * len(jobs)
    async for index, piece, reason in pieces:
        texts[index] += piece
        reasons[index] = reason or reasons[index]
    return reply.whole(texts, reasons)


class Reply:
    """The response's id, timestamps and usage, shared by the whole answer and its stream chunks."""

    def __init__(self, model: str, prompt_tokens: int, body: CompletionRequest):
        self.id, self.created, self.model = f"cmpl-{uuid.uuid4().hex}", int(time.time()), model
        self.prompt_tokens, self.completion_tokens = prompt_tokens, 0
        self.include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def head(self) -> dict:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model}

    def whole(self, texts: list[str], reasons: list[str | None]) -> dict:
        choices = [{"text": t, "index": i, "logprobs": None, "finish_reason": r}
                   for i, (t, r) in enumerate(zip(texts, reasons))]
        return {**self.head(), "choices": choices, "usage": self.usage()}

    def chunk(self, index: int, text: str, reason: str | None) -> dict:
        out = {**self.head(), "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": reason}]}
        return {**out, "usage": None} if self.include_usage else out


async def _pieces(engine, jobs: list[Request], streams: list[TextStream], events: asyncio.Queue, reply: Reply
                  ) -> AsyncIterator[tuple[int, str, str | None]]:
    """(choice index, new text, finish reason or None) as the engine produces tokens. The jobs are
    submitted when the first piece is asked for: a client gone before that costs no generation."""
    open_ = set(range(len(jobs)))
    try:
        for job in jobs:
            engine.submit(job)
        while open_:
            index, kind, value = await events.get()
            if index not in open_:
                continue  # tokens made after a stop string ended the choice
            if kind == "error":
                raise ApiError(500, f"generation failed: {value}", code="server_error")
            text = streams[index]
            if kind == "token":
                reply.completion_tokens += 1
                piece = text.push(value)
                if text.stopped:
                    jobs[index].cancel()
                    open_.discard(index)
                    yield index, piece, "stop"
                elif piece:
                    yield index, piece, None
            else:
                open_.discard(index)
                yield index, text.flush(), value
    finally:
        for job in jobs:  # done, stopped, or the client went away: free the rows
            job.cancel()


async def _sse(pieces: AsyncIterator, reply: Reply) -> AsyncIterator[str]:
    try:
        async for index, piece, reason in pieces:
            yield f"data: {json.dumps(reply.chunk(index, piece, reason), ensure_ascii=False)}\n\n"
        if reply.include_usage:
            yield f"data: {json.dumps({**reply.head(), 'choices': [], 'usage': reply.usage()})}\n\n"
    except ApiError as e:  # the status line is gone already: the error goes in the stream
        yield f"data: {json.dumps(e.body())}\n\n"
    except Exception as e:
        log.exception("a completion stream failed")
        error = ApiError(500, f"internal error ({type(e).__name__}); the server log has the details",
                         code="server_error")
        yield f"data: {json.dumps(error.body())}\n\n"
    finally:
        await pieces.aclose()
    yield "data: [DONE]\n\n"


async def _seq2seq(served, body: CompletionRequest, prompts: list[str], max_tokens: int, stop: list[str]):
    import dataclasses

    from lmforge.generate_seq2seq import translate
    from lmforge.tasks.seq2seq import run_decoding

    check(not stop, "stop", "is not supported for encoder-decoder (t5) runs")
    check(body.repetition_penalty == 1.0, "repetition_penalty", "is not supported for encoder-decoder (t5) runs; "
          "no_repeat_ngram_size comes from the run")
    run = served.run
    base, prefix, max_length = run_decoding(run, max_tokens)
    sample = "temperature" in body.model_fields_set and body.temperature > 0
    decoding = dataclasses.replace(base, max_new_tokens=max_tokens, **(
        {"do_sample": True, "num_beams": 1, "temperature": body.temperature, "top_k": body.top_k,
         "top_p": body.top_p, "seed": body.seed} if sample else {}))
    sources = [p for p in prompts for _ in range(body.n)]
    outputs = await run_in_threadpool(translate, run.model, run.tokenizer, sources, decoding, prefix, max_length)
    reply = Reply(served.name, sum(len(run.tokenizer.encode(prefix + p)) for p in prompts), body)
    reply.completion_tokens = sum(o.tokens for o in outputs)
    texts = [o.text for o in outputs]
    reasons = ["length" if o.hit_limit else "stop" for o in outputs]
    if not body.stream:
        return reply.whole(texts, reasons)

    async def one_chunk_each() -> AsyncIterator[tuple[int, str, str]]:
        for i, (t, r) in enumerate(zip(texts, reasons)):
            yield i, t, r

    return StreamingResponse(_sse(one_chunk_each(), reply), media_type="text/event-stream")
