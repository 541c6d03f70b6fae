"""Parity: `ConditionEncoder` (+ `null_condition_emb`) vs diffusers 0.42.1 `AceStepConditionEncoder`."""

from __future__ import annotations

import pytest
import torch
from helpers.acestep_reference import build_reference, encore_from_reference, max_abs_diff

from encore.models.config import AceStepConfig

pytestmark = pytest.mark.parity

CONFIG = AceStepConfig.tiny()


@pytest.fixture(scope="module")
def models() -> tuple[dict, torch.nn.Module]:
    ref = build_reference(CONFIG)
    return ref, encore_from_reference(CONFIG, ref)


def _inputs(refs: str) -> tuple[torch.Tensor, ...]:
    """Padded batch of 2: lyric lengths 40/9 (longer than the window 16), text lengths 7/11."""
    gen = torch.Generator().manual_seed(2)
    batch, lt, ll, tr = 2, 11, 40, CONFIG.timbre_fix_frame
    text = torch.randn(batch, lt, CONFIG.text_hidden_dim, generator=gen)
    text_mask = torch.ones(batch, lt, dtype=torch.long)
    text_mask[0, 7:] = 0
    lyric = torch.randn(batch, ll, CONFIG.text_hidden_dim, generator=gen)
    lyric_mask = torch.ones(batch, ll, dtype=torch.long)
    lyric_mask[1, 9:] = 0
    if refs == "silence":  # no reference audio: every item gets the (same) silence latent window
        silence = torch.randn(1, tr, CONFIG.timbre_hidden_dim, generator=gen)
        packed, order = silence.expand(batch, -1, -1).clone(), torch.tensor([0, 1])
    else:  # three references: two for item 0 (non-adjacent in the packed order), one for item 1
        packed = torch.randn(3, tr, CONFIG.timbre_hidden_dim, generator=gen)
        order = torch.tensor([0, 1, 0])
    return text, text_mask, lyric, lyric_mask, packed, order


@pytest.mark.parametrize("refs", ["silence", "multi"])
def test_condition_encoder_matches_diffusers(models: tuple[dict, torch.nn.Module], refs: str) -> None:
    ref, ours = models
    inputs = _inputs(refs)
    with torch.no_grad():
        exp_h, exp_m = ref["condition_encoder"](*inputs)
        got_h, got_m = ours.encoder(*inputs)
    diff, tol = max_abs_diff(got_h, exp_h)
    print(f"condition encoder ({refs}) max abs diff {diff:.3e} (tol {tol:.1e}), shape {tuple(got_h.shape)}")
    assert diff <= tol
    assert torch.equal(got_m.to(torch.bool), exp_m.to(torch.bool))
    # Null condition lives on AceStepModel (diffusers keeps it on the condition encoder).
    ref_null = ref["condition_encoder"].null_condition_emb.expand_as(exp_h)
    assert torch.equal(ours.null_condition(got_h), ref_null)
