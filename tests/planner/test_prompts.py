"""Planner prompts, byte for byte against the literal SPEC §12.2 formats, and CoT YAML."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from encore.pipeline import planner_prompts as P

SYS_GEN = "<|im_start|>system\n# Instruction\nGenerate audio semantic tokens based on the given conditions:\n\n<|im_end|>\n"
GEN_USER = "<|im_start|>user\n# Caption\nWarm house\n\n# Lyric\n[Verse]\nla la\n<|im_end|>\n"
ASSISTANT = "<|im_start|>assistant\n"
COT = "<think>\nbpm: 124\ncaption: Funky French house\nduration: 120\nkeyscale: F# minor\nlanguage: fr\ntimesignature: 4\n</think>"


def test_phase1_prompts() -> None:
    assert P.cot_prompt("Warm house", "[Verse]\nla la") == SYS_GEN + GEN_USER + ASSISTANT
    assert P.cot_uncond_prompt("[Verse]\nla la", "NO USER INPUT") == (
        SYS_GEN + "<|im_start|>user\n# Lyric\n[Verse]\nla la\n<|im_end|>\n" + ASSISTANT)
    assert P.cot_uncond_prompt("[Verse]\nla la", "noisy, lo-fi") == (
        SYS_GEN + "<|im_start|>user\n# Caption\nnoisy, lo-fi\n\n# Lyric\n[Verse]\nla la\n<|im_end|>\n" + ASSISTANT)


def test_phase2_prompts_open_and_legacy() -> None:
    assert P.codes_prompt("Warm house", "[Verse]\nla la", COT, "open") == (
        SYS_GEN + GEN_USER + ASSISTANT + COT + "\n\n")
    assert P.codes_uncond_prompt("Warm house", "[Verse]\nla la", "NO USER INPUT", "open") == (
        SYS_GEN + "<|im_start|>user\nNO USER INPUT<|im_end|>\n" + ASSISTANT + "<think>\n\n</think>\n\n")
    assert P.codes_uncond_prompt("Warm house", "x", "muddy mix", "open") == (
        SYS_GEN + "<|im_start|>user\nmuddy mix<|im_end|>\n" + ASSISTANT + "<think>\n\n</think>\n\n")
    assert P.codes_prompt("Warm house", "[Verse]\nla la", COT, "legacy") == (
        SYS_GEN + GEN_USER + ASSISTANT + COT + "\n\n<|im_end|>\n")
    assert P.codes_uncond_prompt("Warm house", "[Verse]\nla la", "NO USER INPUT", "legacy") == (
        SYS_GEN + GEN_USER + ASSISTANT + "<think>\n\n</think>\n\n<|im_end|>\n")


def test_other_mode_prompts() -> None:
    assert P.understand_prompt("<|audio_code_1|><|audio_code_2|>") == (
        "<|im_start|>system\n# Instruction\nUnderstand the given musical conditions and describe the audio "
        "semantics accordingly:\n\n<|im_end|>\n<|im_start|>user\n<|audio_code_1|><|audio_code_2|><|im_end|>\n"
        + ASSISTANT)
    assert P.inspiration_prompt("a soft Bengali love song", True) == (
        "<|im_start|>system\n# Instruction\nExpand the user's input into a more detailed and specific musical "
        "description:\n\n<|im_end|>\n<|im_start|>user\na soft Bengali love song\n\ninstrumental: true<|im_end|>\n"
        + ASSISTANT)
    assert P.inspiration_prompt("q", False).endswith("q\n\ninstrumental: false<|im_end|>\n" + ASSISTANT)
    assert P.format_prompt("Latin pop", "[Verse 1]\nTengo") == (
        "<|im_start|>system\n# Instruction\nFormat the user's input into a more detailed and specific musical "
        "description:\n\n<|im_end|>\n<|im_start|>user\n# Caption\nLatin pop\n\n# Lyric\n[Verse 1]\nTengo"
        "<|im_end|>\n" + ASSISTANT)
    assert P.format_uncond_prompt("NO USER INPUT").endswith("<|im_start|>user\nNO USER INPUT<|im_end|>\n" + ASSISTANT)
    assert P.understand_uncond_prompt("").endswith("<|im_start|>user\n<|im_end|>\n" + ASSISTANT)


MESSAGE_SETS = [
    [{"role": "system", "content": "# Instruction\nX\n\n"}, {"role": "user", "content": "hello"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": COT}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
     {"role": "assistant", "content": "<think>\n</think>"}],
    [{"role": "user", "content": "U"}, {"role": "assistant", "content": "plain answer"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "<think>r</think>b"},
     {"role": "user", "content": "c"}],
]


@pytest.mark.parametrize("messages", MESSAGE_SETS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_render_chat_equals_tokenizer_template(planner_tokenizer, messages, add_generation_prompt: bool) -> None:
    expected = planner_tokenizer.apply_chat_template(messages, tokenize=False,
                                                     add_generation_prompt=add_generation_prompt)
    assert P.render_chat(messages, add_generation_prompt=add_generation_prompt) == expected


@pytest.mark.skipif(not os.environ.get("ENCORE_PLANNER_DIR"), reason="set ENCORE_PLANNER_DIR to a real planner")
@pytest.mark.parametrize("messages", MESSAGE_SETS)
def test_render_chat_equals_official_qwen3_template(messages) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(Path(os.environ["ENCORE_PLANNER_DIR"]))
    for add in (True, False):
        assert P.render_chat(messages, add_generation_prompt=add) == tok.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add)


def test_format_cot_matches_spec_example() -> None:
    values = {"bpm": 124, "caption": "Funky French house", "duration": "120", "keyscale": "F# minor",
              "language": "fr", "timesignature": "4/4", "genres": "house"}
    assert P.format_cot(values) == COT  # genres left out, "4/4" -> 4, "120" -> 120, keys sorted
    assert "language: 'no'" in P.format_cot({"language": "no"})  # PyYAML quotes the boolean-looking "no"
    long = P.format_cot({"caption": "word " * 30})
    assert "\n  word" in long  # wrapped at 80 columns with a 2-space continuation


def test_parse_cot_round_trip() -> None:
    long_caption = " ".join(["An emotional ballad with piano"] * 5)
    cot = P.format_cot({"bpm": 73, "caption": long_caption, "duration": 273, "keyscale": "G major",
                        "language": "no", "timesignature": 3})
    body = cot.removeprefix("<think>\n").removesuffix("\n</think>")
    assert P.parse_cot(body) == {"bpm": 73, "caption": long_caption, "duration": 273, "keyscale": "G major",
                                 "language": "no", "timesignature": 3}


def test_extract_lyrics() -> None:
    assert P.extract_lyrics("\n\n# Lyric\n[Verse]\nla la\n<|im_end|>") == "[Verse]\nla la"
    assert P.extract_lyrics("  [Chorus]\nhey  ") == "[Chorus]\nhey"
