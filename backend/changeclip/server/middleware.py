"""ASGI guard in front of every route: bearer token and body size.

It runs before routing and before the body is read, so a request without the right
token learns nothing (401 for every path, existing or not, and whatever its body),
and an oversized body is refused (413) without being read.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from changeclip.server.auth import token_matches

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class GuardMiddleware:
    """Refuse requests without ``Authorization: Bearer <token>`` (401) or with a too large body (413).

    Args:
        app: the wrapped ASGI app.
        token: the server token.
        public_paths: exact paths served without a token (the liveness probe).
        max_body_bytes: largest ``Content-Length`` accepted.
    """

    def __init__(self, app: ASGIApp, token: str, public_paths: tuple[str, ...], max_body_bytes: int) -> None:
        self.app = app
        self.token = token
        self.public_paths = frozenset(public_paths)
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check an HTTP request, then pass it on or answer it."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        if scope.get("path") not in self.public_paths and not token_matches(headers.get("authorization"), self.token):
            await _answer(send, 401, "missing or wrong bearer token: send 'Authorization: Bearer <token>' with the "
                          "token from the file named in the server's handshake line",
                          extra=[(b"www-authenticate", b'Bearer realm="changeclip"')])
            return
        length = headers.get("content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_body_bytes
            except ValueError:
                await _answer(send, 400, "malformed Content-Length header")
                return
            if too_big:
                await _answer(send, 413, f"request body larger than {self.max_body_bytes} bytes")
                return
        elif "transfer-encoding" in headers:  # chunked: read it here, within the limit, then replay
            chunks: list[bytes] = []
            size = 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # client went away
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if size > self.max_body_bytes:
                    await _answer(send, 413, f"request body larger than {self.max_body_bytes} bytes")
                    return
                if not message.get("more_body", False):
                    break
            receive = _replay(b"".join(chunks), receive)
        await self.app(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields ``body`` once, then defers to the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.decode("latin-1").lower()
        if name not in out:  # first occurrence wins; duplicates cannot override
            out[name] = raw_value.decode("latin-1")
    return out


async def _answer(send: Send, status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body})
