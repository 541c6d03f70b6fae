"""End-to-end parity: `Pipeline.generate` vs diffusers 0.42.1 `AceStepPipeline` on identical tiny random weights.

Both pipelines get the same initial noise (ours is drawn from the per-item CPU generators; diffusers receives
it through `latents=`) and the same VAE posterior noise for source audio. Compared: the final latents in fp32.

Deliberate differences (SPEC §14) and what these tests do about them:
* latent length: we use the official floor rule, diffusers `ceil(d·25)`; durations are chosen so both agree.
* cover strength < 1: we follow the official condition switch after `int(N·s)` steps, not diffusers' velocity
  blend; checked against a hand-written loop over diffusers' own modules.
* repaint: we splice the source back outside the window and cross-fade 10 frames inside it; diffusers does
  not. Checked as `src + w·(diffusers − src)` with the fade weights written out here.
* schedule dtype: we build it in the model dtype (official); in fp32 both agree to rounding.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf
import torch
from helpers.diffusers_pipeline import diffusers_pipeline_for, patch_posterior_noise

from encore.models.config import AceStepConfig
from encore.models.vae import VAEConfig
from encore.pipeline.pipeline import Pipeline
from encore.pipeline.random_checkpoint import write_random_checkpoint
from encore.pipeline.request import DiffusionOptions, GenerationRequest, TextInputs
from encore.tasks.spec import Cover, Repaint

pytestmark = pytest.mark.parity

CAPTION = "dreamy synth pop with airy pads"
LYRICS = "[Verse]\nneon lights and falling rain\n[Chorus]\nsing it again"
SEED = 7
CROSSFADE = 10


def _config(**overrides: object) -> AceStepConfig:
    # diffusers derives the timbre window from the VAE rate (ceil(30 s · 25 Hz) = 750 frames).
    return AceStepConfig.tiny(timbre_fix_frame=750, **overrides)


@pytest.fixture(scope="module")
def turbo(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    path = write_random_checkpoint(tmp_path_factory.mktemp("turbo"), config=_config(), vae_config=VAEConfig.tiny(),
                                   seed=3)
    return Pipeline.from_pretrained(path, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    path = write_random_checkpoint(tmp_path_factory.mktemp("base"),
                                   config=_config(is_turbo=False, model_version="base"),
                                   vae_config=VAEConfig.tiny(), seed=4, dit_dir="acestep-v15-base")
    pipe = Pipeline.from_pretrained(path, device="cpu", dtype="float32")
    assert not pipe.components.variant.is_turbo
    return pipe


def _source_file(tmp_path: Path, pipe: Pipeline, seconds: float) -> tuple[Path, torch.Tensor]:
    """A stereo float WAV at the VAE rate (so loading needs no resampling); returns its path and samples."""
    gen = torch.Generator().manual_seed(11)
    n = int(seconds * pipe.sample_rate)
    t = torch.arange(n) / pipe.sample_rate
    wave = torch.stack([0.4 * torch.sin(2 * torch.pi * 220 * t), 0.3 * torch.sin(2 * torch.pi * 330 * t)])
    wave = wave + 0.05 * torch.randn(wave.shape, generator=gen)
    path = tmp_path / "source.wav"
    sf.write(path, wave.T.numpy(), pipe.sample_rate, subtype="FLOAT")
    return path, wave


def _reference_latents(ref: object, pipe: Pipeline, request: GenerationRequest, **kwargs: object) -> torch.Tensor:
    noise = pipe.prepare_noise(request.item_seeds() or (), kwargs.pop("num_frames"))  # type: ignore[arg-type]
    text = request.text
    with torch.no_grad():
        batch = request.batch_size
        out = ref(prompt=[text.caption] * batch, lyrics=[text.lyrics] * batch, vocal_language=text.language,
                  latents=noise.clone(),
                  output_type="latent", bpm=text.bpm, keyscale=text.keyscale,
                  timesignature=None if text.timesignature is None else str(text.timesignature), **kwargs)
    return out.audios


def _assert_close(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    diff = (ours.double() - ref.double()).abs().max().item()
    tol = 1e-5 * max(1.0, ref.abs().max().item())
    print(f"{what}: max abs diff {diff:.3e} (tol {tol:.1e})")
    assert diff <= tol, f"{what}: max abs diff {diff:.3e} > {tol:.1e}"


def test_text2music_turbo_matches_diffusers(turbo: Pipeline) -> None:
    request = GenerationRequest(text=TextInputs(caption=CAPTION, lyrics=LYRICS, language="en", bpm=120,
                                                keyscale="C major", timesignature=4, duration_s=2.0),
                                seeds=(SEED, SEED + 5), batch_size=2)
    ours = turbo.generate(request)
    ref = diffusers_pipeline_for(turbo)
    expected = _reference_latents(ref, turbo, request, num_frames=50, audio_duration=2.0, num_inference_steps=8,
                                  shift=3.0)
    _assert_close(ours.latents, expected, "text2music turbo")


def test_text2music_base_apg_matches_diffusers(base: Pipeline) -> None:
    request = GenerationRequest(text=TextInputs(caption=CAPTION, lyrics=LYRICS, duration_s=2.0),
                                diffusion=DiffusionOptions(num_steps=4), seeds=(SEED,))
    ours = base.generate(request)
    assert ours.params["request"]["diffusion"]["guidance"] == "apg"
    assert ours.params["request"]["diffusion"]["guidance_scale"] == 7.0
    ref = diffusers_pipeline_for(base)
    expected = _reference_latents(ref, base, request, num_frames=50, audio_duration=2.0, num_inference_steps=4,
                                  shift=3.0, guidance_scale=7.0)
    _assert_close(ours.latents, expected, "text2music base+APG")


def _fade_weights(mask: torch.Tensor, crossfade: int) -> torch.Tensor:
    """Hand-computed repaint fade: generated frame at distance d from the nearest kept frame gets
    min(1, d / (crossfade + 1)); kept frames get 0."""
    frames = mask.numel()
    kept = [i for i in range(frames) if not mask[i]]
    w = torch.zeros(frames)
    for i in range(frames):
        if mask[i]:
            d = min((abs(i - k) for k in kept), default=crossfade + 1)
            w[i] = min(1.0, d / (crossfade + 1))
    return w


def test_repaint_matches_diffusers_inside_and_source_outside(turbo: Pipeline, tmp_path: Path) -> None:
    path, wave = _source_file(tmp_path, turbo, 3.2)  # 80 latent frames
    request = GenerationRequest(task=Repaint(source=str(path), start_s=0.8, end_s=2.4),
                                text=TextInputs(caption=CAPTION, lyrics=LYRICS), seeds=(SEED,))
    ours = turbo.generate(request)
    seeds = (SEED,)
    src = turbo.encode_audio(wave, generator=turbo.posterior_generator(seeds, "source"))[0]
    ref = diffusers_pipeline_for(turbo)
    patch_posterior_noise(ref, [turbo.posterior_generator(seeds, "source")])
    expected = _reference_latents(ref, turbo, request, num_frames=80, audio_duration=3.2, task_type="repaint",
                                  src_audio=wave, repainting_start=0.8, repainting_end=2.4)[0]
    mask = torch.zeros(80, dtype=torch.bool)
    mask[20:60] = True
    w = _fade_weights(mask, CROSSFADE)[:, None]
    hand = src + w * (expected - src)
    _assert_close(ours.latents[0], hand, "repaint (spliced)")
    assert torch.equal(ours.latents[0][~mask], src[~mask]), "kept frames must equal the source latents exactly"


def test_cover_matches_diffusers(turbo: Pipeline, tmp_path: Path) -> None:
    path, wave = _source_file(tmp_path, turbo, 2.0)
    request = GenerationRequest(task=Cover(source=str(path)), text=TextInputs(caption=CAPTION, lyrics=LYRICS),
                                seeds=(SEED,))
    ours = turbo.generate(request)
    ref = diffusers_pipeline_for(turbo)
    patch_posterior_noise(ref, [turbo.posterior_generator((SEED,), "source")])
    expected = _reference_latents(ref, turbo, request, num_frames=50, audio_duration=2.0, task_type="cover",
                                  src_audio=wave)
    _assert_close(ours.latents, expected, "cover")


def test_cover_strength_switches_condition_like_official(turbo: Pipeline, tmp_path: Path) -> None:
    """strength 0.5 with 8 steps: steps 0–3 use the cover condition, steps 4–7 the text2music one (SPEC §9.6).

    diffusers 0.42.1 blends velocities instead, so the expectation is a hand-written Euler loop over diffusers'
    own transformer and condition encoder.
    """
    path, wave = _source_file(tmp_path, turbo, 2.0)
    request = GenerationRequest(task=Cover(source=str(path), cover_strength=0.5),
                                text=TextInputs(caption=CAPTION, lyrics=LYRICS), seeds=(SEED,))
    ours = turbo.generate(request)
    assert ours.params["cover_switch_step"] == 4
    ref = diffusers_pipeline_for(turbo)
    seeds = (SEED,)
    with torch.no_grad():
        src = turbo.encode_audio(wave, generator=turbo.posterior_generator(seeds, "source"))
        silence = ref.condition_encoder.silence_latent
        quantized, _ = ref.audio_tokenizer.tokenize(src, silence)
        hints = ref.audio_token_detokenizer(quantized)[:, :50]
        timbre = silence[:, :750]
        order = torch.zeros(1, dtype=torch.long)

        def condition(instruction: str) -> torch.Tensor:
            th, tm, lh, lm = ref.encode_prompt(prompt=CAPTION, lyrics=LYRICS, device="cpu", vocal_language="unknown",
                                               audio_duration=2.0, instruction=instruction)
            return ref.condition_encoder(th, tm, lh, lm, timbre, order)[0]

        ones = torch.ones(1, 50, 64)
        cover_ctx = torch.cat([hints, ones], dim=-1)
        text_ctx = torch.cat([silence[:, :50], ones], dim=-1)
        cover_enc = condition("Generate audio semantic tokens based on the given conditions:")
        text_enc = condition("Fill the audio semantic mask based on the given conditions:")
        x = turbo.prepare_noise(seeds, 50)
        table = [1.0, 0.9545454545454546, 0.9, 0.8333333333333334, 0.75, 0.6428571428571429, 0.5, 0.3, 0.0]
        for i in range(8):
            enc, ctx = (cover_enc, cover_ctx) if i < 4 else (text_enc, text_ctx)
            t = torch.full((1,), table[i])
            v = ref.transformer(x, t, t, enc, ctx, return_dict=False)[0]
            x = x - v * (table[i] - table[i + 1])
    _assert_close(ours.latents, x, "cover strength 0.5 (condition switch)")
