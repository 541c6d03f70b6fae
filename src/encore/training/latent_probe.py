"""How much pitch a VAE's latents carry: a ridge regression from latent windows to the audio's chroma.

Key accuracy of anything decoded by a VAE is capped by what its latents keep. This probe answers that from a
latent cache alone, without training a DiT: per latent frame, regress the 12-bin pitch-class profile of the
audio under it (the key estimator's chroma: 65 Hz-2.1 kHz, 8192-sample window) on the latents of that frame
and its neighbours, fitted on some clips and scored on the others. A frame R^2 near 0 means the pitch is not
linearly in the latents; the clip-level correlation is what a key estimate would see.

It also reports how smooth the latents are in time (`temporal_correlation`): the median lag-k autocorrelation of
each channel. Near 0 means the latents are close to white noise frame to frame, so a generator has to place
every frame's detail itself (the shipped embedded VAE: 0.00 at lag 1).

Run: `python -m encore.training.latent_probe <latent cache> <corpus> [max_clips=160]`; in place of the cache, a
VAE (a training checkpoint, a finalized `vae/` folder or a released model) probes the latents it computes, and
`roundtrip=N` also decodes the last N corpus mixes and scores their keys as `encore eval` does (`round_trip`).

The same question for instruments (`probe_instruments`): the eval's instrument probe (`encore.eval.probe`), fitted
on per-channel statistics of the cache's mix latents instead of log-mel statistics, on the clips the eval's
probe trains on and scored on the ones it holds out. Set beside the eval's audio probe on the same latents
decoded (`decoded_instruments`) and on what a DiT generates, it says whether instruments are lost in the
latents, in the decoder, or by the generator. Run: `python -m encore.training.latent_probe instruments <latent
cache> <corpus> probe=<the eval's probe.safetensors> [vae=<folder>,<folder>...] [checkpoint=<folder>
prompts=<prompt set json>]`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encore.errors import InvalidRequest
from encore.training.losses import pitch_class_matrix

CHROMA_FFT = 8192


@dataclass(frozen=True)
class PitchProbe:
    frame_r2: float
    """Held-out R^2 of the per-frame chroma (0 = no better than the training mean)."""
    clip_correlation: float
    """Median over held-out clips of the correlation between the clip's mean predicted and true chroma."""
    train_clips: int
    test_clips: int


@dataclass(frozen=True)
class RoundTrip:
    """What pitch survives encode + decode: the eval's key estimator on renders and reconstructions."""

    clips: int
    render_keys: int
    """Clips whose render the key estimator names exactly (the ceiling)."""
    reconstruction_keys: int
    """Clips whose reconstruction it names exactly (`encore eval`'s vae-recon row, on these clips)."""
    chroma_correlation: float
    """Median over clips of the correlation of render and reconstruction clip chroma (energy-weighted)."""


def frame_chroma(mono: np.ndarray, rate: int, hop: int, num_frames: int, n_fft: int = CHROMA_FFT
                 ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Pitch-class profile of each latent frame: `([num_frames, 12] rows summing to 1, [num_frames] energy)`.

    Frame t is the `n_fft` window centred on sample `t * hop` (the clip is zero-padded by half a window each
    side). `encore.training.losses.frame_pitch_profiles` is the same in torch, for training.
    """
    half = n_fft // 2
    padded = np.pad(np.asarray(mono, dtype=np.float32), (half, half + num_frames * hop))
    starts = np.arange(num_frames) * hop
    frames = np.stack([padded[s : s + n_fft] for s in starts]) * np.hanning(n_fft).astype(np.float32)
    mag = np.abs(np.fft.rfft(frames, axis=1))
    chroma = mag.astype(np.float64) @ pitch_class_matrix(n_fft, rate, dtype=torch.float64).numpy().T
    energy = chroma.sum(axis=1)
    return chroma / np.maximum(energy[:, None], 1e-9), energy


def probe_pitch(latents: Sequence[np.ndarray], chromas: Sequence[np.ndarray], energies: Sequence[np.ndarray], *,
                context: int = 2, ridge: float = 1.0, holdout: float = 0.25) -> PitchProbe:  # fmt: skip
    """Fit the probe on the first clips and score it on the last `holdout` fraction.

    Args:
        latents: Per clip `[T, D]`.
        chromas: Per clip `[T, 12]` (from `frame_chroma`).
        energies: Per clip `[T]`; frames under 1e-3 of the clip's loudest are left out (silence has no pitch).
        context: Latent frames on each side joined to a frame's own.
    """
    if not len(latents) == len(chromas) == len(energies) or len(latents) < 4:
        raise InvalidRequest("clips", f"need >= 4 clips with latents, chroma and energy, got {len(latents)}")
    xs, ys, groups = [], [], []
    for i, (z, c, e) in enumerate(zip(latents, chromas, energies, strict=True)):
        t = min(len(z), len(c))
        padded = np.pad(np.asarray(z[:t], dtype=np.float64), ((context, context), (0, 0)))
        window = np.concatenate([padded[k : k + t] for k in range(2 * context + 1)], axis=1)
        keep = e[:t] > 1e-3 * max(float(e.max()), 1e-12)
        xs.append(window[keep])
        ys.append(c[:t][keep])
        groups.append(np.full(int(keep.sum()), i))
    x, y, g = np.concatenate(xs), np.concatenate(ys), np.concatenate(groups)
    x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    first_test = len(latents) - max(1, round(holdout * len(latents)))
    train, test = g < first_test, g >= first_test
    weights = np.linalg.solve(x[train].T @ x[train] + ridge * np.eye(x.shape[1]), x[train].T @ y[train])
    pred = x[test] @ weights
    r2 = 1.0 - float(((pred - y[test]) ** 2).sum() / ((y[test] - y[train].mean(axis=0)) ** 2).sum())
    corr = [np.corrcoef(pred[g[test] == k].mean(axis=0), y[test][g[test] == k].mean(axis=0))[0, 1]
            for k in np.unique(g[test])]  # fmt: skip
    return PitchProbe(r2, float(np.nanmedian(corr)), int(first_test), len(latents) - first_test)


def temporal_correlation(latents: Sequence[np.ndarray], lags: Sequence[int] = (1, 2, 4)) -> dict[int, float]:
    """Median over clips and channels of each channel's autocorrelation at each lag (per clip `[T, D]`, its mean
    removed; 1 = slowly varying, 0 = white)."""
    if not latents:
        raise InvalidRequest("clips", "need at least one clip")
    out = {}
    for lag in lags:
        values = []
        for z in latents:
            z = np.asarray(z, dtype=np.float64)
            if len(z) <= lag:
                raise InvalidRequest("clips", f"a clip has {len(z)} frames, too few for lag {lag}")
            z = z - z.mean(axis=0)
            values.extend((z[lag:] * z[:-lag]).sum(axis=0) / np.maximum((z * z).sum(axis=0), 1e-12))
        out[lag] = float(np.median(values))
    return out


def cache_clips(cache_dir: str | Path, corpus_dir: str | Path, max_clips: int = 160
                ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:  # fmt: skip
    """(latents, `frame_chroma` profiles, energies) of the first `max_clips` clips of a latent cache and their
    mixes in the corpus: the inputs of `probe_pitch` (the latents also feed `temporal_correlation`)."""
    from encore.data.corpus import load_mix, read_manifest
    from encore.training.recipes.dit import LatentCache

    cache = LatentCache.load(cache_dir)
    labels = {lab.clip_id: lab for lab in read_manifest(corpus_dir)}
    latents, chromas, energies = [], [], []
    for clip in cache.clips[:max_clips]:
        if clip.clip_id not in labels:
            raise InvalidRequest("corpus", f"{clip.clip_id} of {cache_dir} is not in {corpus_dir}")
        mono = load_mix(corpus_dir, labels[clip.clip_id]).mean(dim=0).numpy()
        chroma, energy = frame_chroma(mono, cache.sample_rate, cache.hop_samples, clip.num_frames)
        latents.append(clip.mix.numpy())
        chromas.append(chroma)
        energies.append(energy)
    return latents, chromas, energies


def vae_clips(vae: torch.nn.Module, corpus_dir: str | Path, max_clips: int = 160
              ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:  # fmt: skip
    """As `cache_clips`, with the latents computed here: the posterior means of the first `max_clips` corpus mixes
    under `vae` (an `OobleckVAE`), so a VAE candidate is probed without building a latent cache."""
    from encore.data.corpus import load_mix, read_manifest

    cfg = vae.config
    latents, chromas, energies = [], [], []
    for label in read_manifest(corpus_dir)[:max_clips]:
        if label.sample_rate != cfg.sampling_rate:
            raise InvalidRequest("vae", f"the VAE runs at {cfg.sampling_rate} Hz but clip {label.clip_id} of "
                                        f"{corpus_dir} is {label.sample_rate} Hz")  # fmt: skip
        wav = load_mix(corpus_dir, label).float()
        with torch.inference_mode():
            z = vae.encode(wav[None]).mean[0].T.float().numpy()
        chroma, energy = frame_chroma(wav.mean(dim=0).numpy(), cfg.sampling_rate, cfg.hop_samples, len(z))
        latents.append(z)
        chromas.append(chroma)
        energies.append(energy)
    return latents, chromas, energies


def round_trip(vae: torch.nn.Module, corpus_dir: str | Path, clips: int = 20) -> RoundTrip:
    """Encode and decode the last `clips` mixes of the corpus with `vae`, and compare keys and clip chroma with
    the renders'. A VAE trained on this corpus has seen these clips (as random crops)."""
    from encore.data.corpus import load_mix, read_manifest
    from encore.eval.analysis import analyze_clip, key_match

    cfg = vae.config
    labels = read_manifest(corpus_dir)[-clips:]
    exact = np.zeros(2, dtype=int)  # renders, reconstructions
    correlations = []
    for label in labels:
        wav = load_mix(corpus_dir, label).float()
        frames = wav.shape[-1] // cfg.hop_samples
        wav = wav[:, : frames * cfg.hop_samples]
        with torch.inference_mode():
            recon = vae.decode(vae.encode(wav[None]).mean)[0].float()
        profiles = []
        for i, audio in enumerate((wav, recon)):
            exact[i] += key_match(analyze_clip(audio.numpy(), cfg.sampling_rate).keyscale, label.keyscale) == "exact"
            chroma, energy = frame_chroma(audio.mean(dim=0).numpy(), cfg.sampling_rate, cfg.hop_samples, frames)
            profiles.append((chroma * energy[:, None]).sum(axis=0))
        correlations.append(float(np.corrcoef(*profiles)[0, 1]) if min(p.std() for p in profiles) > 0 else 0.0)
    return RoundTrip(len(labels), int(exact[0]), int(exact[1]), float(np.median(correlations)))


def _load_vae(source: Path) -> torch.nn.Module:
    """A VAE training checkpoint, or a finalized / released VAE."""
    from encore.training.checkpointing import STATE_NAME
    from encore.training.recipes import vae as vae_recipe

    if (source / STATE_NAME).is_file():
        return vae_recipe._trained_vae(source)[0]  # the recipe's own reader of its checkpoints
    return vae_recipe.load_vae_checkpoint(source)[0]


def probe_cache(cache_dir: str | Path, corpus_dir: str | Path, *, max_clips: int = 160) -> PitchProbe:
    """`probe_pitch` over the first `max_clips` clips of a latent cache and their mixes in the corpus."""
    return probe_pitch(*cache_clips(cache_dir, corpus_dir, max_clips))


@dataclass(frozen=True)
class InstrumentCeiling:
    """What a probe of latent statistics reads of a cache's instruments."""

    held_out: float
    """Multi-label accuracy (Jaccard, as `encore eval` reports it) on the held-out clips."""
    train_clips: int
    test_clips: int
    classes: tuple[str, ...]
    """The classes the probe kept (those with enough positive clips)."""


def latent_statistics(latents: np.ndarray) -> np.ndarray:
    """`[T, D]` latents -> `[5 D]`: per channel the time mean, std, mean |frame delta| and 10th / 90th
    percentiles (the latent counterpart of the eval probe's per-band log-mel statistics)."""
    z = np.asarray(latents, dtype=np.float32)
    if z.ndim != 2 or z.shape[0] < 2:
        raise InvalidRequest("latents", f"expected [T >= 2, D] latents, got shape {z.shape}")
    delta = np.abs(np.diff(z, axis=0)).mean(axis=0)
    return np.concatenate([z.mean(axis=0), z.std(axis=0), delta, *np.percentile(z, [10, 90], axis=0)])


def set_accuracy(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """Mean over clips of |predicted ∩ asked| / |predicted ∪ asked| (1 when both are empty), predicted being
    the probabilities above the eval's threshold: the eval's instrument accuracy on `[N, K]` arrays."""
    from encore.eval.report import THRESHOLD

    pred, asked = np.asarray(probabilities) > THRESHOLD, np.asarray(targets) > 0.5
    union = (pred | asked).sum(axis=1)
    return float(np.mean(np.where(union > 0, (pred & asked).sum(axis=1) / np.maximum(union, 1), 1.0)))


def probe_instruments(latents: Sequence[np.ndarray], targets: np.ndarray, held_out: np.ndarray,
                      classes: tuple[str, ...]) -> tuple[Any, InstrumentCeiling]:  # fmt: skip
    """Fit the eval's probe on `latent_statistics` of the clips not `held_out` (`targets`: `[N, K]` 0/1 over
    `classes`) and score it on the held-out ones. Returns the probe and its reading."""
    from encore.eval.probe import train_probe

    x = np.stack([latent_statistics(z) for z in latents])
    y, held = np.asarray(targets, dtype=np.float32), np.asarray(held_out, dtype=bool)
    if held.sum() < 1 or (~held).sum() < 2:
        raise InvalidRequest("latents", f"need held-out clips and at least 2 to fit, got {held.sum()} held out "
                                        f"of {len(held)}")  # fmt: skip
    probe, _ = train_probe(x[~held], y[~held], classes)
    keep = [classes.index(c) for c in probe.classes]
    probs, _ = probe.predict(x[held])
    ceiling = InstrumentCeiling(set_accuracy(probs, y[held][:, keep]), int((~held).sum()), int(held.sum()),
                                tuple(probe.classes))  # fmt: skip
    return probe, ceiling


def decoded_instruments(vae: torch.nn.Module, latents: Sequence[np.ndarray], targets: np.ndarray,
                        audio_probe: Any) -> float:  # fmt: skip
    """The eval's instrument accuracy of `latents` (`[T, D]` each) decoded by `vae` (the pipeline's tiled
    decode), read by `audio_probe` (an `InstrumentProbe` over `clip_features`) against `targets` (`[N, K]` over
    the probe's classes)."""
    from encore.audio.tiling import decode_tiled
    from encore.eval.features import clip_features

    rate = vae.config.sampling_rate
    features = []
    with torch.inference_mode():
        for z in latents:
            audio = decode_tiled(vae, torch.as_tensor(z, dtype=torch.float32).T[None])[0]
            features.append(clip_features(audio.float().numpy(), rate))
    probs, _ = audio_probe.predict(np.stack(features))
    return set_accuracy(probs, targets)


def cache_instruments(cache_dir: str | Path, corpus_dir: str | Path, classes: tuple[str, ...]
                      ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:  # fmt: skip
    """(mix latents, `[N, K]` stem targets over `classes`, held-out mask) of every clip of a latent cache, held
    out as the eval's probe holds out corpus clips (index % `VALIDATION_EVERY` == 0)."""
    from encore.data.corpus import read_manifest
    from encore.eval.run import VALIDATION_EVERY
    from encore.training.recipes.dit import LatentCache

    labels = {lab.clip_id: lab for lab in read_manifest(corpus_dir)}
    latents, targets, held = [], [], []
    for clip in LatentCache.load(cache_dir).clips:
        if clip.clip_id not in labels:
            raise InvalidRequest("corpus", f"{clip.clip_id} of {cache_dir} is not in {corpus_dir}")
        label = labels[clip.clip_id]
        latents.append(clip.mix.numpy())
        targets.append([float(c in label.tracks) for c in classes])
        held.append(label.index % VALIDATION_EVERY == 0)
    return latents, np.array(targets, dtype=np.float32), np.array(held)


def _instruments_main(args: list[str]) -> int:
    """`instruments <cache> <corpus> probe=... [vae=a,b] [checkpoint=... prompts=...]` (module docstring)."""
    from encore.eval.probe import load_probe
    from encore.training.recipes import vae as vae_recipe

    opts = dict(a.split("=", 1) for a in args[2:] if "=" in a)
    if len(args) < 2 or "probe" not in opts or set(opts) - {"probe", "vae", "checkpoint", "prompts"} or (
        ("checkpoint" in opts) != ("prompts" in opts)
    ):
        raise InvalidRequest("latent_probe", "usage: latent_probe instruments <latent cache> <corpus> "
                                             "probe=<probe.safetensors> [vae=<folder>,...] "
                                             "[checkpoint=<folder> prompts=<prompt set>]")  # fmt: skip
    audio_probe = load_probe(opts["probe"])
    classes = tuple(audio_probe.classes)
    latents, targets, held = cache_instruments(args[0], args[1], classes)
    probe, ceiling = probe_instruments(latents, targets, held, classes)
    keep = [classes.index(c) for c in ceiling.classes]
    print(f"latent probe on {ceiling.test_clips} held-out cache clips ({ceiling.train_clips} fitted): "
          f"instrument accuracy {ceiling.held_out:.1%}")
    held_latents = [z for z, h in zip(latents, held) if h]
    for folder in filter(None, opts.get("vae", "").split(",")):
        vae = vae_recipe.load_vae_checkpoint(folder)[0].float().eval()
        score = decoded_instruments(vae, held_latents, targets[held], audio_probe)
        print(f"  decoded by {folder}: audio probe {score:.1%}")
    if "checkpoint" in opts:
        _generated_instruments(opts["checkpoint"], opts["prompts"], probe, keep, audio_probe)
    return 0


def _generated_instruments(checkpoint: str, prompts_path: str, probe: Any, keep: list[int],
                           audio_probe: Any) -> None:  # fmt: skip
    """Both probes on what the eval's base-50 and turbo-8 rows generate for the prompts (the eval's requests
    and seeds: prompt k gets seed k)."""
    import encore
    from encore.eval.features import clip_features
    from encore.eval.prompts import load_prompt_set
    from encore.eval.run import DEFAULT_SYSTEMS, request_for

    prompts = load_prompt_set(prompts_path).prompts
    targets = np.array([[float(c in p.tracks) for c in audio_probe.classes] for p in prompts], dtype=np.float32)
    for spec in DEFAULT_SYSTEMS[:2]:
        pipe = encore.load_pipeline(checkpoint, variant=spec.variant)
        stats, features = [], []
        for k, prompt in enumerate(prompts):
            result = pipe.generate(request_for(prompt, spec, k, None))
            stats.append(latent_statistics(result.latents[0].float().numpy()))
            features.append(clip_features(result.audio[0].float().numpy(), result.sample_rate))
        in_latents = set_accuracy(probe.predict(np.stack(stats))[0], targets[:, keep])
        in_audio = set_accuracy(audio_probe.predict(np.stack(features))[0], targets)
        print(f"{spec.name} on {len(prompts)} prompts: latent probe {in_latents:.1%}, audio probe {in_audio:.1%}")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["instruments"]:
        return _instruments_main(args[1:])
    opts = dict(a.split("=", 1) for a in args[2:] if "=" in a)
    if len(args) < 2 or set(opts) - {"max_clips", "roundtrip"}:
        raise InvalidRequest("latent_probe", "usage: latent_probe <latent cache | VAE checkpoint> <corpus> "
                                             "[max_clips=N] [roundtrip=N]")  # fmt: skip
    source, max_clips = Path(args[0]), int(opts.get("max_clips", 160))
    vae = None if (source / "meta.json").is_file() else _load_vae(source)  # a latent cache has no VAE
    if "roundtrip" in opts and vae is None:
        raise InvalidRequest("roundtrip", "needs a VAE (a checkpoint or vae/ folder), not a latent cache")
    if vae is None:
        latents, chromas, energies = cache_clips(source, args[1], max_clips)
    else:
        latents, chromas, energies = vae_clips(vae, args[1], max_clips)
    result = probe_pitch(latents, chromas, energies)
    print(f"pitch in latents: frame R^2 {result.frame_r2:.3f}, clip chroma correlation (median) "
          f"{result.clip_correlation:.2f} ({result.train_clips} clips fitted, {result.test_clips} held out)")  # fmt: skip
    smooth = temporal_correlation(latents)
    print("temporal autocorrelation (median over clips and channels): "
          + ", ".join(f"lag {k} {v:.2f}" for k, v in smooth.items()))  # fmt: skip
    if "roundtrip" in opts:
        trip = round_trip(vae, args[1], int(opts["roundtrip"]))
        print(f"round trip of the last {trip.clips} corpus clips: exact key {trip.reconstruction_keys}/{trip.clips} "
              f"(renders {trip.render_keys}/{trip.clips}), clip chroma correlation (median) "
              f"{trip.chroma_correlation:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
