"""Official-compatible routes: field names, aliases, envelope, query_result shape, /v1/audio tokens, chat."""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path

import pytest
import soundfile as sf
from frontends.server.srvkit import InProcessServer, fast_settings, upload, wav_bytes

from encore.frontends.server.official import normalize_key, parse_time_signature


def _envelope_ok(body: dict) -> dict:
    assert set(body) == {"data", "code", "error", "timestamp", "extra"}
    assert body["code"] == 200 and body["error"] is None and isinstance(body["timestamp"], int)
    return body["data"]


def _query_until_done(srv: InProcessServer, task_id: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = _envelope_ok(srv.client.post("/query_result", json={"task_id_list": [task_id]}).json())
        if items[0]["status"] != 0:
            return items[0]
        time.sleep(0.03)
    raise AssertionError("task did not finish")


@pytest.fixture
def planner_server(tmp_path: Path):
    srv = InProcessServer(fast_settings(tmp_path, extra={"fake_planner": True}))
    yield srv
    srv.close()


def test_release_query_download(server: InProcessServer, tmp_path: Path) -> None:
    r = server.client.post("/release_task", json={
        "caption": "upbeat pop", "lyrics": "[Verse]\nhello", "audioDuration": 1.0, "keyScale": "F# Minor",
        "timeSignature": "3/4", "bpm": 128, "inference_steps": 3, "use_random_seed": False, "seed": "7,8",
        "vocal_language": "en", "audio_format": "wav", "lm_backend": "vllm", "ai_token": "ignored"})
    data = _envelope_ok(r.json())
    assert data["status"] == "queued" and data["queue_position"] >= 0
    assert r.json()["extra"]["warnings"] == ["lm_backend is ignored by this server"]
    item = _query_until_done(server, data["task_id"])
    assert item["status"] == 1
    results = json.loads(item["result"])
    assert len(results) == 2  # official default batch_size 2
    first = results[0]
    assert first["seed_value"] == "7,8" and first["prompt"] == "upbeat pop" and first["status"] == 1
    assert first["metas"]["bpm"] == 128 and first["metas"]["keyscale"] == "F# minor"
    assert first["metas"]["timesignature"] == "3"
    assert first["file"].startswith("/v1/audio?path=")
    audio = server.client.get(first["file"])
    assert audio.status_code == 200 and audio.headers["content-type"] == "audio/wav"
    info = sf.info(io.BytesIO(audio.content))
    assert abs(info.duration - 1.0) < 1e-3


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "00000000-0000-0000-0000-000000000000/0.wav",
                                  "%2e%2e/x", "C:\\Windows\\win.ini", "x/0.flac::$DATA"])
def test_v1_audio_never_reads_paths(server: InProcessServer, path: str) -> None:
    r = server.client.get("/v1/audio", params={"path": path})
    assert r.status_code == 404 and r.json()["detail"] in ("no such file", "no such job")


def test_src_audio_path_refused_upload_accepted(server: InProcessServer) -> None:
    r = server.client.post("/release_task", json={"task_type": "cover", "src_audio_path": "/etc/hosts"})
    assert r.status_code == 422 and r.json()["code"] == "path_not_allowed"
    assert r.json()["detail"][0]["loc"] == ["body", "src_audio_path"]
    up = upload(server.client, wav_bytes(0.5), "song.wav")
    r = server.client.post("/release_task", json={"task_type": "cover", "src_audio_path": up["id"],
                                                  "audio_cover_strength": 0.4, "batch_size": 1})
    item = _query_until_done(server, _envelope_ok(r.json())["task_id"])
    assert item["status"] == 1


def test_release_multipart_upload(server: InProcessServer) -> None:
    r = server.client.post("/release_task", data={"prompt": "remix", "task_type": "repaint",
                                                  "repainting_start": "0.1", "repainting_end": "-1",
                                                  "batch_size": "1", "thinking": "false"},
                           files={"src_audio": ("song.wav", wav_bytes(0.6), "audio/wav")})
    data = _envelope_ok(r.json())
    item = _query_until_done(server, data["task_id"])
    assert item["status"] == 1, item
    job = server.store.get(data["task_id"])
    assert job.payload["request"]["task"] == {"kind": "repaint", "source": job.payload["uploads"]["task.source"],
                                              "start_s": 0.1, "end_s": None}


@pytest.mark.parametrize(("body", "field"), [
    ({"prompt": "x", "bpm": 999}, "bpm"),
    ({"prompt": "x", "inference_steps": "many"}, "inference_steps"),
    ({"prompt": "x", "unknown_field": 1}, "unknown_field"),
    ({"prompt": "x", "model": "../../other-model"}, "model"),
    ({"prompt": "x", "task_type": "dance"}, "task_type"),
    ({"prompt": "x", "audio_duration": 601}, "audio_duration"),
    ({"prompt": "x", "key_scale": "H major"}, "keyscale"),
    ({"prompt": "x", "audio_code_string": "<|audio_code_1|> and words"}, "audio_code_string"),
    ({"prompt": "x", "audio_code_string": "<|audio_code_64000|>" * 5}, "audio_codes"),
])
def test_release_validation(server: InProcessServer, body: dict, field: str) -> None:
    r = server.client.post("/release_task", json=body)
    assert r.status_code == 422, r.text
    assert field in json.dumps(r.json()["detail"])
    assert server.store.counts()["queued"] == 0


def test_query_result_unknown_and_bounds(server: InProcessServer) -> None:
    items = _envelope_ok(server.client.post("/query_result", json={"task_id_list": '["nope"]'}).json())
    assert items[0]["status"] == 2 and items[0]["error"] == "task not found"  # never "running forever"
    r = server.client.post("/query_result", json={"task_id_list": [str(i) for i in range(101)]})
    assert r.status_code == 422


def test_models_stats_health(server: InProcessServer) -> None:
    models = _envelope_ok(server.client.get("/v1/models").json())
    assert models == {"models": [{"name": "encore", "is_default": True}], "default_model": "encore"}
    stats = _envelope_ok(server.client.get("/v1/stats").json())
    assert set(stats) == {"jobs", "queue_size", "queue_maxsize", "avg_job_seconds"}
    assert {"total", "queued", "running", "succeeded", "failed"} <= set(stats["jobs"])
    assert _envelope_ok(server.client.get("/health").json())["status"] == "ok"


def test_format_input_without_planner_is_503(server: InProcessServer) -> None:
    r = server.client.post("/format_input", json={"prompt": "pop", "lyrics": "la"})
    assert r.status_code == 503 and r.json()["code"] == "planner_unavailable"


def test_format_input_and_random_sample(planner_server: InProcessServer) -> None:
    r = planner_server.client.post("/format_input", json={"prompt": "pop", "lyrics": "la", "param_obj":
                                                          json.dumps({"duration": 30, "language": "en"})})
    data = _envelope_ok(r.json())
    assert data["caption"] == "pop (formatted)" and data["key_scale"] == "C major" and data["time_signature"] == "4"
    r = planner_server.client.post("/create_random_sample", json={"sample_type": "simple_mode"})
    data = _envelope_ok(r.json())
    assert set(data) == {"caption", "lyrics", "bpm", "key_scale", "time_signature", "duration", "vocal_language"}


def test_sample_mode_release_uses_planner(planner_server: InProcessServer) -> None:
    r = planner_server.client.post("/release_task", json={"sample_query": "ocean waves", "batch_size": 1})
    item = _query_until_done(planner_server, _envelope_ok(r.json())["task_id"])
    assert item["status"] == 1
    assert json.loads(item["result"])[0]["metas"]["bpm"] == 100  # filled by the planner prelude


def test_extract_codes_only_needs_no_planner(server: InProcessServer) -> None:
    """Official `extract_codes_only` with a multipart source: the codes as `<|audio_code_N|>` text, no audio."""
    r = server.client.post("/release_task", data={"extract_codes_only": "true"},
                           files={"src_audio": ("song.wav", wav_bytes(1.2), "audio/wav")})
    item = _query_until_done(server, _envelope_ok(r.json())["task_id"])
    assert item["status"] == 1, item
    (result,) = json.loads(item["result"])
    assert result["status_message"] == "Audio Codes Extraction Success" and result["audio_paths"] == []
    assert result["audio_codes"] == "".join(f"<|audio_code_{i}|>" for i in range(6))  # 1.2 s -> 6 codes
    # ... which a later release_task renders again
    r = server.client.post("/release_task", json={"prompt": "again", "audio_code_string": result["audio_codes"],
                                                  "batch_size": 1})
    job = server.store.get(_envelope_ok(r.json())["task_id"])
    assert job.payload["request"]["audio_codes"] == list(range(6))


def test_analysis_flags_need_their_inputs(server: InProcessServer) -> None:
    r = server.client.post("/release_task", json={"full_analysis_only": True})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "src_audio_path"]
    up = upload(server.client, wav_bytes(0.5), "song.wav")
    r = server.client.post("/release_task", json={"extract_codes_only": True, "fullAnalysisOnly": True,
                                                  "src_audio_path": up["id"]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "full_analysis_only"]
    r = server.client.post("/release_task", json={"full_analysis_only": True, "src_audio_path": up["id"]})
    assert r.status_code == 503 and r.json()["code"] == "planner_unavailable"  # this server has no planner
    r = server.client.post("/release_task", json={"analysis_only": True, "prompt": "x", "bpm": 20})
    assert r.status_code == 422 and "bpm" in json.dumps(r.json()["detail"])
    assert server.store.counts()["queued"] == 0


def test_full_analysis_and_analysis_only(planner_server: InProcessServer) -> None:
    up = upload(planner_server.client, wav_bytes(0.5), "song.wav")
    r = planner_server.client.post("/release_task", json={"full_analysis_only": True, "src_audio_path": up["id"]})
    (full,) = json.loads(_query_until_done(planner_server, _envelope_ok(r.json())["task_id"])["result"])
    assert full["status_message"] == "Full Hardware Analysis Success"
    assert (full["bpm"], full["keyscale"], full["timesignature"], full["duration"]) == (90, "D major", "3", 10.0)
    assert full["prompt"] == "an uploaded song" and full["language"] == "unknown" and full["audio_paths"] == []
    assert full["audio_codes"] == "".join(f"<|audio_code_{i}|>" for i in (5, 6, 7, 8, 9))
    r = planner_server.client.post("/release_task", json={"analysisOnly": True, "prompt": "pop", "lyrics": "la",
                                                          "bpm": 97})
    (meta,) = json.loads(_query_until_done(planner_server, _envelope_ok(r.json())["task_id"])["result"])
    assert meta["status_message"] == "Success" and meta["generation_info"] == "Analysis Only Mode Complete"
    assert meta["bpm"] == 97 and meta["prompt"] == "pop (formatted)" and meta["lyrics"] == "la"
    assert meta["dit_model"] == "None (Analysis Only)" and meta["audio_paths"] == []
    jobs = planner_server.client.get("/v1/jobs").json()["jobs"]
    assert sorted(j["mode"] for j in jobs) == ["format", "understand"]  # no generation ran


def test_chat_completions_non_stream(server: InProcessServer) -> None:
    audio_b64 = base64.b64encode(wav_bytes(0.5)).decode()
    r = server.client.post("/v1/chat/completions", json={
        "model": "acestep/encore", "max_tokens": 10,  # unknown OpenAI parameters are ignored
        "messages": [{"role": "system", "content": "be musical"},
                     {"role": "user", "content": [{"type": "text", "text": "<prompt>calm piano</prompt>"},
                                                  {"type": "input_audio",
                                                   "input_audio": {"data": audio_b64, "format": "wav"}}]}],
        "audio_config": {"duration": 1.0, "format": "flac"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["choices"][0]["finish_reason"] == "stop"
    message = body["choices"][0]["message"]
    assert "calm piano" in message["content"]
    url = message["audio"][0]["audio_url"]["url"]
    assert url.startswith("data:audio/flac;base64,")
    info = sf.info(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert abs(info.duration - 1.0) < 1e-3
    job = server.store.list_jobs(limit=1)[0]
    assert job.payload["uploads"] == {"reference_audio": job.payload["request"]["reference_audio"]}


def test_chat_completions_stream(server: InProcessServer) -> None:
    with server.client.stream("POST", "/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "[Verse]\nsing along"}], "stream": True,
            "audio_config": {"duration": 1.0}}) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert any("audio" in c["choices"][0]["delta"] for c in chunks)
    assert any("sing along" in c["choices"][0]["delta"].get("content", "") for c in chunks)  # lyrics detected


def test_chat_rejects_empty_and_bad_audio(server: InProcessServer) -> None:
    r = server.client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": ""}]})
    assert r.status_code == 422
    r = server.client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "!!notbase64", "format": "wav"}}]}]})
    assert r.status_code == 422


def test_key_and_time_signature_spellings() -> None:
    assert normalize_key("C Major") == "C major" and normalize_key("Am") == "A minor"
    assert normalize_key("bb") == "Bb major" and normalize_key("") is None
    assert parse_time_signature("6/8") == 6 and parse_time_signature("") is None and parse_time_signature(3) == 3
