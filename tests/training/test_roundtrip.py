"""LoRA round trip: train -> export -> reload in a new process gives identical outputs; scale 0 = base model.

Both through `Pipeline.generate` (`GenerationRequest.loras`) and through `encore generate --lora`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from encore.audio.io import read_metadata
from encore.frontends import cli
from encore.training.config import LoraTrainConfig
from encore.training.recipes.lora import run

pytestmark = pytest.mark.integration
SEED = 1234
SCRIPT = Path(__file__).with_name("lora_roundtrip.py")


def _module():
    spec = importlib.util.spec_from_file_location("lora_roundtrip", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def adapter(tiny_checkpoint: Path, tiny_dataset, tmp_path_factory: pytest.TempPathFactory) -> str:
    _, latents = tiny_dataset
    out = tmp_path_factory.mktemp("lora_run")
    trained = run(LoraTrainConfig(checkpoint=str(tiny_checkpoint), dataset=str(latents), output_dir=str(out),
                                  rank=4, alpha=8, batch_size=2, max_steps=3, learning_rate=5e-3, device="cpu",
                                  plot=False))
    return str(trained.adapter_dir)



def _same_threads_env() -> dict[str, str]:
    # Bit-identical results need the same reduction order, hence the same intra-op thread count as this process.
    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}

def test_exported_adapter_round_trips_across_processes(tiny_checkpoint: Path, adapter: str, tmp_path: Path) -> None:
    module = _module()
    with_lora = module.generate(str(tiny_checkpoint), adapter, 1.0, SEED)
    base = module.generate(str(tiny_checkpoint), None, 1.0, SEED)
    at_zero = module.generate(str(tiny_checkpoint), adapter, 0.0, SEED)
    assert torch.equal(at_zero["latents"], base["latents"]) and torch.equal(at_zero["audio"], base["audio"])
    assert not torch.equal(with_lora["latents"], base["latents"])

    out = tmp_path / "fresh.safetensors"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tiny_checkpoint), adapter, "1.0", str(SEED), str(out)],
                          capture_output=True, text=True, env=_same_threads_env(), timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fresh = load_file(out)
    assert torch.equal(fresh["latents"], with_lora["latents"])
    assert torch.equal(fresh["audio"], with_lora["audio"])


def test_cli_generate_with_the_adapter_reproduces_in_a_new_process(
        tiny_checkpoint: Path, adapter: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = _module()
    plain_args = ["generate", "--checkpoint", str(tiny_checkpoint), "--caption", module.CAPTION,
                  "--duration", str(module.DURATION_S), "--seed", str(SEED)]
    args = [*plain_args, "--lora", f"{adapter}:1.0", "-o"]
    assert cli.main([*args, str(tmp_path / "here.wav")]) == 0, capsys.readouterr().err
    assert cli.main([*plain_args, "-o", str(tmp_path / "plain.wav")]) == 0
    exe = shutil.which("encore", path=str(Path(sys.executable).parent))
    assert exe is not None, "console script `encore` not installed"
    proc = subprocess.run([exe, *args, str(tmp_path / "fresh.wav")], capture_output=True, text=True,
                          env=_same_threads_env(), timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    here, fresh, plain = (sf.read(tmp_path / f"{n}.wav")[0] for n in ("here", "fresh", "plain"))
    assert np.array_equal(here, fresh) and not np.array_equal(here, plain)
    meta = read_metadata(tmp_path / "fresh.wav")
    assert meta == read_metadata(tmp_path / "here.wav")
    assert [(m["name"], m["scale"]) for m in meta["loras"]] == [(f"{Path(adapter).parent.name}/adapter", 1.0)]
    assert len(meta["loras"][0]["sha256"]) == 12
