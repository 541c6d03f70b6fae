"""Planner modes over a `Planner` (SPEC §12): plan, understand, create_sample, format_sample.

Each mode builds its prompts (`planner_prompts`), runs the decode loop (`generate_tokens`: batched
cond/uncond CFG rows, KV cache, constrained decoding with head slicing, per-row seeded sampling) and
parses the output into a typed result that also serialises to YAML. User-given metas always win.
"""

from __future__ import annotations

import dataclasses
import math
import re
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Self

import torch
import yaml

from encore.errors import Cancelled, EncoreError, InvalidRequest
from encore.models.planner import NUM_VALID_AUDIO_CODES, Planner, RowSet, code_token
from encore.pipeline import planner_prompts as P
from encore.sampling import lm_sampling as S
from encore.sampling.constrained import (
    BPM_MAX,
    BPM_MIN,
    DURATION_MAX,
    DURATION_MIN,
    FIELD_ORDER,
    KEYSCALES,
    LANGUAGES,
    TIME_SIGNATURES,
    ConstraintSpec,
    ConstraintTables,
    FsmState,
)

MAX_MODEL_LEN = 4096
"""Official context budget; new tokens are capped at `MAX_MODEL_LEN - 64` (SPEC §12.3)."""
CODES_PER_SECOND = 5
USER_DURATION_MIN = 1.0
"""User durations may be shorter than the planner's own 10 s minimum (sketches, tests)."""


class CancelToken(Protocol):
    """Anything with `is_set()` (e.g. `threading.Event`); polled once per decoding step."""

    def is_set(self) -> bool: ...




# ----------------------------------------------------------------------------- requests
def _int_value(field: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool):
        raise InvalidRequest(field, f"must be an integer in {lo}…{hi}, got {value!r}")
    if isinstance(value, str) and re.fullmatch(r"\s*\d+(\.0*)?\s*", value):
        value = float(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidRequest(field, f"must be an integer in {lo}…{hi}, got {value!r}")
    return value


def _keyscale(value: str) -> str:
    m = re.fullmatch(r"\s*([A-Ga-g])([#b♯♭]?)\s+(major|minor)\s*", value, flags=re.IGNORECASE)
    if m is None:
        return value
    return f"{m.group(1).upper()}{m.group(2)} {m.group(3).lower()}"


@dataclass(frozen=True, kw_only=True)
class UserMetas:
    """Metas the user fixed; the planner fills the rest. All validated on construction.

    Raises:
        InvalidRequest: a value is out of range or malformed (the error names the field).
    """

    bpm: int | None = None
    """Beats per minute, 30…300."""
    duration: float | None = None
    """Song length in seconds, 1…600 (5 codes per second; the planner itself picks 10…600)."""
    keyscale: str | None = None
    """One of the 70 keys, e.g. "F# minor", "B♭ major"."""
    timesignature: int | None = None
    """Beats per bar: 2, 3, 4 or 6."""
    language: str | None = None
    """Vocal language code (e.g. "en", "zh", "yue")."""

    def __post_init__(self) -> None:
        if self.bpm is not None:
            object.__setattr__(self, "bpm", _int_value("bpm", self.bpm, BPM_MIN, BPM_MAX))
        if self.duration is not None:
            d = self.duration
            if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d) \
                    or not USER_DURATION_MIN <= d <= DURATION_MAX:
                raise InvalidRequest("duration", f"must be a number of seconds in {USER_DURATION_MIN:g}…"
                                                 f"{DURATION_MAX}, got {d!r}")
        if self.keyscale is not None and self.keyscale not in KEYSCALES:
            raise InvalidRequest("keyscale", f"must be a note A–G with optional #, b, ♯ or ♭ and 'major' or "
                                             f"'minor' (e.g. 'F# minor'), got {self.keyscale!r}")
        if self.timesignature is not None and (isinstance(self.timesignature, bool)
                                               or self.timesignature not in TIME_SIGNATURES):
            raise InvalidRequest("timesignature", f"must be one of {TIME_SIGNATURES}, got {self.timesignature!r}")
        if self.language is not None and self.language not in LANGUAGES:
            raise InvalidRequest("language", f"must be one of {', '.join(LANGUAGES)}, got {self.language!r}")

    @classmethod
    def parse(cls, *, bpm: object = None, duration: object = None, keyscale: object = None,
              timesignature: object = None, language: object = None) -> UserMetas:
        """Build from loose front-end values ("120", "4/4", " f# MINOR ", "unknown" = not set).

        Raises:
            InvalidRequest: a value cannot be read (e.g. bpm "fast", key "H major", duration -3).
        """
        if isinstance(duration, str):
            try:
                duration = float(duration)
            except ValueError:
                raise InvalidRequest("duration", f"must be a number of seconds, got {duration!r}") from None
        if isinstance(keyscale, str):
            keyscale = _keyscale(keyscale)
        if isinstance(timesignature, str):
            m = re.fullmatch(r"\s*(\d+)(?:\s*/\s*(2|4|8))?\s*", timesignature)
            if m is None:
                raise InvalidRequest("timesignature", f"must be 2, 3, 4 or 6 (or e.g. '3/4'), got {timesignature!r}")
            timesignature = int(m.group(1))
        if isinstance(language, str):
            language = language.strip().lower()
            language = None if language in ("", "unknown") else language
        return cls(bpm=None if bpm is None else _int_value("bpm", bpm, BPM_MIN, BPM_MAX),
                   duration=duration, keyscale=keyscale, timesignature=timesignature,  # type: ignore[arg-type]
                   language=language)  # type: ignore[arg-type]

    def cot_values(self) -> dict[str, str]:
        """Field → text injected into the CoT (duration as whole seconds, like the reference)."""
        out: dict[str, str] = {}
        if self.bpm is not None:
            out["bpm"] = str(self.bpm)
        if self.duration is not None:
            out["duration"] = str(int(self.duration))
        if self.keyscale is not None:
            out["keyscale"] = self.keyscale
        if self.timesignature is not None:
            out["timesignature"] = str(self.timesignature)
        if self.language is not None:
            out["language"] = self.language
        return out


@dataclass(frozen=True, kw_only=True)
class LmSampling:
    """Sampling settings of one planner call (defaults: SPEC §11 / §12.3)."""

    temperature: float = 0.85
    """Softmax temperature; 0 = greedy."""
    top_k: int | None = None
    """Keep the k best tokens (None or 0 = off)."""
    top_p: float | None = 0.9
    """Nucleus mass (None or 1 = off)."""
    repetition_penalty: float = 1.0
    """CTRL penalty on tokens already in the sequence (1 = off)."""
    cfg_scale: float = 2.0
    """LM classifier-free guidance (≤ 1 = off; the unconditional rows then are not computed)."""
    negative_prompt: str = P.NO_USER_INPUT
    """Unconditional prompt text for CFG ("NO USER INPUT" = none)."""
    use_constrained_decoding: bool = True
    use_head_slicing: bool = True
    """Score only the LM-head rows a constrained state can emit (e.g. the 64 000 codes)."""
    max_new_tokens: int | None = None
    """Token budget per call (None = SPEC §12.3 default)."""
    max_caption_tokens: int = 512
    max_genres_tokens: int = 64
    max_duration: int = DURATION_MAX
    """Largest duration the planner may choose, seconds (e.g. a GPU-tier limit)."""

    def __post_init__(self) -> None:
        def bad(field: str, msg: str) -> InvalidRequest:
            return InvalidRequest(f"sampling.{field}", msg)

        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise bad("temperature", f"must be >= 0, got {self.temperature!r}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or self.top_k < 0):
            raise bad("top_k", f"must be >= 0 or None, got {self.top_k!r}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise bad("top_p", f"must be in (0, 1] or None, got {self.top_p!r}")
        if not math.isfinite(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise bad("repetition_penalty", f"must be > 0, got {self.repetition_penalty!r}")
        if not math.isfinite(self.cfg_scale) or self.cfg_scale < 0:
            raise bad("cfg_scale", f"must be >= 0, got {self.cfg_scale!r}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise bad("max_new_tokens", f"must be >= 1, got {self.max_new_tokens!r}")
        if self.max_caption_tokens < 1:
            raise bad("max_caption_tokens", f"must be >= 1, got {self.max_caption_tokens!r}")
        if self.max_genres_tokens < 1:
            raise bad("max_genres_tokens", f"must be >= 1, got {self.max_genres_tokens!r}")
        if not DURATION_MIN <= self.max_duration <= DURATION_MAX:
            raise bad("max_duration", f"must be in {DURATION_MIN}…{DURATION_MAX}, got {self.max_duration!r}")

    @property
    def use_cfg(self) -> bool:
        return self.cfg_scale > 1.0


PLAN_SAMPLING = LmSampling()
UNDERSTAND_SAMPLING = LmSampling(temperature=0.3, top_p=None, cfg_scale=1.0)
"""Official understand defaults: temperature 0.3, no CFG."""
WRITE_SAMPLING = LmSampling(cfg_scale=1.0)
"""create_sample / format_sample defaults (the reference runs them without CFG)."""


# ----------------------------------------------------------------------------- results
class _Result:
    """YAML/dict serialisation shared by the result dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def to_yaml(self) -> str:
        return str(yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, default_flow_style=None,
                                  width=100))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - names
        if unknown:
            raise InvalidRequest(min(unknown), f"unknown field for {cls.__name__}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, text: str) -> Self:
        return cls.from_dict(yaml.safe_load(text))


@dataclass(frozen=True, kw_only=True)
class Plan(_Result):
    """One planned song: CoT metas and its 5 Hz audio codes."""

    caption: str
    """Caption for the DiT: the CoT rewrite, or the user's when the CoT has none."""
    bpm: int
    duration: float
    """Seconds; the song has `int(duration * 5)` codes."""
    keyscale: str
    timesignature: int
    language: str | None
    codes: tuple[int, ...]
    """Audio codes 0…63 999 (empty when codes were not requested)."""
    seed: int
    cot: str
    """The `<think>…</think>` block phase 2 was conditioned on."""


@dataclass(frozen=True, kw_only=True)
class _Described(_Result):
    caption: str
    lyrics: str
    bpm: int
    duration: int
    keyscale: str
    timesignature: int
    language: str | None
    genres: str | None = None


@dataclass(frozen=True, kw_only=True)
class Understanding(_Described):
    """What the planner hears in a song's codes: caption, lyrics and metas."""


@dataclass(frozen=True, kw_only=True)
class SampleIdea(_Described):
    """A full song description expanded from one sentence (simple mode)."""

    instrumental: bool


@dataclass(frozen=True, kw_only=True)
class Formatted(_Described):
    """User caption and lyrics rewritten into the standard form, with metas."""


# ----------------------------------------------------------------------------- decoding
_TABLES: weakref.WeakKeyDictionary[Planner, ConstraintTables] = weakref.WeakKeyDictionary()


def constraint_tables(planner: Planner) -> ConstraintTables:
    """The planner's constrained-decoding tables (built once per planner, ~1 s for the real vocabulary)."""
    if planner not in _TABLES:
        _TABLES[planner] = ConstraintTables(planner.vocab, planner.encode, planner.token_texts())
    return _TABLES[planner]


def _left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if not r:
            raise InvalidRequest("prompt", "empty prompt")
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask


@dataclass
class _Loop:
    """Per-call decoding state shared by the step helpers."""

    planner: Planner
    tables: ConstraintTables | None
    states: list[FsmState] | None
    sampling: LmSampling
    generators: list[torch.Generator]
    seen: torch.Tensor | None

    def rows(self, b: int) -> RowSet | None:
        return self.tables.rows(self.states[b]) if self.tables and self.states else None

    def record(self, b: int, token: int) -> bool:
        """Append `token` to row `b`'s history; return whether the row is finished."""
        if self.seen is not None:
            self.seen[b, token] = True
        if self.tables is not None and self.states is not None:
            self.tables.advance(self.states[b], token)
            return self.states[b].done
        return token in (self.planner.vocab.eos_id, self.planner.vocab.pad_id)

    def pick(self, logits: torch.Tensor, rows: RowSet | None, batch: list[int], u: torch.Tensor) -> list[int]:
        """Sample one token for each row in `batch`; `logits` `(len(batch), N)` cover `rows`."""
        s = self.sampling
        if self.tables is not None and self.states is not None:
            keeps = [self.tables.constrain(self.states[b], logits[i], rows) for i, b in enumerate(batch)]
            if any(k is not None for k in keeps):
                full = torch.ones(logits.shape[-1], dtype=torch.bool, device=logits.device)
                logits = S.apply_mask(logits, torch.stack([full if k is None else k for k in keeps]))
        if self.seen is not None:
            seen = self.seen[batch]
            seen = seen if rows is None else seen[:, rows.on(seen.device)]
            logits = S.apply_repetition_penalty(logits, seen, s.repetition_penalty)
        logits = S.apply_top_p(S.apply_top_k(logits, s.top_k), s.top_p)
        idx = S.sample_tokens(logits, s.temperature, u).tolist()
        return [int(rows.ids[i]) if rows is not None else int(i) for i in idx]


def _step_tokens(loop: _Loop, hidden: torch.Tensor, active: list[int], batch_size: int) -> dict[int, int]:
    """Choose the next token of every active row from last hidden states `(R, H)`."""
    s = loop.sampling
    per_row = {b: loop.rows(b) for b in active}
    first = per_row[active[0]]
    shared = all(r is first for r in per_row.values())
    head_rows = first if shared and s.use_head_slicing else None
    logits = loop.planner.logits(hidden, head_rows)
    guided = S.apply_cfg(logits[:batch_size], logits[batch_size:], s.cfg_scale) if s.use_cfg else logits
    u = S.draw_uniforms([loop.generators[b] for b in active])
    if shared:
        sub = guided[active]
        if head_rows is None and first is not None:
            sub = sub[:, first.on(sub.device)]
        return dict(zip(active, loop.pick(sub, first, active, u), strict=True))
    out: dict[int, int] = {}
    for i, b in enumerate(active):
        row = guided[b:b + 1]
        rows = per_row[b]
        if rows is not None:
            row = row[:, rows.on(row.device)]
        out[b] = loop.pick(row, rows, [b], u[i:i + 1])[0]
    return out


def generate_tokens(planner: Planner, prompts: Sequence[str], *, uncond_prompts: Sequence[str] | None = None,
                    specs: Sequence[ConstraintSpec] | None = None, sampling: LmSampling,
                    seeds: Sequence[int], max_new_tokens: int, cancel: CancelToken | None = None,
                    on_step: Callable[[int], None] | None = None) -> tuple[list[list[int]], list[bool]]:
    """Decode `len(prompts)` sequences in one batch (plus their CFG rows).

    Args:
        planner: the LM.
        prompts: B conditional prompt strings.
        uncond_prompts: B unconditional prompts (required when `sampling.use_cfg`).
        specs: B constraint specs, or None for unconstrained decoding (stops at EOS).
        sampling: sampling settings.
        seeds: B seeds; row b draws from its own generator, so its tokens do not depend on the batch.
        max_new_tokens: step budget.
        cancel: polled every step; True raises `Cancelled`.
        on_step: called with the number of tokens decoded so far after every step (progress, timing).

    Returns:
        (generated ids per row, without prompts; whether each row finished before the budget ran out).
    """
    B = len(prompts)
    if len(seeds) != B or (specs is not None and len(specs) != B):
        raise ValueError("prompts, seeds and specs must have the same length")
    if sampling.use_cfg and (uncond_prompts is None or len(uncond_prompts) != B):
        raise ValueError("CFG needs one unconditional prompt per prompt")
    texts = list(prompts) + (list(uncond_prompts or []) if sampling.use_cfg else [])
    token_rows = [planner.encode(t) for t in texts]
    ids, mask = _left_pad(token_rows, planner.vocab.pad_id)
    dev = planner.device
    ids, mask = ids.to(dev), mask.to(dev)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    tables = constraint_tables(planner) if specs is not None else None
    loop = _Loop(planner, tables, [tables.start(sp) for sp in specs] if tables and specs else None, sampling,
                 [torch.Generator().manual_seed(int(sd)) for sd in seeds],
                 _seen_mask(token_rows[:B], planner.vocab.vocab_size, dev) if sampling.repetition_penalty != 1.0
                 else None)
    out: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    cache = planner.new_cache()
    with torch.inference_mode():
        hidden = planner.forward(ids, mask, positions, cache)[:, -1]
        next_pos = positions[:, -1:] + 1
        for step_index in range(max_new_tokens):
            if cancel is not None and cancel.is_set():
                raise Cancelled("planner decoding cancelled")
            chosen = _step_tokens(loop, hidden, [b for b in range(B) if not done[b]], B)
            step_ids = [planner.vocab.eos_id] * B  # finished rows keep feeding EOS; their output is ignored
            for b, tok in chosen.items():
                out[b].append(tok)
                step_ids[b] = tok
                done[b] = loop.record(b, tok)
            if on_step is not None:
                on_step(step_index + 1)
            if all(done):
                break
            step = torch.tensor(step_ids * (len(texts) // B), device=dev).unsqueeze(-1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
            hidden = planner.forward(step, mask, next_pos, cache)[:, -1]
            next_pos = next_pos + 1
    return out, done


def _seen_mask(token_rows: list[list[int]], vocab_size: int, device: torch.device) -> torch.Tensor:
    """`(B, V)` bool: which tokens each prompt already contains (the repetition penalty covers the prompt)."""
    seen = torch.zeros((len(token_rows), vocab_size), dtype=torch.bool, device=device)
    for b, row in enumerate(token_rows):
        seen[b, torch.tensor(row, device=device)] = True
    return seen


def _budget(sampling: LmSampling, duration: float | None) -> int:
    """New-token budget (SPEC §12.3): duration·5 + 500 when known, capped at `MAX_MODEL_LEN - 64`."""
    if sampling.max_new_tokens is not None:
        return sampling.max_new_tokens
    n = MAX_MODEL_LEN if duration is None else int(min(max(duration, DURATION_MIN), DURATION_MAX) * 5) + 500
    return min(n, MAX_MODEL_LEN - 64)


def _split(planner: Planner, ids: list[int], finished: bool) -> tuple[dict[str, str | int], list[int]]:
    """Parse the CoT of a generated sequence; return its fields and the ids after `</think>`."""
    v = planner.vocab
    if v.think_end_id not in ids:
        why = "ran out of tokens (raise sampling.max_new_tokens)" if not finished else "emitted no </think>"
        raise EncoreError(f"planner output has no complete CoT: the decoder {why}")
    end = ids.index(v.think_end_id)
    start = ids.index(v.think_id) + 1 if v.think_id in ids[:end] else 0
    return P.parse_cot(planner.decode(ids[start:end])), ids[end + 1:]


def _need(fields: dict[str, str | int], names: Sequence[str]) -> None:
    missing = [n for n in names if n not in fields]
    if missing:
        raise EncoreError(f"planner output lacks {', '.join(missing)}")
    bad = [n for n in ("bpm", "duration", "timesignature") if n in names and not isinstance(fields[n], int)]
    if bad:
        raise EncoreError(f"planner output has non-numeric {', '.join(bad)}: {[fields[n] for n in bad]}")


def _check_text(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(field, f"must be a string, got {type(value).__name__}")
    return value


def _spec(sampling: LmSampling, fields: Sequence[str], user: dict[str, str], tail: str) -> ConstraintSpec | None:
    if not sampling.use_constrained_decoding:
        return None
    return ConstraintSpec(fields=tuple(fields), user_values=user, tail=tail,  # type: ignore[arg-type]
                          max_duration=sampling.max_duration, max_caption_tokens=sampling.max_caption_tokens,
                          max_genres_tokens=sampling.max_genres_tokens)


# ----------------------------------------------------------------------------- modes
def plan(planner: Planner, caption: str, lyrics: str = "", *, metas: UserMetas | None = None,
         sampling: LmSampling | None = None, seeds: Sequence[int] = (0,), use_cot_caption: bool = True,
         use_cot_language: bool = True, generate_codes: bool = True, phase2_prompt: P.Phase2Prompt = "open",
         cancel: CancelToken | None = None) -> list[Plan]:
    """Plan songs: phase 1 writes the CoT metas once, phase 2 writes `duration·5` codes per seed.

    Phase 1 is skipped when the user fixed bpm, duration, keyscale and time signature (SPEC §12.2).

    Args:
        planner: the LM.
        caption: the user's caption.
        lyrics: the user's lyrics ("" for none).
        metas: fields the user fixed; they are injected into the CoT and win over the planner's.
        sampling: defaults to `PLAN_SAMPLING`.
        seeds: one per song; phase 1 uses `seeds[0]`.
        use_cot_caption: let the planner rewrite the caption (else the CoT has no caption line).
        use_cot_language: let the planner choose the vocal language.
        generate_codes: False stops after phase 1 (`Plan.codes` empty).
        phase2_prompt: "open" (training-aligned, default) or "legacy" phase-2 prompt.
        cancel: polled every decoding step.

    Returns:
        One `Plan` per seed (same metas, different codes).

    Raises:
        InvalidRequest: a malformed input, before any model runs.
    """
    caption, lyrics = _check_text("caption", caption), _check_text("lyrics", lyrics)
    metas = metas or UserMetas()
    sampling = sampling or PLAN_SAMPLING
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise InvalidRequest("seeds", f"must be a non-empty list of integers, got {seeds!r}")
    user = metas.cot_values()
    values: dict[str, str | int] = dict(user)
    if not all(k in user for k in ("bpm", "duration", "keyscale", "timesignature")):
        skip = {"caption"} if not use_cot_caption else set()
        if not use_cot_language and "language" not in user:
            skip.add("language")
        fields = [f for f in P.COT_KEYS if f not in skip]
        spec = _spec(sampling, fields, {k: v for k, v in user.items() if k in fields}, "stop")
        uncond = [P.cot_uncond_prompt(lyrics, sampling.negative_prompt)] if sampling.use_cfg else None
        ids, finished = generate_tokens(planner, [P.cot_prompt(caption, lyrics)], uncond_prompts=uncond,
                                        specs=None if spec is None else [spec], sampling=sampling,
                                        seeds=seeds[:1], max_new_tokens=_budget(sampling, None), cancel=cancel)
        parsed, _ = _split(planner, ids[0], finished[0])
        _need(parsed, ("bpm", "duration", "keyscale", "timesignature"))
        values = {**{k: parsed[k] for k in fields if k in parsed}, **user}
    duration = metas.duration if metas.duration is not None else float(values["duration"])
    cot = P.format_cot(values)
    all_codes: list[tuple[int, ...]] = [() for _ in seeds]
    if generate_codes:
        all_codes = _plan_codes(planner, caption, lyrics, cot, duration, sampling, seeds, phase2_prompt, cancel)
    return [Plan(caption=str(values.get("caption", caption)), bpm=int(values["bpm"]), duration=float(duration),
                 keyscale=str(values["keyscale"]), timesignature=int(values["timesignature"]),
                 language=str(values["language"]) if "language" in values else None,
                 codes=codes, seed=int(seed), cot=cot) for codes, seed in zip(all_codes, seeds, strict=True)]


def _plan_codes(planner: Planner, caption: str, lyrics: str, cot: str, duration: float, sampling: LmSampling,
                seeds: Sequence[int], style: P.Phase2Prompt, cancel: CancelToken | None) -> list[tuple[int, ...]]:
    """Phase 2: exactly `int(duration·5)` codes per seed (constrained), batched over seeds."""
    target = int(duration * CODES_PER_SECOND)
    n = len(seeds)
    spec = ConstraintSpec(cot=False, tail="codes", target_codes=target) \
        if sampling.use_constrained_decoding else None
    uncond = [P.codes_uncond_prompt(caption, lyrics, sampling.negative_prompt, style)] * n \
        if sampling.use_cfg else None
    ids, _ = generate_tokens(planner, [P.codes_prompt(caption, lyrics, cot, style)] * n, uncond_prompts=uncond,
                             specs=None if spec is None else [spec] * n, sampling=sampling, seeds=seeds,
                             # The code count is exact, so the budget always covers it.
                             max_new_tokens=max(_budget(sampling, duration), target + 1), cancel=cancel)
    vocab = planner.vocab
    return [tuple(c for c in (vocab.code_of(t) for t in row) if c is not None) for row in ids]


def _check_codes(codes: Sequence[int], num_valid: int = NUM_VALID_AUDIO_CODES) -> list[int]:
    if isinstance(codes, (str, bytes)) or not len(codes):
        raise InvalidRequest("codes", "must be a non-empty list of audio codes")
    for i, c in enumerate(codes):
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < num_valid:
            raise InvalidRequest("codes", f"code #{i} must be an integer in 0…{num_valid - 1}, got {c!r}")
    return list(codes)


def _describe(planner: Planner, prompt: str, uncond: str, *, user: dict[str, str], fields: Sequence[str],
              sampling: LmSampling, seed: int, cancel: CancelToken | None) -> tuple[dict[str, str | int], str]:
    """Shared decode for understand / create_sample / format_sample: CoT (with genres), then free lyrics."""
    spec = _spec(sampling, fields, user, "lyrics")
    ids, finished = generate_tokens(planner, [prompt], uncond_prompts=[uncond] if sampling.use_cfg else None,
                                    specs=None if spec is None else [spec], sampling=sampling, seeds=[seed],
                                    max_new_tokens=_budget(sampling, None), cancel=cancel)
    parsed, rest = _split(planner, ids[0], finished[0])
    _need(parsed, [f for f in fields if f != "genres"])
    stops = (planner.vocab.eos_id, planner.vocab.pad_id)
    lyrics = P.extract_lyrics(planner.decode([t for t in rest if t not in stops]))
    return {**parsed, **user}, lyrics


def _described_fields(values: dict[str, str | int], lyrics: str) -> dict[str, Any]:
    return {"caption": str(values["caption"]), "lyrics": lyrics, "bpm": int(values["bpm"]),
            "duration": int(values["duration"]), "keyscale": str(values["keyscale"]),
            "timesignature": int(values["timesignature"]),
            "language": str(values["language"]) if "language" in values else None,
            "genres": str(values["genres"]) if "genres" in values else None}


def understand(planner: Planner, codes: Sequence[int], *, sampling: LmSampling | None = None, seed: int = 0,
               cancel: CancelToken | None = None) -> Understanding:
    """Describe a song from its 5 Hz audio codes: caption, lyrics, bpm, duration, key, time signature, language.

    Args:
        codes: audio codes 0…63 999 (from the audio tokenizer).
        sampling: defaults to `UNDERSTAND_SAMPLING` (temperature 0.3, no CFG).
    """
    codes = _check_codes(codes)
    sampling = sampling or UNDERSTAND_SAMPLING
    prompt = P.understand_prompt("".join(code_token(c) for c in codes))
    values, lyrics = _describe(planner, prompt, P.understand_uncond_prompt(sampling.negative_prompt), user={},
                               fields=FIELD_ORDER, sampling=sampling, seed=seed, cancel=cancel)
    return Understanding(**_described_fields(values, lyrics))


def create_sample(planner: Planner, query: str, *, instrumental: bool = False, language: str | None = None,
                  sampling: LmSampling | None = None, seed: int = 0,
                  cancel: CancelToken | None = None) -> SampleIdea:
    """Expand one sentence into a caption, lyrics and metas (simple / inspiration mode).

    Args:
        query: the user's description ("" = "NO USER INPUT").
        instrumental: ask for an instrumental song (lyrics "[Instrumental]" when the planner writes none).
        language: vocal language to force ("unknown" or None = the planner chooses).
        sampling: defaults to `WRITE_SAMPLING`.
    """
    query = _check_text("query", query)
    metas = UserMetas.parse(language=language)
    sampling = sampling or WRITE_SAMPLING
    prompt = P.inspiration_prompt(query if query.strip() else P.NO_USER_INPUT, bool(instrumental))
    values, lyrics = _describe(planner, prompt, P.inspiration_uncond_prompt(sampling.negative_prompt),
                               user=metas.cot_values(), fields=FIELD_ORDER, sampling=sampling, seed=seed,
                               cancel=cancel)
    if not lyrics and instrumental:
        lyrics = "[Instrumental]"
    return SampleIdea(**_described_fields(values, lyrics), instrumental=bool(instrumental))


def format_sample(planner: Planner, caption: str, lyrics: str, *, metas: UserMetas | None = None,
                  sampling: LmSampling | None = None, seed: int = 0,
                  cancel: CancelToken | None = None) -> Formatted:
    """Rewrite a raw caption and lyrics into the standard form and fill the metas.

    Args:
        caption: raw caption ("" = "NO USER INPUT").
        lyrics: raw lyrics ("" = "[Instrumental]"); returned unchanged if the planner writes none.
        metas: fields the user fixed (a fixed language is not asked of the planner at all).
        sampling: defaults to `WRITE_SAMPLING`.
    """
    caption, lyrics = _check_text("caption", caption), _check_text("lyrics", lyrics)
    metas = metas or UserMetas()
    sampling = sampling or WRITE_SAMPLING
    caption = caption if caption.strip() else P.NO_USER_INPUT
    lyrics = lyrics if lyrics.strip() else "[Instrumental]"
    user = metas.cot_values()
    fields = [f for f in FIELD_ORDER if f != "language" or metas.language is None]
    values, new_lyrics = _describe(planner, P.format_prompt(caption, lyrics),
                                   P.format_uncond_prompt(sampling.negative_prompt),
                                   user={k: v for k, v in user.items() if k in fields}, fields=fields,
                                   sampling=sampling, seed=seed, cancel=cancel)
    return Formatted(**_described_fields({**values, **user}, new_lyrics or lyrics))
