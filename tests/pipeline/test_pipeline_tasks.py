"""Audio tasks through `Pipeline.generate`: repaint/extend keep the source, cover switch, stems, references."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf
import torch
from helpers.tiny_pipeline import VAE_1K, write_tiny, write_wav

from encore.errors import AudioError, InvalidRequest
from encore.pipeline.pipeline import Pipeline
from encore.pipeline.request import DiffusionOptions, GenerationRequest, TextInputs
from encore.tasks.spec import Complete, Cover, Extend, Extract, Lego, Repaint

TEXT = TextInputs(caption="bright acoustic guitar", lyrics="[Instrumental]")
RATE, HOP = 1000, 40  # tiny 1 kHz VAE, 25 latent frames per second
CROSSFADE_SAMPLES = 10 * HOP


@pytest.fixture(scope="module")
def turbo(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    return Pipeline.from_pretrained(write_tiny(tmp_path_factory.mktemp("turbo"), vae=VAE_1K), device="cpu")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    return Pipeline.from_pretrained(write_tiny(tmp_path_factory.mktemp("base"), variant="base", vae=VAE_1K),
                                   device="cpu")


@pytest.fixture(scope="module")
def song(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    """3.2 s of 16-bit stereo (exactly 80 latent frames) and its samples as loaded."""
    path = write_wav(tmp_path_factory.mktemp("audio") / "song.wav", 3.2, RATE, seed=5)
    data, _ = sf.read(path, dtype="float32", always_2d=True)
    return path, torch.from_numpy(data.T.copy())


def _generate(pipe: Pipeline, task: object, **kwargs: object) -> object:
    return pipe.generate(GenerationRequest(task=task, text=TEXT, seeds=(9,), **kwargs))  # type: ignore[arg-type]


def test_repaint_keeps_the_source_outside_the_window(turbo: Pipeline, song: tuple[Path, torch.Tensor]) -> None:
    path, wave = song
    result = _generate(turbo, Repaint(source=str(path), start_s=1.0, end_s=2.0))
    out = result.audio[0]
    assert out.shape == wave.shape
    start, end = 25 * HOP, 50 * HOP
    outside = torch.cat([out[:, :start], out[:, end:]], dim=1)
    source_outside = torch.cat([wave[:, :start], wave[:, end:]], dim=1)
    assert (outside - source_outside).abs().max() <= 1e-4
    inside = out[:, start + CROSSFADE_SAMPLES: end - CROSSFADE_SAMPLES]
    assert (inside - wave[:, start + CROSSFADE_SAMPLES: end - CROSSFADE_SAMPLES]).abs().max() > 1e-2
    assert result.params["region_frames"] == [25, 50]


def test_repaint_outpaints_before_the_source(turbo: Pipeline, song: tuple[Path, torch.Tensor]) -> None:
    path, wave = song
    result = _generate(turbo, Repaint(source=str(path), start_s=-0.8, end_s=0.4))
    out = result.audio[0]
    pad = 20 * HOP  # 0.8 s added before the source
    assert out.shape[-1] == pad + wave.shape[-1]
    kept_from = pad + 10 * HOP  # the window ends 0.4 s into the source
    assert torch.equal(out[:, kept_from:], wave[:, 10 * HOP:])


@pytest.mark.parametrize("side", ["after", "before"])
def test_extend_adds_new_audio_and_keeps_the_source(turbo: Pipeline, song: tuple[Path, torch.Tensor],
                                                    side: str) -> None:
    path, wave = song
    result = _generate(turbo, Extend(source=str(path), seconds=0.8, side=side, context_s=1.2))
    out = result.audio[0]
    new = 20 * HOP
    assert out.shape[-1] == wave.shape[-1] + new
    kept = out[:, :wave.shape[-1]] if side == "after" else out[:, new:]
    assert torch.equal(kept, wave)
    fresh = out[:, wave.shape[-1] + CROSSFADE_SAMPLES:] if side == "after" else out[:, : new - CROSSFADE_SAMPLES]
    assert fresh.abs().max() > 1e-3  # something was generated there


def test_repaint_window_outside_the_song_is_invalid(turbo: Pipeline, song: tuple[Path, torch.Tensor]) -> None:
    path, _ = song
    with pytest.raises(InvalidRequest) as info:
        _generate(turbo, Repaint(source=str(path), start_s=10.0, end_s=12.0))
    assert info.value.field == "task.start_s"
    with pytest.raises(InvalidRequest) as info:
        _generate(turbo, Repaint(source=str(path), start_s=-3.0, end_s=-1.0))
    assert info.value.field == "task.end_s"


def test_cover_strength_zero_is_text2music_from_the_first_step(turbo: Pipeline,
                                                               song: tuple[Path, torch.Tensor]) -> None:
    path, _ = song
    cover = _generate(turbo, Cover(source=str(path), cover_strength=0.0))
    full = _generate(turbo, Cover(source=str(path), cover_strength=1.0))
    assert cover.params["cover_switch_step"] == 0
    assert "cover_switch_step" not in full.params
    assert not torch.allclose(cover.latents, full.latents)
    assert cover.params["instruction"].startswith("Generate audio semantic tokens")


def test_cover_without_quantize_keeps_the_source_latents(turbo: Pipeline, song: tuple[Path, torch.Tensor],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """`quantize=False` ("Remix (Raw)") skips the 5 Hz FSQ round trip of the source; the default takes it."""
    calls = []
    real = turbo.fsq_round_trip
    monkeypatch.setattr(turbo, "fsq_round_trip", lambda latents: calls.append(latents.shape) or real(latents))
    path, _ = song
    default = _generate(turbo, Cover(source=str(path)))
    assert len(calls) == 1
    raw = _generate(turbo, Cover(source=str(path), quantize=False))
    assert len(calls) == 1 and not torch.allclose(raw.latents, default.latents)
    assert raw.params["request"]["task"]["quantize"] is False
    with pytest.raises(InvalidRequest, match="audio codes") as info:
        _generate(turbo, Cover(source=str(path), quantize=False), audio_codes=(1, 2, 3, 4, 5))
    assert info.value.field == "task.quantize"


@pytest.mark.parametrize("task", [
    Extract(track="vocals"),
    Lego(track="drums", start_s=0.4, end_s=2.0),
    Complete(tracks=("bass", "drums")),
], ids=["extract", "lego", "complete"])
def test_base_model_stem_tasks(base: Pipeline, song: tuple[Path, torch.Tensor], task: object) -> None:
    import dataclasses

    path, wave = song
    result = base.generate(GenerationRequest(task=dataclasses.replace(task, source=str(path)),  # type: ignore[type-var]
                                             text=TEXT, seeds=(1,), diffusion=DiffusionOptions(num_steps=2)))
    assert result.audio.shape == (1, 2, wave.shape[-1])
    assert torch.isfinite(result.audio).all()
    expected = {"extract": "Extract the VOCALS track", "lego": "Generate the DRUMS track",
                "complete": "Complete the input track with BASS | DRUMS"}[result.params["task"]]
    assert result.params["instruction"].startswith(expected)


def test_reference_audio_changes_the_song_and_silence_counts_as_none(turbo: Pipeline, tmp_path: Path) -> None:
    ref = write_wav(tmp_path / "ref.wav", 1.0, RATE, seed=2)
    silent = tmp_path / "silent.wav"
    sf.write(silent, torch.zeros(RATE, 2).numpy(), RATE)
    text2music = TextInputs(caption="x", duration_s=1.2)
    plain = turbo.generate(GenerationRequest(text=text2music, seeds=(1,)))
    styled = turbo.generate(GenerationRequest(text=text2music, seeds=(1,), reference_audio=str(ref)))
    quiet = turbo.generate(GenerationRequest(text=text2music, seeds=(1,), reference_audio=str(silent)))
    assert not torch.allclose(plain.latents, styled.latents)
    assert torch.equal(plain.latents, quiet.latents)


def test_bad_source_files_name_the_file(turbo: Pipeline, tmp_path: Path) -> None:
    missing = tmp_path / "missing.wav"
    with pytest.raises(AudioError, match="missing.wav"):
        _generate(turbo, Cover(source=str(missing)))
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    with pytest.raises(AudioError, match="junk.wav"):
        _generate(turbo, Cover(source=str(junk)))
