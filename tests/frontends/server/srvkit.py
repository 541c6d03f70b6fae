"""Server test kit: fast settings, an in-process app with a worker thread, and a live `encore serve`
subprocess on a free loopback port (fake pipeline; no torch in the server processes)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile as sf

from encore.frontends.server.settings import ServerSettings

TESTS_DIR = Path(__file__).resolve().parents[2]
FAKE_FACTORY = "frontends.server.fake_pipeline:make_fake"
KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


def fast_settings(tmp_path: Path, **overrides: Any) -> ServerSettings:
    """Settings with short leases/heartbeats and the fake pipeline."""
    base = ServerSettings(data_dir=str(tmp_path / "data"), api_keys=(KEY,), pipeline_factory=FAKE_FACTORY,
                          lease_s=1.5, heartbeat_s=0.2, reaper_interval_s=0.2, drain_grace_s=5.0, job_timeout_s=30.0,
                          cancel_grace_s=2.0, worker_nice=0, min_free_disk_bytes=0)
    extra = {**base.extra, **overrides.pop("extra", {})}
    return dataclasses.replace(base, extra=extra, **overrides)


def wav_bytes(seconds: float = 0.5, sr: int = 16000, channels: int = 1, fmt: str = "WAV") -> bytes:
    """A short sine wave encoded in memory."""
    t = np.arange(int(seconds * sr)) / sr
    data = np.stack([0.2 * np.sin(2 * np.pi * 330 * t)] * channels, axis=1)
    buf = io.BytesIO()
    sf.write(buf, data, sr, format=fmt)
    return buf.getvalue()


def write_fake_adapter(dest: Path, *, rank: int = 4, alpha: float = 8.0, layers: int = 2, width: int = 16,
                       config: bool = True, metadata: dict[str, str] | None = None) -> Path:
    """A small random LoRA adapter in the PEFT layout of `encore.pipeline.adapter_format` (what `encore train lora`
    exports), written with safetensors' numpy API so the server tests need no torch.

    Keys `base_model.model.layers.<i>.self_attn.{q,k,v,o}_proj.lora_A.weight` `[rank, width]` and `lora_B`
    `[width, rank]`; `dest` is a folder (with `adapter_config.json` when `config`), or a `.safetensors` file.
    """
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    tensors = {}
    for i in range(layers):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            key = f"base_model.model.layers.{i}.self_attn.{proj}"
            tensors[f"{key}.lora_A.weight"] = rng.standard_normal((rank, width), dtype=np.float32)
            tensors[f"{key}.lora_B.weight"] = rng.standard_normal((width, rank), dtype=np.float32) * 0.01
    weights = dest if dest.suffix == ".safetensors" else dest / "adapter_model.safetensors"
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(weights), metadata={"format": "pt", **(metadata or {})})
    if config:
        cfg = {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": "/home/someone/ckpt",
               "r": rank, "lora_alpha": alpha, "lora_dropout": 0.1,
               "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "bias": "none", "fan_in_fan_out": False,
               "use_rslora": False, "use_dora": False, "inference_mode": True, "modules_to_save": None,
               "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None}
        (weights.parent / "adapter_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    return dest


class InProcessServer:
    """The FastAPI app under TestClient plus one JobRunner thread with the fake pipeline."""

    def __init__(self, settings: ServerSettings, start_worker: bool = True) -> None:
        from fastapi.testclient import TestClient
        from frontends.server.fake_pipeline import make_fake

        from encore.frontends.server.app import create_app
        from encore.frontends.server.store import SQLiteJobStore

        self.settings = settings
        self.store = SQLiteJobStore(settings.db_path)
        self.app = create_app(settings, self.store)
        self.service = self.app.state.service
        self.client = TestClient(self.app, base_url="http://127.0.0.1", raise_server_exceptions=False)
        self.client.headers.update(AUTH)
        self.pipeline = make_fake(settings)
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        if start_worker:
            self.start_worker()

    def start_worker(self) -> None:
        from encore.frontends.server.worker import JobRunner, pipeline_modes

        runner = JobRunner(self.settings, self.store, self.pipeline, "wt-0", pipeline_modes(self.pipeline))
        self.thread = threading.Thread(target=runner.run_forever, args=(self.stop, 0.02), daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 5
        while not self.service.ready()["ready"] and time.monotonic() < deadline:
            time.sleep(0.02)

    def wait(self, job_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """Poll the job until it is terminal."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            view = self.client.get(f"/v1/jobs/{job_id}").json()
            if view["state"] in ("succeeded", "failed", "cancelled"):
                return view
            time.sleep(0.03)
        raise AssertionError(f"job {job_id} did not finish: {view}")

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=10)
        self.client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """`python -m encore.frontends.server` in a subprocess (API + supervised worker processes)."""

    def __init__(self, data_dir: Path, *, workers: int = 1, extra_args: tuple[str, ...] = (),
                 extra_env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
               "ENCORE_API_KEY": KEY, "OMP_NUM_THREADS": "1", **(extra_env or {})}
        args = [sys.executable, "-m", "encore.frontends.server", "--port", str(self.port), "--data-dir",
                str(data_dir), "--workers", str(workers), "--pipeline-factory", FAKE_FACTORY, "--heartbeat-s", "0.3",
                "--lease-s", "1.5", "--drain-grace-s", "5", *extra_args]
        self.log = open(data_dir.parent / f"server-{self.port}.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, headers=AUTH, timeout=10)

    def wait_ready(self, timeout: float = 30.0, need_ready: bool = True) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}: {self.log_text()[-2000:]}")
            try:
                r = self.client.get("/ready")
                if r.status_code == 200 or (not need_ready and r.status_code == 503):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready: {self.log_text()[-2000:]}")

    def log_text(self) -> str:
        self.log.flush()
        return (self.data_dir.parent / f"server-{self.port}.log").read_text(errors="replace")

    def worker_pids(self) -> dict[str, int]:
        from encore.frontends.server.store import SQLiteJobStore

        store = SQLiteJobStore(self.data_dir / "jobs.db")
        return {w.id: w.pid for w in store.workers() if w.state == "ready"}

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.client.close()
        self.log.close()
        return int(self.proc.returncode)


def kill_orphan_workers(tmp_path: Path) -> None:
    """Workers notice a dead supervisor within ~1 s and drain; make sure none outlives the test."""
    from encore.frontends.server.store import SQLiteJobStore

    db = tmp_path / "data" / "jobs.db"
    if not db.exists():
        return
    deadline = time.monotonic() + 5
    pids = [w.pid for w in SQLiteJobStore(db).workers()]
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def upload(client: Any, data: bytes, filename: str) -> dict[str, Any]:
    """POST /v1/uploads one file; returns the JSON reply (asserts 201)."""
    r = client.post("/v1/uploads", files={"file": (filename, data, "audio/wav")})
    assert r.status_code == 201, r.text
    return dict(r.json())
