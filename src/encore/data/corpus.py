"""Build, resume and read the labelled training corpus (``encore data build``).

Layout under ``out_dir``: ``corpus.json`` (seed + `CorpusConfig`), ``manifest.jsonl`` (one `ClipLabels`
per line, index order) and ``clips/NNNN/clip_NNNNNN/`` holding ``mix.flac``, ``stems/<track>.flac``,
``clip.mid`` and ``labels.json``. A clip directory appears atomically (rename of a finished temporary
directory), so an interrupted build resumes by skipping existing clips, and the output does not depend on
worker count or order.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from encore.data.captions import make_captions
from encore.data.instruments import DRUM_KITS, program_name
from encore.data.labels import ClipLabels, InstrumentLabel, dumps_labels, keyscale, read_labels
from encore.data.plan import ClipPlan, CorpusConfig, plan_clip
from encore.data.render import FluidRenderer
from encore.data.score import write_midi
from encore.data.sources import SourceUnusable
from encore.errors import AudioError, InvalidRequest

log = logging.getLogger(__name__)

CORPUS_FORMAT = 1
MAX_ATTEMPTS = 12  # fresh plans tried when a drawn source item is unusable
_PEAK = 0.95
INAUDIBLE_DB = -40.0

_RENDERERS: dict[
    tuple[str, int], FluidRenderer
] = {}  # per process: soundfont → renderer (keeps samples cached)


def _renderer(name: str, sample_rate: int) -> FluidRenderer:
    key = (name, sample_rate)
    if key not in _RENDERERS:
        _RENDERERS[key] = FluidRenderer(name, sample_rate)
    return _RENDERERS[key]


@dataclass
class RenderedClip:
    """One clip in memory.

    Attributes:
        mix: float32 [2, S] full mix.
        stems: Track class → float32 [2, S]; the stems sum to `mix`.
        labels: Labels (paths filled in by `write_clip`).
        plan: The plan it was rendered from (score excerpt at `labels.bpm`).
    """

    mix: np.ndarray
    stems: dict[str, np.ndarray]
    labels: ClipLabels
    plan: ClipPlan


def clip_id(index: int) -> str:
    """Directory name of clip `index`."""
    return f"clip_{index:06d}"


def clip_dir(out_dir: str | Path, index: int) -> Path:
    """Where clip `index` lives (sharded by thousands)."""
    return Path(out_dir) / "clips" / f"{index // 1000:04d}" / clip_id(index)


def _instrument(part_is_drum: bool, program: int, stem: str, role: str) -> InstrumentLabel:
    name = (
        DRUM_KITS.get(program, "drum kit")
        if part_is_drum and stem == "drums"
        else ("percussion" if part_is_drum else program_name(program))
    )
    return InstrumentLabel(stem=stem, instrument=name, program=program, is_drum=part_is_drum, role=role)


def _level(stems: dict[str, np.ndarray], mix: np.ndarray, rng: np.random.Generator) -> float:
    """Gain to a random mix RMS in [-20, -14] dBFS, limited so neither a stem nor the mix passes `_PEAK`."""
    rms = float(np.sqrt(np.mean(mix.astype(np.float64) ** 2)))
    if rms < 1e-5:
        raise SourceUnusable("rendered clip is silent")
    gain = 10 ** (float(rng.uniform(-20.0, -14.0)) / 20.0) / rms
    peak = max(float(np.abs(mix).max()), *(float(np.abs(s).max()) for s in stems.values()))
    return min(gain, _PEAK / peak)


def generate_clip(seed: int, index: int, cfg: CorpusConfig, cache_dir: Path | None = None) -> RenderedClip:
    """Plan, render and label clip `index` in memory (no files written besides the symbolic cache).

    This is the hook for a latent-caching stage: encode `RenderedClip.mix` directly instead of writing FLAC.

    Raises:
        SourceUnusable: when `MAX_ATTEMPTS` plans in a row were unusable (practically never).
    """
    last: Exception | None = None
    for attempt in range(MAX_ATTEMPTS):
        try:
            plan = plan_clip(seed, index, cfg, cache_dir, attempt)
            return _render_plan(plan, seed, index, cfg)
        except SourceUnusable as e:
            log.debug("clip %d attempt %d unusable: %s", index, attempt, e)
            last = e
    raise SourceUnusable(f"clip {index}: no usable plan in {MAX_ATTEMPTS} attempts ({last})")


def _audible(audio: np.ndarray) -> list[int]:
    """Indices of parts at most `INAUDIBLE_DB` below the full mix (RMS); quieter ones are not labelled."""
    rms = np.sqrt(np.mean(audio.astype(np.float64) ** 2, axis=(1, 2)))
    total = float(np.sqrt(np.mean(np.sum(audio, axis=0, dtype=np.float64) ** 2)))
    return [i for i, r in enumerate(rms) if r > 0 and r >= total * 10 ** (INAUDIBLE_DB / 20)]


def _render_plan(plan: ClipPlan, seed: int, index: int, cfg: CorpusConfig) -> RenderedClip:
    renderer = _renderer(plan.soundfont, cfg.sample_rate)
    audio = renderer.render(plan.score.parts, plan.bpm, cfg.clip_seconds, plan.fx)
    # A part buried in the mix (a faint MMA effect track, two drum hits) would be a false instrument label:
    # drop it from audio, labels and MIDI alike.
    keep = _audible(audio)
    if not keep:
        raise SourceUnusable("rendered clip is silent")
    parts = [plan.score.parts[i] for i in keep]
    audio = audio[keep]
    plan.score = replace(plan.score, parts=parts)
    stems: dict[str, np.ndarray] = {}
    for part, wav in zip(parts, audio):
        cls = part.track_class
        stems[cls] = stems[cls] + wav if cls in stems else wav.copy()
    mix = np.sum(audio, axis=0)
    gain = _level(stems, mix, np.random.default_rng([seed, index, 2]))
    mix *= gain
    for cls in stems:
        stems[cls] *= gain
    instruments = [
        _instrument(p.is_drum, renderer.effective_program(p), p.track_class, p.role) for p in parts
    ]
    labels = _labels(plan, seed, index, cfg, instruments, sorted(stems))
    return RenderedClip(mix, dict(sorted(stems.items())), labels, plan)


def _labels(plan: ClipPlan, seed: int, index: int, cfg: CorpusConfig, instruments: list[InstrumentLabel],
            classes: list[str]) -> ClipLabels:  # fmt: skip
    score = plan.score
    ks = keyscale(score.tonic, score.mode)
    num, den = score.time_sig
    extra = {k: v for k, v in plan.extra.items() if v not in ("", None)}
    extra["fx"] = asdict(plan.fx)
    captions = make_captions(
        genre=plan.genre, bpm=plan.bpm, keyscale=ks, time_signature=f"{num}/{den}", era=plan.era,
        instruments=instruments, rng=np.random.default_rng([seed, index, 1]),
        region=str(plan.extra.get("region", "")), composer=str(plan.extra.get("composer", "")),
    )  # fmt: skip
    return ClipLabels(
        clip_id=clip_id(index), index=index, seed=seed, source=plan.source, duration=float(cfg.clip_seconds),
        sample_rate=cfg.sample_rate, bpm=plan.bpm, keyscale=ks, time_signature=f"{num}/{den}",
        timesignature=str(num), genre=plan.genre, style=plan.style, era=plan.era, instruments=instruments,
        stems={c: f"stems/{c}.flac" for c in classes} if cfg.write_stems else {c: "" for c in classes},
        mix="mix.flac" if cfg.write_mix else "", midi="clip.mid", soundfont=plan.soundfont,
        caption=captions[0], captions=captions, extra=extra,
    )  # fmt: skip


def _write_flac(path: Path, wav: np.ndarray, sample_rate: int) -> None:
    import soundfile as sf

    try:
        sf.write(str(path), np.ascontiguousarray(wav.T), sample_rate, format="FLAC", subtype="PCM_16")
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(str(path), f"cannot write FLAC: {e}") from e


def write_clip(clip: RenderedClip, out_dir: str | Path, cfg: CorpusConfig) -> Path:
    """Write a clip's files into a temporary directory, then rename it into place (atomic completion)."""
    final = clip_dir(out_dir, clip.labels.index)
    tmp = final.with_name(final.name + f".tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "stems").mkdir(parents=True)
    if cfg.write_mix:
        _write_flac(tmp / "mix.flac", clip.mix, cfg.sample_rate)
    if cfg.write_stems:
        for cls, wav in clip.stems.items():
            _write_flac(tmp / "stems" / f"{cls}.flac", wav, cfg.sample_rate)
    write_midi(clip.plan.score, clip.labels.bpm, tmp / "clip.mid")
    (tmp / "labels.json").write_text(dumps_labels(clip.labels) + "\n", encoding="utf-8")
    tmp.rename(final)
    return final


def _work(args: tuple[str, int, int, CorpusConfig]) -> tuple[int, float]:
    out_dir, seed, index, cfg = args
    start = time.process_time()
    clip = generate_clip(seed, index, cfg, Path(out_dir) / "cache")
    write_clip(clip, out_dir, cfg)
    return index, time.process_time() - start


def _check_config(out_dir: Path, seed: int, cfg: CorpusConfig) -> None:
    """Create ``corpus.json`` or check that an existing corpus was built with the same seed and config."""
    meta = {"format": CORPUS_FORMAT, "seed": seed, "config": json.loads(json.dumps(asdict(cfg)))}
    path = out_dir / "corpus.json"
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old != meta:
            raise InvalidRequest("out_dir", f"{out_dir} holds a corpus built with other settings ({path}); "
                                 "use a new directory or the same seed/config")  # fmt: skip
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def _resolve_count(num_clips: int | None, hours: float | None, clip_seconds: float) -> int:
    if (num_clips is None) == (hours is None):
        raise InvalidRequest("num_clips", "give exactly one of num_clips or hours")
    if hours is not None:
        if not (math.isfinite(hours) and hours > 0):
            raise InvalidRequest("hours", f"must be a positive number, got {hours}")
        return math.ceil(hours * 3600.0 / clip_seconds)
    if num_clips is None or num_clips <= 0:
        raise InvalidRequest("num_clips", f"must be a positive integer, got {num_clips}")
    return int(num_clips)


def build_corpus(
    out_dir: str | Path, *, num_clips: int | None = None, hours: float | None = None, seed: int = 0,
    workers: int = 1, clip_seconds: float = 10.0, with_vocals: bool = False,
    config: CorpusConfig | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Render clips ``0 .. N-1`` of the corpus defined by `seed` (skipping those already present).

    Args:
        out_dir: Corpus directory (created if needed).
        num_clips: Number of clips N (exclusive with `hours`).
        hours: Total audio length; N = ceil(hours * 3600 / clip_seconds).
        seed: Corpus seed; clip i depends only on (seed, i, config).
        workers: Rendering processes (each loads its soundfonts once).
        clip_seconds: Clip length (overrides ``config.clip_seconds``).
        with_vocals: Sung vocals; not implemented yet (raises).
        config: Corpus recipe; defaults to `CorpusConfig()`.

    Returns:
        Summary: clips requested/rendered/skipped, audio seconds rendered, CPU seconds, wall seconds.

    Raises:
        InvalidRequest: bad arguments, vocals requested, or `out_dir` built with other settings.
    """
    if with_vocals:
        raise InvalidRequest("with_vocals", "sung vocals (espeak-ng) are not implemented yet")
    if not (math.isfinite(clip_seconds) and 0.5 <= clip_seconds <= 600):
        raise InvalidRequest("clip_seconds", f"must be in [0.5, 600], got {clip_seconds}")
    if workers < 1:
        raise InvalidRequest("workers", f"must be >= 1, got {workers}")
    cfg = replace(config or CorpusConfig(), clip_seconds=float(clip_seconds))
    count = _resolve_count(num_clips, hours, cfg.clip_seconds)
    out = Path(out_dir)
    _check_config(out, seed, cfg)
    todo = [i for i in range(count) if not clip_dir(out, i).is_dir()]
    wall, cpu = time.time(), 0.0
    jobs = [(str(out), seed, i, cfg) for i in todo]
    if workers == 1 or len(todo) <= 1:
        results = map(_work, jobs)
        cpu = _drain(results, len(todo))
    else:
        # spawn, not fork: forking after torch has started its thread pools can deadlock the children.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            cpu = _drain(pool.map(_work, jobs, chunksize=1), len(todo))
    write_manifest(out, count)
    return {
        "clips": count,
        "rendered": len(todo),
        "skipped": count - len(todo),
        "audio_seconds": len(todo) * cfg.clip_seconds,
        "cpu_seconds": cpu,
        "wall_seconds": time.time() - wall,
    }


def _drain(results: Iterator[tuple[int, float]], total: int) -> float:
    cpu = 0.0
    for k, (index, seconds) in enumerate(results, 1):
        cpu += seconds
        if k % 50 == 0 or k == total:
            log.info("rendered %d/%d clips (last %d, %.2f CPU-s)", k, total, index, seconds)
    return cpu


def write_manifest(out_dir: str | Path, count: int | None = None) -> Path:
    """Rewrite ``manifest.jsonl`` from the clips present (index order; with `count`, only indices < count)."""
    out = Path(out_dir)
    paths = sorted(out.glob("clips/*/clip_*/labels.json"))
    lines = []
    for p in paths:
        labels = read_labels(p)
        if count is None or labels.index < count:
            lines.append(dumps_labels(labels))
    tmp = out / f"manifest.jsonl.tmp{os.getpid()}"
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(out / "manifest.jsonl")
    return out / "manifest.jsonl"


def read_manifest(out_dir: str | Path) -> list[ClipLabels]:
    """All clip labels of a built corpus, in index order."""
    path = Path(out_dir) / "manifest.jsonl"
    if not path.is_file():
        raise InvalidRequest("out_dir", f"no manifest.jsonl in {out_dir} (build the corpus first)")
    with open(path, encoding="utf-8") as f:
        return [ClipLabels.from_dict(json.loads(line)) for line in f if line.strip()]


def _read_flac(path: Path) -> np.ndarray:
    import soundfile as sf

    try:
        data, _ = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(str(path), f"cannot read FLAC: {e}") from e
    return np.ascontiguousarray(data.T)


def load_stems(out_dir: str | Path, labels: ClipLabels) -> dict[str, Any]:
    """Stems of one clip as float32 torch tensors [2, S] keyed by track class."""
    import torch

    base = clip_dir(out_dir, labels.index)
    out = {}
    for cls, rel in labels.stems.items():
        if not rel:
            raise AudioError(str(base), "corpus was built without stems")
        out[cls] = torch.from_numpy(_read_flac(base / rel))
    return out


def iter_clips(out_dir: str | Path) -> Iterator[tuple[Any, ClipLabels]]:
    """Yield ``(wav, labels)`` per clip in index order; `wav` is a float32 torch tensor [2, S] at 48 kHz.

    Uses ``mix.flac`` when present, else sums the stems (corpora built with ``write_mix=False``).
    """
    for labels in read_manifest(out_dir):
        yield load_mix(out_dir, labels), labels


def load_mix(out_dir: str | Path, labels: ClipLabels) -> Any:
    """One clip's mix as a float32 torch tensor [2, S] at 48 kHz (``mix.flac``, else the sum of its stems)."""
    import torch

    if labels.mix:
        return torch.from_numpy(_read_flac(clip_dir(out_dir, labels.index) / labels.mix))
    return torch.stack(list(load_stems(out_dir, labels).values())).sum(dim=0)
