"""Instrument probe: a one-hidden-layer MLP over `clip_features`, multi-label over track classes.

Trained on corpus renders with exact labels (the track classes of the rendered parts), it says which
instrument classes a clip contains; its hidden layer is the embedding the Fréchet distance is computed on.
Pure numpy (full-batch AdamW with hand-written gradients: the model is two matrices, and numpy avoids torch's
first-optimizer-step start-up cost). Saved as ``<name>.safetensors`` (weights + feature standardisation) plus
``<name>.json`` (classes, sizes, training summary).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from encore.errors import CheckpointError, InvalidRequest
from encore.eval.features import FEATURE_VERSION

PROBE_FORMAT = 1
_TENSORS = {"feature_mean": "in", "feature_std": "in", "hidden.weight": "hidden,in", "hidden.bias": "hidden",
            "out.weight": "classes,hidden", "out.bias": "classes"}  # fmt: skip
"""Saved tensors and their shapes (torch `nn.Linear` layout: weight is [out, in])."""


@dataclass(frozen=True, kw_only=True)
class ProbeConfig:
    """Probe size and full-batch training schedule."""

    hidden: int = 32
    """Width of the hidden layer (= embedding size for the Fréchet distance; small keeps the covariance of a
    few dozen clips well-conditioned)."""
    epochs: int = 300
    """Full-batch AdamW steps."""
    lr: float = 3e-3
    weight_decay: float = 0.05
    """Decoupled (AdamW) weight decay on the weight matrices."""
    seed: int = 0
    """Seeds the weight initialisation (a private generator; global RNG untouched)."""
    min_positives: int = 3
    """Classes with fewer positive training clips are left out of the probe."""

    def __post_init__(self) -> None:
        if (
            self.hidden < 1
            or self.epochs < 1
            or self.lr <= 0
            or self.weight_decay < 0
            or self.min_positives < 1
        ):
            raise ValueError(f"invalid probe config {self}")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


class InstrumentProbe:
    """Standardise → Linear → ReLU (embedding) → Linear (one logit per class).

    Args:
        classes: Class names, one output each.
        params: Float32 arrays named as in `_TENSORS`.
    """

    def __init__(self, classes: tuple[str, ...], params: dict[str, np.ndarray]) -> None:
        self.classes = tuple(classes)
        self.params = {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}
        in_dim, hidden = self.in_dim, self.hidden_dim
        sizes = {"in": (in_dim,), "hidden": (hidden,), "hidden,in": (hidden, in_dim), "classes": (len(classes),),
                 "classes,hidden": (len(classes), hidden)}  # fmt: skip
        for name, dims in _TENSORS.items():
            if name not in self.params or self.params[name].shape != sizes[dims]:
                got = self.params[name].shape if name in self.params else None
                raise ValueError(f"probe tensor {name}: expected shape {sizes[dims]}, got {got}")

    @property
    def in_dim(self) -> int:
        return int(self.params["hidden.weight"].shape[1])

    @property
    def hidden_dim(self) -> int:
        return int(self.params["hidden.weight"].shape[0])

    @classmethod
    def initial(cls, classes: tuple[str, ...], in_dim: int, hidden: int, seed: int) -> InstrumentProbe:
        """Uniform(±1/sqrt(fan_in)) weights, zero biases, identity standardisation."""
        rng = np.random.default_rng(seed)
        b1, b2 = 1.0 / np.sqrt(in_dim), 1.0 / np.sqrt(hidden)
        return cls(classes, {
            "feature_mean": np.zeros(in_dim), "feature_std": np.ones(in_dim),
            "hidden.weight": rng.uniform(-b1, b1, (hidden, in_dim)), "hidden.bias": np.zeros(hidden),
            "out.weight": rng.uniform(-b2, b2, (len(classes), hidden)), "out.bias": np.zeros(len(classes)),
        })  # fmt: skip

    def _standardise(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise InvalidRequest("features", f"expected [N, {self.in_dim}] features, got shape {x.shape}")
        return (x - self.params["feature_mean"]) / self.params["feature_std"]

    def _forward(self, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = self.params
        pre = xs @ p["hidden.weight"].T + p["hidden.bias"]
        emb = np.maximum(pre, 0.0)
        return pre, emb, emb @ p["out.weight"].T + p["out.bias"]

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities `[N, K]` and hidden-layer embeddings `[N, hidden]` of `[N, in_dim]` features."""
        _, emb, logits = self._forward(self._standardise(features))
        return _sigmoid(logits), emb


def _gradients(probe: InstrumentProbe, xs: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """Mean binary cross-entropy over all (clip, class) pairs and its gradient per trainable tensor."""
    p = probe.params
    pre, emb, logits = probe._forward(xs)
    loss = float(np.mean(np.maximum(logits, 0) - logits * y + np.log1p(np.exp(-np.abs(logits)))))
    d_logits = (_sigmoid(logits) - y) / y.size
    d_pre = (d_logits @ p["out.weight"]) * (pre > 0)
    grads = {"out.weight": d_logits.T @ emb, "out.bias": d_logits.sum(axis=0),
             "hidden.weight": d_pre.T @ xs, "hidden.bias": d_pre.sum(axis=0)}  # fmt: skip
    return loss, grads


def _fit(probe: InstrumentProbe, xs: np.ndarray, y: np.ndarray, config: ProbeConfig) -> list[float]:
    """Full-batch AdamW (betas 0.9/0.999, decay on weight matrices only); returns the loss per step."""
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    m = {k: np.zeros_like(v) for k, v in probe.params.items() if "." in k}
    v = {k: np.zeros_like(a) for k, a in m.items()}
    losses = []
    for step in range(1, config.epochs + 1):
        loss, grads = _gradients(probe, xs, y)
        losses.append(loss)
        for name, g in grads.items():
            m[name] = beta1 * m[name] + (1 - beta1) * g
            v[name] = beta2 * v[name] + (1 - beta2) * g * g
            update = (m[name] / (1 - beta1**step)) / (np.sqrt(v[name] / (1 - beta2**step)) + eps)
            if name.endswith("weight"):
                update = update + config.weight_decay * probe.params[name]
            probe.params[name] = (probe.params[name] - config.lr * update).astype(np.float32)
    return losses


def train_probe(features: np.ndarray, targets: np.ndarray, classes: tuple[str, ...],
                config: ProbeConfig | None = None) -> tuple[InstrumentProbe, dict[str, Any]]:  # fmt: skip
    """Fit the probe on `[N, D]` features and `[N, K]` 0/1 targets (full batch, binary cross-entropy).

    Classes with fewer than `config.min_positives` positives are dropped (the returned probe's `classes`
    says which were kept).

    Returns:
        `(probe, summary)`: summary holds the kept classes, positives per class, first/final loss and
        training-set accuracy per class.
    """
    config = config or ProbeConfig()
    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(targets, dtype=np.float32)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0] or y.shape[1] != len(classes):
        raise InvalidRequest("features", f"shape mismatch: features {x.shape}, targets {y.shape}, "
                                         f"{len(classes)} classes")  # fmt: skip
    if x.shape[0] < 2:
        raise InvalidRequest("features", f"need at least 2 training clips, got {x.shape[0]}")
    positives = y.sum(axis=0)
    keep = [i for i, p in enumerate(positives) if p >= config.min_positives]
    if not keep:
        raise InvalidRequest("targets", f"no class has {config.min_positives} positive clips")
    kept = tuple(classes[i] for i in keep)
    probe = InstrumentProbe.initial(kept, x.shape[1], config.hidden, config.seed)
    probe.params["feature_mean"] = x.mean(axis=0)
    probe.params["feature_std"] = np.maximum(x.std(axis=0), 1e-3).astype(np.float32)
    losses = _fit(probe, probe._standardise(x), y[:, keep], config)
    probs, _ = probe.predict(x)
    train_acc = ((probs > 0.5) == (y[:, keep] > 0.5)).mean(axis=0)
    summary = {
        "classes": list(kept),
        "dropped": [c for i, c in enumerate(classes) if i not in keep],
        "positives": {classes[i]: int(positives[i]) for i in range(len(classes))},
        "train_clips": int(x.shape[0]),
        "first_loss": losses[0],
        "final_loss": losses[-1],
        "train_accuracy": {c: float(a) for c, a in zip(kept, train_acc)},
        "config": asdict(config),
    }
    return probe, summary


def save_probe(probe: InstrumentProbe, path: str | Path, summary: dict[str, Any] | None = None) -> Path:
    """Write ``path.safetensors`` and ``path.json`` (`path` without suffix); returns the JSON path."""
    base = Path(path).with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: np.ascontiguousarray(v) for k, v in probe.params.items()}, str(base.with_suffix(".safetensors"))
    )
    meta = {
        "format": PROBE_FORMAT,
        "feature_version": FEATURE_VERSION,
        "classes": list(probe.classes),
        "in_dim": probe.in_dim,
        "hidden": probe.hidden_dim,
        "summary": summary or {},
    }
    json_path = base.with_suffix(".json")
    json_path.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return json_path


def load_probe(path: str | Path) -> InstrumentProbe:
    """Read a probe written by `save_probe` (either file's path, or the shared stem).

    Raises:
        CheckpointError: missing files, another format/feature version, or weights that do not fit.
    """
    base = Path(path).with_suffix("")
    json_path, weights = base.with_suffix(".json"), base.with_suffix(".safetensors")
    for p in (json_path, weights):
        if not p.is_file():
            raise CheckpointError(str(p), "probe file not found")
    meta = json.loads(json_path.read_text(encoding="utf-8"))
    if meta.get("format") != PROBE_FORMAT or meta.get("feature_version") != FEATURE_VERSION:
        raise CheckpointError(str(json_path), f"probe format {meta.get('format')}/features "
                                              f"{meta.get('feature_version')}, expected {PROBE_FORMAT}/"
                                              f"{FEATURE_VERSION}: retrain it")  # fmt: skip
    state = load_file(str(weights))
    unknown = set(state) - set(_TENSORS)
    if unknown:
        raise CheckpointError(str(weights), f"unexpected tensors {sorted(unknown)}")
    try:
        probe = InstrumentProbe(tuple(meta["classes"]), state)
    except ValueError as e:
        raise CheckpointError(str(weights), f"weights do not match {json_path.name}: {e}") from e
    if (probe.in_dim, probe.hidden_dim) != (int(meta["in_dim"]), int(meta["hidden"])):
        raise CheckpointError(
            str(weights),
            f"weights do not match {json_path.name}: sizes "
            f"{probe.in_dim}/{probe.hidden_dim} vs {meta['in_dim']}/{meta['hidden']}",
        )
    return probe
