"""The latent pitch probe: finds pitch where latents carry it, none where they do not."""

from __future__ import annotations

import numpy as np
import pytest

from encore.errors import InvalidRequest
from encore.training.latent_probe import frame_chroma, main, probe_pitch, temporal_correlation

RATE, HOP = 48_000, 1920


def test_frame_chroma_names_the_sounding_pitch_class() -> None:
    t = np.arange(RATE) / RATE
    chroma, energy = frame_chroma(np.sin(2 * np.pi * 440.0 * t), RATE, HOP, 25)
    assert chroma.shape == (25, 12) and energy.shape == (25,)
    assert np.allclose(chroma.sum(axis=1), 1.0)
    assert (chroma[3:-3].argmax(axis=1) == 9).all()  # A


def _clips(seed: int, carry_pitch: bool) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(12, 16))
    latents, chromas, energies = [], [], []
    for _ in range(24):
        chroma = rng.dirichlet(np.ones(12) * 0.3, size=100)
        noise = rng.normal(size=(100, 16))
        latents.append(chroma @ mixing + 0.1 * noise if carry_pitch else noise)
        chromas.append(chroma)
        energies.append(np.ones(100))
    return latents, chromas, energies


def test_probe_separates_pitched_latents_from_pitchless_ones() -> None:
    pitched = probe_pitch(*_clips(0, carry_pitch=True))
    blind = probe_pitch(*_clips(0, carry_pitch=False))
    assert pitched.frame_r2 > 0.9 and pitched.clip_correlation > 0.9
    assert blind.frame_r2 < 0.05 and abs(blind.clip_correlation) < 0.5
    assert (pitched.train_clips, pitched.test_clips) == (18, 6)


def test_temporal_correlation_tells_white_from_smooth_latents() -> None:
    rng = np.random.default_rng(0)
    white = [rng.standard_normal((250, 16)) for _ in range(8)]
    smooth = [np.cumsum(rng.standard_normal((250, 16)), axis=0) for _ in range(8)]  # random walks
    alternating = [w * np.where(np.arange(250) % 2, 1.0, -1.0)[:, None] + 3 for w in white]
    assert abs(temporal_correlation(white)[1]) < 0.05
    assert temporal_correlation(smooth, lags=(1, 4))[1] > 0.8
    assert temporal_correlation(smooth, lags=(1, 4))[1] > temporal_correlation(smooth, lags=(1, 4))[4]
    assert abs(temporal_correlation(alternating)[1]) < 0.05  # the per-clip mean (3) is removed first
    with pytest.raises(InvalidRequest, match="lag"):
        temporal_correlation([np.zeros((1, 4))])


def test_probe_refuses_too_few_clips_and_bad_usage() -> None:
    latents, chromas, energies = _clips(1, carry_pitch=True)
    with pytest.raises(InvalidRequest, match="clips"):
        probe_pitch(latents[:3], chromas[:3], energies[:3])
    with pytest.raises(InvalidRequest, match="usage"):
        main(["only-one-arg"])


def test_vae_clips_encode_the_corpus_mixes(monkeypatch: pytest.MonkeyPatch) -> None:
    """`vae_clips` (a VAE probed without a latent cache): one latent row per frame of each mix, chroma of the
    same frames, and a VAE at another rate than the corpus is refused by name."""
    from types import SimpleNamespace

    import torch

    from encore.data import corpus
    from encore.training.latent_probe import vae_clips

    labels = [SimpleNamespace(clip_id=f"c{i}", sample_rate=RATE) for i in range(3)]
    t = torch.arange(RATE) / RATE
    mixes = {f"c{i}": torch.stack([torch.sin(2 * torch.pi * f * t)] * 2) for i, f in enumerate((220, 330, 440))}
    monkeypatch.setattr(corpus, "read_manifest", lambda folder: labels)
    monkeypatch.setattr(corpus, "load_mix", lambda folder, label: mixes[label.clip_id])

    class FrameMeans:  # "encodes" each 1920-sample frame as its mean and its energy
        config = SimpleNamespace(sampling_rate=RATE, hop_samples=HOP)

        def encode(self, wav: torch.Tensor) -> SimpleNamespace:
            frames = wav.mean(dim=1).reshape(1, -1, HOP)
            return SimpleNamespace(mean=torch.stack([frames.mean(-1), frames.pow(2).mean(-1)], dim=1))

    latents, chromas, energies = vae_clips(FrameMeans(), "corpus", max_clips=2)
    assert len(latents) == 2 and latents[0].shape == (25, 2)
    assert chromas[0].shape == (25, 12) and energies[1].shape == (25,)
    assert np.allclose(latents[1][:, 1], 0.5, atol=0.01)  # a unit sine's mean square
    assert chromas[1][5:-5].argmax(axis=1).tolist() == [4] * 15  # 330 Hz is an E
    labels[0].sample_rate = 44_100
    with pytest.raises(InvalidRequest, match="44100 Hz"):
        vae_clips(FrameMeans(), "corpus")


def test_round_trip_scores_what_survives_the_vae(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """An identity VAE keeps every key and the chroma; one that always decodes the same F# tone keeps neither."""
    from types import SimpleNamespace

    import torch

    from encore.data import corpus
    from encore.training.latent_probe import round_trip

    t = torch.arange(2 * RATE) / RATE
    triads = {"C major": (261.63, 329.63, 392.0), "A minor": (220.0, 261.63, 329.63), "G major": (196.0, 246.94, 293.66)}
    labels = [SimpleNamespace(clip_id=k, keyscale=k, sample_rate=RATE) for k in ["unused", *triads]]
    mixes = {k: torch.stack([sum(torch.sin(2 * torch.pi * f * t) for f in fs) / 3] * 2) for k, fs in triads.items()}
    monkeypatch.setattr(corpus, "read_manifest", lambda folder: labels)
    monkeypatch.setattr(corpus, "load_mix", lambda folder, label: mixes[label.clip_id])

    class Fake:
        config = SimpleNamespace(sampling_rate=RATE, hop_samples=HOP)

        def __init__(self, decode: object) -> None:
            self.decode = decode

        def encode(self, wav: torch.Tensor) -> SimpleNamespace:
            return SimpleNamespace(mean=wav)

    identity = round_trip(Fake(lambda z: z), "corpus", clips=3)
    assert identity.clips == 3 and identity.render_keys >= 2
    assert identity.reconstruction_keys == identity.render_keys and identity.chroma_correlation > 0.999
    tone = round_trip(Fake(lambda z: torch.sin(2 * torch.pi * 369.99 * t).expand_as(z)), "corpus", clips=3)
    assert tone.render_keys == identity.render_keys
    assert tone.reconstruction_keys == 0 and tone.chroma_correlation < 0.3
    (tmp_path / "meta.json").write_text("{}")  # a latent cache has no VAE to decode with
    with pytest.raises(InvalidRequest, match="needs a VAE"):
        main([str(tmp_path), "corpus", "roundtrip=3"])


# --------------------------------------------------------------------------- instruments

CLASSES = ("bass", "drums", "keyboard")


def test_set_accuracy_is_the_evals_instrument_accuracy() -> None:
    """The array form agrees with the eval's per-item Jaccard (`encore.eval.report`), empty sets included."""
    from encore.eval.report import ItemResult, _jaccard
    from encore.training.latent_probe import set_accuracy

    rng = np.random.default_rng(3)
    probs, targets = rng.uniform(size=(40, 3)), (rng.uniform(size=(40, 3)) > 0.6).astype(np.float32)
    probs[0], targets[0] = 0.1, 0.0  # nothing asked, nothing heard: counts as right
    items = [ItemResult(prompt_id=str(i), bpm_target=120.0, bpm_estimate=None, tempo="none", key_target="C major",
                        key_estimate=None, key="none", tracks_target=[c for c, t in zip(CLASSES, y) if t],
                        probabilities=dict(zip(CLASSES, p.tolist())))
             for i, (p, y) in enumerate(zip(probs, targets))]  # fmt: skip
    assert set_accuracy(probs, targets) == pytest.approx(np.mean([_jaccard(i) for i in items]))
    assert set_accuracy(targets, targets) == 1.0


def _instrument_latents(seed: int, informative: bool) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = (rng.uniform(size=(60, 3)) > 0.5).astype(np.float32)
    latents = []
    for y in targets:
        z = rng.normal(size=(50, 8))
        if informative:  # each instrument raises the spread of its own channel
            z[:, :3] *= 1 + 2 * y
        latents.append(z)
    return latents, targets, np.arange(60) % 5 == 0


def test_probe_instruments_reads_what_the_latents_carry() -> None:
    from encore.training.latent_probe import latent_statistics, probe_instruments

    assert latent_statistics(np.zeros((10, 4))).shape == (20,)
    with pytest.raises(InvalidRequest, match="latents"):
        latent_statistics(np.zeros((1, 4)))
    _, carried = probe_instruments(*_instrument_latents(0, informative=True), CLASSES)
    _, blind = probe_instruments(*_instrument_latents(0, informative=False), CLASSES)
    assert (carried.train_clips, carried.test_clips, carried.classes) == (48, 12, CLASSES)
    assert carried.held_out > 0.9 and blind.held_out < carried.held_out - 0.3
    latents, targets, _ = _instrument_latents(0, informative=True)
    with pytest.raises(InvalidRequest, match="held out"):
        probe_instruments(latents, targets, np.zeros(60, dtype=bool), CLASSES)


def test_decoded_instruments_scores_each_decoded_latent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each `[T, D]` latent goes through the tiled decode as `[1, D, T]`; the audio probe's reading is scored."""
    from types import SimpleNamespace

    import torch

    from encore.audio import tiling
    from encore.training.latent_probe import decoded_instruments

    seen = []

    def decode(vae: object, z: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(z.shape))
        return torch.zeros(1, 2, z.shape[-1] * HOP)

    monkeypatch.setattr(tiling, "decode_tiled", decode)
    vae = SimpleNamespace(config=SimpleNamespace(sampling_rate=RATE))
    targets = np.array([[1, 0, 0], [0, 1, 1]], dtype=np.float32)

    class Probe:
        def __init__(self, probs: np.ndarray) -> None:
            self.probs = probs

        def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            assert features.shape[0] == 2
            return self.probs, features

    latents = [np.zeros((25, 4)), np.zeros((30, 4))]
    assert decoded_instruments(vae, latents, targets, Probe(targets)) == 1.0
    assert seen == [(1, 4, 25), (1, 4, 30)]
    assert decoded_instruments(vae, latents, targets, Probe(np.array([[0.9, 0, 0], [0, 0.9, 0]]))) == 0.75


def test_cache_instruments_holds_out_the_evals_clips(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    import torch

    from encore.data import corpus
    from encore.training.latent_probe import cache_instruments
    from encore.training.recipes import dit

    labels = [SimpleNamespace(clip_id=f"c{i}", index=i, tracks=["bass", "fx"] if i % 2 else []) for i in range(7)]
    clips = [SimpleNamespace(clip_id=f"c{i}", mix=torch.full((5, 2), float(i))) for i in range(6, -1, -1)]
    monkeypatch.setattr(corpus, "read_manifest", lambda folder: labels)
    monkeypatch.setattr(dit.LatentCache, "load", classmethod(lambda cls, folder: SimpleNamespace(clips=clips)))
    latents, targets, held = cache_instruments("cache", "corpus", CLASSES)
    assert [float(z[0, 0]) for z in latents] == [6, 5, 4, 3, 2, 1, 0]
    assert held.tolist() == [False, True, False, False, False, False, True]  # indices 5 and 0
    assert targets[:, 0].tolist() == [0, 1, 0, 1, 0, 1, 0] and not targets[:, 1:].any()
    labels.pop()
    with pytest.raises(InvalidRequest, match="c6 of cache"):
        cache_instruments("cache", "corpus", CLASSES)


def test_instruments_usage_is_checked_before_any_work() -> None:
    for args in (["instruments", "cache", "corpus"], ["instruments", "cache", "corpus", "probe=p", "bogus=1"],
                 ["instruments", "cache", "corpus", "probe=p", "checkpoint=c"]):  # fmt: skip
        with pytest.raises(InvalidRequest, match="usage"):
            main(args)
