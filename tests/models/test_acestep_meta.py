"""Full-size `AceStepModel` (2B and XL) on the meta device: builds, no buffers, parameter counts per network.

Counts are cross-checked against the diffusers 0.42.1 modules built on the meta device at the same geometry.
"""

from __future__ import annotations

import pytest
import torch

from encore.models.acestep import AceStepModel
from encore.models.config import AceStepConfig

NETWORKS = ("decoder", "encoder", "tokenizer", "detokenizer")


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("config", [AceStepConfig(), AceStepConfig.xl()], ids=["2b", "xl"])
def test_meta_build_and_parameter_counts(config: AceStepConfig) -> None:
    with torch.device("meta"):
        model = AceStepModel(config)
    assert all(p.is_meta for p in model.parameters())
    assert list(model.buffers()) == []  # RoPE/FSQ constants are computed, never stored
    counts = {name: _count(getattr(model, name)) for name in NETWORKS}
    counts["null_condition_emb"] = model.null_condition_emb.numel()
    total = _count(model)
    assert total == sum(counts.values())
    print(f"\n{'xl' if config.hidden_size != config.enc_hidden_size else '2b'} parameters: "
          + ", ".join(f"{k} {v:,}" for k, v in counts.items()) + f", total {total:,}")
    assert model.null_condition_emb.shape == (1, 1, config.enc_hidden_size)
    assert model.decoder.condition_embedder.weight.shape == (config.hidden_size, config.enc_hidden_size)

    pytest.importorskip("diffusers")
    from helpers.acestep_reference import component_class, diffusers_kwargs

    ref = {}
    with torch.device("meta"):
        for name, kwargs in diffusers_kwargs(config).items():
            ref[name] = _count(component_class(name)(**kwargs))
    assert counts["decoder"] == ref["transformer"]
    assert counts["encoder"] + counts["null_condition_emb"] == ref["condition_encoder"]
    assert counts["tokenizer"] == ref["audio_tokenizer"]
    assert counts["detokenizer"] == ref["audio_token_detokenizer"]
