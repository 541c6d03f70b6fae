"""`AceStepConfig` JSON round trip for the tiny, 2B and XL geometries."""

from __future__ import annotations

from pathlib import Path

import pytest

from encore.models.config import AceStepConfig


@pytest.mark.parametrize("config", [AceStepConfig.tiny(), AceStepConfig(), AceStepConfig.xl()],
                         ids=["tiny", "2b", "xl"])
def test_json_round_trip(tmp_path: Path, config: AceStepConfig) -> None:
    path = tmp_path / "config.json"
    config.to_json(path)
    again = AceStepConfig.from_json(path)
    assert again == config
    assert again.to_dict() == config.to_dict()
    assert again.enc_hidden_size == (min(2048, config.hidden_size))
