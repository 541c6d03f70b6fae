"""Generation metadata embedded in audio files (mutagen): one JSON text tag per file.

FLAC and Ogg Vorbis carry it as the Vorbis comment `ENCORE_METADATA`; MP3 and WAV as an ID3v2.4 `TXXX` frame
with that description (WAV stores ID3 in its `id3 ` RIFF chunk). Only `encore.audio.io` calls this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import mutagen
from mutagen.flac import FLAC
from mutagen.id3 import ID3, TXXX, ID3NoHeaderError
from mutagen.oggvorbis import OggVorbis
from mutagen.wave import WAVE

TAG_KEY = "ENCORE_METADATA"
"""Vorbis comment name / ID3 TXXX description of the JSON tag."""

TagFormat = Literal["wav", "flac", "mp3", "ogg"]


def write_tag(path: Path, fmt: TagFormat, text: str) -> None:
    """Stores `text` as the metadata tag of the audio file at `path` (written in format `fmt`).

    Raises:
        mutagen.MutagenError: the file could not be parsed or written.
    """
    if fmt in ("flac", "ogg"):
        vorbis = FLAC(path) if fmt == "flac" else OggVorbis(path)
        if vorbis.tags is None:
            vorbis.add_tags()
        vorbis[TAG_KEY] = [text]
        vorbis.save()
        return
    frame = TXXX(encoding=3, desc=TAG_KEY, text=[text])  # encoding 3 = UTF-8
    if fmt == "wav":
        wave = WAVE(path)
        if wave.tags is None:
            wave.add_tags()
        wave.tags.add(frame)
        wave.save()
        return
    try:
        id3 = ID3(path)
    except ID3NoHeaderError:
        id3 = ID3()
    id3.add(frame)
    id3.save(path, v2_version=4)


def read_tag(path: Path, fmt: TagFormat) -> str | None:
    """The metadata tag text of the file at `path`, or None if it has none.

    Raises:
        mutagen.MutagenError: the file could not be parsed.
    """
    if fmt in ("flac", "ogg"):
        vorbis = FLAC(path) if fmt == "flac" else OggVorbis(path)
        values = vorbis.get(TAG_KEY) if vorbis.tags is not None else None
        return values[0] if values else None
    if fmt == "wav":
        tags = WAVE(path).tags
    else:
        try:
            tags = ID3(path)
        except ID3NoHeaderError:
            return None
    if tags is None:
        return None
    frame = tags.get(f"TXXX:{TAG_KEY}")
    return str(frame.text[0]) if frame is not None and frame.text else None


MutagenError = mutagen.MutagenError
