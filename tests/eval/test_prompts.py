"""The committed evaluation prompt set: valid, held out, and still what the corpus code renders."""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from encore.data.labels import parse_keyscale
from encore.errors import InvalidRequest
from encore.eval.prompts import EVAL_SEED, load_prompt_set, prompt_from_labels, save_prompt_set
from encore.pipeline.request import VALID_KEYSCALES
from encore.tasks.spec import TRACK_NAMES


def test_committed_prompt_set_is_valid_and_held_out() -> None:
    ps = load_prompt_set()
    assert ps.seed == EVAL_SEED and len(ps.prompts) >= 50
    assert len({p.id for p in ps.prompts}) == len(ps.prompts)
    assert [p.index for p in ps.prompts] == list(range(len(ps.prompts)))
    for p in ps.prompts:
        parse_keyscale(p.keyscale)
        assert p.keyscale in VALID_KEYSCALES  # the request accepts it as a meta
        assert ps.config.bpm_range[0] <= p.bpm <= ps.config.bpm_range[1]
        assert p.timesignature in (2, 3, 4, 6) and p.duration_s == ps.config.clip_seconds
        assert p.tracks and set(p.tracks) <= set(TRACK_NAMES) and p.caption
    assert len({p.source for p in ps.prompts}) == 4  # every corpus source family is represented
    assert len({p.keyscale for p in ps.prompts}) >= 16


def test_round_trip_and_bad_files(tmp_path: Path) -> None:
    ps = load_prompt_set()
    small = replace(ps, prompts=ps.prompts[:3])
    assert load_prompt_set(save_prompt_set(small, tmp_path / "p.json")) == small
    with pytest.raises(InvalidRequest, match="not found"):
        load_prompt_set(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{", encoding="utf-8")
    with pytest.raises(InvalidRequest, match="JSON"):
        load_prompt_set(tmp_path / "bad.json")


def _tools_ok() -> bool:
    if importlib.util.find_spec("mido") is None or not (shutil.which("mma") and shutil.which("abc2midi")):
        return False
    from encore.data.render import available_soundfonts

    return {"FluidR3_GM", "MuseScore_General_Lite"} <= set(available_soundfonts())


_STALE = (
    "src/encore/eval/prompts.json is stale: the corpus code now plans other clips. Regenerate it with "
    "`encore eval --write-prompts src/encore/eval/prompts.json` and re-run the evaluation."
)


def _check_fresh(sources: tuple[str, ...]) -> None:
    from encore.data.corpus import generate_clip

    ps = load_prompt_set()
    for source in sources:
        prompt = next(p for p in ps.prompts if p.source == source)
        labels = generate_clip(ps.seed, prompt.index, ps.config).labels
        number = int(prompt.id.split("_")[1])
        assert prompt_from_labels(labels, number) == prompt, f"{prompt.id} ({source}): {_STALE}"


@pytest.mark.slow
@pytest.mark.skipif(
    not _tools_ok(), reason="corpus tools (FluidSynth, soundfonts, mma, abc2midi) not installed"
)
def test_committed_prompts_match_what_the_corpus_code_renders_now() -> None:
    # One prompt per source family; loading the soundfonts and the music21 corpus takes tens of seconds.
    _check_fresh(("procedural", "mma", "folk", "chorale"))
