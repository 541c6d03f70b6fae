"""A complete, deterministic, random-weight checkpoint tree for tests and the demo (no download needed).

`write_random_checkpoint(dest)` writes the official layout (DiT folder in official keys with both
silence-latent files, `vae/` with weight-norm pairs, a tiny `Qwen3-Embedding-0.6B/` with an offline
byte-level BPE tokenizer) or the diffusers layout. Weights come from one seeded `torch.Generator`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from encore.models.config import AceStepConfig
from encore.pipeline import convert
from encore.pipeline.checkpoint import parameters_on_meta
from encore.pipeline.presets import TEXT_ENCODER_DIR, VAE_DIR
from encore.pipeline.saving import (
    write_diffusers_dit,
    write_json,
    write_model_index,
    write_official_dit,
    write_text_encoder,
    write_vae,
)

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import Qwen3Config

    from encore.models.vae import VAEConfig

DEFAULT_DIT_DIR = "acestep-v15-turbo"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# A handful of merges so the BPE is not purely byte-level; fixed, so the vocabulary is deterministic.
_MERGES = (("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n"), ("Ġ", "s"))


def build_text_tokenizer() -> Tokenizer:
    """A tiny Qwen-style tokenizer: byte-level BPE, Qwen specials, `<|endoftext|>` appended to every text.

    Built in memory from a fixed vocabulary (no training), so it is deterministic. 262 ids.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for a, b in _MERGES:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=list(_MERGES), fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL_TOKENS])
    eot = tok.token_to_id("<|endoftext|>")
    # Qwen3-Embedding's tokenizer appends <|endoftext|> to every sequence.
    tok.post_processor = processors.TemplateProcessing(
        single="$A <|endoftext|>",
        pair="$A <|endoftext|> $B:1 <|endoftext|>:1",
        special_tokens=[("<|endoftext|>", eot)],
    )
    return tok


def write_text_tokenizer(folder: str | Path) -> Path:
    """Writes `tokenizer.json` + a Qwen3-Embedding-style `tokenizer_config.json` (class `Qwen2Tokenizer`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    build_text_tokenizer().save(str(folder / "tokenizer.json"))
    write_json(
        folder / "tokenizer_config.json",
        {
            "tokenizer_class": "Qwen2Tokenizer",
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "model_max_length": 32768,
            "padding_side": "right",
            "clean_up_tokenization_spaces": False,
        },
    )
    return folder


def tiny_text_encoder_config(hidden_size: int, vocab_size: int) -> Qwen3Config:
    """A 2-layer Qwen3 config of width `hidden_size` (must equal the DiT's `text_hidden_dim`)."""
    from transformers import Qwen3Config

    heads = 2 if hidden_size % 2 == 0 else 1
    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=1,
        head_dim=max(2, (hidden_size // heads) // 2 * 2),
        max_position_embeddings=4096,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        architectures=["Qwen3Model"],
    )


def random_state(shapes: Mapping[str, torch.Size], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random float32 tensors for `shapes`, drawn in sorted key order from `generator`.

    Scales keep activations O(1): norm weights ~1, matrices ~1/sqrt(fan_in), biases and embeddings small.
    """
    out: dict[str, torch.Tensor] = {}
    for key in sorted(shapes):
        shape = tuple(shapes[key])
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        leaf = key.rsplit(".", 1)[-1]
        if len(shape) == 1 and "norm" in key:
            value = 1.0 + 0.1 * noise
        elif leaf in ("bias", "alpha", "beta"):
            value = 0.1 * noise
        elif "scale_shift_table" in key:
            value = noise / math.sqrt(shape[-1])
        elif len(shape) >= 2 and leaf == "weight":
            value = noise / math.sqrt(math.prod(shape[1:]))
        else:  # null condition, special tokens
            value = 0.5 * noise
        out[key] = value
    return out


def _shapes(module: torch.nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in module.state_dict().items()}


def write_random_checkpoint(
    dest: str | Path,
    *,
    config: AceStepConfig | None = None,
    vae_config: VAEConfig | None = None,
    seed: int = 0,
    layout: Literal["official", "diffusers"] = "official",
    silence_frames: int = 15000,
    dit_dir: str = DEFAULT_DIT_DIR,
) -> Path:
    """Writes a complete random checkpoint tree.

    Args:
        dest: Official: the checkpoint root (gets `<dit_dir>/`, `vae/`, `Qwen3-Embedding-0.6B/`).
            Diffusers: the pipeline folder.
        config: DiT geometry (default `AceStepConfig.tiny()`).
        vae_config: VAE geometry (default `VAEConfig.tiny()`).
        seed: Seeds the one generator every weight is drawn from (global RNG untouched).
        layout: `"official"` or `"diffusers"`.
        silence_frames: Length T of the silence latent (official files hold 15000 = 600 s).
        dit_dir: DiT folder name in the official layout.

    Returns:
        The folder to pass to `load_components`: the DiT folder (official) or `dest` (diffusers).
    """
    from transformers import Qwen3Model

    from encore.models.acestep import AceStepModel
    from encore.models.vae import OobleckVAE, VAEConfig

    config = config if config is not None else AceStepConfig.tiny()
    vae_config = vae_config if vae_config is not None else VAEConfig.tiny()
    gen = torch.Generator().manual_seed(seed)
    with parameters_on_meta():
        dit_shapes = _shapes(AceStepModel(config))
        vae_shapes = _shapes(OobleckVAE(vae_config))
    official = convert.encore_to_official(random_state(dit_shapes, gen))
    vae_sd = random_state(vae_shapes, gen)
    silence = 0.5 * torch.randn(silence_frames, config.audio_acoustic_hidden_dim, generator=gen)
    text_config = tiny_text_encoder_config(config.text_hidden_dim, build_text_tokenizer().get_vocab_size())
    with parameters_on_meta():
        text_sd = random_state(_shapes(Qwen3Model(text_config)), gen)
    root = Path(dest)
    if layout == "diffusers":
        write_diffusers_dit(root, config, official, silence)
        write_vae(root / "vae", vae_config, vae_sd)
        write_text_encoder(root / "text_encoder", text_config, text_sd, None)
        write_text_tokenizer(root / "tokenizer")
        write_model_index(root, "Qwen2Tokenizer")
        return root
    if layout != "official":
        raise ValueError(f"layout must be 'official' or 'diffusers', got {layout!r}")
    dit = write_official_dit(root / dit_dir, config, official, silence)
    write_vae(root / VAE_DIR, vae_config, vae_sd)
    write_text_encoder(root / TEXT_ENCODER_DIR, text_config, text_sd, None)
    write_text_tokenizer(root / TEXT_ENCODER_DIR)
    return dit
