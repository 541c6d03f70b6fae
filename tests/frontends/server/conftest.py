"""Fixtures for the server tests (helpers live in `srvkit.py`)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from frontends.server.srvkit import InProcessServer, LiveServer, fast_settings, kill_orphan_workers


@pytest.fixture
def server(tmp_path: Path) -> Iterator[InProcessServer]:
    srv = InProcessServer(fast_settings(tmp_path))
    yield srv
    srv.close()


@pytest.fixture
def live_factory(tmp_path: Path) -> Iterator[Any]:
    """Start live servers on demand; all are stopped at teardown."""
    started: list[LiveServer] = []

    def start(**kwargs: Any) -> LiveServer:
        data = kwargs.pop("data_dir", tmp_path / "data")
        data.mkdir(parents=True, exist_ok=True)
        srv = LiveServer(data, **kwargs)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop(signal.SIGTERM, timeout=10)  # clean drain; stop() escalates to SIGKILL
    kill_orphan_workers(tmp_path)


