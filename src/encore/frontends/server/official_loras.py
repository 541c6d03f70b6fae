"""The official server's LoRA routes (`/v1/lora/load|unload|toggle|scale|status`) over our per-request adapters.

Upstream loads adapters into the one shared model, so one client's `load` changes every other client's songs.
Here each client (API key, or "local" without keys) has its own set: the routes only record which adapters of
the server's LoRA folder (`--lora-dir`) that client's `/release_task` generations apply, at what scale, and
`release_task` turns the set into the request's `loras` list. `lora_path` names an adapter in that folder (as
`GET /v1/loras` lists them); server paths are refused like every other client path. The sets live in the API
process's memory: a restart forgets them, as upstream forgets a loaded adapter.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from encore.frontends.server.loras import LORA_NAME_PATTERN, find_adapter
from encore.frontends.server.schemas import ERROR_RESPONSES
from encore.frontends.server.service import JobService, field_error, owner

MAX_ADAPTERS = 8
"""Adapters one client may have loaded at once."""


@dataclass
class _ClientLoras:
    adapters: dict[str, tuple[str, float]] = field(default_factory=dict)  # adapter_name -> (folder entry, scale)
    use_lora: bool = True


class LoraSessions:
    """Each client's loaded adapters (thread-safe: routes run in the threadpool and on the event loop)."""

    def __init__(self) -> None:
        self._clients: dict[str, _ClientLoras] = {}
        self._lock = threading.Lock()

    def request_loras(self, own: str) -> list[dict[str, Any]]:
        """The `loras` list for this client's next generation (empty when none is loaded or LoRA is off)."""
        with self._lock:
            state = self._clients.get(own)
            if state is None or not state.use_lora:
                return []
            return [{"path": entry, "scale": scale} for entry, scale in state.adapters.values()]

    def status(self, own: str, enabled: bool) -> dict[str, Any]:
        with self._lock:
            state = self._clients.get(own, _ClientLoras())
            adapters = [{"adapter_name": name, "lora_path": entry, "scale": scale}
                        for name, (entry, scale) in state.adapters.items()]
            return {"loaded": bool(adapters), "use_lora": state.use_lora and bool(adapters),
                    "adapters": adapters, "scales": {a["adapter_name"]: a["scale"] for a in adapters},
                    "lora_enabled_on_server": enabled}

    def load(self, own: str, name: str, entry: str) -> None:
        with self._lock:
            state = self._clients.setdefault(own, _ClientLoras())
            if name not in state.adapters and len(state.adapters) >= MAX_ADAPTERS:
                raise field_error(("body", "adapter_name"), f"at most {MAX_ADAPTERS} adapters may be loaded; "
                                                            "unload one first")  # fmt: skip
            state.adapters[name] = (entry, 1.0)
            state.use_lora = True

    def unload(self, own: str, name: str | None) -> list[str]:
        with self._lock:
            state = self._clients.setdefault(own, _ClientLoras())
            if name is None:
                gone = list(state.adapters)
                state.adapters.clear()
                return gone
            if name not in state.adapters:
                raise field_error(("body", "adapter_name"), f"no adapter {name!r} is loaded")
            del state.adapters[name]
            return [name]

    def toggle(self, own: str, use_lora: bool) -> None:
        with self._lock:
            self._clients.setdefault(own, _ClientLoras()).use_lora = use_lora

    def scale(self, own: str, scale: float, name: str | None) -> list[str]:
        with self._lock:
            state = self._clients.setdefault(own, _ClientLoras())
            if not state.adapters:
                raise field_error(("body", "adapter_name"), "no adapter is loaded (POST /v1/lora/load first)")
            if name is not None and name not in state.adapters:
                raise field_error(("body", "adapter_name"), f"no adapter {name!r} is loaded")
            names = [name] if name is not None else list(state.adapters)
            for n in names:
                state.adapters[n] = (state.adapters[n][0], scale)
            return names


_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)
AdapterName = Annotated[str, Field(pattern=LORA_NAME_PATTERN)]


class LoadBody(BaseModel):
    model_config = _CONFIG
    lora_path: Annotated[str, Field(max_length=200)]
    adapter_name: AdapterName | None = None


class UnloadBody(BaseModel):
    model_config = _CONFIG
    adapter_name: AdapterName | None = None


class ToggleBody(BaseModel):
    model_config = _CONFIG
    use_lora: bool


class ScaleBody(BaseModel):
    model_config = _CONFIG
    scale: Annotated[float, Field(ge=0.0, le=2.0)]
    adapter_name: AdapterName | None = None


def add_lora_routes(router: APIRouter, service: JobService, sessions: LoraSessions,
                    envelope: Any) -> None:  # fmt: skip
    """Add the five routes to the official router (`envelope` wraps data in the official reply)."""
    lora_dir = service.settings.lora_dir

    @router.post("/v1/lora/load", responses=ERROR_RESPONSES, summary="Apply an adapter of the server's LoRA folder to this client's songs.")
    def load(request: Request, body: LoadBody) -> dict[str, Any]:
        if not lora_dir:
            raise field_error(("body", "lora_path"), "LoRA adapters are disabled on this server (--lora-dir)")
        if find_adapter(lora_dir, body.lora_path) is None:
            raise field_error(("body", "lora_path"), f"no adapter {body.lora_path!r} in the server's LoRA folder "
                              "(give a name from GET /v1/loras; server paths are not accepted)")
        name = body.adapter_name or body.lora_path
        sessions.load(owner(request), name, body.lora_path)
        return envelope({"message": f"LoRA {name!r} loaded", "adapter_name": name, "lora_path": body.lora_path})

    @router.post("/v1/lora/unload", responses=ERROR_RESPONSES, summary="Stop applying one adapter (adapter_name) or all of them.")
    def unload(request: Request, body: UnloadBody | None = None) -> dict[str, Any]:
        gone = sessions.unload(owner(request), body.adapter_name if body else None)
        return envelope({"message": f"unloaded {len(gone)} adapter(s)", "unloaded": gone})

    @router.post("/v1/lora/toggle", responses=ERROR_RESPONSES, summary="Turn this client's loaded adapters on or off.")
    def toggle(request: Request, body: ToggleBody) -> dict[str, Any]:
        sessions.toggle(owner(request), body.use_lora)
        return envelope({"message": f"LoRA {'enabled' if body.use_lora else 'disabled'}",
                         "use_lora": body.use_lora})

    @router.post("/v1/lora/scale", responses=ERROR_RESPONSES, summary="Scale one adapter (adapter_name) or all; 0 = off, 1 = as trained.")
    def scale(request: Request, body: ScaleBody) -> dict[str, Any]:
        names = sessions.scale(owner(request), body.scale, body.adapter_name)
        return envelope({"message": f"LoRA scale set to {body.scale:g}", "adapters": names, "scale": body.scale})

    @router.get("/v1/lora/status", responses=ERROR_RESPONSES, summary="This client's loaded adapters, their scales and whether they apply.")
    def status(request: Request) -> dict[str, Any]:
        return envelope(sessions.status(owner(request), bool(lora_dir)))
