"""The Gradio UI in a real headless Chromium (Debian `chromium`, driven by Playwright; no browser download):
open the page, fill a caption, pick a LoRA adapter, click Generate, wait for the audio player, fetch its file, save
a screenshot, cancel a slow job, restore the first job's settings from the history.

Set-up: `bash scripts/setup-browser.sh` installs chromium. The screenshot goes to $ENCORE_ARTIFACTS_DIR (or the
test's tmp folder). The UI and the API run as separate processes, the API with the fake pipeline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from frontends.server.srvkit import (
    KEY,
    TESTS_DIR,
    LiveServer,
    free_port,
    kill_orphan_workers,
    write_fake_adapter,
)

CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]


def _start_ui(api_url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(TESTS_DIR), "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "encore.frontends.ui", "--api-url", api_url, "--api-key", KEY, "--port", str(port)]
    return subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"UI exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"UI did not start: {log.read_text()[-2000:]}")


def test_generate_in_headless_chromium(tmp_path: Path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (run scripts/setup-browser.sh)")
    data = tmp_path / "data"
    data.mkdir()
    write_fake_adapter(tmp_path / "loras" / "style")
    api = LiveServer(data, workers=1, extra_args=("--lora-dir", str(tmp_path / "loras")))
    ui_port = free_port()
    ui_log = tmp_path / "ui.log"
    ui = _start_ui(api.url, ui_port, ui_log)
    try:
        api.wait_ready()
        _wait_http(f"http://127.0.0.1:{ui_port}/", ui, ui_log)
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1100})
                page.goto(f"http://127.0.0.1:{ui_port}/", wait_until="domcontentloaded")
                page.locator("#caption textarea").fill("lofi hip hop with rain")
                page.get_by_role("tab", name="LoRA").click()  # the list comes from GET /v1/loras on page load
                page.wait_for_function("() => document.querySelector('#lora-note').innerText.includes('1 adapter')",
                                       timeout=30000)
                page.locator("#lora input").click()
                page.get_by_role("option", name="style (rank 4").click()
                page.locator("#generate").click()
                page.wait_for_function("() => document.querySelector('#status').innerText.startsWith('Done')",
                                       timeout=60000)
                page.wait_for_selector("#player-0 [data-testid^='waveform-']", timeout=30000)
                href = page.evaluate("document.querySelector('#player-0 a[data-testid=download-link]').href")
                audio = page.request.get(href)
                assert audio.status == 200 and audio.headers["content-type"].startswith("audio/")
                assert len(audio.body()) > 1000
                rows = page.locator("[data-testid='dataframe'] tbody tr, table tbody tr")
                assert "lofi hip hop with rain" in page.content()
                assert rows.count() >= 1
                shot = Path(os.environ.get("ENCORE_ARTIFACTS_DIR", tmp_path)) / "ui-generate.png"
                shot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000
                # Cancel: a slow job (0.5 s per fake step) stopped from the page while it runs.
                page.get_by_role("tab", name="Song").click()
                page.locator("#caption textarea").fill("[slow] a long take")
                page.locator("#generate").click()
                page.wait_for_function("() => document.querySelector('#status').innerText.startsWith('Running')",
                                       timeout=30000)
                page.locator("#cancel").click()
                page.wait_for_function("() => document.querySelector('#status').innerText.includes('cancelled')",
                                       timeout=30000)
                # Restore: clicking the first job's history row (now the second) puts its caption and seed back.
                page.locator("#caption textarea").fill("something else")
                page.locator("#history [data-testid='cell-1-2']").click()  # Gradio 6 grid: cell-<row>-<col>
                page.wait_for_function("() => document.querySelector('#status').innerText.startsWith('Restored')",
                                       timeout=30000)
                assert page.locator("#caption textarea").input_value() == "lofi hip hop with rain"
                page.get_by_role("tab", name="Advanced").click()
                restored_seeds = page.locator("#seeds textarea, #seeds input").first.input_value()
            finally:
                browser.close()
        jobs = api.client.get("/v1/jobs").json()["jobs"]
        assert sorted(j["state"] for j in jobs) == ["cancelled", "succeeded"]
        job = next(j for j in jobs if j["state"] == "succeeded")
        assert job["state"] == "succeeded" and job["result"]["params"]["text"]["caption"] == "lofi hip hop with rain"
        assert job["result"]["params"]["loras"] == [{"path": "style", "scale": 1.0}]  # the UI's LoRA choice
        assert job["result"]["params"]["lora_ids"][0]["name"] == "style"  # ... reached the pipeline as a folder
        assert restored_seeds == ", ".join(str(o["seed"]) for o in job["outputs"])  # the seed it was made with
    finally:
        ui.send_signal(signal.SIGTERM)
        try:
            ui.wait(timeout=15)
        except subprocess.TimeoutExpired:
            ui.kill()
        api.stop()
        kill_orphan_workers(tmp_path)
