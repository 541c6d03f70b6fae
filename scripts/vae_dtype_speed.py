"""Decode time of one checkpoint's VAE in fp32 against bf16 on the CPU, on the same latents.

    python scripts/vae_dtype_speed.py [CHECKPOINT] [SECONDS]

Loads the checkpoint's VAE twice (float32 and bfloat16), decodes the same seeded latents (SECONDS of audio,
default 10) with each, and prints the relative error of the bf16 waveform and, over two rounds, the median of
six timed decodes per dtype after a warm-up (two threads). A CPU without native bf16 emulates it in oneDNN;
there the bf16 row is the slower one.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch


def main() -> None:
    from encore.pipeline.loading import load_vae, resolve_checkpoint

    paths = resolve_checkpoint(sys.argv[1] if len(sys.argv) > 1 else "embedded")
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
    torch.set_num_threads(2)
    vaes = {name: load_vae(paths.vae, dtype=dtype)[0].eval()
            for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16))}  # fmt: skip
    config = load_vae(paths.vae, dtype=torch.float32)[1]
    frames = round(seconds * config.sampling_rate / config.hop_samples)
    latents = torch.randn(1, config.decoder_input_channels, frames, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = vaes["float32"].decode(latents)
        approx = vaes["bfloat16"].decode(latents).float()
        error = float((reference - approx).norm() / reference.norm())
        print(f"{seconds:g} s of audio, {frames} latent frames: bf16 relative error {error:.4f}, "
              f"largest sample error {float((reference - approx).abs().max()):.4f}")
        for _ in range(2):
            for name, vae in vaes.items():
                times = []
                for _ in range(6):
                    start = time.perf_counter()
                    vae.decode(latents)
                    times.append(time.perf_counter() - start)
                print(f"{name}: median {statistics.median(times):.3f} s per decode")


if __name__ == "__main__":
    main()
