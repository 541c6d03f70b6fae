"""CLI options derive from the request dataclasses: mapping, defaults parity, help text, argument errors.

These run `--print-request` (no model is loaded) or only build the parser.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from encore.frontends import argspec, cli
from encore.pipeline.request import GenerationRequest, request_from_dict, request_to_dict
from encore.tasks.spec import Repaint


def _print_request(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert cli.main([*argv, "--print-request"]) == 0
    return json.loads(capsys.readouterr().out)


def _leaf_paths(cls: type, prefix: str = "") -> set[str]:
    hints = typing.get_type_hints(cls)
    out: set[str] = set()
    for f in dataclasses.fields(cls):
        tp, _ = argspec.strip_optional(hints[f.name])
        path = f"{prefix}{f.name}"
        if f.name == "task":
            continue
        if dataclasses.is_dataclass(tp):
            out |= _leaf_paths(tp, path + ".")
        else:
            out.add(path)
    return out


def test_every_request_field_has_an_option() -> None:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    specs = sub.choices["repaint"].get_default("specs")
    covered = {s.path for s in specs}
    assert _leaf_paths(GenerationRequest) <= covered
    assert {"task.source", "task.start_s", "task.end_s"} <= covered


def test_no_flags_gives_the_dataclass_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    data = _print_request(capsys, "generate")
    assert request_from_dict(data) == GenerationRequest()
    assert data == request_to_dict(GenerationRequest())


def test_flags_map_to_request_fields(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = _print_request(
        capsys, "generate", "--caption", "dark techno", "--lyrics", "[Verse]\nla", "--language", "en",
        "--bpm", "128", "--keyscale", "F# minor", "--timesignature", "4", "--duration", "12", "--seed", "1",
        "--steps", "8", "--shift", "2", "--cfg-interval", "0", "0.5", "--timesteps", "1,0.75", "0.5",
        "--solver", "sde", "--think", "--lm-temperature", "0.5", "--lm-fill", "bpm,caption",
        "--normalize", "loudness", "--target-lufs", "-16", "--batch-size", "2",
        "--lora", "a/b:0.5", "--lora", "c", "--reference-audio", "ref.wav", "-o", str(tmp_path / "x.wav"))
    req = request_from_dict(data)
    assert req.text.caption == "dark techno" and req.text.lyrics == "[Verse]\nla"
    assert (req.text.bpm, req.text.keyscale, req.text.timesignature, req.text.duration_s) == (128, "F# minor", 4, 12.0)
    assert req.seeds == (1,) and req.batch_size == 2 and req.item_seeds() == (1, 2)
    assert req.diffusion.num_steps == 8 and req.diffusion.shift == 2.0 and req.diffusion.solver == "sde"
    assert req.diffusion.cfg_interval == (0.0, 0.5) and req.diffusion.timesteps == (1.0, 0.75, 0.5)
    assert req.planner is not None and req.planner.think and req.planner.temperature == 0.5
    assert req.planner.fill == ("bpm", "caption")
    assert req.output.format == "wav" and req.output.normalize == "loudness" and req.output.target_lufs == -16.0
    assert [(lo.path, lo.scale) for lo in req.loras] == [("a/b", 0.5), ("c", 1.0)]
    assert req.reference_audio == "ref.wav"


def test_task_commands_build_their_task(capsys: pytest.CaptureFixture[str]) -> None:
    data = _print_request(capsys, "repaint", "song.wav", "--start", "10", "--end", "20")
    assert request_from_dict(data).task == Repaint(source="song.wav", start_s=10.0, end_s=20.0)
    data = _print_request(capsys, "complete", "song.wav", "--tracks", "drums,bass", "vocals")
    assert data["task"] == {"kind": "complete", "source": "song.wav", "tracks": ["drums", "bass", "vocals"]}
    data = _print_request(capsys, "extend", "song.wav", "--seconds", "15", "--side", "before", "--context", "20")
    assert data["task"] == {"kind": "extend", "source": "song.wav", "seconds": 15.0, "side": "before",
                            "context_s": 20.0}
    data = _print_request(capsys, "cover", "song.wav", "--cover-strength", "0.6")
    assert data["task"]["cover_strength"] == 0.6


def test_request_file_is_loaded_and_flags_override(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "req.json"
    path.write_text(json.dumps({"text": {"caption": "from file", "bpm": 90}, "seeds": [4]}))
    data = _print_request(capsys, "generate", "--request", str(path), "--bpm", "100")
    assert data["text"]["caption"] == "from file" and data["text"]["bpm"] == 100 and data["seeds"] == [4]
    sidecar = tmp_path / "song.flac.json"
    sidecar.write_text(json.dumps({"request": data, "seed": 4}))
    assert _print_request(capsys, "generate", "--request", str(sidecar)) == data


def test_lyrics_from_a_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "lyrics.txt").write_text("[Chorus]\nsing\n", encoding="utf-8")
    data = _print_request(capsys, "generate", "--lyrics", f"@{tmp_path / 'lyrics.txt'}")
    assert data["text"]["lyrics"] == "[Chorus]\nsing\n"


def test_help_text_comes_from_field_docstrings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["repaint", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Tempo in beats per minute, 30–300." in text
    assert "Window start in seconds from the source start" in text
    assert "--duration SECONDS" in text and "exit codes:" in text


@pytest.mark.parametrize(("argv", "flag"), [
    (["generate", "--bpm", "0"], "--bpm"),
    (["generate", "--duration", "1000"], "--duration"),
    (["generate", "--steps", "0"], "--num-steps"),
    (["extract", "song.wav", "--track", "kazoo"], "--track"),
    (["generate", "--keyscale", "H major"], "--keyscale"),
    (["generate", "--format", "wav", "-o", "x.flac"], "output.format"),
    (["generate", "-o", "x.aiff"], "--output"),
    (["generate", "--lyrics", "@/no/such/lyrics.txt"], "--lyrics"),
    (["repaint", "song.wav", "--start", "5", "--end", "2"], "--end"),
])
def test_invalid_values_exit_2_with_one_line_naming_the_flag(capsys: pytest.CaptureFixture[str],
                                                             argv: list[str], flag: str) -> None:
    assert cli.main([*argv, "--print-request"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0] and flag in err[0]


@pytest.mark.parametrize("argv", [["generate", "--bpm", "fast"], ["frobnicate"], ["extract"],
                                  ["generate", "--solver", "rk4"], ["generate", "--device", "tpu"]])
def test_argparse_errors_are_one_line_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == cli.EXIT_USAGE
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_parser_and_print_request_do_not_import_torch() -> None:
    code = ("import sys; from encore.frontends import cli; cli.build_parser(); "
            "rc = cli.main(['generate', '--caption', 'x', '--print-request']); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["text"]["caption"] == "x"
