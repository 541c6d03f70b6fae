"""The wire models are generated from the request dataclasses: same fields, same defaults, and every range
published in the OpenAPI schema agrees with the dataclasses' own validation at its boundaries."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import pytest
from pydantic import ValidationError

from encore.errors import InvalidRequest
from encore.frontends.server import schemas
from encore.pipeline import request as rq

SERVER_ONLY_LIMITS = {"text.language", "planner.negative_prompt", "loras"}
"""Ceilings the server adds on top of the dataclasses (R4: every client-settable size is bounded)."""
TASK_FOR_FIELD = {"cover_strength": "cover", "seconds": "extend", "context_s": "extend"}


def _walk(cls: type, model: type, path: str = "") -> list[tuple[str, Any, Any]]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        sub = f"{path}.{f.name}" if path else f.name
        pf = model.model_fields[f.name]
        if f.default is not dataclasses.MISSING:
            out.append((sub, f.default, pf.default))
        elif dataclasses.is_dataclass(hints[f.name]):
            out += _walk(hints[f.name], type(pf.default_factory()), sub)
    return out


def test_fields_and_defaults_match_the_dataclasses() -> None:
    model = schemas.generation_request_model()
    pairs = _walk(rq.GenerationRequest, model)
    assert len(pairs) > 20
    for path, dc_default, wire_default in pairs:
        expected = list(dc_default) if isinstance(dc_default, tuple) and not path.endswith("cfg_interval") \
            else dc_default
        assert wire_default == expected, path
    for kind, cls in rq.TASK_KINDS.items():
        wire = schemas.model_for(cls, "task")
        assert set(wire.model_fields) == {"kind", *(f.name for f in dataclasses.fields(cls))}, kind
        for f in dataclasses.fields(cls):
            default = list(f.default) if isinstance(f.default, tuple) else f.default
            assert wire.model_fields[f.name].default == default, (kind, f.name)


def test_empty_body_means_dataclass_defaults() -> None:
    model = schemas.generation_request_model()
    dumped = model.model_validate({}).model_dump(mode="json")
    assert rq.request_from_dict(dumped) == rq.GenerationRequest()


def _request_with(path: str, value: Any) -> dict[str, Any]:
    base, _, leaf = path.replace("[]", "").rpartition(".")
    item = path.endswith("[]")
    name = (leaf or base).replace("[]", "")
    if path.endswith("cfg_interval[]"):
        value = [value, 1.0] if value <= 1.0 else [0.0, value]
    elif item:
        value = [value]
    data: dict[str, Any] = {}
    if not base:
        data[name] = value
        if name == "seeds":
            data["batch_size"] = 1
        return data
    if base == "loras":
        return {"loras": [{"path": "adapter", name: value}]}
    node = data.setdefault(base, {})
    if base == "task":
        node["kind"] = TASK_FOR_FIELD[name]
    node[name] = value
    return data


def _cases(limits: dict[str, Any]) -> list[tuple[Any, bool]]:
    """(value, valid) pairs at and just past each bound."""
    out = []
    for key, bound in limits.items():
        if key in ("ge", "le"):
            step = 1 if isinstance(bound, int) and not isinstance(bound, bool) else 1e-6
            out += [(bound, True), (bound - step if key == "ge" else bound + step, False)]
        elif key == "gt":
            out += [(bound, False), (bound + 1e-6, True)]
        elif key == "max_length":
            out += [("x" * bound, True), ("x" * (bound + 1), False)]
    return out


@pytest.mark.parametrize("path", sorted(p for p in schemas.CONSTRAINTS if p not in SERVER_ONLY_LIMITS))
def test_constraint_agrees_with_dataclass(path: str) -> None:
    model = schemas.generation_request_model()
    limits = schemas.CONSTRAINTS[path]
    if path in ("seeds", "diffusion.timesteps"):  # list length limits
        hi, fill = limits["max_length"], (0.5 if "timesteps" in path else 1)
        cases = [([fill] * hi, True), ([fill] * (hi + 1), False), ([], False)]
    else:
        cases = _cases(limits)
    for value, valid in cases:
        if path == "seeds":
            data: dict[str, Any] = {"seeds": value, "batch_size": min(max(len(value), 1), rq.MAX_BATCH)}
        elif path == "diffusion.timesteps":
            data = {"diffusion": {"timesteps": value}}
        else:
            data = _request_with(path, value)
        wire_ok = _accepts(model, data)
        dc_ok = _dc_accepts(data)
        assert wire_ok == valid, (path, value, "wire")
        assert dc_ok == valid, (path, value, "dataclass")


def _accepts(model: type, data: dict[str, Any]) -> bool:
    try:
        model.model_validate(data)
    except ValidationError:
        return False
    return True


def _dc_accepts(data: dict[str, Any]) -> bool:
    try:
        rq.request_from_dict(data)
    except InvalidRequest:
        return False
    return True


def test_enums_match() -> None:
    assert set(typing.get_args(schemas.SPECIAL_TYPES["text.keyscale"])) == set(rq.VALID_KEYSCALES)
    assert set(typing.get_args(schemas.SPECIAL_TYPES["text.timesignature"])) == set(rq.VALID_TIME_SIGNATURES)


def test_audio_inputs_are_upload_ids() -> None:
    model = schemas.generation_request_model()
    for bad in ("/etc/passwd", "../x.wav", "C:\\a.wav", "up-../../x"):
        assert not _accepts(model, {"reference_audio": bad})
        assert not _accepts(model, {"task": {"kind": "cover", "source": bad}})
    ok = "up-" + "ab" * 16
    assert _accepts(model, {"reference_audio": ok, "task": {"kind": "repaint", "source": ok}})
    assert schemas.audio_field_paths({"reference_audio": ok, "task": {"source": ok}}) == [
        ("reference_audio", ok), ("task.source", ok)]


def test_nan_and_bool_refused() -> None:
    model = schemas.generation_request_model()
    assert not _accepts(model, {"text": {"duration_s": float("nan")}})
    assert not _accepts(model, {"text": {"bpm": True}})
    assert not _accepts(model, {"batch_size": 2.0})
    assert not _accepts(model, {"text": None})
