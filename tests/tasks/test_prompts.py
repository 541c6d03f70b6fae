"""DiT prompt strings, byte-exact against the literal strings of SPEC §5 and §10."""

from __future__ import annotations

import pytest

from encore.errors import InvalidRequest
from encore.tasks.prompts import (
    SFT_GEN_PROMPT,
    VALID_LANGUAGES,
    format_caption_prompt,
    format_instruction,
    format_lyric_prompt,
    format_metas,
    instruction_for,
)
from encore.tasks.spec import Complete, Cover, Extend, Extract, Lego, Repaint, Text2Music


def test_template_is_byte_exact() -> None:
    assert SFT_GEN_PROMPT.format(instruction="I", caption="C", metas="M") == (
        "# Instruction\nI\n\n# Caption\nC\n\n# Metas\nM<|endoftext|>\n"
    )


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        (Text2Music(), "Fill the audio semantic mask based on the given conditions:"),
        (Repaint(), "Repaint the mask area based on the given conditions:"),
        (Extend(), "Repaint the mask area based on the given conditions:"),
        (Cover(), "Generate audio semantic tokens based on the given conditions:"),
        (Extract(track="backing_vocals"), "Extract the BACKING_VOCALS track from the audio:"),
        (Extract(), "Extract the track from the audio:"),
        (Lego(track="guitar"), "Generate the GUITAR track based on the audio context:"),
        (Lego(), "Generate the track based on the audio context:"),
        (Complete(tracks=("drums", "bass", "synth")), "Complete the input track with DRUMS | BASS | SYNTH:"),
        (Complete(), "Complete the input track:"),
    ],
)
def test_instructions(spec, text: str) -> None:
    assert instruction_for(spec) == text


def test_codes_switch_text2music_to_cover_instruction() -> None:
    assert instruction_for(Text2Music(), has_audio_codes=True) == (
        "Generate audio semantic tokens based on the given conditions:"
    )


def test_instruction_colon_is_forced() -> None:
    assert format_instruction("Make it louder") == "Make it louder:"
    assert format_instruction("Already:") == "Already:"


def test_metas_full_and_default() -> None:
    assert format_metas(bpm=120, timesignature=4, keyscale="F# minor", duration_s=180.9) == (
        "- bpm: 120\n- timesignature: 4\n- keyscale: F# minor\n- duration: 180 seconds\n"
    )
    assert format_metas() == "- bpm: N/A\n- timesignature: N/A\n- keyscale: N/A\n- duration: 30 seconds\n"


def test_metas_blank_and_na_values() -> None:
    assert format_metas(bpm=0, timesignature="N/A", keyscale="   ", duration_s=12.0) == (
        "- bpm: N/A\n- timesignature: N/A\n- keyscale: N/A\n- duration: 12 seconds\n"
    )
    assert format_metas(timesignature="", duration_s=0.7) == (
        "- bpm: N/A\n- timesignature: N/A\n- keyscale: N/A\n- duration: 0 seconds\n"
    )


def test_caption_prompt_byte_exact() -> None:
    metas = format_metas(bpm=124, timesignature=4, keyscale="C major", duration_s=120.0)
    got = format_caption_prompt(
        "Fill the audio semantic mask based on the given conditions", "funky {house}", metas
    )
    assert got == (
        "# Instruction\nFill the audio semantic mask based on the given conditions:\n\n"
        "# Caption\nfunky {house}\n\n"
        "# Metas\n- bpm: 124\n- timesignature: 4\n- keyscale: C major\n- duration: 120 seconds\n"
        "<|endoftext|>\n"
    )


def test_lyric_prompt_byte_exact() -> None:
    assert (
        format_lyric_prompt("en", "[Verse]\nla la")
        == "# Languages\nen\n\n# Lyric\n[Verse]\nla la<|endoftext|>"
    )
    assert format_lyric_prompt("unknown", "[Instrumental]") == (
        "# Languages\nunknown\n\n# Lyric\n[Instrumental]<|endoftext|>"
    )


def test_languages() -> None:
    assert len(VALID_LANGUAGES) == 51 and VALID_LANGUAGES[-1] == "unknown"
    assert {"en", "zh", "yue", "ja"} <= set(VALID_LANGUAGES)
    with pytest.raises(InvalidRequest) as err:
        format_lyric_prompt("english", "x")
    assert err.value.field == "text.language"
