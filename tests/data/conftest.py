"""Fixtures for the corpus-builder tests: skip cleanly when the Debian tools/soundfonts are not installed."""

from __future__ import annotations

import importlib.util
import shutil

import pytest

TEST_SOUNDFONT = "TimGM6mb"  # 6 MB, loads in ~0.05 s


def _fluidsynth_ok() -> bool:
    if importlib.util.find_spec("mido") is None:
        return False
    from encore.data.render import _api, available_soundfonts
    from encore.errors import AudioError

    try:
        _api()
    except AudioError:
        return False
    return TEST_SOUNDFONT in available_soundfonts()


@pytest.fixture(scope="session")
def fluid() -> str:
    """Name of a small installed soundfont; skips without libfluidsynth (scripts/setup-data.sh)."""
    if not _fluidsynth_ok():
        pytest.skip("libfluidsynth3 / timgm6mb-soundfont not installed (run scripts/setup-data.sh)")
    return TEST_SOUNDFONT


@pytest.fixture(scope="session")
def music21_ok() -> None:
    if importlib.util.find_spec("music21") is None or importlib.util.find_spec("mido") is None:
        pytest.skip("music21/mido not installed (pip install -e '.[data]')")


@pytest.fixture(scope="session")
def abc2midi(music21_ok: None) -> None:
    if shutil.which("abc2midi") is None:
        pytest.skip("abc2midi not installed (run scripts/setup-data.sh)")


@pytest.fixture(scope="session")
def mma() -> None:
    if shutil.which("mma") is None:
        pytest.skip("mma not installed (run scripts/setup-data.sh)")


@pytest.fixture(scope="session")
def all_tools(fluid: str, abc2midi: None, mma: None) -> str:
    """Everything the full corpus needs; returns the test soundfont name."""
    return fluid
