"""Errors in OpenAI's shape, and the guard every request passes first (API key, body size).

Every error the server answers is `{"error": {"message", "type", "param", "code"}}` with a 4xx status
that says what to fix, or 500 with the exception's type only (the traceback goes to the server log).
"""

from __future__ import annotations

import hmac
import json

TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
         405: "invalid_request_error", 413: "invalid_request_error", 500: "server_error"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


def check(ok: bool, param: str, message: str) -> None:
    """A 400 naming `param` unless `ok`."""
    if not ok:
        raise ApiError(400, f"{param}: {message}", param=param)


async def send_error(send, error: ApiError) -> None:
    payload = json.dumps(error.body()).encode()
    await send({"type": "http.response.start", "status": error.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


class Guard:
    """ASGI middleware: `Authorization: Bearer KEY` on /v1 when a key is set (401), and bodies of at most
    `max_body` bytes (413), read before the app sees them, so a large body is refused without parsing."""

    def __init__(self, app, api_key: str | None, max_body: int):
        self.app, self.api_key, self.max_body = app, api_key, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.api_key and scope["path"].startswith("/v1"):
            given = headers.get(b"authorization", b"").decode("latin-1")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
                return await send_error(send, ApiError(
                    401, "missing or wrong API key: send the header 'Authorization: Bearer KEY' with the key the "
                         "server was started with (--api-key)", code="invalid_api_key"))
        too_large = ApiError(413, f"the request body is larger than the server's limit of {self.max_body} bytes",
                             code="request_too_large")
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            return await send_error(send, too_large)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                return await send_error(send, too_large)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the client to go away

        await self.app(scope, replay, send)
