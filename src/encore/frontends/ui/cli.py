"""`encore ui`: the Gradio web UI. It talks to an Encore server (``--api-url``), or starts a private one on a
free loopback port (with a random key) and stops it on exit. The UI process never loads the model."""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from encore.frontends.server.cli import EXIT_WITH_PARENT_ENV
from encore.frontends.server.settings import is_loopback

KEY_ENV = "ENCORE_API_KEY"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `ui` subcommand."""
    p = subparsers.add_parser("ui", help="Run the web UI (Gradio) on top of an Encore server.",
                              description="Web UI for every task. Without --api-url it starts its own server "
                                          "(workers load --checkpoint) and stops it on exit.")
    p.add_argument("--api-url", default=None, help="Encore server to use (default: start a private one).")
    p.add_argument("--api-key", default=os.environ.get(KEY_ENV), help=f"Server API key (default ${KEY_ENV}).")
    p.add_argument("--host", default="127.0.0.1", help="UI bind address (loopback by default).")
    p.add_argument("--port", type=int, default=7860, help="UI port.")
    p.add_argument("--auth", default=None, help="user:password for the UI (required off loopback).")
    p.add_argument("--checkpoint", default=os.environ.get("ENCORE_CHECKPOINT"), help="For the private server.")
    p.add_argument("--workers", type=int, default=1, help="Workers of the private server.")
    p.add_argument("--data-dir", default="encore-server", help="Data folder of the private server.")
    p.add_argument("--serve-arg", action="append", default=[], help="Extra option for the private server.")
    p.set_defaults(func=run_ui)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_private_server(args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], str, str]:
    """Start `python -m encore.frontends.server` on a free loopback port with a random key."""
    import httpx

    port, key = _free_port(), secrets.token_urlsafe(24)
    cmd = [sys.executable, "-m", "encore.frontends.server", "--port", str(port), "--data-dir", args.data_dir,
           "--workers", str(args.workers), *(["--checkpoint", args.checkpoint] if args.checkpoint else []),
           *args.serve_arg]
    proc = subprocess.Popen(cmd, env={**os.environ, KEY_ENV: key, EXIT_WITH_PARENT_ENV: "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"encore ui: the server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url, key
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("encore ui: the server did not start within 60 s")


def run_ui(args: argparse.Namespace) -> int:
    """Entry point of `encore ui`."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network calls from the UI process
    from encore.frontends.ui.app import ApiClient, build_ui

    if not is_loopback(args.host) and not args.auth:
        sys.stderr.write("encore ui: error: binding a non-loopback address needs --auth user:password\n")
        return 2
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    server: subprocess.Popen[bytes] | None = None
    url, key = args.api_url, args.api_key

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # Gradio closes cleanly on it; then the private server is stopped below

    signal.signal(signal.SIGTERM, interrupt)
    if url is None:
        server, url, key = start_private_server(args)
    try:
        demo = build_ui(ApiClient(url, key))
        demo.queue(default_concurrency_limit=None)
        demo.launch(server_name=args.host, server_port=args.port, auth=auth, share=False, ssr_mode=False,
                    show_error=True, prevent_thread_lock=False, quiet=True, footer_links=[])
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m encore.frontends.ui [options]``."""
    parser = argparse.ArgumentParser(prog="python -m encore.frontends.ui")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args: Any = parser.parse_args(["ui", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))
