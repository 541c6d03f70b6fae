"""Instrument probe: learns a separable problem, saves/loads exactly, refuses mismatched files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from encore.errors import CheckpointError, InvalidRequest
from encore.eval.probe import ProbeConfig, load_probe, save_probe, train_probe

CLASSES = ("bass", "drums", "keyboard", "fx")


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 4)) < 0.5).astype(np.float32)
    y[:, 3] = 0.0
    y[:2, 3] = 1.0  # 'fx' has 2 positives: below min_positives=3, dropped
    x = rng.standard_normal((n, 12)).astype(np.float32) + 5.0
    x[:, :3] += 3.0 * y[:, :3]  # feature i carries class i
    return x, y


def test_probe_learns_separable_classes_and_drops_rare_ones() -> None:
    x, y = _data(120, 0)
    probe, summary = train_probe(x, y, CLASSES, ProbeConfig(hidden=16, epochs=200))
    assert probe.classes == ("bass", "drums", "keyboard") and summary["dropped"] == ["fx"]
    assert summary["final_loss"] < 0.5 * summary["first_loss"]
    xv, yv = _data(60, 1)
    probs, emb = probe.predict(xv)
    assert probs.shape == (60, 3) and emb.shape == (60, 16)
    assert ((probs > 0.5) == (yv[:, :3] > 0.5)).mean() > 0.9


def test_training_is_deterministic_and_save_load_round_trips(tmp_path) -> None:
    x, y = _data(60, 0)
    cfg = ProbeConfig(hidden=8, epochs=30, seed=3)
    a, summary = train_probe(x, y, CLASSES, cfg)
    b, _ = train_probe(x, y, CLASSES, cfg)
    np.testing.assert_array_equal(a.predict(x)[0], b.predict(x)[0])
    path = save_probe(a, tmp_path / "probe", summary)
    assert path.suffix == ".json" and (tmp_path / "probe.safetensors").is_file()
    loaded = load_probe(tmp_path / "probe.safetensors")
    assert loaded.classes == a.classes
    np.testing.assert_array_equal(loaded.predict(x)[1], a.predict(x)[1])


def test_bad_inputs_and_files_are_refused(tmp_path) -> None:
    x, y = _data(20, 0)
    with pytest.raises(InvalidRequest):
        train_probe(x, y[:, :2], CLASSES)
    with pytest.raises(InvalidRequest):
        train_probe(x, np.zeros_like(y), CLASSES)
    with pytest.raises(CheckpointError):
        load_probe(tmp_path / "missing")
    probe, _ = train_probe(x, y, CLASSES, ProbeConfig(hidden=4, epochs=2))
    meta_path = save_probe(probe, tmp_path / "p")
    meta = json.loads(meta_path.read_text())
    meta["feature_version"] = 999
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="retrain"):
        load_probe(tmp_path / "p")
    meta["feature_version"], meta["hidden"] = 1, 5
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not match"):
        load_probe(tmp_path / "p")


def test_hand_written_gradients_match_finite_differences() -> None:
    from encore.eval.probe import InstrumentProbe, _gradients

    rng = np.random.default_rng(0)
    probe = InstrumentProbe.initial(("a", "b"), 5, 4, seed=1)
    probe.params = {k: v.astype(np.float64) for k, v in probe.params.items()}
    x, y = rng.standard_normal((7, 5)), (rng.random((7, 2)) < 0.5).astype(np.float64)
    _, grads = _gradients(probe, x, y)
    for name, g in grads.items():
        flat = probe.params[name].reshape(-1)
        for i in range(0, flat.size, 3):
            old = flat[i]
            flat[i] = old + 1e-6
            up, _ = _gradients(probe, x, y)
            flat[i] = old - 1e-6
            down, _ = _gradients(probe, x, y)
            flat[i] = old
            assert g.reshape(-1)[i] == pytest.approx((up - down) / 2e-6, abs=1e-6), name
