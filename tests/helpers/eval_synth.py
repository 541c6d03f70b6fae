"""Evaluation tests: synthetic audio with known tempo, key and instruments, a synthetic corpus, fake pipelines."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from encore.data.labels import ClipLabels, InstrumentLabel, dumps_labels, parse_keyscale
from encore.data.plan import CorpusConfig
from encore.eval.prompts import EvalPrompt, PromptSet

RATE = 16_000
SYNTH_TRACKS = ("bass", "drums", "keyboard")
_MAJOR, _MINOR = (0, 4, 7), (0, 3, 7)


def clicks(bpm: float, seconds: float, rate: int = RATE, *, seed: int = 0, accent: float = 1.0) -> np.ndarray:
    """`[S]` decaying noise bursts on every beat; every 4th beat is `accent` times louder."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * rate), np.float32)
    burst = rng.standard_normal(int(0.03 * rate)) * np.exp(-np.arange(int(0.03 * rate)) / (0.006 * rate))
    for k, start in enumerate(np.arange(0.0, seconds, 60.0 / bpm)):
        i = int(start * rate)
        seg = out[i : i + burst.size]
        seg += (accent if k % 4 == 0 else 1.0) * burst[: seg.size].astype(np.float32)
    return out


def _tone(freq: float, n: int, rate: int, harmonics: int = 4) -> np.ndarray:
    t = np.arange(n) / rate
    return sum(np.sin(2 * np.pi * freq * h * t) / h for h in range(1, harmonics + 1)).astype(np.float32)


def cadence(keyscale: str, seconds: float, rate: int = RATE, *, bpm: float = 120.0) -> np.ndarray:
    """`[S]` I-IV-V-I (major) or i-iv-V-i (minor) block chords with harmonics, one chord per bar of 4 beats."""
    tonic, mode = parse_keyscale(keyscale)
    triad = _MAJOR if mode == "major" else _MINOR
    degrees = [(0, triad), (5, triad), (7, _MAJOR), (0, triad)]
    n_bar = int(4 * 60.0 / bpm * rate)
    out = np.zeros(int(seconds * rate), np.float32)
    env = np.exp(-np.arange(n_bar) / (0.8 * rate)).astype(np.float32)
    for b, start in enumerate(range(0, out.size, n_bar)):
        root, shape = degrees[b % 4]
        chord = sum(_tone(261.63 * 2 ** (((tonic + root + iv) % 12) / 12), n_bar, rate) for iv in shape)
        seg = out[start : start + n_bar]
        seg += (chord * env)[: seg.size] / 3
    return out


def bass_line(keyscale: str, seconds: float, rate: int = RATE, *, bpm: float = 120.0) -> np.ndarray:
    """`[S]` low sine on the tonic, one note per beat."""
    tonic, _ = parse_keyscale(keyscale)
    n = int(60.0 / bpm * rate)
    note = _tone(65.41 * 2 ** (tonic / 12), n, rate, harmonics=2) * np.exp(-np.arange(n) / (0.2 * rate))
    reps = int(np.ceil(seconds * rate / n))
    return np.tile(note.astype(np.float32), reps)[: int(seconds * rate)]


def synth_song(
    bpm: float, keyscale: str, tracks: tuple[str, ...], seconds: float, rate: int = RATE, *, seed: int = 0
) -> np.ndarray:
    """`[2, S]` mix of the requested synthetic tracks (subset of `SYNTH_TRACKS`), peak 0.5."""
    parts = {
        "drums": lambda: clicks(bpm, seconds, rate, seed=seed),
        "keyboard": lambda: cadence(keyscale, seconds, rate, bpm=bpm),
        "bass": lambda: bass_line(keyscale, seconds, rate, bpm=bpm),
    }
    mono = sum(parts[t]() for t in tracks) if tracks else np.zeros(int(seconds * rate), np.float32)
    mono = mono / max(1e-6, float(np.abs(mono).max())) * 0.5
    return np.stack([mono, mono]).astype(np.float32)


def write_synth_corpus(root: Path, num_clips: int, *, seconds: float = 4.0, seed: int = 0) -> Path:
    """A corpus directory in the `encore.data.corpus` layout whose clips are `synth_song`s with exact labels."""
    rng = np.random.default_rng(seed)
    keys = ("C major", "A minor", "Eb major", "F# minor", "G major", "D minor")
    lines = []
    for i in range(num_clips):
        tracks = tuple(t for t in SYNTH_TRACKS if rng.random() < 0.5) or ("keyboard",)
        bpm, key = int(rng.integers(80, 160)), keys[int(rng.integers(len(keys)))]
        folder = root / "clips" / "0000" / f"clip_{i:06d}"
        folder.mkdir(parents=True)
        sf.write(
            str(folder / "mix.flac"), synth_song(bpm, key, tracks, seconds, seed=i).T, RATE, subtype="PCM_16"
        )
        labels = ClipLabels(
            clip_id=folder.name, index=i, seed=seed, source="procedural", duration=seconds, sample_rate=RATE,
            bpm=bpm, keyscale=key, time_signature="4/4", timesignature="4", genre="test", style="", era="",
            instruments=[InstrumentLabel(t, t, 0, t == "drums", t) for t in tracks],
            stems={t: "" for t in tracks}, mix="mix.flac", midi="", soundfont="", caption=f"clip {i}",
            captions=[f"clip {i}"],
        )  # fmt: skip
        (folder / "labels.json").write_text(dumps_labels(labels) + "\n", encoding="utf-8")
        lines.append(dumps_labels(labels))
    (root / "manifest.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    (root / "corpus.json").write_text(json.dumps({"format": 1, "seed": seed, "config": {}}), encoding="utf-8")
    return root


@dataclass
class FakeResult:
    audio: Any
    sample_rate: int
    timings_s: dict[str, float] = field(default_factory=lambda: {"sample": 0.5, "decode": 0.25})
    params: dict[str, Any] = field(default_factory=dict)


class FakePipeline:
    """Stands in for `Pipeline`: 'oracle' synthesises what the request asks for, 'noise' ignores it."""

    def __init__(self, mode: str, rate: int = RATE) -> None:
        self.mode, self.rate, self.requests = mode, rate, []

    def generate(self, request: Any) -> FakeResult:
        import torch

        from encore.data.instruments import classes_in_text

        self.requests.append(request)
        text, seed = request.text, request.seeds[0]
        n = int(text.duration_s * self.rate)
        if self.mode == "oracle":
            tracks = tuple(t for t in SYNTH_TRACKS if t in classes_in_text(text.caption))
            wav = synth_song(text.bpm, text.keyscale, tracks, text.duration_s, self.rate, seed=seed)
        else:
            wav = 0.1 * np.random.default_rng(seed).standard_normal((2, n)).astype(np.float32)
        # What the real pipeline records: the request with its sampler defaults resolved (turbo: shift 3, SDE).
        d = request.diffusion
        diffusion = {"num_steps": d.num_steps or 8, "shift": d.shift or 3.0, "solver": d.solver or "sde",
                     "guidance": None, "guidance_scale": 1.0}  # fmt: skip
        return FakeResult(torch.from_numpy(wav)[None], self.rate, params={"request": {"diffusion": diffusion}})


SYNTH_CAPTIONS = {
    ("keyboard",): "solo grand piano",
    ("bass", "keyboard"): "grand piano and electric bass",
    ("drums", "keyboard"): "grand piano and drums",
    ("bass", "drums", "keyboard"): "grand piano, electric bass and drums",
}
SYNTH_PROMPTS = [
    (96, "C major", ("keyboard",)),
    (128, "A minor", ("drums", "keyboard")),
    (112, "Eb major", ("bass", "keyboard")),
    (140, "F# minor", ("bass", "drums", "keyboard")),
]


def synth_prompt_set(seed: int = 4242) -> PromptSet:
    """Four 5-s prompts over the synthetic tracks (keyboard always, so the key is audible)."""
    prompts = tuple(
        EvalPrompt(id=f"eval_{i:03d}", index=i, caption=SYNTH_CAPTIONS[tracks], bpm=bpm, keyscale=key, timesignature=4,
                   duration_s=5.0, tracks=tracks, instruments=(), genre="test", source="procedural")
        for i, (bpm, key, tracks) in enumerate(SYNTH_PROMPTS)
    )  # fmt: skip
    return PromptSet(seed, CorpusConfig(), prompts)
