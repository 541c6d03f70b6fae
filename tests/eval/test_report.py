"""Instrument scores, the turbo-vs-base verdict and the markdown/JSON report on hand-made items."""

from __future__ import annotations

import json

import pytest

from encore.eval.report import (
    EvalReport,
    ItemResult,
    bootstrap_intervals,
    compare_systems,
    instrument_scores,
    paired_relative_intervals,
    summarise,
)
from encore.eval.run import SystemSpec


def _item(asked: list[str], probs: dict[str, float], tempo: str = "exact", key: str = "exact",
          seconds: float | None = 1.0, pulse: float | None = 0.5) -> ItemResult:  # fmt: skip
    return ItemResult(prompt_id="p", bpm_target=120.0, bpm_estimate=120.0, tempo=tempo, key_target="C major",
                      key_estimate="C major", key=key, tracks_target=asked, probabilities=probs, seconds=seconds,
                      audio_seconds=10.0, bpm_confidence=pulse)  # fmt: skip


def test_instrument_scores_by_hand() -> None:
    items = [
        _item(["bass", "drums"], {"bass": 0.9, "drums": 0.2, "keyboard": 0.7}),  # 1 of 3 right; top-1 bass
        _item(["keyboard"], {"bass": 0.1, "drums": 0.1, "keyboard": 0.8}),  # exact
    ]
    summary, per_class = instrument_scores(items)
    assert summary["accuracy"] == pytest.approx((1 / 3 + 1) / 2)
    assert summary["f1"] == pytest.approx((2 * 1 / 4 + 1) / 2)
    assert summary["exact_set"] == 0.5 and summary["top1"] == 1.0
    assert per_class["drums"] == {"precision": None, "recall": 0.0, "support": 1.0}
    assert per_class["keyboard"]["precision"] == 0.5 and per_class["keyboard"]["recall"] == 1.0


def _row(name: str, role: str, tempo_ok: int, seconds: float) -> object:
    items = [_item(["bass"], {"bass": 0.9}, tempo="exact" if i < tempo_ok else "half", seconds=seconds)
             for i in range(10)]  # fmt: skip
    return summarise(name, role, items, 12.5)


def test_turbo_verdict_and_markdown() -> None:
    specs = [SystemSpec("base-50", "base", 50), SystemSpec("turbo-8", "turbo", 8)]
    rows = [_row("base-50", "model", 10, 6.0), _row("turbo-8", "model", 9, 1.0)]
    ok = compare_systems(rows, specs)
    assert ok["speedup"] == pytest.approx(6.0) and ok["within_tolerance"] is True
    assert ok["metrics"]["tempo.acc1"]["relative"] == pytest.approx(-0.1)
    worse = compare_systems([rows[0], _row("turbo-8", "model", 8, 1.0)], specs)
    assert worse["within_tolerance"] is False and worse["metrics"]["tempo.acc1"]["ok"] is False
    assert compare_systems(rows, specs[:1]) is None
    report = EvalReport(systems=rows, probe={"reference_clips": 3}, prompts={"count": 10}, comparison=ok)
    md = report.to_markdown()
    assert (
        "| base-50 | 10 | 100% | 0% | 0% | 0.50 | 100% |" in md
        and "6.00× faster" in md
        and "(within 10% of base)" in md
    )
    data = json.loads(json.dumps(report.to_dict()))
    assert data["systems"][1]["items"][0]["tracks_predicted"] == ["bass"]
    assert data["systems"][1]["tempo"]["half"] == pytest.approx(0.1)


def test_stage_seconds_are_medians_per_stage_and_printed() -> None:
    items = [_item(["bass"], {"bass": 0.9}) for _ in range(3)]
    for item, (sample, decode) in zip(items, [(1.0, 0.2), (3.0, 0.4), (2.0, 0.1)], strict=True):
        item.stage_seconds = {"encode_text": 0.02, "sample": sample, "decode": decode, "load_audio": 1e-5}
    items.append(_item(["bass"], {"bass": 0.9}))  # a row's untimed item does not count
    row = summarise("turbo-8", "model", items, 1.0)
    assert row.stage_seconds == {"encode_text": pytest.approx(0.02), "sample": 2.0, "decode": pytest.approx(0.2),
                                 "load_audio": pytest.approx(1e-5)}  # fmt: skip
    md = EvalReport(systems=[row], probe={}, prompts={}).to_markdown()
    assert "- median s per stage of a generate call: turbo-8; encode_text 0.020; sample 2.000; decode 0.200." in md
    assert "load_audio" not in md
    assert summarise("renders", "ceiling", [_item(["bass"], {"bass": 0.9}, seconds=None)], 1.0).stage_seconds == {}


def test_bootstrap_intervals_bracket_the_figure_and_are_reproducible() -> None:
    items = [_item(["bass"], {"bass": 0.9 if i % 2 else 0.1}, tempo="exact" if i < 5 else "half",
                   key="exact" if i < 2 else "fifth") for i in range(10)]  # fmt: skip
    row = summarise("base-50", "model", items, 1.0)
    lo, hi = row.intervals["tempo.acc1"]
    assert lo < row.tempo["acc1"] == 0.5 < hi and 0.0 <= lo and hi <= 1.0
    assert row.intervals["key.exact"][0] < 0.2 < row.intervals["key.exact"][1]
    lo, hi = row.intervals["instrument.accuracy"]
    assert lo < row.instrument["accuracy"] == 0.5 < hi
    assert bootstrap_intervals(items) == row.intervals  # fixed seed
    sure = [_item(["bass"], {"bass": 0.9}) for _ in range(5)]
    assert bootstrap_intervals(sure) == {"tempo.acc1": [1.0, 1.0], "key.exact": [1.0, 1.0],
                                         "instrument.accuracy": [1.0, 1.0]}  # fmt: skip
    assert bootstrap_intervals([]) == {}
    md = EvalReport(systems=[row], probe={}, prompts={}).to_markdown()
    assert "- 95% bootstrap intervals over prompts (tempo / key exact / instr. acc., %): base-50 " in md


def test_paired_relative_intervals_pair_prompts_and_reach_the_report() -> None:
    def row(name: str, tempo_ok: int, key_ok: int) -> list[ItemResult]:
        items = [_item(["bass"], {"bass": 0.9}, tempo="exact" if i < tempo_ok else "half",
                       key="exact" if i < key_ok else "fifth") for i in range(10)]  # fmt: skip
        for i, item in enumerate(items):
            item.prompt_id = f"p{i}"
        return items

    base, turbo = row("b", 10, 0), row("t", 5, 0)
    iv = paired_relative_intervals(base, turbo)
    assert iv["tempo.acc1"][0] < -0.5 < iv["tempo.acc1"][1] < 0  # the turbo keeps half the base's tempo
    assert iv["instrument.accuracy"] == [0.0, 0.0]  # identical per prompt: no spread at all
    assert iv["key.exact"] is None  # base 0 %: no ratio
    assert paired_relative_intervals(base, list(reversed(turbo))) == iv  # paired by prompt id, not order
    specs = [SystemSpec("base-50", "base", 50), SystemSpec("turbo-8", "turbo", 8)]
    rows = [summarise("base-50", "model", base, 1.0), summarise("turbo-8", "model", turbo, 1.0)]
    comparison = compare_systems(rows, specs)
    assert comparison["metrics"]["tempo.acc1"]["relative_interval"] == iv["tempo.acc1"]
    md = EvalReport(systems=rows, probe={}, prompts={}, comparison=comparison).to_markdown()
    assert "- turbo-8 / base-50 − 1, 95% paired bootstrap over prompts: tempo.acc1 " in md
    assert "instrument.accuracy +0 to +0%" in md and "key.exact" not in md.split("paired bootstrap")[1]


def test_sampling_text_names_guidance_only_when_on() -> None:
    from encore.eval.report import _sampling_text

    base = {"num_steps": 50, "shift": 3.0, "solver": "ode", "guidance": "apg", "guidance_scale": 7.0}
    assert _sampling_text(base) == "50 steps, shift 3, ode, apg 7"
    assert _sampling_text({**base, "guidance_scale": 1.0}) == "50 steps, shift 3, ode"
    assert _sampling_text({"num_steps": 8, "shift": 2.0, "solver": "sde"}) == "8 steps, shift 2, sde"
    assert _sampling_text({**base, "guide_hints": False}) == "50 steps, shift 3, ode, apg 7 not on hints"
    assert _sampling_text({**base, "guide_hints": True}) == "50 steps, shift 3, ode, apg 7 on hints"
