"""A fast fake pipeline for server tests (no torch): sine-wave audio, progress per step, honours cancel.

Workers load it as ``frontends.server.fake_pipeline:make_fake`` (PYTHONPATH=tests). Behaviour is steered by
markers in the caption (``[fail]``, ``[nan]``, ``[silent]``, ``[hang]``, ``[slow]``, ``[audioerror]``,
``[badlora]``) and by ``settings.extra`` or JSON in ``$ENCORE_FAKE``: ``fake_step_s``, ``fake_steps``,
``fake_planner`` (offer planner modes), ``fake_load_s`` (simulated load time), ``fake_load_error`` (fail to load).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np

from encore.errors import AudioError, Cancelled, CheckpointError, InvalidRequest
from encore.pipeline.request import GenerationResult, request_to_dict

SAMPLE_RATE = 48000


class FakePipeline:
    """Satisfies the worker's pipeline protocol: `generate`, optional `plan_mode`, `server_modes`."""

    def __init__(self, extra: dict[str, Any]) -> None:
        self.step_s = float(extra.get("fake_step_s", 0.02))
        self.steps = int(extra.get("fake_steps", 4))
        self.server_modes = ("generate", "codes", "format", "sample", "understand") if extra.get("fake_planner") \
            else ("generate", "codes")
        self.calls = 0

    def generate(self, request: Any, *, progress: Any = None, cancel: Any = None) -> GenerationResult:
        self.calls += 1
        caption = request.text.caption
        source = getattr(request.task, "source", None)
        source_seconds = None
        if source is not None:
            import soundfile as sf

            if not os.path.isfile(source):
                raise AudioError(source, "missing")
            info = sf.info(source)
            source_seconds = info.frames / info.samplerate
        if "[audioerror]" in caption:
            raise AudioError("input", "cannot decode")
        if "[fail]" in caption:
            raise RuntimeError("fake failure with a secret path /etc/secret")
        lora_ids = self._check_loras(request, caption)
        step_s = 0.5 if "[slow]" in caption else self.step_s
        steps = request.diffusion.num_steps or self.steps
        for i in range(steps):
            if "[hang]" in caption:
                while True:  # ignores the cancel token on purpose
                    time.sleep(0.1)
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled")
            time.sleep(step_s)
            if progress is not None:
                progress("diffusion", (i + 1) / steps)
        seconds = request.text.duration_s or 0.5
        seeds = request.item_seeds() or tuple(range(request.batch_size))
        n = int(seconds * SAMPLE_RATE)
        t = np.arange(n, dtype=np.float32) / SAMPLE_RATE
        items = []
        for seed in seeds:
            tone = 0.3 * np.sin(2 * np.pi * (220 + seed % 200) * t)
            items.append(np.stack([tone, tone]))
        audio = np.stack(items).astype(np.float32)
        if "[nan]" in caption:
            audio[0, 0, 10] = np.nan
        if "[silent]" in caption:
            audio[:] = 0.0
        params = request_to_dict(request)
        # As the real pipeline's params: the request with the values that ran filled in.
        resolved = request_to_dict(request)
        resolved["text"]["duration_s"], resolved["diffusion"]["num_steps"] = seconds, steps
        params["request"] = resolved
        params["source_seconds"] = source_seconds
        params["lora_ids"] = lora_ids
        return GenerationResult(audio=audio, sample_rate=SAMPLE_RATE, seeds=tuple(seeds), params=params,
                                timings_s={"total": steps * step_s})

    @staticmethod
    def _check_loras(request: Any, caption: str) -> list[dict[str, Any]]:
        """Like the real pipeline: every `loras[i].path` must be an adapter on disk (``[badlora]`` reports the
        file as unusable, naming its path the way `adapter_format` errors do)."""
        ids = []
        for i, spec in enumerate(request.loras):
            weights = os.path.join(spec.path, "adapter_model.safetensors") if os.path.isdir(spec.path) else spec.path
            if not os.path.isfile(weights):
                raise InvalidRequest(f"loras[{i}].path", f"{weights}: adapter weights not found")
            if "[badlora]" in caption:
                raise InvalidRequest(f"loras[{i}].path", f"{weights} [layers.0.self_attn.q_proj.lora_A.weight]: "
                                     "shapes A[4, 16] B[16, 4] do not fit Linear(32->32)")
            ids.append({"name": os.path.basename(spec.path), "scale": spec.scale,
                        "weights_bytes": os.path.getsize(weights)})
        return ids

    def audio_codes(self, path: str) -> list[int]:
        """Like the real pipeline's: one code per 0.2 s of the file, which must be readable audio."""
        import soundfile as sf

        try:
            info = sf.info(path)
        except RuntimeError as exc:
            raise AudioError(path, "cannot decode") from exc
        return [i % 64000 for i in range(max(1, round(info.frames / info.samplerate * 5)))]

    def plan_mode(self, mode: str, args: dict[str, Any], *, progress: Any = None, cancel: Any = None) -> dict[str, Any]:
        if progress is not None:
            progress("planning", 1.0)
        if mode == "format":
            return {"caption": f"{args.get('caption', '')} (formatted)".strip(), "lyrics": args.get("lyrics", ""),
                    "bpm": args.get("bpm") or 120, "keyscale": "C major", "timesignature": 4, "duration_s": 30.0,
                    "language": "en"}
        if mode == "sample":
            return {"caption": f"a song about {args.get('query') or 'anything'}", "lyrics": "[Verse]\nla la",
                    "bpm": 100, "keyscale": "A minor", "timesignature": 4, "duration_s": 20.0, "language": "en"}
        return {"caption": "an uploaded song", "lyrics": "", "bpm": 90, "keyscale": "D major", "timesignature": 3,
                "duration_s": 10.0, "language": "unknown", "codes": [5, 6, 7, 8, 9]}


def make_fake(settings: Any) -> FakePipeline:
    """Pipeline factory used by the server tests (``--pipeline-factory frontends.server.fake_pipeline:make_fake``)."""
    extra = {**settings.extra, **json.loads(os.environ.get("ENCORE_FAKE", "{}"))}
    time.sleep(float(extra.get("fake_load_s", 0.0)))
    if extra.get("fake_load_error"):
        raise CheckpointError("fake.safetensors", "fake load failure")
    return FakePipeline(extra)
