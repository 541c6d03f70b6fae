"""Server settings: one frozen dataclass shared by the API process, the supervisor and the workers.

Workers receive the settings as JSON in an environment variable, minus the API keys (workers never need them).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WORKER_SETTINGS_ENV = "ENCORE_WORKER_SETTINGS"


def is_loopback(host: str) -> bool:
    """True for loopback bind addresses (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerSettings:
    """Everything `encore serve` can be told. Durations are seconds, sizes bytes."""

    data_dir: str = "encore-server"
    """Server-owned folder: jobs.db, uploads/, outputs/. Clients never name paths inside it."""
    host: str = "127.0.0.1"
    port: int = 8001
    api_keys: tuple[str, ...] = ()
    """Accepted keys (header only). Empty = no auth, allowed only on a loopback bind."""
    allowed_origins: tuple[str, ...] = ()
    """Extra browser origins (scheme://host:port) allowed to send state-changing requests."""
    allowed_hosts: tuple[str, ...] = ()
    """Extra Host header names accepted besides loopback names and the bind host (anti DNS rebinding)."""
    workers: int = 1
    pipeline_factory: str = "encore.frontends.server.worker:load_default_pipeline"
    """"module:function" called as f(settings) in each worker to build the pipeline."""
    checkpoint: str | None = None
    variant: str | None = None
    """DiT of a checkpoint root holding several (turbo, base, or a folder name); None = the turbo when present."""
    planner: str | None = None
    """Folder of the 5 Hz LM; enables the planner modes (format / sample / understand) and ``planner.think``."""
    device: str = "auto"
    dtype: str = "auto"
    model_name: str = "encore"
    """Name reported by /v1/models."""
    queue_max: int = 64
    max_attempts: int = 2
    lease_s: float = 30.0
    heartbeat_s: float = 5.0
    reaper_interval_s: float = 1.0
    job_timeout_s: float = 1800.0
    """Deadline of a job whose run time cannot be estimated yet, and the cap of every estimated one."""
    job_timeout_floor_s: float = 120.0
    """Slack added to every estimated deadline, so also the least one."""
    job_timeout_factor: float = 10.0
    """A generation job's deadline: this many times its estimated run time plus the floor, at most
    job_timeout_s. The estimate scales the server's measured seconds per (audio second × step × item)
    by the request's duration, steps and batch size."""
    cancel_grace_s: float = 10.0
    drain_grace_s: float = 30.0
    tombstone_retention_s: float = 7 * 24 * 3600.0
    files_retention_s: float = 24 * 3600.0
    json_body_max: int = 64 * 1024
    upload_max_bytes: int = 100 * 1024 * 1024
    upload_max_seconds: float = 610.0
    max_seconds_per_job: float = 600.0 * 8
    """Admission ceiling on duration × batch size."""
    rate_per_s: float = 0.0
    """Per-client submit rate (token bucket); 0 disables."""
    rate_burst: int = 20
    max_active_per_client: int = 0
    """Cap on one client's queued + running jobs (429 `too_many_active_jobs` beyond it); 0 disables."""
    lora_dir: str | None = None
    """Folder of LoRA adapters clients may name (by folder name). None disables LoRA over HTTP."""
    self_test: bool = True
    """Workers run a one-step generation after loading; /ready waits for it."""
    min_free_disk_bytes: int = 256 * 1024 * 1024
    worker_nice: int = 5
    torch_threads: int = 1
    env_label: str = "encore"
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form options passed to the pipeline factory (e.g. planner paths)."""

    # ------------------------------------------------------------------ derived paths
    @property
    def db_path(self) -> Path:
        return Path(self.data_dir) / "jobs.db"

    @property
    def uploads_dir(self) -> Path:
        return Path(self.data_dir) / "uploads"

    @property
    def outputs_dir(self) -> Path:
        return Path(self.data_dir) / "outputs"

    def check(self) -> None:
        """Refuse unsafe or impossible combinations (raises ValueError with a clear message)."""
        if not self.api_keys and not is_loopback(self.host):
            raise ValueError(f"refusing to bind {self.host} without an API key: set --api-key or ENCORE_API_KEY "
                             "(only loopback addresses may run without one)")
        if any(len(k) < 8 for k in self.api_keys):
            raise ValueError("API keys must be at least 8 characters")
        if self.queue_max < 1 or self.workers < 0 or self.max_attempts < 1:
            raise ValueError("queue_max >= 1, workers >= 0 and max_attempts >= 1 are required")
        if self.job_timeout_s <= 0 or self.job_timeout_floor_s < 0 or self.job_timeout_factor < 1:
            raise ValueError("job_timeout_s > 0, job_timeout_floor_s >= 0 and job_timeout_factor >= 1 are required")
        if self.max_active_per_client < 0:
            raise ValueError("max_active_per_client must be >= 0 (0 = no cap)")
        if not (0 < self.heartbeat_s < self.lease_s):
            raise ValueError("heartbeat_s must be positive and shorter than lease_s")
        if self.lora_dir and not Path(self.lora_dir).is_dir():
            raise ValueError(f"--lora-dir {self.lora_dir!r} is not a folder")

    def for_worker(self) -> str:
        """JSON for the worker environment, without the API keys."""
        data = dataclasses.asdict(self)
        data["api_keys"] = []
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> ServerSettings:
        """Inverse of `for_worker` (unknown keys are errors)."""
        data = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown server settings {sorted(unknown)}")
        for key in ("api_keys", "allowed_origins", "allowed_hosts"):
            data[key] = tuple(data.get(key, ()))
        return cls(**data)

    @classmethod
    def from_env(cls) -> ServerSettings:
        """The worker's settings, from `ENCORE_WORKER_SETTINGS`."""
        text = os.environ.get(WORKER_SETTINGS_ENV)
        if not text:
            raise ValueError(f"{WORKER_SETTINGS_ENV} is not set; workers are started by `encore serve`")
        return cls.from_json(text)
