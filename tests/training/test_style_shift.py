"""The style-shift measurement's metric (fast) and the whole experiment at a small budget (slow)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).with_name("style_shift.py")


def _module():
    spec = importlib.util.spec_from_file_location("style_shift", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_measure_on_known_geometry() -> None:
    ss = _module()
    rng = np.random.default_rng(0)
    refs = {"chiptune": rng.normal(10.0, 1.0, (8, 4))}
    refs.update({name: rng.normal(0.0, 1.0, (6, 4)) for name in ss.GENERIC})
    base = np.zeros((8, 4))
    outputs = {ss.STYLE_PROMPT: {0.0: base, 0.5: base + 5.0, 1.0: base + 10.0}}
    for caption in ss.UNRELATED:
        outputs[caption] = {0.0: base, 0.5: base, 1.0: base + 1.0}
    report = ss.measure(refs, outputs, losses=[2.0] * 20)
    scores = [report["style_prompt"][str(s)]["style_score"] for s in ss.SCALES]
    assert scores[0] == 0.0 and abs(scores[1] - 0.5) < 0.05 and abs(scores[2] - 1.0) < 0.1
    assert report["style_prompt"]["1.0"]["probe"] == {"chiptune": 1.0}
    row = report["unrelated"][ss.UNRELATED[0]]
    assert row["0.5"]["drift"] == 0.0 and 0.05 < row["1.0"]["drift"] < 0.2


@pytest.mark.slow
def test_experiment_runs_end_to_end(tmp_path: Path) -> None:
    ss = _module()
    report = ss.run_experiment(tmp_path, steps=4, base_steps=4, preservation=True)
    assert set(report["style_prompt"]) == {"0.0", "0.5", "1.0"}
    assert set(report["unrelated"]) == set(ss.UNRELATED)
    assert report["style_prompt"]["0.0"]["style_score"] == 0.0
    assert all(np.isfinite(v["style_score"]) for v in report["style_prompt"].values())
