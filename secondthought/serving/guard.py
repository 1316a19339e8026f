"""What the ingress checks before it reads a request: the body's size (a 413 before a large body is read whole)
and, where the server has one, the API key (``Authorization: Bearer KEY``, compared in constant time; the page and
/healthz stay open). A plain ASGI middleware: no Ray."""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass

OPEN = ("/", "/healthz")
"""Paths that need no key: the page (it asks for the key itself) and the liveness probe."""


@dataclass
class Limits:
    max_body_bytes: int = 1 << 20
    api_key: str = ""


class Guard:
    def __init__(self, app, limits: Limits):
        self.app, self.limits = app, limits

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        key = self.limits.api_key
        if key and scope.get("path") not in OPEN and not _authorized(headers.get(b"authorization", b""), key):
            return await _refuse(send, 401, "authorization", "a valid API key is needed: Authorization: Bearer KEY",
                                 "invalid_api_key")
        limit = self.limits.max_body_bytes
        declared = headers.get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > limit:
            return await _too_large(send, limit)
        body, more = [], True
        size = 0
        while more:  # the body, read up to the limit; then handed on whole
            message = await receive()
            if message["type"] != "http.request":
                return
            size += len(message.get("body", b""))
            if size > limit:
                return await _too_large(send, limit)
            body.append(message.get("body", b""))
            more = message.get("more_body", False)
        whole = b"".join(body)
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()  # a disconnect, when the client goes
            sent = True
            return {"type": "http.request", "body": whole, "more_body": False}

        await self.app(scope, replay, send)


def _authorized(header: bytes, key: str) -> bool:
    scheme, _, given = header.decode("latin-1").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key.encode())


async def _too_large(send, limit: int) -> None:
    await _refuse(send, 413, "body", f"the request body is over the {limit} bytes this server accepts",
                  "invalid_request_error")


async def _refuse(send, status: int, param: str, message: str, kind: str) -> None:
    """OpenAI's error shape, as every other refusal of this server."""
    body = json.dumps({"error": {"message": f"{param}: {message}", "type": kind, "param": param, "code": None}})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body.encode()})
