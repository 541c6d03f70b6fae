"""`encore serve`: the API (uvicorn) plus supervised worker processes, with a graceful drain on SIGTERM.

`register(subparsers)` adds the subcommand to the main CLI. The API process never imports torch; only the
workers load the pipeline. First SIGTERM/SIGINT: /ready turns 503, submits get 503, workers finish (or release)
their jobs within the grace period, then the server exits 0. A second signal stops at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from typing import Any

from encore.frontends.server.settings import ServerSettings

logger = logging.getLogger(__name__)

KEY_ENV = "ENCORE_API_KEY"
EXIT_WITH_PARENT_ENV = "ENCORE_EXIT_WITH_PARENT"
"""Set by `encore ui` for its private server: drain and exit when the UI process goes away."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `serve` subcommand."""
    d = ServerSettings()
    p = subparsers.add_parser(
        "serve", help="Run the REST API server (own /v1 API + ACE-Step compatible routes) with workers.",
        description="Serve generation jobs over HTTP. Jobs are durable (SQLite in --data-dir) and run in worker "
                    f"processes. API keys come from --api-key or ${KEY_ENV} (comma-separated); without a key "
                    "only loopback addresses may be bound.")
    p.add_argument("--host", default=d.host, help=f"Bind address (default {d.host}).")
    p.add_argument("--port", type=int, default=d.port, help=f"Port (default {d.port}).")
    p.add_argument("--api-key", action="append", default=None, help="Accepted API key (repeatable).")
    p.add_argument("--data-dir", default=d.data_dir, help="Server-owned folder for the job store, uploads, outputs.")
    p.add_argument("--workers", type=int, default=d.workers, help="Worker processes (each loads the model).")
    p.add_argument("--checkpoint", default=os.environ.get("ENCORE_CHECKPOINT"), help="Checkpoint folder or preset.")
    p.add_argument("--variant", default=None,
                   help="DiT of a checkpoint root holding several (turbo, base, ...; default: the turbo when present).")
    p.add_argument("--planner", default=os.environ.get("ENCORE_PLANNER"),
                   help="Folder of the 5 Hz LM (enables /format_input, simple mode and thinking).")
    p.add_argument("--device", default=d.device, help="Worker device: auto, cpu, cuda, cuda:1, mps.")
    p.add_argument("--dtype", default=d.dtype, help="Worker dtype: auto, float32, bfloat16, float16.")
    p.add_argument("--pipeline-factory", default=d.pipeline_factory, help="module:function building the pipeline.")
    p.add_argument("--model-name", default=d.model_name, help="Model name reported by /v1/models.")
    p.add_argument("--queue-max", type=int, default=d.queue_max, help="Queued jobs before submits get 429.")
    p.add_argument("--max-attempts", type=int, default=d.max_attempts, help="Runs per job if workers crash.")
    p.add_argument("--lease-s", type=float, default=d.lease_s, help="Job lease length (renewed by heartbeat).")
    p.add_argument("--heartbeat-s", type=float, default=d.heartbeat_s, help="Worker heartbeat interval.")
    p.add_argument("--job-timeout-s", type=float, default=d.job_timeout_s,
                   help="A job's deadline before any job was measured, and the cap of every estimated one.")
    p.add_argument("--job-timeout-floor-s", type=float, default=d.job_timeout_floor_s,
                   help="Slack added to every estimated deadline (so also the least one).")
    p.add_argument("--job-timeout-factor", type=float, default=d.job_timeout_factor,
                   help="A generation's deadline: this many times its estimated run time, plus the floor.")
    p.add_argument("--drain-grace-s", type=float, default=d.drain_grace_s, help="Grace period on shutdown.")
    p.add_argument("--cancel-grace-s", type=float, default=d.cancel_grace_s,
                   help="How long a cancelled or timed-out job may take to stop before its worker is restarted.")
    p.add_argument("--allowed-origin", action="append", default=[], help="Browser origin allowed to POST.")
    p.add_argument("--allowed-host", action="append", default=[], help="Extra accepted Host header name.")
    p.add_argument("--lora-dir", default=None, help="Folder of LoRA adapters clients may name (off by default).")
    p.add_argument("--rate-per-s", type=float, default=d.rate_per_s, help="Per-client submits per second (0 = off).")
    p.add_argument("--max-active-per-client", type=int, default=d.max_active_per_client,
                   help="Per-client cap on queued + running jobs (0 = off).")
    p.add_argument("--no-self-test", action="store_true", help="Skip the workers' one-step self-test.")
    p.set_defaults(func=run_serve)


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """ServerSettings from parsed `serve` arguments (keys from --api-key, else $ENCORE_API_KEY)."""
    keys = tuple(args.api_key or [k.strip() for k in os.environ.get(KEY_ENV, "").split(",") if k.strip()])
    return ServerSettings(
        data_dir=args.data_dir, host=args.host, port=args.port, api_keys=keys, workers=args.workers,
        checkpoint=args.checkpoint, variant=args.variant, planner=args.planner, device=args.device, dtype=args.dtype,
        pipeline_factory=args.pipeline_factory,
        model_name=args.model_name, queue_max=args.queue_max, max_attempts=args.max_attempts, lease_s=args.lease_s,
        heartbeat_s=args.heartbeat_s, job_timeout_s=args.job_timeout_s, job_timeout_floor_s=args.job_timeout_floor_s,
        job_timeout_factor=args.job_timeout_factor, drain_grace_s=args.drain_grace_s,
        cancel_grace_s=args.cancel_grace_s, reaper_interval_s=min(ServerSettings.reaper_interval_s, args.heartbeat_s),
        allowed_origins=tuple(args.allowed_origin), allowed_hosts=tuple(args.allowed_host), lora_dir=args.lora_dir,
        rate_per_s=args.rate_per_s, max_active_per_client=args.max_active_per_client,
        self_test=not args.no_self_test)


def run_serve(args: argparse.Namespace) -> int:
    """Entry point of `encore serve`."""
    settings = settings_from_args(args)
    try:
        settings.check()
    except ValueError as exc:
        sys.stderr.write(f"encore serve: error: {exc}\n")
        return 2
    logging.getLogger("encore").setLevel(logging.INFO)
    return serve(settings)


def serve(settings: ServerSettings, worker_env: dict[str, str] | None = None) -> int:
    """Run API + workers until SIGTERM/SIGINT; returns the exit code (0 after a clean drain)."""
    import uvicorn

    from encore.frontends.server.app import create_app
    from encore.frontends.server.store import SQLiteJobStore
    from encore.frontends.server.supervisor import Supervisor

    os.makedirs(settings.data_dir, mode=0o700, exist_ok=True)
    store = SQLiteJobStore(settings.db_path)
    app = create_app(settings, store)
    supervisor = Supervisor(settings, store, env=worker_env)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning", access_log=False,
                            timeout_keep_alive=5, h11_max_incomplete_event_size=32 * 1024)
    server = draining_server(config, app.state.service, supervisor)
    if os.environ.get(EXIT_WITH_PARENT_ENV):
        _exit_with_parent(server)
    supervisor.start()
    try:
        server.run()
    finally:
        if not supervisor.stopping.is_set():
            supervisor.stop(grace_s=settings.drain_grace_s)
    return 0


def _exit_with_parent(server: Any) -> None:
    parent = os.getppid()

    def watch() -> None:
        while not server.should_exit:
            if os.getppid() != parent:
                server.handle_exit(15, None)
                return
            threading.Event().wait(1.0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def draining_server(config: Any, service: Any, supervisor: Any) -> Any:
    """A uvicorn.Server whose first exit signal drains (ready=503, submits=503, workers finish or release
    their jobs) before stopping, and whose second signal stops at once. No signal is re-raised, so a clean
    drain exits 0."""
    import uvicorn

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if service.draining:
                self.should_exit = self.force_exit = True
                return
            service.draining = True
            logger.info("draining: waiting up to %.0f s for running jobs", supervisor.settings.drain_grace_s)

            def drain() -> None:
                supervisor.stop()
                self.should_exit = True

            threading.Thread(target=drain, name="drain", daemon=True).start()

    return _Server(config)
