"""The one typed request every front-end translates to, and the result the pipeline returns.

`GenerationRequest` groups fields into nested frozen dataclasses. `None` means "use the model variant's
default" (defined once in `pipeline/presets.py`); the resolved values are written into
`GenerationResult.params` so any output can be reproduced. `request_from_dict` / `request_to_dict` are the
wire format shared by the CLI (`--json`), the REST server and the UI; validation errors carry the dotted
field path (``text.bpm``) so front-ends can report it.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Union

from encore.errors import InvalidRequest
from encore.tasks.prompts import DEFAULT_DURATION_S, validate_language
from encore.tasks.spec import Complete, Cover, Extend, Extract, Lego, Repaint, Text2Music

TaskSpec = Text2Music | Cover | Repaint | Extract | Lego | Complete | Extend

TASK_KINDS: dict[str, type] = {
    "text2music": Text2Music,
    "cover": Cover,
    "repaint": Repaint,
    "extract": Extract,
    "lego": Lego,
    "complete": Complete,
    "extend": Extend,
}
_KIND_OF = {cls: kind for kind, cls in TASK_KINDS.items()}

KEY_NOTES = ("A", "B", "C", "D", "E", "F", "G")
KEY_ACCIDENTALS = ("", "#", "b", "♯", "♭")
VALID_KEYSCALES = frozenset(
    f"{n}{a} {m}" for n in KEY_NOTES for a in KEY_ACCIDENTALS for m in ("major", "minor")
)
VALID_TIME_SIGNATURES = (2, 3, 4, 6)
BPM_RANGE = (30, 300)
DURATION_RANGE_S = (1.0, 600.0)
"""The official UI allows 10–600 s; we also accept short clips (1 s) for sketches and tests."""
MAX_BATCH = 8
MAX_STEPS = 200
MAX_SEED = 2**32 - 1
NUM_AUDIO_CODES = 64_000
"""5 Hz audio codes are FSQ indices 0 … 63 999 (SPEC §7.1)."""
AUDIO_CODES_PER_S = 5
_CODE_TOKEN = re.compile(r"<\|audio_code_(-?\d+)\|>")
PLANNER_FIELDS = ("bpm", "caption", "duration", "keyscale", "language", "timesignature")


def kind_of(task: object) -> str:
    """The wire name of a task spec (``"repaint"`` for `Repaint`)."""
    return _KIND_OF[type(task)]


@dataclass(frozen=True, kw_only=True)
class TextInputs:
    """What the song is: caption, lyrics and musical metadata. Metas left `None` are N/A (or planned)."""

    caption: str = ""
    """Free-text description of the music (genre, instruments, mood)."""
    lyrics: str = "[Instrumental]"
    """Lyrics with structure tags such as [Verse]; "[Instrumental]" for no vocals."""
    language: str = "unknown"
    """ISO code of the vocal language (e.g. en, zh), or "unknown"."""
    bpm: int | None = None
    """Tempo in beats per minute, 30–300."""
    keyscale: str | None = None
    """Key and scale, e.g. "C major" or "F# minor"."""
    timesignature: int | None = None
    """Beats per bar: 2, 3, 4 or 6."""
    duration_s: float | None = None
    """Length of the song in seconds (text2music); audio tasks use the source length."""

    def __post_init__(self) -> None:
        if len(self.caption) > 4096:
            raise InvalidRequest("text.caption", "longer than 4096 characters")
        if len(self.lyrics) > 16384:
            raise InvalidRequest("text.lyrics", "longer than 16384 characters")
        validate_language(self.language)
        if self.bpm is not None and not (BPM_RANGE[0] <= self.bpm <= BPM_RANGE[1]):
            raise InvalidRequest("text.bpm", f"must be between {BPM_RANGE[0]} and {BPM_RANGE[1]}, got {self.bpm}")
        if self.keyscale is not None and self.keyscale not in VALID_KEYSCALES:
            raise InvalidRequest("text.keyscale", f"unknown key {self.keyscale!r}; expected e.g. 'C major', 'F# minor'")
        if self.timesignature is not None and self.timesignature not in VALID_TIME_SIGNATURES:
            raise InvalidRequest("text.timesignature", f"must be one of {VALID_TIME_SIGNATURES}, got {self.timesignature}")
        if self.duration_s is not None:
            lo, hi = DURATION_RANGE_S
            if not math.isfinite(self.duration_s) or not (lo <= self.duration_s <= hi):
                raise InvalidRequest("text.duration_s", f"must be between {lo:g} and {hi:g} seconds, got {self.duration_s}")


@dataclass(frozen=True, kw_only=True)
class DiffusionOptions:
    """How the DiT samples. `None` fields take the model variant's defaults (turbo: 8 steps, shift 3, no CFG)."""

    num_steps: int | None = None
    """Denoising steps (turbo always runs its 8-step table unless `timesteps` is given)."""
    shift: float | None = None
    """Timestep shift, 1–5 (turbo snaps to 1, 2 or 3)."""
    guidance_scale: float | None = None
    """Classifier-free guidance scale for base/SFT models; 1 disables guidance."""
    guidance: Literal["apg", "cfg", "adg"] | None = None
    """Guidance rule for base/SFT models."""
    cfg_interval: tuple[float, float] = (0.0, 1.0)
    """Timestep interval [start, end] in which guidance applies."""
    timesteps: tuple[float, ...] | None = None
    """Custom timestep list (turbo snaps each value to its valid set)."""
    solver: Literal["ode", "sde"] | None = None
    """Euler ODE or stochastic (SDE) sampling; None takes the model's default (ODE, except the embedded turbo)."""
    guide_hints: bool = True
    """With guidance, the null branch also goes without the rule-written beat/key hints (only models trained
    with them read hints: the embedded base), so guidance amplifies tempo and key along with the text. False
    gives both branches the hints (the ninth release's sampling)."""

    def __post_init__(self) -> None:
        if self.num_steps is not None and not (1 <= self.num_steps <= MAX_STEPS):
            raise InvalidRequest("diffusion.num_steps", f"must be between 1 and {MAX_STEPS}, got {self.num_steps}")
        if self.shift is not None and not (1.0 <= self.shift <= 5.0):
            raise InvalidRequest("diffusion.shift", f"must be between 1 and 5, got {self.shift}")
        if self.guidance_scale is not None and not (1.0 <= self.guidance_scale <= 30.0):
            raise InvalidRequest("diffusion.guidance_scale", f"must be between 1 and 30, got {self.guidance_scale}")
        a, b = self.cfg_interval
        if not (0.0 <= a <= b <= 1.0):
            raise InvalidRequest("diffusion.cfg_interval", f"must satisfy 0 <= start <= end <= 1, got {self.cfg_interval}")
        if self.timesteps is not None:
            if not self.timesteps or len(self.timesteps) > 20:
                raise InvalidRequest("diffusion.timesteps", "must hold 1 to 20 values")
            if any(not (0.0 <= t <= 1.0) for t in self.timesteps):
                raise InvalidRequest("diffusion.timesteps", "values must lie in [0, 1]")


@dataclass(frozen=True, kw_only=True)
class PlannerOptions:
    """The 5 Hz LM planner ("thinking"): which metas it may fill and how it samples."""

    think: bool = False
    """Let the planner write metas and audio codes before the DiT renders."""
    fill: tuple[str, ...] = PLANNER_FIELDS
    """Fields the planner may decide when the user left them empty."""
    temperature: float = 0.85
    cfg_scale: float = 2.0
    top_k: int | None = None
    top_p: float | None = 0.9
    repetition_penalty: float = 1.0
    negative_prompt: str = "NO USER INPUT"

    def __post_init__(self) -> None:
        bad = [f for f in self.fill if f not in PLANNER_FIELDS]
        if bad:
            raise InvalidRequest("planner.fill", f"unknown fields {bad}; choose from {PLANNER_FIELDS}")
        if not (0.0 <= self.temperature <= 5.0):
            raise InvalidRequest("planner.temperature", f"must be in [0, 5], got {self.temperature}")
        if not (1.0 <= self.cfg_scale <= 10.0):
            raise InvalidRequest("planner.cfg_scale", f"must be in [1, 10], got {self.cfg_scale}")
        if self.top_k is not None and self.top_k < 1:
            raise InvalidRequest("planner.top_k", f"must be >= 1 (or null), got {self.top_k}")
        if self.top_p is not None and not (0.0 < self.top_p <= 1.0):
            raise InvalidRequest("planner.top_p", f"must be in (0, 1], got {self.top_p}")
        if not (0.5 <= self.repetition_penalty <= 3.0):
            raise InvalidRequest("planner.repetition_penalty", f"must be in [0.5, 3], got {self.repetition_penalty}")


@dataclass(frozen=True, kw_only=True)
class LoraSpec:
    """An adapter to apply at inference."""

    path: str
    """Folder or .safetensors file of a PEFT-layout adapter."""
    scale: float = 1.0
    """Strength, 0 (off) to 2."""

    def __post_init__(self) -> None:
        if not self.path:
            raise InvalidRequest("loras.path", "must not be empty")
        if not (0.0 <= self.scale <= 2.0):
            raise InvalidRequest("loras.scale", f"must be in [0, 2], got {self.scale}")


@dataclass(frozen=True, kw_only=True)
class OutputOptions:
    """How audio is post-processed and written."""

    format: Literal["flac", "wav", "mp3", "ogg"] = "flac"
    normalize: Literal["peak", "loudness", "none"] = "peak"
    """peak: only scale down if clipping; loudness: LUFS target with a true-peak ceiling."""
    target_lufs: float = -14.0
    true_peak_db: float = -1.0

    def __post_init__(self) -> None:
        if not (-40.0 <= self.target_lufs <= 0.0):
            raise InvalidRequest("output.target_lufs", f"must be in [-40, 0], got {self.target_lufs}")
        if not (-12.0 <= self.true_peak_db <= 0.0):
            raise InvalidRequest("output.true_peak_db", f"must be in [-12, 0], got {self.true_peak_db}")


@dataclass(frozen=True, kw_only=True)
class GenerationRequest:
    """Everything needed to generate: task, text, options. Front-ends build exactly this."""

    task: TaskSpec = field(default_factory=Text2Music)
    text: TextInputs = field(default_factory=TextInputs)
    diffusion: DiffusionOptions = field(default_factory=DiffusionOptions)
    planner: PlannerOptions | None = None
    output: OutputOptions = field(default_factory=OutputOptions)
    reference_audio: str | None = None
    """Audio file whose timbre/style conditions the song (any task)."""
    batch_size: int = 1
    """Songs per request, 1–8; item i uses seeds[i]."""
    seeds: tuple[int, ...] | None = None
    """One seed per item (or one seed, expanded as seed+i). None draws random seeds, recorded in the result."""
    loras: tuple[LoraSpec, ...] = ()
    audio_codes: tuple[int, ...] | None = None
    """5 Hz audio codes (0-63 999; a plan's, or a song's from `encore understand`) that the DiT renders as
    the song's structure, as it renders the planner's (SPEC §12.5): text2music (whose length they set when no
    duration is given) and cover (in place of the source's own codes). `parse_audio_codes` reads the
    `<|audio_code_N|>` text form."""

    def __post_init__(self) -> None:
        if type(self.task) not in _KIND_OF:
            raise InvalidRequest("task", f"unknown task type {type(self.task).__name__}")
        if self.audio_codes is not None:
            _check_audio_codes(self.audio_codes)
        if not (1 <= self.batch_size <= MAX_BATCH):
            raise InvalidRequest("batch_size", f"must be between 1 and {MAX_BATCH}, got {self.batch_size}")
        if self.seeds is not None:
            if len(self.seeds) not in (1, self.batch_size):
                raise InvalidRequest("seeds", f"give 1 or batch_size={self.batch_size} seeds, got {len(self.seeds)}")
            for s in self.seeds:
                if not (0 <= s <= MAX_SEED):
                    raise InvalidRequest("seeds", f"seeds must be in [0, 2^32-1], got {s}")

    def item_seeds(self) -> tuple[int, ...] | None:
        """Per-item seeds (a single seed s expands to s, s+1, ...), or None if random seeds are wanted."""
        if self.seeds is None:
            return None
        if len(self.seeds) == 1:
            return tuple((self.seeds[0] + i) % (MAX_SEED + 1) for i in range(self.batch_size))
        return self.seeds


@dataclass
class GenerationResult:
    """What `Pipeline.generate` returns. `params` holds every resolved value (defaults filled in)."""

    audio: Any
    """float32 tensor [B, 2, S] at `sample_rate`."""
    sample_rate: int
    seeds: tuple[int, ...]
    params: dict[str, Any]
    latents: Any = None
    """Final latents [B, T, C] before decoding."""
    plan: Any = None
    """Planner output (metas, caption, codes) when thinking was on."""
    timings_s: dict[str, float] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)


class ProgressFn(Protocol):
    def __call__(self, stage: str, fraction: float) -> None: ...


class CancelToken(Protocol):
    def is_set(self) -> bool: ...


# --------------------------------------------------------------------------------------------
# Wire format: plain JSON-able dicts <-> typed request, with field-path errors.
# --------------------------------------------------------------------------------------------


def _check_audio_codes(codes: tuple[int, ...]) -> None:
    shortest, longest = (int(s * AUDIO_CODES_PER_S) for s in DURATION_RANGE_S)
    if not shortest <= len(codes) <= longest:
        raise InvalidRequest("audio_codes", f"give {shortest} to {longest} codes ({DURATION_RANGE_S[0]:g}-"
                                            f"{DURATION_RANGE_S[1]:g} s at {AUDIO_CODES_PER_S} per second), "
                                            f"got {len(codes)}")  # fmt: skip
    for i, code in enumerate(codes):
        if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code < NUM_AUDIO_CODES:
            raise InvalidRequest(f"audio_codes[{i}]", f"codes are integers 0-{NUM_AUDIO_CODES - 1}, got {code!r}")


def text2music_duration_s(request: GenerationRequest) -> float:
    """The length a text2music request renders when the planner does not pick it: its duration, else the
    length of its audio codes, else the official default."""
    if request.text.duration_s is not None:
        return request.text.duration_s
    if request.audio_codes is not None:
        return len(request.audio_codes) / AUDIO_CODES_PER_S
    return float(DEFAULT_DURATION_S)


def parse_audio_codes(text: str, field_name: str = "audio_codes") -> tuple[int, ...]:
    """Audio codes from text: `<|audio_code_N|>` tokens (the planner's output and the official
    `audio_code_string`), or integers separated by commas or whitespace.

    Raises:
        InvalidRequest: `field_name`, when the text holds anything else, or no code.
    """
    body = text.strip()
    if "<|" in body:
        codes = [int(m) for m in _CODE_TOKEN.findall(body)]
        rest = re.sub(r"[\s,]+", " ", _CODE_TOKEN.sub(" ", body)).strip()
    else:
        parts = [p for p in re.split(r"[\s,]+", body) if p]
        codes = [int(p) for p in parts if re.fullmatch(r"-?\d+", p)]
        rest = " ".join(p for p in parts if not re.fullmatch(r"-?\d+", p))
    if rest:
        raise InvalidRequest(field_name, f"expected <|audio_code_N|> tokens or integers, found {rest[:40]!r}")
    if not codes:
        raise InvalidRequest(field_name, "no audio codes given")
    return tuple(codes)


def audio_codes_text(codes: Sequence[int]) -> str:
    """Codes as `<|audio_code_N|>` text: the planner's tokens and the official `audio_code_string`
    (`parse_audio_codes` reads it back)."""
    return "".join(f"<|audio_code_{int(c)}|>" for c in codes)


def request_to_dict(obj: Any) -> Any:
    """Serialise a request (or any of its parts) to JSON-able data; tasks carry a ``kind`` tag."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        if type(obj) in _KIND_OF:
            out["kind"] = _KIND_OF[type(obj)]
        for f in dataclasses.fields(obj):
            out[f.name] = request_to_dict(getattr(obj, f.name))
        return out
    if isinstance(obj, tuple):
        return [request_to_dict(v) for v in obj]
    return obj


def request_from_dict(data: Any) -> GenerationRequest:
    """Build a validated `GenerationRequest` from JSON-able data; unknown keys are errors."""
    return _build(GenerationRequest, data, "")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _build(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise InvalidRequest(path or "request", f"expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields) - ({"kind"} if cls in _KIND_OF else set()))
    if unknown:
        raise InvalidRequest(_join(path, unknown[0]), "unknown field")
    kwargs = {name: _convert(hints[name], data[name], _join(path, name)) for name in fields if name in data}
    try:
        return cls(**kwargs)
    except InvalidRequest as exc:
        # Nested dataclasses name their own fields relative to the request root; keep the deepest path.
        if path and not exc.field.startswith(path) and "." not in exc.field:
            raise InvalidRequest(_join(path, exc.field), exc.message) from None
        raise


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if all(dataclasses.is_dataclass(a) and a in _KIND_OF for a in non_none):
            return _build_task(value, path)
        if len(non_none) == 1:
            return _convert(non_none[0], value, path)
        for a in non_none:  # e.g. str | None handled above; try each in order for simple unions
            try:
                return _convert(a, value, path)
            except InvalidRequest:
                continue
        raise InvalidRequest(path, f"invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise InvalidRequest(path, f"must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise InvalidRequest(path, f"expected a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise InvalidRequest(path, f"expected {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if dataclasses.is_dataclass(tp):
        if tp in _KIND_OF:
            return _build_task(value, path)
        return _build(tp, value, path)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise InvalidRequest(path, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise InvalidRequest(path, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidRequest(path, f"expected a number, got {value!r}")
        if not math.isfinite(float(value)):
            raise InvalidRequest(path, f"must be finite, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise InvalidRequest(path, f"expected a string, got {type(value).__name__}")
        return value
    raise InvalidRequest(path, f"unsupported field type {tp!r}")


def _build_task(value: Any, path: str) -> Any:
    if not isinstance(value, dict):
        raise InvalidRequest(path, "expected an object with a 'kind' field")
    kind = value.get("kind", "text2music")
    if kind not in TASK_KINDS:
        raise InvalidRequest(_join(path, "kind"), f"unknown task {kind!r}; choose from {sorted(TASK_KINDS)}")
    return _build(TASK_KINDS[kind], value, path)
