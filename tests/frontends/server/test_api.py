"""Our /v1 API end to end in one process: TestClient + a worker thread running the fake pipeline."""

from __future__ import annotations

import dataclasses
import json
import struct
import time
from pathlib import Path

import pytest
import soundfile as sf
from frontends.server.srvkit import AUTH, InProcessServer, fast_settings, upload, wav_bytes


def submit(srv: InProcessServer, request: dict, **kw) -> dict:
    r = srv.client.post("/v1/jobs", json={"request": request}, **kw)
    assert r.status_code == 202, r.text
    return r.json()


def test_generate_lifecycle_and_download(server: InProcessServer, tmp_path: Path) -> None:
    job = submit(server, {"text": {"caption": "lofi", "duration_s": 1.0}, "batch_size": 2,
                          "output": {"format": "wav"}})
    assert job["state"] == "queued" and job["queue_position"] >= 0
    view = server.wait(job["id"])
    assert view["state"] == "succeeded" and view["progress"] == 1.0 and view["attempts"] == 1
    assert [o["index"] for o in view["outputs"]] == [0, 1]
    assert view["result"]["seeds"] == view["result"]["params"]["seeds"]  # seeds fixed at submit (R2)
    r = server.client.get(view["outputs"][1]["url"])
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    path = tmp_path / "out.wav"
    path.write_bytes(r.content)
    info = sf.info(str(path))
    assert info.samplerate == 48000 and info.channels == 2 and abs(info.duration - 1.0) < 1e-3
    out_dir = Path(server.settings.outputs_dir) / job["id"]
    assert sorted(p.name for p in out_dir.iterdir()) == ["0.wav", "1.wav"]  # no temp files left
    assert server.client.get(f"/v1/jobs/{job['id']}/outputs").json()[0]["format"] == "wav"
    assert server.client.get(f"/v1/jobs/{job['id']}/audio/2").status_code == 404


@pytest.mark.parametrize(("request_body", "loc"), [
    ({"text": {"bpm": 301}}, ["body", "request", "text", "bpm"]),
    ({"text": {"bpm": "120bpm"}}, ["body", "request", "text", "bpm"]),
    ({"text": {"duration_s": 600.5}}, ["body", "request", "text", "duration_s"]),
    ({"batch_size": 9}, ["body", "request", "batch_size"]),
    ({"diffusion": {"num_steps": 10**9}}, ["body", "request", "diffusion", "num_steps"]),
    ({"seeds": [2**64]}, ["body", "request", "seeds", 0]),
    ({"output": {"format": "mp3/../x"}}, ["body", "request", "output", "format"]),
    ({"text": {"caption": "x", "bogus": 1}}, ["body", "request", "text", "bogus"]),
    ({"task": {"kind": "repaint", "start_s": 5.0, "end_s": 2.0}}, ["body", "request", "task", "end_s"]),
    ({"task": {"kind": "nope"}}, ["body", "request", "task"]),
])
def test_invalid_fields_are_422_with_path(server: InProcessServer, request_body: dict, loc: list) -> None:
    before = server.store.counts()
    r = server.client.post("/v1/jobs", json={"request": request_body})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["code"] in ("invalid_request", "value_error") and body["request_id"]
    locs = [d["loc"][: len(loc)] for d in body["detail"]]
    assert loc in locs or any(loc[:4] == d[:4] for d in locs), body
    assert server.store.counts() == before  # nothing recorded


def test_unknown_upload_and_lora_refused(server: InProcessServer) -> None:
    r = server.client.post("/v1/jobs", json={"request": {"task": {"kind": "cover", "source": "up-" + "0" * 32}}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "request", "task", "source"]
    r = server.client.post("/v1/jobs", json={"request": {"task": {"kind": "cover", "source": "/etc/passwd"}}})
    assert r.status_code == 422  # paths never accepted (pattern)
    r = server.client.post("/v1/jobs", json={"request": {"loras": [{"path": "style", "scale": 1.0}]}})
    assert r.status_code == 422 and "disabled" in r.json()["detail"][0]["msg"]


@pytest.mark.parametrize(("body", "ctype", "status"), [
    (b'{"request": {"text": {"duration_s": NaN}}}', "application/json", 400),
    (b'{"request": {}, "request": {}}', "application/json", 400),
    (b'{"request": ' * 70 + b"{}" + b"}" * 70, "application/json", 400),
    (b"not json", "application/json", 400),
    (b'{"request": {}}', "text/plain", 415),
    (b"request=1", "application/x-www-form-urlencoded", 415),
    (b'{"request": {"text": {"caption": "' + b"x" * 70000 + b'"}}}', "application/json", 413),
])
def test_transport_refusals(server: InProcessServer, body: bytes, ctype: str, status: int) -> None:
    r = server.client.post("/v1/jobs", content=body, headers={"content-type": ctype})
    assert r.status_code == status, r.text
    assert r.json()["request_id"] and "Traceback" not in r.text
    assert server.store.counts()["queued"] == 0


def test_unknown_job_is_404(server: InProcessServer) -> None:
    for jid in ("00000000-0000-0000-0000-000000000000", "../../etc", "x" * 40):
        r = server.client.get(f"/v1/jobs/{jid}")
        assert r.status_code == 404


def test_failures_have_typed_codes_and_no_leaks(server: InProcessServer) -> None:
    cases = {"[fail]": "internal", "[nan]": "non_finite_output", "[silent]": "silent_output",
             "[audioerror]": "invalid_audio"}
    jobs = {marker: submit(server, {"text": {"caption": marker}})["id"] for marker in cases}
    for marker, code in cases.items():
        view = server.wait(jobs[marker])
        assert view["state"] == "failed" and view["error"]["code"] == code
        assert "secret" not in json.dumps(view) and "Traceback" not in json.dumps(view)
        assert view["outputs"] == []
        assert not (Path(server.settings.outputs_dir) / jobs[marker]).exists() or \
            not any((Path(server.settings.outputs_dir) / jobs[marker]).iterdir())
    ok = server.wait(submit(server, {"text": {"caption": "fine"}})["id"])  # no poisoned state
    assert ok["state"] == "succeeded"


def test_cancel_queued_and_running(tmp_path: Path) -> None:
    srv = InProcessServer(fast_settings(tmp_path, extra={"fake_step_s": 0.1, "fake_steps": 50}))
    try:
        running = submit(srv, {"text": {"caption": "long"}})
        queued = submit(srv, {"text": {"caption": "waiting"}})
        deadline = time.monotonic() + 5
        while srv.client.get(f"/v1/jobs/{running['id']}").json()["state"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        r = srv.client.post(f"/v1/jobs/{queued['id']}/cancel")
        assert r.status_code == 200 and r.json()["state"] == "cancelled"
        r = srv.client.post(f"/v1/jobs/{running['id']}/cancel")
        assert r.json()["cancel_requested"]
        view = srv.wait(running["id"])
        assert view["state"] == "cancelled" and view["error"]["code"] == "cancelled"
    finally:
        srv.close()


def test_idempotency_key(server: InProcessServer) -> None:
    body = {"request": {"text": {"caption": "same"}}}
    a = server.client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "abc-1"})
    b = server.client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "abc-1"})
    assert a.status_code == 202 and b.status_code == 200 and a.json()["id"] == b.json()["id"]
    c = server.client.post("/v1/jobs", json={"request": {"text": {"caption": "other"}}},
                           headers={"Idempotency-Key": "abc-1"})
    assert c.status_code == 422 and c.json()["code"] == "idempotency_conflict"


def test_per_client_active_cap_429(tmp_path: Path) -> None:
    srv = InProcessServer(fast_settings(tmp_path, max_active_per_client=2), start_worker=False)
    try:
        for _ in range(2):
            submit(srv, {})
        r = srv.client.post("/v1/jobs", json={"request": {}})
        assert r.status_code == 429 and r.json()["code"] == "too_many_active_jobs"
        assert int(r.headers["Retry-After"]) >= 1 and srv.store.counts()["queued"] == 2
    finally:
        srv.close()


def test_queue_full_429_with_retry_after_and_no_ghost(tmp_path: Path) -> None:
    srv = InProcessServer(fast_settings(tmp_path, queue_max=3), start_worker=False)
    try:
        for _ in range(3):
            submit(srv, {})
        r = srv.client.post("/v1/jobs", json={"request": {}})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert srv.store.counts()["queued"] == 3
        assert "encore_http_responses_total{status=\"429\"} 1" in srv.client.get("/metrics").text
    finally:
        srv.close()


def test_draining_503(server: InProcessServer) -> None:
    server.service.draining = True
    r = server.client.post("/v1/jobs", json={"request": {}})
    assert r.status_code == 503 and "Retry-After" in r.headers
    assert server.client.get("/ready").status_code == 503


def test_ready_and_health(tmp_path: Path) -> None:
    srv = InProcessServer(fast_settings(tmp_path), start_worker=False)
    try:
        assert srv.client.get("/health").json()["data"]["status"] == "ok"
        r = srv.client.get("/ready")
        assert r.status_code == 503 and "no worker ready to generate yet" in r.json()["reasons"]
        srv.start_worker()
        assert srv.client.get("/ready").json() == {**srv.client.get("/ready").json(), "ready": True}
    finally:
        srv.close()


def test_upload_then_cover_uses_the_server_copy(server: InProcessServer) -> None:
    up = upload(server.client, wav_bytes(0.75), "../../etc/evil\x1b[2J.wav")
    assert up["id"].startswith("up-") and up["duration_s"] == 0.75 and up["filename"] == "evil[2J.wav"
    stored = list(Path(server.settings.uploads_dir).iterdir())
    assert [p.name for p in stored] == [f"{up['id']}.wav"]  # uuid name, client name ignored
    job = submit(server, {"task": {"kind": "cover", "source": up["id"]}, "text": {"caption": "jazz"}})
    view = server.wait(job["id"])
    assert view["state"] == "succeeded"
    assert view["result"]["params"]["source_seconds"] == pytest.approx(0.75)


def test_upload_owner_isolation(tmp_path: Path) -> None:
    other = "other-key-9876543210"
    srv = InProcessServer(fast_settings(tmp_path, api_keys=("test-key-0123456789", other)))
    try:
        up = upload(srv.client, wav_bytes(), "a.wav")
        r = srv.client.post("/v1/jobs", json={"request": {"task": {"kind": "cover", "source": up["id"]}}},
                            headers={"Authorization": f"Bearer {other}"})
        assert r.status_code == 422
        job = submit(srv, {})
        r = srv.client.get(f"/v1/jobs/{job['id']}", headers={"Authorization": f"Bearer {other}"})
        assert r.status_code == 404  # S3: other key sees nothing
    finally:
        srv.close()


def _wav_header(frames: int, sr: int = 8000, bits: int = 8, channels: int = 1) -> bytes:
    data_len = frames * channels * bits // 8
    fmt = struct.pack("<HHIIHH", 1, channels, sr, sr * channels * bits // 8, channels * bits // 8, bits)
    return (b"RIFF" + struct.pack("<I", 36 + data_len) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", data_len))


@pytest.mark.parametrize(("payload", "code"), [
    (b"definitely not audio", "invalid_audio"),
    (_wav_header(0), "audio_too_short"),
    (_wav_header(8000 * 660) + b"\x80" * (8000 * 660), "audio_too_long"),  # 11 min of 8-bit 8 kHz (5 MB)
])
def test_upload_refusals(server: InProcessServer, payload: bytes, code: str) -> None:
    t0 = time.monotonic()
    r = server.client.post("/v1/uploads", files={"file": ("x.wav", payload, "audio/wav")})
    assert r.status_code == 422 and r.json()["code"] == code, r.text
    assert time.monotonic() - t0 < 2.0
    assert [p for p in Path(server.settings.uploads_dir).iterdir()] == []  # temp removed


def test_truncated_wav_reports_real_duration(server: InProcessServer) -> None:
    """A header claiming 1 h over 1 s of data is accepted with the duration that is really there."""
    up = upload(server.client, _wav_header(8000 * 3600) + b"\x80" * 8000, "t.wav")
    assert up["duration_s"] == 1.0


def test_upload_shape_rules(server: InProcessServer) -> None:
    two = server.client.post("/v1/uploads", files=[("file", ("a.wav", wav_bytes(), "audio/wav")),
                                                   ("file", ("b.wav", wav_bytes(), "audio/wav"))])
    assert two.status_code in (400, 422)
    named = server.client.post("/v1/uploads", files={"other": ("a.wav", wav_bytes(), "audio/wav")})
    assert named.status_code == 422
    raw = server.client.post("/v1/uploads", content=wav_bytes(), headers={"content-type": "audio/wav"})
    assert raw.status_code == 415


def test_sse_events_until_end(server: InProcessServer) -> None:
    job = submit(server, {"text": {"caption": "events"}})
    with server.client.stream("GET", f"/v1/jobs/{job['id']}/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = []
        for line in r.iter_lines():
            if line.startswith("event: "):
                events.append(line[7:])
            if events and events[-1] == "end" and line.startswith("data: "):
                final = json.loads(line[6:])
                break
    assert events[-1] == "end" and final["state"] == "succeeded"


def test_planner_modes_without_planner_fail_clearly(server: InProcessServer) -> None:
    from encore.frontends.server.supervisor import Supervisor

    r = server.client.post("/v1/jobs", json={"mode": "format", "caption": "pop"})
    assert r.status_code == 202
    Supervisor(server.settings, server.store).tick()
    view = server.wait(r.json()["id"])
    assert view["state"] == "failed" and view["error"]["code"] == "planner_unavailable"
    assert "planner not loaded" in view["error"]["message"]


def test_planner_modes_with_planner(tmp_path: Path) -> None:
    srv = InProcessServer(fast_settings(tmp_path, extra={"fake_planner": True}))
    try:
        r = srv.client.post("/v1/jobs", json={"mode": "sample", "query": "rain"})
        view = srv.wait(r.json()["id"])
        assert view["state"] == "succeeded" and view["result"]["plan"]["caption"] == "a song about rain"
        up = upload(srv.client, wav_bytes(), "s.wav")
        r = srv.client.post("/v1/jobs", json={"mode": "understand", "audio": up["id"]})
        assert srv.wait(r.json()["id"])["result"]["plan"]["bpm"] == 90
        assert srv.client.get("/ready").json()["modes"] == ["codes", "format", "generate", "sample", "understand"]
    finally:
        srv.close()


def test_codes_job_needs_no_planner(server: InProcessServer) -> None:
    """`{"mode": "codes"}`: an upload's 5 Hz codes (0.5 s -> 3 codes here), refused for someone else's upload."""
    assert "codes" in server.client.get("/ready").json()["modes"]
    up = upload(server.client, wav_bytes(), "s.wav")
    r = server.client.post("/v1/jobs", json={"mode": "codes", "audio": up["id"]})
    assert r.status_code == 202, r.text
    view = server.wait(r.json()["id"])
    assert view["state"] == "succeeded" and view["mode"] == "codes"
    assert view["result"]["codes"] == list(range(round(up["duration_s"] * 5)))
    bad = server.client.post("/v1/jobs", json={"mode": "codes", "audio": "up-" + "0" * 32})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "audio"]
    assert server.client.post("/v1/jobs", json={"mode": "codes"}).status_code == 422


def test_metrics_and_list(server: InProcessServer) -> None:
    server.wait(submit(server, {})["id"])
    text = server.client.get("/metrics").text
    assert 'encore_jobs{state="succeeded"} 1' in text and "encore_ready 1" in text
    assert len(server.client.get("/v1/jobs", params={"limit": 5}).json()["jobs"]) == 1


def test_metrics_job_seconds_histogram_by_task(server: InProcessServer) -> None:
    """Succeeded jobs' run times per task kind, as a cumulative Prometheus histogram."""
    server.wait(submit(server, {})["id"])
    server.wait(submit(server, {"task": {"kind": "text2music"}, "seeds": [2]})["id"])
    text = server.client.get("/metrics").text
    seconds = server.store.job_seconds()
    assert list(seconds) == ["text2music"] and len(seconds["text2music"]) == 2
    lines = [ln for ln in text.splitlines() if ln.startswith('encore_job_seconds_bucket{task="text2music"')]
    counts = [int(ln.rsplit(" ", 1)[1]) for ln in lines]
    assert len(lines) == 11 and lines[-1].endswith('le="+Inf"} 2') and counts == sorted(counts)
    assert 'encore_job_seconds_count{task="text2music"} 2' in text
    assert "# TYPE encore_job_seconds histogram" in text and "encore_event_loop_lag_seconds " in text


def test_job_deadline_scales_with_the_measured_speed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """R11: before any job ran, the deadline is --job-timeout-s; then factor × (measured rate × seconds × steps ×
    items) + floor, within [floor, cap]; a job past its own deadline fails with `timeout` naming it."""
    srv = InProcessServer(fast_settings(tmp_path, job_timeout_s=1e6, job_timeout_floor_s=5.0,
                                        job_timeout_factor=4.0))  # fmt: skip
    try:
        first = submit(srv, {"text": {"duration_s": 1.0}, "diffusion": {"num_steps": 4}})
        assert srv.store.get(first["id"]).payload["timeout_s"] == 1e6  # nothing measured yet
        assert first["timeout_s"] == 1e6  # clients see it in the job's status
        srv.wait(first["id"])
        (rate,) = srv.store.generation_rates()
        second = submit(srv, {"text": {"duration_s": 2.0}, "diffusion": {"num_steps": 4}, "batch_size": 2})
        assert srv.store.get(second["id"]).payload["timeout_s"] == pytest.approx(4 * rate * 16 + 5, abs=0.06)
        srv.wait(second["id"])
        from encore.pipeline.request import GenerationRequest, PlannerOptions, TextInputs
        from encore.tasks.spec import Cover

        service, median = srv.service, sorted(srv.store.generation_rates())[1]
        for request, units in ((GenerationRequest(text=TextInputs(duration_s=600.0)), 600 * 50),
                               (GenerationRequest(planner=PlannerOptions(think=True)), 600 * 50),
                               (GenerationRequest(task=Cover(source="x.wav")), 600 * 50),
                               (GenerationRequest(), 30 * 50),  # the pipeline's default duration
                               (GenerationRequest(audio_codes=(1,) * 20), 4 * 50)):  # fmt: skip
            assert service.job_deadline(request) == pytest.approx(4 * median * units + 5, abs=0.06)
        capped = dataclasses.replace(service.settings, job_timeout_s=60.0)
        monkeypatch.setattr(service, "settings", capped)
        assert service.job_deadline(GenerationRequest(text=TextInputs(duration_s=600.0))) == 60.0
        monkeypatch.setattr(service, "settings", dataclasses.replace(capped, job_timeout_floor_s=59.0))
        assert 59.0 <= service.job_deadline(GenerationRequest(text=TextInputs(duration_s=1.0))) <= 60.0
        monkeypatch.setattr(service, "settings", srv.settings)

        monkeypatch.setattr(service, "job_deadline", lambda request: 0.6)
        late = submit(srv, {"text": {"caption": "[slow]", "duration_s": 1.0}, "diffusion": {"num_steps": 8}})
        view = srv.wait(late["id"])
        assert view["state"] == "failed" and view["error"]["code"] == "timeout"
        assert "0.6 s" in view["error"]["message"]
    finally:
        srv.close()


def test_event_loop_lag_is_measured() -> None:
    """A handler that blocks the loop shows up as lag; the watcher stops when cancelled."""
    import asyncio

    from encore.frontends.server.service import JobService

    service = JobService.__new__(JobService)
    service.loop_lag_s = service.loop_lag_max_s = 0.0

    async def scenario() -> None:
        watcher = asyncio.create_task(service.watch_event_loop(period_s=0.02))
        await asyncio.sleep(0.05)
        time.sleep(0.15)  # noqa: ASYNC251 - the blocking call whose lag is measured
        await asyncio.sleep(0.05)
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher

    asyncio.run(scenario())
    assert 0.1 <= service.loop_lag_max_s < 1.0


def test_internal_route_error_is_opaque(server: InProcessServer, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: object, **k: object) -> None:
        raise RuntimeError("secret /etc/shadow detail")

    monkeypatch.setattr(server.service, "status", boom)
    r = server.client.post("/v1/jobs", json={"request": {}})
    assert r.status_code == 500
    assert r.json()["code"] == "internal" and r.json()["request_id"]
    assert "secret" not in r.text and "Traceback" not in r.text


def test_auth_header_required(server: InProcessServer) -> None:
    r = server.client.get("/v1/jobs", headers={"Authorization": ""})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert AUTH  # the fixture client sends the key on every other request


def test_rate_limit_per_client(tmp_path: Path) -> None:
    """S7: a client over its token bucket gets 429 + Retry-After; another key is unaffected."""
    other = "other-key-9876543210"
    srv = InProcessServer(fast_settings(tmp_path, api_keys=("test-key-0123456789", other), rate_per_s=0.5,
                                        rate_burst=2), start_worker=False)
    try:
        codes = [srv.client.post("/v1/jobs", json={"request": {}}).status_code for _ in range(4)]
        assert codes[:2] == [202, 202] and codes[2:] == [429, 429]
        r = srv.client.post("/v1/jobs", json={"request": {}})
        assert r.json()["code"] == "rate_limited" and int(r.headers["Retry-After"]) >= 1
        r = srv.client.post("/v1/jobs", json={"request": {}}, headers={"Authorization": f"Bearer {other}"})
        assert r.status_code == 202
    finally:
        srv.close()


def test_disk_full_fails_job_without_partial_file(server: InProcessServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """F4 (in process): ENOSPC while writing -> failed(storage_full), temp file removed, next job fine."""
    import errno

    import soundfile

    real_write = soundfile.write

    def full(file, *args, **kwargs):
        real_write(file, *args, **kwargs)  # some bytes reach the temp file first
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(soundfile, "write", full)
    view = server.wait(submit(server, {"text": {"caption": "big"}})["id"])
    assert view["state"] == "failed" and view["error"]["code"] == "storage_full"
    folder = Path(server.settings.outputs_dir) / view["id"]
    assert not folder.exists() or list(folder.iterdir()) == []
    monkeypatch.setattr(soundfile, "write", real_write)
    assert server.wait(submit(server, {})["id"])["state"] == "succeeded"


def test_retention_sweep_keeps_tombstone(tmp_path: Path) -> None:
    from encore.frontends.server.supervisor import Supervisor

    srv = InProcessServer(fast_settings(tmp_path, files_retention_s=0.0))
    try:
        view = srv.wait(submit(srv, {})["id"])
        time.sleep(0.01)
        Supervisor(srv.settings, srv.store).sweep()
        assert not (Path(srv.settings.outputs_dir) / view["id"]).exists()
        again = srv.client.get(f"/v1/jobs/{view['id']}").json()
        assert again["state"] == "succeeded" and again["files_expired"]
        assert srv.client.get(view["outputs"][0]["url"]).status_code == 410
    finally:
        srv.close()
