"""UI value handling without a browser: values -> request JSON, defaults parity, no torch in the UI process."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from encore.pipeline import request as rq

TESTS_DIR = Path(__file__).resolve().parents[2]


def _build(values: dict) -> dict:
    from encore.frontends.ui.app import request_from_values

    uploaded: list[str] = []

    def upload(path: str) -> str:
        uploaded.append(path)
        return "up-" + "a" * 32

    out = request_from_values(values, upload)
    out["_uploaded"] = uploaded
    return out


def test_blank_values_leave_dataclass_defaults() -> None:
    out = _build({"task.kind": "text2music", "text.caption": "rain", "text.bpm": None, "text.duration_s": 0,
                  "text.keyscale": "", "diffusion.num_steps": 0, "seeds": "", "loras.path": "",
                  "planner.think": False, "planner.temperature": 0.85, "task.start_s": 3.0})
    assert out == {"task": {"kind": "text2music"}, "text": {"caption": "rain"}, "_uploaded": []}
    body = {k: v for k, v in out.items() if k != "_uploaded"}
    assert rq.request_from_dict(body).text.caption == "rain"


def test_task_fields_and_uploads() -> None:
    out = _build({"task.kind": "repaint", "task.source": "/tmp/gradio/x.wav", "task.start_s": 1.5,
                  "task.end_s": 0, "task.cover_strength": 0.5, "reference_audio": "/tmp/gradio/r.wav",
                  "text.timesignature": "3", "text.bpm": 96.0, "seeds": "1, 2", "batch_size": 2,
                  "loras.path": "style", "loras.scale": 0.7, "planner.think": True, "planner.temperature": 0.5})
    assert out["task"] == {"kind": "repaint", "source": "up-" + "a" * 32, "start_s": 1.5}  # no cover field
    assert out["reference_audio"] == "up-" + "a" * 32 and len(out["_uploaded"]) == 2
    assert out["text"] == {"timesignature": 3, "bpm": 96} and out["seeds"] == [1, 2]
    assert out["loras"] == [{"path": "style", "scale": 0.7}]
    assert out["planner"] == {"think": True, "temperature": 0.5}


def test_audio_codes_box_takes_integers_or_planner_text() -> None:
    from encore.frontends.ui.app import UiError

    assert _build({"audio_codes": "1, 2 3,4 5"})["audio_codes"] == [1, 2, 3, 4, 5]
    assert _build({"audio_codes": "<|audio_code_9|>" * 5})["audio_codes"] == [9] * 5
    assert "audio_codes" not in _build({"audio_codes": ""})
    with pytest.raises(UiError, match="audio codes"):
        _build({"audio_codes": "1, 2, many"})


def test_bad_seeds_are_reported() -> None:
    from encore.frontends.ui.app import UiError

    with pytest.raises(UiError, match="seeds"):
        _build({"seeds": "1, x"})
    with pytest.raises(UiError, match="seeds"):
        _build({"seeds": "1,2,3", "batch_size": 2})


def test_ui_defaults_are_the_dataclass_defaults() -> None:
    from encore.frontends.ui.app import dataclass_default

    assert dataclass_default("text.lyrics") == rq.TextInputs().lyrics
    assert dataclass_default("batch_size") == rq.GenerationRequest().batch_size
    assert dataclass_default("output.format") == rq.OutputOptions().format
    assert dataclass_default("task.extend:seconds") == rq.TASK_KINDS["extend"]().seconds
    for f in dataclasses.fields(rq.PlannerOptions):
        assert dataclass_default(f"planner.{f.name}") == getattr(rq.PlannerOptions(), f.name)


def test_ui_module_has_no_literal_defaults() -> None:
    """Every `value=` of an input component comes from `dataclass_default` (or is a blank choice)."""
    import re

    src = (Path(__file__).resolve().parents[3] / "src/encore/frontends/ui/app.py").read_text()
    block = src[src.index("def _components"):src.index("def build_ui")]
    literals = re.findall(r"value=([^,)\n]+)", block)
    allowed = {'""', "[]", "False", '"text2music"'}
    assert all(v.startswith("d(") or v in allowed for v in literals), literals


def test_ui_app_builds_without_torch() -> None:
    script = ("import sys; from encore.frontends.ui.app import ApiClient, build_ui; "
              "build_ui(ApiClient('http://127.0.0.1:9', None)); "
              "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(TESTS_DIR)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=180,
                         check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_lora_choices_follow_the_server_listing() -> None:
    from encore.frontends.ui.app import lora_choices

    choices, note = lora_choices({"enabled": False, "loras": []})
    assert choices == [("(none)", "")] and "--lora-dir" in note
    choices, note = lora_choices({"enabled": True, "loras": []})
    assert choices == [("(none)", "")] and "no usable adapter" in note
    listing = {"enabled": True, "loras": [
        {"name": "broken", "size_bytes": 10, "rank": None, "alpha": None, "error": "truncated"},
        {"name": "style", "size_bytes": 3 * 2**20, "rank": 4, "alpha": 8.0, "error": None}]}
    choices, note = lora_choices(listing)
    assert choices == [("(none)", ""), ("style (rank 4, alpha 8, 3.0 MiB)", "style")]
    assert "1 adapter" in note and "Not usable: broken" in note
    assert lora_choices(None)[0] == [("(none)", "")]


def test_lora_choice_reaches_the_job(tmp_path: Path) -> None:
    """The adapter list the UI shows comes from GET /v1/loras, and the chosen name and scale reach the job and
    the pipeline (which gets the adapter's folder in the server's LoRA directory)."""
    from frontends.server.srvkit import InProcessServer, fast_settings, write_fake_adapter

    from encore.frontends.ui.app import ApiClient, lora_choices

    lora_dir = write_fake_adapter(tmp_path / "loras" / "style").parent
    srv = InProcessServer(fast_settings(tmp_path, lora_dir=str(lora_dir)))
    try:
        client = ApiClient("http://127.0.0.1", None)
        client.http = srv.client  # the in-process app (a TestClient is an httpx.Client with the key set)
        choices, _ = lora_choices(client.loras())
        assert [value for _, value in choices] == ["", "style"]
        values = {"task.kind": "text2music", "text.caption": "rain", "text.duration_s": 1.0,
                  "loras.path": choices[1][1], "loras.scale": 1.5}
        from encore.frontends.ui.app import request_from_values

        body = request_from_values(values, client.upload)
        assert body["loras"] == [{"path": "style", "scale": 1.5}]
        view = client.wait(client.submit({"mode": "generate", "request": body})["id"], timeout_s=20)
        assert view["state"] == "succeeded", view
        params = view["result"]["params"]
        assert params["loras"] == [{"path": "style", "scale": 1.5}]
        assert params["lora_ids"][0]["name"] == "style" and params["lora_ids"][0]["scale"] == 1.5
        no_lora = request_from_values({**values, "loras.path": choices[0][1]}, client.upload)
        assert "loras" not in no_lora
    finally:
        srv.close()


def test_planner_buttons_fill_the_song_fields_and_understand_fills_the_codes() -> None:
    """Format keeps the codes box as it was; Understand uploads the source and fills the box with its codes."""
    import gradio as gr

    from encore.frontends.ui.app import PLAN_FIELDS, _plan_values

    class Client:
        def __init__(self) -> None:
            self.calls: list[tuple[str, dict]] = []

        def upload(self, path: str) -> str:
            return f"up-{path}"

        def plan(self, mode: str, args: dict) -> dict:
            self.calls.append((mode, args))
            out = {"caption": f"{mode} caption", "bpm": 90, "timesignature": 3}
            return {**out, "codes": [4, 5, 6]} if mode == "understand" else out

    client = Client()
    values = {"text.caption": "mine", "text.lyrics": "la", "text.keyscale": "C major", "audio_codes": "1 2"}
    formatted = _plan_values(client, "format", values)
    assert len(formatted) == len(PLAN_FIELDS) + 1
    assert formatted[0] == "format caption" and formatted[PLAN_FIELDS.index("keyscale")] == "C major"
    assert formatted[PLAN_FIELDS.index("timesignature")] == "3" and formatted[-1] == "1 2"
    with pytest.raises(gr.Error, match="source"):
        _plan_values(client, "understand", values)
    understood = _plan_values(client, "understand", {**values, "task.source": "/tmp/song.wav"})
    assert client.calls[-1] == ("understand", {"audio": "up-/tmp/song.wav"}) and understood[-1] == "4 5 6"


def test_history_restores_the_submitted_values_and_the_seeds_used(tmp_path: Path) -> None:
    from encore.frontends.ui.app import history_entry, request_from_values, restored_values

    kept = tmp_path / "src.wav"
    kept.write_bytes(b"RIFF")
    values = {"task.kind": "cover", "text.caption": "dub reggae", "seeds": "", "batch_size": 2,
              "task.source": str(kept), "reference_audio": str(tmp_path / "deleted-by-gradio.wav"),
              "diffusion.guidance_scale": 5.0}
    view = {"state": "succeeded", "outputs": [{"seed": 11, "index": 0}, {"seed": 12, "index": 1}]}
    entry = history_entry("0123456789abcdef", values, view)
    assert entry["row"] == ["01234567", "cover", "dub reggae", "succeeded", "11,12", 2]
    paths = ["text.caption", "seeds", "batch_size", "task.source", "reference_audio", "diffusion.guidance_scale",
             "text.lyrics"]
    restored = restored_values(entry, paths)
    assert restored == ["dub reggae", "11, 12", 2, str(kept), None, 5.0, None]
    again = request_from_values(dict(zip(paths, restored)) | {"task.kind": "cover"}, lambda p: "up-" + "b" * 32)
    assert again["seeds"] == [11, 12] and again["batch_size"] == 2  # the same songs can be made again
    failed = history_entry("fedcba9876543210", values | {"seeds": "7"}, {"state": "failed", "outputs": []})
    assert failed["row"][4] == "" and restored_values(failed, ["seeds"]) == ["7"]  # no seeds used: as submitted


def test_codes_button_uploads_the_source_and_fills_the_codes_box() -> None:
    import gradio as gr

    from encore.frontends.ui.app import _source_codes

    class Client:
        def upload(self, path: str) -> str:
            return f"up-{path}"

        def codes(self, upload_id: str) -> list[int]:
            assert upload_id == "up-/tmp/song.wav"
            return [7, 8, 9]

    assert _source_codes(Client(), "/tmp/song.wav") == "7 8 9"
    with pytest.raises(gr.Error, match="source"):
        _source_codes(Client(), None)



def test_codes_job_through_the_api_client(tmp_path: Path) -> None:
    """`ApiClient.codes` against the server (fake pipeline: one code per 0.2 s): upload, codes job, result."""
    from frontends.server.srvkit import InProcessServer, fast_settings, wav_bytes

    from encore.frontends.ui.app import ApiClient, _source_codes

    song = tmp_path / "song.wav"
    song.write_bytes(wav_bytes(1.0))
    srv = InProcessServer(fast_settings(tmp_path))
    try:
        client = ApiClient("http://127.0.0.1", None)
        client.http = srv.client
        assert _source_codes(client, str(song)) == "0 1 2 3 4"
    finally:
        srv.close()
