"""JSON Schemas (draft 2020-12, plain dicts) of what `encore plan|understand|codes|create|format --json` print.

The value ranges are the planner's constrained-decoding guarantees (SPEC §12.4): bpm 30–300, one of the 70
keys, time signature 2/3/4/6, audio codes 0–63 999. Durations the user fixed may be as short as 1 s. This module
imports nothing heavy; tests validate real command output against these schemas.
"""

from __future__ import annotations

from typing import Any

KEYSCALE_PATTERN = r"^[A-G][#b♯♭]? (major|minor)$"
NUM_VALID_AUDIO_CODES = 64_000
"""Codes 0…63 999 (SPEC §12.1); mirrors `encore.models.planner.NUM_VALID_AUDIO_CODES` without importing torch."""

_SEED = {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}
_CODES = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": NUM_VALID_AUDIO_CODES - 1}}
_METAS: dict[str, Any] = {
    "caption": {"type": "string", "minLength": 1},
    "bpm": {"type": "integer", "minimum": 30, "maximum": 300},
    "keyscale": {"type": "string", "pattern": KEYSCALE_PATTERN},
    "timesignature": {"enum": [2, 3, 4, 6]},
    "language": {"type": ["string", "null"], "description": "vocal language code, null when not chosen"},
}
_DESCRIBED: dict[str, Any] = {
    **_METAS,
    "lyrics": {"type": "string"},
    "duration": {"type": "integer", "minimum": 1, "maximum": 600, "description": "seconds"},
    "genres": {"type": ["string", "null"]},
}
_COMMON: dict[str, Any] = {
    "ok": {"const": True},
    "output": {"type": "string", "description": "the -o file, when given"},
}


def _object(properties: dict[str, Any], *, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "additionalProperties": False,
            "required": [k for k in properties if k not in optional]}


PLAN_ITEM_SCHEMA = _object({
    **_METAS,
    "duration": {"type": "number", "minimum": 1, "maximum": 600,
                 "description": "seconds; the plan holds int(duration * 5) codes"},
    "codes": {**_CODES, "description": "5 Hz audio codes (empty with --metas-only)"},
    "seed": _SEED,
    "cot": {"type": "string", "pattern": "^<think>\n[\\s\\S]*\n</think>$",
            "description": "the <think> block the codes were conditioned on"},
})
PLAN_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "encore plan --json",
    **_object({**_COMMON, "plans": {"type": "array", "minItems": 1, "items": PLAN_ITEM_SCHEMA}},
              optional=("output",)),
}
UNDERSTAND_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "encore understand --json",
    **_object({**_COMMON, "source": {"type": "string"}, "seed": _SEED,
               "codes": {**_CODES, "minItems": 1, "description": "the audio's 5 Hz codes the planner read"},
               **_DESCRIBED}, optional=("output",)),
}
CODES_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "encore codes --json",
    **_object({**_COMMON, "source": {"type": "string"}, "seconds": {"type": "number", "exclusiveMinimum": 0},
               "codes": {**_CODES, "minItems": 1, "description": "the audio's 5 Hz codes (5 per second)"},
               "tokens": {"type": "string", "description": "the codes as <|audio_code_N|> text"}},
              optional=("output",)),
}
CREATE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "encore create --json",
    **_object({**_COMMON, "seed": _SEED, **_DESCRIBED, "instrumental": {"type": "boolean"}}, optional=("output",)),
}
FORMAT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "encore format --json",
    **_object({**_COMMON, "seed": _SEED, **_DESCRIBED}, optional=("output",)),
}
SCHEMAS: dict[str, dict[str, Any]] = {"plan": PLAN_SCHEMA, "understand": UNDERSTAND_SCHEMA, "codes": CODES_SCHEMA,
                                      "create": CREATE_SCHEMA, "format": FORMAT_SCHEMA}
"""Command name → schema of its `--json` output."""
