"""VAE recipe on the tiny geometry: the loss falls, a resumed run equals an uninterrupted one bit for bit,
Muon updates the conv weights through their matrix views, and the latent affine leaves the audio unchanged."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from encore.errors import InvalidRequest
from encore.models.vae import OobleckVAE, balance_upsampling_
from encore.training import embedded
from encore.training.recipes.base import read_loss_log
from encore.training.recipes.vae import (
    TensorAudioSource,
    VAERecipe,
    VAETrainConfig,
    absorb_latent_affine,
    finalize_vae,
    latent_statistics,
    load_vae_checkpoint,
)

RATE = 8000  # tiny geometry: hop 320 -> 25 Hz


def _tone(seconds: float, hz: float, seed: int = 0) -> torch.Tensor:
    t = torch.arange(round(seconds * RATE)) / RATE
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.sin(2 * torch.pi * hz * t) * torch.exp(-(t % 0.25) * 8) + 0.01 * torch.randn(
        t.shape, generator=g
    )
    return torch.stack([x, 0.8 * x])


def _config(tmp: Path, **kw) -> VAETrainConfig:
    base = {
        "output_dir": str(tmp),
        "geometry": "tiny",
        "batch_size": 1,
        "crop_seconds": 0.4,
        "fft_sizes": (256, 128, 64, 32),
        "disc_fft_sizes": (128, 64),
        "disc_channels": 4,
        "save_every_steps": 100,
        "num_threads": 1,
    }
    base.update(kw)
    return VAETrainConfig(**base)


def test_loss_decreases_on_a_fixed_clip(tmp_path: Path) -> None:
    clip = _tone(0.2, 220.0) + _tone(0.2, 330.0, seed=1)
    recipe = VAERecipe(
        _config(
            tmp_path,
            max_steps=6,
            crop_seconds=0.2,
            fft_sizes=(128, 64, 32),
            learning_rate=1e-2,
            adamw_learning_rate=2.5e-3,
        ),
        source=TensorAudioSource([clip]),
    )
    recipe.setup()
    rows = recipe.train()
    losses = [r["stft"] for r in rows]
    assert losses[-1] < 0.85 * losses[0], losses
    logged = read_loss_log(tmp_path)
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6]
    assert all(r["recipe"] == "vae" for r in logged)


def _states(recipe: VAERecipe) -> dict[str, torch.Tensor]:
    out = {f"vae.{k}": v for k, v in recipe.vae.state_dict().items()}
    out.update({f"disc.{k}": v for k, v in recipe.disc.state_dict().items()})
    return out


def test_resume_equals_uninterrupted_through_all_phases(tmp_path: Path) -> None:
    source = TensorAudioSource([_tone(0.6, 220.0), _tone(0.5, 440.0, seed=2)])
    phases = {
        "adversarial_start_step": 2,
        "final_phase_start_step": 4,
        "crop_seconds": 0.2,
        "fft_sizes": (128, 64, 32),
        "disc_fft_sizes": (64,),
    }
    full = VAERecipe(_config(tmp_path / "full", max_steps=5, **phases), source=source)
    full.setup()
    full_rows = full.train()
    assert [r["phase"] for r in full_rows] == [0.0, 0.0, 1.0, 1.0, 2.0]

    first = VAERecipe(_config(tmp_path / "split", max_steps=3, **phases), source=source)
    first.setup()
    first.train()
    second = VAERecipe(_config(tmp_path / "split", max_steps=5, **phases), source=source)
    second.setup()
    assert second.step == 3
    rest = second.train()
    assert [r["loss"] for r in rest] == [r["loss"] for r in full_rows[3:]]
    a, b = _states(full), _states(second)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [r["step"] for r in read_loss_log(tmp_path / "split")] == [1, 2, 3, 4, 5]


def _imbalance(recipe: VAERecipe) -> float:
    return balance_upsampling_(copy.deepcopy(recipe.vae.decoder))  # measured on a copy: no side effect


def test_balanced_upsampling_holds_through_training_and_resume(tmp_path: Path) -> None:
    source = TensorAudioSource([_tone(0.6, 220.0), _tone(0.5, 440.0, seed=2)])
    kw = {"crop_seconds": 0.2, "fft_sizes": (128, 64, 32), "final_phase_start_step": 0, "adversarial_start_step": 0,
          "disc_fft_sizes": (64,), "balanced_upsampling": True, "learning_rate": 1e-2}  # fmt: skip
    full = VAERecipe(_config(tmp_path / "full", max_steps=4, **kw), source=source)
    full.setup()
    assert _imbalance(full) < 1e-6  # projected at build
    before = {n: p.detach().clone() for n, p in full.vae.decoder.named_parameters()}
    rows = full.train()
    assert all(r["phase"] == 2.0 for r in rows)
    assert _imbalance(full) < 1e-6  # and after every step
    moved = [n for n, p in full.vae.decoder.named_parameters() if "conv_t1" in n and not torch.equal(p, before[n])]
    assert moved  # the transposed convs still train, inside the subspace
    first = VAERecipe(_config(tmp_path / "split", max_steps=2, **kw), source=source)
    first.setup()
    first.train()
    second = VAERecipe(_config(tmp_path / "split", max_steps=4, **kw), source=source)
    second.setup()
    rest = second.train()
    assert [r["loss"] for r in rest] == [r["loss"] for r in rows[2:]]
    for key, value in _states(full).items():
        assert torch.equal(value, _states(second)[key]), key


def test_muon_updates_conv_weights_through_matrix_views(tmp_path: Path) -> None:
    recipe = VAERecipe(_config(tmp_path, max_steps=1), source=TensorAudioSource([_tone(0.4, 220.0)]))
    recipe.setup()
    before = recipe.vae.decoder.conv1.weight.detach().clone()
    recipe.train()
    assert not torch.equal(before, recipe.vae.decoder.conv1.weight)
    assert all(v.ndim == 2 for v in recipe.views.views)
    assert len(recipe.muon.state) == len(recipe.views.views)
    # the views share storage with the conv weights, so Muon's in-place update is the weight update
    w = recipe.vae.decoder.conv1.weight
    view = next(v for p, v in zip(recipe.views.params, recipe.views.views) if p is w)
    assert view.data_ptr() == w.data_ptr()


def test_latent_affine_is_absorbed_and_finalize_writes_a_loadable_vae(tmp_path: Path) -> None:
    torch.manual_seed(0)
    vae = OobleckVAE(embedded.vae_config("tiny")).eval()
    source = TensorAudioSource([_tone(2.0, 220.0), _tone(2.0, 300.0, seed=3)])
    x = source.crop(0, 0, 16000)[None]
    with torch.no_grad():
        y0 = vae.decode(vae.encode(x).mode())
        shift, scale = latent_statistics(vae, source)
        absorb_latent_affine(vae, shift, scale)
        z = vae.encode(x).mode()
        y1 = vae.decode(z)
    # interior samples are unchanged (the decoder's zero padding at the ends now means z = shift)
    hop = vae.config.hop_samples
    torch.testing.assert_close(
        y1[..., 20 * hop : -20 * hop], y0[..., 20 * hop : -20 * hop], atol=1e-4, rtol=1e-4
    )
    stats_mean, stats_std = latent_statistics(vae, source)
    torch.testing.assert_close(stats_mean, torch.zeros_like(stats_mean), atol=1e-4, rtol=0)
    torch.testing.assert_close(stats_std, torch.ones_like(stats_std), atol=1e-3, rtol=0)

    recipe = VAERecipe(_config(tmp_path / "run", max_steps=1), source=source)
    recipe.setup()
    recipe.train()
    ckpt = max((tmp_path / "run" / "checkpoints").iterdir())
    out = finalize_vae(ckpt, tmp_path / "vae", source, silence_seconds=2.0)
    loaded, cfg, silence = load_vae_checkpoint(out)
    assert cfg == embedded.vae_config("tiny")
    assert silence.shape == (50, cfg.latent_channels)
    # a finalized folder starts a run (the decoder retrained on the shipped, frozen encoder)
    again = VAERecipe(_config(tmp_path / "again", max_steps=1, init_from=str(out)), source=source)
    again.setup()
    for key, value in loaded.state_dict().items():
        assert torch.equal(again.vae.state_dict()[key], value), key
    with pytest.raises(InvalidRequest, match="init_from"):
        VAERecipe(_config(tmp_path / "bad", geometry="embedded", init_from=str(out)), source=source).setup()


def test_config_rejects_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="crop_seconds"):
        _config(tmp_path, crop_seconds=0.0)
    cfg = _config(tmp_path, adversarial_start_step=3, final_phase_start_step=5)
    assert [cfg.phase(s) for s in (0, 3, 5)] == ["recon", "adversarial", "final"]


def test_refinalize_ships_a_later_decoder_with_the_frozen_encoder(tmp_path: Path) -> None:
    from encore.errors import CheckpointError
    from encore.training.recipes.vae import refinalize_decoder

    source = TensorAudioSource([_tone(1.0, 220.0)])
    run = VAERecipe(
        _config(tmp_path / "run", max_steps=4, final_phase_start_step=1, save_every_steps=1, crop_seconds=0.2),
        source=source,
    )
    run.setup()
    run.train()
    ckpts = sorted((tmp_path / "run" / "checkpoints").iterdir())
    # Step 0 is a recon step, steps 1-3 train only the decoder: checkpoints 1..4 share one encoder.
    second = finalize_vae(ckpts[0], tmp_path / "final2", source, silence_seconds=2.0)
    later = refinalize_decoder(ckpts[-1], second, tmp_path / "re")
    full = finalize_vae(ckpts[-1], tmp_path / "full", source, silence_seconds=2.0)
    re_vae, _, re_silence = load_vae_checkpoint(later)
    full_vae, _, full_silence = load_vae_checkpoint(full)
    sec_vae, _, _ = load_vae_checkpoint(second)
    for name, t in re_vae.encoder.state_dict().items():
        assert torch.equal(t, sec_vae.encoder.state_dict()[name]), name
    for name, t in re_vae.decoder.state_dict().items():
        torch.testing.assert_close(t, full_vae.decoder.state_dict()[name], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(re_silence, full_silence, rtol=1e-4, atol=1e-5)
    changed = [n for n, t in re_vae.decoder.state_dict().items() if not torch.equal(t, sec_vae.decoder.state_dict()[n])]
    assert changed  # the later decoder really is a different one
    other = VAERecipe(_config(tmp_path / "other", max_steps=1, seed=1, crop_seconds=0.2), source=source)
    other.setup()
    other.train()
    foreign = finalize_vae(max((tmp_path / "other" / "checkpoints").iterdir()), tmp_path / "f", source,
                           silence_seconds=2.0)  # fmt: skip
    with pytest.raises(CheckpointError, match="encoder tensor differs"):
        refinalize_decoder(ckpts[-1], foreign, tmp_path / "bad")  # another run's encoder


def test_chroma_term_is_logged_trains_and_checks_its_window(tmp_path: Path) -> None:
    source = TensorAudioSource([_tone(0.6, 220.0), _tone(0.5, 440.0, seed=2)])
    kw = {"crop_seconds": 0.2, "fft_sizes": (128, 64, 32), "disc_fft_sizes": (64,), "chroma_fft_size": 512}
    plain = VAERecipe(_config(tmp_path / "plain", max_steps=2, **kw), source=source)
    plain.setup()
    with_chroma = VAERecipe(_config(tmp_path / "chroma", max_steps=2, chroma_weight=1.0, **kw), source=source)
    with_chroma.setup()
    rows, plain_rows = with_chroma.train(), plain.train()
    assert all("chroma" in r and 0 <= r["chroma"] <= 2 for r in rows)
    assert "chroma" not in plain_rows[0]
    assert rows[0]["loss"] == pytest.approx(plain_rows[0]["loss"] + rows[0]["chroma"], rel=1e-5)
    with pytest.raises(InvalidRequest, match="chroma_fft_size"):
        VAERecipe(_config(tmp_path / "bad", chroma_weight=1.0, crop_seconds=0.2, chroma_fft_size=4096),
                  source=source).setup()  # fmt: skip


def test_mel_term_is_logged_and_added_to_the_loss(tmp_path: Path) -> None:
    source = TensorAudioSource([_tone(0.6, 220.0), _tone(0.5, 440.0, seed=2)])
    kw = {"crop_seconds": 0.2, "fft_sizes": (128, 64, 32), "disc_fft_sizes": (64,)}
    plain = VAERecipe(_config(tmp_path / "plain", max_steps=2, **kw), source=source)
    plain.setup()
    with_mel = VAERecipe(_config(tmp_path / "mel", max_steps=2, mel_weight=2.0, **kw), source=source)
    with_mel.setup()
    rows, plain_rows = with_mel.train(), plain.train()
    assert all("mel" in r and r["mel"] > 0 for r in rows)
    assert "mel" not in plain_rows[0]
    assert rows[0]["loss"] == pytest.approx(plain_rows[0]["loss"] + 2.0 * rows[0]["mel"], rel=1e-5)


def test_smoothness_term_is_logged_lowers_roughness_and_checks_the_crop(tmp_path: Path) -> None:
    source = TensorAudioSource([_tone(0.6, 220.0), _tone(0.5, 440.0, seed=2)])
    kw = {"crop_seconds": 0.2, "fft_sizes": (128, 64, 32), "disc_fft_sizes": (64,), "learning_rate": 3e-3}
    plain = VAERecipe(_config(tmp_path / "plain", max_steps=1, **kw), source=source)
    plain.setup()
    smooth = VAERecipe(_config(tmp_path / "smooth", max_steps=1, smoothness_weight=1.0, **kw), source=source)
    smooth.setup()
    first, plain_first = smooth.train()[0], plain.train()[0]
    assert "roughness" not in plain_first and 0 <= first["roughness"] <= 2
    assert first["loss"] == pytest.approx(plain_first["loss"] + first["roughness"], rel=1e-5)
    strong = VAERecipe(_config(tmp_path / "strong", max_steps=12, smoothness_weight=50.0, **kw), source=source)
    strong.setup()
    rows = strong.train()
    assert rows[-1]["roughness"] < 0.7 * rows[0]["roughness"], [r["roughness"] for r in rows]
    with pytest.raises(InvalidRequest, match="crop_seconds"):
        VAERecipe(_config(tmp_path / "bad", smoothness_weight=1.0, crop_seconds=0.01), source=source).setup()


def test_embedded_geometries_share_widths_and_rate_and_differ_in_stride_order() -> None:
    """`embedded-v2` is the shipped geometry with the official stride order: 25 Hz latents of 48 kHz audio."""
    old, new = embedded.vae_config("embedded"), embedded.vae_config("embedded-v2")
    assert old.downsampling_ratios == (10, 6, 4, 4, 2) and new.downsampling_ratios == (2, 4, 4, 6, 10)
    assert (new.hop_samples, new.latent_channels, new.sampling_rate) == (1920, 16, 48_000)
    assert [getattr(new, f) for f in ("channel_multiples", "decoder_channels", "encoder_hidden_size")] == [
        getattr(old, f) for f in ("channel_multiples", "decoder_channels", "encoder_hidden_size")]
    vae = OobleckVAE(new).eval()
    with torch.inference_mode():
        z = vae.encode(torch.zeros(1, 2, 2 * 1920 * 5)).mean
        assert z.shape == (1, 16, 10)
        assert vae.decode(z).shape == (1, 2, 2 * 1920 * 5)
    with pytest.raises(ValueError, match="embedded-v2"):
        embedded.vae_config("embedded-v3")


def test_frame_pitch_profiles_match_the_latent_probe() -> None:
    from encore.training.latent_probe import frame_chroma
    from encore.training.losses import frame_pitch_profiles

    wav = _tone(0.6, 220.0) + _tone(0.6, 330.0, seed=1)
    profiles, energy = frame_pitch_profiles(wav[None], RATE, 320, 15, n_fft=1024)
    want, want_energy = frame_chroma(wav.mean(dim=0).numpy(), RATE, 320, 15, n_fft=1024)
    assert profiles.shape == (1, 15, 12) and energy.shape == (1, 15)
    torch.testing.assert_close(profiles[0].double(), torch.from_numpy(want), atol=1e-5, rtol=0)
    torch.testing.assert_close(energy[0].double(), torch.from_numpy(want_energy), rtol=1e-4, atol=1e-4)
    assert {int(i) for i in profiles[0, 2:12].mean(dim=0).topk(2).indices} == {9, 4}  # A (220 Hz), E (330 Hz)


def test_latent_pitch_loss_falls_and_the_head_resumes_exactly(tmp_path: Path) -> None:
    """The head on the posterior means fits the clips' pitch profiles; it is checkpointed with the VAE. (Telling
    the two notes apart takes the encoder far longer than a unit test: the model card's Limits.)"""
    from encore.training.losses import frame_pitch_profiles

    clips = [_tone(0.6, 220.0), _tone(0.6, 261.63, seed=2)]  # A3 and C4
    for clip, pitch_class in zip(clips, (9, 0), strict=True):
        truth, _ = frame_pitch_profiles(clip[None, :, :3200], RATE, 320, 10, n_fft=1024)
        assert int(truth[0, 2:8].mean(dim=0).argmax()) == pitch_class
    kw = {"crop_seconds": 0.4, "fft_sizes": (128, 64, 32), "latent_pitch_weight": 1.0, "chroma_fft_size": 1024,
          "learning_rate": 3e-3, "adamw_learning_rate": 1e-2}  # fmt: skip
    full = VAERecipe(_config(tmp_path / "full", max_steps=40, **kw), source=TensorAudioSource(clips))
    full.setup()
    rows = full.train()
    first, last = (sum(r["latent_pitch"] for r in part) / 10 for part in (rows[:10], rows[-10:]))
    assert last < 0.8 * first, (first, last)

    split = VAERecipe(_config(tmp_path / "split", max_steps=20, **kw), source=TensorAudioSource(clips))
    split.setup()
    split.train()
    again = VAERecipe(_config(tmp_path / "split", max_steps=40, **kw), source=TensorAudioSource(clips))
    again.setup()
    assert again.step == 20
    rest = again.train()
    assert [r["loss"] for r in rest] == [r["loss"] for r in rows[20:]]
    assert again.pitch_head is not None
    for key, value in full.pitch_head.state_dict().items():
        assert torch.equal(again.pitch_head.state_dict()[key], value), key
