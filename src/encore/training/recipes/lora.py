"""LoraRecipe: LoRA fine-tuning of the DiT from cached latents (`encore train lora`; torchtune-style recipe).

`setup` (process group, latents, frozen base model, adapter, optimizer, resume) -> `train` -> `save_checkpoint`
-> `cleanup`. Runs on one process or under `torchrun` (DDP through `accelerate`; gloo on CPU). Every random
number is drawn per sample from `(seed, epoch, position)`, so the loss curve does not depend on how the global
batch is split over processes, and a resumed run continues exactly where it stopped.
Run: `python -m encore.training.recipes.lora --config lora.toml [key=value ...]`.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from encore.errors import CheckpointError, EncoreError, InvalidRequest, NumericalError
from encore.training import checkpointing as ckpt
from encore.training.config import LoraTrainConfig, config_to_dict, load_config
from encore.training.data import INDEX_NAME, LatentDataset, LatentSample, collate
from encore.training.lora import AdapterSet, LoraAdapter, read_adapter, save_adapter
from encore.training.objectives import (
    STREAM_DROPOUT,
    STREAM_FLOW,
    draw_flow,
    flow_matching_loss,
    item_generators,
    mix_seed,
)

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
LOSS_JSONL, LOSS_CSV, LOSS_PNG = "loss.jsonl", "loss.csv", "loss.png"
_STREAM_INIT, _STREAM_ORDER, _STREAM_PRESERVE_FLOW, _STREAM_PRESERVE_DROPOUT = 2, 3, 4, 5
_LOG_FIELDS = ("step", "epoch", "loss", "lr", "grad_norm", "elapsed_s")


@dataclass(frozen=True)
class TrainResult:
    """What `LoraRecipe.train` returns."""

    steps: int
    """Optimizer steps completed in total (including steps before a resume)."""
    losses: tuple[tuple[int, float], ...]
    """`(step, loss)` of the steps run by this call (global mean over the effective batch)."""
    adapter_dir: Path | None
    """Exported adapter folder (main process), else None."""
    checkpoint: Path | None


class _Trainable(nn.Module):
    """Decoder plus adapter in one module, so DDP sees (and all-reduces) the adapter parameters."""

    def __init__(self, decoder: nn.Module, adapter: LoraAdapter) -> None:
        super().__init__()
        self.decoder = decoder
        self.adapter = adapter

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, r: torch.Tensor, cond: torch.Tensor,
                context: torch.Tensor) -> torch.Tensor:
        return self.decoder(x_t, t, r, cond, context)


class LoraRecipe:
    """Trains one LoRA adapter on the DiT attention.

    Args:
        config: The run configuration.
    """

    def __init__(self, config: LoraTrainConfig) -> None:
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.step = 0
        self._started = time.monotonic()

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Process group, data, frozen model + adapter, optimizer, and resume state."""
        self._setup_accelerator()
        self.dataset = LatentDataset(self._resolve_latents(self.config.dataset, "latents"))
        self.preservation = None
        if self.config.preservation_dataset is not None:
            self.preservation = LatentDataset(self._resolve_latents(self.config.preservation_dataset,
                                                                    "preservation_latents"))
        self._setup_model()
        self._check_geometry()
        self._setup_optimizer()
        if self.config.resume:
            self._resume(self.config.resume)
        elif self.is_main:
            for name in (LOSS_JSONL, LOSS_CSV):
                (self.output_dir / name).unlink(missing_ok=True)

    def _setup_accelerator(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs

        device = self.config.device
        cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
        handlers: list[Any] = []
        if cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # accelerate would pick MPI when available; gloo is what every PyTorch CPU build has.
            handlers.append(InitProcessGroupKwargs(backend="gloo"))
        # Precision is handled here (autocast + dtypes), not by accelerate, so runs with different precisions
        # can share a process.
        self.accelerator = Accelerator(cpu=cpu, mixed_precision="no", kwargs_handlers=handlers)
        self.device = self.accelerator.device
        self.world_size = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        self.is_main = self.accelerator.is_main_process
        for name in ("batch_size", "preservation_batch_size"):
            if getattr(self.config, name) % self.world_size:
                raise InvalidRequest(name, f"{getattr(self.config, name)} is not divisible by the "
                                     f"{self.world_size} processes")
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)

    def _checkpoint_paths(self) -> Any:
        from encore.pipeline.loading import resolve_checkpoint

        return resolve_checkpoint(self.config.checkpoint)

    def _resolve_latents(self, dataset: str, cache_name: str) -> Path:
        """A latent folder/index as given, or the (re)built cache of a dataset manifest."""
        from encore.data.preprocess import checkpoint_identity, fresh_latents, preprocess_manifest

        path = Path(dataset)
        if path.is_dir() or path.name == INDEX_NAME:
            return path
        ident = checkpoint_identity(self._checkpoint_paths())
        if self.is_main and fresh_latents(path, ident) is None:
            from encore.pipeline.loading import load_components

            log.info("encoding the dataset into latents (once; later runs reuse them)")
            components = load_components(self.config.checkpoint, device=self.device, dtype=torch.float32)
            out = (Path(self.config.latents_dir) / cache_name if self.config.latents_dir
                   else self.output_dir / cache_name)
            preprocess_manifest(path, components, out, seed=self.config.seed)
            del components
        self.accelerator.wait_for_everyone()
        index = fresh_latents(path, ident)
        if index is None:
            raise CheckpointError(str(path), "latents are missing or stale after preprocessing")
        return index

    def _setup_model(self) -> None:
        from encore.models.vae import VAEConfig
        from encore.pipeline.loading import load_dit_config, load_model

        cfg = self.config
        paths = self._checkpoint_paths()
        vae_config = VAEConfig.from_json(paths.vae / "config.json") if paths.layout == "diffusers" else None
        self.model_config = load_dit_config(paths, vae_config)
        self.base_dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
        model = load_model(paths, self.model_config, dtype=self.base_dtype)
        decoder = model.decoder
        self.null_condition = model.null_condition_emb.detach().to(self.device)
        del model  # the condition encoder and tokenizers are not needed: conditions are cached
        decoder.requires_grad_(False)
        decoder.eval()
        adapters = AdapterSet.of(decoder)
        generator = torch.Generator().manual_seed(mix_seed(cfg.seed, 0, 0, _STREAM_INIT))
        adapter = adapters.add(cfg.adapter_name, cfg.lora_config(), generator=generator, dtype=torch.float32,
                               device="cpu")
        adapter.train()
        self.adapters, self.adapter = adapters, adapter
        self.decoder = decoder
        self.module = self.accelerator.prepare(_Trainable(decoder, adapter))

    def _check_geometry(self) -> None:
        c = self.model_config
        for data in (self.dataset, self.preservation):
            if data is None:
                continue
            if (data.latent_channels, data.condition_width) != (c.audio_acoustic_hidden_dim, c.enc_hidden_size):
                raise CheckpointError(str(data.root), "latents were made for another model geometry "
                                      f"({data.latent_channels}, {data.condition_width}) vs "
                                      f"({c.audio_acoustic_hidden_dim}, {c.enc_hidden_size})")
        needed = self.config.batch_size * self.config.gradient_accumulation_steps
        if len(self.dataset) < needed:
            raise InvalidRequest("batch_size", f"batch_size x gradient_accumulation_steps = {needed} exceeds "
                                 f"the {len(self.dataset)} samples")

    @property
    def _fixed_lengths(self) -> dict[str, int | None]:
        if self.config.padding == "batch":
            return {"num_frames": None, "condition_length": None}
        records = self.dataset.records + (self.preservation.records if self.preservation is not None else [])
        frames = self.config.crop_frames or max(int(r["num_frames"]) for r in records)
        return {"num_frames": frames, "condition_length": max(int(r["condition_length"]) for r in records)}

    def _setup_optimizer(self) -> None:
        cfg = self.config
        self.params = [p for p in self.adapter.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                           eps=cfg.adam_eps, weight_decay=cfg.weight_decay)

    # ------------------------------------------------------------------ schedule
    @property
    def steps_per_epoch(self) -> int:
        return len(self.dataset) // (self.config.batch_size * self.config.gradient_accumulation_steps)

    @property
    def total_steps(self) -> int:
        return self.config.max_steps or self.config.num_epochs * self.steps_per_epoch

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step `step` (0-based): linear warm-up, then constant or cosine to 0."""
        cfg = self.config
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return cfg.learning_rate * (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "cosine":
            span = max(1, self.total_steps - cfg.warmup_steps)
            return cfg.learning_rate * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - cfg.warmup_steps) / span)))
        return cfg.learning_rate

    def _epoch_order(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(mix_seed(self.config.seed, epoch, 0, _STREAM_ORDER))
        return torch.randperm(len(self.dataset), generator=gen).tolist()

    # ------------------------------------------------------------------ training
    def _share(self, positions: range, size: int) -> list[int]:
        per_rank = size // self.world_size
        return list(positions)[self.rank * per_rank:(self.rank + 1) * per_rank]

    def _crop(self, sample: LatentSample, gen: torch.Generator) -> LatentSample:
        frames = self.config.crop_frames
        if frames is None or sample.num_frames <= frames:
            return sample
        return sample.crop(int(torch.randint(sample.num_frames - frames + 1, (1,), generator=gen)), frames)

    def _micro_batch(self, epoch: int, order: list[int], micro: int) -> tuple[Any, Any]:
        """This process's share of global micro-batch number `micro` of the epoch: (batch on device, flow draw).

        Main items take epoch positions `micro * batch_size ...`; preservation items (if any) are drawn at random
        from generators keyed by their own positions, so both depend only on the position, not on the process.
        """
        cfg = self.config
        mine = self._share(range(micro * cfg.batch_size, (micro + 1) * cfg.batch_size), cfg.batch_size)
        gens = item_generators(cfg.seed, epoch, mine, STREAM_FLOW)
        samples = [self._crop(self.dataset[order[pos]], gen) for pos, gen in zip(mine, gens)]
        drop = item_generators(cfg.seed, epoch, mine, STREAM_DROPOUT, device=self.device)
        if self.preservation is not None:
            size = cfg.preservation_batch_size
            extra = self._share(range(micro * size, (micro + 1) * size), size)
            pgens = item_generators(cfg.seed, epoch, extra, _STREAM_PRESERVE_FLOW)
            for gen in pgens:
                index = int(torch.randint(len(self.preservation), (1,), generator=gen))
                samples.append(self._crop(self.preservation[index], gen))
            gens += pgens
            drop += item_generators(cfg.seed, epoch, extra, _STREAM_PRESERVE_DROPOUT, device=self.device)
        batch = collate(samples, **self._fixed_lengths).to(self.device, self.base_dtype)
        draw = draw_flow(gens, batch.target_latents.shape[1], batch.target_latents.shape[2],
                         cfg_dropout=cfg.cfg_dropout, mu=cfg.timestep_mu, sigma=cfg.timestep_sigma)
        self.adapters.set_dropout_generators(drop)
        return batch, draw

    def _train_step(self) -> tuple[float, float]:
        """One optimizer step (all micro-batches); returns (global mean loss, gradient norm)."""
        cfg = self.config
        accum = cfg.gradient_accumulation_steps
        per_step = (cfg.batch_size + cfg.preservation_batch_size) * accum
        epoch, k = divmod(self.step, self.steps_per_epoch)
        order = self._epoch_order(epoch)
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float32)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
        for m in range(accum):
            batch, draw = self._micro_batch(epoch, order, k * accum + m)
            sync = nullcontext() if m == accum - 1 else self.accelerator.no_sync(self.module)
            with sync, autocast:
                per_item = flow_matching_loss(self.module, batch.target_latents, batch.context_latents,
                                              batch.encoder_hidden_states, self.null_condition, draw,
                                              batch.frame_mask)
                # Sum over this rank's items / global count: DDP's gradient averaging over ranks then gives the
                # gradient of the global-batch mean, whatever the number of processes.
                loss = per_item.sum() * (self.world_size / per_step)
            self.accelerator.backward(loss)
            loss_sum += per_item.detach().sum()
        self.adapters.set_dropout_generators(None)
        total = float(self.accelerator.reduce(loss_sum, reduction="sum")) / per_step
        if not math.isfinite(total):
            raise NumericalError(f"non_finite_loss: loss is {total} at step {self.step + 1}; the last checkpoint "
                                 "is intact (lower learning_rate or check the data)")
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else math.inf
        norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return total, norm

    def train(self) -> TrainResult:
        """Runs until `total_steps`; writes logs, periodic checkpoints, the final checkpoint and the adapter."""
        cfg = self.config
        self._started = time.monotonic()
        losses: list[tuple[int, float]] = []
        last_ckpt: Path | None = None
        log.info("training %s: %d steps, %d samples, %d process(es)", cfg.adapter_name, self.total_steps,
                 len(self.dataset), self.world_size)
        while self.step < self.total_steps:
            loss, norm = self._train_step()
            losses.append((self.step, loss))
            if self.is_main and (self.step % cfg.log_every_steps == 0 or self.step == self.total_steps):
                self._log({"step": self.step, "epoch": (self.step - 1) // self.steps_per_epoch, "loss": loss,
                           "lr": self.optimizer.param_groups[0]["lr"], "grad_norm": norm,
                           "elapsed_s": round(time.monotonic() - self._started, 3)})
            if cfg.save_every_steps and self.step % cfg.save_every_steps == 0 and self.step < self.total_steps:
                last_ckpt = self.save_checkpoint()
        last_ckpt = self.save_checkpoint()
        adapter_dir = None
        if self.is_main:
            adapter_dir = save_adapter(self.adapter, self.output_dir / ADAPTER_DIR, base_model=cfg.checkpoint)
            if cfg.plot:
                plot_losses(self.output_dir / LOSS_JSONL, self.output_dir / LOSS_PNG)
        self.accelerator.wait_for_everyone()
        return TrainResult(steps=self.step, losses=tuple(losses), adapter_dir=adapter_dir, checkpoint=last_ckpt)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path | None:
        """Writes `checkpoints/step-N/` (main process) and prunes old ones; returns its path on the main process."""
        folder = None
        if self.is_main:
            tensors, groups = ckpt.optimizer_to_flat(self.optimizer.state_dict())
            tensors.update(ckpt.rng_tensors())
            state = {"step": self.step, "epoch": self.step // max(1, self.steps_per_epoch),
                     "world_size": self.world_size, "optimizer_param_groups": groups,
                     "config": config_to_dict(self.config)}
            folder = ckpt.write_checkpoint(
                ckpt.checkpoint_dir(self.output_dir, self.step), state, tensors,
                lambda tmp: save_adapter(self.adapter, tmp, base_model=self.config.checkpoint))
            ckpt.prune_checkpoints(self.output_dir, self.config.keep_checkpoints)
        self.accelerator.wait_for_everyone()
        return folder

    def _resume(self, which: str) -> None:
        if which == "latest":
            found = ckpt.list_checkpoints(self.output_dir)
            if not found:
                raise InvalidRequest("resume", f"no checkpoint in {self.output_dir / ckpt.CHECKPOINTS_DIR}")
            folder = found[-1]
        else:
            folder = Path(which)
        loaded = ckpt.read_checkpoint(folder)
        saved = read_adapter(folder)
        for module_name in self.adapter.module_names:
            if module_name not in saved.tensors:
                raise CheckpointError(str(folder), f"adapter has no weights for {module_name!r}")
            a, b = saved.tensors[module_name]
            layer = self.adapter.layer(module_name)
            with torch.no_grad():
                layer.lora_A.weight.copy_(a)
                layer.lora_B.weight.copy_(b)
        self.optimizer.load_state_dict(ckpt.optimizer_from_flat(loaded.tensors, loaded.state["optimizer_param_groups"]))
        ckpt.restore_rng(loaded.tensors)
        self.step = int(loaded.state["step"])
        if self.is_main:
            _truncate_log(self.output_dir, self.step)
        log.info("resumed from %s at step %d", folder, self.step)

    def cleanup(self) -> None:
        """Detaches the adapter hooks and shuts the process group down (when this recipe started it)."""
        if hasattr(self, "adapters"):
            self.adapters.clear()
        if hasattr(self, "accelerator") and torch.distributed.is_available() and torch.distributed.is_initialized():
            self.accelerator.wait_for_everyone()
            torch.distributed.destroy_process_group()

    # ------------------------------------------------------------------ logs
    def _log(self, record: dict[str, Any]) -> None:
        with open(self.output_dir / LOSS_JSONL, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        path = self.output_dir / LOSS_CSV
        new = not path.exists()
        with open(path, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=_LOG_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow({k: record[k] for k in _LOG_FIELDS})


def read_loss_log(path: str | Path) -> list[dict[str, Any]]:
    """Records of a `loss.jsonl` (empty list if the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _truncate_log(output_dir: Path, step: int) -> None:
    """Drops log records past `step` (a run killed after its last checkpoint logged steps it will redo)."""
    records = [r for r in read_loss_log(output_dir / LOSS_JSONL) if r["step"] <= step]
    (output_dir / LOSS_JSONL).write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    with open(output_dir / LOSS_CSV, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=_LOG_FIELDS)
        writer.writeheader()
        for r in records:
            writer.writerow({k: r[k] for k in _LOG_FIELDS})


def plot_losses(jsonl: Path, png: Path) -> Path | None:
    """Loss curve (raw + moving average) as PNG; None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib not installed; no loss plot")
        return None
    records = read_loss_log(jsonl)
    if not records:
        return None
    steps = [r["step"] for r in records]
    values = [r["loss"] for r in records]
    window = max(1, len(values) // 20)
    smooth = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
              for i in range(len(values))]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, values, alpha=0.35, label="loss")
    ax.plot(steps, smooth, label=f"moving average ({window})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("flow-matching loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def run(config: LoraTrainConfig) -> TrainResult:
    """setup -> train -> cleanup (cleanup also runs when training fails)."""
    recipe = LoraRecipe(config)
    try:
        recipe.setup()
        return recipe.train()
    finally:
        recipe.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m encore.training.recipes.lora --config lora.toml key=value ...` (torchrun-compatible)."""
    parser = argparse.ArgumentParser(prog="encore-train-lora", description=__doc__)
    parser.add_argument("--config", help="TOML file with LoraTrainConfig fields")
    parser.add_argument("overrides", nargs="*", help="key=value (TOML values)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = run(load_config(LoraTrainConfig, args.config, args.overrides))
    except EncoreError as exc:
        sys.stderr.write(f"encore train lora: error: {exc}\n")
        return 2 if isinstance(exc, InvalidRequest) else 1
    if result.adapter_dir is not None:
        print(json.dumps({"steps": result.steps, "final_loss": result.losses[-1][1] if result.losses else None,
                          "adapter": str(result.adapter_dir)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
