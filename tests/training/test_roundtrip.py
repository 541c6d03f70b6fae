"""LoRA round trip: train -> export -> reload in a new process gives identical outputs; scale 0 = base model."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from encore.training.config import LoraTrainConfig
from encore.training.recipes.lora import run

pytestmark = pytest.mark.integration
SEED = 1234
SCRIPT = Path(__file__).with_name("lora_roundtrip.py")


def _generate(*args):
    spec = importlib.util.spec_from_file_location("lora_roundtrip", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate(*args)


def test_exported_adapter_round_trips_across_processes(tiny_checkpoint: Path, tiny_dataset, tmp_path: Path) -> None:
    _, latents = tiny_dataset
    trained = run(LoraTrainConfig(checkpoint=str(tiny_checkpoint), dataset=str(latents), output_dir=str(tmp_path),
                                  rank=4, alpha=8, batch_size=2, max_steps=3, learning_rate=5e-3, device="cpu",
                                  plot=False))
    adapter = str(trained.adapter_dir)
    with_lora = _generate(str(tiny_checkpoint), adapter, 1.0, SEED)
    base = _generate(str(tiny_checkpoint), None, 1.0, SEED)
    at_zero = _generate(str(tiny_checkpoint), adapter, 0.0, SEED)
    assert torch.equal(at_zero["latents"], base["latents"]) and torch.equal(at_zero["audio"], base["audio"])
    assert not torch.equal(with_lora["latents"], base["latents"])

    out = tmp_path / "fresh.safetensors"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tiny_checkpoint), adapter, "1.0", str(SEED), str(out)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fresh = load_file(out)
    assert torch.equal(fresh["latents"], with_lora["latents"])
    assert torch.equal(fresh["audio"], with_lora["audio"])
