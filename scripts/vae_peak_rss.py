"""Peak RSS of one VAE decode (250 latent frames = 10 s), Encore vs diffusers, same weights.

    python scripts/vae_peak_rss.py VAE_FOLDER encore
    python scripts/vae_peak_rss.py VAE_FOLDER diffusers

VAE_FOLDER is a `vae/` folder of an official-layout checkpoint (e.g. the one `python -m encore.bench` writes).
Run each side in its own process: peak RSS is per process.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from encore.bench import status_mib


def main() -> None:
    folder, side = Path(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(2)
    z = torch.randn(1, 64, 250, generator=torch.Generator().manual_seed(0))
    if side == "encore":
        from encore.pipeline.loading import load_vae

        vae, _ = load_vae(folder, dtype=torch.float32)
        decode = vae.decode
    else:
        from diffusers import AutoencoderOobleck

        model = AutoencoderOobleck.from_pretrained(str(folder)).eval()

        def decode(latents: torch.Tensor) -> torch.Tensor:
            return model.decode(latents).sample

    loaded = status_mib("VmRSS")
    with torch.inference_mode():
        decode(z)
    print(f"{side}: RSS after loading {loaded:.0f} MiB, peak after one decode {status_mib('VmHWM'):.0f} MiB")


if __name__ == "__main__":
    main()
