"""Pydantic wire models for our REST API, generated from the `encore.pipeline.request` dataclasses.

The request model is built by walking the dataclasses, so every field, type and default exists once; the numeric
ranges shown in the OpenAPI document come from `CONSTRAINTS`, which a test checks against the dataclasses'
own validation at each boundary. Audio inputs are upload ids (never paths) and LoRAs are adapter names.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import types
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
    create_model,
)

from encore.frontends.server.loras import LORA_NAME_PATTERN
from encore.pipeline import request as rq
from encore.tasks.spec import MAX_TASK_SECONDS, TRACK_NAMES

UPLOAD_ID_PATTERN = r"^up-[0-9a-f]{32}$"
JOB_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
AUDIO_FIELD_NAMES = frozenset({"source", "reference_audio", "src_audio", "audio"})
"""String fields that name an input audio file; on the wire they carry upload ids."""
LORA_PATH_FIELD = "loras.path"
MAX_LORAS = 4

UploadId = Annotated[StrictStr, Field(pattern=UPLOAD_ID_PATTERN, description="An id returned by POST /v1/uploads.")]
LoraName = Annotated[StrictStr, Field(pattern=LORA_NAME_PATTERN,
                                      description="Name of an adapter in the server's LoRA folder.")]

# Dotted path (list items as "[]") -> pydantic Field constraints. Checked against the dataclasses by a test.
CONSTRAINTS: dict[str, dict[str, Any]] = {
    "text.caption": {"max_length": 4096},
    "text.lyrics": {"max_length": 16384},
    "text.language": {"max_length": 16},
    "text.bpm": {"ge": rq.BPM_RANGE[0], "le": rq.BPM_RANGE[1]},
    "text.duration_s": {"ge": rq.DURATION_RANGE_S[0], "le": rq.DURATION_RANGE_S[1]},
    "diffusion.num_steps": {"ge": 1, "le": rq.MAX_STEPS},
    "diffusion.shift": {"ge": 1.0, "le": 5.0},
    "diffusion.guidance_scale": {"ge": 1.0, "le": 30.0},
    "diffusion.cfg_interval[]": {"ge": 0.0, "le": 1.0},
    "diffusion.timesteps": {"min_length": 1, "max_length": 20},
    "diffusion.timesteps[]": {"ge": 0.0, "le": 1.0},
    "planner.temperature": {"ge": 0.0, "le": 5.0},
    "planner.cfg_scale": {"ge": 1.0, "le": 10.0},
    "planner.top_k": {"ge": 1},
    "planner.top_p": {"gt": 0.0, "le": 1.0},
    "planner.repetition_penalty": {"ge": 0.5, "le": 3.0},
    "planner.negative_prompt": {"max_length": 4096},
    "output.target_lufs": {"ge": -40.0, "le": 0.0},
    "output.true_peak_db": {"ge": -12.0, "le": 0.0},
    "batch_size": {"ge": 1, "le": rq.MAX_BATCH},
    "seeds": {"min_length": 1, "max_length": rq.MAX_BATCH},
    "seeds[]": {"ge": 0, "le": rq.MAX_SEED},
    "loras": {"max_length": MAX_LORAS},
    "loras.scale": {"ge": 0.0, "le": 2.0},
    "task.cover_strength": {"ge": 0.0, "le": 1.0},
    "task.seconds": {"gt": 0.0, "le": MAX_TASK_SECONDS},
    "task.context_s": {"gt": 0.0},
}
SPECIAL_TYPES: dict[str, Any] = {
    "text.keyscale": Literal[tuple(sorted(rq.VALID_KEYSCALES))],  # type: ignore[misc]
    "text.timesignature": Literal[rq.VALID_TIME_SIGNATURES],  # type: ignore[misc]
    "task.track": Literal[TRACK_NAMES],  # type: ignore[misc]
    "task.tracks[]": Literal[TRACK_NAMES],  # type: ignore[misc]
}

KeyScale = SPECIAL_TYPES["text.keyscale"]
TimeSignature = SPECIAL_TYPES["text.timesignature"]
_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)


def _strip_index(path: str) -> str:
    return path.replace("[]", "")


def _scalar(tp: Any, path: str) -> Any:
    name = path.rsplit(".", 1)[-1]
    if path in SPECIAL_TYPES:
        return SPECIAL_TYPES[path]
    if tp is str and name in AUDIO_FIELD_NAMES:
        return UploadId
    if tp is str and _strip_index(path) == LORA_PATH_FIELD:
        return LoraName
    base = {bool: StrictBool, int: StrictInt, float: StrictFloat, str: StrictStr}.get(tp)
    if base is None:
        return tp
    limits = CONSTRAINTS.get(path)
    return Annotated[base, Field(**limits)] if limits else base


def _annotation(tp: Any, path: str) -> Any:
    """Pydantic annotation for a dataclass field type at dotted `path`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if non_none and all(a in rq.TASK_KINDS.values() for a in non_none):
            inner: Any = task_union()
        elif len(non_none) == 1:
            inner = _annotation(non_none[0], path)
        else:
            inner = Union[tuple(_annotation(a, path) for a in non_none)]  # type: ignore[valid-type]  # noqa: UP007
        return inner | None if type(None) in args else inner
    if origin is Literal:
        return tp
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            item = _annotation(args[0], f"{path}[]")
            limits = CONSTRAINTS.get(path)
            lst = list[item]  # type: ignore[valid-type]
            return Annotated[lst, Field(**limits)] if limits else lst
        return tuple[tuple(_annotation(a, f"{path}[]") for a in args)]  # type: ignore[misc]
    if dataclasses.is_dataclass(tp):
        if tp in rq.TASK_KINDS.values():
            return task_union()
        return model_for(tp, path)
    return _scalar(tp, path)


def _default(f: dataclasses.Field[Any]) -> Any:
    value = f.default
    return list(value) if isinstance(value, tuple) and f.name != "cfg_interval" else value


def _factory_for(tp: Any, path: str) -> Any:
    """A pydantic default factory matching a dataclass field's default_factory (sub-objects, task, tuples)."""
    if dataclasses.is_dataclass(tp):
        return lambda: model_for(tp, path)()
    if typing.get_origin(tp) in (Union, types.UnionType):  # the task union defaults to text2music
        return lambda: model_for(rq.TASK_KINDS["text2music"], "task")()
    return list


@functools.cache
def model_for(cls: type, path: str = "") -> type[BaseModel]:
    """A pydantic model mirroring dataclass `cls` (field names, types, defaults, docs)."""
    hints = typing.get_type_hints(cls, include_extras=False)
    docs = _field_docs(cls)
    fields: dict[str, Any] = {}
    if cls in rq.TASK_KINDS.values():
        kind = next(k for k, v in rq.TASK_KINDS.items() if v is cls)
        # Only text2music may omit its tag, so that each task body matches exactly one member of the union.
        tag_default = kind if kind == "text2music" else ...
        fields["kind"] = (Literal[kind], Field(default=tag_default, description="Task type tag."))  # type: ignore[valid-type]
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        sub = f"{path}.{f.name}" if path else f.name
        ann = _annotation(hints[f.name], _strip_index(sub) if path.endswith("[]") else sub)
        if f.default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
            # An omitted sub-object takes the dataclass default (request_from_dict builds it); null is refused.
            factory = _factory_for(hints[f.name], sub)
            fields[f.name] = (ann, Field(default_factory=factory, description=docs.get(f.name)))
            continue
        default = ... if f.default is dataclasses.MISSING else _default(f)
        fields[f.name] = (ann, Field(default=default, description=docs.get(f.name)))
    return create_model(f"{cls.__name__}Body", __config__=_CONFIG, __doc__=(cls.__doc__ or "").strip() or None,
                        **fields)


@functools.cache
def task_union() -> Any:
    """Discriminated union of the task models on ``kind`` (absent kind = text2music, as in the dataclasses)."""
    members = tuple(Annotated[model_for(cls, "task"), Tag(kind)] for kind, cls in rq.TASK_KINDS.items())

    def pick(value: Any) -> str | None:
        if isinstance(value, dict):
            return str(value.get("kind", "text2music"))
        return getattr(value, "kind", None)

    return Annotated[Union[members], Discriminator(pick)]  # type: ignore[valid-type]  # noqa: UP007


def _field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal right after each field), as the CLI uses for help."""
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for prev, node in itertools.pairwise(body):
        if (isinstance(prev, ast.AnnAssign) and isinstance(prev.target, ast.Name) and isinstance(node, ast.Expr)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            docs[prev.target.id] = " ".join(node.value.value.split())
    return docs


@functools.cache
def generation_request_model() -> type[BaseModel]:
    """The wire model of `GenerationRequest`."""
    return model_for(rq.GenerationRequest, "")


def audio_field_paths(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted path, value) of every audio reference in a request dict (the upload ids to resolve)."""
    out: list[tuple[str, str]] = []
    if isinstance(data, dict):
        for key, value in data.items():
            path = f"{prefix}.{key}" if prefix else key
            if key in AUDIO_FIELD_NAMES and isinstance(value, str):
                out.append((path, value))
            else:
                out.extend(audio_field_paths(value, path))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            out.extend(audio_field_paths(value, f"{prefix}[{i}]"))
    return out


# ---------------------------------------------------------------------------------------------- job bodies
class GenerateJob(BaseModel):
    """Generate music for any task."""

    model_config = _CONFIG
    mode: Literal["generate"] = "generate"
    request: generation_request_model()  # type: ignore[valid-type]


class FormatJob(BaseModel):
    """Planner: rewrite a caption/lyrics pair and fill metas (official /format_input)."""

    model_config = _CONFIG
    mode: Literal["format"]
    caption: Annotated[StrictStr, Field(max_length=4096)] = ""
    lyrics: Annotated[StrictStr, Field(max_length=16384)] = ""
    bpm: Annotated[StrictInt, Field(ge=rq.BPM_RANGE[0], le=rq.BPM_RANGE[1])] | None = None
    keyscale: KeyScale | None = None  # type: ignore[valid-type]
    timesignature: TimeSignature | None = None  # type: ignore[valid-type]
    duration_s: Annotated[StrictFloat, Field(ge=rq.DURATION_RANGE_S[0], le=rq.DURATION_RANGE_S[1])] | None = None
    language: Annotated[StrictStr, Field(max_length=16)] | None = None
    temperature: Annotated[StrictFloat, Field(ge=0.0, le=5.0)] = 0.85


class SampleJob(BaseModel):
    """Planner: write a whole song description (caption, lyrics, metas) from one sentence."""

    model_config = _CONFIG
    mode: Literal["sample"]
    query: Annotated[StrictStr, Field(max_length=2048)] = ""
    instrumental: StrictBool = False
    language: Annotated[StrictStr, Field(max_length=16)] | None = None
    temperature: Annotated[StrictFloat, Field(ge=0.0, le=5.0)] = 0.85


class UnderstandJob(BaseModel):
    """Planner: describe an uploaded song (caption, lyrics, metas)."""

    model_config = _CONFIG
    mode: Literal["understand"]
    audio: UploadId
    temperature: Annotated[StrictFloat, Field(ge=0.0, le=5.0)] | None = None
    """LM sampling temperature (default: understand's own 0.3, as `encore understand`)."""


class CodesJob(BaseModel):
    """An uploaded song's 5 Hz audio codes (no planner needed); a generation's `audio_codes` renders them again."""

    model_config = _CONFIG
    mode: Literal["codes"]
    audio: UploadId


JobSubmission = Annotated[
    Union[  # noqa: UP007 - a tagged union of Annotated members
        Annotated[GenerateJob, Tag("generate")], Annotated[FormatJob, Tag("format")],
        Annotated[SampleJob, Tag("sample")], Annotated[UnderstandJob, Tag("understand")],
        Annotated[CodesJob, Tag("codes")],
    ],
    Discriminator(lambda v: v.get("mode", "generate") if isinstance(v, dict) else getattr(v, "mode", None)),
]


# ---------------------------------------------------------------------------------------------- responses
class ErrorBody(BaseModel):
    """Every error reply: a message (or FastAPI's list of field errors), a code and the request id."""

    detail: Any
    code: str | None = None
    request_id: str | None = None


class JobError(BaseModel):
    code: str
    message: str


class OutputInfo(BaseModel):
    index: int
    format: str
    url: str
    seconds: float | None = None
    seed: int | None = None


class JobStatus(BaseModel):
    """A job as clients see it."""

    id: str
    mode: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: float
    stage: str
    queue_position: int
    attempts: int
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    cancel_requested: bool = False
    error: JobError | None = None
    outputs: list[OutputInfo] = []
    result: dict[str, Any] | None = None
    files_expired: bool = False
    timeout_s: float | None = None
    """Generations: how long the job may run before it fails with `timeout` (set at submit from the server's
    measured speed; `docs/serving.md`, `--job-timeout-factor`)."""


class JobList(BaseModel):
    jobs: list[JobStatus]


class UploadInfo(BaseModel):
    id: str
    filename: str
    size: int
    duration_s: float
    sample_rate: int
    channels: int


class ReadyReport(BaseModel):
    ready: bool
    reasons: list[str]
    modes: list[str]
    workers: list[dict[str, Any]]


class LoraInfo(BaseModel):
    """One adapter of the server's LoRA folder; `name` is what `loras[].path` takes. Read from the adapter's
    config and safetensors header only; `None` where the adapter does not record it."""

    name: str = Field(pattern=LORA_NAME_PATTERN)
    kind: Literal["folder", "file"] = Field(description="A PEFT folder (what `encore train lora` exports) or a "
                                                        "single .safetensors file.")
    size_bytes: int = Field(ge=0, description="Weights plus config file.")
    modules: int | None = Field(None, ge=0, description="Adapted Linear modules (lora_A matrices).")
    rank: int | None = Field(None, ge=1, description="Default rank r.")
    alpha: float | None = Field(None, gt=0, description="Default lora_alpha (None: not recorded; alpha = rank).")
    target_modules: list[str] | None = Field(None, description="Targeted module names ('re:' = regex).")
    error: str | None = Field(None, description="Why the adapter looks unusable (it is listed anyway).")


class LoraList(BaseModel):
    enabled: bool = Field(description="False when the server has no LoRA folder (requests with loras get 422).")
    loras: list[LoraInfo]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text} for code, text in (
        (400, "Malformed body (invalid JSON, duplicate keys, NaN literals)."),
        (401, "Missing or invalid API key."),
        (403, "Cross-site request or Host not allowed."),
        (404, "Unknown id (or another client's)."),
        (413, "Body larger than the limit."),
        (415, "Unsupported Content-Type."),
        (422, "A field is invalid; `detail` names it."),
    )
}
SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    429: {"model": ErrorBody, "description": "Queue full or rate limited; see Retry-After."},
    503: {"model": ErrorBody, "description": "Draining, store busy, or planner not loaded; see Retry-After."},
    507: {"model": ErrorBody, "description": "No disk space for an uploaded file."},
}
WAIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    **SUBMIT_RESPONSES,
    409: {"model": ErrorBody, "description": "The job was cancelled while the request waited."},
    500: {"model": ErrorBody, "description": "The job failed; `code` gives the typed reason."},
    504: {"model": ErrorBody, "description": "The job did not finish in time (it is cancelled)."},
}
DOWNLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    409: {"model": ErrorBody, "description": "Job not succeeded."},
    410: {"model": ErrorBody, "description": "Files removed after retention."},
}
