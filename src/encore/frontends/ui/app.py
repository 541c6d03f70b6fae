"""Gradio web UI (`encore ui`): a thin client of the Encore REST API. It never generates in a handler: it
uploads audio, submits jobs, polls their status and downloads the results; the workers do the work.

Components are kept in a dict keyed by request field path (``text.caption``, ``task.start_s``); handlers get a
dict of values and `request_from_values` turns it into the request JSON, leaving out empty fields so every
default lives only in the `encore.pipeline.request` dataclasses (``ui.*`` keys are display-only components). The
LoRA choices come from the server's `GET /v1/loras`. No torch here.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from encore.errors import InvalidRequest
from encore.pipeline import request as rq
from encore.tasks.spec import TRACK_NAMES

logger = logging.getLogger(__name__)

MAX_PLAYERS = rq.MAX_BATCH
POLL_S = 0.4
FORMATS = ("flac", "wav", "mp3", "ogg")
PLAN_FIELDS = ("caption", "lyrics", "bpm", "keyscale", "timesignature", "duration_s", "language")
HISTORY_HEADERS = ["job", "task", "caption", "state", "seeds", "files"]
HISTORY_SIZE = 50
FILE_FIELDS = frozenset({"task.source", "reference_audio"})


class UiError(Exception):
    """A message for the user (shown by Gradio as an error toast)."""


class ApiClient:
    """The few REST calls the UI makes (our /v1 API), with the key in the Authorization header.

    Args:
        base_url: server root, e.g. ``http://127.0.0.1:8001``.
        api_key: key for ``Authorization: Bearer`` (None when the server runs without keys).
        timeout_s: per-request timeout.
    """

    def __init__(self, base_url: str, api_key: str | None, timeout_s: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s)

    def _check(self, r: httpx.Response) -> Any:
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = {"detail": r.text[:200]}
            raise UiError(_error_text(body.get("detail"), r.status_code))
        return r.json()

    def ready(self) -> dict[str, Any]:
        return dict(self.http.get("/ready").json())

    def upload(self, path: str) -> str:
        """Upload a local file (chosen in the browser, stored by Gradio); returns the upload id."""
        with open(path, "rb") as fh:
            r = self.http.post("/v1/uploads", files={"file": (Path(path).name, fh, "application/octet-stream")})
        return str(self._check(r)["id"])

    def loras(self) -> dict[str, Any]:
        """The server's LoRA adapters (`GET /v1/loras`): ``{"enabled", "loras": [{"name", "rank", ...}]}``."""
        return dict(self._check(self.http.get("/v1/loras")))

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self._check(self.http.post("/v1/jobs", json=body)))

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self._check(self.http.get(f"/v1/jobs/{job_id}")))

    def cancel(self, job_id: str) -> dict[str, Any]:
        return dict(self._check(self.http.post(f"/v1/jobs/{job_id}/cancel")))

    def download(self, url: str, dest: Path) -> Path:
        r = self.http.get(url)
        if r.status_code != 200:
            raise UiError(f"download failed ({r.status_code})")
        dest.write_bytes(r.content)
        return dest

    def wait(self, job_id: str, timeout_s: float, on_update: Callable[[dict[str, Any]], None] | None = None,
             ) -> dict[str, Any]:
        """Poll until the job ends (bounded by `timeout_s`)."""
        deadline = time.monotonic() + timeout_s
        while True:
            view = self.job(job_id)
            if on_update is not None:
                on_update(view)
            if view["state"] in ("succeeded", "failed", "cancelled"):
                return view
            if time.monotonic() > deadline:
                self.cancel(job_id)
                raise UiError("the job took too long and was cancelled")
            time.sleep(POLL_S)

    def plan(self, mode: str, args: dict[str, Any], timeout_s: float = 300.0) -> dict[str, Any]:
        """Run a planner job (format / sample / understand) and return its plan."""
        return dict(self._run(mode, args, timeout_s).get("plan") or {})

    def codes(self, upload_id: str, timeout_s: float = 300.0) -> list[int]:
        """An uploaded song's 5 Hz audio codes (a "codes" job: the model's tokenizer, no planner)."""
        return [int(c) for c in self._run("codes", {"audio": upload_id}, timeout_s).get("codes") or []]

    def _run(self, mode: str, args: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        view = self.wait(self.submit({"mode": mode, **args})["id"], timeout_s)
        if view["state"] != "succeeded":
            raise UiError((view.get("error") or {}).get("message") or f"{mode} job {view['state']}")
        return dict(view.get("result") or {})


def _error_text(detail: Any, status: int) -> str:
    if isinstance(detail, list) and detail:
        first = detail[0]
        loc = ".".join(str(p) for p in first.get("loc", [])[1:] if p != "request")
        return f"{loc}: {first.get('msg')}" if loc else str(first.get("msg"))
    return str(detail or f"request failed ({status})")


# ---------------------------------------------------------------------------------------------- values -> JSON
AUTO_ZERO = frozenset({"text.duration_s", "text.bpm", "diffusion.num_steps", "diffusion.shift",
                       "diffusion.guidance_scale", "task.end_s", "task.context_s"})
"""Optional numbers for which 0 is never valid: Gradio sends 0 for an emptied number box, so 0 means "auto"."""


def _blank(value: Any, path: str = "") -> bool:
    return value is None or value == "" or value == [] or (path in AUTO_ZERO and value == 0)


def _seeds(text: str) -> list[int] | None:
    parts = [p.strip() for p in str(text or "").split(",") if p.strip()]
    try:
        return [int(p) for p in parts] or None
    except ValueError:
        raise UiError("seeds: give whole numbers separated by commas") from None


def _codes(text: str) -> list[int]:
    try:
        return list(rq.parse_audio_codes(str(text)))
    except InvalidRequest as exc:
        raise UiError(f"audio codes: {exc.message}") from None


def request_from_values(values: dict[str, Any], upload: Callable[[str], str]) -> dict[str, Any]:
    """Build the `/v1/jobs` generate body from UI values keyed by request path. Blank values are left out
    (the server's dataclass defaults apply); audio file paths are uploaded and replaced by upload ids."""
    kind = values.get("task.kind") or "text2music"
    task_fields = {f.name for f in dataclasses.fields(rq.TASK_KINDS[kind])}
    task: dict[str, Any] = {"kind": kind}
    request: dict[str, Any] = {"task": task}
    for path, value in values.items():
        head, _, name = path.partition(".")
        if _blank(value, path) or path == "task.kind" or head in ("simple", "loras", "ui"):
            continue
        if head == "task":
            if name not in task_fields:
                continue
            task[name] = upload(value) if name == "source" else value
        elif head == "reference_audio":
            request["reference_audio"] = upload(value)
        elif head == "seeds":
            request["seeds"] = _seeds(value)
        elif head == "audio_codes":
            request["audio_codes"] = _codes(value)
        elif head == "batch_size":
            request["batch_size"] = int(value)
        elif head == "planner":
            request.setdefault("planner", {})[name] = value
        else:
            request.setdefault(head, {})[name] = _typed(path, value)
    if request.get("planner") and not request["planner"].get("think"):
        del request["planner"]  # planner options matter only when thinking is on
    if not _blank(values.get("loras.path")):
        lora = {"path": values["loras.path"]}
        if values.get("loras.scale") is not None:
            lora["scale"] = float(values["loras.scale"])
        request["loras"] = [lora]
    if request.get("seeds") and len(request["seeds"]) not in (1, request.get("batch_size", 1)):
        raise UiError("seeds: give one seed, or one per song in the batch")
    return request


def lora_choices(listing: dict[str, Any] | None) -> tuple[list[tuple[str, str]], str]:
    """Dropdown choices ``(label, adapter name)`` (first "(none)" = no adapter) and a note for the user, from a
    `GET /v1/loras` body (None: the server could not be asked). Adapters the server flags as broken are left out."""
    none = [("(none)", "")]
    if listing is None:
        return none, "Could not ask the server for its LoRA adapters."
    if not listing.get("enabled"):
        return none, "LoRA is off on this server (start it with `--lora-dir FOLDER`)."
    items = listing.get("loras") or []
    usable = [item for item in items if not item.get("error")]
    choices = none + [(_lora_label(item), str(item["name"])) for item in usable]
    if not usable:
        note = "The server's LoRA folder holds no usable adapter."
    else:
        note = f"{len(usable)} adapter(s) on the server. Scale: 0 = off, 1 = as trained, up to 2."
    broken = [str(item["name"]) for item in items if item.get("error")]
    if broken:
        note += f" Not usable: {', '.join(broken)}."
    return choices, note


def _lora_label(item: dict[str, Any]) -> str:
    facts = [f"rank {item['rank']}" if item.get("rank") else "",
             f"alpha {item['alpha']:g}" if item.get("alpha") else "",
             _size(int(item["size_bytes"])) if item.get("size_bytes") else ""]
    facts = [f for f in facts if f]
    return f"{item['name']} ({', '.join(facts)})" if facts else str(item["name"])


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{max(1, round(n / 1024))} KiB"


def _typed(path: str, value: Any) -> Any:
    if path in ("text.bpm", "diffusion.num_steps", "text.timesignature"):
        return int(value)
    if path in ("text.duration_s", "diffusion.shift", "diffusion.guidance_scale"):
        return float(value)
    return value


def dataclass_default(path: str) -> Any:
    """The request dataclasses' default for a field path (the UI shows it; it never defines its own)."""
    head, _, name = path.partition(".")
    if head == "task":
        kind, _, name = name.partition(":")
        return getattr(rq.TASK_KINDS[kind](), name)
    objs = {"text": rq.TextInputs(), "diffusion": rq.DiffusionOptions(), "output": rq.OutputOptions(),
            "planner": rq.PlannerOptions(), "loras": rq.LoraSpec(path="x")}
    if head in objs:
        return getattr(objs[head], name)
    return getattr(rq.GenerationRequest(), head)


def history_entry(job_id: str, values: dict[str, Any], view: dict[str, Any]) -> dict[str, Any]:
    """What the history keeps of a finished job: its table row, the form values it was submitted with (by field
    path) and the seeds its songs were made with (empty when it made none)."""
    seeds = [int(o["seed"]) for o in view.get("outputs") or [] if o.get("seed") is not None]
    row = [job_id[:8], values.get("task.kind") or "text2music", str(values.get("text.caption") or "")[:60],
           view["state"], ",".join(map(str, seeds)), len(view.get("outputs") or [])]
    return {"row": row, "values": dict(values), "seeds": seeds}


def restored_values(entry: dict[str, Any], paths: list[str]) -> list[Any]:
    """Form values for `paths` that redo a history entry: its submitted values, with the seeds box set to the seeds
    the job actually used (so a random-seed song can be made again) and audio files Gradio has since deleted left
    empty (the user uploads them again)."""
    values = entry.get("values") or {}
    out = []
    for path in paths:
        value = values.get(path)
        if path == "seeds" and entry.get("seeds"):
            value = ", ".join(map(str, entry["seeds"]))
        elif path in FILE_FIELDS and value and not Path(str(value)).is_file():
            value = None
        out.append(value)
    return out


# ---------------------------------------------------------------------------------------------- Gradio
def _components(gr: Any) -> dict[str, Any]:
    """Create the input components, keyed by request field path (created inside a Blocks context)."""
    d = dataclass_default
    c: dict[str, Any] = {}
    with gr.Tab("Song"):
        with gr.Row():
            c["task.kind"] = gr.Dropdown(list(rq.TASK_KINDS), value="text2music", label="Task")
            c["text.duration_s"] = gr.Number(value=d("text.duration_s"), label="Duration (s, empty = auto)")
            c["batch_size"] = gr.Slider(1, rq.MAX_BATCH, value=d("batch_size"), step=1, label="Songs (batch)")
        c["text.caption"] = gr.Textbox(label="Caption", value=d("text.caption"), lines=2, max_length=4096,
                                       placeholder="genre, instruments, mood", elem_id="caption")
        c["text.lyrics"] = gr.Textbox(label="Lyrics", value=d("text.lyrics"), lines=6, max_length=16384)
        with gr.Row():
            c["text.bpm"] = gr.Number(value=d("text.bpm"), label="BPM (empty = auto)", precision=0)
            c["text.keyscale"] = gr.Dropdown(["", *sorted(rq.VALID_KEYSCALES)], value="", label="Key")
            c["text.timesignature"] = gr.Dropdown(["", *map(str, rq.VALID_TIME_SIGNATURES)], value="",
                                                  label="Beats per bar")
            c["text.language"] = gr.Textbox(value=d("text.language"), label="Vocal language", max_lines=1)
        with gr.Accordion("Audio inputs and task options", open=False):
            with gr.Row():
                c["task.source"] = gr.Audio(type="filepath", sources=["upload"], label="Source audio (edit tasks)")
                c["reference_audio"] = gr.Audio(type="filepath", sources=["upload"], label="Reference audio (style)")
            c["audio_codes"] = gr.Textbox(value="", lines=2, max_length=65536,
                                          label="Audio codes (5 Hz; integers or <|audio_code_N|> text from a plan or "
                                                "`encore understand`; text2music and cover; empty = none)")
            with gr.Row():
                c["task.cover_strength"] = gr.Slider(0, 1, value=d("task.cover:cover_strength"), label="Cover strength")
                c["task.quantize"] = gr.Checkbox(value=d("task.cover:quantize"),
                                                 label="Cover through the 5 Hz codes (off: Remix raw)")
                c["task.start_s"] = gr.Number(value=d("task.repaint:start_s"), label="Start (s)")
                c["task.end_s"] = gr.Number(value=d("task.repaint:end_s"), label="End (s, empty = end)")
            with gr.Row():
                c["task.seconds"] = gr.Number(value=d("task.extend:seconds"), label="Extend by (s)")
                c["task.side"] = gr.Radio(["before", "after"], value=d("task.extend:side"), label="Extend side")
                c["task.context_s"] = gr.Number(value=d("task.extend:context_s"), label="Context (s)")
                c["task.track"] = gr.Dropdown(["", *TRACK_NAMES], value="", label="Track (extract / lego)")
                c["task.tracks"] = gr.Dropdown(list(TRACK_NAMES), value=[], multiselect=True,
                                               label="Tracks to add (complete)")
    with gr.Tab("Simple mode"):
        c["simple.query"] = gr.Textbox(label="Describe the song", lines=2, max_length=2048)
        c["simple.instrumental"] = gr.Checkbox(value=False, label="Instrumental")
    with gr.Tab("Advanced"):
        with gr.Row():
            c["diffusion.num_steps"] = gr.Number(value=d("diffusion.num_steps"), label="Steps (empty = model)",
                                                 precision=0)
            c["diffusion.shift"] = gr.Number(value=d("diffusion.shift"), label="Shift (empty = model)")
            c["diffusion.guidance_scale"] = gr.Number(value=d("diffusion.guidance_scale"), label="Guidance")
            c["diffusion.solver"] = gr.Radio([("model", ""), ("ode", "ode"), ("sde", "sde")], value="",
                                             label="Solver (model = the model's default)")
            c["diffusion.guide_hints"] = gr.Checkbox(value=d("diffusion.guide_hints"),
                                                     label="Guidance on beat/key hints (embedded base)")
        with gr.Row():
            c["seeds"] = gr.Textbox(value="", label="Seeds (comma-separated, empty = random)", elem_id="seeds")
            c["output.format"] = gr.Dropdown(list(FORMATS), value=d("output.format"), label="Format")
        with gr.Row():
            c["planner.think"] = gr.Checkbox(value=d("planner.think"), label="Planner thinking (5 Hz LM)")
            c["planner.temperature"] = gr.Slider(0, 2, value=d("planner.temperature"), label="LM temperature")
            c["planner.cfg_scale"] = gr.Slider(1, 5, value=d("planner.cfg_scale"), label="LM CFG scale")
            c["planner.top_p"] = gr.Slider(0.05, 1, value=d("planner.top_p"), label="LM top-p")
    with gr.Tab("LoRA"):
        # filled from GET /v1/loras when the page loads; disabled while the server offers no adapter
        with gr.Row():
            c["loras.path"] = gr.Dropdown([("(none)", "")], value="", label="LoRA adapter (server LoRA folder)",
                                          interactive=False, elem_id="lora")
            c["loras.scale"] = gr.Slider(0, 2, value=d("loras.scale"), label="LoRA scale", interactive=False,
                                         elem_id="lora-scale")
        c["ui.lora_note"] = gr.Markdown("Asking the server for its adapters...", elem_id="lora-note")
        c["ui.lora_refresh"] = gr.Button("Refresh adapter list", size="sm")
    return c


def build_ui(client: ApiClient, *, job_timeout_s: float = 1800.0) -> Any:
    """The Blocks app over `client`. Event handlers poll the API; they never run the model."""
    import gradio as gr

    with gr.Blocks(title="Encore", analytics_enabled=False) as demo:
        gr.Markdown("# Encore\nMusic generation through the Encore job server.")
        c = _components(gr)
        with gr.Row():
            sample_btn = gr.Button("Create sample (planner)")
            format_btn = gr.Button("Format caption and lyrics (planner)")
            understand_btn = gr.Button("Understand the source audio (planner)")
            codes_btn = gr.Button("Convert the source to codes")
            to_source_btn = gr.Button("Use song 1 as the source")
            generate_btn = gr.Button("Generate", variant="primary", elem_id="generate")
            cancel_btn = gr.Button("Cancel", elem_id="cancel")
        status = gr.Markdown("Ready.", elem_id="status")
        running = gr.State("")  # id of the job this page is waiting for ("" when none)
        players = [gr.Audio(label=f"Song {i + 1}", visible=i == 0, interactive=False, type="filepath",
                            elem_id=f"player-{i}") for i in range(MAX_PLAYERS)]
        files = gr.File(label="Downloads", file_count="multiple", interactive=False)
        history = gr.Dataframe(headers=HISTORY_HEADERS, value=[], interactive=False, elem_id="history",
                               label="Batch history (click a row to restore its settings and seeds)")
        rows = gr.State([])  # `history_entry` dicts, newest first, aligned with the table
        names = {comp: path for path, comp in c.items() if not path.startswith("ui.")}  # request fields only
        restore_paths = list(names.values())
        plan_targets = [c[f"text.{f}"] for f in PLAN_FIELDS] + [c["audio_codes"]]

        def run(values: dict[Any, Any]) -> Iterator[dict[Any, Any]]:
            by_path = {names[k]: v for k, v in values.items() if k in names}
            past = list(values.get(rows) or [])
            yield from _generate(client, by_path, past, job_timeout_s, status, players, files, history, rows,
                                 running)

        def plan(mode: str) -> Callable[[dict[Any, Any]], list[Any]]:
            def handler(values: dict[Any, Any]) -> list[Any]:
                by_path = {names[k]: v for k, v in values.items() if k in names}
                return _plan_values(client, mode, by_path)
            return handler

        generate_btn.click(run, inputs={*names, rows},
                           outputs=[status, *players, files, history, rows, running], concurrency_limit=None)
        cancel_btn.click(lambda job_id: _cancel(client, job_id), inputs=running, outputs=status,
                         concurrency_limit=None)
        sample_btn.click(plan("sample"), inputs=set(names), outputs=plan_targets)
        format_btn.click(plan("format"), inputs=set(names), outputs=plan_targets)
        understand_btn.click(plan("understand"), inputs=set(names), outputs=plan_targets)
        codes_btn.click(lambda source: _source_codes(client, source), inputs=c["task.source"],
                        outputs=c["audio_codes"])
        to_source_btn.click(lambda song: song or gr.update(), inputs=players[0], outputs=c["task.source"])

        def restore(entries: list[dict[str, Any]], evt: Any) -> list[Any]:
            row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
            if not entries or not 0 <= int(row) < len(entries):
                return [gr.update() for _ in restore_paths] + ["Nothing to restore."]
            entry = entries[int(row)]
            seeds = ", ".join(map(str, entry.get("seeds") or [])) or "the seeds it was given"
            return [*restored_values(entry, restore_paths),
                    f"Restored the settings of job `{entry['row'][0]}` (seeds: {seeds})."]

        # Gradio finds the event argument by its type hint; postponed annotations cannot name a local import
        restore.__annotations__["evt"] = gr.SelectData
        history.select(restore, inputs=rows, outputs=[*(c[p] for p in restore_paths), status])
        lora_outputs = [c["loras.path"], c["loras.scale"], c["ui.lora_note"]]
        demo.load(lambda current: _lora_updates(client, current), inputs=c["loras.path"], outputs=lora_outputs)
        c["ui.lora_refresh"].click(lambda current: _lora_updates(client, current), inputs=c["loras.path"],
                                   outputs=lora_outputs)
    return demo


def _lora_updates(client: ApiClient, current: Any) -> list[Any]:
    """Updates for (adapter dropdown, scale slider, note) from the server's adapter list; keeps the current
    choice while the server still offers it."""
    import gradio as gr

    try:
        listing: dict[str, Any] | None = client.loras()
    except (UiError, httpx.HTTPError) as exc:
        logger.warning("cannot list LoRA adapters: %s", exc)
        listing = None
    choices, note = lora_choices(listing)
    names = [value for _, value in choices]
    usable = len(names) > 1
    value = current if current in names else ""
    return [gr.update(choices=choices, value=value, interactive=usable), gr.update(interactive=usable), note]


def _cancel(client: ApiClient, job_id: str) -> str:
    """The Cancel button: ask the server to stop the job this page waits for; the waiting loop reports the end."""
    import gradio as gr

    if not job_id:
        return "Nothing to cancel."
    try:
        view = client.cancel(job_id)
    except (UiError, httpx.HTTPError) as exc:
        raise gr.Error(f"cannot cancel: {exc}") from None
    return f"Cancelling job `{job_id[:8]}` ({view['state']})..."


def _generate(client: ApiClient, values: dict[str, Any], past: list[dict[str, Any]], timeout_s: float, status: Any,
              players: list[Any], files: Any, history: Any, rows: Any, running: Any) -> Iterator[dict[Any, Any]]:
    import gradio as gr

    try:
        body = request_from_values(values, client.upload)
        job = client.submit({"mode": "generate", "request": body})
    except UiError as exc:
        raise gr.Error(str(exc)) from None
    yield {status: f"Queued (job `{job['id'][:8]}`, position {job['queue_position']}).", running: job["id"]}
    view = job
    deadline = time.monotonic() + timeout_s
    while view["state"] not in ("succeeded", "failed", "cancelled"):
        if time.monotonic() > deadline:
            client.cancel(job["id"])
            raise gr.Error("the job took too long and was cancelled")
        time.sleep(POLL_S)
        view = client.job(job["id"])
        yield {status: f"{view['state'].capitalize()}: {view['stage'] or 'waiting'} {view['progress'] * 100:.0f}%"}
    entries = [history_entry(job["id"], values, view), *past][:HISTORY_SIZE]
    table = [e["row"] for e in entries]
    if view["state"] != "succeeded":
        err = view.get("error") or {}
        yield {status: f"**{view['state']}**: {err.get('message', '')} (`{err.get('code', '')}`)",
               history: table, rows: entries, running: ""}
        return
    folder = Path(tempfile.mkdtemp(prefix="encore-ui-"))
    paths = [str(client.download(o["url"], folder / f"{job['id'][:8]}-{o['index']}.{o['format']}"))
             for o in view["outputs"]]
    update: dict[Any, Any] = {status: f"Done: {len(paths)} song(s).", files: paths, history: table, rows: entries,
                              running: ""}
    for i, player in enumerate(players):
        update[player] = gr.update(value=paths[i] if i < len(paths) else None, visible=i < len(paths) or i == 0)
    yield update


def _source_codes(client: ApiClient, source: Any) -> str:
    """The "Convert the source to codes" button: the source's codes as text for the audio-codes box."""
    import gradio as gr

    try:
        if _blank(source):
            raise UiError("codes: load a source audio file first (Audio inputs and task options)")
        return " ".join(map(str, client.codes(client.upload(source))))
    except UiError as exc:
        raise gr.Error(str(exc)) from None


def _plan_values(client: ApiClient, mode: str, values: dict[str, Any]) -> list[Any]:
    import gradio as gr

    try:
        if mode == "sample":
            args = {"query": values.get("simple.query") or "",
                    "instrumental": bool(values.get("simple.instrumental"))}
        elif mode == "understand":
            if _blank(values.get("task.source")):
                raise UiError("understand: load a source audio file first (Audio inputs and task options)")
            args = {"audio": client.upload(values["task.source"])}
        else:
            args = {"caption": values.get("text.caption") or "", "lyrics": values.get("text.lyrics") or ""}
        plan = client.plan(mode, args)
    except UiError as exc:
        raise gr.Error(str(exc)) from None
    out = []
    for f in PLAN_FIELDS:
        value = plan.get(f, values.get(f"text.{f}"))
        out.append(str(value) if f == "timesignature" and value is not None else value)
    codes = plan.get("codes")  # understand: the source's own codes, to render again
    out.append(" ".join(map(str, codes)) if isinstance(codes, list) and codes else values.get("audio_codes", ""))
    return out
