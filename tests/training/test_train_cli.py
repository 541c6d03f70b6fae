"""`encore train lora` / `encore dataset build` command registration and argument handling."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from encore.errors import InvalidRequest
from encore.frontends import train_cli


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    train_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_train_lora_runs_and_prints_a_report(tiny_checkpoint: Path, tiny_dataset, tmp_path: Path, capsys) -> None:
    _, index = tiny_dataset
    code = _run(["train", "lora", "--dataset", str(index), "--checkpoint", str(tiny_checkpoint), "--output-dir",
                 str(tmp_path), "--rank", "2", "--max-steps", "2", "--device", "cpu", "plot=false", "alpha=4"])
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["steps"] == 2 and Path(report["adapter"], "adapter_model.safetensors").is_file()
    config = json.loads(Path(report["adapter"], "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (2, 4)


def test_nproc_relaunches_under_torchrun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    monkeypatch.setattr(train_cli.subprocess, "call", lambda cmd: seen.setdefault("cmd", cmd) and 0)
    code = _run(["train", "lora", "--dataset", "d", "--checkpoint", "c", "--output-dir", str(tmp_path),
                 "--nproc", "2", "rank=8"])
    assert code == 0
    cmd = seen["cmd"]
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert "encore.training.recipes.lora" in cmd and "rank=8" in cmd and 'checkpoint="c"' in cmd


def test_bad_options_are_rejected_before_anything_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENCORE_CHECKPOINT", raising=False)
    with pytest.raises(InvalidRequest) as info:
        _run(["train", "lora", "--dataset", "d", "--checkpoint", "c", "--output-dir", str(tmp_path), "rank=-1"])
    assert info.value.field == "lora.rank"
    with pytest.raises(InvalidRequest, match="--checkpoint"):
        _run(["dataset", "build", str(tmp_path), "--planner", str(tmp_path)])


def test_other_recipes_get_their_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    seen = {}
    fake = types.SimpleNamespace(main=lambda argv: seen.setdefault("argv", argv) and 0)
    monkeypatch.setattr("importlib.import_module", lambda name: seen.setdefault("module", name) and fake)
    assert _run(["train", "dit", "--config", "x.toml", "max_steps=3"]) == 0
    assert seen == {"module": "encore.training.recipes.dit", "argv": ["--config", "x.toml", "max_steps=3"]}
