"""A request's own 5 Hz audio codes: parsed, validated, and rendered as the planner's codes are (SPEC §12.5)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from helpers.tiny_pipeline import VAE_1K, write_tiny

from encore.errors import InvalidRequest
from encore.pipeline import pipeline as pipeline_module
from encore.pipeline.pipeline import Pipeline
from encore.pipeline.request import (
    GenerationRequest,
    PlannerOptions,
    TextInputs,
    parse_audio_codes,
    request_from_dict,
    request_to_dict,
)
from encore.tasks.prompts import COVER_INSTRUCTION
from encore.tasks.spec import Repaint

TEXT = TextInputs(caption="bright acoustic guitar", lyrics="[Instrumental]")
RATE = 1000  # tiny 1 kHz VAE, 25 latent frames per second
CODES = tuple(range(7, 64_000, 6_400))  # 10 codes: 2 s


@pytest.fixture(scope="module")
def turbo(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    return Pipeline.from_pretrained(write_tiny(tmp_path_factory.mktemp("turbo"), vae=VAE_1K), device="cpu")


def test_parse_reads_tokens_and_integers_and_names_the_field() -> None:
    assert parse_audio_codes("<|audio_code_12|><|audio_code_0|>\n<|audio_code_63999|>") == (12, 0, 63_999)
    assert parse_audio_codes(" 5, 6 7,8 ") == (5, 6, 7, 8)
    assert parse_audio_codes("<|audio_code_3|>, <|audio_code_4|>\n") == (3, 4)
    for text in ("<|audio_code_1|> hello", "1, 2, x", "", "   "):
        with pytest.raises(InvalidRequest) as info:
            parse_audio_codes(text, "audio_code_string")
        assert info.value.field == "audio_code_string"


@pytest.mark.parametrize(("codes", "field"), [
    ((1, 2, 3, 4), "audio_codes"),  # under a second
    (tuple(range(3001)), "audio_codes"),  # over 600 s
    ((1, 2, 3, 4, 64_000), "audio_codes[4]"),
    ((1, -1, 3, 4, 5), "audio_codes[1]"),
    ((1, True, 3, 4, 5), "audio_codes[1]"),
])  # fmt: skip
def test_request_refuses_bad_codes_by_position(codes: tuple, field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        GenerationRequest(text=TEXT, audio_codes=codes)
    assert info.value.field == field


def test_codes_survive_the_json_round_trip() -> None:
    request = GenerationRequest(text=TEXT, audio_codes=CODES)
    data = json.loads(json.dumps(request_to_dict(request)))
    assert data["audio_codes"] == list(CODES) and request_from_dict(data) == request
    with pytest.raises(InvalidRequest, match="audio_codes"):
        request_from_dict({**data, "audio_codes": ["a"]})


def test_text2music_renders_the_codes_as_the_planners(turbo: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    """The codes become the DiT's context through the same detokenizer as planned codes, with the cover
    instruction and no beat hints; they set the length when no duration is given, else they are padded."""
    seen = []
    real = pipeline_module.tc.build_conditioning

    def spy(*args: object, **kwargs: object) -> object:
        cond = real(*args, **kwargs)
        seen.append((kwargs["hint_latents"], cond))
        return cond

    monkeypatch.setattr(pipeline_module.tc, "build_conditioning", spy)
    coded = turbo.generate(GenerationRequest(text=TEXT, seeds=(9,), audio_codes=CODES))
    hints, cond = seen[-1]
    assert torch.equal(hints, turbo.codes_to_hints(CODES)) and hints.shape[0] == 50
    assert cond.src_is_hints and cond.is_cover and cond.num_frames == 50
    assert coded.params["instruction"] == COVER_INSTRUCTION and "beat_hints" not in coded.params
    assert coded.params["request"]["text"]["duration_s"] == 2.0 and coded.audio.shape[-1] == 2 * RATE
    assert coded.params["request"]["audio_codes"] == list(CODES)
    assert torch.equal(turbo.generate(request_from_dict(coded.params["request"])).audio, coded.audio)  # replays

    plain = turbo.generate(GenerationRequest(text=dataclasses.replace(TEXT, duration_s=2.0), seeds=(9,)))
    assert not torch.allclose(plain.latents, coded.latents)
    longer = turbo.generate(GenerationRequest(text=dataclasses.replace(TEXT, duration_s=3.0), seeds=(9,),
                                              audio_codes=CODES))  # fmt: skip
    _, cond = seen[-1]
    assert cond.num_frames == 75 and torch.equal(cond.src_latents[:50], hints)
    assert longer.audio.shape[-1] == 3 * RATE


def test_codes_with_thinking_or_another_task_are_refused(turbo: Pipeline, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="think") as info:
        turbo.generate(GenerationRequest(text=TEXT, audio_codes=CODES, planner=PlannerOptions(think=True)))
    assert info.value.field == "audio_codes"
    with pytest.raises(InvalidRequest, match="text2music and cover") as info:
        turbo.generate(GenerationRequest(task=Repaint(source=str(tmp_path / "x.wav"), start_s=0.0, end_s=1.0),
                                         text=TEXT, audio_codes=CODES))  # fmt: skip
    assert info.value.field == "audio_codes"


def test_cli_takes_codes_as_integers_tokens_or_a_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from encore.frontends import cli

    plan = tmp_path / "codes.txt"
    plan.write_text("".join(f"<|audio_code_{c}|>" for c in CODES), encoding="utf-8")
    for argv in (["--audio-codes", *map(str, CODES)], ["--audio-codes", ",".join(map(str, CODES))],
                 ["--audio-codes", f"@{plan}"]):  # fmt: skip
        assert cli.main(["generate", "--caption", "x", *argv, "--print-request"]) == 0
        assert json.loads(capsys.readouterr().out)["audio_codes"] == list(CODES)
    for argv in (["--audio-codes", "1", "2", "zz"], ["--audio-codes", f"@{tmp_path / 'missing.txt'}"],
                 ["--audio-codes", "1", "2", "3", "4", "70000"]):  # fmt: skip
        assert cli.main(["generate", "--caption", "x", *argv, "--print-request"]) == cli.EXIT_USAGE
        assert "--audio-codes" in capsys.readouterr().err


def test_official_audio_code_string_becomes_the_requests_codes() -> None:
    from encore.frontends.server.official import ReleaseTaskBody, release_to_request
    from encore.frontends.server.service import ApiError

    text = "".join(f"<|audio_code_{c}|>" for c in CODES)
    for value in (text, [text, text], [text, ""]):
        data, _, warnings = release_to_request(ReleaseTaskBody(prompt="x", audio_code_string=value), "m")
        assert data["audio_codes"] == list(CODES) and not warnings
        assert request_from_dict(data).audio_codes == CODES
    assert "audio_codes" not in release_to_request(ReleaseTaskBody(prompt="x", audio_code_string=""), "m")[0]
    for value in (text + " junk", [text, "<|audio_code_1|>"]):
        with pytest.raises(ApiError) as info:
            release_to_request(ReleaseTaskBody(prompt="x", audio_code_string=value), "m")
        assert "audio_code_string" in json.dumps(info.value.message)


def test_cover_renders_the_codes_in_place_of_the_source(turbo: Pipeline, tmp_path: Path) -> None:
    from helpers.tiny_pipeline import write_wav

    from encore.tasks.spec import Cover

    song = write_wav(tmp_path / "song.wav", 3.2, RATE, seed=5)
    own = turbo.generate(GenerationRequest(task=Cover(source=str(song)), text=TEXT, seeds=(9,)))
    coded = turbo.generate(GenerationRequest(task=Cover(source=str(song)), text=TEXT, seeds=(9,), audio_codes=CODES))
    assert own.audio.shape[-1] == 3200 and coded.audio.shape[-1] == 2 * RATE  # the codes' length, as officially
    assert coded.params["instruction"] == COVER_INSTRUCTION


def test_cover_needs_a_source_only_without_codes(turbo: Pipeline) -> None:
    from encore.tasks.spec import Cover

    coded = turbo.generate(GenerationRequest(task=Cover(), text=TEXT, seeds=(9,), audio_codes=CODES))
    assert coded.audio.shape[-1] == 2 * RATE
    with pytest.raises(InvalidRequest) as info:
        turbo.generate(GenerationRequest(task=Cover(), text=TEXT, seeds=(9,)))
    assert info.value.field == "task.source"


def test_audio_codes_text_is_what_parse_audio_codes_reads() -> None:
    from encore.pipeline.request import audio_codes_text, parse_audio_codes

    assert audio_codes_text([0, 7, 63999]) == "<|audio_code_0|><|audio_code_7|><|audio_code_63999|>"
    assert parse_audio_codes(audio_codes_text([5, 6, 7, 8, 9])) == (5, 6, 7, 8, 9)
