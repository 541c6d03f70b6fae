"""LoRA adapters over HTTP: `GET /v1/loras` lists the server's LoRA folder by name (no torch, no paths), jobs
name adapters from it, and the worker hands the pipeline `lora_dir/name` while clients only ever see names."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from frontends.server.srvkit import KEY, InProcessServer, fast_settings, write_fake_adapter

from encore.errors import CheckpointError
from encore.frontends.server.settings import ServerSettings


@pytest.fixture
def lora_dir(tmp_path: Path) -> Path:
    """style: PEFT folder with config; plain: no config; single.safetensors: diffusers-style file with header
    metadata; broken: truncated weights. Plus entries that must not be listed."""
    root = tmp_path / "loras"
    write_fake_adapter(root / "style", rank=4, alpha=8.0, layers=2)
    write_fake_adapter(root / "plain", rank=2, layers=1, config=False)
    meta = {"transformer.r": 3, "transformer.lora_alpha": 6, "transformer.target_modules": ["to_q", "to_out.0"]}
    write_fake_adapter(root / "single.safetensors", rank=3, layers=1, config=False,
                       metadata={"lora_adapter_metadata": json.dumps(meta)})
    weights = write_fake_adapter(root / "broken") / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    (root / "empty").mkdir()
    (root / "notes.txt").write_text("not an adapter")
    write_fake_adapter(root / ".hidden")
    write_fake_adapter(root / "has space")
    return root


@pytest.fixture
def lora_server(tmp_path: Path, lora_dir: Path) -> Iterator[InProcessServer]:
    srv = InProcessServer(fast_settings(tmp_path, lora_dir=str(lora_dir)))
    yield srv
    srv.close()


def test_listing_is_empty_without_a_lora_dir(server: InProcessServer) -> None:
    r = server.client.get("/v1/loras")
    assert r.status_code == 200 and r.json() == {"enabled": False, "loras": []}


def test_listing_describes_each_adapter(lora_server: InProcessServer, lora_dir: Path) -> None:
    r = lora_server.client.get("/v1/loras")
    assert r.status_code == 200
    items = {item["name"]: item for item in r.json()["loras"]}
    assert r.json()["enabled"] is True and list(items) == ["broken", "plain", "single.safetensors", "style"]
    style = items["style"]
    size = sum((lora_dir / "style" / f).stat().st_size for f in ("adapter_model.safetensors", "adapter_config.json"))
    assert style == {"name": "style", "kind": "folder", "size_bytes": size, "modules": 8, "rank": 4, "alpha": 8.0,
                     "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "error": None}
    assert items["plain"]["rank"] == 2 and items["plain"]["alpha"] is None and items["plain"]["modules"] == 4
    single = items["single.safetensors"]
    assert single["kind"] == "file" and single["rank"] == 3 and single["alpha"] == 6.0
    assert single["target_modules"] == ["q_proj", "o_proj"]  # diffusers names mapped back to the model's
    assert "truncated" in items["broken"]["error"] and items["broken"]["rank"] is None
    assert str(lora_dir.parent) not in r.text and "/home/someone" not in r.text  # names only, no paths


def test_listing_needs_the_key(lora_server: InProcessServer) -> None:
    r = lora_server.client.get("/v1/loras", headers={"Authorization": ""})
    assert r.status_code == 401
    assert "/v1/loras" in lora_server.client.get("/openapi.json").json()["paths"]


def test_job_with_lora_reaches_the_pipeline_as_a_path(lora_server: InProcessServer, lora_dir: Path) -> None:
    r = lora_server.client.post("/v1/jobs", json={"request": {"text": {"caption": "x", "duration_s": 1.0},
                                                              "loras": [{"path": "style", "scale": 0.7}]}})
    assert r.status_code == 202, r.text
    view = lora_server.wait(r.json()["id"])
    assert view["state"] == "succeeded", view
    params = view["result"]["params"]
    # the fake pipeline opened lora_dir/style/adapter_model.safetensors (its size proves which file) ...
    weights = (lora_dir / "style" / "adapter_model.safetensors").stat().st_size
    assert params["lora_ids"] == [{"name": "style", "scale": 0.7, "weights_bytes": weights}]
    # ... while the client sees the adapter name, never the server path
    assert params["loras"] == [{"path": "style", "scale": 0.7}]
    assert str(lora_dir) not in json.dumps(view)


def test_single_file_adapter_is_usable(lora_server: InProcessServer) -> None:
    r = lora_server.client.post("/v1/jobs", json={"request": {"text": {"duration_s": 1.0},
                                                              "loras": [{"path": "single.safetensors"}]}})
    assert r.status_code == 202, r.text
    view = lora_server.wait(r.json()["id"])
    assert view["state"] == "succeeded" and view["result"]["params"]["lora_ids"][0]["name"] == "single.safetensors"


@pytest.mark.parametrize("name", ["empty", "notes.txt", "missing", "has space", ".hidden", "../loras/style"])
def test_names_that_are_not_listed_adapters_are_refused(lora_server: InProcessServer, name: str) -> None:
    r = lora_server.client.post("/v1/jobs", json={"request": {"loras": [{"path": name}]}})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "request", "loras", 0, "path"]
    assert lora_server.store.counts()["queued"] == 0


def test_adapter_removed_after_submit_fails_the_job(tmp_path: Path, lora_dir: Path) -> None:
    srv = InProcessServer(fast_settings(tmp_path, lora_dir=str(lora_dir)), start_worker=False)
    try:
        r = srv.client.post("/v1/jobs", json={"request": {"loras": [{"path": "plain"}]}})
        assert r.status_code == 202, r.text
        (lora_dir / "plain" / "adapter_model.safetensors").unlink()
        srv.start_worker()
        view = srv.wait(r.json()["id"])
        assert view["state"] == "failed" and view["error"]["code"] == "invalid_request"
        assert "no longer available" in view["error"]["message"] and str(lora_dir) not in view["error"]["message"]
    finally:
        srv.close()


def test_pipeline_errors_name_the_adapter_not_the_server_path(lora_server: InProcessServer, lora_dir: Path) -> None:
    r = lora_server.client.post("/v1/jobs", json={"request": {"text": {"caption": "[badlora]"},
                                                              "loras": [{"path": "style"}]}})
    view = lora_server.wait(r.json()["id"])
    message = view["error"]["message"]
    assert view["state"] == "failed" and view["error"]["code"] == "invalid_request"
    assert message.startswith("loras[0].path: style/adapter_model.safetensors [layers.0"), message
    assert str(lora_dir) not in message


def test_lora_dir_must_be_a_folder(tmp_path: Path) -> None:
    ServerSettings(lora_dir=str(tmp_path)).check()
    with pytest.raises(ValueError, match="lora-dir"):
        ServerSettings(lora_dir=str(tmp_path / "nope")).check()


def test_fake_adapters_are_real_adapters(lora_dir: Path) -> None:
    """The fixture's files are what the pipeline's reader accepts, and the listing agrees with that reader on
    rank and alpha (so the server's torch-free header/config reading follows `adapter_format`)."""
    pytest.importorskip("torch")
    from encore.frontends.server import loras
    from encore.pipeline import adapter_format

    assert (loras.ADAPTER_WEIGHTS, loras.ADAPTER_CONFIG, loras.DIFFUSERS_METADATA_KEY) == (
        adapter_format.ADAPTER_WEIGHTS, adapter_format.ADAPTER_CONFIG, adapter_format.DIFFUSERS_METADATA_KEY)
    listing = {item["name"]: item for item in loras.list_adapters(str(lora_dir))["loras"]}
    for name in ("style", "plain", "single.safetensors"):
        read = adapter_format.read_adapter(lora_dir / name)
        assert len(read.tensors) == listing[name]["modules"]
        assert read.config.rank == listing[name]["rank"]
        assert read.config.alpha == (listing[name]["alpha"] or listing[name]["rank"])  # None: alpha = rank
    with pytest.raises(CheckpointError):
        adapter_format.read_adapter(lora_dir / "broken")


def _official(r: Any) -> dict:
    assert r.status_code == 200, r.text
    return r.json()["data"]


def _release(srv: InProcessServer) -> dict:
    r = srv.client.post("/release_task", json={"prompt": "x", "audio_duration": 1.0, "batch_size": 1})
    job = srv.store.get(r.json()["data"]["task_id"])
    return srv.wait(job.id)


def test_official_lora_routes_set_this_clients_release_task_adapters(tmp_path: Path, lora_dir: Path) -> None:
    """/v1/lora/load|scale|toggle|unload|status record adapters per client; /release_task applies them."""
    second = "second-key-0123456789"
    srv = InProcessServer(fast_settings(tmp_path, lora_dir=str(lora_dir), api_keys=(KEY, second)))
    try:
        c = srv.client
        assert _official(c.get("/v1/lora/status"))["loaded"] is False
        loaded = _official(c.post("/v1/lora/load", json={"lora_path": "style", "adapter_name": "voice"}))
        assert loaded["adapter_name"] == "voice"
        _official(c.post("/v1/lora/load", json={"lora_path": "plain"}))
        status = _official(c.get("/v1/lora/status"))
        assert status["use_lora"] is True and status["scales"] == {"voice": 1.0, "plain": 1.0}
        view = _release(srv)
        assert view["state"] == "succeeded", view
        assert [(i["name"], i["scale"]) for i in view["result"]["params"]["lora_ids"]] == [("style", 1.0),
                                                                                          ("plain", 1.0)]
        _official(c.post("/v1/lora/scale", json={"scale": 0.5, "adapter_name": "voice"}))
        _official(c.post("/v1/lora/unload", json={"adapter_name": "plain"}))
        assert _release(srv)["result"]["params"]["loras"] == [{"path": "style", "scale": 0.5}]
        # another client's songs are not touched by this client's adapters
        other = c.get("/v1/lora/status", headers={"Authorization": f"Bearer {second}"})
        assert _official(other)["loaded"] is False
        _official(c.post("/v1/lora/toggle", json={"use_lora": False}))
        assert _release(srv)["result"]["params"]["loras"] == []
        _official(c.post("/v1/lora/toggle", json={"use_lora": True}))
        assert _official(c.post("/v1/lora/unload"))["unloaded"] == ["voice"]
        assert _official(c.get("/v1/lora/status"))["adapters"] == []
    finally:
        srv.close()


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/lora/load", {"lora_path": "/srv/loras/style"}, "lora_path"),  # server paths are not accepted
    ("/v1/lora/load", {"lora_path": "broken-name"}, "lora_path"),
    ("/v1/lora/load", {"lora_path": "style", "adapter_name": "../x"}, "adapter_name"),
    ("/v1/lora/scale", {"scale": 0.5}, "adapter_name"),  # nothing loaded
    ("/v1/lora/scale", {"scale": 3.0}, "scale"),
    ("/v1/lora/unload", {"adapter_name": "nope"}, "adapter_name"),
    ("/v1/lora/toggle", {"use_lora": "maybe"}, "use_lora"),
])
def test_official_lora_route_errors_name_the_field(lora_server: InProcessServer, path: str, body: dict,
                                                   field: str) -> None:
    r = lora_server.client.post(path, json=body)
    assert r.status_code == 422, r.text
    assert field in json.dumps(r.json()["detail"])


def test_official_lora_load_without_a_lora_dir(server: InProcessServer) -> None:
    r = server.client.post("/v1/lora/load", json={"lora_path": "style"})
    assert r.status_code == 422 and "disabled" in json.dumps(r.json()["detail"])
    assert _official(server.client.get("/v1/lora/status"))["lora_enabled_on_server"] is False
