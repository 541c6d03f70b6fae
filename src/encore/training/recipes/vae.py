"""VAE recipe: train an Oobleck VAE on rendered audio (multi-resolution STFT + KL, then adversarial + feature
matching against a multi-scale STFT discriminator, then a last phase without the KL term).

Conv weights are optimised with Muon (`torch.optim.Muon` orthogonalizing in float32, `encore.training.muon`)
on their flattened `[out, in*k]` matrix views; Snake parameters and biases with AdamW. `finalize_vae` turns a
checkpoint into the shipped `vae/` folder: it absorbs a per-channel latent affine (zero mean, unit variance on
the corpus) into the encoder's mean head and the decoder's first conv, and encodes the 600 s silence latent.

Run: `python -m encore.training.recipes.vae data=<corpus dir> output_dir=runs/vae max_steps=4000`
Finalize: `python -m encore.training.recipes.vae finalize <checkpoint folder> <dest folder> data=<corpus dir>`
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn

from encore.errors import CheckpointError, InvalidRequest
from encore.models.vae import OobleckVAE, VAEConfig, balance_upsampling_
from encore.training import embedded
from encore.training.discriminator import MultiScaleSTFTDiscriminator
from encore.training.losses import (
    DEFAULT_FFT_SIZES,
    chroma_loss,
    discriminator_hinge_loss,
    feature_matching_loss,
    frame_pitch_profiles,
    gaussian_kl,
    generator_hinge_loss,
    latent_pitch_loss,
    multi_resolution_mel_loss,
    multi_resolution_stft_loss,
    si_sdr,
    temporal_roughness,
)
from encore.training.muon import Muon
from encore.training.recipes.base import Recipe, RecipeConfig, load_module_tensors, run_cli, step_generator

log = logging.getLogger(__name__)

SILENCE_SECONDS = 600.0
"""Length of the encoded silence latent (official: 15 000 frames at 25 Hz)."""
SILENCE_NAME = "silence_latent.safetensors"
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
_STREAM_DATA, _STREAM_POSTERIOR = 0, 1


@dataclass(frozen=True, kw_only=True)
class VAETrainConfig(RecipeConfig):
    """`python -m encore.training.recipes.vae`: Oobleck VAE from scratch."""

    data: str = ""
    """Corpus folder (clips with `labels.json`; mixes and stems are used), a folder of audio files, or a text
    file listing audio paths. Empty only when the recipe is given an `AudioSource` directly."""
    geometry: str = "embedded"
    """`embedded`, `embedded-v2` or `tiny` (see `encore.training.embedded.vae_config`)."""
    init_from: str | None = None
    """A VAE checkpoint folder, or a finalized `vae/` folder (e.g. the shipped one, to retrain its decoder with
    the encoder frozen: the cached latents stay valid), whose weights start this run (no optimizer state)."""
    batch_size: int = 4
    crop_seconds: float = 0.5
    """Random crop per item; the 48 kHz blocks dominate the cost, so short crops buy many more steps."""
    learning_rate: float = 1e-3
    """Muon learning rate of conv weights (with `match_rms_adamw` scaling); 3e-3 diverged on the embedded
    geometry (docs/model-card.md)."""
    adamw_learning_rate: float = 3e-4
    """AdamW learning rate of Snake parameters and biases."""
    disc_learning_rate: float = 2e-4
    weight_decay: float = 0.0
    fft_sizes: tuple[int, ...] = (8192, 4096, *DEFAULT_FFT_SIZES)
    """STFT loss resolutions. Windows up to 2048 samples (43 ms) are about one 40 ms latent frame long, so a
    decoder that repeats one waveform grain per frame (a buzz on the 25 Hz harmonics, which key estimation
    reads as G) looks right to them; the 4096 and 8192 windows resolve that line spectrum and penalize it."""
    disc_fft_sizes: tuple[int, ...] = (2048, 512)
    disc_channels: int = 16
    stft_weight: float = 1.0
    mel_weight: float = 0.0
    """Weight of `multi_resolution_mel_loss` (log mel magnitudes, L1). The STFT loss's log term spends three
    quarters of its weight above 6 kHz; the mel loss puts it where instruments differ. The seventh release's
    decoder lost most guitar and brass timbre (eval instrument recall after the VAE round trip 8 % and 0 %
    against 80 % and 44 % on the renders)."""
    kl_weight: float = 2e-3
    """On the per-element mean KL (16 channels): close to Stable Audio's 1e-4 on a KL summed over 64."""
    chroma_weight: float = 0.0
    """Weight of `chroma_loss` (pitch-class profile L1, 65 Hz-2.1 kHz): the STFT losses alone let the embedded
    VAE keep rhythm and envelope but lose the notes (reconstruction chroma correlated r 0.0-0.4 with the input's,
    exact key 2 %)."""
    chroma_fft_size: int = 8192
    latent_pitch_weight: float = 0.0
    """Weight of `latent_pitch_loss`: a linear head (a 5-frame convolution, training only, not exported)
    predicts each latent frame's pitch-class profile from the posterior means, so the encoder must put the
    notes into the latents where a linear read-out (and the DiT) can find them. `chroma_weight` alone acts
    through the decoder and left the latents without pitch (latent probe R^2 < 0)."""
    smoothness_weight: float = 0.0
    """Weight of `temporal_roughness` of the posterior means (1 - their lag-1 autocorrelation), with the KL
    term (not in the final phase). The embedded VAE's latents came out white in time (lag-1 autocorrelation
    0.00), which leaves the DiT to place every 40 ms frame's detail; this pushes the encoder towards slowly
    varying latents. Needs crops of at least 3 latent frames."""
    adversarial_weight: float = 0.1
    feature_weight: float = 5.0
    adversarial_start_step: int = 1700
    """Steps of pure reconstruction (+KL) before the discriminator joins."""
    final_phase_start_step: int | None = None
    """From this step on: no KL term, the decoder sees posterior means (the paper's last phase)."""
    freeze_encoder_in_final_phase: bool = True
    balanced_upsampling: bool = False
    """Keep the decoder's transposed convs on the artefact-free subspace (`balance_upsampling_`, projected after
    init and after every step). Without it the embedded decoder learned a 25 Hz comb 27 dB above the music's
    neighbouring bins, which key estimation reads as one fixed key; the STFT and adversarial losses did not
    remove it."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.crop_seconds > 0:
            raise InvalidRequest("crop_seconds", f"must be > 0, got {self.crop_seconds}")
        object.__setattr__(self, "fft_sizes", tuple(self.fft_sizes))
        object.__setattr__(self, "disc_fft_sizes", tuple(self.disc_fft_sizes))

    def phase(self, step: int) -> str:
        """`recon`, `adversarial` or `final` for optimizer step `step`."""
        if self.final_phase_start_step is not None and step >= self.final_phase_start_step:
            return "final"
        return "adversarial" if step >= self.adversarial_start_step else "recon"


# --------------------------------------------------------------------------- data


class AudioSource(Protocol):
    """Random-access clips of stereo audio at the VAE rate."""

    def __len__(self) -> int: ...

    def num_samples(self, index: int) -> int: ...

    def crop(self, index: int, start: int, length: int) -> Tensor:
        """`[2, length]` float32 starting at sample `start` (zero-padded past the end)."""
        ...


class TensorAudioSource:
    """Clips held in memory (tests, small calibration sets)."""

    def __init__(self, clips: Sequence[Tensor]) -> None:
        if not clips:
            raise ValueError("no clips")
        self.clips = [c.float() for c in clips]

    def __len__(self) -> int:
        return len(self.clips)

    def num_samples(self, index: int) -> int:
        return int(self.clips[index].shape[-1])

    def crop(self, index: int, start: int, length: int) -> Tensor:
        clip = self.clips[index][:, start : start + length]
        return torch.nn.functional.pad(clip, (0, length - clip.shape[-1]))


class FileAudioSource:
    """Audio files read lazily through `encore.audio.io` (resampled to `sample_rate`, stereo)."""

    def __init__(self, paths: Sequence[Path], sample_rate: int) -> None:
        from encore.audio.io import probe_audio

        if not paths:
            raise ValueError("no audio files")
        self.paths = list(paths)
        self.sample_rate = sample_rate
        infos = [probe_audio(p) for p in self.paths]
        self._lengths = [round(i.num_samples * sample_rate / i.sample_rate) for i in infos]

    def __len__(self) -> int:
        return len(self.paths)

    def num_samples(self, index: int) -> int:
        return self._lengths[index]

    def crop(self, index: int, start: int, length: int) -> Tensor:
        from encore.audio.io import load_audio

        wav, _ = load_audio(
            self.paths[index],
            target_rate=self.sample_rate,
            channels=2,
            max_seconds=None,
            start_s=start / self.sample_rate,
            duration_s=length / self.sample_rate,
        )
        wav = wav[:, :length]
        return torch.nn.functional.pad(wav, (0, length - wav.shape[-1]))


def audio_files(data: str | Path) -> list[Path]:
    """Audio files of a corpus folder (mix and stem files next to each `labels.json`), a plain folder, or a
    text file with one path per line (relative to the file)."""
    path = Path(data)
    if path.is_file():
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        return [(path.parent / ln) if not Path(ln).is_absolute() else Path(ln) for ln in lines]
    if not path.is_dir():
        raise InvalidRequest("data", f"{path} is neither a folder nor a file list")
    # Unfinished corpus clips live in `*.tmp<pid>` folders until they are renamed into place: skip them.
    files = sorted(
        p
        for p in path.rglob("*")
        if p.suffix.lower() in AUDIO_SUFFIXES
        and not any(".tmp" in part for part in p.relative_to(path).parts)
    )
    if not files:
        raise InvalidRequest("data", f"no audio files under {path}")
    return files


def random_crops(source: AudioSource, batch: int, length: int, generator: torch.Generator) -> Tensor:
    """`[batch, 2, length]` crops at random clips and offsets drawn from `generator`."""
    out = []
    for _ in range(batch):
        index = int(torch.randint(len(source), (1,), generator=generator))
        room = max(0, source.num_samples(index) - length)
        start = int(torch.randint(room + 1, (1,), generator=generator))
        out.append(source.crop(index, start, length))
    return torch.stack(out)


# --------------------------------------------------------------------------- Muon on conv weights


def split_vae_parameters(vae: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(conv weights for Muon, everything else for AdamW)."""
    matrices, others = [], []
    for name, p in vae.named_parameters():
        (matrices if name.endswith(".weight") and p.ndim >= 2 else others).append(p)
    return matrices, others


class MatrixViews:
    """2-D views `[dim0, rest]` sharing storage with N-D conv weights, so Muon's in-place update is the update
    of the conv weight. `sync_grads()` copies each weight's gradient onto its view before `Muon.step()`."""

    def __init__(self, params: Sequence[nn.Parameter]) -> None:
        self.params = list(params)
        self.views = [p.detach().view(p.shape[0], -1).requires_grad_(True) for p in self.params]

    def sync_grads(self) -> None:
        for p, v in zip(self.params, self.views, strict=True):
            v.grad = None if p.grad is None else p.grad.reshape(v.shape)


# --------------------------------------------------------------------------- recipe


class VAERecipe(Recipe[VAETrainConfig]):
    """Trains `OobleckVAE` + `MultiScaleSTFTDiscriminator` (see module docstring)."""

    name = "vae"

    def __init__(self, config: VAETrainConfig, *, source: AudioSource | None = None) -> None:
        super().__init__(config)
        self.source = source

    def build(self) -> None:
        cfg = self.config
        self.vae_config = embedded.vae_config(cfg.geometry)
        # Initialisation draws from torch's global RNG; fork_rng restores the caller's state afterwards.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.vae = OobleckVAE(self.vae_config).to(self.device)
            self.disc = MultiScaleSTFTDiscriminator(
                cfg.disc_fft_sizes, self.vae_config.audio_channels, cfg.disc_channels
            ).to(self.device)
        if cfg.init_from and (Path(cfg.init_from) / "config.json").is_file():  # a finalized `vae/` folder
            from encore.pipeline.loading import load_vae

            # the weights only: a `vae/` folder need not hold a silence latent (the bundled one keeps it elsewhere)
            shipped, shipped_config = load_vae(Path(cfg.init_from), dtype=torch.float32)
            if shipped_config != self.vae_config:
                raise InvalidRequest("init_from", f"{cfg.init_from} is not the {cfg.geometry} geometry")
            self.vae.load_state_dict(shipped.state_dict())
        elif cfg.init_from:
            from safetensors.torch import load_file

            weights = Path(cfg.init_from) / "model.safetensors"
            load_module_tensors(
                {"vae": self.vae},
                {k: v for k, v in load_file(str(weights)).items() if k.startswith("vae.")},
                str(weights),
            )
        if cfg.balanced_upsampling:
            balance_upsampling_(self.vae.decoder)
        self.pitch_head: nn.Conv1d | None = None
        if cfg.latent_pitch_weight > 0:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed + 1)
                self.pitch_head = nn.Conv1d(self.vae_config.latent_channels, 12, 5, padding=2).to(self.device)
        if self.source is None:
            if not cfg.data:
                raise InvalidRequest("data", "needs a corpus folder or audio file list")
            self.source = FileAudioSource(audio_files(cfg.data), self.vae_config.sampling_rate)
        matrices, others = split_vae_parameters(self.vae)
        self.views = MatrixViews(matrices)
        self.muon = Muon(
            self.views.views,
            lr=cfg.learning_rate,
            weight_decay=cfg.weight_decay,
            adjust_lr_fn="match_rms_adamw",
        )
        head = list(self.pitch_head.parameters()) if self.pitch_head is not None else []
        self.adamw = torch.optim.AdamW(
            [*others, *head], lr=cfg.adamw_learning_rate, betas=(0.8, 0.99), weight_decay=0.0
        )
        self.disc_opt = torch.optim.AdamW(
            self.disc.parameters(), lr=cfg.disc_learning_rate, betas=(0.8, 0.99)
        )
        self.crop_samples = round(cfg.crop_seconds * self.vae_config.sampling_rate)
        self.crop_samples -= self.crop_samples % self.vae_config.hop_samples
        if self.crop_samples < self.vae_config.hop_samples:
            raise InvalidRequest("crop_seconds", "shorter than one latent frame")
        if cfg.smoothness_weight > 0 and self.crop_samples < 3 * self.vae_config.hop_samples:
            raise InvalidRequest("crop_seconds", "smoothness_weight needs crops of at least 3 latent frames")
        if (cfg.chroma_weight > 0 or cfg.latent_pitch_weight > 0) and cfg.chroma_fft_size > self.crop_samples:
            raise InvalidRequest(
                "chroma_fft_size", f"{cfg.chroma_fft_size} is longer than the {self.crop_samples}-sample crop"
            )

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        modules: dict[str, nn.Module] = {"vae": self.vae, "disc": self.disc}
        if self.pitch_head is not None:
            modules["pitch_head"] = self.pitch_head
        return modules

    def checkpoint_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"muon": self.muon, "adamw": self.adamw, "disc": self.disc_opt}

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.config
        phase = cfg.phase(step)
        assert self.source is not None
        wav = random_crops(
            self.source, cfg.batch_size, self.crop_samples, step_generator(cfg.seed, step, _STREAM_DATA)
        ).to(self.device)
        final = phase == "final"
        encoder_frozen = final and cfg.freeze_encoder_in_final_phase
        with torch.set_grad_enabled(not encoder_frozen):
            posterior = self.vae.encode(wav)
        if final:
            latents = posterior.mode()
        else:
            latents = posterior.sample(step_generator(cfg.seed, step, _STREAM_POSTERIOR))
        recon = self.vae.decode(latents)
        stft = multi_resolution_stft_loss(recon, wav, cfg.fft_sizes)
        loss = cfg.stft_weight * stft
        logs = {"stft": stft.item()}
        if cfg.mel_weight > 0:
            mel = multi_resolution_mel_loss(recon, wav, self.vae_config.sampling_rate)
            loss = loss + cfg.mel_weight * mel
            logs["mel"] = mel.item()
        if cfg.chroma_weight > 0:
            pitch = chroma_loss(recon, wav, self.vae_config.sampling_rate, cfg.chroma_fft_size)
            loss = loss + cfg.chroma_weight * pitch
            logs["chroma"] = pitch.item()
        if self.pitch_head is not None and not encoder_frozen:
            frames = posterior.mean.shape[-1]
            with torch.no_grad():
                profiles, energy = frame_pitch_profiles(wav, self.vae_config.sampling_rate,
                                                        self.vae_config.hop_samples, frames, cfg.chroma_fft_size)
            logits = self.pitch_head(posterior.mean).transpose(1, 2)
            latent_pitch = latent_pitch_loss(logits, profiles, energy)
            loss = loss + cfg.latent_pitch_weight * latent_pitch
            logs["latent_pitch"] = latent_pitch.item()
        if not final:
            kl = gaussian_kl(posterior.mean, posterior.std)
            loss = loss + cfg.kl_weight * kl
            logs["kl"] = kl.item()
            if cfg.smoothness_weight > 0:
                rough = temporal_roughness(posterior.mean)
                loss = loss + cfg.smoothness_weight * rough
                logs["roughness"] = rough.item()
        if phase != "recon":
            fake_logits, fake_feats = self.disc(recon)
            with torch.no_grad():
                _, real_feats = self.disc(wav)
            adv = generator_hinge_loss(fake_logits)
            fm = feature_matching_loss(real_feats, fake_feats)
            loss = loss + cfg.adversarial_weight * adv + cfg.feature_weight * fm
            logs.update(adv=adv.item(), feature=fm.item())
        self.muon.zero_grad(set_to_none=True)
        self.adamw.zero_grad(set_to_none=True)
        self.vae.zero_grad(set_to_none=True)
        self.disc.zero_grad(set_to_none=True)
        loss.backward()
        logs["grad_norm"] = self.clip_gradients(self.vae.parameters())
        self.views.sync_grads()
        self.muon.step()
        self.adamw.step()
        if cfg.balanced_upsampling:
            balance_upsampling_(self.vae.decoder)
        if phase != "recon":
            logs["disc"] = self._discriminator_step(wav, recon.detach())
        return {"loss": loss.item(), **logs, "phase": {"recon": 0.0, "adversarial": 1.0, "final": 2.0}[phase]}

    def _discriminator_step(self, real: Tensor, fake: Tensor) -> float:
        self.disc_opt.zero_grad(set_to_none=True)
        real_logits, _ = self.disc(real)
        fake_logits, _ = self.disc(fake)
        loss = discriminator_hinge_loss(real_logits, fake_logits)
        loss.backward()
        self.disc_opt.step()
        return loss.item()

    @torch.no_grad()
    def evaluate(self, clips: Sequence[Tensor]) -> dict[str, float]:
        """Mean MR-STFT distance and SI-SDR (dB) of clips reconstructed through the posterior mean."""
        stft, sdr = [], []
        for wav in clips:
            length = wav.shape[-1] - wav.shape[-1] % self.vae_config.hop_samples
            x = wav[None, :, :length].to(self.device)
            y = self.vae.decode(self.vae.encode(x).mode())
            stft.append(float(multi_resolution_stft_loss(y, x, self.config.fft_sizes)))
            sdr.append(float(si_sdr(y, x).mean()))
        return {"stft": sum(stft) / len(stft), "si_sdr": sum(sdr) / len(sdr)}


# --------------------------------------------------------------------------- finalize / load


@torch.no_grad()
def latent_statistics(
    vae: OobleckVAE, source: AudioSource, *, max_clips: int = 64, max_seconds: float = 30.0
) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of posterior means `[D]` over up to `max_clips` clips (first
    `max_seconds`)."""
    cfg = vae.config
    frames = []
    for index in range(min(max_clips, len(source))):
        length = min(source.num_samples(index), round(max_seconds * cfg.sampling_rate))
        length -= length % cfg.hop_samples
        if length < cfg.hop_samples:
            continue
        wav = source.crop(index, 0, length)[None].to(vae.dtype)
        frames.append(vae.encode(wav).mode()[0].transpose(0, 1).float())
    if not frames:
        raise ValueError("no clip is long enough for one latent frame")
    allf = torch.cat(frames)
    return allf.mean(dim=0), allf.std(dim=0).clamp_min(1e-4)


@torch.no_grad()
def absorb_latent_affine(vae: OobleckVAE, shift: Tensor, scale: Tensor) -> None:
    """Re-parameterises `vae` so its latents become `(z - shift) / scale`; decode(encode(x)) is unchanged.

    The encoder's mean rows (first D outputs of its last conv) are mapped affinely; the decoder's first conv
    absorbs the inverse map, exactly except within its 3-frame zero padding at the two ends of a sequence
    (a zero pad now stands for `z = shift`). The posterior std head is left as is (its noise is then expressed
    in the new units only approximately, which matters only for sampled encodes).
    """
    d = vae.config.decoder_input_channels
    conv_e = vae.encoder.conv2
    conv_e.weight[:d] /= scale[:, None, None]
    conv_e.bias[:d] = (conv_e.bias[:d] - shift) / scale
    conv_d = vae.decoder.conv1
    # decoder sees z' = (z - shift) / scale, i.e. z = z' * scale + shift
    conv_d.bias += (conv_d.weight * shift[None, :, None]).sum(dim=(1, 2))
    conv_d.weight *= scale[None, :, None]


@torch.no_grad()
def silence_latent(vae: OobleckVAE, seconds: float = SILENCE_SECONDS) -> Tensor:
    """Posterior mean of digital silence `[T, D]` (official: 600 s, tiled encode)."""
    from encore.audio.tiling import encode_tiled

    cfg = vae.config
    wav = torch.zeros(1, cfg.audio_channels, round(seconds * cfg.sampling_rate), dtype=vae.dtype)
    return encode_tiled(vae, wav).mode()[0].transpose(0, 1).float()


def _trained_vae(checkpoint: Path) -> tuple[OobleckVAE, VAEConfig]:
    """The VAE of a training checkpoint folder (eval mode) and its config."""
    from safetensors.torch import load_file

    vcfg = embedded.vae_config(_checkpoint_state(checkpoint)["config"]["geometry"])
    vae = OobleckVAE(vcfg).eval()
    load_module_tensors(
        {"vae": vae},
        {k: v for k, v in load_file(str(checkpoint / "model.safetensors")).items() if k.startswith("vae.")},
        str(checkpoint),
    )
    return vae, vcfg


def finalize_vae(
    checkpoint: str | Path, dest: str | Path, source: AudioSource, *, silence_seconds: float = SILENCE_SECONDS
) -> Path:
    """Checkpoint -> normalised, shipped-format VAE folder (`config.json`, diffusers weights, silence
    latent)."""
    from encore.pipeline.checkpoint import write_safetensors
    from encore.pipeline.saving import write_vae

    checkpoint = Path(checkpoint)
    vae, vcfg = _trained_vae(checkpoint)
    shift, scale = latent_statistics(vae, source)
    absorb_latent_affine(vae, shift, scale)
    dest = Path(dest)
    write_vae(dest, vcfg, vae.state_dict())
    write_safetensors(dest / SILENCE_NAME, {"silence_latent": silence_latent(vae, silence_seconds)})
    log.info("finalized VAE: latent shift %s scale %s", shift.tolist(), scale.tolist())
    return dest


@torch.no_grad()
def refinalize_decoder(checkpoint: str | Path, finalized: str | Path, dest: str | Path) -> Path:
    """Ships the decoder of a later `checkpoint` with the encoder, latent affine and silence latent of an earlier
    `finalize_vae` folder, without re-encoding anything.

    Valid only when the encoder did not change between the two (the last phase freezes it): latents cached with
    `finalized` then stay exact, so the decoder can keep training after the DiT's latent cache is built. The
    affine is recovered from the two encoders' mean heads, and every encoder tensor is checked to match after
    absorbing it; a changed encoder raises `CheckpointError`.
    """
    from encore.pipeline.checkpoint import read_safetensors, write_safetensors
    from encore.pipeline.saving import write_vae

    checkpoint = Path(checkpoint)
    vae, vcfg = _trained_vae(checkpoint)
    final, _, silence = load_vae_checkpoint(finalized)
    d = vcfg.decoder_input_channels
    raw_w, fin_w = vae.encoder.conv2.weight[:d].float(), final.encoder.conv2.weight[:d].float()
    scale = (raw_w.flatten(1) * fin_w.flatten(1)).sum(1) / fin_w.flatten(1).pow(2).sum(1)  # least squares
    shift = vae.encoder.conv2.bias[:d].float() - final.encoder.conv2.bias[:d].float() * scale
    absorb_latent_affine(vae, shift, scale)
    theirs = final.encoder.state_dict()
    for name, tensor in vae.encoder.state_dict().items():
        if not torch.allclose(tensor.float(), theirs[name].float(), rtol=1e-4, atol=1e-6):
            raise CheckpointError(str(checkpoint), f"encoder tensor differs from {finalized}'s; its latents "
                                  "would not match the cache, run finalize instead", tensor=f"encoder.{name}")  # fmt: skip
    vae.encoder.load_state_dict(theirs)  # bit-exact: the cached latents came from these weights
    dest = Path(dest)
    write_vae(dest, vcfg, vae.state_dict())
    write_safetensors(dest / SILENCE_NAME, {"silence_latent": silence})
    read_safetensors(dest / SILENCE_NAME)  # fail here, not at load time, on a bad write
    log.info("decoder of %s shipped with the encoder of %s", checkpoint, finalized)
    return dest


def load_vae_checkpoint(folder: str | Path) -> tuple[OobleckVAE, VAEConfig, Tensor]:
    """A `finalize_vae` folder, or a released model (anything `encore.load_pipeline` reads, e.g. `embedded`)
    -> (VAE in eval mode, config, silence latent `[T, D]`).

    A finalized folder's silence latent may also be in the official `[1, D, T]` layout (copied from a DiT folder).
    """
    from encore.pipeline import loading
    from encore.pipeline.checkpoint import read_safetensors
    from encore.pipeline.convert import silence_from_official

    folder = Path(folder)
    if not (folder / SILENCE_NAME).is_file() or loading.is_dit_dir(folder):
        try:
            paths = loading.resolve_checkpoint(folder)
        except CheckpointError as exc:
            raise CheckpointError(str(folder), f"neither a finalized VAE folder (no {SILENCE_NAME}) nor a "
                                               f"released model ({exc})") from exc  # fmt: skip
        vae, vcfg = loading.load_vae(paths.vae, dtype=torch.float32)
        return vae, vcfg, loading.load_silence(paths, vcfg.latent_channels)
    vae, vcfg = loading.load_vae(folder, dtype=torch.float32)
    silence = read_safetensors(folder / SILENCE_NAME)["silence_latent"].float()
    if silence.ndim == 3:
        try:
            silence = silence_from_official(silence, vcfg.latent_channels)
        except ValueError as exc:
            raise CheckpointError(str(folder / SILENCE_NAME), str(exc)) from exc
    if silence.ndim != 2 or silence.shape[1] != vcfg.latent_channels:
        raise CheckpointError(str(folder / SILENCE_NAME), f"silence latent must be [T, {vcfg.latent_channels}] "
                                                          f"or [1, {vcfg.latent_channels}, T], got "
                                                          f"{list(silence.shape)}")  # fmt: skip
    return vae, vcfg, silence


def _checkpoint_state(folder: Path) -> dict:
    from encore.training.checkpointing import read_checkpoint

    return read_checkpoint(folder).state


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: train (default), `finalize <checkpoint> <dest> data=<corpus>` or
    `refinalize <checkpoint> <finalized folder> <dest>`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["refinalize"]:
        if len(args) != 4:
            raise InvalidRequest("refinalize", "usage: refinalize <checkpoint> <finalized folder> <dest>")
        refinalize_decoder(args[1], args[2], args[3])
        return 0
    if args[:1] == ["finalize"]:
        if len(args) < 4 or not args[3].startswith("data="):
            raise InvalidRequest("finalize", "usage: finalize <checkpoint> <dest> data=<corpus or file list>")
        ckpt, dest, data = args[1], args[2], args[3].split("=", 1)[1]
        geometry = _checkpoint_state(Path(ckpt))["config"]["geometry"]
        rate = embedded.vae_config(geometry).sampling_rate
        finalize_vae(ckpt, dest, FileAudioSource(audio_files(data), rate))
        return 0
    return run_cli(VAETrainConfig, VAERecipe, args)


if __name__ == "__main__":
    raise SystemExit(main())
