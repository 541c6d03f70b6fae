"""`encore.audio.io`: round trips per format, resampling and channel mapping, tags + sidecar, error paths,
atomic writes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from encore.audio import io, tags
from encore.audio.io import load_audio, probe_audio, read_metadata, save_audio, sidecar_path
from encore.errors import AudioError, InvalidRequest, NumericalError
from encore.models.vae import VAEConfig

RATE = 16000
METADATA = {"caption": "lo-fi piano, ünïcödé ✓", "lyrics": "[verse]\nla la\n" * 3, "seed": 1234,
            "model": "acestep-v15-turbo", "lora_ids": ["a", "b"], "task": "text2music", "shift": 3.0}


def _tone(seconds: float = 0.4, rate: int = RATE, channels: int = 2) -> torch.Tensor:
    t = torch.arange(int(seconds * rate)) / rate
    return torch.stack([0.5 * torch.sin(2 * math.pi * (330 + 110 * c) * t) for c in range(channels)])


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    n = min(a.shape[-1], b.shape[-1])
    a, b = a[..., :n].flatten(), b[..., :n].flatten()
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_default_rate_matches_vae_config():
    assert io.OFFICIAL_SAMPLE_RATE == VAEConfig().sampling_rate


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".mp3", ".ogg"])
def test_round_trip_with_metadata(tmp_path, suffix):
    wav = _tone()
    path = save_audio(tmp_path / f"song{suffix}", wav, RATE, metadata=METADATA)
    assert path == tmp_path / f"song{suffix}"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, sidecar_path(path).name])
    assert read_metadata(path) == METADATA
    assert json.loads(sidecar_path(path).read_text(encoding="utf-8")) == METADATA
    got, rate = load_audio(path, target_rate=None)
    assert rate == RATE and got.dtype == torch.float32 and got.shape[0] == 2
    if suffix in (".wav", ".flac"):  # lossless 16-bit
        assert got.shape == wav.shape
        assert (got - wav).abs().max().item() < 1e-4
    else:  # lossy: same length within a codec frame, and the same signal
        assert abs(got.shape[-1] - wav.shape[-1]) <= 1152
        assert _corr(got, wav) > 0.9


def test_tag_is_embedded_not_only_in_sidecar(tmp_path):
    for suffix in (".flac", ".mp3"):
        path = save_audio(tmp_path / f"a{suffix}", _tone(), RATE, metadata=METADATA, sidecar=False)
        assert not sidecar_path(path).exists()
        assert json.loads(tags.read_tag(path, suffix[1:])) == METADATA  # type: ignore[arg-type]
        assert read_metadata(path) == METADATA


def test_sidecar_fallback_and_no_metadata(tmp_path):
    path = tmp_path / "plain.wav"
    sf.write(path, np.zeros((800, 2), np.float32), RATE)
    assert read_metadata(path) == {}
    sidecar_path(path).write_text(json.dumps({"seed": 7}), encoding="utf-8")
    assert read_metadata(path) == {"seed": 7}
    sidecar_path(path).write_text("{not json", encoding="utf-8")
    with pytest.raises(AudioError, match="plain.wav"):
        read_metadata(path)


def test_resample_and_channel_mapping(tmp_path):
    src_rate = 22050
    mono = _tone(0.5, src_rate, channels=1)
    sf.write(tmp_path / "mono.flac", mono.numpy().T, src_rate)
    wav, rate = load_audio(tmp_path / "mono.flac", target_rate=RATE)
    assert rate == RATE and wav.shape == (2, RATE // 2)
    torch.testing.assert_close(wav[0], wav[1])
    reference = _tone(0.5, RATE, channels=1)[0]
    assert _corr(wav[0, 200:-200], reference[200:-200]) > 0.999  # a real band-limited resampler
    six = torch.stack([torch.full((1000,), 0.1 * c) for c in range(6)])
    sf.write(tmp_path / "six.wav", six.numpy().T, RATE, subtype="FLOAT")
    wav, _ = load_audio(tmp_path / "six.wav", target_rate=None)
    torch.testing.assert_close(wav, six[:2])
    wav, _ = load_audio(tmp_path / "six.wav", target_rate=None, channels=1)
    torch.testing.assert_close(wav, six.mean(0, keepdim=True))


def test_clamp_and_crop(tmp_path):
    loud = torch.full((2, RATE), 1.5)
    sf.write(tmp_path / "loud.wav", loud.numpy().T, RATE, subtype="FLOAT")
    assert load_audio(tmp_path / "loud.wav", target_rate=None)[0].max().item() == 1.0
    assert load_audio(tmp_path / "loud.wav", target_rate=None, clamp=False)[0].max().item() == 1.5
    ramp = torch.arange(RATE, dtype=torch.float32).div(RATE).expand(2, -1)
    sf.write(tmp_path / "ramp.wav", ramp.numpy().T, RATE, subtype="FLOAT")
    part, _ = load_audio(tmp_path / "ramp.wav", target_rate=None, start_s=0.25, duration_s=0.5)
    torch.testing.assert_close(part, ramp[:, RATE // 4: RATE // 4 + RATE // 2])


def test_read_errors_name_the_file(tmp_path):
    cases = {}
    cases["missing"] = tmp_path / "missing.wav"
    (tmp_path / "dir.wav").mkdir()
    cases["directory"] = tmp_path / "dir.wav"
    (tmp_path / "text.mp3").write_text("this is not audio at all\n" * 20)
    cases["non-audio"] = tmp_path / "text.mp3"
    (tmp_path / "trunc.flac").write_bytes(b"fLaC\x00\x00")
    cases["truncated"] = tmp_path / "trunc.flac"
    sf.write(tmp_path / "empty.wav", np.zeros((0, 2), np.float32), RATE)
    cases["empty"] = tmp_path / "empty.wav"
    nan = np.zeros((100, 2), np.float32)
    nan[5, 1] = np.nan
    sf.write(tmp_path / "nan.wav", nan, RATE, subtype="FLOAT")
    cases["nan"] = tmp_path / "nan.wav"
    for what, path in cases.items():
        with pytest.raises(AudioError) as info:
            load_audio(path)
        assert path.name in str(info.value), what
        assert info.value.path == str(path)


def test_over_long_is_refused(tmp_path):
    sf.write(tmp_path / "long.wav", np.zeros((RATE, 2), np.float32), RATE)
    with pytest.raises(AudioError, match="long.wav.*limit is 0.5 s"):
        load_audio(tmp_path / "long.wav", max_seconds=0.5)
    assert load_audio(tmp_path / "long.wav", max_seconds=0.5, duration_s=0.5, target_rate=None)[0].shape[-1] \
        == RATE // 2
    assert probe_audio(tmp_path / "long.wav").duration_s == 1.0


def test_non_finite_output_writes_nothing(tmp_path):
    wav = _tone()
    wav[1, 10] = float("inf")
    with pytest.raises(NumericalError, match="bad.flac"):
        save_audio(tmp_path / "bad.flac", wav, RATE, metadata=METADATA)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_nothing_and_keeps_old_file(tmp_path, monkeypatch):
    path = save_audio(tmp_path / "keep.mp3", _tone(), RATE, metadata={"v": 1})
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise tags.MutagenError("disk full while tagging")

    monkeypatch.setattr(tags, "write_tag", broken)
    with pytest.raises(AudioError, match="keep.mp3"):
        save_audio(path, _tone(0.2), RATE, metadata={"v": 2})
    assert path.read_bytes() == before
    assert read_metadata(path) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.mp3", "keep.mp3.json"]


def test_save_validation(tmp_path):
    with pytest.raises(AudioError, match="unsupported format"):
        save_audio(tmp_path / "a.aiff", _tone(), RATE)
    with pytest.raises(AudioError, match="does not exist"):
        save_audio(tmp_path / "nope" / "a.wav", _tone(), RATE)
    with pytest.raises(InvalidRequest, match="metadata"):
        save_audio(tmp_path / "a.wav", _tone(), RATE, metadata={"x": object()})
    with pytest.raises(AudioError, match="shape"):
        save_audio(tmp_path / "a.wav", torch.zeros(2, 0), RATE)
    assert list(tmp_path.iterdir()) == []


def test_peak_safe_output(tmp_path):
    wav = 3.0 * _tone()
    path = save_audio(tmp_path / "hot.wav", wav, RATE, subtype="FLOAT")
    got, _ = load_audio(path, target_rate=None, clamp=False)
    assert got.abs().max().item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(got, wav / wav.abs().max())


def test_overwrite_without_metadata_drops_stale_sidecar(tmp_path):
    path = save_audio(tmp_path / "a.ogg", _tone(), RATE, metadata={"seed": 1})
    save_audio(path, _tone(), RATE)
    assert not sidecar_path(path).exists()
    assert read_metadata(path) == {}
