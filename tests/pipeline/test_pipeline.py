"""`Pipeline.generate` on tiny random checkpoints: defaults, seeds, batching, caching, guidance, errors."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest
import torch
from helpers.tiny_pipeline import write_tiny

from encore.errors import Cancelled, InvalidRequest, NumericalError
from encore.pipeline.pipeline import Pipeline, reference_window
from encore.pipeline.request import (
    DiffusionOptions,
    GenerationRequest,
    OutputOptions,
    TextInputs,
    request_from_dict,
)
from encore.sampling import schedules

TEXT = TextInputs(caption="warm lo-fi piano", lyrics="[Verse]\nhello there", language="en", duration_s=1.2)


@pytest.fixture(scope="module")
def turbo(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    return Pipeline.from_pretrained(write_tiny(tmp_path_factory.mktemp("turbo")), device="cpu")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    return Pipeline.from_pretrained(write_tiny(tmp_path_factory.mktemp("base"), variant="base"), device="cpu")


def _request(**kwargs: object) -> GenerationRequest:
    return GenerationRequest(**{"text": TEXT, "seeds": (3,), **kwargs})  # type: ignore[arg-type]


def test_text2music_shape_rate_and_resolved_defaults(turbo: Pipeline) -> None:
    result = turbo.generate(_request())
    frames = 30  # int(1.2 s * 8000) // 320
    assert result.audio.shape == (1, 2, frames * turbo.hop_samples)
    assert result.audio.dtype == torch.float32 and result.sample_rate == 8000
    assert result.latents.shape == (1, frames, 64)
    assert result.audio.abs().max() <= 1.0
    diffusion = result.params["request"]["diffusion"]
    assert (diffusion["num_steps"], diffusion["shift"], diffusion["guidance_scale"]) == (8, 3.0, 1.0)
    assert diffusion["solver"] == "ode"  # the official turbo's default
    assert result.params["sampling"]["timesteps"] == pytest.approx(list(schedules.TURBO_TIMESTEPS[3.0]))
    assert result.params["task"] == "text2music" and result.params["model"]["variant"] == "turbo"
    assert set(result.timings_s) >= {"encode_text", "sample", "decode"}


def test_same_seed_same_audio_and_params_reproduce(turbo: Pipeline) -> None:
    first = turbo.generate(_request())
    again = turbo.generate(request_from_dict(first.params["request"]))
    assert torch.equal(first.audio, again.audio)
    other = turbo.generate(_request(seeds=(4,)))
    assert not torch.equal(first.audio, other.audio)


def test_random_seeds_are_drawn_and_recorded(turbo: Pipeline) -> None:
    result = turbo.generate(_request(seeds=None, batch_size=2))
    assert len(result.seeds) == 2 and result.params["request"]["seeds"] == list(result.seeds)
    replay = turbo.generate(request_from_dict(result.params["request"]))
    assert torch.equal(replay.audio, result.audio)


def test_batch_items_equal_single_runs_with_their_seeds(turbo: Pipeline) -> None:
    batch = turbo.generate(_request(seeds=(10, 20, 30), batch_size=3))
    for i, seed in enumerate((10, 20, 30)):
        single = turbo.generate(_request(seeds=(seed,)))
        torch.testing.assert_close(batch.latents[i], single.latents[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(batch.latents[0], batch.latents[1])


def test_noise_comes_from_per_item_cpu_generators(turbo: Pipeline) -> None:
    noise = turbo.prepare_noise((5, 6), 7)
    expected = torch.randn((1, 7, 64), generator=torch.Generator("cpu").manual_seed(6))
    assert torch.equal(noise[1:2].cpu(), expected)


def test_cross_kv_cache_equals_recomputing(turbo: Pipeline) -> None:
    dit = turbo.model.decoder
    gen = torch.Generator().manual_seed(0)
    states = torch.randn(1, 9, turbo.config.enc_hidden_size, generator=gen)
    x = torch.randn(2, 12, 64, generator=gen)
    ctx = torch.randn(2, 12, 128, generator=gen)
    t = torch.full((2,), 0.75)
    with torch.no_grad():
        cached = dit(x, t, t, None, ctx, cross_kv=turbo._cross_kv(states, 2))
        fresh = dit(x, t, t, states.expand(2, -1, -1), ctx)
    torch.testing.assert_close(cached, fresh, rtol=0, atol=1e-6)


def test_turbo_refuses_what_it_cannot_do(turbo: Pipeline) -> None:
    with pytest.raises(InvalidRequest, match="8-step") as info:
        turbo.generate(_request(diffusion=DiffusionOptions(num_steps=4)))
    assert info.value.field == "diffusion.num_steps"
    with pytest.raises(InvalidRequest) as info:
        turbo.generate(_request(diffusion=DiffusionOptions(guidance_scale=3.0)))
    assert info.value.field == "diffusion.guidance_scale"


def test_turbo_custom_timesteps_are_snapped_and_recorded(turbo: Pipeline) -> None:
    result = turbo.generate(_request(diffusion=DiffusionOptions(timesteps=(0.97, 0.76, 0.3, 0.0))))
    assert result.params["sampling"]["timesteps"] == pytest.approx([0.9545454545, 0.7692307692, 0.3])
    replay = turbo.generate(request_from_dict(result.params["request"]))
    assert torch.equal(replay.audio, result.audio)
    with pytest.raises(InvalidRequest) as info:
        turbo.generate(_request(diffusion=DiffusionOptions(timesteps=(0.9, 0.5), num_steps=5)))
    assert info.value.field == "diffusion.num_steps"


def test_base_defaults_use_apg_and_batched_cfg_matches_separate_calls(base: Pipeline) -> None:
    request = _request(diffusion=DiffusionOptions(num_steps=3))
    result = base.generate(request)
    d = result.params["request"]["diffusion"]
    assert (d["guidance"], d["guidance_scale"], d["shift"]) == ("apg", 7.0, 3.0)
    assert len(result.params["sampling"]["timesteps"]) == 4  # N + 1, ending at 0
    # The same run with cond and null as two separate DiT calls (no batching) must agree.
    run = base._resolve(request, _NoStages(), None)
    conds = base._conditionings(run, None)
    enc = base._encode_conditions(run, conds, base.silence[:30][None])[0]
    dit = base.model.decoder
    null = base.model.null_condition(enc.encoder_hidden_states)
    from encore.sampling import guidance, solvers

    def separate(states: torch.Tensor):  # type: ignore[no-untyped-def]
        return lambda x, t, i: dit(x, t.expand(1), t.expand(1), states, enc.context)

    velocity = guidance.with_guidance(separate(enc.encoder_hidden_states), separate(null),
                                      guidance.make_rule("apg", 7.0))
    with torch.no_grad():
        expected = solvers.sample_euler(velocity, base.prepare_noise((3,), conds[0].num_frames),
                                        run.sampling.timesteps)
    torch.testing.assert_close(result.latents, expected, rtol=1e-5, atol=1e-5)


class _NoStages:
    def report(self, stage: str, fraction: float) -> None:
        pass

    def with_planner(self) -> None:
        pass


def test_guidance_scale_one_on_base_runs_unguided(base: Pipeline) -> None:
    result = base.generate(_request(diffusion=DiffusionOptions(num_steps=2, guidance_scale=1.0)))
    assert result.params["request"]["diffusion"]["guidance"] is None


def test_nan_latents_raise_numerical_error(turbo: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    dit = turbo.model.decoder
    original = dit.forward
    monkeypatch.setattr(dit, "forward", lambda *a, **k: original(*a, **k) * float("nan"))
    with pytest.raises(NumericalError, match="DiT latents"):
        turbo.generate(_request())


def test_cancel_stops_between_steps(turbo: Pipeline) -> None:
    token = threading.Event()
    seen: list[tuple[str, float]] = []

    def progress(stage: str, fraction: float) -> None:
        seen.append((stage, fraction))
        if stage == "sample" and fraction > 0.3:
            token.set()

    with pytest.raises(Cancelled):
        turbo.generate(_request(), progress=progress, cancel=token)


def test_progress_is_monotone_and_ends_at_one(turbo: Pipeline) -> None:
    seen: list[float] = []
    turbo.generate(_request(), progress=lambda stage, f: seen.append(f))
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) > 8


def test_unknown_language_and_missing_source_are_invalid(turbo: Pipeline) -> None:
    with pytest.raises(InvalidRequest) as info:
        turbo.generate(_request(text=dataclasses.replace(TEXT, language="xx")))
    assert info.value.field == "text.language"
    from encore.tasks.spec import Cover

    with pytest.raises(InvalidRequest) as info:
        turbo.generate(_request(task=Cover()))
    assert info.value.field == "task.source"


def test_thinking_needs_text2music_and_a_planner(turbo: Pipeline, tmp_path: Path) -> None:
    from encore.pipeline.request import PlannerOptions
    from encore.tasks.spec import Cover

    with pytest.raises(InvalidRequest, match="text2music only") as info:
        turbo.generate(_request(task=Cover(source=str(tmp_path / "x.wav")), planner=PlannerOptions(think=True)))
    assert info.value.field == "planner.think"
    assert turbo.planner is None and not turbo.components.paths.lm_dirs
    with pytest.raises(InvalidRequest, match="no 5 Hz LM") as info:
        turbo.generate(_request(planner=PlannerOptions(think=True)))
    assert info.value.field == "planner.think"


def test_thinking_plans_metas_and_codes_per_item(turbo: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> None:
    from encore.models.planner import Planner
    from encore.pipeline.random_planner import write_random_planner
    from encore.pipeline.request import PlannerOptions

    lm = write_random_planner(tmp_path_factory.mktemp("lm") / "acestep-5Hz-lm-tiny", seed=0)
    pipe = Pipeline(turbo.components, planner=Planner.from_pretrained(lm))
    text = TextInputs(caption="sad piano ballad", lyrics="[Verse]\nrain", bpm=90, duration_s=2.0)
    request = GenerationRequest(text=text, seeds=(1, 2), batch_size=2,
                                planner=PlannerOptions(think=True, fill=("keyscale", "timesignature")))
    result = pipe.generate(request)
    assert result.plan is not None and len(result.plan) == 2
    assert all(len(p.codes) == 10 and all(0 <= c < 64000 for c in p.codes) for p in result.plan)
    assert result.latents.shape == (2, 50, 64)  # 10 codes x 5 frames each
    planned = result.params["planned_text"]
    assert planned["bpm"] == 90 and planned["keyscale"] == result.plan[0].keyscale
    assert planned["caption"] == "sad piano ballad"  # "caption" not in fill: the user's caption stays
    assert result.params["instruction"].startswith("Generate audio semantic tokens")  # codes => cover path
    again = pipe.generate(request)
    assert [p.codes for p in again.plan] == [p.codes for p in result.plan]
    assert torch.equal(again.audio, result.audio)


def test_reference_window_takes_three_segments_from_the_thirds() -> None:
    rate = 10
    ref = torch.arange(900, dtype=torch.float32).repeat(2, 1)  # 90 s at 10 Hz
    window = reference_window(ref, rate, torch.Generator().manual_seed(0))
    assert window.shape == (2, 300)
    starts = [int(window[0, i * 100]) for i in range(3)]
    assert 0 <= starts[0] <= 200 and 300 <= starts[1] <= 500 and 600 <= starts[2] <= 800
    for i, s in enumerate(starts):  # each segment is contiguous
        assert torch.equal(window[0, i * 100:(i + 1) * 100], torch.arange(s, s + 100, dtype=torch.float32))
    again = reference_window(ref, rate, torch.Generator().manual_seed(0))
    assert torch.equal(window, again)
    short = reference_window(torch.ones(2, 50), rate, torch.Generator().manual_seed(1))  # repeated to >= 30 s
    assert short.shape == (2, 300)


def test_loudness_normalisation_meets_target_and_ceiling(turbo: Pipeline) -> None:
    from encore.audio import loudness

    output = OutputOptions(normalize="loudness", target_lufs=-20.0, true_peak_db=-1.0)
    result = turbo.generate(GenerationRequest(text=TextInputs(caption="x", duration_s=2.0), seeds=(2,),
                                              output=output))
    item = result.audio[0]
    measured = loudness.measure_loudness(item, result.sample_rate)
    peak = loudness.true_peak(item, result.sample_rate)
    assert peak <= 10 ** (-1.0 / 20) + 1e-4
    assert measured is not None and (abs(measured + 20.0) < 0.1 or result.params["normalization"][0]["gain"] < 1)
    assert result.params["normalization"][0]["mode"] == "loudness"


def test_vae_calls_reuse_the_cpu_heap(turbo: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decode and encode run inside `reused_heap` on the CPU (`encore.utils.cpu_memory`), nothing else does."""
    import contextlib

    from encore.pipeline import pipeline as pipeline_module

    entered: list[str] = []

    @contextlib.contextmanager
    def recording():
        entered.append("in")
        yield True

    monkeypatch.setattr(pipeline_module, "reused_heap", recording)
    latents = torch.zeros(1, 5, turbo.vae_config.decoder_input_channels)
    audio = turbo.decode_latents(latents)
    assert entered == ["in"] and audio.shape[-1] == 5 * turbo.hop_samples
    turbo.encode_audio(audio[0], sample=False)
    assert entered == ["in", "in"]


def _record_hints(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor | None]:
    """The `hint_latents` of every `build_conditioning` call, in order."""
    from encore.tasks import conditioning as tc

    seen: list[torch.Tensor | None] = []
    real = tc.build_conditioning

    def spy(*args: object, **kwargs: object) -> tc.Conditioning:
        seen.append(kwargs.get("hint_latents"))  # type: ignore[arg-type]
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tc, "build_conditioning", spy)
    return seen


def test_a_model_trained_with_beat_hints_gets_them_for_text2music_with_a_bpm(
    tmp_path: Path, turbo: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    from helpers.tiny_pipeline import SILENCE_FRAMES, VAE_8K

    from encore.models.config import AceStepConfig
    from encore.pipeline.random_checkpoint import write_random_checkpoint
    from encore.tasks.beat_hints import beat_hints

    dit = write_random_checkpoint(tmp_path, config=AceStepConfig.tiny(beat_hints=True), vae_config=VAE_8K,
                                  silence_frames=SILENCE_FRAMES, dit_dir="acestep-v15-turbo")  # fmt: skip
    hinted = Pipeline.from_pretrained(dit, device="cpu")
    seen = _record_hints(monkeypatch)
    with_bpm = _request(text=dataclasses.replace(TEXT, bpm=90))
    result = hinted.generate(with_bpm)
    assert result.params["beat_hints"] is True and result.params["instruction"].startswith("Generate audio semantic")
    frames = result.params["num_frames"]
    expected = beat_hints(hinted.silence, 90.0, num_frames=frames, sample_rate=hinted.sample_rate,
                          hop_samples=hinted.hop_samples)  # fmt: skip
    assert seen[-1] is not None and torch.equal(seen[-1], expected)
    hinted.generate(_request())  # no bpm: the plain text2music context
    assert seen[-1] is None
    plain = turbo.generate(with_bpm)  # a model not trained with them never gets them
    assert seen[-1] is None and "beat_hints" not in plain.params


def test_a_model_trained_with_key_hints_gets_the_requested_key_in_its_hints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from helpers.tiny_pipeline import SILENCE_FRAMES, VAE_8K

    from encore.models.config import AceStepConfig
    from encore.pipeline.random_checkpoint import write_random_checkpoint
    from encore.tasks.beat_hints import beat_hints

    seen = _record_hints(monkeypatch)
    request = _request(text=dataclasses.replace(TEXT, bpm=90, keyscale="F# minor"))
    for key_hints in (True, False):
        config = AceStepConfig.tiny(beat_hints=True, key_hints=key_hints)
        dit = write_random_checkpoint(tmp_path / str(key_hints), config=config, vae_config=VAE_8K,
                                      silence_frames=SILENCE_FRAMES, dit_dir="acestep-v15-turbo")  # fmt: skip
        pipe = Pipeline.from_pretrained(dit, device="cpu")
        result = pipe.generate(request)
        expected = beat_hints(pipe.silence, 90.0, num_frames=result.params["num_frames"],
                              sample_rate=pipe.sample_rate, hop_samples=pipe.hop_samples,
                              keyscale="F# minor" if key_hints else None)  # fmt: skip
        assert seen[-1] is not None and torch.equal(seen[-1], expected)
        assert result.params.get("key_hints", False) is key_hints
        if key_hints:  # no key in the request: plain beat hints
            pipe.generate(_request(text=dataclasses.replace(TEXT, bpm=90)))
            assert torch.equal(seen[-1], beat_hints(pipe.silence, 90.0, num_frames=result.params["num_frames"],
                                                    sample_rate=pipe.sample_rate, hop_samples=pipe.hop_samples))


def test_a_model_trained_with_instrument_hints_gets_the_instruments_its_caption_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from helpers.tiny_pipeline import SILENCE_FRAMES, VAE_8K

    from encore.models.config import AceStepConfig
    from encore.pipeline.random_checkpoint import write_random_checkpoint
    from encore.tasks.beat_hints import beat_hints

    seen = _record_hints(monkeypatch)
    config = AceStepConfig.tiny(beat_hints=True, key_hints=True, instrument_hints=True)
    dit = write_random_checkpoint(tmp_path, config=config, vae_config=VAE_8K, silence_frames=SILENCE_FRAMES,
                                  dit_dir="acestep-v15-turbo")  # fmt: skip
    pipe = Pipeline.from_pretrained(dit, device="cpu")
    text = dataclasses.replace(TEXT, caption="funk with slap bass, clavinet and drums", bpm=98, keyscale="E major")
    result = pipe.generate(_request(text=text))
    assert result.params["instrument_hints"] == ["keyboard", "bass", "drums"]
    expected = beat_hints(pipe.silence, 98.0, num_frames=result.params["num_frames"], sample_rate=pipe.sample_rate,
                          hop_samples=pipe.hop_samples, keyscale="E major", tracks=("keyboard", "bass", "drums"))
    assert seen[-1] is not None and torch.equal(seen[-1], expected)
    unnamed = pipe.generate(_request(text=dataclasses.replace(text, caption="a groovy tune")))
    assert "instrument_hints" not in unnamed.params  # no instrument named: beat and key hints only
    assert torch.equal(seen[-1], beat_hints(pipe.silence, 98.0, num_frames=result.params["num_frames"],
                                            sample_rate=pipe.sample_rate, hop_samples=pipe.hop_samples,
                                            keyscale="E major"))  # fmt: skip


def test_guidance_also_covers_the_hints_unless_the_request_says_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A guided base with beat/key hints: the null branch gets the hint-free text2music context (silence
    under the same chunk mask), so guidance amplifies the hints; `guide_hints=False` gives both branches the
    hints."""
    from helpers.tiny_pipeline import SILENCE_FRAMES, VAE_8K

    from encore.models.config import AceStepConfig
    from encore.pipeline.random_checkpoint import write_random_checkpoint

    config = AceStepConfig.tiny(beat_hints=True, key_hints=True, is_turbo=False)
    dit = write_random_checkpoint(tmp_path, config=config, vae_config=VAE_8K, silence_frames=SILENCE_FRAMES,
                                  dit_dir="acestep-v15-base")  # fmt: skip
    pipe = Pipeline.from_pretrained(dit, device="cpu")
    contexts: list[torch.Tensor] = []
    real = pipe.model.decoder.forward

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        contexts.append(args[4].clone())  # type: ignore[union-attr]
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pipe.model.decoder, "forward", spy)
    text = dataclasses.replace(TEXT, bpm=90, keyscale="F# minor")
    channels = config.audio_acoustic_hidden_dim
    outputs = {}
    for guide in (True, False):
        contexts.clear()
        diffusion = DiffusionOptions(num_steps=2, guidance_scale=3.0, guide_hints=guide)
        result = pipe.generate(_request(text=text, diffusion=diffusion))
        assert result.params["key_hints"] is True
        assert result.params["request"]["diffusion"]["guide_hints"] is guide
        frames = result.params["num_frames"]
        cond, null = contexts[0].chunk(2)
        assert not torch.equal(cond[0, :, :channels], pipe.silence[:frames].to(cond.dtype))  # the hints
        assert torch.equal(null[..., channels:], cond[..., channels:])  # the same chunk mask
        if guide:
            assert torch.equal(null[0, :, :channels], pipe.silence[:frames].to(null.dtype))
        else:
            assert torch.equal(null, cond)
        outputs[guide] = result.audio
    assert not torch.equal(outputs[True], outputs[False])
    contexts.clear()
    pipe.generate(_request(text=text, diffusion=DiffusionOptions(num_steps=2, guidance_scale=1.0)))
    assert contexts[0].shape[0] == 1  # unguided: one branch, nothing to change


def test_silence_timbre_is_cached_per_weights_and_changes_nothing(turbo: Pipeline) -> None:
    """Requests without reference audio reuse one timbre vector of the silence reference; the output is the
    uncached one, and an in-place weight change (a training step, a load) invalidates it."""
    request = GenerationRequest(text=TextInputs(caption="calm piano", duration_s=2.0), seeds=(3,))
    encoder = turbo.model.encoder.timbre_encoder
    calls: list[int] = []
    saved = [p.detach().clone() for p in encoder.parameters()]
    hook = encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        first = turbo.generate(request)
        second = turbo.generate(request)
        assert len(calls) <= 1  # at most the first request encodes the silence reference
        with torch.inference_mode():
            silence = turbo._silence_reference
            direct = encoder(silence.to(turbo.dtype))
            assert torch.equal(turbo._timbre_vectors(silence), direct)
            assert turbo._timbre_vectors(silence.clone()) is None  # real reference audio: the encoder runs
        torch.testing.assert_close(second.audio, first.audio, rtol=0, atol=0)
        with torch.no_grad():
            for p in encoder.parameters():
                p.add_(0.1 * torch.randn_like(p))
        calls.clear()
        with torch.inference_mode():
            changed = turbo._timbre_vectors(turbo._silence_reference)
        assert calls == [1] and not torch.equal(changed, direct)
    finally:
        hook.remove()
        with torch.no_grad():
            for p, value in zip(encoder.parameters(), saved, strict=True):
                p.copy_(value)


def test_base_sde_warns_when_its_renoise_times_miss_the_schedule(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The official base SDE renoises to 1 - (i+1)/N whatever the schedule: only shift 1 matches it."""
    from helpers.tiny_pipeline import SILENCE_FRAMES, VAE_8K

    from encore.models.config import AceStepConfig
    from encore.pipeline.random_checkpoint import write_random_checkpoint

    dit = write_random_checkpoint(tmp_path, config=AceStepConfig.tiny(is_turbo=False), vae_config=VAE_8K,
                                  silence_frames=SILENCE_FRAMES, dit_dir="acestep-v15-base")  # fmt: skip
    base = Pipeline.from_pretrained(dit, device="cpu")
    with caplog.at_level("WARNING", logger="encore.pipeline.pipeline"):
        for shift in (1.0, 3.0):
            base.resolve_sampling(DiffusionOptions(num_steps=4, shift=shift, solver="sde"))
            base.resolve_sampling(DiffusionOptions(num_steps=4, shift=shift, solver="ode"))
    warned = [r.getMessage() for r in caplog.records if "renoises" in r.getMessage()]
    assert len(warned) == 1 and "up to 0." in warned[0] and "shift 1" in warned[0]
