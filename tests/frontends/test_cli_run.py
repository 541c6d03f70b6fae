"""`encore` end to end on tiny random checkpoints: files, tags, determinism, all seven tasks, bad inputs.

Commands run in-process through `cli.main` (one subprocess test covers the console script itself).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers.tiny_pipeline import VAE_1K, VAE_48K, write_tiny, write_wav

from encore.audio.io import read_metadata, sidecar_path
from encore.frontends import cli

CAPTION = "lo-fi hip hop with dusty drums"


@pytest.fixture(scope="module")
def ckpt48(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Turbo checkpoint with the real audio geometry (48 kHz stereo, hop 1920)."""
    return write_tiny(tmp_path_factory.mktemp("ckpt48"), vae=VAE_48K)


@pytest.fixture(scope="module")
def turbo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny(tmp_path_factory.mktemp("turbo1k"), vae=VAE_1K)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny(tmp_path_factory.mktemp("base1k"), variant="base", vae=VAE_1K)


@pytest.fixture()
def song(tmp_path: Path) -> Path:
    """3.2 s stereo 16-bit source at the 1 kHz tiny VAE rate."""
    return write_wav(tmp_path / "song.wav", 3.2, 1000, seed=3)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_writes_tagged_48k_stereo_and_repeats_byte_identically(
        ckpt48: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.flac"
    argv = ("generate", "--checkpoint", ckpt48, "--caption", CAPTION, "--duration", "12", "--seed", "1",
            "-o", out)
    code, stdout, _ = _run(capsys, *argv)
    assert code == 0 and str(out) in stdout
    info = sf.info(out)
    assert (info.samplerate, info.channels, info.frames) == (48000, 2, 12 * 48000)
    meta = read_metadata(out)
    assert meta["caption"] == CAPTION and meta["seed"] == 1 and meta["task"] == "text2music"
    assert meta["model"] == "turbo" and meta["checkpoint"] == "acestep-v15-turbo" and meta["loras"] == []
    assert meta["request"]["text"]["duration_s"] == 12.0 and meta["request"]["diffusion"]["num_steps"] == 8
    assert json.loads(sidecar_path(out).read_text()) == meta
    first = out.read_bytes()
    code, _, _ = _run(capsys, *argv)
    assert code == 0
    assert out.read_bytes() == first, "same command twice must give byte-identical files"


def test_json_report_and_batch_names(turbo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = _run(capsys, "generate", "--checkpoint", turbo, "--caption", "x", "--duration", "1",
                           "--batch-size", "2", "--seed", "5", "-o", tmp_path / "song.wav", "--json")
    assert code == 0
    report = json.loads(stdout)
    paths = [Path(o["path"]) for o in report["outputs"]]
    assert paths == [tmp_path / "song-1.wav", tmp_path / "song-2.wav"]
    assert [o["seed"] for o in report["outputs"]] == [5, 6]
    assert all(p.is_file() for p in paths) and report["sample_rate"] == 1000
    assert read_metadata(paths[1])["request"]["seeds"] == [6]  # each file reproduces itself alone


def test_default_output_name_in_a_folder(turbo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = _run(capsys, "generate", "--checkpoint", turbo, "--duration", "1", "--seed", "8",
                      "-o", tmp_path, "-q")
    assert code == 0 and (tmp_path / "encore-text2music-8.flac").is_file()


@pytest.mark.parametrize(("command", "extra", "model"), [
    ("generate", ["--duration", "2"], "turbo"),
    ("cover", ["SONG", "--cover-strength", "0.5"], "turbo"),
    ("repaint", ["SONG", "--start", "1", "--end", "2"], "turbo"),
    ("extend", ["SONG", "--seconds", "1.2", "--context", "2"], "turbo"),
    ("extract", ["SONG", "--track", "vocals", "--steps", "2"], "base"),
    ("lego", ["SONG", "--track", "guitar", "--start", "0.4", "--steps", "2"], "base"),
    ("complete", ["SONG", "--tracks", "bass,drums", "--steps", "2"], "base"),
])
def test_each_task_runs_from_the_cli(command: str, extra: list[str], model: str, turbo: Path, base: Path,
                                     song: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / f"{command}.flac"
    args = [str(song) if a == "SONG" else a for a in extra]
    code, _, err = _run(capsys, command, *args, "--checkpoint", turbo if model == "turbo" else base,
                        "--caption", CAPTION, "--seed", "2", "-o", out)
    assert code == 0, err
    data, rate = sf.read(out, always_2d=True)
    assert rate == 1000 and data.shape[1] == 2 and np.isfinite(data).all()
    assert read_metadata(out)["task"] == ("text2music" if command == "generate" else command)


def test_repaint_from_the_cli_keeps_the_outside_unchanged(turbo: Path, song: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "repainted.wav"
    code, _, err = _run(capsys, "repaint", song, "--start", "1.0", "--end", "2.0", "--checkpoint", turbo,
                        "--caption", CAPTION, "--seed", "4", "-o", out, "-q")
    assert code == 0, err
    src, _ = sf.read(song, dtype="float32", always_2d=True)
    got, _ = sf.read(out, dtype="float32", always_2d=True)
    assert got.shape == src.shape
    hop, fade = 40, 10 * 40  # tiny VAE hop; cross-fade of 10 frames inside the window
    start, end = 25 * hop, 50 * hop
    outside = np.concatenate([got[:start], got[end:]])
    assert np.abs(outside - np.concatenate([src[:start], src[end:]])).max() <= 1e-4
    assert np.abs(got[start + fade:end - fade] - src[start + fade:end - fade]).max() > 1e-2


def test_turbo_refuses_base_only_tasks(turbo: Path, song: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "extract", song, "--track", "drums", "--checkpoint", turbo, "-o",
                        tmp_path / "x.flac", "-q")
    assert code == cli.EXIT_USAGE and "base model" in err
    assert not (tmp_path / "x.flac").exists()


# ---------------------------------------------------------------------------------------------- bad inputs


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    files = {}
    files["missing"] = tmp_path / "missing.wav"
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF$\x00\x00\x00WAVEfmt " + bytes(range(256)) * 4)
    files["corrupt"] = corrupt
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0, 2), dtype=np.float32), 1000)
    files["zero_length"] = empty
    hour = tmp_path / "hour.wav"  # 1 h at 1 kHz mono 8-bit: 3.6 MB file, refused from the header
    with sf.SoundFile(hour, "w", samplerate=1000, channels=1, subtype="PCM_U8") as f:
        block = np.zeros((60_000, 1), dtype=np.float32)
        for _ in range(60):
            f.write(block)
    files["one_hour"] = hour
    text = tmp_path / "notes.wav"
    text.write_text("these are not samples\n" * 50)
    files["text_as_wav"] = text
    nan = tmp_path / "nan.wav"
    data = np.zeros((2000, 2), dtype=np.float32)
    data[100, 0] = np.nan
    sf.write(nan, data, 1000, subtype="FLOAT")
    files["nan_samples"] = nan
    files["directory"] = tmp_path
    return files


BAD_SOURCES = ["missing", "corrupt", "zero_length", "one_hour", "text_as_wav", "nan_samples", "directory"]


def _assert_clean_failure(code: int, err: str, expected_code: int, out_dir: Path, before: set[Path],
                          must_mention: str) -> None:
    lines = err.strip().splitlines()
    assert code == expected_code, err
    assert len(lines) == 1 and "error" in lines[0] and must_mention in lines[0], lines
    assert set(out_dir.iterdir()) == before, "no output (or temp) file may be left behind"


@pytest.mark.parametrize("case", BAD_SOURCES)
def test_bad_source_file(case: str, turbo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    source = _bad_files(inputs)[case]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, _, err = _run(capsys, "cover", source, "--checkpoint", turbo, "-o", out_dir / "x.flac", "-q")
    _assert_clean_failure(code, err, cli.EXIT_AUDIO, out_dir, set(), source.name)


@pytest.mark.parametrize(("argv", "mention"), [
    (["repaint", "SONG", "--start", "30", "--end", "40"], "--start"),
    (["extract", "SONG", "--track", "kazoo"], "kazoo"),
    (["generate", "--bpm", "0"], "--bpm"),
    (["generate", "--duration", "1000"], "--duration"),
    (["generate", "--steps", "0"], "--num-steps"),
    (["generate", "--steps", "4"], "--num-steps"),  # turbo runs its fixed 8-step table
    (["generate", "--language", "klingon"], "--language"),
    (["generate", "--reference-audio", "MISSING"], "missing-ref.wav"),
])
def test_bad_request_values(argv: list[str], mention: str, turbo: Path, song: Path, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args = [str(song) if a == "SONG" else str(tmp_path / "missing-ref.wav") if a == "MISSING" else a for a in argv]
    code = cli.main([*args, "--checkpoint", str(turbo), "-o", str(out_dir / "x.flac"), "-q"])
    err = capsys.readouterr().err
    expected = cli.EXIT_AUDIO if mention.endswith(".wav") else cli.EXIT_USAGE
    _assert_clean_failure(code, err, expected, out_dir, set(), mention)


def test_nan_in_latents_fails_cleanly(turbo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from encore.models.dit import AceStepDiT

    original = AceStepDiT.forward
    monkeypatch.setattr(AceStepDiT, "forward", lambda self, *a, **k: original(self, *a, **k) * float("nan"))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, _, err = _run(capsys, "generate", "--checkpoint", turbo, "--duration", "1", "-o", out_dir / "x.flac",
                        "-q")
    _assert_clean_failure(code, err, cli.EXIT_NUMERICAL, out_dir, set(), "NaN")


def test_missing_or_broken_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "generate", "--checkpoint", tmp_path / "nope", "-o", tmp_path / "x.flac", "-q")
    assert code == cli.EXIT_CHECKPOINT and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_failed_batch_item_removes_the_written_ones(turbo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from encore.audio import io
    from encore.errors import AudioError

    real = io.save_audio
    calls = []

    def flaky(path, *a, **k):  # type: ignore[no-untyped-def]
        calls.append(path)
        if len(calls) == 2:
            raise AudioError(str(path), "disk full (simulated)")
        return real(path, *a, **k)

    monkeypatch.setattr(io, "save_audio", flaky)
    code, _, err = _run(capsys, "generate", "--checkpoint", turbo, "--duration", "1", "--batch-size", "2",
                        "-o", tmp_path / "b.flac", "-q")
    assert code == cli.EXIT_AUDIO and "disk full" in err
    assert list(tmp_path.iterdir()) == []


def test_demo_says_it_is_a_random_model(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from encore.pipeline import presets

    monkeypatch.setattr(presets, "embedded_dir", lambda: tmp_path / "not-bundled")  # the random fallback
    monkeypatch.chdir(tmp_path)
    code, stdout, err = _run(capsys, "demo", "--duration", "1", "--cache-dir", tmp_path / "cache", "-q")
    assert code == 0
    assert "RANDOM weights" in err and "random tiny model" in stdout
    info = sf.info(tmp_path / "encore-demo.flac")
    assert (info.samplerate, info.channels, info.frames) == (48000, 2, 48000)
    meta = read_metadata(tmp_path / "encore-demo.flac")
    assert meta["params"]["model"]["note"].startswith("random tiny") and meta["request"]["text"]["bpm"] == 120
    assert meta["request"]["text"]["keyscale"] == "A minor"
    code, _, err = _run(capsys, "demo", "--bpm", "400", "--cache-dir", tmp_path / "cache", "-q")
    assert code == cli.EXIT_USAGE and "bpm" in err and "Traceback" not in err
    code, _, err = _run(capsys, "demo", "--keyscale", "H major", "--cache-dir", tmp_path / "cache", "-q")
    assert code == cli.EXIT_USAGE and "keyscale" in err and "Traceback" not in err


def test_console_script_runs(turbo: Path, tmp_path: Path) -> None:
    exe = shutil.which("encore", path=str(Path(sys.executable).parent))
    assert exe is not None, "console script `encore` not installed"
    out = tmp_path / "cs.wav"
    proc = subprocess.run([exe, "generate", "--checkpoint", str(turbo), "--duration", "1", "--seed", "3",
                           "-o", str(out)], check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "sample" in proc.stderr  # progress lines (stderr is not a terminal: one line per stage)
    assert sf.info(out).samplerate == 1000


def test_vae_dtype_sets_the_vaes_precision_only(turbo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import torch

    from encore.pipeline.pipeline import Pipeline

    loaded: list[Pipeline] = []
    real = Pipeline.from_pretrained.__func__  # type: ignore[attr-defined]

    def spy(cls: type[Pipeline], *args: object, **kwargs: object) -> Pipeline:
        loaded.append(real(cls, *args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(Pipeline, "from_pretrained", classmethod(spy))
    for flag in ([], ["--vae-dtype", "bfloat16"]):
        code, _, err = _run(capsys, "generate", "--checkpoint", turbo, "--duration", "1", "-o", tmp_path / "x.flac",
                            "-q", *flag)  # fmt: skip
        assert code == 0, err
    plain, bf16 = loaded
    assert next(plain.vae.parameters()).dtype == torch.float32
    assert next(bf16.vae.parameters()).dtype == torch.bfloat16
    assert next(bf16.model.parameters()).dtype == torch.float32
