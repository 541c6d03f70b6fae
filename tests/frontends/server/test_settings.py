"""`encore serve` options reach the workers: the DiT variant travels in the worker settings to the loader."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from encore.frontends.server import cli as server_cli
from encore.frontends.server import worker
from encore.frontends.server.settings import ServerSettings


def _settings(*argv: str) -> ServerSettings:
    parser = argparse.ArgumentParser()
    server_cli.register(parser.add_subparsers(dest="command"))
    return server_cli.settings_from_args(parser.parse_args(["serve", *argv]))


def test_variant_reaches_the_worker_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    from encore.pipeline.pipeline import Pipeline

    assert _settings().variant is None
    settings = _settings("--checkpoint", "embedded", "--variant", "base")
    assert settings.variant == "base"
    shipped = ServerSettings.from_json(settings.for_worker())  # what a worker process reads
    assert shipped.variant == "base" and shipped.checkpoint == "embedded"
    calls: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(Pipeline, "from_pretrained", classmethod(lambda cls, path, **kw: calls.append((path, kw))))
    worker.load_default_pipeline(shipped)
    assert calls == [("embedded", {"device": "auto", "dtype": "auto", "planner": None, "variant": "base"})]
