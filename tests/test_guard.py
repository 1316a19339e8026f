"""The ingress's guard, as an ASGI middleware driven directly: a body over the limit is refused (413) before it is
read whole, and with an API key every route but the page and /healthz needs it."""

import asyncio
import json

from secondthought.serving.guard import Guard, Limits


def call(limits: Limits, path: str, body: bytes = b"", headers: dict | None = None, chunk: int = 1 << 16):
    """The status and body the guarded app answers, and how many body bytes were read."""
    seen = {"read": 0}

    async def app(scope, receive, send):
        message = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": message["body"]})

    parts = [body[k:k + chunk] for k in range(0, len(body), chunk)] or [b""]

    async def receive():
        part = parts.pop(0) if parts else b""
        seen["read"] += len(part)
        return {"type": "http.request", "body": part, "more_body": bool(parts)}

    sent = []

    async def send(message):
        sent.append(message)

    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    asyncio.run(Guard(app, limits)({"type": "http", "path": path, "headers": raw}, receive, send))
    return sent[0]["status"], sent[1]["body"], seen["read"]


def test_a_body_over_the_limit_is_refused_before_it_is_read_whole():
    limits = Limits(max_body_bytes=1000)
    assert call(limits, "/v1/realign", b"x" * 1000)[:2] == (200, b"x" * 1000)  # the app gets the body whole
    status, body, read = call(limits, "/v1/realign", b"x" * (8 << 20), chunk=4096)  # no content-length: counted
    assert status == 413 and read < 8192 and json.loads(body)["error"]["param"] == "body"
    status, _, read = call(limits, "/v1/realign", b"x" * 5000, {"Content-Length": "5000"})
    assert status == 413 and read == 0  # the declared length alone refuses it


def test_with_a_key_every_route_but_the_page_and_healthz_needs_it():
    limits = Limits(api_key="s3cret")
    assert call(limits, "/v1/realign", b"{}")[0] == 401
    assert call(limits, "/v1/realign", b"{}", {"Authorization": "Bearer wrong"})[0] == 401
    assert call(limits, "/v1/realign", b"{}", {"Authorization": "Bearer s3cret"})[0] == 200
    assert call(limits, "/", b"")[0] == 200 and call(limits, "/healthz", b"")[0] == 200
    error = json.loads(call(limits, "/v1/models", b"")[1])["error"]
    assert error["type"] == "invalid_api_key" and error["param"] == "authorization"
    assert call(Limits(), "/v1/realign", b"{}")[0] == 200  # no key configured: open, as before
