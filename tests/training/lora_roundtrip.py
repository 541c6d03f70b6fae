"""Generate with an exported LoRA through `Pipeline.generate`; also runnable as a script for a fresh process.

`python lora_roundtrip.py CHECKPOINT ADAPTER SCALE SEED OUT.safetensors` writes the latents and audio.
"""

from __future__ import annotations

import sys

import torch

CAPTION = "tinystyle, a test song"
DURATION_S = 2.0


def generate(checkpoint: str, adapter: str | None, scale: float, seed: int) -> dict[str, torch.Tensor]:
    """Latents and audio of one fixed text2music request, with `adapter` applied at `scale` (None: base model)."""
    from encore.pipeline.pipeline import Pipeline
    from encore.pipeline.request import GenerationRequest, LoraSpec, TextInputs

    pipe = Pipeline.from_pretrained(checkpoint, device="cpu", dtype="float32")
    request = GenerationRequest(text=TextInputs(caption=CAPTION, duration_s=DURATION_S), seeds=(seed,),
                                loras=(LoraSpec(path=adapter, scale=scale),) if adapter else ())
    result = pipe.generate(request)
    return {"latents": result.latents, "audio": result.audio}


if __name__ == "__main__":
    from safetensors.torch import save_file

    ckpt, adapter, scale, seed, out = sys.argv[1:6]
    save_file(generate(ckpt, adapter, float(scale), int(seed)), out)
