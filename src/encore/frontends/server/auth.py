"""Request guard (pure ASGI middleware): request ids, Host and Origin checks, API key, content types, body limits,
strict JSON, and error bodies without tracebacks.

Every route requires the key unless it is in `PUBLIC_ROUTES`; because the guard wraps the whole app (mounted
sub-apps included), a new route cannot forget it. The key is read from the ``Authorization: Bearer`` header only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from encore.frontends.server.settings import LOOPBACK_NAMES, ServerSettings

logger = logging.getLogger(__name__)

PUBLIC_ROUTES: frozenset[tuple[str, str]] = frozenset({("GET", "/health"), ("GET", "/ready")})
"""(method, path) pairs answered without a key. Everything else needs one."""
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MULTIPART_PATHS = frozenset({"/v1/uploads", "/release_task"})
"""Routes that accept multipart/form-data (file uploads); every other body must be JSON."""
LARGE_JSON_PATHS = frozenset({"/v1/chat/completions"})
"""JSON routes that may carry base64 audio, so their body cap is the upload cap."""
MAX_JSON_DEPTH = 64

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class _BodyTooLarge(Exception):
    pass


def owner_of(key: str | None) -> str:
    """Stable, non-reversible owner id for a key ("local" when auth is off)."""
    if key is None:
        return "local"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive), else None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or any(c.isspace() for c in token):
        return None
    return token


def match_key(token: str | None, keys: tuple[str, ...]) -> str | None:
    """The configured key equal to `token` (constant-time compare against every key), else None."""
    if token is None:
        return None
    found = None
    for key in keys:
        if hmac.compare_digest(token.encode(), key.encode()):
            found = key
    return found


def _dup_check(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate key in JSON object")
    return dict(pairs)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def strict_json_loads(body: bytes) -> Any:
    """Parse JSON refusing NaN/Infinity literals, duplicate keys and nesting deeper than MAX_JSON_DEPTH.

    Raises:
        ValueError: with a short message.
    """
    try:
        text = body.decode("utf-8")
        value = json.loads(text, object_pairs_hook=_dup_check, parse_constant=_no_constants)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except UnicodeDecodeError:
        raise ValueError("body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise ValueError("JSON nested too deeply")
    return value


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_JSON_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


class Guard:
    """ASGI middleware applying the checks above before any route (or body parser) runs.

    Args:
        app: the wrapped ASGI app.
        settings: keys, allowed origins/hosts and size limits.
    """

    def __init__(self, app: Any, settings: ServerSettings) -> None:
        self.app = app
        self.settings = settings
        self.hosts = {h.lower() for h in (*LOOPBACK_NAMES, "[::1]", settings.host, *settings.allowed_hosts)}
        self.origins = {o.rstrip("/").lower() for o in settings.allowed_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id
        send = _with_request_id(send, request_id)
        headers = _headers(scope)
        method, path = scope["method"].upper(), scope["path"]
        refusal = self._refuse(method, path, headers, scope)
        if refusal is not None:
            status, code, message, extra = refusal
            await _send_error(send, status, code, message, request_id, extra)
            return
        limit = self._body_limit(path, headers)
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            status = 400 if not declared.isdigit() else 413
            await _send_error(send, status, "body_too_large" if status == 413 else "bad_request",
                              f"request body larger than {limit} bytes" if status == 413 else "bad Content-Length",
                              request_id)
            return
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if method not in SAFE_METHODS and _is_json(ctype):
            try:
                body = await _read_all(receive, limit)
            except _BodyTooLarge:
                await _send_error(send, 413, "body_too_large", f"request body larger than {limit} bytes", request_id)
                return
            if body:
                try:
                    strict_json_loads(body)
                except ValueError as exc:
                    await _send_error(send, 400, "invalid_json", str(exc), request_id)
                    return
            receive = _replay(body, receive)
        else:
            receive = _limited(receive, limit)
        await self._call_app(scope, receive, send, request_id)

    async def _call_app(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        started = False

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _send_error(send, 413, "body_too_large", "request body too large", request_id)
        except Exception:
            logger.exception("unhandled error in %s %s (request_id=%s)", scope["method"], scope["path"], request_id)
            if not started:
                await _send_error(send, 500, "internal", "internal server error", request_id)

    def _refuse(self, method: str, path: str, headers: dict[str, str],
                scope: Scope) -> tuple[int, str, str, dict[str, str]] | None:
        """(status, code, message, headers) when the request must be refused before the app sees it."""
        host = urlsplit(f"//{headers.get('host', '')}").hostname or ""
        if host.lower() not in self.hosts and f"[{host.lower()}]" not in self.hosts:
            return 403, "forbidden_host", "Host header not allowed", {}
        if method not in SAFE_METHODS:
            site = headers.get("sec-fetch-site")
            if site is not None and site not in ("same-origin", "none"):
                return 403, "cross_site", "cross-site requests are refused", {}
            origin = headers.get("origin")
            if origin is not None and not self._origin_ok(origin, headers.get("host", "")):
                return 403, "cross_site", "request Origin not allowed", {}
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
            if has_body and not (_is_json(ctype) or (ctype == "multipart/form-data" and path in MULTIPART_PATHS)):
                return 415, "unsupported_media_type", "send application/json" + (
                    " or multipart/form-data" if path in MULTIPART_PATHS else ""), {}
        public = (("GET" if method == "HEAD" else method), path) in PUBLIC_ROUTES
        key = match_key(bearer_token(headers.get("authorization")), self.settings.api_keys)
        if self.settings.api_keys and not public and key is None:
            return 401, "unauthorized", "missing or invalid API key", {"www-authenticate": "Bearer"}
        scope["state"]["owner"] = owner_of(key)
        return None

    def _origin_ok(self, origin: str, host_header: str) -> bool:
        origin = origin.strip().rstrip("/").lower()
        if origin == "null":
            return False
        if origin in self.origins:
            return True
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.netloc == host_header.strip().lower()

    def _body_limit(self, path: str, headers: dict[str, str]) -> int:
        s = self.settings
        if path in MULTIPART_PATHS:
            return 2 * s.upload_max_bytes + 256 * 1024
        if path in LARGE_JSON_PATHS:
            return (2 * s.upload_max_bytes * 4) // 3 + s.json_body_max
        return s.json_body_max


def _is_json(ctype: str) -> bool:
    return ctype == "application/json" or (ctype.startswith("application/") and ctype.endswith("+json"))


async def _read_all(receive: Receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, upstream: Receive) -> Receive:
    """Hand the already-read body to the app once, then pass through (so a real disconnect is still seen)."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await upstream()

    return receive


def _limited(receive: Receive, limit: int) -> Receive:
    size = 0

    async def wrapped() -> dict[str, Any]:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                raise _BodyTooLarge
        return message

    return wrapped


def _with_request_id(send: Send, request_id: str) -> Send:
    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = dict(message)
            message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
        await send(message)

    return wrapped


async def _send_error(send: Send, status: int, code: str, message: str, request_id: str,
                      extra: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": message, "code": code, "request_id": request_id}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
