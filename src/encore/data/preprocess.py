"""Dataset manifest -> cached training tensors: VAE latents, text2music context and packed condition.

For each manifest sample: decode the audio at the VAE rate, VAE-encode (official tiling, posterior sample from a
per-clip seeded generator), build the caption/lyric prompts (SPEC §5) and run the text and condition encoders
(reference timbre = silence latent, as for text2music). Results go to `training.data.LatentShardWriter`; each
record carries a fingerprint of everything it was made from, so edited manifests are detected as stale.
Also holds `PlannerListener`, the planner-based labeller for `build_dataset`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from encore.audio.io import load_audio
from encore.data.dataset_builder import Label, Manifest, Sample, iter_training_items
from encore.errors import CheckpointError
from encore.tasks.conditioning import build_conditioning
from encore.tasks.prompts import (
    TEXT2MUSIC_INSTRUCTION,
    VALID_LANGUAGES,
    format_caption_prompt,
    format_lyric_prompt,
    format_metas,
)
from encore.tasks.spec import Text2Music
from encore.training.data import INDEX_NAME, LatentShardWriter, read_index
from encore.training.objectives import mix_seed

if TYPE_CHECKING:
    from encore.models.planner import Planner
    from encore.pipeline.loading import CheckpointPaths, Components

log = logging.getLogger(__name__)

CAPTION_MAX_TOKENS = 256
LYRICS_MAX_TOKENS = 2048
PLANNER_CONFIDENCE = 0.6
"""Confidence given to planner (listener) labels: a language model's reading, not ground truth."""


def _language(sample: Sample) -> str:
    lang = str(sample.value("language") or "unknown")
    return lang if lang in VALID_LANGUAGES else "unknown"


def training_prompts(sample: Sample, caption: str) -> tuple[str, str]:
    """`(caption prompt, lyric prompt)` exactly as the text2music DiT sees them (SPEC §5)."""
    metas = format_metas(bpm=sample.value("bpm"), timesignature=sample.value("timesignature"),
                         keyscale=sample.value("keyscale"), duration_s=sample.duration_s)
    return (format_caption_prompt(TEXT2MUSIC_INSTRUCTION, caption, metas),
            format_lyric_prompt(_language(sample), str(sample.value("lyrics") or "")))


def fingerprint(sample: Sample, audio: Path, caption: str, checkpoint: str, seed: int) -> str:
    """Hash of everything a cached sample depends on (prompts, file identity, checkpoint, seed)."""
    st = os.stat(audio)
    prompts = training_prompts(sample, caption)
    payload = json.dumps([prompts, str(audio.resolve()), st.st_size, st.st_mtime_ns, checkpoint, seed])
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def checkpoint_identity(paths: CheckpointPaths) -> str:
    """Which weights the cache was computed with: the name, size and mtime of every weight file that the latents
    (the VAE), the contexts (the silence latent) and the conditions (the DiT's condition encoder, the text encoder)
    come from.

    A DiT folder that takes part of its tensors from another (an embedded turbo bundled with its base,
    `loading.shared_weights_source`) counts that folder's files too: its condition encoder is the base's.
    """
    from encore.pipeline.loading import shared_weights_source

    folders = [paths.dit, shared_weights_source(paths), paths.vae, paths.text_encoder, paths.silence]
    entries = []
    for folder in folders:
        if folder is None:
            continue
        folder = Path(folder).resolve()
        weights = folder.glob("*.safetensors") if folder.is_dir() else [folder] if folder.is_file() else []
        entries.append([str(folder), sorted((w.name, w.stat().st_size, w.stat().st_mtime_ns) for w in weights)])
    return json.dumps(entries)


@torch.no_grad()
def encode_condition(components: Components, caption_prompt: str, lyric_prompt: str) -> Tensor:
    """Packed condition `[S, enc_H]` for one item (no reference audio: silence-latent timbre, SPEC §6)."""
    tok, device, dtype = components.text_tokenizer, components.device, components.dtype
    cap = tok(caption_prompt, truncation=True, max_length=CAPTION_MAX_TOKENS, return_tensors="pt").input_ids
    lyr = tok(lyric_prompt, truncation=True, max_length=LYRICS_MAX_TOKENS, return_tensors="pt").input_ids
    text = components.text_encoder.encode_caption(cap.to(device)).to(dtype)
    lyric = components.text_encoder.embed_lyrics(lyr.to(device)).to(dtype)
    refer = components.silence_latent[: components.config.timbre_fix_frame][None].to(dtype)
    ones = torch.ones
    states, _ = components.model.encoder(
        text, ones(text.shape[:2], dtype=torch.long, device=device), lyric,
        ones(lyric.shape[:2], dtype=torch.long, device=device), refer, torch.zeros(1, dtype=torch.long, device=device))
    return states[0]


@torch.no_grad()
def encode_audio_latents(components: Components, wav: Tensor, generator: torch.Generator) -> Tensor:
    """VAE latents `[T, C]` of a waveform `[channels, S]` (tiled encode, posterior sample)."""
    from encore.audio.tiling import encode_tiled

    x = wav[None].to(device=components.device, dtype=components.vae_dtype)
    return encode_tiled(components.vae, x).sample(generator)[0].transpose(0, 1).to(components.dtype)


def text2music_context(components: Components, num_frames: int) -> Tensor:
    """Context latents `[T, 2C]` of text2music: silence source, chunk mask all ones (SPEC §10)."""
    silence = components.silence_latent.to(components.dtype)
    vae = components.vae_config
    cond = build_conditioning(Text2Music(), source_latents=None, silence_latent=silence, num_frames=num_frames,
                              sample_rate=vae.sampling_rate, hop_samples=vae.hop_samples)
    mask = cond.chunk_mask.to(silence.dtype)[:, None].expand(-1, silence.shape[1])
    return torch.cat([cond.src_latents, mask], dim=-1)


def preprocess_manifest(manifest_path: str | Path, components: Components, out_dir: str | Path | None = None, *,
                        seed: int = 0, progress: Callable[[int, int, str], None] | None = None) -> Path:
    """Encodes every manifest sample into a latent folder and records it in the manifest (`latents`).

    Args:
        manifest_path: The dataset manifest.
        components: Loaded checkpoint (VAE, text encoder, condition encoder, silence latent).
        out_dir: Latent folder (default `<manifest folder>/latents`).
        seed: Seeds the per-clip VAE posterior samples.
        progress: Called as `(index, total, sample id)`.

    Returns:
        Path of the written `index.json`.
    """
    manifest_path = Path(manifest_path)
    manifest = Manifest.load(manifest_path)
    if not manifest.samples:
        raise CheckpointError(str(manifest_path), "the manifest lists no usable samples")
    out = Path(out_dir) if out_dir is not None else manifest_path.parent / "latents"
    ident = checkpoint_identity(components.paths)
    writer = LatentShardWriter(out, metadata={"checkpoint": ident, "manifest": manifest_path.name, "seed": seed})
    vae = components.vae_config
    items = list(iter_training_items(manifest, manifest_path))
    for i, (sample, audio, caption) in enumerate(items):
        if progress is not None:
            progress(i, len(items), sample.id)
        wav, _ = load_audio(audio, target_rate=vae.sampling_rate, channels=vae.audio_channels, max_seconds=None)
        gen = torch.Generator(components.device).manual_seed(mix_seed(seed, i, 0, 7))
        latents = encode_audio_latents(components, wav, gen)
        condition = encode_condition(components, *training_prompts(sample, caption))
        writer.add(sample.id, latents, text2music_context(components, latents.shape[0]), condition,
                   {"source": sample.path, "caption": caption,
                    "fingerprint": fingerprint(sample, audio, caption, ident, seed)})
    index = writer.close()
    manifest.latents = os.path.relpath(out, manifest_path.parent)
    manifest.save(manifest_path)
    return index


def fresh_latents(manifest_path: str | Path, identity: str) -> Path | None:
    """The manifest's latent index if it exists and matches the manifest and the checkpoint `identity`
    (`checkpoint_identity(paths)`) exactly, else None."""
    manifest_path = Path(manifest_path)
    manifest = Manifest.load(manifest_path)
    if manifest.latents is None:
        return None
    folder = manifest_path.parent / manifest.latents
    try:
        index = read_index(folder)
    except CheckpointError as exc:
        log.info("cached latents unusable (%s); they will be rebuilt", exc)
        return None
    ident = identity
    seed = int(index.get("seed", 0))
    if index.get("checkpoint") != ident:
        return None
    records = {r["id"]: r.get("fingerprint") for r in index["samples"]}
    for sample, audio, caption in iter_training_items(manifest, manifest_path):
        if not audio.is_file() or records.get(sample.id) != fingerprint(sample, audio, caption, ident, seed):
            return None
    if len(records) != len(manifest.samples):
        return None
    return folder / INDEX_NAME


class PlannerListener:
    """Labels a song with the planner's listener mode: audio -> VAE -> 5 Hz codes -> `planning.understand`.

    Pass an instance as `BuildOptions.listener`. Labels get `PLANNER_CONFIDENCE` (the planner gives no
    calibrated probability); bpm/key agreeing with the signal analysis are raised by the builder.

    Args:
        components: Loaded checkpoint (VAE, audio tokenizer, silence latent).
        planner: A loaded `Planner`.
        seed: Sampling seed for `understand`.
    """

    def __init__(self, components: Components, planner: Planner, *, seed: int = 0) -> None:
        self.components = components
        self.planner = planner
        self.seed = seed

    @torch.no_grad()
    def codes(self, path: Path) -> list[int]:
        """The 5 Hz audio codes of a file (posterior mean latents through the FSQ tokenizer)."""
        from encore.audio.tiling import encode_tiled

        c = self.components
        wav, _ = load_audio(path, target_rate=c.vae_config.sampling_rate, channels=c.vae_config.audio_channels)
        latents = encode_tiled(c.vae, wav[None].to(c.device, c.vae_dtype)).mode().transpose(1, 2).to(c.dtype)
        _, indices = c.model.tokenizer.tokenize(latents, c.silence_latent.to(c.dtype))
        return [int(v) for v in indices[0, :, 0].tolist()]

    def __call__(self, path: Path) -> dict[str, Label]:
        from encore.pipeline.planning import understand

        heard = understand(self.planner, self.codes(path), seed=self.seed)
        conf = PLANNER_CONFIDENCE
        keyscale = heard.keyscale.replace("\u266f", "#").replace("\u266d", "b")  # ♯/♭ -> the request's spelling
        out: dict[str, Any] = {"caption": heard.caption, "lyrics": heard.lyrics, "bpm": heard.bpm,
                               "keyscale": keyscale, "timesignature": heard.timesignature}
        if heard.language in VALID_LANGUAGES:
            out["language"] = heard.language
        return {k: Label(v, conf, "planner") for k, v in out.items() if v not in (None, "")}
