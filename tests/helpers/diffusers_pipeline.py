"""Builds a diffusers 0.42.1 `AceStepPipeline` carrying the same weights as an Encore `Pipeline`.

The DiT-side weights travel official keys -> diffusers components through `encore.pipeline.convert` (the
production key map); the VAE is loaded by diffusers itself from the checkpoint's `vae/` folder, and the text
encoder (a transformers `Qwen3Model`) and tokenizer are shared objects.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import pytest
import torch

from encore.pipeline.checkpoint import read_safetensors
from encore.pipeline.convert import config_to_diffusers, official_to_diffusers

_CLASSES = {
    "transformer": ("diffusers.models.transformers.ace_step_transformer", "AceStepTransformer1DModel"),
    "condition_encoder": ("diffusers.pipelines.ace_step.modeling_ace_step", "AceStepConditionEncoder"),
    "audio_tokenizer": ("diffusers.pipelines.ace_step.modeling_ace_step", "AceStepAudioTokenizer"),
    "audio_token_detokenizer": ("diffusers.pipelines.ace_step.modeling_ace_step", "AceStepAudioTokenDetokenizer"),
}


def diffusers_pipeline_for(pipe: Any) -> Any:
    """A diffusers `AceStepPipeline` (fp32, CPU) with the weights of Encore pipeline `pipe`."""
    diffusers = pytest.importorskip("diffusers")
    paths = pipe.components.paths
    official = read_safetensors(paths.dit / "model.safetensors")
    parts = official_to_diffusers(official, silence_latent=pipe.components.silence_latent.float().cpu())
    modules: dict[str, torch.nn.Module] = {}
    for name, kwargs in config_to_diffusers(pipe.config).items():
        module_name, class_name = _CLASSES[name]
        cls = getattr(importlib.import_module(module_name), class_name)
        accepted = inspect.signature(cls.__init__).parameters
        module = cls(**{k: v for k, v in kwargs.items() if k in accepted})
        state = parts[name]
        if name == "condition_encoder":
            # diffusers registers a fixed [1, 15000, C] placeholder; size it to this checkpoint's silence.
            module.silence_latent = torch.zeros_like(state["silence_latent"])
        module.load_state_dict(state, strict=True)
        modules[name] = module.eval()
    vae = diffusers.AutoencoderOobleck.from_pretrained(str(paths.vae)).eval()
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0)
    text_model = getattr(pipe.text_encoder, "model", pipe.text_encoder)
    ref = diffusers.AceStepPipeline(vae=vae, text_encoder=text_model, tokenizer=pipe.tokenizer,
                                    scheduler=scheduler, **modules)
    ref.set_progress_bar_config(disable=True)
    return ref


class FixedPosterior:
    """Stands in for diffusers' posterior so its `.sample()` uses a given generator's noise (same as ours)."""

    def __init__(self, dist: Any, generator: torch.Generator) -> None:
        self.dist, self.generator = dist, generator

    def sample(self, generator: Any = None) -> torch.Tensor:
        eps = torch.randn(self.dist.mean.shape, generator=self.generator, dtype=self.dist.mean.dtype)
        return self.dist.mean + self.dist.std * eps


def patch_posterior_noise(ref: Any, generators: list[torch.Generator]) -> None:
    """Make the reference VAE's next encodes draw posterior noise from `generators`, in call order."""
    original = ref.vae.encode
    queue = list(generators)

    def encode(x: torch.Tensor, return_dict: bool = True) -> Any:
        out = original(x)
        out.latent_dist = FixedPosterior(out.latent_dist, queue.pop(0))
        return out

    ref.vae.encode = encode
