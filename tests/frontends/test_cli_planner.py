"""`encore plan|understand|create|format` end to end on a tiny random planner and tiny checkpoint.

Commands run in-process through `cli.main`; `--json` output is validated against the published schemas, and
malformed inputs must fail with exit 2 and the field named before any model loads.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml
from helpers.tiny_pipeline import VAE_1K, write_tiny, write_wav

from encore.frontends import cli, planner_cli
from encore.frontends.planner_schemas import SCHEMAS
from encore.pipeline.random_planner import write_random_planner

FAST = ("--lm-max-caption-tokens", "8", "--lm-max-new-tokens", "200")
"""Short random decodes: the metas and a little lyrics text, not up to 512 caption tokens."""
_PLANNERS: dict[tuple[str, str], object] = {}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Official-layout root: a tiny turbo DiT (1 kHz VAE) with a random planner folder beside it."""
    dit = write_tiny(tmp_path_factory.mktemp("ckpt"), vae=VAE_1K)
    write_random_planner(dit.parent / "acestep-5Hz-lm-tiny", seed=0)
    return dit.parent


@pytest.fixture(scope="module")
def lm(ckpt: Path) -> Path:
    return ckpt / "acestep-5Hz-lm-tiny"


@pytest.fixture(autouse=True)
def _load_each_planner_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reuse a loaded planner across tests (the first load of each folder goes through the real loader)."""
    from encore.pipeline.loading import resolve_device

    real = planner_cli.load_planner

    def cached(path: Path, device: object) -> object:
        key = (str(path), str(resolve_device(device)))  # type: ignore[arg-type]
        if key not in _PLANNERS:
            _PLANNERS[key] = real(path, device)
        return _PLANNERS[key]

    monkeypatch.setattr(planner_cli, "load_planner", cached)


@pytest.fixture()
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any planner or pipeline is loaded."""
    from encore.pipeline.pipeline import Pipeline

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded before the input was validated")

    monkeypatch.setattr(planner_cli, "load_planner", boom)
    monkeypatch.setattr(Pipeline, "from_pretrained", boom)


def _run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _validated(command: str, stdout: str) -> dict[str, Any]:
    doc = json.loads(stdout)
    jsonschema_rs.validator_for(SCHEMAS[command]).validate(doc)
    return doc


def test_schemas_reject_malformed_documents() -> None:
    """The schemas constrain values, not just keys (so the validations below can fail)."""
    item = {"caption": "c", "bpm": 120, "duration": 2.0, "keyscale": "F# minor", "timesignature": 4,
            "language": None, "codes": [0, 63_999], "seed": 0, "cot": "<think>\nbpm: 120\n</think>"}
    check = jsonschema_rs.validator_for(SCHEMAS["plan"]).is_valid
    assert check({"ok": True, "plans": [item]})
    for bad in ({"bpm": "fast"}, {"keyscale": "H major"}, {"timesignature": 5}, {"codes": [64_000]},
                {"cot": "no think"}, {"extra": 1}):
        assert not check({"ok": True, "plans": [{**item, **bad}]}), bad
    assert not check({"ok": True, "plans": []})


def test_plan_json_user_metas_win_and_codes_are_exact(lm: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "plan.yaml"
    code, stdout, err = _run(capsys, "plan", "--planner", lm, "--caption", "a warm house track", "--lyrics",
                             "[Verse]\nla la", "--bpm", "97", "--duration", "2.2", "--language", "de", "--seed", 5,
                             "--batch", 2, "--lm-top-k", 50, *FAST, "-o", out, "--json")
    assert code == 0, err
    doc = _validated("plan", stdout)
    assert doc["output"] == str(out) and [p["seed"] for p in doc["plans"]] == [5, 6]
    for p in doc["plans"]:
        assert (p["bpm"], p["duration"], p["language"]) == (97, 2.2, "de")
        assert len(p["codes"]) == 11 and "bpm: 97\n" in p["cot"]
    assert doc["plans"][0]["cot"] == doc["plans"][1]["cot"] and doc["plans"][0]["codes"] != doc["plans"][1]["codes"]
    saved = yaml.safe_load(out.read_text(encoding="utf-8"))
    assert saved == {"plans": doc["plans"]}


def test_plan_finds_planner_next_to_checkpoint_and_prints_yaml(ckpt: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, err = _run(capsys, "plan", "--checkpoint", ckpt, "--caption", "calm piano", "--keyscale",
                             "eb MAJOR", "--timesignature", "3/4", "--seed", 1, "--metas-only", *FAST)
    assert code == 0, err
    doc = yaml.safe_load(stdout)
    jsonschema_rs.validator_for(SCHEMAS["plan"]).validate({"ok": True, **doc})
    (p,) = doc["plans"]
    assert p["keyscale"] == "Eb major" and p["timesignature"] == 3 and p["codes"] == []


def test_understand_audio_to_codes_to_description(ckpt: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    song = write_wav(tmp_path / "song.wav", 3.2, 1000, seed=3)
    code, stdout, err = _run(capsys, "understand", song, "--checkpoint", ckpt / "acestep-v15-turbo", "--seed", 4,
                             "--device", "cpu", *FAST, "--json")
    assert code == 0, err
    doc = _validated("understand", stdout)
    assert doc["source"] == str(song) and doc["seed"] == 4
    assert len(doc["codes"]) == math.ceil(3.2 * 25 / 5)  # 25 Hz latents pooled 5 to one code


def test_audio_codes_are_the_tokenizer_codes_of_the_posterior_mean(ckpt: Path, tmp_path: Path) -> None:
    import torch

    from encore.pipeline.pipeline import Pipeline

    song = write_wav(tmp_path / "song.wav", 2.1, 1000, seed=5)
    pipe = Pipeline.from_pretrained(ckpt, device="cpu", dtype="float32")
    codes = pipe.audio_codes(song)
    assert len(codes) == math.ceil(2.1 * 25 / 5) and codes == pipe.audio_codes(song)
    with torch.inference_mode():
        latents = pipe.encode_audio(pipe.load_audio(song), sample=False)
        direct = pipe.fsq_round_trip(latents[0])  # the cover path: latents -> FSQ -> hints
        via_codes = pipe.codes_to_hints(codes)[: latents.shape[1]]
    torch.testing.assert_close(via_codes, direct)


def test_create_json(lm: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, err = _run(capsys, "create", "a sad piano ballad about rain", "--instrumental", "--language",
                             "EN", "--planner", lm, "--seed", 2, *FAST, "--json")
    assert code == 0, err
    doc = _validated("create", stdout)
    assert doc["instrumental"] is True and doc["language"] == "en" and doc["seed"] == 2


def test_format_json_user_metas_win(lm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lyrics = tmp_path / "lyrics.txt"
    lyrics.write_text("[Verse]\nrain on the window\n", encoding="utf-8")
    code, stdout, err = _run(capsys, "format", "--caption", "sad piano", "--lyrics", f"@{lyrics}", "--bpm", "90",
                             "--keyscale", "c# minor", "--duration", "30", "--planner", lm, "--seed", 0, *FAST, "--json")
    assert code == 0, err
    doc = _validated("format", stdout)
    assert (doc["bpm"], doc["keyscale"], doc["duration"]) == (90, "C# minor", 30)


@pytest.mark.parametrize(("argv", "flag", "field"), [
    (["plan", "--caption", "x", "--bpm", "fast"], "--bpm", "bpm"),
    (["plan", "--caption", "x", "--keyscale", "H major"], "--keyscale", "keyscale"),
    (["format", "--caption", "x", "--duration", "-3"], "--duration", "duration"),
    (["format", "--caption", "x", "--timesignature", "5"], "--timesignature", "timesignature"),
    (["create", "a song", "--language", "xx"], "--language", "language"),
    (["plan", "--caption", "x", "--lm-temperature", "-1"], "--lm-temperature", "sampling.temperature"),
    (["plan", "--caption", "x", "--batch", "9"], "--batch", "batch"),
    (["understand", "song.wav", "--lm-top-p", "2"], "--lm-top-p", "sampling.top_p"),
])
def test_malformed_input_exits_2_naming_the_field_before_any_model_loads(
        argv: list[str], flag: str, field: str, no_model: None, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, err = _run(capsys, *argv, "--planner", tmp_path / "missing", "--json")
    assert code == cli.EXIT_USAGE
    assert err.count("\n") == 1 and f"{flag} ({field}):" in err
    assert json.loads(stdout)["error"]["field"] == field


def test_missing_planner_is_a_one_line_error(ckpt: Path, tmp_path_factory: pytest.TempPathFactory,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    bare = write_tiny(tmp_path_factory.mktemp("bare"), vae=VAE_1K).parent
    code, _, err = _run(capsys, "create", "a song", "--checkpoint", bare)
    assert code == cli.EXIT_USAGE and err.count("\n") == 1
    assert "--planner" in err and "acestep-5Hz-lm-" in err and str(bare) in err
    code, _, err = _run(capsys, "plan", "--caption", "x", "--checkpoint", tmp_path_factory.mktemp("e") / "none")
    assert code == cli.EXIT_USAGE and "--planner" in err and "cannot be read" in err
    missing = ckpt / "acestep-5Hz-lm-nope"
    code, _, err = _run(capsys, "format", "--caption", "x", "--planner", missing)
    assert code == cli.EXIT_CHECKPOINT and str(missing) in err and err.count("\n") == 1


def test_understand_missing_audio_exits_3_before_loading(no_model: None, ckpt: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.wav"
    code, _, err = _run(capsys, "understand", missing, "--checkpoint", ckpt)
    assert code == cli.EXIT_AUDIO and str(missing) in err and err.count("\n") == 1


def _console_script() -> str:
    exe = shutil.which("encore", path=str(Path(sys.executable).parent))
    assert exe is not None, "console script `encore` not installed"
    return exe


def test_console_script_lists_the_planner_commands() -> None:
    proc = subprocess.run([_console_script(), "--help"], check=True, capture_output=True, text=True, timeout=60)
    for command in ("plan", "understand", "create", "format"):
        assert f"    {command} " in proc.stdout, command


@pytest.mark.slow  # the process imports torch to validate: 5-15 s on a busy 2-core machine
def test_console_script_rejects_bad_metas(tmp_path: Path) -> None:
    exe = _console_script()
    proc = subprocess.run([exe, "plan", "--caption", "x", "--keyscale", "H major", "--planner", str(tmp_path)],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("encore plan: error: --keyscale (keyscale):") and proc.stderr.count("\n") == 1


def test_server_understand_job_runs_on_the_real_pipeline(ckpt: Path, lm: Path, tmp_path: Path) -> None:
    """The server worker's understand path (`run_planner`) on a real pipeline: the codes come from
    `Pipeline.audio_codes` (a pipeline without that method used to fail every understand job)."""
    from encore.frontends.server.worker import CancelFlag, run_planner
    from encore.pipeline.pipeline import Pipeline

    song = write_wav(tmp_path / "song.wav", 2.1, 1000, seed=6)
    pipe = Pipeline.from_pretrained(ckpt / "acestep-v15-turbo", device="cpu", dtype="float32", planner=lm)
    plan = run_planner(pipe, "understand", {"audio": str(song)}, progress=lambda *a: None, cancel=CancelFlag())
    assert plan["codes"] == pipe.audio_codes(song) and len(plan["codes"]) == math.ceil(2.1 * 25 / 5)
    assert {"caption", "lyrics", "bpm", "keyscale", "duration_s"} <= set(plan)


def test_server_understand_temperature_reaches_the_planner(monkeypatch: pytest.MonkeyPatch) -> None:
    """An understand job's `temperature` is used (no value: understand's own 0.3), never silently dropped."""
    from encore.frontends.server.worker import CancelFlag, run_planner
    from encore.pipeline import planning

    seen: list[float] = []

    def fake_understand(planner: object, codes: list[int], *, sampling: object, cancel: object) -> object:
        seen.append(sampling.temperature)  # type: ignore[attr-defined]
        return planning.Understanding(caption="c", lyrics="", bpm=90, duration=10, keyscale="C major",
                                      timesignature=4, language=None)

    class Pipe:
        planner = object()

        def audio_codes(self, path: str) -> list[int]:
            return [1, 2, 3, 4, 5]

    monkeypatch.setattr(planning, "understand", fake_understand)
    for args in ({"audio": "x.wav"}, {"audio": "x.wav", "temperature": 0.9}):
        run_planner(Pipe(), "understand", args, progress=lambda *a: None, cancel=CancelFlag())
    assert seen == [planning.UNDERSTAND_SAMPLING.temperature, 0.9] and seen[0] == 0.3


def test_codes_command_needs_no_planner(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`encore codes`: the pipeline's codes (no planner loaded), also as <|audio_code_N|> text; -o writes them."""
    from encore.pipeline.pipeline import Pipeline

    song = write_wav(tmp_path / "song.wav", 2.1, 1000, seed=7)
    out = tmp_path / "codes.json"
    code, stdout, err = _run(capsys, "codes", song, "--checkpoint", ckpt / "acestep-v15-turbo", "--device", "cpu",
                             "--json", "-o", out)
    assert code == 0, err
    doc = _validated("codes", stdout)
    expected = Pipeline.from_pretrained(ckpt / "acestep-v15-turbo", device="cpu", dtype="float32").audio_codes(song)
    assert doc["codes"] == expected and doc["seconds"] == len(expected) / 5
    assert doc["tokens"] == "".join(f"<|audio_code_{c}|>" for c in expected)
    assert json.loads(out.read_text())["codes"] == expected
    code, _, err = _run(capsys, "codes", tmp_path / "missing.wav", "--checkpoint", ckpt / "acestep-v15-turbo")
    assert code == 3 and "missing.wav" in err
