"""DiT pre-training recipe on the tiny geometry: loss falls, resume is bit-exact, each omni task builds the
context the inference path builds, the straight-through cover hints equal the inference tokenizer round trip,
and the latent cache round-trips through `encode_latent_cache`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers.tiny_training import finalized_tiny_vae

from encore.errors import InvalidRequest
from encore.models.acestep import AceStepModel
from encore.tasks import prompts
from encore.training import embedded
from encore.training.recipes.base import read_loss_log
from encore.training.recipes.dit import (
    CachedClip,
    DiTRecipe,
    DiTTrainConfig,
    LatentCache,
    TextStates,
    build_item,
    collate_items,
    drop_outliers,
    encode_conditions,
    encode_latent_cache,
    load_dit_checkpoint,
    straight_through_hints,
    stretch_tempo,
)

D = 8


def make_cache(num_clips: int = 3, channels: int = D) -> LatentCache:
    """Smooth per-stem patterns (learnable) with exact labels; stems keyboard + bass."""
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(2, channels, generator=g)
    clips = []
    for i in range(num_clips):
        frames = 40 + 10 * i
        t = torch.arange(frames)[:, None] / 25

        def pattern(hz: float, b: int, t: torch.Tensor = t, frames: int = frames) -> torch.Tensor:
            return torch.sin(2 * torch.pi * hz * t) * basis[b] + 0.1 * torch.randn(frames, channels, generator=g)

        stems = {"keyboard": pattern(1.0 + i, 0), "bass": pattern(0.5, 1)}
        clips.append(
            CachedClip(
                clip_id=f"c{i}",
                mix=stems["keyboard"] + stems["bass"],
                stems=stems,
                without={"keyboard": stems["bass"], "bass": stems["keyboard"]},
                labels={
                    "caption": f"piano and bass song {i}",
                    "captions": ["piano"],
                    "bpm": 100 + i,
                    "keyscale": "C major",
                    "timesignature": "4",
                    "lyrics": "[Instrumental]",
                    "language": "unknown",
                },
            )
        )
    return LatentCache(clips=clips, silence=torch.full((200, channels), -0.5), sample_rate=8000, hop_samples=320)


def _config(tmp: Path, **kw) -> DiTTrainConfig:
    base = {
        "output_dir": str(tmp),
        "geometry": "tiny",
        "text_encoder": "tiny",
        "batch_size": 4,
        "crop_frames": 40,
        "warmup_steps": 0,
        "learning_rate": 2e-3,
        "save_every_steps": 100,
        "num_threads": 1,
    }
    base.update(kw)
    return DiTTrainConfig(**base)


def test_loss_decreases(tmp_path: Path) -> None:
    recipe = DiTRecipe(_config(tmp_path, max_steps=8), cache=make_cache())
    recipe.setup()
    losses = [r["loss"] for r in recipe.train()]
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0], losses
    assert len(read_loss_log(tmp_path)) == 8


@pytest.mark.parametrize("extra", [{}, {"tempo_stretch": 0.5, "max_latent_std": 10.0}])
def test_resume_equals_uninterrupted(tmp_path: Path, extra: dict) -> None:
    cache = make_cache()
    full = DiTRecipe(
        _config(tmp_path / "full", max_steps=4, warmup_steps=2, lr_schedule="cosine", **extra), cache=cache
    )
    full.setup()
    full_rows = full.train()
    first = DiTRecipe(
        _config(tmp_path / "split", max_steps=2, warmup_steps=2, lr_schedule="cosine", **extra), cache=cache
    )
    first.setup()
    first.train()
    # max_steps is part of the cosine schedule: resume with the full run's value
    second = DiTRecipe(
        _config(tmp_path / "split", max_steps=4, warmup_steps=2, lr_schedule="cosine", **extra), cache=cache
    )
    second.setup()
    assert second.step == 2
    rest = second.train()
    assert [r["loss"] for r in rest] == [r["loss"] for r in full_rows[2:]]
    a, b = full.model.state_dict(), second.model.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    loaded = load_dit_checkpoint(max((tmp_path / "split" / "checkpoints").iterdir()))
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, b[key]), key


def test_each_task_builds_the_documented_context() -> None:
    cache = make_cache()
    clip = cache.clips[0]  # 40 frames = crop: no random offset
    cfg = DiTTrainConfig(
        output_dir="unused", geometry="tiny", crop_frames=40, meta_dropout=0.0, reference_prob=0.0
    )
    seen = {}
    for seed in range(60):
        for task_index, task in enumerate(("text2music", "repaint", "cover", "extract", "lego", "complete")):
            weights = tuple(1.0 if i == task_index else 0.0 for i in range(6))
            item = build_item(
                clip,
                cache,
                DiTTrainConfig(**{**cfg.__dict__, "task_weights": weights}),
                torch.Generator().manual_seed(seed),
            )
            seen[task] = item
    mask = {k: v.cond.chunk_mask for k, v in seen.items()}
    assert torch.equal(seen["text2music"].cond.src_latents, cache.silence[:40])
    assert bool((mask["text2music"] == 1).all()) and bool((mask["extract"] == 1).all())
    assert seen["cover"].cond.is_cover and torch.equal(seen["cover"].cond.src_latents, clip.mix)
    track = seen["extract"].cond.instruction.split()[2].lower()
    assert torch.equal(seen["extract"].target, clip.stems[track])
    assert torch.equal(seen["extract"].cond.src_latents, clip.mix)
    lego = seen["lego"]
    region = lego.cond.chunk_mask.bool()
    assert 0 < int(region.sum()) < 40
    lego_track = lego.cond.instruction.split()[2].lower()
    assert torch.equal(lego.target[region], clip.stems[lego_track][region])
    assert torch.equal(lego.target[~region], cache.silence[:40][~region])
    assert torch.equal(lego.cond.src_latents, clip.without[lego_track])  # newer upstream: source kept intact
    rep = seen["repaint"]
    hole = rep.cond.chunk_mask.bool()
    assert torch.equal(rep.cond.src_latents[~hole], clip.mix[~hole])
    assert torch.equal(rep.cond.src_latents[hole], cache.silence[:40][hole])
    assert seen["complete"].cond.instruction.startswith("Complete the input track with")
    assert seen["text2music"].caption_prompt.startswith("# Instruction\n" + prompts.TEXT2MUSIC_INSTRUCTION)
    assert "- bpm: 100\n" in seen["text2music"].caption_prompt


def test_straight_through_hints_match_inference_round_trip() -> None:
    torch.manual_seed(0)
    model = AceStepModel(embedded.dit_config("tiny", latent_channels=D))
    x = torch.randn(2, 20, D, requires_grad=True)
    hints = straight_through_hints(model, x)
    quantized, _ = model.tokenizer.tokenize(x.detach(), torch.zeros(10, D))
    expected = model.detokenizer(quantized)
    torch.testing.assert_close(hints, expected, atol=1e-5, rtol=1e-5)
    hints.sum().backward()
    assert model.tokenizer.quantizer.project_in.weight.grad is not None
    assert float(model.tokenizer.quantizer.project_in.weight.grad.abs().sum()) > 0


def test_batched_condition_encoding_equals_condition_encoder() -> None:
    torch.manual_seed(0)
    model = AceStepModel(embedded.dit_config("tiny", latent_channels=D))
    encoder, tokenizer = embedded.tiny_sentence_encoder(24)
    texts = TextStates(encoder, tokenizer, 16, torch.device("cpu"))
    silence = torch.randn(100, D)
    captions = ["a short caption", "a much longer caption with more words in it"]
    text, text_mask = texts("caption", captions)
    lyric, lyric_mask = texts("lyric", ["[Instrumental]", "la la"])
    packed = encode_conditions(model, text, text_mask, lyric, lyric_mask, [None, None], silence)
    for i in range(2):
        n_t, n_l = int(text_mask[i].sum()), int(lyric_mask[i].sum())
        single, _ = model.encoder(
            text[i : i + 1, :n_t],
            text_mask[i : i + 1, :n_t],
            lyric[i : i + 1, :n_l],
            lyric_mask[i : i + 1, :n_l],
            silence[None, : model.config.timbre_fix_frame],
            torch.zeros(1, dtype=torch.long),
        )
        torch.testing.assert_close(packed[i, : single.shape[1]], single[0], atol=1e-5, rtol=1e-5)


def test_stem_tracks_pick_a_stable_subset() -> None:
    from encore.training.recipes.dit import stem_tracks

    ids = [f"clip_{i:06d}" for i in range(400)]
    picked = [stem_tracks(c, ["bass", "drums", "keyboard"], 0.3, 1) for c in ids]
    share = sum(bool(p) for p in picked) / len(ids)
    assert 0.2 < share < 0.4 and all(len(p) in (0, 1) for p in picked)
    assert picked == [
        stem_tracks(c, ["keyboard", "drums", "bass"], 0.3, 1) for c in ids
    ]  # order-free, stable
    assert stem_tracks("x", ["bass"], 1.0, 1) == [] and len(stem_tracks("x", ["a", "b"], 1.0, 5)) == 2


def test_latent_cache_round_trip(tmp_path: Path) -> None:
    rate = 8000
    t = np.arange(rate) / rate
    for i in range(2):
        folder = tmp_path / "corpus" / f"clip_{i:06d}"
        folder.mkdir(parents=True)
        stems = {
            "keyboard": 0.3 * np.sin(2 * np.pi * 220 * (i + 1) * t),
            "bass": 0.3 * np.sin(2 * np.pi * 55 * t),
        }
        for name, x in stems.items():
            sf.write(folder / f"{name}.flac", np.stack([x, x], axis=1).astype(np.float32), rate)
        labels = {
            "clip_id": folder.name,
            "stems": {k: f"{k}.flac" for k in stems},
            "mix": "",
            "bpm": 90,
            "keyscale": "A minor",
            "timesignature": "3",
            "caption": "x",
            "captions": [],
            "duration": 1.0,
        }
        (folder / "labels.json").write_text(json.dumps(labels), encoding="utf-8")
    vae_dir = finalized_tiny_vae(tmp_path, torch.randn(2, rate) * 0.1, silence_seconds=4.0)
    out = encode_latent_cache(
        tmp_path / "corpus", vae_dir, tmp_path / "cache", stem_fraction=1.0, stems_per_clip=2
    )
    encode_latent_cache(tmp_path / "corpus", vae_dir, tmp_path / "cache")  # resumed: nothing added
    cache = LatentCache.load(out)
    assert [c.clip_id for c in cache.clips] == ["clip_000000", "clip_000001"]
    clip = cache.clips[1]
    assert (
        clip.mix.shape == (25, 8)
        and set(clip.stems) == {"bass", "keyboard"}
        and set(clip.without) == {"bass", "keyboard"}
    )
    assert clip.labels["keyscale"] == "A minor" and cache.silence.shape == (100, 8)
    assert (cache.sample_rate, cache.hop_samples) == (8000, 320)
    # A subset: one clip, then the same cache resumed with a larger budget adds only the other one.
    sub = encode_latent_cache(tmp_path / "corpus", vae_dir, tmp_path / "sub", stem_fraction=0.0, max_clips=1)
    first = [c.clip_id for c in LatentCache.load(sub).clips]
    encode_latent_cache(tmp_path / "corpus", vae_dir, tmp_path / "sub", stem_fraction=0.0, max_clips=2)
    both = [c.clip_id for c in LatentCache.load(sub).clips]
    assert len(first) == 1 and sorted(both) == ["clip_000000", "clip_000001"]
    full = {c.clip_id: c.mix for c in cache.clips}
    assert torch.equal(LatentCache.load(sub).clips[both.index(first[0])].mix, full[first[0]])


def test_stretch_tempo_resamples_every_latent_and_rewrites_the_labels() -> None:
    ramp = torch.arange(40.0)[:, None].expand(40, D)
    clip = CachedClip(
        clip_id="c",
        mix=ramp,
        stems={"bass": ramp + 100},
        without={"bass": ramp + 200},
        labels={"bpm": 100, "caption": "steady folk, 100 BPM", "captions": ["folk, 100 bpm", "folk"]},
    )
    faster = stretch_tempo(clip, 130)
    assert faster.num_frames == 31 and faster.labels["bpm"] == 130
    index = faster.mix[:, 0]
    assert torch.all(index[1:] > index[:-1]) and index[-1] == 39  # frames dropped, order kept, end reached
    assert torch.equal(faster.stems["bass"], faster.mix + 100) and torch.equal(faster.without["bass"], faster.mix + 200)
    assert faster.labels["caption"] == "lively folk, 130 BPM"  # the tempo word follows the new bin
    assert faster.labels["captions"] == ["folk, 130 bpm", "folk"]
    slower = stretch_tempo(clip, 80)
    assert slower.num_frames == 50
    steps = slower.mix[1:, 0] - slower.mix[:-1, 0]
    assert set(steps.tolist()) == {0.0, 1.0}  # frames repeated, never blended
    assert clip.labels["bpm"] == 100 and clip.num_frames == 40  # the cached clip is untouched


def test_tempo_augmentation_keeps_metas_and_caption_in_step() -> None:
    cache = make_cache()
    clip = dataclasses.replace(cache.clips[0], labels={**cache.clips[0].labels, "caption": "folk, 100 BPM",
                                                       "captions": []})  # fmt: skip
    cfg = DiTTrainConfig(output_dir="unused", geometry="tiny", text_encoder="tiny", crop_frames=40,
                         tempo_stretch=1.0, tempo_stretch_max=1.25, meta_dropout=0.0)  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(24):
        item = build_item(clip, cache, cfg, gen)
        bpm = int(item.caption_prompt.split("- bpm: ")[1].split()[0])
        assert 80 <= bpm <= 125 and f"folk, {bpm} BPM" in item.caption_prompt
        seen.add(bpm)
    assert len(seen) > 5  # re-timed to many tempos, not just the label's 100
    plain = DiTTrainConfig(output_dir="unused", geometry="tiny", text_encoder="tiny", crop_frames=40,
                           meta_dropout=0.0)  # fmt: skip
    item = build_item(clip, cache, plain, torch.Generator().manual_seed(0))
    assert "- bpm: 100" in item.caption_prompt and "folk, 100 BPM" in item.caption_prompt


def test_drop_outliers_removes_only_blown_up_clips() -> None:
    cache = make_cache()
    loud = dataclasses.replace(cache.clips[1], mix=cache.clips[1].mix * 50)
    cache = dataclasses.replace(cache, clips=[cache.clips[0], loud, cache.clips[2]])
    kept = drop_outliers(cache, 5.0)
    assert [c.clip_id for c in kept.clips] == ["c0", "c2"]
    assert drop_outliers(cache, None) is cache
    with pytest.raises(InvalidRequest, match="max_latent_std"):
        drop_outliers(cache, 1e-6)


def test_text_budgets_match_the_pipeline() -> None:
    # A lyric the pipeline conditions on must never be longer than the ones training encoded.
    from encore.data import preprocess
    from encore.pipeline import pipeline
    from encore.training.recipes import dit

    assert dit.CAPTION_MAX_TOKENS == pipeline.CAPTION_MAX_TOKENS == preprocess.CAPTION_MAX_TOKENS
    assert dit.LYRIC_MAX_TOKENS == pipeline.LYRIC_MAX_TOKENS == preprocess.LYRICS_MAX_TOKENS


def test_the_hint_free_context_swaps_only_the_hints_for_silence() -> None:
    """`Batch.hint_free_context`: a hinted text2music item gets the silence context it would have had without
    hints (same chunk mask); unhinted and other-task items keep theirs."""
    cache = make_cache()
    clip = cache.clips[2]
    cfg = DiTTrainConfig(output_dir="unused", geometry="tiny", crop_frames=40, beat_hint_prob=0.5,
                         task_weights=(0.5, 0.0, 0.5, 0.0, 0.0, 0.0))  # fmt: skip
    items = [build_item(clip, cache, cfg, torch.Generator().manual_seed(seed)) for seed in range(12)]
    hinted = [it.cond.src_is_hints for it in items]
    assert any(hinted) and not all(hinted) and any(it.task == "cover" for it in items)
    model = AceStepModel(embedded.dit_config("tiny", latent_channels=D))
    encoder, tokenizer = embedded.tiny_sentence_encoder(24)
    texts = TextStates(encoder, tokenizer, 16, torch.device("cpu"))
    with torch.no_grad():
        batch = collate_items(model, items, texts, cache.silence, torch.device("cpu"))
    free = batch.hint_free_context
    torch.testing.assert_close(free[..., D:], batch.context[..., D:], rtol=0, atol=0)
    for i, it in enumerate(items):
        if hinted[i]:
            assert torch.equal(free[i, :, :D], cache.silence[:40])
            assert not torch.equal(batch.context[i, :, :D], cache.silence[:40])
        else:
            assert torch.equal(free[i], batch.context[i])


def test_beat_hints_replace_the_silence_context_of_text2music_items(tmp_path: Path) -> None:
    from encore.tasks.beat_hints import beat_hints

    cache = make_cache()
    clip = cache.clips[2]  # 60 frames: a 40-frame crop starts at a random offset
    only_t2m = (1.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    cfg = DiTTrainConfig(output_dir="unused", geometry="tiny", crop_frames=40, task_weights=only_t2m,
                         beat_hint_prob=1.0)  # fmt: skip
    offsets = set()
    for seed in range(12):
        item = build_item(clip, cache, cfg, torch.Generator().manual_seed(seed))
        cond = item.cond
        assert cond.is_cover and cond.src_is_hints and cond.instruction == prompts.COVER_INSTRUCTION
        # Which crop was drawn: the target is the mix from some offset; the hints carry that offset's phase.
        start = next(s for s in range(21) if torch.equal(item.target, clip.mix[s : s + 40]))
        offsets.add(start)
        expected = beat_hints(cache.silence, 102.0, num_frames=40, sample_rate=8000, hop_samples=320,
                              offset_frames=start)  # fmt: skip
        assert torch.equal(cond.src_latents, expected)
    assert len(offsets) > 1
    # Other tasks and prob 0 are untouched, and only a hinted run flags the model config.
    plain = build_item(clip, cache, dataclasses.replace(cfg, beat_hint_prob=0.0), torch.Generator().manual_seed(0))
    assert not plain.cond.is_cover and torch.equal(plain.cond.src_latents, cache.silence[:40])
    cover = build_item(clip, cache, dataclasses.replace(cfg, task_weights=(0, 0, 1.0, 0, 0, 0)),
                       torch.Generator().manual_seed(0))  # fmt: skip
    assert not cover.cond.src_is_hints
    recipe = DiTRecipe(_config(tmp_path, max_steps=2, beat_hint_prob=0.5), cache=cache)
    recipe.setup()
    recipe.train()
    assert load_dit_checkpoint(max((tmp_path / "checkpoints").iterdir())).config.beat_hints
    with pytest.raises(InvalidRequest, match="beat_hint_prob"):
        _config(tmp_path, beat_hint_prob=1.5)


def _assert_hinted(cache: LatentCache, *, key_hint_prob: float = 0.0, instrument_hint_prob: float = 0.0,
                   **hint_kw) -> DiTTrainConfig:
    """Text2music items of clip 2 (bpm 102) always hinted: their context equals `beat_hints(**hint_kw)` at the
    item's crop offset. Returns the config."""
    from encore.tasks.beat_hints import beat_hints

    clip = cache.clips[2]
    cfg = DiTTrainConfig(output_dir="unused", geometry="tiny", crop_frames=40, task_weights=(1.0, 0, 0, 0, 0, 0),
                         beat_hint_prob=1.0, key_hint_prob=key_hint_prob,
                         instrument_hint_prob=instrument_hint_prob)  # fmt: skip
    for seed in range(4):
        item = build_item(clip, cache, cfg, torch.Generator().manual_seed(seed))
        start = next(s for s in range(21) if torch.equal(item.target, clip.mix[s : s + 40]))
        expected = beat_hints(cache.silence, 102.0, num_frames=40, sample_rate=8000, hop_samples=320,
                              offset_frames=start, **hint_kw)  # fmt: skip
        assert torch.equal(item.cond.src_latents, expected)
    return cfg


def test_key_hints_add_the_clip_key_to_its_beat_hints(tmp_path: Path) -> None:
    from encore.tasks.beat_hints import beat_hints

    cache = make_cache()
    clip = cache.clips[2]
    cfg = _assert_hinted(cache, key_hint_prob=1.0, keyscale=clip.labels["keyscale"])
    # Half the hinted items carry the key, the rest plain beat hints; the draw never touches the beat itself.
    half = dataclasses.replace(cfg, key_hint_prob=0.5)
    keyed = 0
    for seed in range(40):
        item = build_item(clip, cache, half, torch.Generator().manual_seed(seed))
        start = next(s for s in range(21) if torch.equal(item.target, clip.mix[s : s + 40]))
        plain = beat_hints(cache.silence, 102.0, num_frames=40, sample_rate=8000, hop_samples=320,
                           offset_frames=start)  # fmt: skip
        keyed += not torch.equal(item.cond.src_latents, plain)
    assert 8 <= keyed <= 32
    recipe = DiTRecipe(_config(tmp_path, max_steps=1, beat_hint_prob=0.5, key_hint_prob=0.5), cache=cache)
    recipe.setup()
    recipe.train()
    config = load_dit_checkpoint(max((tmp_path / "checkpoints").iterdir())).config
    assert config.beat_hints and config.key_hints
    with pytest.raises(InvalidRequest, match="key_hint_prob"):
        _config(tmp_path, key_hint_prob=0.5)  # key hints ride on beat hints


def test_instrument_hints_add_the_tracks_the_primary_caption_names(tmp_path: Path) -> None:
    cache = make_cache(channels=16)
    # clip 2 is captioned "piano and bass song 2"; its other caption, "piano", is not read
    _assert_hinted(cache, instrument_hint_prob=1.0, tracks=("keyboard", "bass"))
    recipe = DiTRecipe(_config(tmp_path, max_steps=1, beat_hint_prob=0.5, instrument_hint_prob=0.5), cache=cache)
    recipe.setup()
    recipe.train()
    assert load_dit_checkpoint(max((tmp_path / "checkpoints").iterdir())).config.instrument_hints
    with pytest.raises(InvalidRequest, match="instrument_hint_prob"):
        _config(tmp_path, instrument_hint_prob=0.5)  # rides on beat hints too
    narrow = DiTRecipe(_config(tmp_path / "narrow", beat_hint_prob=0.5, instrument_hint_prob=0.5), cache=make_cache())
    with pytest.raises(InvalidRequest, match="16 latent channels"):
        narrow.setup()
