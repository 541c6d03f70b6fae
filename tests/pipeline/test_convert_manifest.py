"""State-dict manifest tests: our modules (and diffusers') mapped to official names must match the committed
key -> shape manifests derived from SPEC §2 by tests/scripts/make_official_manifest.py."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch

from encore.models.config import AceStepConfig
from encore.pipeline import convert

DATA = Path(__file__).resolve().parents[1] / "data"
VARIANTS = {"2b": AceStepConfig, "xl": AceStepConfig.xl}


def _manifest(name: str) -> dict[str, list[int]]:
    doc = json.loads((DATA / f"official_keys_{name}.json").read_text(encoding="utf-8"))
    assert doc["num_tensors"] == len(doc["tensors"])
    return doc["tensors"]


def _diff(ours: dict[str, list[int]], manifest: dict[str, list[int]]) -> str:
    missing = sorted(set(manifest) - set(ours))[:5]
    extra = sorted(set(ours) - set(manifest))[:5]
    shapes = [(k, ours[k], manifest[k]) for k in sorted(set(ours) & set(manifest)) if ours[k] != manifest[k]][
        :5
    ]
    return f"missing={missing} extra={extra} shape mismatches={shapes}"


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_encore_model_matches_official_manifest(name):
    from encore.models.acestep import AceStepModel

    with torch.device("meta"):
        model = AceStepModel(VARIANTS[name]())
    ours = {k: list(v.shape) for k, v in convert.encore_to_official(model.state_dict()).items()}
    manifest = _manifest(name)
    assert ours == manifest, _diff(ours, manifest)


def test_manifest_parameter_count_matches_published_size():
    # PERFORMANCE.md: the 2B DiT checkpoint holds 2,394 M parameters (4.79 GB in bf16).
    total = sum(int(torch.Size(s).numel()) for s in _manifest("2b").values())
    assert round(total / 1e6) == 2394


@pytest.mark.parity
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_diffusers_modules_match_official_manifest(name):
    from diffusers.models.transformers.ace_step_transformer import AceStepTransformer1DModel
    from diffusers.pipelines.ace_step.modeling_ace_step import (
        AceStepAudioTokenDetokenizer,
        AceStepAudioTokenizer,
        AceStepConditionEncoder,
    )

    classes = {
        "transformer": AceStepTransformer1DModel,
        "condition_encoder": AceStepConditionEncoder,
        "audio_tokenizer": AceStepAudioTokenizer,
        "audio_token_detokenizer": AceStepAudioTokenDetokenizer,
    }
    cfgs = convert.config_to_diffusers(VARIANTS[name]())
    ours: dict[str, list[int]] = {}
    with torch.device("meta"):
        for component, cls in classes.items():
            module = cls(
                **{k: v for k, v in cfgs[component].items() if k in inspect.signature(cls).parameters}
            )
            sd = {k: list(v.shape) for k, v in module.state_dict().items()}
            ours.update(convert.diffusers_to_official(component, sd))
    manifest = _manifest(name)
    assert ours == manifest, _diff(ours, manifest)
