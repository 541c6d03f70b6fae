"""Turbo distillation on the tiny geometry: the critic's flow loss falls, the DMD/adversarial student update
runs with shifts from {1, 2, 3}, resume is bit-exact, and the student loads as a turbo DiT."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from encore.training.objectives import draw_flow, flow_matching_loss, item_generators
from encore.training.recipes.base import step_generator
from encore.training.recipes.distill import _STREAM_ANCHOR, _STREAM_BATCH, DistillConfig, DistillRecipe
from encore.training.recipes.dit import (
    CachedClip,
    DiTRecipe,
    DiTTrainConfig,
    LatentCache,
    load_dit_checkpoint,
)

D = 8


def _cache() -> LatentCache:
    g = torch.Generator().manual_seed(1)
    clips = []
    for i in range(3):
        t = torch.arange(40)[:, None] / 25
        keys = torch.sin(2 * torch.pi * (1 + i) * t) * torch.randn(D, generator=g)
        bass = torch.sin(torch.pi * t) * torch.randn(D, generator=g)
        clips.append(
            CachedClip(
                clip_id=f"c{i}",
                mix=keys + bass,
                stems={"keyboard": keys, "bass": bass},
                without={"keyboard": bass, "bass": keys},
                labels={"caption": f"song {i}", "bpm": 90 + i, "keyscale": "D minor"},
            )
        )
    return LatentCache(clips=clips, silence=torch.full((100, D), -0.3), sample_rate=8000, hop_samples=320)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    recipe = DiTRecipe(
        DiTTrainConfig(
            output_dir=str(out),
            geometry="tiny",
            text_encoder="tiny",
            batch_size=4,
            crop_frames=40,
            max_steps=3,
            warmup_steps=0,
            learning_rate=2e-3,
            num_threads=1,
        ),
        cache=_cache(),
    )
    recipe.setup()
    recipe.train()
    return max((out / "checkpoints").iterdir())


def _config(tmp: Path, teacher: Path, **kw) -> DistillConfig:
    base = {
        "output_dir": str(tmp),
        "teacher": str(teacher),
        "text_encoder": "tiny",
        "batch_size": 4,
        "crop_frames": 40,
        "learning_rate": 1e-4,
        "critic_learning_rate": 1e-3,
        "save_every_steps": 100,
        "num_threads": 1,
    }
    base.update(kw)
    return DistillConfig(**base)


def test_critic_loss_decreases_and_only_the_student_dit_trains(tmp_path: Path, teacher: Path) -> None:
    recipe = DistillRecipe(_config(tmp_path, teacher, max_steps=6), cache=_cache())
    recipe.setup()
    before = {k: v.clone() for k, v in recipe.student.state_dict().items()}
    rows = recipe.train()
    # Each step draws fresh student samples and noise levels, so the critic's loss across steps is dominated
    # by
    # that noise at this size; what must fall is its loss on the draw it is being fitted to.
    assert all(r["critic_after"] < r["critic"] for r in rows), rows
    assert all(r["dmd"] > 0 and r["disc"] > 0 for r in rows)
    metrics = recipe.evaluate()
    assert metrics["dmd_gap"] > 0 and metrics["critic"] > 0
    assert {r["shift"] for r in rows} <= {1.0, 2.0, 3.0}
    after = recipe.student.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("decoder.") for k in changed)  # only the student DiT trains
    for key, value in recipe.teacher.state_dict().items():  # the teacher is frozen
        assert torch.equal(value, load_dit_checkpoint(teacher).state_dict()[key]), key


@pytest.mark.parametrize("extra", [{}, {"tempo_stretch": 0.5, "max_latent_std": 10.0}])
def test_resume_equals_uninterrupted_and_student_is_turbo(tmp_path: Path, teacher: Path, extra: dict) -> None:
    full = DistillRecipe(_config(tmp_path / "full", teacher, max_steps=3, **extra), cache=_cache())
    full.setup()
    full_rows = full.train()
    assert full.data_config.tempo_stretch == extra.get("tempo_stretch", 0.0)
    first = DistillRecipe(_config(tmp_path / "split", teacher, max_steps=2, **extra), cache=_cache())
    first.setup()
    first.train()
    second = DistillRecipe(_config(tmp_path / "split", teacher, max_steps=3, **extra), cache=_cache())
    second.setup()
    assert second.step == 2
    rest = second.train()
    assert rest[0]["loss"] == full_rows[-1]["loss"]
    for name in ("student", "critic", "disc"):
        a = getattr(full, name).state_dict()
        b = getattr(second, name).state_dict()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}.{key}"
    student = load_dit_checkpoint(max((tmp_path / "split" / "checkpoints").iterdir()))
    assert student.config.is_turbo and student.config.model_version == "turbo"
    for key, value in student.state_dict().items():
        assert torch.equal(value, second.student.state_dict()[key]), key


def test_ema_student_averages_resumes_and_is_what_loads(tmp_path: Path, teacher: Path) -> None:
    decay = 0.5
    full = DistillRecipe(_config(tmp_path / "full", teacher, max_steps=3, ema_decay=decay), cache=_cache())
    full.setup()
    start = {k: v.clone() for k, v in full.student.decoder.state_dict().items()}
    trajectory = [start]
    original_step = full.student_opt.step

    def step_and_record(*args, **kwargs):  # the student's weights after each optimizer step
        out = original_step(*args, **kwargs)
        trajectory.append({k: v.clone() for k, v in full.student.decoder.state_dict().items()})
        return out

    full.student_opt.step = step_and_record
    full.train()
    # avg_n = decay * avg_{n-1} + (1 - decay) * w_n, from avg_0 = the teacher's weights
    expected = start
    for weights in trajectory[1:]:
        expected = {k: decay * expected[k] + (1 - decay) * weights[k] for k in expected}
    ema = full.student_ema.decoder.state_dict()
    moved = [k for k in ema if not torch.equal(trajectory[-1][k], start[k])]
    assert moved
    for key in moved:
        torch.testing.assert_close(ema[key], expected[key], rtol=1e-5, atol=1e-6)
        assert not torch.equal(ema[key], full.student.decoder.state_dict()[key]), key

    first = DistillRecipe(_config(tmp_path / "split", teacher, max_steps=2, ema_decay=decay), cache=_cache())
    first.setup()
    first.train()
    second = DistillRecipe(_config(tmp_path / "split", teacher, max_steps=3, ema_decay=decay), cache=_cache())
    second.setup()
    second.train()
    for key, value in full.student_ema.state_dict().items():
        assert torch.equal(value, second.student_ema.state_dict()[key]), key
    loaded = load_dit_checkpoint(max((tmp_path / "split" / "checkpoints").iterdir()))
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, second.student_ema.state_dict()[key]), key


def test_config_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shifts"):
        DistillConfig(output_dir=str(tmp_path), shifts=(1.5,))
    with pytest.raises(ValueError, match="ema_decay"):
        DistillConfig(output_dir=str(tmp_path), ema_decay=1.0)
    with pytest.raises(ValueError, match="flow_weight"):
        DistillConfig(output_dir=str(tmp_path), flow_weight=-1.0)
    with pytest.raises(ValueError, match="dmd_min_t"):
        DistillConfig(output_dir=str(tmp_path), dmd_min_t=1.0)


def test_dmd_min_t_maps_the_same_draw_above_it(tmp_path: Path, teacher: Path) -> None:
    rows = {}
    for min_t in (0.0, 0.6):
        recipe = DistillRecipe(_config(tmp_path / str(min_t), teacher, max_steps=1, dmd_min_t=min_t), cache=_cache())
        recipe.setup()
        rows[min_t] = recipe.train_step(3)
    assert rows[0.6]["dmd_t"] == pytest.approx(0.6 + 0.4 * rows[0.0]["dmd_t"], rel=1e-5)
    assert rows[0.6]["dmd"] != rows[0.0]["dmd"]


def test_flow_anchor_is_the_students_flow_loss_on_the_real_batch(tmp_path: Path, teacher: Path) -> None:
    recipe = DistillRecipe(_config(tmp_path, teacher, max_steps=1, flow_weight=0.5), cache=_cache())
    recipe.setup()
    cfg = recipe.config
    x0, states, context, mask, _ = recipe._batch(step_generator(cfg.seed, 0, _STREAM_BATCH))
    draw = draw_flow(item_generators(cfg.seed, 0, range(x0.shape[0]), _STREAM_ANCHOR), x0.shape[1], x0.shape[2],
                     cfg_dropout=0.0)  # fmt: skip
    with torch.no_grad():
        expected = flow_matching_loss(
            recipe.student.decoder, x0, context, states, recipe.teacher.null_condition_emb, draw, mask
        ).mean()
    row = recipe.train_step(0)
    assert row["flow"] == pytest.approx(expected.item(), rel=1e-5)
    assert row["loss"] == pytest.approx(row["dmd"] + cfg.adversarial_weight * row["adv"] + 0.5 * row["flow"], rel=1e-5)
    assert row["student_std"] > 0 and row["data_std"] == pytest.approx(x0.std().item())
    plain = DistillRecipe(_config(tmp_path / "plain", teacher, max_steps=1), cache=_cache())
    plain.setup()
    assert plain.train_step(0)["flow"] == 0.0


def test_beat_hints_need_a_teacher_trained_with_them(tmp_path: Path, teacher: Path) -> None:
    recipe = DistillRecipe(_config(tmp_path / "plain", teacher, max_steps=1, beat_hint_prob=0.5), cache=_cache())
    with pytest.raises(ValueError, match="beat_hint_prob"):
        recipe.setup()
    hinted = DiTRecipe(DiTTrainConfig(output_dir=str(tmp_path / "hinted"), geometry="tiny", text_encoder="tiny",
                                      batch_size=4, crop_frames=40, max_steps=1, num_threads=1, beat_hint_prob=0.5),
                       cache=_cache())  # fmt: skip
    hinted.setup()
    hinted.train()
    student = DistillRecipe(_config(tmp_path / "student", max((tmp_path / "hinted" / "checkpoints").iterdir()),
                                    max_steps=2, beat_hint_prob=0.5), cache=_cache())  # fmt: skip
    student.setup()
    assert len(student.train()) == 2
    assert load_dit_checkpoint(max((tmp_path / "student" / "checkpoints").iterdir())).config.beat_hints
    keyless = DistillRecipe(_config(tmp_path / "keyless", max((tmp_path / "hinted" / "checkpoints").iterdir()),
                                    max_steps=1, beat_hint_prob=0.5, key_hint_prob=0.5), cache=_cache())  # fmt: skip
    with pytest.raises(ValueError, match="key_hint_prob"):
        keyless.setup()
    plain = DistillRecipe(_config(tmp_path / "plain", max((tmp_path / "hinted" / "checkpoints").iterdir()),
                                  max_steps=1, beat_hint_prob=0.5, instrument_hint_prob=0.5), cache=_cache())  # fmt: skip
    with pytest.raises(ValueError, match="instrument_hint_prob"):
        plain.setup()


def test_guide_hints_gives_the_teachers_null_branch_the_hint_free_context(
    tmp_path: Path, teacher: Path
) -> None:
    contexts: list[torch.Tensor] = []
    for guide in (False, True):
        config = _config(tmp_path / str(guide), teacher, max_steps=1, guide_hints=guide)
        recipe = DistillRecipe(config, cache=_cache())
        recipe.setup()

        def spy(*args: object, real=recipe.teacher.decoder.forward, **kwargs: object) -> torch.Tensor:
            contexts.append(args[4].clone())  # type: ignore[union-attr]
            return real(*args, **kwargs)  # type: ignore[arg-type]

        recipe.teacher.decoder.forward = spy  # type: ignore[method-assign]
        x0, states, context, _, _ = recipe._batch(torch.Generator().manual_seed(0))
        hint_free = torch.randn_like(context)  # any stand-in: only where it goes matters
        t = torch.full((x0.shape[0],), 0.5)
        with torch.no_grad():
            recipe._teacher_velocity(x0, t, states, context, hint_free)
        cond, null = contexts[-1].chunk(2)
        assert torch.equal(cond, context) and torch.equal(null, hint_free if guide else context)
