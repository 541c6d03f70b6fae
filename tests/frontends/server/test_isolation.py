"""R1: the API process never imports torch (checked in a clean interpreter and in a live `encore serve`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

TESTS_DIR = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import sys, tempfile, io, json
from pathlib import Path
from fastapi.testclient import TestClient
from encore.frontends.server.app import create_app
from encore.frontends.server.settings import ServerSettings
from frontends.server.srvkit import wav_bytes, write_fake_adapter
loras = Path(tempfile.mkdtemp())
write_fake_adapter(loras / "style")
settings = ServerSettings(data_dir=tempfile.mkdtemp(), pipeline_factory="frontends.server.fake_pipeline:make_fake",
                          lora_dir=str(loras))
client = TestClient(create_app(settings), base_url="http://127.0.0.1")
up = client.post("/v1/uploads", files={"file": ("a.wav", wav_bytes(), "audio/wav")}).json()
assert client.post("/v1/jobs", json={"request": {"task": {"kind": "cover", "source": up["id"]}}}).status_code == 202
assert client.post("/release_task", json={"prompt": "x"}).status_code == 200
assert client.post("/query_result", json={"task_id_list": []}).status_code == 200
client.get("/metrics"); client.get("/ready"); client.get("/openapi.json")
assert client.get("/v1/loras").json()["loras"][0]["rank"] == 4
assert client.post("/v1/jobs", json={"request": {"loras": [{"path": "style"}]}}).status_code == 202
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "gradio"))
print(json.dumps(heavy))
"""


def test_api_process_has_no_torch() -> None:
    env = {**os.environ, "PYTHONPATH": str(TESTS_DIR)}
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_live_server_process_has_no_libtorch(live_factory: Any) -> None:
    srv = live_factory(workers=1)
    srv.wait_ready()
    assert srv.client.post("/v1/jobs", json={"request": {}}).status_code == 202
    maps = Path(f"/proc/{srv.proc.pid}/maps").read_text()
    assert "libtorch" not in maps and "libc10" not in maps
