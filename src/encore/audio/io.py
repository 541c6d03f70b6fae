"""Audio files in and out: the only module that touches codecs (soundfile), resampling (soxr) and tags.

`load_audio` reads wav/flac/mp3/ogg at any rate and channel count into float32 `[C, S]` at the target rate.
`save_audio` masters, encodes and tags a waveform, writing via a temporary file and a rename so no partial
file is ever visible, plus a `<name>.json` sidecar. `read_metadata` gets the tags back. `probe_audio` and
`read_metadata` do not import torch (front-ends may call them).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import soundfile as sf
import soxr

from encore.audio import tags
from encore.errors import AudioError, InvalidRequest, NumericalError

if TYPE_CHECKING:
    from torch import Tensor

    from encore.audio.loudness import Mastering

logger = logging.getLogger(__name__)

OFFICIAL_SAMPLE_RATE = 48000
"""Default target rate of `load_audio` (SPEC §1.3); the pipeline passes its `VAEConfig.sampling_rate`."""
DEFAULT_MAX_SECONDS = 600.0
"""Default longest input accepted by `load_audio` (official DURATION_MAX)."""
RESAMPLE_QUALITY = "HQ"

# suffix -> (soundfile format, default subtype, tag format)
_FORMATS: dict[str, tuple[str, str, tags.TagFormat]] = {
    ".wav": ("WAV", "PCM_16", "wav"),
    ".flac": ("FLAC", "PCM_16", "flac"),
    ".mp3": ("MP3", "MPEG_LAYER_III", "mp3"),
    ".ogg": ("OGG", "VORBIS", "ogg"),
}
SUPPORTED_SUFFIXES = tuple(_FORMATS)


@dataclass(frozen=True)
class AudioInfo:
    """What `probe_audio` reports about a file without decoding it."""

    sample_rate: int
    channels: int
    num_samples: int
    format: str

    @property
    def duration_s(self) -> float:
        return self.num_samples / self.sample_rate


def sidecar_path(path: str | Path) -> Path:
    """The JSON sidecar of an audio file: `song.flac` -> `song.flac.json` (unique per format)."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def _require_file(path: Path) -> None:
    if not path.exists():
        raise AudioError(str(path), "file not found")
    if not path.is_file():
        raise AudioError(str(path), "not a regular file")


def _open(path: Path) -> sf.SoundFile:
    _require_file(path)
    try:
        return sf.SoundFile(str(path))
    except sf.SoundFileError as exc:
        raise AudioError(str(path), f"not a readable audio file ({exc})") from exc


def probe_audio(path: str | Path) -> AudioInfo:
    """Rate, channels and length of an audio file (header only; MP3 lengths are the decoder's estimate).

    Raises:
        AudioError: missing, unreadable or non-audio file.
    """
    path = Path(path)
    with _open(path) as f:
        return AudioInfo(sample_rate=f.samplerate, channels=f.channels, num_samples=f.frames, format=f.format)


def _select_span(path: Path, f: sf.SoundFile, start_s: float, duration_s: float | None,
                 max_seconds: float | None) -> tuple[int, int]:
    rate, total = f.samplerate, f.frames
    if total <= 0:
        raise AudioError(str(path), "empty file (0 samples)")
    if start_s < 0 or (duration_s is not None and duration_s <= 0):
        raise InvalidRequest("start_s" if start_s < 0 else "duration_s",
                             f"must be non-negative / positive, got start_s={start_s}, duration_s={duration_s}")
    start = round(start_s * rate)
    if start >= total:
        raise AudioError(str(path), f"start_s={start_s} is past the end ({total / rate:.3f} s)")
    num = total - start if duration_s is None else min(total - start, round(duration_s * rate))
    if max_seconds is not None and num / rate > max_seconds:
        raise AudioError(str(path), f"audio is {num / rate:.1f} s long; the limit is {max_seconds:g} s")
    return start, num


def _map_channels(path: Path, data: np.ndarray, channels: int | None) -> np.ndarray:
    """`[S, C_in] -> [S, channels]`: mono is duplicated, extra channels are dropped (first ones kept, as the
    official loader does); `channels=1` averages all input channels."""
    have = data.shape[1]
    if channels is None or have == channels:
        return data
    if channels == 1:
        return data.mean(axis=1, keepdims=True)
    if have == 1:
        return np.repeat(data, channels, axis=1)
    if have > channels:
        return data[:, :channels]
    raise AudioError(str(path), f"has {have} channels; cannot make {channels} from them")


def load_audio(path: str | Path, *, target_rate: int | None = OFFICIAL_SAMPLE_RATE, channels: int | None = 2,
               max_seconds: float | None = DEFAULT_MAX_SECONDS, start_s: float = 0.0,
               duration_s: float | None = None, clamp: bool = True) -> tuple[Tensor, int]:
    """Reads an audio file into a float32 waveform.

    Args:
        path: wav / flac / mp3 / ogg (anything libsndfile decodes).
        target_rate: Output rate in Hz (resampled with soxr); None keeps the file's rate.
        channels: Output channels (see `_map_channels`); None keeps the file's.
        max_seconds: Longest span accepted (after `start_s`/`duration_s`); None: no limit.
        start_s: Offset to start reading at.
        duration_s: Seconds to read (None: to the end).
        clamp: Clamp to [-1, 1] after resampling, as the official loader does.

    Returns:
        `(wav [channels, S], rate)` with wav float32 on CPU.

    Raises:
        AudioError: missing, unreadable, non-audio, empty, over-long file or non-finite samples (names the file).
    """
    import torch

    path = Path(path)
    if target_rate is not None and target_rate <= 0:
        raise InvalidRequest("target_rate", f"must be positive, got {target_rate}")
    if channels is not None and channels <= 0:
        raise InvalidRequest("channels", f"must be positive, got {channels}")
    with _open(path) as f:
        rate = f.samplerate
        start, num = _select_span(path, f, start_s, duration_s, max_seconds)
        try:
            f.seek(start)
            data = f.read(num, dtype="float32", always_2d=True)
        except sf.SoundFileError as exc:
            raise AudioError(str(path), f"decoding failed ({exc})") from exc
    if data.shape[0] == 0:
        raise AudioError(str(path), "empty file (0 samples decoded)")
    if not np.isfinite(data).all():
        raise AudioError(str(path), "contains NaN or Inf samples")
    data = _map_channels(path, data, channels)
    if target_rate is not None and target_rate != rate:
        data = soxr.resample(data, rate, target_rate, quality=RESAMPLE_QUALITY)
        rate = target_rate
    if clamp:
        np.clip(data, -1.0, 1.0, out=data)
    return torch.from_numpy(np.ascontiguousarray(data.T, dtype=np.float32)), rate


def _format_of(path: Path) -> tuple[str, str, tags.TagFormat]:
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise AudioError(str(path), f"unsupported format {path.suffix!r}; use one of {list(SUPPORTED_SUFFIXES)}")
    return fmt


def _metadata_json(metadata: Mapping[str, Any]) -> str:
    try:
        return json.dumps(dict(metadata), ensure_ascii=False, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest("metadata", f"must be JSON-serialisable ({exc})") from exc


def save_audio(path: str | Path, wav: Tensor | np.ndarray, rate: int, *, metadata: Mapping[str, Any] | None = None,
               sidecar: bool = True, mastering: Mastering | None = None, subtype: str | None = None,
               compression_level: float | None = None) -> Path:
    """Masters and writes one waveform; the format follows the suffix (.wav .flac .mp3 .ogg).

    Args:
        path: Destination; its folder must exist. An existing file is replaced atomically.
        wav: `[C, S]` float samples (torch or numpy).
        rate: Sample rate in Hz.
        metadata: JSON-serialisable generation parameters, embedded as a tag (see `encore.audio.tags`) and,
            if `sidecar`, also written to `sidecar_path(path)`. None: no tag, no sidecar. A sidecar from an
            earlier save to the same path is removed when no new one is written.
        sidecar: Write the JSON sidecar.
        mastering: Level processing (`encore.audio.loudness.Mastering`); default only divides by the peak when
            it exceeds 1.
        subtype: soundfile subtype (e.g. "PCM_24", "FLOAT" for wav); default PCM_16 / MP3 / Vorbis.
        compression_level: soundfile compression level in [0, 1] (FLAC effort, MP3/Vorbis quality).

    Returns:
        The written path.

    Raises:
        NumericalError: `wav` holds NaN/Inf (nothing is written).
        AudioError: unsupported suffix, missing folder, or the encoder/tagger failed (nothing is left behind).
    """
    import torch

    from encore.audio.loudness import apply_mastering

    path = Path(path)
    sf_format, default_subtype, tag_format = _format_of(path)
    if not path.parent.is_dir():
        raise AudioError(str(path), f"folder {str(path.parent)!r} does not exist")
    if rate <= 0:
        raise InvalidRequest("rate", f"must be positive, got {rate}")
    samples = torch.as_tensor(wav).detach().to("cpu", torch.float32)
    if samples.ndim != 2 or samples.shape[-1] == 0:
        raise AudioError(str(path), f"wav must have shape [C, S] with S > 0, got {list(samples.shape)}")
    if not bool(torch.isfinite(samples).all()):
        raise NumericalError(f"{path}: audio contains NaN or Inf samples; nothing written")
    samples = apply_mastering(samples, rate, mastering)
    text = _metadata_json(metadata) if metadata is not None else None
    data = np.ascontiguousarray(samples.numpy().T)
    _write_atomically(path, data, rate, sf_format, subtype or default_subtype, compression_level, tag_format,
                      text, sidecar)
    return path


def _write_atomically(path: Path, data: np.ndarray, rate: int, sf_format: str, subtype: str,
                      compression_level: float | None, tag_format: tags.TagFormat, text: str | None,
                      sidecar: bool) -> None:
    token = uuid.uuid4().hex[:12]
    tmp_audio = path.with_name(f".{path.name}.{token}.tmp")
    side = sidecar_path(path)
    tmp_side = side.with_name(f".{side.name}.{token}.tmp")
    placed_side = False
    done = False
    try:
        sf.write(str(tmp_audio), data, rate, subtype=subtype, format=sf_format, compression_level=compression_level)
        if text is not None:
            tags.write_tag(tmp_audio, tag_format, text)
        if text is not None and sidecar:
            tmp_side.write_text(text + "\n", encoding="utf-8")
            os.replace(tmp_side, side)
            placed_side = True
        # The audio is renamed last: once it is visible, everything is complete.
        os.replace(tmp_audio, path)
        done = True
        if not placed_side:  # a sidecar left by an earlier save would now describe different audio
            with contextlib.suppress(FileNotFoundError):
                side.unlink()
    except (sf.SoundFileError, tags.MutagenError, OSError, ValueError, TypeError) as exc:
        raise AudioError(str(path), f"could not write {sf_format} audio ({exc})") from exc
    finally:
        if not done:
            for leftover in (tmp_audio, tmp_side) + ((side,) if placed_side else ()):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The generation metadata of a file written by `save_audio`: the embedded tag, else the JSON sidecar,
    else `{}`.

    Raises:
        AudioError: missing or unparsable file, or metadata that is not a JSON object.
    """
    path = Path(path)
    _require_file(path)
    tag_format = _format_of(path)[2]
    try:
        text = tags.read_tag(path, tag_format)
    except tags.MutagenError as exc:
        raise AudioError(str(path), f"cannot read tags ({exc})") from exc
    source = "tag"
    if text is None:
        side = sidecar_path(path)
        if not side.is_file():
            return {}
        text, source = side.read_text(encoding="utf-8"), str(side)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AudioError(str(path), f"metadata {source} is not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise AudioError(str(path), f"metadata {source} is not a JSON object")
    return value
