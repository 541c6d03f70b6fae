"""Preprocessing: cached conditions equal what the pipeline feeds at inference; stale caches are detected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from encore.data.dataset_builder import Manifest
from encore.data.preprocess import (
    PlannerListener,
    checkpoint_identity,
    encode_condition,
    fresh_latents,
    text2music_context,
    training_prompts,
)
from encore.tasks.prompts import TEXT2MUSIC_INSTRUCTION
from encore.training.data import LatentDataset


def test_cache_matches_inference_conditioning(tiny_components, tiny_dataset) -> None:
    from encore.pipeline.pipeline import Pipeline
    from encore.pipeline.request import TextInputs

    manifest_path, index = tiny_dataset
    manifest = Manifest.load(manifest_path)
    sample = manifest.samples[1]
    cached = LatentDataset(index)[1]
    assert cached.sample_id == sample.id
    caption = manifest.caption_for(sample)
    assert caption == "tinystyle, tiny test song number 1"
    pipe = Pipeline(tiny_components)
    text = TextInputs(caption=caption, lyrics=str(sample.value("lyrics")), language="unknown",
                      bpm=sample.value("bpm"), keyscale=sample.value("keyscale"), duration_s=sample.duration_s)
    assert pipe.prompt_texts(text, TEXT2MUSIC_INSTRUCTION, sample.duration_s) == training_prompts(sample, caption)
    timbre = pipe.silence[: tiny_components.config.timbre_fix_frame][None]
    with torch.no_grad():
        expected = pipe.encode_condition(text, TEXT2MUSIC_INSTRUCTION, sample.duration_s, timbre)[0]
    assert torch.equal(cached.encoder_hidden_states, expected)
    assert torch.equal(encode_condition(tiny_components, *training_prompts(sample, caption)), expected)
    frames = cached.num_frames
    assert frames == int(sample.duration_s * 25)  # 25 latent frames per second
    silence = tiny_components.silence_latent[:frames]
    assert torch.equal(cached.context_latents, torch.cat([silence, torch.ones(frames, 64)], dim=-1))
    assert torch.equal(text2music_context(tiny_components, frames), cached.context_latents)


def test_edited_manifest_makes_the_cache_stale(tiny_components, tiny_dataset, tmp_path: Path) -> None:
    manifest_path, _ = tiny_dataset
    ident = checkpoint_identity(tiny_components.paths)
    assert fresh_latents(manifest_path, ident) is not None
    assert fresh_latents(manifest_path, "another checkpoint") is None
    edited = tmp_path / "edited.json"
    data = json.loads(manifest_path.read_text())
    data["root"] = str(manifest_path.parent / data["root"])
    data["latents"] = str(manifest_path.parent / data["latents"])
    edited.write_text(json.dumps(data))
    assert fresh_latents(edited, ident) is not None
    data["samples"][0]["labels"]["caption"]["value"] = "a different caption"
    edited.write_text(json.dumps(data))
    assert fresh_latents(edited, ident) is None


@pytest.mark.slow
def test_planner_listener_labels_a_song(tiny_components, tiny_dataset) -> None:
    from encore.pipeline.random_planner import random_planner

    manifest_path, _ = tiny_dataset
    manifest = Manifest.load(manifest_path)
    song = manifest.root_path(manifest_path) / manifest.samples[0].path
    listener = PlannerListener(tiny_components, random_planner(seed=0), seed=0)
    assert len(listener.codes(song)) == 10  # 2 s at 5 codes per second
    labels = listener(song)
    assert {"caption", "bpm", "keyscale", "timesignature"} <= set(labels)
    assert all(lab.source == "planner" and lab.confidence == 0.6 for lab in labels.values())
    assert 30 <= labels["bpm"].value <= 300 and "\u266f" not in labels["keyscale"].value
