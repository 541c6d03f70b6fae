"""`encore batch`: a JSONL of requests, one model load, a manifest per item, reruns that skip finished work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.tiny_pipeline import VAE_1K, write_tiny

from encore.frontends import batch_cli, cli


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny(tmp_path_factory.mktemp("ckpt"), vae=VAE_1K)


def _jobs(path: Path, *lines: object) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return path


def _run(checkpoint: Path, jobs: Path, out: Path) -> int:
    return cli.main(["batch", str(jobs), "--checkpoint", str(checkpoint), "-o", str(out), "-q"])


def _manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]


GOOD = {"text": {"caption": "warm piano", "duration_s": 1.0}, "seeds": [3], "output": {"format": "wav"}}


def test_batch_records_each_item_and_reruns_only_what_is_not_done(checkpoint: Path, tmp_path: Path) -> None:
    bad = {"text": {"caption": "x", "bpm": 999}}
    jobs = _jobs(tmp_path / "jobs.jsonl", "# a comment", {**GOOD, "name": "piano"}, "", bad, "{not json",
                 {"request": {**GOOD, "seeds": [4]}})  # fmt: skip
    out = tmp_path / "out"
    assert _run(checkpoint, jobs, out) == batch_cli.EXIT_SOME_FAILED
    first = _manifest(out)
    assert [(e["line"], e["status"]) for e in first] == [(2, "ok"), (4, "failed"), (5, "failed"), (6, "ok")]
    assert first[0]["files"] == ["piano.wav"] and first[0]["seeds"] == [3]
    assert first[1]["error"]["code"] == "invalid_request" and first[1]["error"]["field"] == "text.bpm"
    assert first[2]["error"]["field"] == "line 5"
    assert first[3]["files"] == [f"{first[3]['hash']}.wav"] and (out / first[3]["files"][0]).is_file()
    written = (out / "piano.wav").stat().st_mtime_ns

    assert _run(checkpoint, jobs, out) == batch_cli.EXIT_SOME_FAILED  # the failures are retried, the rest skipped
    again = _manifest(out)[4:]
    assert [e["status"] for e in again] == ["skipped", "failed", "failed", "skipped"]
    assert again[0]["hash"] == first[0]["hash"] and (out / "piano.wav").stat().st_mtime_ns == written

    with (out / "manifest.jsonl").open("a", encoding="utf-8") as f:
        f.write('[1, 2]\n{"status": "ok", "hash": "x", "fil')  # foreign and cut lines are ignored
    (out / first[3]["files"][0]).unlink()  # a lost file is generated again
    _jobs(jobs, {**GOOD, "name": "piano"}, {"request": {**GOOD, "seeds": [4]}})
    assert _run(checkpoint, jobs, out) == 0
    lines = (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    assert lines[8:10] == ["[1, 2]", '{"status": "ok", "hash": "x", "fil']  # the cut line was ended, not joined
    assert [json.loads(x)["status"] for x in lines[10:]] == ["skipped", "ok"]


def test_a_changed_request_or_model_is_not_skipped(checkpoint: Path, tmp_path: Path) -> None:
    model = {"variant": "v", "checkpoint": "c", "dtype": "float32", "root": "/r"}
    same = batch_cli.content_hash({"a": 1, "b": [1, 2]}, model)
    assert same == batch_cli.content_hash({"b": [1, 2], "a": 1}, dict(reversed(list(model.items()))))
    assert same != batch_cli.content_hash({"a": 2, "b": [1, 2]}, model)
    assert same != batch_cli.content_hash({"a": 1, "b": [1, 2]}, {**model, "dtype": "bfloat16"})
    out = tmp_path / "out"
    jobs = _jobs(tmp_path / "jobs.jsonl", GOOD)
    assert _run(checkpoint, jobs, out) == 0
    _jobs(jobs, {**GOOD, "seeds": [5]})
    assert _run(checkpoint, jobs, out) == 0
    assert [e["status"] for e in _manifest(out)] == ["ok", "ok"]


def test_bad_names_and_arguments_are_refused(checkpoint: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    out = tmp_path / "out"
    jobs = _jobs(tmp_path / "jobs.jsonl", {**GOOD, "name": "a"}, {**GOOD, "seeds": [8], "name": "a"},
                 {**GOOD, "name": "../escape"})  # fmt: skip
    assert _run(checkpoint, jobs, out) == batch_cli.EXIT_SOME_FAILED
    entries = _manifest(out)
    assert [e["status"] for e in entries] == ["ok", "failed", "failed"]
    assert "line 1" in entries[1]["error"]["message"] and entries[2]["error"]["field"] == "name"
    assert not (tmp_path / "escape.wav").exists()
    empty = _jobs(tmp_path / "empty.jsonl", "# nothing")
    for argv in (["batch", str(empty), "-o", str(out)], ["batch", str(jobs)],
                 ["batch", str(tmp_path / "missing.jsonl"), "-o", str(out)]):  # fmt: skip
        assert cli.main([*argv, "--checkpoint", str(checkpoint)]) == cli.EXIT_USAGE
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
