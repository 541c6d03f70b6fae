"""Task specs validate their fields and name them in `InvalidRequest`."""

from __future__ import annotations

import dataclasses

import pytest

from encore.errors import InvalidRequest
from encore.tasks.spec import TRACK_NAMES, Complete, Cover, Extend, Extract, Lego, Repaint, Text2Music


def test_official_track_list() -> None:
    assert TRACK_NAMES == (
        "woodwinds", "brass", "fx", "synth", "strings", "percussion",
        "keyboard", "guitar", "bass", "drums", "backing_vocals", "vocals",
    )  # fmt: skip


def test_valid_specs_construct_and_are_frozen() -> None:
    specs = [
        Text2Music(),
        Cover(source="a.wav", cover_strength=0.4),
        Repaint(source="a.wav", start_s=-5.0, end_s=3.0),
        Repaint(source="a.wav", start_s=10.0, end_s=None),
        Extract(source="a.wav", track="vocals"),
        Lego(source="a.wav", track="drums", start_s=0.0, end_s=12.5),
        Complete(source="a.wav", tracks=("bass", "drums")),
        Extend(source="a.wav", seconds=20.0, side="before", context_s=10.0),
    ]
    for spec in specs:
        with pytest.raises(dataclasses.FrozenInstanceError):
            spec.source = "b.wav"  # type: ignore[misc,union-attr]


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Cover(cover_strength=1.5), "task.cover_strength"),
        (lambda: Cover(cover_strength=float("nan")), "task.cover_strength"),
        (lambda: Repaint(start_s=5.0, end_s=5.0), "task.end_s"),
        (lambda: Repaint(start_s=5.0, end_s=2.0), "task.end_s"),
        (lambda: Repaint(start_s=float("inf")), "task.start_s"),
        (lambda: Repaint(start_s=-700.0), "task.start_s"),
        (lambda: Repaint(start_s=0.0, end_s=700.0), "task.end_s"),
        (lambda: Extract(track="kazoo"), "task.track"),
        (lambda: Extract(track="Vocals"), "task.track"),
        (lambda: Lego(track="piano"), "task.track"),
        (lambda: Lego(track="bass", start_s=-1.0), "task.start_s"),
        (lambda: Lego(track="bass", start_s=3.0, end_s=1.0), "task.end_s"),
        (lambda: Complete(tracks=("bass", "tuba")), "task.tracks[1]"),
        (lambda: Complete(tracks=("bass", "bass")), "task.tracks"),
        (lambda: Extend(seconds=0.0), "task.seconds"),
        (lambda: Extend(seconds=601.0), "task.seconds"),
        (lambda: Extend(side="left"), "task.side"),  # type: ignore[arg-type]
        (lambda: Extend(context_s=0.0), "task.context_s"),
    ],
)
def test_invalid_fields_are_named(build, field: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        build()
    assert err.value.field == field


def test_request_wire_format_round_trips_tasks() -> None:
    request = pytest.importorskip("encore.pipeline.request")
    req = request.GenerationRequest(task=Extend(source="a.wav", seconds=12.0, side="before", context_s=8.0))
    back = request.request_from_dict(request.request_to_dict(req))
    assert back.task == req.task
    with pytest.raises(InvalidRequest) as err:
        request.request_from_dict({"task": {"kind": "lego", "track": "kazoo"}})
    assert err.value.field == "task.track"
