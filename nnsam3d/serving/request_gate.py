"""What every request passes before it reaches the model: the token, the body size, the queue.

* :class:`ModelQueue`: one model serves every request; its calls run one at a time behind a
  lock, and at most ``max_waiting`` more wait for it: a request beyond those is answered 503 at
  once (with ``Retry-After``), so that a burst of clients cannot pile up unbounded work.
* :func:`token_matches`: ``Authorization: Bearer TOKEN`` compared in constant time.
* :class:`GateMiddleware` (ASGI): refuses a request without the token (401), and a body larger
  than the upload limit (413), by its Content-Length or, without one, as it streams in.
"""

from __future__ import annotations

import hmac
import json
import threading
from contextlib import contextmanager

from nnsam3d.serving.errors import BusyError, TooLargeError

OPEN_PATHS = ("/auth/", "/auth/token", "/")
OPEN_PREFIXES = ("/static/",)
"""Paths served without the token: where a MONAI Label client learns that auth is on and gets it,
and the browser page with its scripts (no data: the page sends the token for everything else)."""


class ModelQueue:
    """At most one model call at a time, at most ``max_waiting`` waiting."""

    def __init__(self, max_waiting: int = 8, retry_after_s: int = 2):
        self._admitted = threading.BoundedSemaphore(max_waiting + 1)
        self._lock = threading.Lock()
        self.max_waiting = max_waiting
        self.retry_after_s = retry_after_s

    @contextmanager
    def turn(self):
        if not self._admitted.acquire(blocking=False):
            raise BusyError(f"the server is busy: {self.max_waiting} requests are already waiting for the model; "
                            f"retry in {self.retry_after_s} s")
        try:
            with self._lock:
                yield
        finally:
            self._admitted.release()


def token_matches(header: str | None, token: str) -> bool:
    """Whether ``header`` is ``Bearer TOKEN`` (compared with :func:`hmac.compare_digest`)."""
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


def _json_response(status: int, detail: str, extra_headers=()):
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra_headers]
    return {"type": "http.response.start", "status": status, "headers": headers}, {"type": "http.response.body",
                                                                                    "body": body}


class GateMiddleware:
    """ASGI middleware: token (when set) and body size limit."""

    def __init__(self, app, token: str | None, max_body_bytes: int):
        self.app = app
        self.token = token
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        open_path = scope["path"] in OPEN_PATHS or scope["path"].startswith(OPEN_PREFIXES)
        if self.token and not open_path and not token_matches(headers.get("authorization"), self.token):
            for message in _json_response(401, "missing or wrong token: send 'Authorization: Bearer TOKEN' "
                                               "(the token nnsam3d_serve was started with)",
                                          [(b"www-authenticate", b"Bearer")]):
                await send(message)
            return
        length = headers.get("content-length")
        too_large = (f"the request body is larger than the upload limit of {self.max_body_bytes} bytes "
                     "(nnsam3d_serve --max-upload-mb)")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            for message in _json_response(413, too_large):
                await send(message)
            return
        received = 0
        exceeded = False
        replaced = False

        async def limited_receive():
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    exceeded = True
                    raise TooLargeError(too_large)
            return message

        async def answering_send(message):
            # The app may catch the error while parsing a form and answer 400: the answer is
            # replaced by the 413 that says why.
            nonlocal replaced
            if exceeded:
                if not replaced:
                    replaced = True
                    for own in _json_response(413, too_large):
                        await send(own)
                return
            await send(message)

        try:
            await self.app(scope, limited_receive, answering_send)
        except TooLargeError:
            if not replaced:
                replaced = True
                for message in _json_response(413, too_large):
                    await send(message)
