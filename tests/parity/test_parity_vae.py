"""Parity: `OobleckVAE` vs diffusers 0.42.1 `AutoencoderOobleck` at tiny size (fp32, CPU).

The reference is saved with `save_pretrained` (its own weight-norm key layout and `config.json`), folded by
`encore.pipeline.convert.fold_vae_weight_norm` and loaded strictly. Tolerance: max |ours - ref| <= 1e-5 x
max |ref| for every output.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from encore.models.vae import OobleckVAE, VAEConfig
from encore.pipeline.convert import fold_vae_weight_norm

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.parity

REL_TOL = 1e-5


def _reference(config: VAEConfig) -> torch.nn.Module:
    kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.to_dict().items() if k[0] != "_"}
    return diffusers.AutoencoderOobleck(**kwargs)


def _randomize(ref: torch.nn.Module, seed: int) -> None:
    """Every parameter random, weight-norm magnitudes included (g != ||v||), Snake away from its zero init."""
    gen = torch.Generator().manual_seed(seed)
    params = dict(ref.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            if name.endswith("weight_g"):
                v = params[name[: -len("weight_g")] + "weight_v"]
                norm = torch.linalg.vector_norm(v, dim=tuple(range(1, v.ndim)), keepdim=True)
                p.copy_(norm * (0.5 + torch.rand(p.shape, generator=gen)))
            elif name.endswith(("alpha", "beta")):
                p.copy_(0.4 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))


def _rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return (ours - ref).abs().max().item() / ref.abs().max().item()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    config = VAEConfig.tiny()
    ref = _reference(config)
    _randomize(ref, seed=0)
    folder = tmp_path_factory.mktemp("vae")
    ref.save_pretrained(folder, safe_serialization=True)
    saved = load_file(folder / "diffusion_pytorch_model.safetensors")
    assert any(k.endswith("weight_g") for k in saved)  # really the weight-norm layout
    loaded_config = VAEConfig.from_json(folder / "config.json")  # diffusers' own config.json
    assert loaded_config == config
    ours = OobleckVAE(loaded_config)
    ours.load_state_dict(fold_vae_weight_norm(saved), strict=True)
    return ours.eval(), ref.eval()


def test_encode_matches_diffusers(pair):
    ours, ref = pair
    cfg = ours.config
    wav = 0.5 * torch.randn(2, cfg.audio_channels, 12 * cfg.hop_samples + 37, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = ours.encode(wav)
        expected = ref.encode(wav).latent_dist
        sample = got.sample(torch.Generator().manual_seed(7))
        ref_sample = expected.sample(torch.Generator().manual_seed(7))
    assert got.mean.shape == expected.mean.shape == (2, cfg.latent_channels, 12)
    errors = {"mean": _rel(got.mean, expected.mean), "std": _rel(got.std, expected.std),
              "sample": _rel(sample, ref_sample)}
    print(f"VAE encode parity (max abs diff / max abs ref): {errors}")
    assert max(errors.values()) <= REL_TOL, errors


def test_decode_matches_diffusers(pair):
    ours, ref = pair
    cfg = ours.config
    latents = torch.randn(2, cfg.latent_channels, 9, generator=torch.Generator().manual_seed(2))
    wav = 0.5 * torch.randn(1, cfg.audio_channels, 6 * cfg.hop_samples, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got, expected = ours.decode(latents), ref.decode(latents).sample
        recon, ref_recon = ours(wav), ref(wav).sample
    assert got.shape == expected.shape == (2, cfg.audio_channels, 9 * cfg.hop_samples)
    errors = {"decode": _rel(got, expected), "reconstruction": _rel(recon, ref_recon)}
    print(f"VAE decode parity (max abs diff / max abs ref): {errors}")
    assert max(errors.values()) <= REL_TOL, errors


def test_full_config_parameter_count_on_meta():
    config = VAEConfig()
    with torch.device("meta"):
        ours = OobleckVAE(config)
        ref = _reference(config)
    count = sum(p.numel() for p in ours.parameters())
    ref_params = dict(ref.named_parameters())
    magnitudes = sum(p.numel() for n, p in ref_params.items() if n.endswith("weight_g"))
    assert count == sum(p.numel() for p in ref_params.values()) - magnitudes  # folding drops only `g`
    expected_names = {n.replace("weight_v", "weight") for n in ref_params if not n.endswith("weight_g")}
    assert {n for n, _ in ours.named_parameters()} == expected_names
    enc = sum(p.numel() for p in ours.encoder.parameters())
    print(f"OobleckVAE full config: {count:,} parameters (encoder {enc:,}, decoder {count - enc:,})")
