"""Batched generation for the server: requests join and leave a running batch between decode steps.

One `Engine` per served causal LM (GPT or RNN) runs in its own thread. A new request's prompt is run
alone (prefill), its first token sampled, and then it takes a row of the batch: every decode step feeds
one token per active request through a single forward pass (GPT: a `SlotKVCache` whose rows have their
own lengths; RNN: one row of the carried state per request). A request leaves at `max_tokens`, the
end-of-text token, the end of the context, or when cancelled (a stop string seen by the caller, a client
gone); its row goes to the next waiting request at once, so throughput grows with concurrency.

Events reach the caller through `Request.emit(kind, value)`, called on the engine thread:
("token", id), ("done", "stop" | "length"), ("error", message).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from lmforge.generate import sample_next


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None


class Request:
    """One sequence to continue; `cancel()` may be called from any thread."""

    def __init__(self, ids: list[int], sampling: Sampling, emit: Callable[[str, object], None]):
        self.ids, self.sampling, self.emit = list(ids), sampling, emit
        self.cancelled = self.finished = False
        self.generated, self.last = 0, -1
        self.seen = set(self.ids)
        self.rng = torch.Generator().manual_seed(sampling.seed) if sampling.seed is not None else None

    def cancel(self) -> None:
        self.cancelled = True

    def finish(self, reason: str) -> None:
        self.finished = True
        self.emit("done", reason)


def _plain(s: Sampling) -> bool:
    """Sampling at a temperature with no other filter (the rows that can share one softmax)."""
    return s.temperature > 0 and s.top_k == 0 and s.top_p >= 1.0 and s.repetition_penalty == 1.0


class Engine:
    """The decode loop of one model; `submit` requests, `close` when done."""

    def __init__(self, model: nn.Module, eot_id: int | None, max_batch: int = 16, name: str = "model"):
        self.model, self.eot_id, self.max_batch = model.eval(), eot_id, max_batch
        self.recurrent = model.decoding == "recurrent"  # else "kv_cache" (the backbone contract)
        device = next(model.parameters()).device
        if self.recurrent:
            state = model.init_state(max_batch, device)
            self.state = list(state) if isinstance(state, tuple) else [state]  # (L, rows, H) each
            self.context_len = None
        else:
            self.slots = model.new_slot_cache(max_batch)
            self.context_len = model.config.context_len
        self.device = device
        self.rows: list[Request] = []  # row i of the batch serves rows[i]
        self.waiting: deque[Request] = deque()
        self.steps = self.tokens = 0
        self._wake = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"lmforge-engine-{name}", daemon=True)
        self._thread.start()

    def submit(self, request: Request) -> None:
        with self._wake:
            self.waiting.append(request)
            self._wake.notify()

    def stats(self) -> dict:
        return {"active": len(self.rows), "waiting": len(self.waiting), "rows": self.max_batch,
                "steps": self.steps, "tokens": self.tokens}

    def close(self) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not self.waiting and not self.rows and not self._closing:
                        self._wake.wait()
                    if self._closing:
                        break
                    admitted = [self.waiting.popleft() for _ in range(min(len(self.waiting),
                                                                         self.max_batch - len(self.rows)))]
                try:
                    for request in admitted:
                        self._prefill(request)
                    self._leave()
                    if self.rows:
                        self._step()
                        self._leave()
                except Exception as e:  # one bad step must not stop the server: fail the requests it held
                    for request in self.rows + admitted:
                        if not request.finished:
                            request.finished = True
                            request.emit("error", f"{type(e).__name__}: {e}")
                    self._leave()
            for request in self.rows + list(self.waiting):
                request.emit("error", "the server is shutting down")

    def _prefill(self, request: Request) -> None:
        if request.cancelled:
            return
        ids = torch.tensor([request.ids], device=self.device)
        row = len(self.rows)
        if self.recurrent:
            logits, state = self.model(ids)
            for mine, new in zip(self.state, state if isinstance(state, tuple) else (state,)):
                mine[:, row] = new[:, 0]
        else:
            cache = self.model.new_kv_cache(1, len(request.ids))
            logits = self.model(ids, cache)
            self.slots.load(row, cache)
        self.rows.append(request)
        self._take(request, row, logits[0, -1])

    def _step(self) -> None:
        n = len(self.rows)
        feed = torch.tensor([[r.last] for r in self.rows], device=self.device)  # (n, 1)
        if self.recurrent:
            state = tuple(s[:, :n] for s in self.state)
            logits, new = self.model(feed, state if len(state) > 1 else state[0])
            for mine, s in zip(self.state, new if isinstance(new, tuple) else (new,)):
                mine[:, :n] = s
        else:
            self.slots.active = n
            logits = self.model(feed, self.slots)
        logits = logits[:, -1]  # (n, V)
        self.steps += 1
        if all(r.sampling.temperature == 0 and r.sampling.repetition_penalty == 1.0 for r in self.rows):
            best = logits.argmax(-1).tolist()  # greedy rows: one call for the batch
            for row, request in enumerate(self.rows):
                if not request.cancelled:
                    self._emit(request, row, best[row])
            return
        plain = [row for row, r in enumerate(self.rows) if _plain(r.sampling)]
        if plain:  # temperature alone: one softmax for all those rows, then each row's own draw
            temps = torch.tensor([self.rows[row].sampling.temperature for row in plain], device=logits.device)
            probs = torch.softmax(logits[plain].float() / temps[:, None], dim=-1).cpu()  # (P, V)
            for i, row in enumerate(plain):
                request = self.rows[row]
                if not request.cancelled:
                    self._emit(request, row, int(torch.multinomial(probs[i], 1, generator=request.rng)))
        for row, request in enumerate(self.rows):
            if not request.cancelled and not _plain(request.sampling):
                self._take(request, row, logits[row])

    def _take(self, request: Request, row: int, logits: torch.Tensor) -> None:
        s = request.sampling
        prev = torch.tensor(sorted(request.seen)) if s.repetition_penalty != 1.0 else None
        token = sample_next(logits, s.temperature, s.top_k, s.top_p, s.repetition_penalty, prev,
                            generator=request.rng)
        self._emit(request, row, token)

    def _emit(self, request: Request, row: int, token: int) -> None:
        if token == self.eot_id:
            request.finish("stop")
            return
        request.generated += 1
        self.tokens += 1
        request.last = token
        request.seen.add(token)
        request.emit("token", token)
        length = None if self.recurrent else self.slots.lengths[row]
        if request.generated >= request.sampling.max_tokens or (length is not None and length >= self.context_len):
            request.finish("length")

    def _leave(self) -> None:
        """Free the rows of finished and cancelled requests: the last active row moves into each gap."""
        for row in range(len(self.rows) - 1, -1, -1):
            request = self.rows[row]
            if request.finished or request.cancelled:
                last = len(self.rows) - 1
                if row != last:
                    self._move(last, row)
                    self.rows[row] = self.rows[last]
                self.rows.pop()

    def _move(self, src: int, dst: int) -> None:
        if self.recurrent:
            for s in self.state:
                s[:, dst] = s[:, src]
        else:
            self.slots.move(src, dst)
