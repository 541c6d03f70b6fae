from __future__ import annotations

import pytest

from encore.data.instruments import (
    CAPTION_WORDS,
    GM_NAMES,
    INSTRUMENT_CLASSES,
    classes_in_text,
    drum_key_class,
    program_class,
    program_name,
)
from encore.tasks.spec import TRACK_NAMES


def test_every_program_has_an_official_class_and_name():
    assert len(GM_NAMES) == 128
    assert INSTRUMENT_CLASSES == TRACK_NAMES
    assert {program_class(p) for p in range(128)} <= set(TRACK_NAMES)
    assert set(CAPTION_WORDS.values()) <= set(TRACK_NAMES)
    assert program_class(0) == "keyboard" and program_name(0) == "grand piano"
    assert program_class(33) == "bass" and program_class(40) == "strings" and program_class(56) == "brass"
    assert program_class(65) == "woodwinds" and program_class(81) == "synth" and program_class(25) == "guitar"
    with pytest.raises(ValueError):
        program_class(128)


def test_drum_keys_split_into_kit_and_hand_percussion():
    assert {drum_key_class(k) for k in (35, 36, 38, 42, 46, 49, 51)} == {"drums"}
    assert {drum_key_class(k) for k in (54, 56, 63, 64, 70, 75)} == {"percussion"}


@pytest.mark.parametrize(
    ("text", "classes"),
    [
        ("upbeat house with synth bass and drums", {"bass", "drums"}),
        ("Irish reel on fiddle, nylon guitar and accordion", {"strings", "guitar", "keyboard"}),
        ("baroque chorale for string quartet", {"strings"}),
        ("saw lead techno", {"synth"}),
        ("jazz with alto sax, double bass and brush kit", {"woodwinds", "strings", "drums"}),
        ("a quiet song", set()),
    ],
)
def test_classes_in_text(text, classes):
    assert classes_in_text(text) == classes
