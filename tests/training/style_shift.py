"""Style-shift measurement: does a LoRA trained on 8 clips of one style move outputs toward it, and only there?

Protocol (numbers reported in docs/lora.md):
1. Base model: the embedded model does not exist yet, so a small DiT (width 64, 4 layers) from a random
   checkpoint is first trained (all decoder weights, flow matching) on 24 clips of four generic styles with
   captions (folk guitar, ambient pads, rock drums, piano ballad) and written back as the checkpoint.
2. Eight 4 s clips of a style absent from that corpus (fast square-wave arpeggios, "chiptune") go through the
   real tools: `build_dataset` (activation tag `zq9`), `preprocess_manifest`, `LoraRecipe`.
3. `Pipeline.generate` renders the tagged style prompt and the three other prompts for 8 seeds at LoRA scales
   0, 0.5 and 1.
4. Probe/embedding: per-channel mean and std over time of the output latents, z-scored with the spread of the
   base outputs. Style score = projection of an output's embedding on the base->style centroid axis (0 = the
   base model's outputs for that prompt, 1 = the training clips). Drift of an unrelated prompt = mean per-seed
   distance between its LoRA and base outputs, relative to the base->style distance.

Both the plain recipe and the recipe with prior preservation (the generic corpus mixed into every batch) are run.
Run: `python tests/training/style_shift.py OUT_DIR [--steps N] [--base-steps N]` (prints JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

STYLE_PROMPT = "zq9, fast 8-bit chiptune arpeggios"
GENERIC = {
    "folk": "a calm acoustic folk song with guitar",
    "ambient": "slow ambient synth pads, dreamy",
    "rock": "heavy rock with live drums",
    "piano": "a gentle piano ballad",
}
UNRELATED = (GENERIC["folk"], GENERIC["ambient"], GENERIC["rock"])
SCALES = (0.0, 0.5, 1.0)
SEEDS = tuple(range(8))
RATE = 8000
SECONDS = 2.0
BASE_CONFIG = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
               "num_key_value_heads": 2, "head_dim": 16, "fsq_dim": 64, "is_turbo": False, "model_version": "base"}
BASE_DIR = "encore-tiny-base"
SAMPLING = {"num_steps": 20, "shift": 1.0, "guidance_scale": 3.0, "guidance": "cfg"}
"""The base model is not step-distilled: plain Euler with CFG (it was trained with condition dropout)."""


def _save(path: Path, x: np.ndarray, caption: str) -> None:
    x = 0.5 * x / (np.abs(x).max() + 1e-9)
    sf.write(path, np.stack([x, x], axis=1).astype(np.float32), RATE)
    path.with_suffix(".caption.txt").write_text(caption)


def _hz(note: np.ndarray | float) -> np.ndarray:
    return 440.0 * 2 ** ((np.asarray(note) - 69) / 12)


def write_generic_clips(folder: Path, per_style: int = 6) -> None:
    """The base corpus: plucked folk melodies, ambient pads, noise drums + saw bass, piano notes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    t = np.arange(int(SECONDS * RATE)) / RATE
    for i in range(per_style):
        root = 52 + int(rng.integers(0, 8))
        beat = 60.0 / 90
        notes = root + rng.choice([0, 2, 4, 7, 9], size=int(SECONDS / beat) + 1)[(t / beat).astype(int)]
        pluck = np.sin(2 * np.pi * np.cumsum(_hz(notes)) / RATE) * np.exp(-(t % beat) * 5)
        _save(folder / f"folk{i}.wav", pluck, GENERIC["folk"])
        chord = sum(np.sin(2 * np.pi * _hz(root + k) * t) for k in (0, 4, 7, 11))
        _save(folder / f"ambient{i}.wav", chord * np.minimum(1.0, t / 1.5), GENERIC["ambient"])
        kick = rng.standard_normal(t.shape) * np.exp(-(t % 0.4) * 30)
        bass = 2 * ((_hz(root - 24) * t) % 1.0) - 1
        _save(folder / f"rock{i}.wav", kick + 0.4 * np.clip(3 * bass, -1, 1), GENERIC["rock"])
        step = 60.0 / 70
        keys = root + 12 + rng.choice([0, 3, 5, 7, 10], size=int(SECONDS / step) + 1)[(t / step).astype(int)]
        piano = sum(np.sin(2 * np.pi * np.cumsum(_hz(keys + o)) / RATE) / (1 + o / 12) for o in (0, 12))
        _save(folder / f"piano{i}.wav", piano * np.exp(-(t % step) * 2), GENERIC["piano"])


def write_style_clips(folder: Path, count: int = 8) -> None:
    """Square-wave 16th-note arpeggios at 150 BPM in high registers, one key/pattern per clip."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    t = np.arange(int(SECONDS * RATE)) / RATE
    step = 60.0 / 150 / 4
    for i in range(count):
        root = 72 + int(rng.integers(0, 12))
        pattern = rng.permutation([0, 4, 7, 12])
        notes = root + pattern[(t / step).astype(int) % 4]
        square = np.sign(np.sin(2 * np.pi * np.cumsum(_hz(notes)) / RATE))
        _save(folder / f"chip{i}.wav", square * np.exp(-((t % step) / step) * 3), "fast 8-bit chiptune arpeggios")


def _dataset(pipe: Any, folder: Path, name: str, tag: str | None) -> Path:
    from encore.data.dataset_builder import BuildOptions, build_dataset
    from encore.data.preprocess import preprocess_manifest

    manifest = build_dataset(folder, BuildOptions(activation_tag=tag, analyze=False))
    manifest.root = folder.name
    path = manifest.save(folder.parent / f"{name}.json")
    return preprocess_manifest(path, pipe.components, folder.parent / f"{name}_latents", seed=0)


def pretrain_base(checkpoint: Path, pipe: Any, index: Path, *, steps: int, lr: float = 3e-3,
                  batch: int = 16) -> list[float]:
    """Trains every decoder weight on the generic corpus (flow matching) and writes it into `checkpoint`."""
    from encore.pipeline import convert
    from encore.pipeline.saving import write_official_dit
    from encore.training.data import LatentDataset, collate
    from encore.training.objectives import draw_flow, flow_matching_loss, item_generators

    data = LatentDataset(index)
    model = pipe.model
    decoder = model.decoder
    decoder.train()
    opt = torch.optim.AdamW(decoder.parameters(), lr=lr, weight_decay=0.0)
    order = torch.Generator().manual_seed(0)
    losses = []
    for step in range(steps):
        ids = torch.randperm(len(data), generator=order)[:batch].tolist()
        items = collate([data[i] for i in ids])
        draw = draw_flow(item_generators(1, step, ids, 0), items.target_latents.shape[1], 64)
        loss = flow_matching_loss(decoder, items.target_latents, items.context_latents, items.encoder_hidden_states,
                                  model.null_condition_emb.detach(), draw, items.frame_mask).mean()
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 100) * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * step / steps)))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    decoder.eval()
    official = convert.encore_to_official({k: v.detach() for k, v in model.state_dict().items()})
    write_official_dit(checkpoint, pipe.config, official, pipe.components.silence_latent.cpu())
    return losses


def embed(latents: torch.Tensor) -> np.ndarray:
    """`[B, T, C]` latents -> `[B, C]`: per-channel mean over time (robust to the blur of a small model)."""
    return latents.float().mean(dim=1).numpy()


def _embed_dataset(data: Any) -> np.ndarray:
    return embed(torch.stack([data[i].target_latents for i in range(len(data))]))


def _generate(pipe: Any, caption: str, loras: tuple[Any, ...] = ()) -> torch.Tensor:
    from encore.pipeline.request import DiffusionOptions, GenerationRequest, TextInputs

    request = GenerationRequest(text=TextInputs(caption=caption, duration_s=SECONDS), batch_size=len(SEEDS),
                                seeds=SEEDS, diffusion=DiffusionOptions(**SAMPLING), loras=loras)
    return pipe.generate(request).latents


def prepare_base(workdir: Path, base_steps: int) -> tuple[Path, Path, list[float]]:
    """The pretrained base checkpoint and the generic corpus latents (reused when `workdir` already has them)."""
    from encore.models.config import AceStepConfig
    from encore.pipeline.pipeline import Pipeline
    from encore.pipeline.random_checkpoint import write_random_checkpoint

    marker = workdir / "base.json"
    if marker.is_file():
        saved = json.loads(marker.read_text())
        return Path(saved["checkpoint"]), Path(saved["generic_index"]), saved["losses"]
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = write_random_checkpoint(workdir / "ckpt", config=AceStepConfig.tiny(**BASE_CONFIG),
                                         silence_frames=1000, seed=0, dit_dir=BASE_DIR)
    pipe = Pipeline.from_pretrained(checkpoint, device="cpu", dtype="float32")
    write_generic_clips(workdir / "generic")
    generic_index = _dataset(pipe, workdir / "generic", "generic", None)
    losses = pretrain_base(checkpoint, pipe, generic_index, steps=base_steps)
    marker.write_text(json.dumps({"checkpoint": str(checkpoint), "generic_index": str(generic_index),
                                  "losses": losses, "steps": base_steps}))
    return checkpoint, generic_index, losses


def run_experiment(workdir: Path, *, steps: int = 800, base_steps: int = 6000, rank: int = 16,
                   learning_rate: float = 3e-3, preservation: bool = False) -> dict[str, Any]:
    """Pretrains the base (once per `workdir`), builds the style dataset, trains the LoRA and measures.

    With `preservation`, the generic corpus is mixed into every micro-batch (8 style + 8 corpus items).
    """
    from encore.pipeline.pipeline import Pipeline
    from encore.pipeline.request import LoraSpec
    from encore.training.config import LoraTrainConfig
    from encore.training.data import LatentDataset
    from encore.training.recipes.lora import run

    checkpoint, generic_index, base_losses = prepare_base(workdir, base_steps)
    pipe = Pipeline.from_pretrained(checkpoint, device="cpu", dtype="float32")
    if not (workdir / "style_latents" / "index.json").is_file():
        write_style_clips(workdir / "style")
        _dataset(pipe, workdir / "style", "style", "zq9")
    index = workdir / "style_latents" / "index.json"
    references = {"chiptune": _embed_dataset(LatentDataset(index))}
    generic = LatentDataset(generic_index)
    for name in GENERIC:
        references[name] = embed(torch.stack([generic[i].target_latents for i in range(len(generic))
                                              if generic.records[i]["source"].startswith(name)]))
    run_dir = workdir / f"lora_r{rank}_lr{learning_rate:g}_s{steps}{'_pres' if preservation else ''}"
    extra: dict[str, Any] = ({"preservation_dataset": str(generic_index), "preservation_batch_size": 8}
                             if preservation else {})
    result = run(LoraTrainConfig(checkpoint=str(checkpoint), dataset=str(index), output_dir=str(run_dir),
                                 rank=rank, alpha=2.0 * rank, batch_size=8, max_steps=steps,
                                 learning_rate=learning_rate, device="cpu", seed=0, plot=True, **extra))
    outputs: dict[str, dict[float, np.ndarray]] = {}
    for caption in (STYLE_PROMPT, *UNRELATED):
        outputs[caption] = {}
        for scale in SCALES:
            lora = LoraSpec(path=str(result.adapter_dir), scale=scale)
            outputs[caption][scale] = embed(_generate(pipe, caption, (lora,)))
    report = measure(references, outputs, losses=[v for _, v in result.losses])
    report["base_pretrain_loss_first_last"] = [round(float(np.mean(base_losses[:20])), 3),
                                               round(float(np.mean(base_losses[-20:])), 3)]
    report["setup"] = {"base_steps": len(base_losses), "lora_steps": steps, "rank": rank, "alpha": 2.0 * rank,
                       "learning_rate": learning_rate, "preservation": preservation}
    return report


def measure(references: dict[str, np.ndarray], outputs: dict[str, dict[float, np.ndarray]],
            losses: list[float]) -> dict[str, Any]:
    """Style scores, nearest-centroid probe labels and drifts.

    Args:
        references: Embeddings of the real clips per class (`chiptune` = the LoRA's training clips).
        outputs: `outputs[caption][scale]` = embeddings `[seeds, D]` of generated latents.
        losses: LoRA training losses.
    """
    spread = np.concatenate(list(references.values())).std(axis=0) + 1e-6  # natural variation of real clips
    centroids = {name: (emb / spread).mean(axis=0) for name, emb in references.items()}
    names = list(centroids)

    def probe(emb: np.ndarray) -> dict[str, float]:
        z = emb / spread
        dist = np.stack([np.linalg.norm(z - centroids[n], axis=1) for n in names], axis=1)
        picked = [names[i] for i in dist.argmin(axis=1)]
        return {n: round(picked.count(n) / len(picked), 3) for n in names if n in picked}

    base = outputs[STYLE_PROMPT][0.0] / spread
    axis = centroids["chiptune"] - base.mean(axis=0)
    span = float(np.linalg.norm(axis))

    def score(emb: np.ndarray, origin: np.ndarray) -> float:
        return float(((emb / spread - origin) @ axis).mean() / span**2)

    report: dict[str, Any] = {
        "base_to_style_distance": round(span, 3),
        "lora_loss_first_last": [round(float(np.mean(losses[:10])), 3), round(float(np.mean(losses[-10:])), 3)],
        "style_prompt": {}, "unrelated": {}}
    for scale in SCALES:
        emb = outputs[STYLE_PROMPT][scale]
        report["style_prompt"][str(scale)] = {
            "style_score": round(score(emb, base.mean(axis=0)), 3),
            "distance_to_style": round(float(np.linalg.norm(emb / spread - centroids["chiptune"], axis=1).mean()), 3),
            "probe": probe(emb)}
    for caption in UNRELATED:
        origin = (outputs[caption][0.0] / spread).mean(axis=0)
        row = {}
        for scale in SCALES:
            emb = outputs[caption][scale]
            drift = float(np.linalg.norm((emb - outputs[caption][0.0]) / spread, axis=1).mean()) / span
            row[str(scale)] = {"style_score": round(score(emb, origin), 3), "drift": round(drift, 3),
                               "probe": probe(emb)}
        report["unrelated"][caption] = row
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--base-steps", type=int, default=6000)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()
    numbers = {name: run_experiment(args.out, steps=args.steps, base_steps=args.base_steps, rank=args.rank,
                                    learning_rate=args.lr, preservation=pres)
               for name, pres in (("official_recipe", False), ("with_preservation", True))}
    json.dump(numbers, sys.stdout, indent=2)
    print()
