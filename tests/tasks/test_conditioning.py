"""Each task spec yields the documented src latents / chunk mask / instruction / cover flag (SPEC §10)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from encore.errors import InvalidRequest
from encore.sampling.schedules import turbo_timesteps
from encore.sampling.solvers import injection_steps, repaint_injection, sample_euler
from encore.tasks.conditioning import (
    _fade_weights,
    assemble_latents,
    build_conditioning,
    content_frames,
    frames_for_duration,
    latent_length_with_minimum,
    seconds_to_frame,
    splice_outside_region,
)
from encore.tasks.spec import Complete, Cover, Extend, Extract, Lego, Repaint, Text2Music

SR, HOP, C = 48000, 1920, 4  # official VAE geometry (25 Hz); a few channels keep tensors small
T_SRC = 100  # a 4-second source

REPAINT = "Repaint the mask area based on the given conditions:"
COVER = "Generate audio semantic tokens based on the given conditions:"
T2M = "Fill the audio semantic mask based on the given conditions:"


@pytest.fixture
def silence() -> Tensor:
    # Distinct rows so tests can tell which silence frame landed where.
    return torch.arange(400 * C, dtype=torch.float32).view(400, C) * -1e-3


@pytest.fixture
def source() -> Tensor:
    return torch.randn(T_SRC, C, generator=torch.Generator().manual_seed(0)) + 5.0


def build(spec, source=None, silence=None, **kwargs):
    return build_conditioning(
        spec, source_latents=source, silence_latent=silence, sample_rate=SR, hop_samples=HOP, **kwargs
    )


def mask_of(cond) -> list[float]:
    return cond.chunk_mask.tolist()


# ---------------------------------------------------------------------------- geometry


def test_frames_for_duration_official_floor_rule() -> None:
    assert frames_for_duration(30.0, HOP, SR) == 750
    assert frames_for_duration(10.28, HOP, SR) == 257  # round(., 1) = 10.3 s -> 494400 samples // 1920
    assert frames_for_duration(0.04, HOP, SR) == 2  # 0.1 s minimum
    with pytest.raises(InvalidRequest) as err:
        frames_for_duration(float("nan"), HOP, SR)
    assert err.value.field == "text.duration_s"


def test_seconds_to_frame_keeps_official_float_order() -> None:
    assert seconds_to_frame(10.28, SR, HOP) == 256  # int(10.28 * 48000 // 1920); floor(10.28 * 25) is 257
    assert seconds_to_frame(1.0, SR, HOP) == 25


def test_latent_length_minimum() -> None:
    assert latent_length_with_minimum(100) == 128
    assert latent_length_with_minimum(300) == 300


# ---------------------------------------------------------------------------- full-span tasks


def test_text2music(silence: Tensor) -> None:
    cond = build(Text2Music(), silence=silence, num_frames=130)
    assert torch.equal(cond.src_latents, silence[:130])
    assert mask_of(cond) == [1.0] * 130 and cond.chunk_mask.dtype == torch.float32
    assert (cond.instruction, cond.is_cover, cond.src_is_hints) == (T2M, False, False)
    assert cond.keep is None and cond.non_cover is None and cond.region is None
    auto = build(Text2Music(), silence=silence, num_frames=130, full_span_mask_value=2.0)
    assert mask_of(auto) == [2.0] * 130


def test_text2music_with_code_hints_pads_and_crops(silence: Tensor) -> None:
    hints = torch.randn(40, C)
    cond = build(Text2Music(), silence=silence, hint_latents=hints, num_frames=128)
    assert torch.equal(cond.src_latents[:40], hints) and torch.equal(cond.src_latents[40:], silence[40:128])
    assert (cond.instruction, cond.is_cover, cond.src_is_hints, cond.num_content_frames) == (
        COVER,
        True,
        True,
        40,
    )
    cropped = build(Text2Music(), silence=silence, hint_latents=hints, num_frames=30)
    assert torch.equal(cropped.src_latents, hints[:30])
    natural = build(Text2Music(), silence=silence, hint_latents=hints)
    assert natural.num_frames == 40


def test_cover(silence: Tensor, source: Tensor) -> None:
    cond = build(Cover(source="s.wav"), source, silence, num_frames=128)
    assert torch.equal(cond.src_latents[:T_SRC], source) and torch.equal(
        cond.src_latents[T_SRC:], silence[T_SRC:128]
    )
    assert mask_of(cond) == [1.0] * 128
    assert (cond.instruction, cond.is_cover, cond.src_is_hints, cond.num_content_frames) == (
        COVER,
        True,
        False,
        T_SRC,
    )
    assert cond.non_cover is None


def test_cover_strength_builds_text2music_condition(silence: Tensor, source: Tensor) -> None:
    cond = build(Cover(source="s.wav", cover_strength=0.5), source, silence, full_span_mask_value=2.0)
    nc = cond.non_cover
    assert nc is not None
    assert torch.equal(nc.src_latents, silence[:T_SRC])
    assert torch.equal(nc.chunk_mask, cond.chunk_mask)
    assert (nc.instruction, nc.is_cover, nc.non_cover) == (T2M, False, None)


def test_cover_needs_source_or_codes(silence: Tensor) -> None:
    with pytest.raises(InvalidRequest) as err:
        build(Cover(), silence=silence)
    assert err.value.field == "task.source"
    cond = build(Cover(), silence=silence, hint_latents=torch.randn(20, C))
    assert cond.is_cover and cond.src_is_hints


@pytest.mark.parametrize(
    ("spec", "instruction"),
    [
        (Extract(track="vocals"), "Extract the VOCALS track from the audio:"),
        (Complete(tracks=("bass", "drums")), "Complete the input track with BASS | DRUMS:"),
    ],
)
def test_extract_and_complete(spec, instruction: str, silence: Tensor, source: Tensor) -> None:
    cond = build(spec, source, silence)
    assert torch.equal(cond.src_latents, source)
    assert mask_of(cond) == [1.0] * T_SRC
    assert (cond.instruction, cond.is_cover) == (instruction, False)


# ---------------------------------------------------------------------------- region tasks


def test_repaint_inside_source(silence: Tensor, source: Tensor) -> None:
    cond = build(Repaint(source="s.wav", start_s=1.0, end_s=2.0), source, silence)
    assert cond.region == (25, 50) and cond.num_frames == T_SRC
    assert mask_of(cond) == [0.0] * 25 + [1.0] * 25 + [0.0] * 50
    assert torch.equal(cond.src_latents[25:50], silence[25:50])
    assert torch.equal(cond.src_latents[:25], source[:25]) and torch.equal(cond.src_latents[50:], source[50:])
    assert (cond.instruction, cond.is_cover) == (REPAINT, False)
    assert cond.keep is not None and torch.equal(cond.keep.source_latents, source)
    assert cond.keep.generate_mask.tolist() == [m == 1.0 for m in mask_of(cond)]


def test_repaint_to_end_of_source(silence: Tensor, source: Tensor) -> None:
    cond = build(Repaint(source="s.wav", start_s=3.0), source, silence)
    assert cond.region == (75, 100)


def test_repaint_outpaint_before(silence: Tensor, source: Tensor) -> None:
    cond = build(Repaint(source="s.wav", start_s=-1.0, end_s=1.0), source, silence)
    # 25 silence frames are prepended; the window covers them and the first second of the source.
    assert cond.num_frames == 125 and cond.region == (0, 50)
    assert torch.equal(cond.src_latents[:50], silence[:50])
    assert torch.equal(cond.src_latents[50:], source[25:])
    assert torch.equal(cond.keep.source_latents[25:], source)


def test_repaint_outpaint_after(silence: Tensor, source: Tensor) -> None:
    cond = build(Repaint(source="s.wav", start_s=3.0, end_s=6.0), source, silence)
    assert cond.num_frames == 150 and cond.region == (75, 150)
    assert torch.equal(cond.src_latents[:75], source[:75])
    assert torch.equal(cond.src_latents[75:], silence[75:150])


def test_repaint_batch_padding_and_clamp(silence: Tensor, source: Tensor) -> None:
    cond = build(Repaint(source="s.wav", start_s=1.0, end_s=1.01), source, silence, num_frames=140)
    assert cond.region == (25, 26)  # e clamped to s + 1
    assert mask_of(cond) == [0.0] * 25 + [1.0] + [0.0] * 114
    assert torch.equal(cond.src_latents[T_SRC:], silence[T_SRC:140])
    assert cond.num_content_frames == T_SRC


def test_lego_keeps_source_inside_region(silence: Tensor, source: Tensor) -> None:
    cond = build(Lego(source="s.wav", track="drums", start_s=1.0, end_s=3.0), source, silence)
    assert torch.equal(cond.src_latents, source)  # newer upstream: not silenced
    assert mask_of(cond) == [0.0] * 25 + [1.0] * 50 + [0.0] * 25
    assert cond.instruction == "Generate the DRUMS track based on the audio context:"
    assert cond.keep is None and not cond.is_cover
    whole = build(Lego(source="s.wav", track="bass"), source, silence)
    assert mask_of(whole) == [1.0] * T_SRC


def test_extend_after(silence: Tensor, source: Tensor) -> None:
    cond = build(Extend(source="s.wav", seconds=2.0, side="after", context_s=1.0), source, silence)
    assert cond.num_frames == 75 and cond.region == (25, 75)
    assert torch.equal(cond.src_latents[:25], source[75:])
    assert torch.equal(cond.src_latents[25:], silence[25:75])
    assert mask_of(cond) == [0.0] * 25 + [1.0] * 50
    assert cond.instruction == REPAINT
    generated = torch.randn(2, 75, C)
    out = assemble_latents(generated, cond)
    assert out.shape == (2, 150, C)
    assert torch.equal(out[:, :T_SRC], source.expand(2, -1, -1))
    assert torch.equal(out[:, T_SRC + 10 :], generated[:, 35:])


def test_extend_before_whole_context(silence: Tensor, source: Tensor) -> None:
    cond = build(Extend(source="s.wav", seconds=1.0, side="before"), source, silence)
    assert cond.num_frames == 125 and cond.region == (0, 25)
    assert torch.equal(cond.src_latents[25:], source)
    generated = torch.randn(125, C)
    out = assemble_latents(generated, cond)
    assert out.shape == (125, C)
    assert torch.equal(out[25:], source) and torch.equal(out[:15], generated[:15])


def test_extend_before_with_context_and_batch_padding(silence: Tensor, source: Tensor) -> None:
    cond = build(
        Extend(source="s.wav", seconds=1.0, side="before", context_s=2.0), source, silence, num_frames=128
    )
    assert cond.num_content_frames == 75 and cond.num_frames == 128
    generated = torch.randn(128, C)
    out = assemble_latents(generated, cond)
    assert out.shape == (25 + T_SRC, C)
    assert torch.equal(out[25:], source)


# ---------------------------------------------------------------------------- splicing


def test_fade_weights_by_hand() -> None:
    mask = torch.tensor([False, True, True, True, True, True, False])
    torch.testing.assert_close(
        _fade_weights(mask, 2), torch.tensor([0.0, 1 / 3, 2 / 3, 1.0, 2 / 3, 1 / 3, 0.0]), rtol=0, atol=1e-7
    )
    # A region touching the array edge has no boundary there.
    edge = torch.tensor([False, True, True, True])
    torch.testing.assert_close(
        _fade_weights(edge, 2), torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]), rtol=0, atol=1e-7
    )
    assert _fade_weights(mask, 0).tolist() == mask.float().tolist()


def test_splice_keeps_outside_bit_identical() -> None:
    source = torch.randn(20, C).to(torch.bfloat16)
    generated = torch.randn(3, 20, C).to(torch.bfloat16)
    mask = torch.zeros(20, dtype=torch.bool)
    mask[5:15] = True
    out = splice_outside_region(generated, source, mask, crossfade_frames=3)
    assert out.dtype == torch.bfloat16 and out.shape == generated.shape
    assert torch.equal(out[:, ~mask], source[~mask].expand(3, -1, -1))
    assert torch.equal(out[:, 8:12], generated[:, 8:12])
    # First inner frame: generated weight 1/(3+1), blended in float32.
    quarter = (source.float() + 0.25 * (generated.float() - source.float())).to(torch.bfloat16)
    assert torch.equal(out[:, 5], quarter[:, 5]) and torch.equal(out[:, 14], quarter[:, 14])
    hard = splice_outside_region(generated, source, mask, crossfade_frames=0)
    assert torch.equal(hard[:, mask], generated[:, mask])


def test_repaint_sampling_keeps_outside_region_bit_identical(silence: Tensor, source: Tensor) -> None:
    """STYLE §6.9 property: with injection on, latents outside the region equal the source."""
    cond = build(Repaint(source="s.wav", start_s=1.0, end_s=2.0), source, silence, num_frames=128)
    noise = torch.randn(1, 128, C, generator=torch.Generator().manual_seed(1))
    keep = cond.keep
    assert keep is not None
    hook = repaint_injection(keep.source_latents, keep.generate_mask, noise, injection_steps(8, 0.5))
    x0 = sample_euler(lambda x, t, i: torch.tanh(x) * 0.3, noise, turbo_timesteps(3.0), hooks=[hook])
    out = assemble_latents(x0, cond)
    assert out.shape == (1, T_SRC, C)
    outside = ~keep.generate_mask[:T_SRC]
    assert torch.equal(out[0, outside], source[outside])
    assert not torch.equal(out[0, 25:50], source[25:50])


# ---------------------------------------------------------------------------- errors and consistency


@pytest.mark.parametrize("spec", [Repaint(), Lego(), Extract(), Complete(), Extend()])
def test_source_tasks_require_source(spec, silence: Tensor) -> None:
    with pytest.raises(InvalidRequest) as err:
        build(spec, silence=silence)
    assert err.value.field == "task.source"


def test_repaint_start_past_source_end(silence: Tensor, source: Tensor) -> None:
    with pytest.raises(InvalidRequest) as err:
        build(Repaint(start_s=4.0), source, silence)
    assert err.value.field == "task.start_s"


def test_codes_rejected_for_edit_tasks(silence: Tensor, source: Tensor) -> None:
    with pytest.raises(InvalidRequest) as err:
        build(Repaint(), source, silence, hint_latents=torch.randn(10, C))
    assert err.value.field == "audio_codes"


def test_extend_spans_shorter_than_a_frame(silence: Tensor, source: Tensor) -> None:
    with pytest.raises(InvalidRequest) as err:
        build(Extend(seconds=0.01), source, silence)
    assert err.value.field == "task.seconds"
    with pytest.raises(InvalidRequest) as err:
        build(Extend(seconds=1.0, context_s=0.01), source, silence)
    assert err.value.field == "task.context_s"


def test_programming_errors_raise_value_error(silence: Tensor, source: Tensor) -> None:
    with pytest.raises(ValueError, match="shorter than"):
        build(Extract(), source, silence, num_frames=50)
    with pytest.raises(ValueError, match="silence_latent has"):
        build(Text2Music(), silence=silence, num_frames=500)
    with pytest.raises(ValueError, match="cast both"):
        build(Extract(), source.double(), silence)
    with pytest.raises(ValueError, match=r"\[T, 4\]"):
        build(Extract(), source[:, :2], silence)
    with pytest.raises(ValueError, match="needs num_frames"):
        build(Text2Music(), silence=silence)
    with pytest.raises(ValueError, match="frames"):
        assemble_latents(torch.zeros(10, C), build(Extract(), source, silence))


@pytest.mark.parametrize(
    "spec",
    [
        Cover(),
        Extract(),
        Complete(),
        Repaint(start_s=-1.3, end_s=2.2),
        Repaint(start_s=3.0, end_s=9.9),
        Lego(start_s=1.0, end_s=7.0),
        Extend(seconds=3.3, side="after", context_s=2.5),
        Extend(seconds=0.5, side="before"),
    ],
)
def test_content_frames_matches_build(spec, silence: Tensor, source: Tensor) -> None:
    expected = content_frames(spec, num_source_frames=T_SRC, sample_rate=SR, hop_samples=HOP)
    cond = build(spec, source, silence)
    assert cond.num_content_frames == expected == cond.num_frames
