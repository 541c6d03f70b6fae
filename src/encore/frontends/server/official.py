"""ACE-Step 1.5 compatible routes (official field names, aliases and the ``{data, code, error, timestamp, extra}``
envelope), translated onto our job service: same validation, auth and durability, and no server paths.

Differences from the official server (documented in docs/serving.md): audio path fields accept only upload ids
(or multipart files), the key is read from the header only, unknown fields and unknown task ids are errors, and
`/v1/audio?path=` takes the opaque token that `/query_result` returns.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import re
import time
import uuid
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from encore.errors import InvalidRequest
from encore.frontends.server import schemas
from encore.frontends.server.auth import strict_json_loads
from encore.frontends.server.official_loras import LoraSessions, add_lora_routes
from encore.frontends.server.schemas import (
    DOWNLOAD_RESPONSES,
    ERROR_RESPONSES,
    SUBMIT_RESPONSES,
    WAIT_RESPONSES,
)
from encore.frontends.server.service import ApiError, JobService, field_error, owner
from encore.pipeline.request import PLANNER_FIELDS, audio_codes_text, parse_audio_codes

TASK_TYPES = ("text2music", "cover", "repaint", "lego", "extract", "complete", "extend")
SRC_AUDIO_TASKS = frozenset({"cover", "repaint", "lego", "extract", "complete", "extend"})
AUDIO_TOKEN = re.compile(r"^([0-9a-f-]{36})/(\d{1,2}\.(?:flac|wav|mp3|ogg))$")
FILE_FIELDS = {"reference_audio": "reference_audio_path", "ref_audio": "reference_audio_path",
               "src_audio": "src_audio_path", "ctx_audio": "src_audio_path"}
STATUS_CODES = {"queued": 0, "running": 0, "succeeded": 1, "failed": 2, "cancelled": 2}
CHAT_FORMATS = {"mp3": "audio/mpeg", "wav": "audio/wav", "flac": "audio/flac", "ogg": "audio/ogg"}
LYRIC_TAG = re.compile(r"\[(verse|chorus|bridge|intro|outro|hook|pre-chorus|refrain)[^\]]*\]", re.IGNORECASE)
PLANNER_WAIT_S = 300.0


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.capitalize() for p in rest)


def _aliases(name: str, *extra: str) -> Any:
    names = dict.fromkeys((name, _camel(name), *extra))
    return Field(default=None, validation_alias=AliasChoices(*names))


class ReleaseTaskBody(BaseModel):
    """`/release_task` fields with the official names and aliases. Lax types (forms send strings); unknown
    fields are refused so typos are not silently ignored."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)
    prompt: Annotated[str, Field(max_length=4096)] | None = _aliases("prompt", "caption")
    lyrics: Annotated[str, Field(max_length=16384)] | None = _aliases("lyrics")
    instrumental: bool | None = _aliases("instrumental")
    thinking: bool | None = _aliases("thinking")
    sample_mode: bool | None = _aliases("sample_mode")
    sample_query: Annotated[str, Field(max_length=2048)] | None = _aliases("sample_query", "description", "desc")
    use_format: bool | None = _aliases("use_format", "format")
    model: Annotated[str, Field(max_length=200)] | None = _aliases("model", "model_name", "dit_model")
    bpm: Annotated[int, Field(ge=30, le=300)] | None = _aliases("bpm")
    key_scale: Annotated[str, Field(max_length=32)] | None = _aliases("key_scale", "keyscale", "key")
    time_signature: Annotated[str, Field(max_length=8)] | int | None = _aliases("time_signature", "timesignature")
    audio_duration: Annotated[float, Field(le=600)] | None = _aliases("audio_duration", "duration", "target_duration")
    vocal_language: Annotated[str, Field(max_length=16)] | None = _aliases("vocal_language", "language")
    inference_steps: Annotated[int, Field(ge=1, le=200)] | None = _aliases("inference_steps")
    guidance_scale: Annotated[float, Field(ge=1.0, le=30.0)] | None = _aliases("guidance_scale")
    use_random_seed: bool | None = _aliases("use_random_seed")
    seed: int | Annotated[str, Field(max_length=200)] | None = _aliases("seed")
    batch_size: Annotated[int, Field(ge=1, le=8)] | None = _aliases("batch_size")
    shift: Annotated[float, Field(ge=1.0, le=5.0)] | None = _aliases("shift")
    infer_method: Literal["ode", "sde"] | None = _aliases("infer_method")
    use_adg: bool | None = _aliases("use_adg")
    cfg_interval_start: Annotated[float, Field(ge=0.0, le=1.0)] | None = _aliases("cfg_interval_start")
    cfg_interval_end: Annotated[float, Field(ge=0.0, le=1.0)] | None = _aliases("cfg_interval_end")
    timesteps: Annotated[str, Field(max_length=400)] | list[float] | None = _aliases("timesteps")
    task_type: Literal[TASK_TYPES] | None = _aliases("task_type")  # type: ignore[valid-type]
    instruction: Annotated[str, Field(max_length=1000)] | None = _aliases("instruction")
    reference_audio_path: Annotated[str, Field(max_length=200)] | None = _aliases("reference_audio_path")
    src_audio_path: Annotated[str, Field(max_length=200)] | None = _aliases("src_audio_path")
    repainting_start: float | None = _aliases("repainting_start")
    repainting_end: float | None = _aliases("repainting_end")
    audio_cover_strength: Annotated[float, Field(ge=0.0, le=1.0)] | None = _aliases("audio_cover_strength")
    track_name: Annotated[str, Field(max_length=32)] | None = _aliases("track_name")
    complete_track_classes: list[Annotated[str, Field(max_length=32)]] | None = _aliases("complete_track_classes")
    audio_format: Literal["mp3", "wav", "flac", "ogg"] | None = _aliases("audio_format")
    use_tiled_decode: bool | None = _aliases("use_tiled_decode")
    audio_code_string: str | list[str] | None = _aliases("audio_code_string")
    lm_model_path: Annotated[str, Field(max_length=200)] | None = _aliases("lm_model_path")
    lm_backend: Literal["vllm", "pt", "mlx"] | None = _aliases("lm_backend")
    lm_temperature: Annotated[float, Field(ge=0.0, le=5.0)] | None = _aliases("lm_temperature")
    lm_cfg_scale: Annotated[float, Field(ge=1.0, le=10.0)] | None = _aliases("lm_cfg_scale")
    lm_top_k: Annotated[int, Field(ge=0)] | None = _aliases("lm_top_k")
    lm_top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = _aliases("lm_top_p")
    lm_repetition_penalty: Annotated[float, Field(ge=0.5, le=3.0)] | None = _aliases("lm_repetition_penalty")
    lm_negative_prompt: Annotated[str, Field(max_length=4096)] | None = _aliases("lm_negative_prompt")
    use_cot_caption: bool | None = _aliases("use_cot_caption", "cot_caption", "cot-caption")
    use_cot_language: bool | None = _aliases("use_cot_language", "cot_language", "cot-language")
    use_cot_metas: bool | None = _aliases("use_cot_metas")
    use_cot_lyrics: bool | None = _aliases("use_cot_lyrics")
    constrained_decoding: bool | None = _aliases("constrained_decoding", "constrained")
    constrained_decoding_debug: bool | None = _aliases("constrained_decoding_debug")
    is_format_caption: bool | None = _aliases("is_format_caption")
    allow_lm_batch: bool | None = _aliases("allow_lm_batch", "parallel_thinking")
    metas: dict[str, Any] | None = _aliases("metas", "metadata", "user_metadata")
    analysis_only: bool | None = _aliases("analysis_only")
    """No audio: the planner's metas (and caption) for `prompt` and `lyrics` (our "format" job)."""
    full_analysis_only: bool | None = _aliases("full_analysis_only")
    """No audio: the source's codes read back by the planner (our "understand" job)."""
    extract_codes_only: bool | None = _aliases("extract_codes_only")
    """No audio: the source's 5 Hz codes (our "codes" job; no planner needed)."""
    ai_token: str | None = _aliases("ai_token")
    """Accepted for old clients and ignored: the key is read from the Authorization header only."""

    @field_validator("prompt", "lyrics", "sample_query", mode="before")
    @classmethod
    def _text(cls, v: Any) -> Any:
        return v if v is None or isinstance(v, str) else _type_error("a string")


def _type_error(what: str) -> Any:
    raise ValueError(f"must be {what}")


class QueryResultBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task_id_list: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=100)] | \
        Annotated[str, Field(max_length=8000)] = Field(validation_alias=AliasChoices("task_id_list", "taskIdList"))
    ai_token: str | None = None


class FormatInputBody(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    prompt: Annotated[str, Field(max_length=4096)] = ""
    lyrics: Annotated[str, Field(max_length=16384)] = ""
    temperature: Annotated[float, Field(ge=0.0, le=5.0)] = 0.85
    param_obj: Annotated[str, Field(max_length=4000)] | dict[str, Any] = "{}"
    ai_token: str | None = None


class RandomSampleBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sample_type: Literal["simple_mode", "custom_mode"] = "simple_mode"
    ai_token: str | None = None


class AudioConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    duration: Annotated[float, Field(le=600)] | None = None
    format: Literal["mp3", "wav", "flac", "ogg"] | None = None
    bpm: Annotated[int, Field(ge=30, le=300)] | None = None
    key_scale: Annotated[str, Field(max_length=32)] | None = None
    time_signature: Annotated[str, Field(max_length=8)] | int | None = None
    vocal_language: Annotated[str, Field(max_length=16)] | None = None
    instrumental: bool | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionBody(BaseModel):
    """OpenRouter/OpenAI-style request; unknown OpenAI parameters (max_tokens, n, ...) are ignored."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)
    model: Annotated[str, Field(max_length=200)] | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=64)]
    stream: bool = False
    audio_config: AudioConfig | None = None
    temperature: Annotated[float, Field(ge=0.0, le=5.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    seed: int | Annotated[str, Field(max_length=200)] | None = None
    thinking: bool | None = None
    guidance_scale: Annotated[float, Field(ge=1.0, le=30.0)] | None = None
    batch_size: Annotated[int, Field(ge=1, le=8)] | None = None
    lyrics: Annotated[str, Field(max_length=16384)] | None = None
    sample_mode: bool | None = None
    use_format: bool | None = None
    use_cot_caption: bool | None = None
    use_cot_language: bool | None = None
    task_type: Literal[TASK_TYPES] | None = None  # type: ignore[valid-type]
    repainting_start: float | None = None
    repainting_end: float | None = None
    audio_cover_strength: Annotated[float, Field(ge=0.0, le=1.0)] | None = None


# ---------------------------------------------------------------------------------------------- mapping
def normalize_key(text: str) -> str | None:
    """Official key spellings ("C Major", "Am", "f# minor", "Bb") -> our "C major" form; "" -> None."""
    text = text.strip()
    if not text:
        return None
    m = re.match(r"^([A-Ga-g])([#b♯♭]?)\s*(m|min|minor|maj|major)?$", text, re.IGNORECASE)
    if not m:
        return text  # the dataclass rejects it with a clear message
    note, acc, mode = m.group(1).upper(), m.group(2), (m.group(3) or "major").lower()
    return f"{note}{acc} {'minor' if mode in ('m', 'min', 'minor') else 'major'}"


def parse_time_signature(value: str | int | None) -> int | None:
    """"4", "4/4", 3, "6/8" -> beats per bar; "" or None -> None."""
    if value is None or value == "":
        return None
    if isinstance(value, int):
        return value
    head = value.strip().split("/")[0]
    if not head.isdigit():
        raise field_error(("body", "time_signature"), f"expected 2, 3, 4 or 6 (or '4/4'), got {value!r}")
    return int(head)


def _parse_floats(value: str | list[float], field: str) -> list[float]:
    if isinstance(value, list):
        return value
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise field_error(("body", field), "expected comma-separated numbers") from None


def _seeds(body: ReleaseTaskBody) -> list[int] | None:
    if body.use_random_seed is not False or body.seed is None:
        return None
    raw = [body.seed] if isinstance(body.seed, int) else [s for s in body.seed.split(",") if s.strip()]
    try:
        seeds = [int(s) for s in raw]
    except ValueError:
        raise field_error(("body", "seed"), "expected an integer or comma-separated integers") from None
    return None if not seeds or all(s < 0 for s in seeds) else seeds


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def user_metas(body: ReleaseTaskBody) -> dict[str, Any]:
    """language, bpm, keyscale, timesignature and duration_s the client gave, each from its own field or else
    from `metas` (under either spelling); None where neither gives one."""
    metas = body.metas or {}
    duration = body.audio_duration if body.audio_duration is not None else metas.get("duration")
    return {
        "language": body.vocal_language or metas.get("language") or metas.get("vocal_language"),
        "bpm": body.bpm if body.bpm is not None else metas.get("bpm"),
        "keyscale": normalize_key(body.key_scale or str(metas.get("keyscale") or metas.get("key_scale") or "")),
        "timesignature": parse_time_signature(body.time_signature if body.time_signature is not None
                                              else metas.get("timesignature") or metas.get("time_signature")),
        "duration_s": float(duration) if isinstance(duration, (int, float)) and duration > 0 else None,
    }


def release_to_request(body: ReleaseTaskBody, model_name: str) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Official fields -> (GenerationRequest dict, prelude, warnings). Upload ids stay in the audio fields."""
    warnings = [f"{name} is ignored by this server" for name in (
        "lm_model_path", "lm_backend", "use_tiled_decode", "constrained_decoding", "constrained_decoding_debug",
        "is_format_caption", "allow_lm_batch", "instruction") if getattr(body, name) not in (None, "")]
    if body.model not in (None, "", model_name):
        raise field_error(("body", "model"), f"unknown model {body.model!r}; see GET /v1/models")
    text = _drop_none({
        "caption": body.prompt,
        "lyrics": "[Instrumental]" if body.instrumental else (body.lyrics or None),
        **user_metas(body),
    })
    diffusion = _drop_none({
        "num_steps": body.inference_steps, "guidance_scale": body.guidance_scale, "shift": body.shift,
        "solver": body.infer_method, "guidance": "adg" if body.use_adg else None,
        "timesteps": _parse_floats(body.timesteps, "timesteps") if body.timesteps else None,
    })
    if body.cfg_interval_start is not None or body.cfg_interval_end is not None:
        diffusion["cfg_interval"] = [body.cfg_interval_start or 0.0,
                                     1.0 if body.cfg_interval_end is None else body.cfg_interval_end]
    data: dict[str, Any] = {"text": text, "diffusion": diffusion, "task": _task(body),
                            "batch_size": body.batch_size or 2, "output": {"format": body.audio_format or "mp3"}}
    if body.reference_audio_path:
        data["reference_audio"] = body.reference_audio_path
    codes = _audio_codes(body.audio_code_string)
    if codes is not None:
        data["audio_codes"] = list(codes)
    seeds = _seeds(body)
    if seeds is not None:
        data["seeds"] = seeds
    if body.thinking:
        fill = [f for f in PLANNER_FIELDS if not (f == "caption" and body.use_cot_caption is False)
                and not (f == "language" and body.use_cot_language is False)]
        data["planner"] = _drop_none({
            "think": True, "fill": fill, "temperature": body.lm_temperature, "cfg_scale": body.lm_cfg_scale,
            "top_k": body.lm_top_k or None, "top_p": body.lm_top_p, "repetition_penalty": body.lm_repetition_penalty,
            "negative_prompt": body.lm_negative_prompt})
    prelude: dict[str, Any] = {}
    if body.sample_mode or body.sample_query:
        prelude = {"sample_query": body.sample_query or ""}
    elif body.use_format:
        prelude = {"format": True}
    return data, prelude, warnings


ANALYSIS_FLAGS = ("extract_codes_only", "full_analysis_only", "analysis_only")


def analysis_job(body: ReleaseTaskBody) -> tuple[str, dict[str, Any]] | None:
    """(job mode, worker payload) for a `/release_task` with one of the official analysis flags, else None.

    `extract_codes_only` -> a "codes" job and `full_analysis_only` -> an "understand" job, both on the source
    audio (`src_audio_path`, an upload id); `analysis_only` -> a "format" job on `prompt` / `lyrics` and the
    given metas. The payload remembers the flag so `/query_result` answers in the official shape.
    """
    flags = [name for name in ANALYSIS_FLAGS if getattr(body, name)]
    if not flags:
        return None
    if len(flags) > 1:
        raise field_error(("body", flags[1]), f"cannot be combined with {flags[0]}")
    flag = flags[0]
    if flag != "analysis_only":
        if not body.src_audio_path:
            raise field_error(("body", "src_audio_path"), f"{flag} needs the source audio (multipart field "
                              "src_audio, or an upload id)")
        # understand samples at its own settings (temperature 0.3, as upstream's analysis), so lm_* are not passed
        mode = "codes" if flag == "extract_codes_only" else "understand"
        args: dict[str, Any] = {"audio": body.src_audio_path}
        return mode, {"args": args, "uploads": {"audio": body.src_audio_path}, "official": flag}
    args = _drop_none({"caption": body.prompt or "", "lyrics": body.lyrics or "",
                       "temperature": body.lm_temperature, **user_metas(body)})
    try:  # the same checks as a /v1 format job (ranges, key names)
        schemas.FormatJob.model_validate({"mode": "format", **args}, strict=False)
    except ValidationError as exc:
        raise _validation_error(exc) from None
    return "format", {"args": args, "uploads": {}, "official": flag}


def analysis_result(flag: str, job: Any) -> dict[str, Any]:
    """The official result entry of a finished analysis job (`flag` as in `ANALYSIS_FLAGS`)."""
    result = job.result or {}
    if flag == "extract_codes_only":
        return {"status_message": "Audio Codes Extraction Success", "audio_codes": audio_codes_text(result["codes"]),
                "audio_paths": [], "metas": {}}
    plan = dict(result.get("plan") or {})
    codes = plan.pop("codes", None)
    metas = {"bpm": plan.get("bpm"), "keyscale": plan.get("keyscale") or "", "duration": plan.get("duration_s"),
             "timesignature": "" if plan.get("timesignature") is None else str(plan["timesignature"]),
             "caption": plan.get("caption", ""), "lyrics": plan.get("lyrics", ""),
             "language": plan.get("language") or "unknown"}
    if flag == "full_analysis_only":
        return {"status_message": "Full Hardware Analysis Success", "bpm": metas["bpm"],
                "keyscale": metas["keyscale"], "timesignature": metas["timesignature"],
                "duration": metas["duration"], "genre": "", "prompt": metas["caption"], "lyrics": metas["lyrics"],
                "language": metas["language"], "metas": metas, "audio_codes": audio_codes_text(codes or []),
                "audio_paths": []}
    request_lyrics = (job.payload.get("args") or {}).get("lyrics", "")
    return {"status_message": "Success", "generation_info": "Analysis Only Mode Complete", "metas": metas,
            "bpm": metas["bpm"], "keyscale": metas["keyscale"], "duration": metas["duration"],
            "prompt": metas["caption"], "lyrics": request_lyrics, "audio_paths": [],
            "dit_model": "None (Analysis Only)"}


def _audio_codes(value: str | list[str] | None) -> tuple[int, ...] | None:
    """`audio_code_string`: one code text, or a list of them (per batch item officially; one shared here)."""
    texts = [value] if isinstance(value, str) else [v for v in value or () if v]
    texts = [t for t in texts if t.strip()]
    if not texts:
        return None
    if len(set(texts)) > 1:
        raise field_error(("body", "audio_code_string"), "different codes per batch item are not supported; give "
                                                         "one code string for the batch")  # fmt: skip
    try:
        return parse_audio_codes(texts[0], "audio_code_string")
    except InvalidRequest as exc:
        raise field_error(("body", "audio_code_string"), exc.message) from None


def _task(body: ReleaseTaskBody) -> dict[str, Any]:
    kind = body.task_type or "text2music"
    task: dict[str, Any] = {"kind": kind}
    if kind == "text2music":
        return task
    if body.src_audio_path:
        task["source"] = body.src_audio_path
    if kind == "cover" and body.audio_cover_strength is not None:
        task["cover_strength"] = body.audio_cover_strength
    if kind in ("repaint", "lego"):
        if body.repainting_start is not None:
            task["start_s"] = body.repainting_start
        end = body.repainting_end
        if end is not None and end >= 0:
            task["end_s"] = end
    if kind in ("lego", "extract") and body.track_name:
        task["track"] = body.track_name
    if kind == "complete" and body.complete_track_classes:
        task["tracks"] = body.complete_track_classes
    return task


def _check_audio_ids(body: ReleaseTaskBody) -> None:
    for name in ("reference_audio_path", "src_audio_path"):
        value = getattr(body, name)
        if value and not re.match(schemas.UPLOAD_ID_PATTERN, value):
            raise field_error(("body", name), "server file paths are not accepted: upload the file (multipart field "
                              f"{'reference_audio' if name.startswith('ref') else 'src_audio'} or POST /v1/uploads) "
                              "and pass its upload id", code="path_not_allowed")


def _validation_error(exc: ValidationError) -> ApiError:
    detail = [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    return ApiError(422, "invalid_request", detail)


def official_envelope(data: Any, code: int = 200, error: str | None = None) -> dict[str, Any]:
    return {"data": data, "code": code, "error": error, "timestamp": int(time.time() * 1000), "extra": None}


# ---------------------------------------------------------------------------------------------- views
def _metas(job_result: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    text = _resolved_text(job_result, request)
    return {"bpm": text.get("bpm"), "duration": text.get("duration_s"), "genres": "",
            "keyscale": text.get("keyscale") or "", "timesignature": str(text.get("timesignature") or "")}


def _resolved_text(job_result: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """The text fields after the pipeline resolved defaults (params["request"]["text"]), else as submitted."""
    params = job_result.get("params") or {}
    resolved = params.get("request", params) if isinstance(params, dict) else {}
    text = resolved.get("text") if isinstance(resolved, dict) else None
    return text if isinstance(text, dict) else dict(request.get("text", {}))


def query_item(service: JobService, job: Any | None, task_id: str) -> dict[str, Any]:
    """One `/query_result` entry in the official shape (status 0 queued/running, 1 ok, 2 failed)."""
    if job is None:
        return {"task_id": task_id, "status": 2, "result": "[]", "progress_text": "", "error": "task not found"}
    status = STATUS_CODES[job.state]
    item: dict[str, Any] = {"task_id": job.id, "status": status, "progress_text": job.stage,
                            "progress": round(job.progress, 4), "stage": job.stage,
                            "queue_position": service.store.queue_position(job), "error": None, "result": "[]"}
    if status == 2:
        item["error"] = job.error_message or job.error_code
    if job.state == "succeeded" and job.mode == "generate":
        result = job.result or {}
        request = job.payload.get("request", {})
        text = request.get("text", {})
        seeds = ",".join(str(s) for s in result.get("seeds", []))
        files = []
        for out in result.get("outputs", []):
            files.append({
                "file": "/v1/audio?path=" + quote(f"{job.id}/{out['file']}", safe=""), "wave": "", "status": 1,
                "create_time": int(job.created_at), "env": service.settings.env_label,
                "prompt": text.get("caption", ""), "lyrics": text.get("lyrics", ""),
                "metas": _metas(result, request), "generation_info": f"{len(result.get('outputs', []))} file(s), "
                f"{(job.finished_at or 0) - (job.started_at or 0):.1f} s", "seed_value": seeds,
                "lm_model": "planner" if request.get("planner") else "", "dit_model": service.settings.model_name,
                "progress": 1.0})
        item["result"] = json.dumps(files)
    elif job.state == "succeeded" and isinstance(job.payload, dict) and job.payload.get("official") in ANALYSIS_FLAGS:
        item["result"] = json.dumps([analysis_result(job.payload["official"], job)])
    elif job.state == "succeeded":
        item["result"] = json.dumps([{"status": 1, "plan": (job.result or {}).get("plan")}])
    return item


def plan_view(plan: Any) -> dict[str, Any]:
    """Planner output -> the official format_input / create_random_sample data fields."""
    plan = plan if isinstance(plan, dict) else {}
    duration = plan.get("duration_s", plan.get("duration"))
    ts = plan.get("timesignature", plan.get("time_signature"))
    return {"caption": plan.get("caption", ""), "lyrics": plan.get("lyrics", ""), "bpm": plan.get("bpm"),
            "key_scale": plan.get("keyscale", plan.get("key_scale", "")) or "",
            "time_signature": "" if ts is None else str(ts), "duration": duration,
            "vocal_language": plan.get("language", plan.get("vocal_language", "")) or ""}


# ---------------------------------------------------------------------------------------------- routes
def build_official_router(service: JobService) -> APIRouter:
    """Routes with the official paths and envelopes (the caller adds the auth dependency for the docs)."""
    router = APIRouter(tags=["official-compatible"])
    sessions = LoraSessions()
    add_lora_routes(router, service, sessions, official_envelope)
    @router.post("/release_task", responses=SUBMIT_RESPONSES, summary="Submit a generation (official fields).",
                 openapi_extra={"requestBody": {"required": True, "content": {
                     "application/json": {"schema": ReleaseTaskBody.model_json_schema(by_alias=False)},
                     "multipart/form-data": {"schema": {"type": "object"}}}}})
    async def release_task(request: Request) -> dict[str, Any]:
        own = owner(request)
        service.check_accepting(own if own != "local" else (request.client.host if request.client else "?"))
        raw = await _release_fields(service, request, own)
        try:
            body = ReleaseTaskBody.model_validate(raw)
        except ValidationError as exc:
            raise _validation_error(exc) from None
        _check_audio_ids(body)
        analysis = analysis_job(body)
        if analysis is not None:
            mode, payload = analysis
            if mode not in await asyncio.to_thread(service.available_modes):
                what = "a planner" if mode != "codes" else "a model that can tokenize audio"
                raise ApiError(503, "planner_unavailable" if mode != "codes" else "not_ready",
                               f"{payload['official']} needs {what}, which this server has not loaded",
                               {"Retry-After": str(service.retry_after())})
            job, _ = await asyncio.to_thread(service.submit, own, mode, payload,
                                             request.headers.get("idempotency-key"), raw)
            queue_position = await asyncio.to_thread(service.store.queue_position, job)
            return official_envelope({"task_id": job.id, "status": "queued", "queue_position": queue_position})
        data, prelude, warnings = release_to_request(body, service.settings.model_name)
        loaded = sessions.request_loras(own)  # what this client's /v1/lora/* calls set up
        if loaded:
            data["loras"] = loaded
        payload = await asyncio.to_thread(service.validate_generation, data, own, ("body",))
        payload.update(prelude=prelude, official=True)
        job, _ = await asyncio.to_thread(service.submit, own, "generate", payload,
                                         request.headers.get("idempotency-key"), raw)
        queue_position = await asyncio.to_thread(service.store.queue_position, job)
        out = official_envelope({"task_id": job.id, "status": "queued", "queue_position": queue_position})
        out["extra"] = {"warnings": warnings} if warnings else None
        return out

    @router.post("/query_result", responses=ERROR_RESPONSES, summary="Status of up to 100 tasks (official shape).")
    def query_result(request: Request, body: QueryResultBody) -> dict[str, Any]:
        ids = body.task_id_list
        if isinstance(ids, str):
            try:
                ids = json.loads(ids) if ids.strip().startswith("[") else [i for i in ids.split(",") if i.strip()]
            except json.JSONDecodeError:
                raise field_error(("body", "task_id_list"), "expected a JSON array of ids") from None
        if not isinstance(ids, list) or len(ids) > 100 or not all(isinstance(i, str) for i in ids):
            raise field_error(("body", "task_id_list"), "expected at most 100 task ids")
        own = owner(request)
        items = []
        for tid in ids:
            job = service.store.get(tid.strip(), own) if re.match(schemas.JOB_ID_PATTERN, tid.strip()) else None
            items.append(query_item(service, job, tid))
        return official_envelope(items)

    @router.post("/format_input", responses=WAIT_RESPONSES, summary="Planner: format caption and lyrics.")
    async def format_input(request: Request, body: FormatInputBody) -> dict[str, Any]:
        params = body.param_obj
        if isinstance(params, str):
            try:
                params = strict_json_loads(params.encode() or b"{}")
            except ValueError as exc:
                raise field_error(("body", "param_obj"), str(exc)) from None
        if not isinstance(params, dict):
            raise field_error(("body", "param_obj"), "expected a JSON object")
        args = _drop_none({"caption": body.prompt, "lyrics": body.lyrics, "temperature": body.temperature,
                           "bpm": params.get("bpm"), "duration_s": params.get("duration"),
                           "keyscale": normalize_key(str(params.get("key") or params.get("key_scale") or "")),
                           "timesignature": parse_time_signature(params.get("time_signature")),
                           "language": params.get("language")})
        return official_envelope(plan_view(await _run_planner_job(service, request, "format", args)))

    @router.post("/create_random_sample", responses=WAIT_RESPONSES, summary="Planner: a random song idea.")
    async def create_random_sample(request: Request, body: RandomSampleBody) -> dict[str, Any]:
        args = {"query": "" if body.sample_type == "simple_mode" else "a complete song with lyrics",
                "instrumental": False}
        return official_envelope(plan_view(await _run_planner_job(service, request, "sample", args)))

    @router.get("/v1/models", responses=ERROR_RESPONSES, summary="Served models (official envelope).")
    def models() -> dict[str, Any]:
        name = service.settings.model_name
        return official_envelope({"models": [{"name": name, "is_default": True}], "default_model": name})

    @router.get("/v1/stats", responses=ERROR_RESPONSES, summary="Queue statistics (official envelope).")
    def stats() -> dict[str, Any]:
        counts = service.store.counts()
        avg = service.store.avg_job_seconds()
        return official_envelope({"jobs": {"total": sum(counts.values()), **counts}, "queue_size": counts["queued"],
                                  "queue_maxsize": service.settings.queue_max,
                                  "avg_job_seconds": round(avg, 3) if avg is not None else None})

    @router.get("/v1/audio", response_class=FileResponse,
                responses={**DOWNLOAD_RESPONSES, 200: {"content": {"audio/*": {}}, "description": "The file."}},
                summary="Download by the token that /query_result returns (no server paths).")
    def audio(request: Request, path: Annotated[str, Query(max_length=100)]) -> FileResponse:
        m = AUDIO_TOKEN.match(path)
        if not m:
            raise ApiError(404, "not_found", "no such file")
        job = service.get_job(m.group(1), owner(request))
        index = int(m.group(2).split(".")[0])
        file, media = service.output_file(job, index)
        if file.name != m.group(2):
            raise ApiError(404, "not_found", "no such file")
        return FileResponse(file, media_type=media, filename=f"{job.id}-{file.name}")

    @router.post("/v1/chat/completions", responses={**WAIT_RESPONSES, 200: {
                     "content": {"text/event-stream": {}},
                     "description": "The completion as JSON, or with `stream: true` as server-sent chunk events."}},
                 summary="OpenRouter-style music generation (non-streaming or SSE).")
    async def chat_completions(request: Request, body: ChatCompletionBody) -> Any:
        return await _chat(service, request, body)

    return router


async def _release_fields(service: JobService, request: Request, own: str) -> dict[str, Any]:
    """The raw field dict of a JSON or multipart `/release_task`; uploaded files become upload ids."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "multipart/form-data":
        raw = strict_json_loads(await request.body() or b"{}")
        if not isinstance(raw, dict):
            raise field_error(("body",), "expected a JSON object")
        return raw
    form = await request.form(max_files=2, max_fields=80, max_part_size=64 * 1024)
    try:
        fields: dict[str, Any] = {}
        for key, value in form.multi_items():
            if key in fields:
                raise field_error(("body", key), "given more than once")
            if isinstance(value, str):
                fields[key] = value
                continue
            target = FILE_FIELDS.get(key)
            if target is None:
                raise field_error(("body", key), "unexpected file field; use reference_audio or src_audio")
            upload = await asyncio.to_thread(service.store_upload, own, value.file, value.filename)
            fields[target] = upload.id
        for key in ("complete_track_classes", "metas", "metadata", "user_metadata"):
            if isinstance(fields.get(key), str):
                try:
                    fields[key] = strict_json_loads(fields[key].encode())
                except ValueError as exc:
                    raise field_error(("body", key), str(exc)) from None
        return fields
    finally:
        await form.close()


async def _run_planner_job(service: JobService, request: Request, mode: str, args: dict[str, Any]) -> Any:
    """Submit a planner job, wait for it (bounded) and return its plan; 503 when no planner is loaded."""
    own = owner(request)
    service.check_accepting(own)
    if mode not in await asyncio.to_thread(service.available_modes):
        raise ApiError(503, "planner_unavailable", "planner not loaded on this server",
                       {"Retry-After": str(service.retry_after())})
    job, _ = await asyncio.to_thread(service.submit, own, mode, {"args": args, "uploads": {}}, None,
                                     {"mode": mode, **args})
    done = await service.wait_terminal(job.id, own, min(PLANNER_WAIT_S, service.settings.job_timeout_s))
    if done is None:
        await asyncio.to_thread(service.store.cancel, job.id, own)
        raise ApiError(504, "timeout", "the planner did not answer in time")
    return _job_outcome(done)["plan"]


def _job_outcome(job: Any) -> dict[str, Any]:
    """The result of a finished job, or the matching HTTP error."""
    if job.state == "succeeded":
        return job.result or {}
    if job.error_code == "planner_unavailable":
        raise ApiError(503, "planner_unavailable", job.error_message or "planner not loaded")
    if job.state == "cancelled":
        raise ApiError(409, "cancelled", "the job was cancelled")
    status = 422 if job.error_code in ("invalid_request", "invalid_audio") else 500
    raise ApiError(status, job.error_code or "internal", job.error_message or "the job failed")


# ---------------------------------------------------------------------------------------------- chat
def _chat_inputs(service: JobService, body: ChatCompletionBody, own: str) -> tuple[str, str, list[str]]:
    """(prompt text, lyrics, upload ids) from the messages: `<prompt>`/`<lyrics>` tags, else heuristics."""
    texts, uploads = [], []
    for msg in body.messages:
        if msg.role != "user" or msg.content is None:
            continue
        parts = [{"type": "text", "text": msg.content}] if isinstance(msg.content, str) else msg.content
        for part in parts:
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif part.get("type") == "input_audio":
                if len(uploads) >= 2:
                    raise field_error(("body", "messages"), "at most two input_audio parts are accepted")
                uploads.append(_chat_audio(service, part.get("input_audio"), own))
    text = "\n".join(texts).strip()
    prompt_tag = re.search(r"<prompt>(.*?)</prompt>", text, re.DOTALL)
    lyrics_tag = re.search(r"<lyrics>(.*?)</lyrics>", text, re.DOTALL)
    if prompt_tag or lyrics_tag:
        return (prompt_tag.group(1).strip() if prompt_tag else "",
                lyrics_tag.group(1).strip() if lyrics_tag else "", uploads)
    if body.lyrics:
        return text, body.lyrics, uploads
    if LYRIC_TAG.search(text):
        return "", text, uploads
    return text, "", uploads


def _chat_audio(service: JobService, audio: Any, own: str) -> str:
    if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
        raise field_error(("body", "messages"), "input_audio needs {data: base64, format}")
    data = audio["data"]
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise field_error(("body", "messages"), "input_audio.data is not valid base64") from None
    return service.store_upload(own, io.BytesIO(raw), f"input.{audio.get('format', 'audio')}").id


async def _chat(service: JobService, request: Request, body: ChatCompletionBody) -> Any:
    own = owner(request)
    service.check_accepting(own)
    prompt, lyrics, uploads = await asyncio.to_thread(_chat_inputs, service, body, own)
    cfg = body.audio_config or AudioConfig()
    task_type = body.task_type or "text2music"
    fields: dict[str, Any] = _drop_none({
        "prompt": "" if body.sample_mode else prompt, "lyrics": lyrics or None, "thinking": body.thinking,
        "sample_mode": body.sample_mode, "sample_query": prompt if body.sample_mode else None,
        "use_format": body.use_format, "use_cot_caption": body.use_cot_caption,
        "use_cot_language": body.use_cot_language, "lm_temperature": body.temperature, "lm_top_p": body.top_p,
        "lm_top_k": body.top_k, "seed": body.seed, "use_random_seed": False if body.seed is not None else None,
        "guidance_scale": body.guidance_scale, "batch_size": body.batch_size or 1, "task_type": task_type,
        "repainting_start": body.repainting_start, "repainting_end": body.repainting_end,
        "audio_cover_strength": body.audio_cover_strength, "audio_duration": cfg.duration,
        "audio_format": cfg.format or "mp3", "bpm": cfg.bpm, "key_scale": cfg.key_scale,
        "time_signature": cfg.time_signature, "vocal_language": cfg.vocal_language, "instrumental": cfg.instrumental,
    })
    if uploads and task_type in SRC_AUDIO_TASKS:
        fields["src_audio_path"] = uploads[0]
        if len(uploads) > 1:
            fields["reference_audio_path"] = uploads[1]
    elif uploads:
        fields["reference_audio_path"] = uploads[0]
    if not (prompt or lyrics or body.sample_mode or uploads):
        raise field_error(("body", "messages"), "no prompt, lyrics, sample query or input audio found")
    try:
        release = ReleaseTaskBody.model_validate(fields)
    except ValidationError as exc:
        raise _validation_error(exc) from None
    data, prelude, _ = release_to_request(release, service.settings.model_name)
    payload = await asyncio.to_thread(service.validate_generation, data, own, ("body",))
    payload.update(prelude=prelude, official=True)
    job, _ = await asyncio.to_thread(service.submit, own, "generate", payload, request.headers.get("idempotency-key"),
                                     {"chat": body.model_dump(mode="json"), "uploads": uploads})
    model_id = body.model or f"acestep/{service.settings.model_name}"
    if body.stream:
        return StreamingResponse(_chat_stream(service, job.id, own, model_id), media_type="text/event-stream")
    done = await service.wait_terminal(job.id, own, service.settings.job_timeout_s)
    if done is None:
        await asyncio.to_thread(service.store.cancel, job.id, own)
        raise ApiError(504, "timeout", "generation timed out")
    result = _job_outcome(done)
    audio = await asyncio.to_thread(_audio_urls, service, done)
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": model_id, "choices": [{"index": 0, "finish_reason": "stop", "message": {
                "role": "assistant", "content": _chat_content(done, result), "audio": audio}}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}


def _audio_urls(service: JobService, job: Any) -> list[dict[str, Any]]:
    out = []
    for item in (job.result or {}).get("outputs", []):
        path, media = service.output_file(job, item["index"])
        data = base64.b64encode(path.read_bytes()).decode()
        out.append({"type": "audio_url", "audio_url": {"url": f"data:{media};base64,{data}"}})
    return out


def _chat_content(job: Any, result: dict[str, Any]) -> str:
    text = job.payload.get("request", {}).get("text", {})
    resolved = _resolved_text(result, job.payload.get("request", {}))
    lines = ["## Metadata", f"**Caption:** {resolved.get('caption') or text.get('caption', '')}"]
    for label, key in (("BPM", "bpm"), ("Duration", "duration_s"), ("Key", "keyscale"),
                       ("Time Signature", "timesignature"), ("Language", "language")):
        if resolved.get(key) not in (None, ""):
            lines.append(f"**{label}:** {resolved[key]}")
    lines += ["", "## Lyrics", str(resolved.get("lyrics") or text.get("lyrics", ""))]
    return "\n".join(lines)


async def _chat_stream(service: JobService, job_id: str, own: str, model_id: str) -> Any:
    """OpenAI-style chunks: role, '.' keep-alives every 2 s, content, audio, finish, [DONE]."""
    cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        doc = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_id,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(doc)}\n\n"

    yield chunk({"role": "assistant", "content": "Generating music"})
    deadline = time.monotonic() + service.settings.job_timeout_s
    done = None
    while time.monotonic() < deadline:
        done = await service.wait_terminal(job_id, own, 2.0)
        if done is not None:
            break
        yield chunk({"content": "."})
    if done is None:
        await asyncio.to_thread(service.store.cancel, job_id, own)
        yield chunk({"content": "\n\nError: generation timed out"}, "error")
    else:
        try:
            result = _job_outcome(done)
            yield chunk({"content": "\n\n" + _chat_content(done, result)})
            yield chunk({"audio": await asyncio.to_thread(_audio_urls, service, done)})
            yield chunk({}, "stop")
        except ApiError as exc:
            yield chunk({"content": f"\n\nError: {exc.message}"}, "error")
    yield "data: [DONE]\n\n"
