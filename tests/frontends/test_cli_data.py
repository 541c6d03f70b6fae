"""`encore data build`: flags reach `build_corpus`, errors name the flag, a real one-clip build resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from encore.frontends import cli


def _run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_flags_reach_the_builder_and_the_summary_is_printed(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from encore.data import corpus

    seen: dict[str, object] = {}

    def fake(out_dir: str, **kw: object) -> dict[str, object]:
        seen.update(kw, out_dir=out_dir)
        return {"clips": 7, "rendered": 4, "skipped": 3, "audio_seconds": 20.0, "cpu_seconds": 1.0,
                "wall_seconds": 2.0}

    monkeypatch.setattr(corpus, "build_corpus", fake)
    code, out, _ = _run(capsys, "data", "build", tmp_path / "c", "--clips", 7, "--seed", 3, "--workers", 2,
                        "--clip-seconds", 5, "--json")
    assert code == 0
    assert seen == {"out_dir": str(tmp_path / "c"), "num_clips": 7, "hours": None, "seed": 3, "workers": 2,
                    "clip_seconds": 5.0}
    assert json.loads(out) == {"corpus": str(tmp_path / "c"), "clips": 7, "rendered": 4, "skipped": 3,
                               "audio_seconds": 20.0, "cpu_seconds": 1.0, "wall_seconds": 2.0}
    code, out, _ = _run(capsys, "data", "build", tmp_path / "c", "--hours", 0.5)
    assert code == 0 and seen["hours"] == 0.5 and seen["num_clips"] is None
    assert out.startswith(f"{tmp_path / 'c'}: 7 clips (4 rendered, 3 already there)")


@pytest.mark.parametrize("argv, flag", [
    (("--clips", 0), "--clips"),
    (("--hours", -1), "--hours"),
    (("--clips", 2, "--workers", 0), "--workers"),
    (("--clips", 2, "--clip-seconds", 0.1), "--clip-seconds"),
])
def test_bad_values_are_refused_by_flag_before_anything_is_written(
        argv: tuple[object, ...], flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "corpus"
    code, _, err = _run(capsys, "data", "build", out_dir, *argv)
    assert code == cli.EXIT_USAGE
    assert err.startswith(f"encore data: error: {flag}: ") and "Traceback" not in err
    assert not out_dir.exists()


def test_size_is_required_and_exclusive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ((), ("--clips", 2, "--hours", 1)):
        with pytest.raises(SystemExit) as exc:
            cli.main(["data", "build", str(tmp_path), *map(str, argv)])
        assert exc.value.code == 2
    assert "--clips" in capsys.readouterr().err


def test_a_folder_built_with_another_seed_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dataclasses import asdict

    from encore.data.corpus import CORPUS_FORMAT
    from encore.data.plan import CorpusConfig

    meta = {"format": CORPUS_FORMAT, "seed": 5, "config": json.loads(json.dumps(asdict(CorpusConfig())))}
    (tmp_path / "corpus.json").write_text(json.dumps(meta), encoding="utf-8")
    code, _, err = _run(capsys, "data", "build", tmp_path, "--clips", 1, "--seed", 6)
    assert code == cli.EXIT_USAGE and err.startswith("encore data: error: OUT_DIR: ")
    assert "other settings" in err and not (tmp_path / "clips").exists()
