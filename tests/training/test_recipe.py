"""LoraRecipe on the tiny model: logs, checkpoints, exact resume, accumulation, bf16, non-finite loss."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from encore.errors import InvalidRequest, NumericalError
from encore.training import checkpointing
from encore.training.config import LoraTrainConfig
from encore.training.lora import ADAPTER_WEIGHTS
from encore.training.recipes import lora as recipe_module
from encore.training.recipes.lora import LoraRecipe, read_loss_log, run


def _config(tiny_checkpoint: Path, dataset: Path, out: Path, **kw) -> LoraTrainConfig:
    values = {"checkpoint": str(tiny_checkpoint), "dataset": str(dataset), "output_dir": str(out), "rank": 4,
              "alpha": 8, "batch_size": 2, "max_steps": 4, "learning_rate": 2e-3, "device": "cpu", "plot": False,
              "seed": 3}
    values.update(kw)
    return LoraTrainConfig(**values)


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter" / ADAPTER_WEIGHTS)


def test_train_writes_logs_checkpoints_and_adapter(tiny_checkpoint: Path, tiny_dataset, tmp_path: Path) -> None:
    manifest, _ = tiny_dataset
    # The manifest path (not the latent folder) is given: the recipe finds the fresh cache and reuses it.
    result = run(_config(tiny_checkpoint, manifest, tmp_path, save_every_steps=2, keep_checkpoints=1, plot=True))
    assert result.steps == 4 and [s for s, _ in result.losses] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(v)) for _, v in result.losses)
    records = read_loss_log(tmp_path / "loss.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4] and records[0]["lr"] == 2e-3
    assert (tmp_path / "loss.csv").read_text().splitlines()[0] == "step,epoch,loss,lr,grad_norm,elapsed_s"
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert [p.name for p in checkpointing.list_checkpoints(tmp_path)] == ["step-0000004"]  # keep=1 pruned step 2
    weights = _adapter(tmp_path)
    assert any(float(v.abs().max()) > 0 for k, v in weights.items() if "lora_B" in k)  # it learned something
    assert not list(tmp_path.glob("latents"))  # no re-encoding: the manifest's cache was fresh


def test_resume_continues_exactly(tiny_checkpoint: Path, tiny_dataset, tmp_path: Path) -> None:
    _, latents = tiny_dataset
    kw = {"lora_dropout": 0.2, "crop_frames": 40, "gradient_accumulation_steps": 1, "max_steps": 4}
    full = run(_config(tiny_checkpoint, latents, tmp_path / "full", **kw))
    run(_config(tiny_checkpoint, latents, tmp_path / "part", save_every_steps=2, **{**kw, "max_steps": 2}))
    # Simulate a crash after the step-2 checkpoint: a stray log line past it must be dropped on resume.
    with open(tmp_path / "part" / "loss.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "epoch": 1, "loss": 0.0, "lr": 0, "grad_norm": 0, "elapsed_s": 0}) + "\n")
    resumed = run(_config(tiny_checkpoint, latents, tmp_path / "part", resume="latest", **kw))
    assert [s for s, _ in resumed.losses] == [3, 4]
    assert resumed.losses == full.losses[2:]  # bit-identical loss values
    a, b = _adapter(tmp_path / "full"), _adapter(tmp_path / "part")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in read_loss_log(tmp_path / "part" / "loss.jsonl")] == [v for _, v in full.losses]


def test_gradient_accumulation_matches_the_larger_batch(tiny_checkpoint: Path, tiny_dataset, tmp_path: Path) -> None:
    _, latents = tiny_dataset
    big = run(_config(tiny_checkpoint, latents, tmp_path / "big", batch_size=2, max_steps=2, lora_dropout=0.1))
    acc = run(_config(tiny_checkpoint, latents, tmp_path / "acc", batch_size=1, gradient_accumulation_steps=2,
                      max_steps=2, lora_dropout=0.1))
    # Same items, same per-item random numbers: only the summation order differs. (Weights are not compared:
    # Adam's g / sqrt(v) turns rounding noise in near-zero gradient entries into full-size update differences.)
    assert [s for s, _ in big.losses] == [s for s, _ in acc.losses] == [1, 2]
    for (_, l1), (_, l2) in zip(big.losses, acc.losses):
        assert abs(l1 - l2) <= 1e-4 * max(1.0, abs(l1))


def test_bf16_precision_trains(tiny_checkpoint: Path, tiny_dataset, tmp_path: Path) -> None:
    _, latents = tiny_dataset
    result = run(_config(tiny_checkpoint, latents, tmp_path, precision="bf16", max_steps=2))
    assert all(math.isfinite(v) and abs(v) < 1e6 for _, v in result.losses)
    assert all(v.dtype == torch.float32 for v in _adapter(tmp_path).values())  # trainable weights stay fp32


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tiny_checkpoint: Path, tiny_dataset, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _, latents = tiny_dataset
    recipe = LoraRecipe(_config(tiny_checkpoint, latents, tmp_path, save_every_steps=1, max_steps=3))
    recipe.setup()
    try:
        real = recipe_module.flow_matching_loss
        calls = {"n": 0}

        def flaky(*args, **kwargs):
            calls["n"] += 1
            loss = real(*args, **kwargs)
            return loss * float("nan") if calls["n"] == 2 else loss

        monkeypatch.setattr(recipe_module, "flow_matching_loss", flaky)
        with pytest.raises(NumericalError, match="non_finite_loss"):
            recipe.train()
    finally:
        recipe.cleanup()
    assert [p.name for p in checkpointing.list_checkpoints(tmp_path)] == ["step-0000001"]
    assert checkpointing.read_checkpoint(tmp_path / "checkpoints" / "step-0000001").state["step"] == 1


def test_preservation_data_is_mixed_in(tiny_checkpoint: Path, tiny_dataset, unit_latents: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    _, latents = tiny_dataset
    kw = {"preservation_dataset": str(unit_latents), "preservation_batch_size": 2, "max_steps": 2}
    seen = []
    real = recipe_module.collate

    def spy(samples, **kwargs):
        seen.append(len(samples))
        return real(samples, **kwargs)

    monkeypatch.setattr(recipe_module, "collate", spy)
    mixed = run(_config(tiny_checkpoint, latents, tmp_path / "a", **kw))
    monkeypatch.setattr(recipe_module, "collate", real)
    assert seen == [4, 4]  # 2 style items + 2 preservation items per micro-batch
    again = run(_config(tiny_checkpoint, latents, tmp_path / "b", **kw))
    plain = run(_config(tiny_checkpoint, latents, tmp_path / "c", max_steps=2))
    assert mixed.losses == again.losses and mixed.losses != plain.losses
    with pytest.raises(InvalidRequest, match="preservation_batch_size"):
        _config(tiny_checkpoint, latents, tmp_path, preservation_dataset=str(unit_latents))
