"""The fixed evaluation prompt set: held-out corpus plans, turned into prompts with their exact labels.

Prompt i is clip i of the corpus recipe under `EVAL_SEED`, a seed no training corpus uses (`run_eval` refuses
a corpus built with it). The set is generated once with `make_prompt_set` and committed as ``prompts.json``
next to this module, so evaluation never depends on later changes to the corpus code; the ceiling renders it
again from (seed, index) and reports any clip whose labels no longer match.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from encore.data.plan import CorpusConfig
from encore.errors import InvalidRequest

EVAL_SEED = 9_999_991
"""Corpus seed of the evaluation prompts (held out: never used for a training corpus)."""
DEFAULT_NUM_PROMPTS = 64
PROMPT_SET_FORMAT = 1
DEFAULT_PROMPTS_PATH = Path(__file__).with_name("prompts.json")


@dataclass(frozen=True)
class EvalPrompt:
    """One evaluation prompt and the labels its output should carry.

    Attributes:
        id: Stable name, e.g. ``"eval_007"``.
        index: Clip index under the prompt set's seed (renders the ceiling clip).
        caption: Caption given to the model (the clip's primary caption).
        bpm: Quarter-note tempo, also passed as the `bpm` meta.
        keyscale: e.g. ``"F# minor"``, also passed as the `keyscale` meta.
        timesignature: Beats per bar (2, 3, 4 or 6), also passed as a meta.
        duration_s: Length asked for.
        tracks: Track classes present (the instrument-probe targets).
        instruments: Caption names of the rendered parts.
        genre: Genre words.
        source: Corpus source family ("mma", "folk", "chorale", "procedural").
    """

    id: str
    index: int
    caption: str
    bpm: int
    keyscale: str
    timesignature: int
    duration_s: float
    tracks: tuple[str, ...]
    instruments: tuple[str, ...]
    genre: str
    source: str


@dataclass(frozen=True)
class PromptSet:
    """Prompts plus the corpus recipe (seed and config) that renders their ceiling clips."""

    seed: int
    config: CorpusConfig
    prompts: tuple[EvalPrompt, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"format": PROMPT_SET_FORMAT, "seed": self.seed, "config": asdict(self.config),
                "prompts": [asdict(p) for p in self.prompts]}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptSet:
        if data.get("format") != PROMPT_SET_FORMAT:
            raise InvalidRequest(
                "prompts", f"prompt set format {data.get('format')!r}, expected {PROMPT_SET_FORMAT}"
            )
        prompts = []
        for i, p in enumerate(data["prompts"]):
            try:
                prompts.append(EvalPrompt(**{**p, "tracks": tuple(p["tracks"]),
                                             "instruments": tuple(p["instruments"])}))  # fmt: skip
            except (TypeError, KeyError) as e:
                raise InvalidRequest(f"prompts[{i}]", f"malformed prompt: {e}") from e
        ids = [p.id for p in prompts]
        if len(set(ids)) != len(ids):
            raise InvalidRequest("prompts", "duplicate prompt ids")
        return cls(int(data["seed"]), config_from_dict(data["config"]), tuple(prompts))


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def config_from_dict(data: dict[str, Any]) -> CorpusConfig:
    """Inverse of ``asdict(CorpusConfig)`` after a JSON round trip (lists back to tuples)."""
    names = {f.name for f in dataclasses.fields(CorpusConfig)}
    unknown = set(data) - names
    if unknown:
        raise InvalidRequest("prompts.config", f"unknown corpus config fields {sorted(unknown)}")
    return CorpusConfig(**{k: _tuples(v) for k, v in data.items()})


def prompt_from_labels(labels: Any, number: int) -> EvalPrompt:
    """An `EvalPrompt` from a clip's `encore.data.labels.ClipLabels`."""
    return EvalPrompt(
        id=f"eval_{number:03d}", index=labels.index, caption=labels.caption, bpm=labels.bpm,
        keyscale=labels.keyscale, timesignature=int(labels.timesignature), duration_s=float(labels.duration),
        tracks=tuple(labels.tracks), instruments=tuple(dict.fromkeys(i.instrument for i in labels.instruments)),
        genre=labels.genre, source=labels.source,
    )  # fmt: skip


def make_prompt_set(num_prompts: int = DEFAULT_NUM_PROMPTS, *, seed: int = EVAL_SEED,
                    config: CorpusConfig | None = None, cache_dir: Path | None = None) -> PromptSet:  # fmt: skip
    """Plan and render clips ``0 .. num_prompts-1`` of the corpus under `seed` and keep their labels.

    Rendering (not just planning) is needed because the labels name the programs the soundfont actually
    played. Deterministic given (seed, config, corpus code). Needs the corpus tools (FluidSynth, soundfonts,
    music21, abc2midi, mma).
    """
    from encore.data.corpus import generate_clip

    if num_prompts < 1:
        raise InvalidRequest("num_prompts", f"must be >= 1, got {num_prompts}")
    cfg = config or CorpusConfig()
    prompts = [
        prompt_from_labels(generate_clip(seed, i, cfg, cache_dir).labels, i) for i in range(num_prompts)
    ]
    return PromptSet(seed, cfg, tuple(prompts))


def save_prompt_set(prompt_set: PromptSet, path: str | Path) -> Path:
    """Write the set as indented, key-sorted JSON."""
    out = Path(path)
    out.write_text(json.dumps(prompt_set.to_dict(), indent=1, sort_keys=True, ensure_ascii=False) + "\n",
                   encoding="utf-8")  # fmt: skip
    return out


def load_prompt_set(path: str | Path | None = None) -> PromptSet:
    """Read a prompt set (default: the committed ``prompts.json``)."""
    p = Path(path) if path is not None else DEFAULT_PROMPTS_PATH
    if not p.is_file():
        raise InvalidRequest("prompts", f"prompt file not found: {p}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InvalidRequest("prompts", f"{p} is not valid JSON: {e}") from e
    return PromptSet.from_dict(data)
