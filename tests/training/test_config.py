"""Training config: TOML + overrides, validation with field names."""

from __future__ import annotations

from pathlib import Path

import pytest

from encore.errors import InvalidRequest
from encore.training.config import LoraTrainConfig, config_to_dict, load_config

REQUIRED = {"checkpoint": "ck", "dataset": "ds.json", "output_dir": "out"}


def test_toml_then_overrides_then_keywords(tmp_path: Path) -> None:
    path = tmp_path / "lora.toml"
    path.write_text('# encore train lora --config lora.toml\ncheckpoint = "ck"\ndataset = "d"\noutput_dir = "o"\n'
                    'rank = 8\ntarget_modules = ["q_proj", "v_proj"]\nlearning_rate = 3e-4\n')
    cfg = load_config(LoraTrainConfig, path, ["rank=16", "device=cpu", "max_grad_norm=null"], seed=7)
    assert (cfg.rank, cfg.device, cfg.seed, cfg.learning_rate) == (16, "cpu", 7, 3e-4)
    assert cfg.max_grad_norm is None and cfg.target_modules == ("q_proj", "v_proj")
    assert cfg.lora_config().target_modules == ("q_proj", "v_proj")
    assert config_to_dict(cfg)["target_modules"] == ["q_proj", "v_proj"]
    assert (cfg.alpha, cfg.lora_dropout, cfg.cfg_dropout) == (128.0, 0.1, 0.15)  # official defaults


@pytest.mark.parametrize("override, field", [
    ("rnak=3", "rnak"), ("rank=0", "lora.rank"), ("batch_size=0", "batch_size"), ("precision='fp16'", "precision"),
    ("lora_dropout=1.0", "lora.dropout"), ("learning_rate=-1", "learning_rate"), ("oops", "config"),
])
def test_bad_values_name_their_field(override: str, field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        load_config(LoraTrainConfig, None, [override], **REQUIRED)
    assert info.value.field == field


def test_missing_required_field() -> None:
    with pytest.raises(InvalidRequest, match="output_dir"):
        load_config(LoraTrainConfig, None, ["checkpoint=a", "dataset=b"])
