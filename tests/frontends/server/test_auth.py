"""S1/S5: every route needs the key except PUBLIC_ROUTES; cross-site and rebinding requests are refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from frontends.server.srvkit import KEY, InProcessServer

from encore.frontends.server.auth import PUBLIC_ROUTES, bearer_token, match_key

SRC = Path(__file__).resolve().parents[3] / "src" / "encore" / "frontends" / "server"


def _routes(routes, prefix: str = "") -> list[tuple[str, str]]:
    """(method, path) of every route, walking included routers and mounts."""
    out = []
    for route in routes:
        if hasattr(route, "original_router"):  # FastAPI's lazily included router
            out += _routes(route.original_router.routes, prefix + route.include_context.prefix)
        elif hasattr(route, "routes") and not hasattr(route, "methods"):  # Mount
            out += _routes(route.routes, prefix + route.path)
        else:
            for method in sorted(getattr(route, "methods", None) or {"GET"}):
                if method != "HEAD":
                    out.append((method, prefix + route.path))
    return out


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", lambda m: "0" if m.group(0) == "{index}" else
                  "00000000-0000-0000-0000-000000000000", path)


def test_public_list_is_explicit() -> None:
    assert PUBLIC_ROUTES == {("GET", "/health"), ("GET", "/ready")}


def test_every_route_enumerated(server: InProcessServer) -> None:
    """Each (method, path) of the app, including docs and OpenAPI: no key / wrong key / key in body / variants."""
    client = server.client
    routes = _routes(server.app.routes)
    assert len(routes) >= 20
    bad_headers = [{}, {"Authorization": "Bearer wrong-key-000000"}, {"Authorization": f"Basic {KEY}"},
                   {"Authorization": f"Bearer{KEY}"}, {"Authorization": f"Bearer {KEY} extra"},
                   {"X-API-Key": KEY}, {"Authorization": f"Bearer {KEY[:-1]}"}]
    for method, path in routes:
        url = _concrete(path)
        for headers in bad_headers:
            r = client.request(method, url, headers={"Authorization": "", **headers},
                               json={"ai_token": KEY} if method == "POST" else None)
            if (method, path) in PUBLIC_ROUTES:
                assert r.status_code != 401, (method, path)
            else:
                assert r.status_code == 401, (method, path, headers, r.status_code)
                assert r.json()["code"] == "unauthorized"
        for variant in (f"Bearer {KEY}", f"bearer {KEY}", f"Bearer  {KEY} ", f"BEARER {KEY}"):
            r = client.request(method, url, headers={"Authorization": variant},
                               json={"__unknown_field__": 1} if method == "POST" else None)
            assert r.status_code != 401, (method, path, variant)


def test_openapi_declares_security_on_protected_routes(server: InProcessServer) -> None:
    spec = server.client.get("/openapi.json").json()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            public = (method.upper(), path) in PUBLIC_ROUTES
            assert bool(op.get("security")) != public, (method, path)


def test_compare_digest_static_gate() -> None:
    text = (SRC / "auth.py").read_text()
    assert "hmac.compare_digest" in text
    for name in SRC.glob("*.py"):
        body = name.read_text()
        assert "== key" not in body and "key ==" not in body, name


def test_bearer_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("  bearer   abc  ") == "abc"
    assert bearer_token("Bearer a b") is None and bearer_token("Token abc") is None and bearer_token("") is None
    assert match_key("abc", ("x", "abc")) == "abc" and match_key("ab", ("abc",)) is None


@pytest.mark.parametrize(("headers", "status"), [
    ({"Origin": "http://evil.example"}, 403),
    ({"Origin": "null"}, 403),
    ({"Origin": "http://127.0.0.1:9999"}, 403),  # another local port is another origin
    ({"Sec-Fetch-Site": "cross-site"}, 403),
    ({"Sec-Fetch-Site": "same-site"}, 403),
    ({"Host": "evil.example"}, 403),  # DNS rebinding
    ({"Origin": "http://127.0.0.1"}, 202),  # same origin as the Host header
    ({"Sec-Fetch-Site": "same-origin"}, 202),
    ({"Sec-Fetch-Site": "none"}, 202),
])
def test_origin_guard(server: InProcessServer, headers: dict, status: int) -> None:
    before = server.store.counts()["queued"] + server.store.counts()["succeeded"]
    r = server.client.post("/v1/jobs", json={"request": {}}, headers=headers)
    assert r.status_code == status, r.text
    after = server.store.counts()["queued"] + server.store.counts()["running"] + server.store.counts()["succeeded"]
    assert (after > before) == (status == 202)


def test_form_posts_refused_before_parsing(server: InProcessServer) -> None:
    """What a cross-site <form> can send: urlencoded or text/plain. Both 415 (and 403 with their Origin)."""
    r = server.client.post("/release_task", content=b"prompt=x", headers={
        "content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415
    r = server.client.post("/v1/jobs", content=b'{"request":{}}', headers={"content-type": "text/plain"})
    assert r.status_code == 415
    r = server.client.post("/release_task", files={"prompt": (None, "x")}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    assert server.store.counts()["queued"] == 0


def test_no_key_local_mode_still_guards_origin(tmp_path: Path) -> None:
    from frontends.server.srvkit import fast_settings

    srv = InProcessServer(fast_settings(tmp_path, api_keys=()), start_worker=False)
    try:
        srv.client.headers.pop("Authorization")
        assert srv.client.post("/v1/jobs", json={"request": {}}).status_code == 202
        r = srv.client.post("/v1/jobs", json={"request": {}}, headers={"Origin": "http://evil.example"})
        assert r.status_code == 403
    finally:
        srv.close()


def test_non_loopback_without_key_refuses_to_start() -> None:
    from encore.frontends.server.settings import ServerSettings

    with pytest.raises(ValueError, match="without an API key"):
        ServerSettings(host="0.0.0.0").check()
    ServerSettings(host="0.0.0.0", api_keys=("long-enough-key",)).check()
    ServerSettings(host="::1").check()


def test_routes_have_no_path_parameters_named_like_files(server: InProcessServer) -> None:
    """R5: no client-supplied path in any request schema (only upload ids and adapter names)."""
    spec = server.client.get("/openapi.json").json()
    text = str(spec).lower()
    for word in ("file_path", "filepath", "save_dir", "output_dir", "lm_model_path\": {\"type\": \"string\"}"):
        assert word not in text
