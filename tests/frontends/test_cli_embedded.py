"""`encore generate`/`encore demo` without --checkpoint: the bundled embedded model when present, a one-line error
(generate) or the announced random fallback (demo) when absent. The packaged folder is pointed at tmp dirs."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf
from helpers.tiny_embedded import write_tiny_embedded

from encore.audio.io import read_metadata
from encore.frontends import cli
from encore.pipeline import presets


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_embedded(tmp_path_factory.mktemp("embedded") / "export")


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("ENCORE_CHECKPOINT", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_defaults_to_the_bundled_model(export: Path, workdir: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(presets, "embedded_dir", lambda: export)
    out = workdir / "song.flac"
    code, stdout, err = _run(capsys, "generate", "--caption", "jazz trio", "--duration", "1", "--seed", "2",
                             "--device", "cpu", "-o", out, "-q")
    assert code == cli.EXIT_OK, err
    assert str(out) in stdout
    info = sf.info(out)
    assert (info.samplerate, info.channels, info.frames) == (48000, 2, 48000)
    assert read_metadata(out)["model"] == "embedded"


def test_generate_without_bundled_model_fails_in_one_line(workdir: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(presets, "embedded_dir", lambda: workdir / "absent")
    code, stdout, err = _run(capsys, "generate", "--caption", "x", "--duration", "1", "-o", workdir / "x.flac")
    assert code == cli.EXIT_CHECKPOINT and stdout == ""
    assert len(err.strip().splitlines()) == 1
    assert "not bundled" in err and "encore download turbo" in err
    assert list(workdir.iterdir()) == []


def test_env_checkpoint_wins_over_the_bundled_model(export: Path, workdir: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(presets, "embedded_dir", lambda: export)
    monkeypatch.setenv("ENCORE_CHECKPOINT", str(workdir / "elsewhere"))
    code, _, err = _run(capsys, "generate", "--duration", "1", "-o", workdir / "x.flac", "-q")
    assert code == cli.EXIT_CHECKPOINT and "elsewhere" in err


def test_demo_uses_the_bundled_model_and_says_where_it_wrote(
        export: Path, workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(presets, "embedded_dir", lambda: export)
    code, stdout, err = _run(capsys, "demo", "--duration", "1", "--cache-dir", workdir / "cache", "-q")
    assert code == cli.EXIT_OK, err
    written = workdir / "encore-demo.flac"
    assert f"wrote {written}" in stdout and "embedded model" in stdout and str(export) in stdout
    assert "RANDOM" not in err and not (workdir / "cache").exists()
    assert sf.info(written).samplerate == 48000
    assert read_metadata(written)["model"] == "embedded"


def test_variant_picks_the_dit_of_a_two_model_bundle(export: Path, workdir: Path, tmp_path_factory,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """A bundle with turbo and base (as the shipped one): the turbo by default, `--variant base` for the base,
    and an unknown variant is a one-line checkpoint error naming what there is."""
    import json
    import shutil

    bundle = Path(shutil.copytree(export, tmp_path_factory.mktemp("bundle") / "export"))
    shutil.copytree(bundle / "acestep-v15-turbo", bundle / "acestep-v15-base")
    config = json.loads((bundle / "acestep-v15-base" / "config.json").read_text())
    config.update(is_turbo=False, model_version="base")
    (bundle / "acestep-v15-base" / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(presets, "embedded_dir", lambda: bundle)
    for extra, model in (([], "embedded"), (["--variant", "base"], "embedded-base")):
        out = workdir / f"{model}.flac"
        code, _, err = _run(capsys, "generate", "--caption", "x", "--duration", "1", "--device", "cpu",
                            "-o", out, "-q", *extra)  # fmt: skip
        assert code == cli.EXIT_OK, err
        assert read_metadata(out)["model"] == model
    code, _, err = _run(capsys, "demo", "--duration", "1", "--variant", "base", "-q", "-o", workdir / "d.flac")
    assert code == cli.EXIT_OK, err
    assert read_metadata(workdir / "d.flac")["model"] == "embedded-base"
    code, stdout, err = _run(capsys, "generate", "--duration", "1", "--variant", "sft", "-o", workdir / "y.flac")
    assert code == cli.EXIT_CHECKPOINT and stdout == "" and len(err.strip().splitlines()) == 1
    assert "'sft' not found" in err and "acestep-v15-base" in err
