"""encore.audio: file I/O (`io`, `tags`), output levels (`loudness`) and VAE tiling (`tiling`).

Nothing is imported here so that `encore.audio.io` stays importable without torch.
"""
