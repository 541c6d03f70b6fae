"""Builds diffusers 0.42.1 ACE-Step modules at tiny size and copies their random weights into `AceStepModel`.

Weights travel diffusers -> official keys -> Encore keys through `encore.pipeline.convert`, so the parity
tests also exercise the production key maps.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import pytest
import torch

from encore.models.acestep import AceStepModel
from encore.models.config import AceStepConfig

COMPONENT_CLASSES = {
    "transformer": ("diffusers.models.transformers.ace_step_transformer", "AceStepTransformer1DModel"),
    "condition_encoder": ("diffusers.pipelines.ace_step.modeling_ace_step", "AceStepConditionEncoder"),
    "audio_tokenizer": ("diffusers.pipelines.ace_step.modeling_ace_step", "AceStepAudioTokenizer"),
    "audio_token_detokenizer": (
        "diffusers.pipelines.ace_step.modeling_ace_step", "AceStepAudioTokenDetokenizer"
    ),
}


def _perturb_norms(module: torch.nn.Module, generator: torch.Generator) -> None:
    """RMSNorm weights start at 1; randomise them so a swapped or missing norm cannot go unnoticed."""
    with torch.no_grad():
        for sub in module.modules():
            weight = getattr(sub, "weight", None)
            if "RMSNorm" in type(sub).__name__ and isinstance(weight, torch.nn.Parameter):
                weight.copy_(1.0 + 0.2 * torch.randn(weight.shape, generator=generator))


def component_class(name: str) -> Any:
    module_name, class_name = COMPONENT_CLASSES[name]
    return getattr(importlib.import_module(module_name), class_name)


def diffusers_kwargs(config: AceStepConfig) -> dict[str, dict[str, Any]]:
    """Constructor kwargs of the four diffusers components for `config` (via `config_to_diffusers`)."""
    from encore.pipeline.convert import config_to_diffusers

    out = {}
    for name, kwargs in config_to_diffusers(config).items():
        # Keep only constructor arguments (convert's config dicts also carry informational keys).
        accepted = inspect.signature(component_class(name).__init__).parameters
        out[name] = {k: v for k, v in kwargs.items() if k in accepted}
    return out


def build_reference(config: AceStepConfig, seed: int = 0) -> dict[str, Any]:
    """Instantiates the four diffusers components (fp32, eval) with random weights for `config`."""
    pytest.importorskip("diffusers")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    out: dict[str, Any] = {}
    for name, kwargs in diffusers_kwargs(config).items():
        module = component_class(name)(**kwargs).eval()
        _perturb_norms(module, gen)
        out[name] = module
    return out


def encore_from_reference(config: AceStepConfig, reference: dict[str, Any]) -> AceStepModel:
    """`AceStepModel(config)` carrying the reference weights (strict load: every key must match)."""
    from encore.pipeline.convert import diffusers_to_official, official_to_encore

    official: dict[str, torch.Tensor] = {}
    for name, module in reference.items():
        official.update(diffusers_to_official(name, module.state_dict()))
    model = AceStepModel(config).eval()
    model.load_state_dict(official_to_encore(official), strict=True)
    return model


def max_abs_diff(ours: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """`(max |ours - ref|, tolerance)` with tolerance `1e-5 * max(1, max |ref|)` (fp32 parity budget)."""
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    diff = (ours.double() - ref.double()).abs().max().item()
    return diff, 1e-5 * max(1.0, ref.abs().max().item())
