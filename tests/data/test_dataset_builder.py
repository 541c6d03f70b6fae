"""`encore dataset build`: good files in the manifest, every bad file named in the summary, exit 0."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from encore.data.dataset_builder import (
    INSTRUMENTAL,
    BuildOptions,
    Label,
    Manifest,
    build_dataset,
    summarize,
)
from encore.errors import InvalidRequest
from encore.frontends.train_cli import register

RATE = 8000


def _tone(seconds: float = 1.5, hz: float = 330.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    x = 0.3 * np.sin(2 * np.pi * hz * t) * np.exp(-(t % 0.5) * 4)
    return np.stack([x, x], axis=1).astype(np.float32)


def _write(path: Path, fmt: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, _tone(**kw), RATE, format=fmt)
    return path


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


def _make_unreadable(path: Path) -> str:
    """A file the builder cannot read. Tests run as root, which reads any file regardless of permissions, so
    as root this is a FIFO named like audio (opening it would block forever; it must be refused unopened)."""
    if os.geteuid() == 0:
        os.mkfifo(path)
        return "not a regular file (FIFO)"
    _write(path)
    path.chmod(0)
    return "permission denied"


@pytest.fixture()
def mixed_folder(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "songs"
    good = [_write(root / "a" / "one.wav"), _write(root / "a" / "b" / "two.flac", hz=440.0),
            _write(root / "three.ogg", "OGG", hz=262.0)]
    (root / "junk").mkdir()
    bad = {}
    (root / "junk" / "corrupt.flac").write_bytes(b"fLaC" + bytes(range(256)) * 4)  # 1. corrupt
    bad["junk/corrupt.flac"] = "not a decodable audio file"
    (root / "junk" / "empty.wav").write_bytes(b"")  # 2. empty
    bad["junk/empty.wav"] = "empty file (0 bytes)"
    _write(root / "junk" / "flac_named.wav", "FLAC")  # 3. wrong extension (FLAC content named .wav)
    bad["junk/flac_named.wav"] = "wrong extension: .wav but the content is FLAC"
    (root / "junk" / "notes.mp3").write_text("these are my lyrics, not an mp3\n" * 20)  # 3b. text named .mp3
    bad["junk/notes.mp3"] = "not a decodable audio file"
    # 4. one hour long (1 kHz 8-bit mono keeps the file at 3.6 MB)
    sf.write(root / "junk" / "hour.wav", np.zeros((3600 * 1000, 1), np.float32), 1000, subtype="PCM_U8")
    bad["junk/hour.wav"] = "too long: 3600 s"
    bad["junk/locked.wav"] = _make_unreadable(root / "junk" / "locked.wav")  # 5. unreadable
    (root / "junk" / "song.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A ")  # unsupported container
    bad["junk/song.m4a"] = "unsupported format .m4a"
    (root / "cover.jpg").write_bytes(b"\xff\xd8\xff")  # not audio at all: ignored, not "bad"
    return root, {**bad, **{str(p.relative_to(root)): "" for p in good}}


def test_build_skips_every_bad_file_and_exits_zero(mixed_folder, tmp_path: Path, capsys) -> None:
    root, expected = mixed_folder
    out = tmp_path / "manifest.json"
    assert _cli(["dataset", "build", str(root), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    manifest = Manifest.load(out)
    good = sorted(k for k, v in expected.items() if not v)
    assert sorted(s.path for s in manifest.samples) == good
    reasons = {s.path: s.reason for s in manifest.skipped}
    for path, reason in expected.items():
        if reason:
            assert reason in reasons[path], (path, reasons[path])
            assert f"{path}: {reasons[path]}" in text  # the summary names each bad file with its reason
    assert manifest.ignored == 1
    assert manifest.root_path(out).resolve() == root.resolve()


def test_json_summary_and_no_usable_files(tmp_path: Path, capsys) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.wav").write_bytes(b"")
    assert _cli(["dataset", "build", str(tmp_path / "bad"), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["usable"] == [] and report["skipped"][0]["path"] == "x.wav"
    with pytest.raises(InvalidRequest, match="not a folder"):
        build_dataset(tmp_path / "missing")


def test_sidecars_csv_and_precedence(tmp_path: Path) -> None:
    root = tmp_path / "songs"
    one, two = _write(root / "one.wav"), _write(root / "sub" / "two.wav")
    one.with_suffix(".caption.txt").write_text("dreamy synth pop\n")
    one.with_suffix(".txt").write_text("[Verse]\nplain txt lyrics")
    one.with_suffix(".lyrics.txt").write_text("[Chorus]\nlyrics file wins over .txt")
    two.with_suffix(".caption.txt").write_text("sidecar caption loses to the CSV")
    csv_path = tmp_path / "meta.csv"
    csv_path.write_text("File,Caption,BPM,Key,TimeSignature,Language\n"
                        "sub/two.wav,csv caption,124.4,F# minor,3/4,fr\n"
                        "one.wav,,abc,,,xx\n"
                        "ghost.wav,nobody,100,,,\n")
    manifest = build_dataset(root, BuildOptions(csv_path=csv_path))
    by_path = {s.path: s for s in manifest.samples}
    s1, s2 = by_path["one.wav"], by_path["sub/two.wav"]
    assert s1.labels["caption"] == Label("dreamy synth pop", 1.0, "sidecar")
    assert s1.value("lyrics") == "[Chorus]\nlyrics file wins over .txt"
    assert s1.labels["language"] == Label("unknown", 0.0, "default")  # "xx" rejected
    assert s2.labels["caption"] == Label("csv caption", 1.0, "csv")
    assert (s2.value("bpm"), s2.value("keyscale"), s2.value("timesignature"), s2.value("language")) == (
        124, "F# minor", 3, "fr")
    assert s2.value("lyrics") == INSTRUMENTAL and s2.labels["lyrics"].source == "default"
    warnings = "\n".join(manifest.warnings)
    assert "bpm 'abc'" in warnings and "language 'xx'" in warnings and "'ghost.wav' matches no usable" in warnings
    assert s1.id == "one" and s2.id == "sub_two"


@pytest.mark.parametrize("position, expected", [("prepend", "mytag, calm piano"), ("append", "calm piano, mytag"),
                                                ("replace", "mytag")])
def test_activation_tag(tmp_path: Path, position: str, expected: str) -> None:
    song = _write(tmp_path / "s.wav")
    song.with_suffix(".caption.txt").write_text("calm piano")
    manifest = build_dataset(tmp_path, BuildOptions(activation_tag="mytag", tag_position=position))
    assert manifest.caption_for(manifest.samples[0]) == expected
    assert manifest.samples[0].value("caption") == "calm piano"  # the raw caption is kept for review


def test_listener_fills_gaps_and_agreement_raises_confidence(tmp_path: Path) -> None:
    song = _write(tmp_path / "s.wav", seconds=8.0)
    song.with_suffix(".caption.txt").write_text("person-written caption")
    calls = []

    def listener(path: Path) -> dict[str, Label]:
        calls.append(path)
        return {"caption": Label("planner caption", 0.6, "planner"), "lyrics": Label("la la", 0.6, "planner"),
                "timesignature": Label(3, 0.6, "planner"), "bpm": Label(120, 0.6, "planner"),
                "genres": Label("ignored field", 0.6, "planner")}

    sample = build_dataset(tmp_path, BuildOptions(listener=listener)).samples[0]
    assert calls == [song]
    assert sample.labels["caption"].source == "sidecar"  # a person's caption beats the planner's
    assert sample.value("lyrics") == "la la" and sample.value("timesignature") == 3
    bpm = sample.labels["bpm"]  # the tone pulses every 0.5 s: the signal says 120 too
    assert bpm.value == 120 and bpm.source == "signal+planner" and bpm.confidence > 0.6
    assert "genres" not in sample.labels


def test_manifest_round_trip_edit_and_malformed(tmp_path: Path) -> None:
    _write(tmp_path / "songs" / "s.wav")
    manifest = build_dataset(tmp_path / "songs", BuildOptions(activation_tag="t"))
    path = manifest.save(tmp_path / "m.json")
    data = json.loads(path.read_text())
    data["samples"][0]["labels"]["caption"] = {"value": "edited by hand", "confidence": 1.0, "source": "user"}
    path.write_text(json.dumps(data))
    again = Manifest.load(path)
    assert again.caption_for(again.samples[0]) == "t, edited by hand"
    assert summarize(again).startswith("1 usable audio file(s)")
    path.write_text(json.dumps({**data, "samples": [{"id": "x"}]}))
    with pytest.raises(InvalidRequest, match="malformed"):
        Manifest.load(path)
    path.write_text("{}")
    with pytest.raises(InvalidRequest, match="encore-dataset"):
        Manifest.load(path)
