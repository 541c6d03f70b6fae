"""Fixtures for the evaluation tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.eval_synth import write_synth_corpus


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 four-second synthetic clips (seed 0)."""
    return write_synth_corpus(tmp_path_factory.mktemp("synth_corpus"), 30)
