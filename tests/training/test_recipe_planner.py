"""Planner LM recipe on the tiny geometry: prompt formats of SPEC §12.2, loss on the completion only, loss
falls,
resume is bit-exact, and the exported folder loads as a `Planner`."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from encore.pipeline import planner_prompts as pp
from encore.training.recipes.planner import (
    IGNORE,
    PlannerExample,
    PlannerRecipe,
    PlannerTrainConfig,
    clip_codes,
    export_planner,
    tokenize_pair,
    training_texts,
)


def _examples() -> list[PlannerExample]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i, (key, bpm) in enumerate((("C major", 90), ("A minor", 120), ("F# minor", 140))):
        codes = tuple(int(c) for c in torch.randint(64000, (12,), generator=g))
        out.append(
            PlannerExample(
                caption=f"calm piano piece {i}",
                codes=codes,
                bpm=bpm,
                keyscale=key,
                timesignature="4",
                captions=("piano",),
            )
        )
    return out


@pytest.fixture(scope="module")
def tokenizer():
    from encore.pipeline.random_planner import build_tokenizer

    return build_tokenizer()


def _config(tmp: Path, **kw) -> PlannerTrainConfig:
    base = {
        "output_dir": str(tmp),
        "geometry": "tiny",
        "batch_size": 4,
        "learning_rate": 3e-3,
        "warmup_steps": 0,
        "max_codes": 10,
        "save_every_steps": 100,
        "num_threads": 1,
    }
    base.update(kw)
    return PlannerTrainConfig(**base)


def test_training_texts_follow_the_planner_prompts() -> None:
    ex = _examples()[1]
    prompt, completion = training_texts(ex, ex.codes[:10], "generate", "piano")
    cot = (
        "<think>\nbpm: 120\ncaption: calm piano piece 1\nduration: 2\nkeyscale: A minor\nlanguage: unknown\n"
        "timesignature: 4\n</think>"
    )
    assert prompt == pp.cot_prompt("piano", "[Instrumental]")
    assert completion.startswith(cot + "\n\n<|audio_code_")
    # phase 2 at inference continues exactly this text
    assert (prompt + completion).startswith(pp.codes_prompt("piano", "[Instrumental]", cot, "open"))
    assert completion.endswith("<|im_end|>") and completion.count("<|audio_code_") == 10
    assert pp.parse_cot(cot.removeprefix("<think>\n").removesuffix("\n</think>"))["keyscale"] == "A minor"
    prompt_u, completion_u = training_texts(ex, ex.codes[:10], "understand", "piano")
    assert prompt_u.startswith("<|im_start|>system\n# Instruction\n" + pp.INSTRUCTION_UNDERSTAND)
    assert completion_u == cot + "\n\n# Lyric\n[Instrumental]<|im_end|>"
    assert pp.extract_lyrics(completion_u.split("</think>")[1]) == "[Instrumental]"


def test_loss_masks_the_prompt(tokenizer) -> None:
    ids, labels = tokenize_pair(tokenizer, "<|im_start|>user\nhi<|im_end|>\n", "<think>\n</think><|im_end|>")
    n_prompt = len(tokenizer.encode("<|im_start|>user\nhi<|im_end|>\n", add_special_tokens=False))
    assert labels[:n_prompt] == [IGNORE] * n_prompt and labels[n_prompt:] == ids[n_prompt:]
    # code tokens are single tokens
    code_ids = tokenizer.encode("<|audio_code_5|><|audio_code_63999|>", add_special_tokens=False)
    assert len(code_ids) == 2 and code_ids[1] - code_ids[0] == 63994


def test_loss_decreases(tmp_path: Path, tokenizer) -> None:
    recipe = PlannerRecipe(
        _config(tmp_path, max_steps=6, learning_rate=1e-2), examples=_examples(), tokenizer=tokenizer
    )
    recipe.setup()
    losses = [r["loss"] for r in recipe.train()]
    assert all(b < a for a, b in itertools.pairwise(losses)), losses
    assert losses[-1] < losses[0] - 1.0, losses


def _run(tmp: Path, tokenizer, steps: int) -> PlannerRecipe:
    recipe = PlannerRecipe(_config(tmp, max_steps=steps), examples=_examples(), tokenizer=tokenizer)
    recipe.setup()
    recipe.train()
    return recipe


def test_resume_equals_uninterrupted(tmp_path: Path, tokenizer) -> None:
    full = _run(tmp_path / "full", tokenizer, 3)
    _run(tmp_path / "split", tokenizer, 2)
    second = _run(tmp_path / "split", tokenizer, 3)
    assert [r["step"] for r in second.history] == [3.0]
    assert second.history[0]["loss"] == full.history[-1]["loss"]
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key]), key


@pytest.mark.slow
def test_export_loads_as_planner(tmp_path: Path, tokenizer) -> None:
    from encore.models.planner import Planner

    recipe = _run(tmp_path / "run", tokenizer, 1)
    ckpt = max((tmp_path / "run" / "checkpoints").iterdir())
    planner = Planner.from_pretrained(export_planner(ckpt, tmp_path / "lm", dtype=torch.float32))
    for key, value in planner.model.state_dict().items():
        assert torch.equal(value, recipe.model.state_dict()[key]), key
    assert planner.vocab.code_base == planner.tokenizer.convert_tokens_to_ids("<|audio_code_0|>")


def test_clip_codes_match_the_tokenizer() -> None:
    from encore.models.acestep import AceStepModel
    from encore.training import embedded

    torch.manual_seed(0)
    model = AceStepModel(embedded.dit_config("tiny", latent_channels=8)).eval()
    x = torch.randn(23, 8)
    silence = torch.zeros(10, 8)
    codes = clip_codes(model, x, silence, chunk=10)
    _, idx = model.tokenizer.tokenize(x[None], silence)
    assert codes == idx[0, :, 0].tolist() and len(codes) == 5
